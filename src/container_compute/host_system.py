"""The host side of host configuration: kernel modules, subordinate ids, sysctl, groups.

Everything here reads and writes plain files under the paths of a ``HostPaths`` (tests point
them at a temporary tree) or runs a host tool by its absolute path. Nothing here talks to LXD.
"""

import grp
import os
import pwd
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from . import constants


class HostError(RuntimeError):
    """A host change that was asked for cannot be made; the message says what and why."""


@dataclass
class HostPaths:
    """Where the host files are; tests point these at a temporary directory."""

    sysctl_dir: Path = constants.SYSCTL_DIR
    modules_load_dir: Path = constants.MODULES_LOAD_DIR
    subuid: Path = constants.SUBUID_FILE
    subgid: Path = constants.SUBGID_FILE
    sys_module: Path = Path("/sys/module")
    proc_sys: Path = Path("/proc/sys")
    modules_dir: Path = Path("/lib/modules")
    proc_filesystems: Path = Path("/proc/filesystems")


# --------------------------------------------------------------------------- templates


def templates_dir() -> Path:
    """Return the templates directory: $CONTAINER_COMPUTE_TEMPLATES or the charm's own."""
    override = os.environ.get(constants.TEMPLATES_DIR_ENV)
    return Path(override) if override else constants.TEMPLATES_DIR


def render_template(name: str, **values: Any) -> str:
    """Render ``templates/<name>`` with jinja2 and StrictUndefined (a missing value raises)."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 - renders YAML and sysctl text, never HTML
    )
    return environment.get_template(name).render(**values)


def write_if_changed(path: Path, text: str, *, dry_run: bool, mode: int = 0o644) -> bool:
    """Write ``text`` to ``path`` atomically unless it already holds it; return changed."""
    try:
        if path.read_text() == text:
            return False
    except FileNotFoundError:
        pass
    if not dry_run:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(text)
        temporary.chmod(mode)
        temporary.replace(path)
    return True


def remove_if_present(path: Path, *, dry_run: bool) -> bool:
    """Remove ``path`` when it exists; return whether it did (or would)."""
    if not path.exists():
        return False
    if not dry_run:
        path.unlink()
    return True


# --------------------------------------------------------------------------- kernel modules

BUILTIN = "built-in"
LOADED = "loaded"
LOADABLE = "loadable"
MISSING = "missing"


def normalise_module(name: str) -> str:
    """Return a module name as the kernel spells it in /sys/module ('-' becomes '_')."""
    return name.replace("-", "_")


def _module_names_in(listing: Path) -> set[str]:
    """Return the module names listed in modules.builtin or modules.dep."""
    try:
        lines = listing.read_text().splitlines()
    except (FileNotFoundError, NotADirectoryError):
        return set()
    names = set()
    for line in lines:
        path = line.split(":", 1)[0].strip()
        if path:
            base = path.rsplit("/", 1)[-1]
            names.add(normalise_module(re.sub(r"\.ko(\.[a-z0-9]+)?$", "", base)))
    return names


def _modinfo_finds(name: str) -> bool:
    """Ask modinfo whether the running kernel has a module file for ``name``."""
    if not Path(constants.MODINFO).exists():
        return False
    try:
        result = subprocess.run(
            [constants.MODINFO, "-F", "filename", name], check=True, capture_output=True, text=True
        )
    except subprocess.CalledProcessError:
        return False
    return bool(result.stdout.strip()) and "(builtin)" not in result.stdout


def classify_module(name: str, paths: HostPaths, release: str) -> str:
    """Say how the host provides module ``name``: built-in, loaded, loadable or missing.

    Built-in: listed in modules.builtin, or present in /sys/module without an initstate file.
    Loaded: a loadable module in memory whose module file cannot be found (nothing to pass).
    Loadable: a module file exists (modules.dep, or modinfo on the real tree): LXD gets it.
    The answer does not change once a loadable module is loaded, so runs are stable.
    """
    module = normalise_module(name)
    release_dir = paths.modules_dir / release
    if module in _module_names_in(release_dir / "modules.builtin"):
        return BUILTIN
    in_sysfs = (paths.sys_module / module).is_dir()
    if in_sysfs and not (paths.sys_module / module / "initstate").exists():
        return BUILTIN
    has_file = module in _module_names_in(release_dir / "modules.dep")
    if not has_file and paths.modules_dir == HostPaths.modules_dir:
        has_file = _modinfo_finds(module)
    if has_file:
        return LOADABLE
    return LOADED if in_sysfs else MISSING


@dataclass
class ModulePlan:
    """What to do with the configured kernel modules."""

    to_lxd: list[str]
    on_host: list[str]
    to_load: list[str]
    problems: list[str]


def plan_modules(modules: tuple[str, ...], paths: HostPaths, release: str) -> ModulePlan:
    """Classify every configured module; missing ones become problems naming the option."""
    plan = ModulePlan([], [], [], [])
    for module in dict.fromkeys(normalise_module(m) for m in modules):
        kind = classify_module(module, paths, release)
        if kind == MISSING:
            plan.problems.append(
                f"worker-kernel-modules: module {module} is neither built in nor loadable on "
                f"this host (kernel {release}); install its module package or remove it"
            )
        elif kind == LOADABLE:
            plan.to_lxd.append(module)
            if not (paths.sys_module / module / "initstate").exists():
                plan.to_load.append(module)
        else:
            plan.on_host.append(module)
    return plan


def apply_modules(plan: ModulePlan, paths: HostPaths, *, dry_run: bool) -> list[str]:
    """Load the loadable modules and persist them in modules-load.d; return the changes.

    Raises:
        HostError: when modprobe fails.

    """
    changes = []
    for module in plan.to_load:
        if not dry_run:
            try:
                subprocess.run([constants.MODPROBE, module], check=True, capture_output=True)
            except (subprocess.CalledProcessError, OSError) as err:
                detail = getattr(err, "stderr", b"") or str(err).encode()
                raise HostError(
                    f"worker-kernel-modules: modprobe {module} failed: "
                    f"{detail.decode(errors='replace').strip()}"
                ) from err
        changes.append(f"loaded kernel module {module}")
    load_file = paths.modules_load_dir / constants.MODULES_LOAD_FILE_NAME
    if plan.to_lxd:
        text = "# Kernel modules container-compute workers need (worker-kernel-modules).\n"
        text += "".join(f"{module}\n" for module in plan.to_lxd)
        if write_if_changed(load_file, text, dry_run=dry_run):
            changes.append(f"wrote {load_file} ({', '.join(plan.to_lxd)})")
    elif remove_if_present(load_file, dry_run=dry_run):
        changes.append(f"removed {load_file}")
    return changes


# --------------------------------------------------------------------------- subuid / subgid


def needed_subids(max_parallel_workers: int) -> int:
    """Ids root needs for isolated idmaps: one block per worker, plus two spare."""
    return constants.IDMAP_SIZE * (max_parallel_workers + 2)


def extend_subid_text(text: str, needed: int, user: str = "root") -> str:
    """Return ``text`` (subuid/subgid) with ``user`` owning ``needed`` ids from SUBID_BASE.

    A range of the user that already covers them is kept; the user's range starting at
    SUBID_BASE is extended; otherwise one line is appended. Other lines are kept as they are.
    """
    base = constants.SUBID_BASE
    lines = text.splitlines()
    for line in lines:
        fields = line.strip().split(":")
        if len(fields) == 3 and fields[0] == user and fields[1].isdigit() and fields[2].isdigit():
            start, count = int(fields[1]), int(fields[2])
            if start <= base and start + count >= base + needed:
                return text
    for index, line in enumerate(lines):
        fields = line.strip().split(":")
        if len(fields) == 3 and fields[0] == user and fields[1] == str(base):
            lines[index] = f"{user}:{base}:{needed}"
            return "\n".join(lines) + "\n"
    return "".join(f"{line}\n" for line in lines) + f"{user}:{base}:{needed}\n"


def ensure_subids(paths: HostPaths, needed: int, *, dry_run: bool) -> list[str]:
    """Give root ``needed`` ids in subuid and subgid; return the changes."""
    changes = []
    for path in (paths.subuid, paths.subgid):
        try:
            current = path.read_text()
        except FileNotFoundError:
            current = ""
        updated = extend_subid_text(current, needed)
        if updated != current and write_if_changed(path, updated, dry_run=dry_run):
            changes.append(f"gave root {needed} ids from {constants.SUBID_BASE} in {path}")
    return changes


# --------------------------------------------------------------------------- sysctl

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
    return render_template("sysctl.conf.j2", settings=sorted(targets.items()))


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


# --------------------------------------------------------------------------- users and groups

_NAME_RE = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")


def user_exists(user: str) -> bool:
    """Whether ``user`` is a user of this host."""
    try:
        pwd.getpwnam(user)
    except KeyError:
        return False
    return True


def ensure_group_member(user: str, group: str = constants.LXD_GROUP) -> bool:
    """Make ``user`` a member of ``group`` (created when missing); return whether it changed.

    Raises:
        HostError: for an invalid name, a user that does not exist, or a failing tool.

    """
    for what, name in (("user", user), ("group", group)):
        if not _NAME_RE.match(name):
            raise HostError(f"{what} {name!r} is not a valid name (a-z, 0-9, _ . -)")
    if not user_exists(user):
        raise HostError(f"user {user!r} does not exist on this host")
    changed = False
    try:
        entry = grp.getgrnam(group)
    except KeyError:
        _run_tool([constants.GROUPADD, "--system", group])
        entry = grp.getgrnam(group)
        changed = True
    if user in entry.gr_mem or pwd.getpwnam(user).pw_gid == entry.gr_gid:
        return changed
    _run_tool([constants.USERMOD, "--append", "--groups", group, user])
    return True


def _run_tool(command: list[str]) -> None:
    try:
        subprocess.run(command, check=True, capture_output=True)
    except (subprocess.CalledProcessError, OSError) as err:
        detail = getattr(err, "stderr", b"") or str(err).encode()
        raise HostError(f"{command[0]} failed: {detail.decode(errors='replace').strip()}") from err
