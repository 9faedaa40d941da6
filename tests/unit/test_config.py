"""HostConfig: every option rejects bad values with a message naming it, accepts edge values."""

from typing import Any

import pytest
from ops import testing

from container_compute.config import HostConfig, config_options, juju_type

from .conftest import Library

# (option, invalid value, words the message must contain besides the option's name)
INVALID = [
    ("lxd-source", "apt", "is not one of auto, snap, deb"),
    ("lxd-snap-channel", "5.21 stable", "is not a snap channel"),
    ("lxd-snap-channel", "", "is not a snap channel"),
    ("lxd-project", "-workers", "not a valid LXD name"),
    ("lxd-project", "a" * 64, "not a valid LXD name"),
    ("lxd-listen-https", "8443", "is not an address:port"),
    ("lxd-listen-https", ":70000", "port 1-65535"),
    ("lxd-listen-https", ":0", "port 1-65535"),
    ("lxd-endpoint", "http://10.0.0.5:8443", "is not an https:// URL"),
    ("lxd-endpoint", "https://10.0.0.5:99999", "is not an https:// URL"),
    ("lxd-endpoint", "https://10.0.0.5:8443", "needs lxd-client-cert, lxd-client-key"),
    ("lxd-client-cert", "client.crt", "neither PEM text, an absolute file path"),
    ("lxd-client-key", "secret:nope", "neither PEM text, an absolute file path"),
    ("lxd-server-cert", "/x\x00", "control characters"),
    ("lxd-cluster", True, "needs lxd-listen-https"),
    ("lxd-cluster", "on", "is not a boolean"),
    ("storage-driver", "ceph", "is not one of dir, btrfs, lvm, zfs"),
    ("storage-source", "/dev/sd b", "contains spaces"),
    ("storage-source", "sdb", "must be a block device under /dev/"),
    ("storage-size", "10 bananas", "storage-size"),
    ("storage-size", "512MiB", "below the minimum of 1GiB"),
    ("storage-pool", "my pool", "not a valid LXD name"),
    ("storage-pool", "", "not a valid LXD name"),
    ("worker-privileged", "yes", "is not a boolean"),
    ("worker-nesting", 1, "is not a boolean"),
    ("worker-kernel-modules", "nbd;rm", "is not a kernel module name"),
    ("worker-idmap-isolated", "true", "is not a boolean"),
    ("spare-workers", "yes", "is not a boolean"),
    ("worker-cpu", "0", "is not a CPU count"),
    ("worker-cpu", "many", "is not a CPU count"),
    ("worker-memory", "lots", "percentage of host memory"),
    ("worker-memory", "16MiB", "below the minimum of 32MiB"),
    ("worker-memory", "150%", "percentage of host memory"),
    ("worker-disk", "huge", "is not a size"),
    ("worker-disk", "10%", "is not a size"),
    ("worker-disk", "-1GiB", "is not a size"),
    ("worker-disk", "16MiB", "below the minimum of 32MiB"),
    ("worker-disk", 10, "is not a string"),
    ("worker-processes", -1, "is not between 0 and 10000000"),
    ("worker-processes", "many", "is not an integer"),
    ("worker-network", "lxd br0", "not a valid LXD name"),
    ("max-parallel-workers", 0, "is not between 1 and 1024"),
    ("max-parallel-workers", 1025, "is not between 1 and 1024"),
    ("max-parallel-workers", True, "is not an integer"),
    ("metrics-listen", "9790", "is not HOST:PORT"),
    ("metrics-listen", "127.0.0.1:70000", "is not between 1 and 65535"),
    ("metrics-listen", "[::zz]:9790", "is not an IPv6 address"),
    ("metrics-listen", "bad host:9790", "neither an address nor a host name"),
    ("ready-workers", -1, "is not between 0 and 64"),
    ("ready-workers", 65, "is not between 0 and 64"),
    ("default-image", "-image", "is not an image alias or fingerprint"),
    ("default-image", "", "is not an image alias or fingerprint"),
    ("default-backend", "k8s", "is not one of lxd, nova"),
    ("nova-flavor", "m1\nsmall", "control characters"),
    ("nova-image", "x" * 256, "over 255 characters"),
    ("nova-network", "net\x07", "control characters"),
    ("job-retention", "forever", "job-retention"),
    ("job-retention", "-1d", "job-retention"),
    ("task-results-cap", "1B", "below the minimum of 1KiB"),
    ("task-results-cap", "big", "task-results-cap"),
    ("sysctl-tuning", "no", "is not a boolean"),
    ("keystone-username", "service user", "is not a user name"),
    ("keystone-username", "", "is not a user name"),
    ("keystone-project", "my project", "is not a project name"),
    ("nova-availability-zone", "zone\n1", "contains control characters"),
    ("nova-console-cap", "200KiB", "is not between 1KiB and 96KiB"),
    ("nova-console-cap", "lots", "nova-console-cap"),
]

# (options, what the loaded config must then say)
VALID = [
    ({}, {"storage_driver": "btrfs", "kernel_modules": ()}),
    ({"lxd-source": "deb", "lxd-snap-channel": "latest/edge/fix-1"}, {"lxd_source": "deb"}),
    ({"lxd-listen-https": "[::]:8443"}, {"lxd_listen_https": "[::]:8443"}),
    ({"lxd-listen-https": ":1"}, {"lxd_listen_https": ":1"}),
    ({"lxd-listen-https": "10.0.0.5:65535"}, {"lxd_listen_https": "10.0.0.5:65535"}),
    ({"lxd-project": "a" * 63}, {"lxd_project": "a" * 63}),
    (
        {
            "lxd-endpoint": "https://[fd00::5]:8443",
            "lxd-client-cert": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
            "lxd-client-key": "secret:d1g0c6co5kt6mg2r8fu0",
            "lxd-server-cert": "/etc/cluster.crt",
        },
        {"remote": True},
    ),
    ({"lxd-cluster": True, "lxd-listen-https": ":8443"}, {"lxd_cluster": True, "remote": False}),
    ({"storage-driver": "dir", "storage-source": "/srv/pool"}, {"storage_source": "/srv/pool"}),
    ({"storage-driver": "zfs", "storage-source": "tank/lxd"}, {"storage_source": "tank/lxd"}),
    ({"storage-driver": "zfs", "storage-source": "/dev/sdc"}, {"storage_source": "/dev/sdc"}),
    ({"storage-driver": "lvm", "storage-source": "/dev/vdb"}, {"storage_driver": "lvm"}),
    ({"storage-size": "1GiB"}, {"storage_size_bytes": 1 << 30}),
    ({"storage-size": "2TB"}, {"storage_size_bytes": 2 * 10**12}),
    (
        {"worker-kernel-modules": " openvswitch, nbd,nbd "},
        {"kernel_modules": ("openvswitch", "nbd")},
    ),
    ({"worker-cpu": ""}, {"worker_cpu": ""}),
    ({"worker-cpu": "0-3,6"}, {"worker_cpu": "0-3,6"}),
    ({"worker-cpu": "9999"}, {"worker_cpu": "9999"}),
    ({"worker-memory": "32MiB"}, {"worker_memory": "32MiB"}),
    ({"worker-memory": "100%"}, {"worker_memory": "100%"}),
    ({"worker-memory": ""}, {"worker_memory": ""}),
    ({}, {"worker_disk": "10GiB", "worker_disk_bytes": 10 << 30}),
    ({"worker-disk": ""}, {"worker_disk": "", "worker_disk_bytes": None}),
    ({"worker-disk": "32MiB"}, {"worker_disk_bytes": 32 << 20}),
    ({"worker-disk": "64MiB"}, {"worker_disk_bytes": 64 << 20}),
    ({"worker-disk": "1TB"}, {"worker_disk_bytes": 10**12}),
    ({"worker-processes": 0}, {"worker_processes": 0}),
    ({"worker-processes": 10_000_000}, {"worker_processes": 10_000_000}),
    ({"ready-workers": 0}, {"ready_workers": 0}),
    ({"max-parallel-workers": 1}, {"max_parallel_workers": 1}),
    ({"max-parallel-workers": 1024}, {"max_parallel_workers": 1024}),
    ({"worker-privileged": True, "worker-idmap-isolated": False}, {"worker_privileged": True}),
    ({"default-image": "a" * 64}, {"default_image": "a" * 64}),
    ({"default-backend": "nova", "nova-image": "x" * 255}, {"default_backend": "nova"}),
    ({"job-retention": "0"}, {"job_retention_seconds": 0}),
    ({"job-retention": "30d"}, {"job_retention_seconds": 30 * 86400}),
    ({"task-results-cap": "1KiB"}, {"task_results_cap_bytes": 1024}),
    (
        {"keystone-username": "svc.user@x", "keystone-project": "services"},
        {"keystone_project": "services"},
    ),
]


def host_config(options: dict[str, Any]) -> HostConfig:
    """Build a HostConfig from Juju option names, as ops' load_config does."""
    return HostConfig(**{name.replace("-", "_"): value for name, value in options.items()})


def test_invalid_table_covers_every_option() -> None:
    assert {option for option, _value, _words in INVALID} == {
        name for name, _kind, _default, _description in config_options()
    }


@pytest.mark.parametrize(("option", "value", "words"), INVALID)
def test_invalid_value_is_rejected_naming_the_option(option: str, value: Any, words: str) -> None:
    with pytest.raises(ValueError) as error:
        host_config({option: value})

    message = str(error.value)
    assert message.startswith(f"{option}: ")
    assert words in message


@pytest.mark.parametrize(("options", "expected"), VALID)
def test_valid_edge_values_load(options: dict[str, Any], expected: dict[str, Any]) -> None:
    config = host_config(options)

    assert {name: getattr(config, name) for name in expected} == expected


def test_defaults_are_valid_and_match_config_options() -> None:
    config = HostConfig()

    for name, _kind, default, _description in config_options():
        assert getattr(config, name.replace("-", "_")) == default


OPTION_TYPES = {name: kind for name, kind, _default, _description in config_options()}
# Juju itself refuses a value of the wrong type, so the charm only ever sees the others.
JUJU_TYPED_INVALID = [
    (option, value, words)
    for option, value, words in INVALID
    if isinstance(value, OPTION_TYPES[option])
    and not (OPTION_TYPES[option] is int and isinstance(value, bool))
    and not juju_type(option)  # a secret option only ever holds a secret URI Juju checked
]


@pytest.mark.parametrize(("option", "value", "words"), JUJU_TYPED_INVALID)
def test_charm_blocks_naming_the_option(
    ctx: testing.Context, library: Library, option: str, value: Any, words: str
) -> None:
    out = ctx.run(ctx.on.config_changed(), testing.State(config={option: value}))

    assert out.unit_status.name == "blocked"
    assert out.unit_status.message.startswith(f"invalid config: {option}: ")
    assert words in out.unit_status.message
    assert library.host.calls == []
