"""Kernel limits raised for many containers (/etc/sysctl.d), never lowered."""

from collections.abc import Mapping
from pathlib import Path

from .. import constants
from ..rendering import render
from .system import HostPaths, remove_if_present, write_if_changed

SYSCTL_SETTINGS: Mapping[str, int] = {
    "fs.inotify.max_queued_events": 1048576,
    "fs.inotify.max_user_instances": 1048576,
    "fs.inotify.max_user_watches": 1048576,
    "fs.aio-max-nr": 524288,
    "kernel.keys.maxkeys": 2000,
    "kernel.keys.maxbytes": 2000000,
    "vm.max_map_count": 262144,
    "net.ipv4.neigh.default.gc_thresh3": 8192,
}


def _proc_path(proc_sys: Path, key: str) -> Path:
    return proc_sys / key.replace(".", "/")


def current_sysctl(proc_sys: Path, key: str) -> int | None:
    """Return the host's value of ``key``, or None when the host has no such single-number key."""
    try:
        return int(_proc_path(proc_sys, key).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def sysctl_targets(proc_sys: Path) -> tuple[dict[str, int], list[str]]:
    """Values to set (ours, or the host's when higher) and the keys this host lacks."""
    targets: dict[str, int] = {}
    absent: list[str] = []
    for key, wanted in SYSCTL_SETTINGS.items():
        have = current_sysctl(proc_sys, key)
        if have is None:
            absent.append(key)
        else:
            targets[key] = max(wanted, have)
    return targets, absent


def render_sysctl(targets: Mapping[str, int]) -> str:
    """Return the text of 60-container-compute.conf."""
    return render("sysctl.conf.j2", settings=sorted(targets.items()))


def ensure_sysctl(
    paths: HostPaths, enabled: bool, *, dry_run: bool
) -> tuple[list[str], list[str]]:
    """Write and apply (only raising) our sysctl file, or remove it; return changes, notes."""
    conf = paths.sysctl_dir / constants.SYSCTL_FILE_NAME
    if not enabled:
        if remove_if_present(conf, dry_run=dry_run):
            return [f"removed {conf}"], ["sysctl values stay raised until the next reboot"]
        return [], []
    targets, absent = sysctl_targets(paths.proc_sys)
    notes = [f"sysctl {key} does not exist on this host: not set" for key in absent]
    changes = []
    if write_if_changed(conf, render_sysctl(targets), dry_run=dry_run):
        changes.append(f"wrote {conf}")
    for key, value in targets.items():
        if current_sysctl(paths.proc_sys, key) != value:
            if not dry_run:
                _proc_path(paths.proc_sys, key).write_text(f"{value}\n")
            changes.append(f"raised {key} to {value}")
    return changes, notes
