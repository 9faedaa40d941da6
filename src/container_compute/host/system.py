"""Shared plumbing of host steps: the step log, host paths, atomic file writes, host tools."""

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from .. import constants


@dataclass
class StepLog:
    """What the steps did, would do, or could not do."""

    dry_run: bool
    changes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


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


def run_tool(command: list[str]) -> None:
    """Run a host tool; HostError with its stderr when it fails."""
    try:
        subprocess.run(command, check=True, capture_output=True)
    except (subprocess.CalledProcessError, OSError) as err:
        detail = getattr(err, "stderr", b"") or str(err).encode()
        raise HostError(f"{command[0]} failed: {detail.decode(errors='replace').strip()}") from err
