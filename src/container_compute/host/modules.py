"""Kernel modules workers need: classified on the host, loaded, persisted."""

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .. import constants
from .system import HostError, HostPaths, remove_if_present, write_if_changed

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
