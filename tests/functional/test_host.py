"""configure_host against the REAL LXD daemon: pools, profile, worker policies, refusals.

Every project and pool is named with the session's run prefix and purged at the end; the
/etc files (subuid, subgid, sysctl.d, modules-load.d) are copies under tmp_path.
"""

import datetime
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pylxd
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from container_compute import constants
from container_compute.config import HostConfig
from container_compute.host import (
    HostError,
    HostReport,
    configure_host,
    server_identity,
    trust_peers,
)
from container_compute.host.daemon import HTTPS_OWNER_KEY
from container_compute.host.images import build_busybox_image
from container_compute.lxdclient import connect

from .conftest import host_paths_in

LXC = constants.LXC_DEB_BIN


def lxc_yaml(*args: str) -> dict[str, Any]:
    """Run the lxc CLI and parse its YAML output."""
    result = subprocess.run([LXC, *args], check=True, capture_output=True, text=True)
    return yaml.safe_load(result.stdout)


def configure(config: HostConfig, tmp_path: Path, **kwargs: Any) -> HostReport:
    """Configure with /etc copies under tmp_path; a failure prints the whole report."""
    report = configure_host(config, paths=host_paths_in(tmp_path / "etc"), **kwargs)
    print(json.dumps(report.to_dict(), indent=1))
    return report


def base_config(prefix: str, name: str, **overrides: Any) -> HostConfig:
    """Return a config with project and pool ``<prefix>-<name>`` and no sysctl changes."""
    values: dict[str, Any] = {
        "lxd_project": f"{prefix}-{name}",
        "storage_pool": f"{prefix}-{name}",
        "storage_driver": "dir",
        "sysctl_tuning": False,
    }
    values.update(overrides)
    return HostConfig(**values)


def start_worker(client: pylxd.Client, name: str) -> Any:
    """Create and start a worker from the busybox image with the worker profile."""
    instance = client.instances.create(
        {
            "name": name,
            "source": {"type": "image", "alias": "busybox"},
            "profiles": [constants.WORKER_PROFILE],
        },
        wait=True,
    )
    instance.start(wait=True)
    return instance


def run_in(instance: Any, *command: str) -> str:
    """Run a command in a worker; return its stdout (a non-zero exit fails the test).

    pylxd's websocket exec sometimes loses its pipe on a busy host: tried again once.
    """
    try:
        result = instance.execute(list(command))
    except (BrokenPipeError, RuntimeError):
        time.sleep(1)
        result = instance.execute(list(command))
    assert result.exit_code == 0, f"{command} failed: {result.stderr}"
    return result.stdout


def host_cgroup_file(instance: Any, controller: str, file_name: str) -> str:
    """Read a cgroup v1 file of the worker from the host side (its init's cgroup)."""
    pid = instance.state().pid
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return (Path("/sys/fs/cgroup") / controller / path.lstrip("/") / file_name).read_text()
    raise AssertionError(f"worker init {pid} has no {controller} cgroup")


# --------------------------------------------------------------------------- dir pool


@pytest.fixture(scope="module")
def dir_host(
    run_prefix: str, lxd_client: pylxd.Client, tmp_path_factory: pytest.TempPathFactory
) -> tuple[HostConfig, HostReport, Path]:
    """Configure a dir-pool host once, with overlay as a worker kernel module."""
    config = base_config(run_prefix, "hdir", worker_kernel_modules="overlay")
    tmp = tmp_path_factory.mktemp("hdir")
    return config, configure(config, tmp), tmp


def test_dir_pool_and_profile_read_back(
    dir_host: tuple[HostConfig, HostReport, Path], lxd_client: pylxd.Client
) -> None:
    config, report, _ = dir_host
    assert report.ok, report.problems
    assert f"created LXD project {config.lxd_project}" in report.changes
    assert report.lxd_version == lxd_client.host_info["environment"]["server_version"]
    pool = lxd_client.storage_pools.get(config.storage_pool)
    assert pool.driver == "dir"
    assert lxc_yaml("storage", "show", config.storage_pool)["driver"] == "dir"
    project = lxd_client.api.projects[config.lxd_project].get().json()["metadata"]
    assert project["config"]["features.profiles"] == "true"
    assert project["config"]["features.images"] == "true"
    via_api = connect(project=config.lxd_project).profiles.get(constants.WORKER_PROFILE)
    via_cli = lxc_yaml(
        "--project", config.lxd_project, "profile", "show", constants.WORKER_PROFILE
    )
    for profile_config, devices in (
        (via_api.config, via_api.devices),
        (via_cli["config"], via_cli["devices"]),
    ):
        assert profile_config["security.privileged"] == "false"
        assert profile_config["security.idmap.isolated"] == "true"
        assert profile_config["limits.cpu"] == "1"
        assert profile_config["limits.memory"] == "1GiB"
        assert profile_config["limits.processes"] == "2000"
        assert "linux.kernel_modules" not in profile_config
        # worker-disk's default sizes the root disk (a dir pool may ignore it: see the notes).
        assert devices == {
            "root": {"type": "disk", "path": "/", "pool": config.storage_pool, "size": "10GiB"}
        }


def test_builtin_module_is_accepted_and_not_passed(
    dir_host: tuple[HostConfig, HostReport, Path],
) -> None:
    _, report, tmp = dir_host
    assert report.kernel_modules_on_host == ["overlay"]
    assert report.kernel_modules_to_lxd == []
    assert not (tmp / "etc" / "modules-load.d" / constants.MODULES_LOAD_FILE_NAME).exists()


def test_second_run_and_dry_run_change_nothing(
    dir_host: tuple[HostConfig, HostReport, Path], tmp_path: Path
) -> None:
    config, _, _ = dir_host
    again = configure(config, tmp_path)
    assert again.ok and again.changes == [], again.changes
    dry = configure(config, tmp_path, dry_run=True)
    assert dry.ok and dry.changes == [], dry.changes


def test_dry_run_reports_without_changing(
    dir_host: tuple[HostConfig, HostReport, Path], tmp_path: Path
) -> None:
    config, _, _ = dir_host
    smaller = HostConfig(**{**_fields(config), "worker_memory": "512MiB"})
    scoped = connect(project=config.lxd_project)
    dry = configure(smaller, tmp_path, dry_run=True)
    assert dry.changes == [f"updated worker profile {constants.WORKER_PROFILE} (config)"]
    assert scoped.profiles.get(constants.WORKER_PROFILE).config["limits.memory"] == "1GiB"


def _fields(config: HostConfig) -> dict[str, Any]:
    return {f: getattr(config, f) for f in config.__dataclass_fields__}


def test_missing_module_is_a_problem_and_changes_nothing(
    dir_host: tuple[HostConfig, HostReport, Path], tmp_path: Path
) -> None:
    config, _, _ = dir_host
    scoped = connect(project=config.lxd_project)
    before = scoped.api.profiles[constants.WORKER_PROFILE].get().json()["metadata"]
    bad = HostConfig(
        **{**_fields(config), "worker_kernel_modules": "overlay,nosuchmod", "worker_cpu": "2"}
    )
    report = configure(bad, tmp_path)
    assert report.changes == []
    assert len(report.problems) == 1
    assert report.problems[0].startswith("worker-kernel-modules: module nosuchmod is neither")
    after = scoped.api.profiles[constants.WORKER_PROFILE].get().json()["metadata"]
    assert after == before


def test_missing_network_is_a_problem(
    dir_host: tuple[HostConfig, HostReport, Path], tmp_path: Path, run_prefix: str
) -> None:
    config, _, _ = dir_host
    network = f"{run_prefix}-nonet"
    report = configure(HostConfig(**{**_fields(config), "worker_network": network}), tmp_path)
    assert report.changes == []
    assert report.problems == [
        f"worker-network: LXD has no network {network}; create it "
        f"(lxc network create {network}) or leave worker-network empty"
    ]


def test_driver_change_of_a_pool_holding_an_instance_is_refused(
    dir_host: tuple[HostConfig, HostReport, Path], tmp_path: Path, run_prefix: str
) -> None:
    config, _, _ = dir_host
    scoped = connect(project=config.lxd_project)
    build_busybox_image(scoped, "busybox")
    holder = f"{run_prefix}-holder"
    scoped.instances.create(
        {
            "name": holder,
            "source": {"type": "image", "alias": "busybox"},
            "profiles": [constants.WORKER_PROFILE],
        },
        wait=True,
    )
    report = configure(HostConfig(**{**_fields(config), "storage_driver": "btrfs"}), tmp_path)
    assert report.changes == []
    assert len(report.problems) == 1
    problem = report.problems[0]
    assert problem.startswith(f"storage-driver: pool {config.storage_pool} is dir and holds 1 ")
    assert holder in problem and "never re-created" in problem
    assert scoped.instances.exists(holder)
    assert connect().storage_pools.get(config.storage_pool).driver == "dir"


# --------------------------------------------------------------------------- btrfs pool


@pytest.fixture(scope="module")
def btrfs_pool(run_prefix: str, lxd_client: pylxd.Client) -> str:
    """Name of the btrfs loop pool the worker-policy projects share."""
    return f"{run_prefix}-hbtrfs"


def test_btrfs_loop_pool(btrfs_pool: str, lxd_client: pylxd.Client, tmp_path: Path) -> None:
    config = base_config(
        btrfs_pool.rsplit("-", 1)[0], "hbtrfs", storage_driver="btrfs", storage_size="1GiB"
    )
    report = configure(config, tmp_path)
    assert report.ok, report.problems
    assert f"created btrfs storage pool {btrfs_pool} on a 1GiB loop file" in report.changes
    pool = lxd_client.storage_pools.get(btrfs_pool)
    assert pool.driver == "btrfs"
    shown = lxc_yaml("storage", "show", btrfs_pool)
    assert shown["driver"] == "btrfs"
    assert shown["config"]["size"] == "1GiB"
    assert configure(config, tmp_path).changes == []
    bigger = HostConfig(**{**_fields(config), "storage_size": "2GiB"})
    kept = configure(bigger, tmp_path)
    assert kept.changes == [] and kept.ok
    assert kept.notes == [f"pool {btrfs_pool} is 1GiB, not storage-size=2GiB; it is kept as it is"]


POLICIES: dict[str, dict[str, Any]] = {
    "isolated": {"worker_cpu": "1", "worker_memory": "128MiB", "worker_processes": 100},
    "privileged": {"worker_privileged": True},
    "nested": {"worker_nesting": True},
}


@pytest.fixture(scope="module")
def policy_project(
    request: pytest.FixtureRequest,
    btrfs_pool: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[str], tuple[HostConfig, pylxd.Client]]]:
    """Give a project per worker policy on the shared btrfs pool, with the busybox image."""
    projects: dict[str, tuple[HostConfig, pylxd.Client]] = {}

    def make(policy: str) -> tuple[HostConfig, pylxd.Client]:
        if policy not in projects:
            prefix = btrfs_pool.rsplit("-", 1)[0]
            config = base_config(
                prefix,
                f"w{policy}",
                storage_pool=btrfs_pool,
                storage_driver="btrfs",
                storage_size="1GiB",
                **POLICIES[policy],
            )
            report = configure(config, tmp_path_factory.mktemp(policy))
            assert report.ok, report.problems
            scoped = connect(project=config.lxd_project)
            build_busybox_image(scoped, "busybox")
            projects[policy] = (config, scoped)
        return projects[policy]

    yield make


def test_isolated_workers_get_distinct_unprivileged_maps(
    policy_project: Any, run_prefix: str
) -> None:
    _, scoped = policy_project("isolated")
    first = start_worker(scoped, f"{run_prefix}-iso-a")
    second = start_worker(scoped, f"{run_prefix}-iso-b")
    maps = []
    for worker in (first, second):
        assert worker.expanded_config["security.idmap.isolated"] == "true"
        inside, host_base, size = run_in(worker, "cat", "/proc/self/uid_map").split()
        assert inside == "0" and int(host_base) > 0 and int(size) == constants.IDMAP_SIZE
        maps.append(int(host_base))
    assert maps[0] != maps[1]


def test_worker_limits_are_enforced_by_the_kernel(policy_project: Any, run_prefix: str) -> None:
    _, scoped = policy_project("isolated")
    worker = start_worker(scoped, f"{run_prefix}-limits")
    memory = host_cgroup_file(worker, "memory", "memory.limit_in_bytes")
    assert int(memory) == 128 << 20
    assert host_cgroup_file(worker, "pids", "pids.max").strip() == "100"
    # LXD pins a count limit (limits.cpu=1) to a CPU by its balancer, a moment after start.
    end = time.monotonic() + 15
    while run_in(worker, "nproc").strip() != "1":
        assert time.monotonic() < end, "limits.cpu=1 never showed as one CPU in the worker"
        time.sleep(0.5)


def test_privileged_worker_maps_host_ids(policy_project: Any, run_prefix: str) -> None:
    _, scoped = policy_project("privileged")
    profile = scoped.profiles.get(constants.WORKER_PROFILE)
    assert profile.config["security.privileged"] == "true"
    assert "security.idmap.isolated" not in profile.config
    worker = start_worker(scoped, f"{run_prefix}-priv")
    assert run_in(worker, "cat", "/proc/self/uid_map").split() == ["0", "0", "4294967295"]


def test_nesting_worker_gets_proc_and_sys_for_nested_containers(
    policy_project: Any, run_prefix: str
) -> None:
    _, nested_client = policy_project("nested")
    _, plain_client = policy_project("isolated")
    nested = start_worker(nested_client, f"{run_prefix}-nest")
    plain = start_worker(plain_client, f"{run_prefix}-plain")
    assert nested.expanded_config["security.nesting"] == "true"
    assert plain.expanded_config["security.nesting"] == "false"

    def mount_points(worker: Any) -> set[str]:
        mounts = run_in(worker, "cat", "/proc/self/mountinfo").splitlines()
        return {line.split()[4] for line in mounts}

    # LXD gives a nesting container spare proc and sysfs mounts for its own containers.
    nesting_mounts = {"/dev/.lxc/proc", "/dev/.lxc/sys"}
    assert nesting_mounts <= mount_points(nested)
    assert not nesting_mounts & mount_points(plain)


# --------------------------------------------------------------------------- pool re-creation


def test_empty_pool_of_another_driver_is_recreated(
    run_prefix: str, lxd_client: pylxd.Client, tmp_path: Path
) -> None:
    config = base_config(run_prefix, "hswap", storage_driver="btrfs", storage_size="1GiB")
    assert configure(config, tmp_path).ok
    scoped = connect(project=config.lxd_project)
    build_busybox_image(scoped, "busybox")
    worker = scoped.instances.create(
        {
            "name": f"{run_prefix}-gone",
            "source": {"type": "image", "alias": "busybox"},
            "profiles": [constants.WORKER_PROFILE],
        },
        wait=True,
    )
    worker.delete(wait=True)  # leaves the image's cached volume on the pool
    as_dir = HostConfig(**{**_fields(config), "storage_driver": "dir"})
    report = configure(as_dir, tmp_path)
    assert report.ok, report.problems
    assert (
        f"deleted btrfs storage pool {config.storage_pool} (it held no instance)" in report.changes
    )
    assert lxd_client.storage_pools.get(config.storage_pool).driver == "dir"
    profile = scoped.profiles.get(constants.WORKER_PROFILE)
    assert profile.devices["root"]["pool"] == config.storage_pool
    assert configure(as_dir, tmp_path).changes == []


# --------------------------------------------------------------------------- https and trust


def _self_signed_pem(common_name: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def test_listener_identity_and_peer_trust(
    dir_host: tuple[HostConfig, HostReport, Path],
    lxd_client: pylxd.Client,
    tmp_path: Path,
    run_prefix: str,
) -> None:
    config, _, _ = dir_host
    if lxd_client.host_info["config"].get("core.https_address"):
        pytest.fail("this daemon already listens on HTTPS: the test would not own the setting")
    listening = HostConfig(**{**_fields(config), "lxd_listen_https": "127.0.0.1:18443"})
    peer_a, peer_b = f"{run_prefix}-peer/0", f"{run_prefix}-peer/1"
    try:
        report = configure(listening, tmp_path)
        assert report.changes == ["LXD listens on 127.0.0.1:18443"]
        assert connect().host_info["config"]["core.https_address"] == "127.0.0.1:18443"
        identity = server_identity(listening, "10.1.2.3")
        assert identity.address == "10.1.2.3:18443"
        assert identity.certificate.startswith("-----BEGIN CERTIFICATE-----")
        assert len(identity.fingerprint) == 64
        assert server_identity(config, "10.1.2.3").address == ""

        pems = {peer_a: _self_signed_pem("a"), peer_b: _self_signed_pem("b")}
        with pytest.raises(HostError, match="peer bad/0"):
            trust_peers(listening, {**pems, "bad/0": "not a certificate"})
        assert trust_peers(config, pems) == []
        added = trust_peers(listening, pems)
        assert len(added) == 2
        names = {c.name for c in connect().certificates.all()}
        assert {
            constants.TRUST_NAME_PREFIX + peer_a,
            constants.TRUST_NAME_PREFIX + peer_b,
        } <= names
        assert trust_peers(listening, pems) == []
        assert trust_peers(listening, {peer_a: pems[peer_a]}) == [
            f"removed {constants.TRUST_NAME_PREFIX + peer_b} from LXD's trust store"
        ]
    finally:
        trust_peers(listening, {})
        unset = configure(config, tmp_path)
    assert unset.changes == ["LXD no longer listens on 127.0.0.1:18443"]
    server = connect().host_info["config"]
    assert "core.https_address" not in server and HTTPS_OWNER_KEY not in server
    assert not any(
        c.name.startswith(constants.TRUST_NAME_PREFIX + run_prefix)
        for c in connect().certificates.all()
    )
