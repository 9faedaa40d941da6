"""Connect to the LXD daemon on this machine over its unix socket (snap or package)."""

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
