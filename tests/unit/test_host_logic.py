"""Pure logic of host configuration on real files in tmp_path (no LXD, no mocks of it)."""

import json
from pathlib import Path

import pytest
import yaml

from container_compute import constants
from container_compute.config import HostConfig
from container_compute.host import (
    HostError,
    HostReport,
    load_saved_config,
    save_config,
    summarize,
)
from container_compute.host.ids import (
    ensure_group_member,
    ensure_subids,
    extend_subid_text,
    needed_subids,
    user_exists,
)
from container_compute.host.modules import (
    BUILTIN,
    LOADABLE,
    LOADED,
    MISSING,
    apply_modules,
    classify_module,
    plan_modules,
)
from container_compute.host.profile import render_profile
from container_compute.host.sysctl import ensure_sysctl
from container_compute.host.system import HostPaths
from container_compute.host.trust import pem_to_der
from container_compute.rendering import render as render_template

RELEASE = "6.1.0-test"


@pytest.fixture
def paths(tmp_path: Path) -> HostPaths:
    """Build a fake host: /sys/module, /lib/modules/<release>, /proc/sys and /etc files."""
    sys_module = tmp_path / "sys" / "module"
    (sys_module / "overlay" / "parameters").mkdir(parents=True)  # built in: no initstate
    (sys_module / "nbd").mkdir()
    (sys_module / "nbd" / "initstate").write_text("live\n")  # loaded, has a module file
    (sys_module / "vendor_mod").mkdir()
    (sys_module / "vendor_mod" / "initstate").write_text("live\n")  # loaded, no file
    release_dir = tmp_path / "lib" / "modules" / RELEASE
    release_dir.mkdir(parents=True)
    (release_dir / "modules.builtin").write_text("kernel/fs/ext4/ext4.ko\n")
    (release_dir / "modules.dep").write_text(
        "kernel/drivers/block/nbd.ko.zst:\n"
        "kernel/net/openvswitch/openvswitch.ko.xz: kernel/net/nsh/nsh.ko.xz\n"
        "kernel/net/ipv4/netfilter/ip_tables.ko:\n"
    )
    proc_sys = tmp_path / "proc" / "sys"
    for key, value in {
        "fs.inotify.max_queued_events": 16384,
        "fs.inotify.max_user_instances": 128,
        "fs.inotify.max_user_watches": 4194304,  # higher than ours: kept
        "fs.aio-max-nr": 65536,
        "kernel.keys.maxkeys": 200,
        "kernel.keys.maxbytes": 20000,
        "vm.max_map_count": 65530,
    }.items():  # no net.ipv4.neigh: a host without that key
        path = proc_sys / key.replace(".", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{value}\n")
    return HostPaths(
        sysctl_dir=tmp_path / "etc" / "sysctl.d",
        modules_load_dir=tmp_path / "etc" / "modules-load.d",
        subuid=tmp_path / "etc" / "subuid",
        subgid=tmp_path / "etc" / "subgid",
        sys_module=sys_module,
        proc_sys=proc_sys,
        modules_dir=tmp_path / "lib" / "modules",
    )


@pytest.mark.parametrize(
    ("module", "kind"),
    [
        ("ext4", BUILTIN),
        ("overlay", BUILTIN),
        ("nbd", LOADABLE),
        ("openvswitch", LOADABLE),
        ("ip-tables", LOADABLE),
        ("vendor_mod", LOADED),
        ("vendor-mod", LOADED),
        ("nosuchmod", MISSING),
    ],
)
def test_module_classification(paths: HostPaths, module: str, kind: str) -> None:
    assert classify_module(module, paths, RELEASE) == kind


def test_module_plan_and_persistence(paths: HostPaths) -> None:
    modules = ("overlay", "nbd", "openvswitch", "vendor-mod", "ip_tables")
    plan = plan_modules(modules, paths, RELEASE)
    assert plan.problems == []
    assert plan.on_host == ["overlay", "vendor_mod"]
    assert plan.to_lxd == ["nbd", "openvswitch", "ip_tables"]
    assert plan.to_load == ["openvswitch", "ip_tables"]
    plan.to_load = []  # loading needs a real kernel; persistence is what is checked here
    load_file = paths.modules_load_dir / constants.MODULES_LOAD_FILE_NAME
    assert apply_modules(plan, paths, dry_run=True) == [
        f"wrote {load_file} (nbd, openvswitch, ip_tables)"
    ]
    assert not load_file.exists()
    assert apply_modules(plan, paths, dry_run=False) != []
    assert load_file.read_text().splitlines()[1:] == ["nbd", "openvswitch", "ip_tables"]
    assert apply_modules(plan, paths, dry_run=False) == []
    empty = plan_modules(("overlay",), paths, RELEASE)
    assert apply_modules(empty, paths, dry_run=False) == [f"removed {load_file}"]
    assert not load_file.exists()


def test_missing_module_problem_names_option_module_and_kernel(paths: HostPaths) -> None:
    plan = plan_modules(("nbd", "nosuchmod"), paths, RELEASE)
    assert plan.problems == [
        f"worker-kernel-modules: module nosuchmod is neither built in nor loadable on this "
        f"host (kernel {RELEASE}); install its module package or remove it"
    ]


def test_subid_extension_keeps_other_lines() -> None:
    needed = needed_subids(8)
    assert needed == constants.IDMAP_SIZE * 10
    big = "root:100000:10000001\n_lxd:100000:10000001\n"
    assert extend_subid_text(big, needed) == big
    small = "alice:100000:65536\nroot:100000:65536\nbob:200000:65536\n"
    assert extend_subid_text(small, needed) == (
        f"alice:100000:65536\nroot:100000:{needed}\nbob:200000:65536\n"
    )
    elsewhere = "root:5000000:65536\n"
    assert extend_subid_text(elsewhere, needed) == f"root:5000000:65536\nroot:100000:{needed}\n"
    assert extend_subid_text("", needed) == f"root:100000:{needed}\n"


def test_ensure_subids_is_idempotent(paths: HostPaths) -> None:
    paths.subuid.parent.mkdir(parents=True)
    paths.subuid.write_text("root:100000:65536\n")
    needed = needed_subids(4)
    assert ensure_subids(paths, needed, dry_run=True) != []
    assert paths.subuid.read_text() == "root:100000:65536\n"
    assert len(ensure_subids(paths, needed, dry_run=False)) == 2
    assert paths.subuid.read_text() == f"root:100000:{needed}\n"
    assert paths.subgid.read_text() == f"root:100000:{needed}\n"
    assert ensure_subids(paths, needed, dry_run=False) == []


def test_sysctl_only_raises_and_skips_absent_keys(paths: HostPaths) -> None:
    changes, notes = ensure_sysctl(paths, True, dry_run=False)
    conf = paths.sysctl_dir / constants.SYSCTL_FILE_NAME
    text = conf.read_text()
    assert "fs.inotify.max_user_watches = 4194304\n" in text
    assert "fs.aio-max-nr = 524288\n" in text
    assert "vm.max_map_count = 262144\n" in text
    assert "gc_thresh3" not in text
    assert notes == [
        "sysctl net.ipv4.neigh.default.gc_thresh3 does not exist on this host: not set"
    ]
    watches = paths.proc_sys / "fs" / "inotify" / "max_user_watches"
    assert watches.read_text().strip() == "4194304"
    assert (paths.proc_sys / "kernel" / "keys" / "maxkeys").read_text().strip() == "2000"
    assert "raised fs.inotify.max_user_watches to 4194304" not in changes
    assert f"wrote {conf}" in changes
    assert ensure_sysctl(paths, True, dry_run=False) == ([], notes)
    assert ensure_sysctl(paths, False, dry_run=True)[0] == [f"removed {conf}"]
    assert conf.exists()
    off_changes, off_notes = ensure_sysctl(paths, False, dry_run=False)
    assert off_changes == [f"removed {conf}"] and not conf.exists()
    assert off_notes == ["sysctl values stay raised until the next reboot"]


def test_sysctl_template_renders_sorted_settings() -> None:
    text = render_template("sysctl.conf.j2", settings=[("a.b", 1), ("c.d", 2)])
    body = [line for line in text.splitlines() if not line.startswith("#")]
    assert body == ["a.b = 1", "c.d = 2"]


def test_missing_template_value_raises() -> None:
    with pytest.raises(Exception, match="settings"):
        render_template("sysctl.conf.j2")


def test_profile_default_policy() -> None:
    profile = render_profile(HostConfig(storage_pool="p1"), [])
    assert profile["config"] == {
        "security.privileged": "false",
        "security.nesting": "false",
        "security.idmap.isolated": "true",
        "limits.cpu": "1",
        "limits.memory": "1GiB",
        "limits.processes": "2000",
    }
    # worker-disk's default (10GiB) sizes the root disk: one task cannot fill the whole pool.
    assert profile["devices"] == {
        "root": {"type": "disk", "path": "/", "pool": "p1", "size": "10GiB"}
    }


def test_profile_privileged_nested_unlimited_with_network_and_modules() -> None:
    config = HostConfig(
        worker_privileged=True,
        worker_nesting=True,
        worker_cpu="",
        worker_memory="",
        worker_processes=0,
        worker_network="lxdbr0",
    )
    profile = render_profile(config, ["nbd", "openvswitch"])
    assert profile["config"] == {
        "security.privileged": "true",
        "security.nesting": "true",
        "linux.kernel_modules": "nbd,openvswitch",
    }
    assert profile["devices"]["eth0"] == {"type": "nic", "name": "eth0", "network": "lxdbr0"}


def test_profile_unprivileged_shared_idmap_and_cpu_set() -> None:
    config = HostConfig(worker_idmap_isolated=False, worker_cpu="0-1,3", worker_memory="50%")
    profile = render_profile(config, [])
    assert "security.idmap.isolated" not in profile["config"]
    assert profile["config"]["limits.cpu"] == "0-1,3"
    assert profile["config"]["limits.memory"] == "50%"


def test_profile_values_cannot_change_the_yaml_structure() -> None:
    text = render_template(
        "worker-profile.yaml.j2",
        app="x",
        privileged=False,
        nesting=False,
        idmap_isolated=True,
        cpu='1"\nsecurity.privileged: "true',
        memory="",
        processes=0,
        kernel_modules=[],
        pool="p",
        disk='1GiB"\n    readonly: "true',
        network="",
    )
    parsed = yaml.safe_load(text)
    assert parsed["config"]["security.privileged"] == "false"
    assert parsed["config"]["limits.cpu"] == '1"\nsecurity.privileged: "true'
    assert parsed["devices"]["root"]["size"] == '1GiB"\n    readonly: "true'
    assert "readonly" not in parsed["devices"]["root"]


def test_report_dict_and_summary() -> None:
    config = HostConfig(storage_pool="container-compute")
    assert summarize(config) == (
        "btrfs pool container-compute; workers unprivileged, isolated idmap, cpu 1, "
        "memory 1GiB, no network"
    )
    assert summarize(
        HostConfig(worker_privileged=True, worker_nesting=True, worker_cpu=""), ["nbd"]
    ) == (
        "btrfs pool container-compute; workers privileged, nesting, cpu unlimited, "
        "memory 1GiB, modules nbd, no network"
    )
    report = HostReport(changes=["x"], problems=[], project="p", notes=["n"])
    data = report.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["changed"] is True and data["ok"] is True
    assert {"kernel-modules-to-lxd", "kernel-modules-on-host", "lxd-version"} <= set(data)
    blocked = HostReport(problems=["storage-driver: no"])
    assert not blocked.changed and not blocked.ok


def test_saved_config_round_trip(tmp_path: Path) -> None:
    assert load_saved_config(tmp_path) == HostConfig()
    config = HostConfig(storage_driver="dir", worker_memory="2GiB", max_parallel_workers=3)
    assert save_config(config, tmp_path / "state") is True
    assert save_config(config, tmp_path / "state") is False
    assert load_saved_config(tmp_path / "state") == config
    saved = json.loads((tmp_path / "state" / "host-config.json").read_text())
    assert saved["worker-memory"] == "2GiB"


def test_saved_config_errors_name_the_problem(tmp_path: Path) -> None:
    (tmp_path / "host-config.json").write_text('{"storage-driver": "ntfs", "gone-option": 1}')
    with pytest.raises(HostError, match="storage-driver: 'ntfs' is not one of"):
        load_saved_config(tmp_path)
    (tmp_path / "host-config.json").write_text("{not json")
    with pytest.raises(HostError, match="not readable JSON"):
        load_saved_config(tmp_path)


def test_users_and_groups() -> None:
    assert user_exists("root")
    assert not user_exists("no-such-user-cc")
    assert ensure_group_member("root", "root") is False
    with pytest.raises(HostError, match="user 'no-such-user-cc' does not exist"):
        ensure_group_member("no-such-user-cc")
    with pytest.raises(HostError, match="is not a valid name"):
        ensure_group_member("root; rm -rf /")


def test_bad_peer_certificate_names_the_unit() -> None:
    with pytest.raises(HostError, match="peer web/3: its certificate is not a PEM"):
        pem_to_der("web/3", "hello")
