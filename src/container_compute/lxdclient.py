"""Connect to the LXD daemon on this machine over its unix socket (snap or package).

Also: whether LXD can enforce a disk ``size`` on a storage pool (its dir driver needs project
quotas), which the host report and launch-job both tell the operator.
"""

import ctypes
import os
from pathlib import Path

import pylxd

from .constants import LXD_SOCKET_PATHS

LXD_SOCKET_ENV = "LXD_SOCKET"


class LXDUnavailableError(RuntimeError):
    """No LXD daemon answers on this machine."""


def socket_path() -> Path | None:
    """Return the unix socket of the local LXD daemon, or None when there is none."""
    override = os.environ.get(LXD_SOCKET_ENV)
    candidates = (Path(override),) if override else LXD_SOCKET_PATHS
    return next((path for path in candidates if path.exists()), None)


def connect(project: str | None = None, timeout: float = 60.0) -> pylxd.Client:
    """Return a pylxd client of the local daemon, working in ``project`` when given.

    Raises:
        LXDUnavailableError: when no socket exists or the daemon does not answer.
    """
    path = socket_path()
    if path is None:
        raise LXDUnavailableError(
            "no LXD socket found at " + ", ".join(str(p) for p in LXD_SOCKET_PATHS)
        )
    try:
        return pylxd.Client(endpoint=str(path), project=project, timeout=timeout)
    except Exception as err:  # pylxd raises several kinds for a dead socket
        raise LXDUnavailableError(f"LXD at {path} does not answer: {err}") from err


_MOUNTINFO = Path("/proc/self/mountinfo")
_Q_GETINFO = 0x800005
_PRJQUOTA = 2


def _mount_of(path: Path, mountinfo: Path = _MOUNTINFO) -> tuple[str, str, str] | None:
    """Return (filesystem type, mount point, source) of the mount holding ``path``."""
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        device = os.stat(path).st_dev
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return None
    wanted = f"{os.major(device)}:{os.minor(device)}"
    for line in lines:
        head, sep, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if sep and len(fields) >= 5 and len(rest) >= 2 and fields[2] == wanted:
            return rest[0], fields[4], rest[1]
    return None


def _project_quotas_on(source: str) -> bool:
    """Ask the kernel, as LXD does, whether ``source`` (a block device) has project quotas."""
    if not source.startswith("/") or not Path(source).exists():
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        info = ctypes.create_string_buffer(64)  # struct if_dqinfo is 24 bytes
        command = (_Q_GETINFO << 8) | _PRJQUOTA
        return libc.quotactl(command, source.encode(), 0, info) == 0
    except (OSError, AttributeError):
        return False


def size_unenforced(driver: str, source: str) -> str | None:
    """Why LXD ignores a disk ``size`` on a ``driver`` pool at ``source``; None: it enforces it.

    btrfs (quota groups), zfs and lvm enforce it. LXD's dir driver applies it only when the
    filesystem under the pool has project quotas, and silently skips it otherwise.
    """
    if driver != "dir":
        return None
    mount = _mount_of(Path(source)) if source else None
    if mount is not None and _project_quotas_on(mount[2]):
        return None
    where = f"{mount[0]} at {mount[1]}" if mount else f"the filesystem of {source or '?'}"
    return f"the dir pool's filesystem ({where}) has no project quotas, and LXD then ignores it"
