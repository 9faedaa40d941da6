"""A running task's output as it is written, read from the host from an offset.

That is ``/run/cc/stdout`` or ``stderr`` of its worker, through the worker's own root
(``/proc/<init>/root``). Only workers of the local daemon are read so (the host sees their
roots); the file is read only when ``/run/cc/attempt`` names the attempt asked for (a warm
worker's next task has its own), and every path below the root is opened without following
a link, as ``hostside`` does. A worker the host cannot see (on another LXD cluster member, or
a remote LXD) is read through an exec of ``tail | head`` in it (``api``), bounded by the
same limit.
"""

import contextlib
import os
import stat

import pylxd.exceptions
import requests

from .api import LXDApi, OperationFailedError
from .hostside import CC_DIR, DIR_FLAGS, init_pid_from_cgroup, volume_name
from .launch import run_recorded

_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
ATTEMPT_FILE_BYTES = 256
STREAMS = ("stdout", "stderr")


# Prints LIMIT bytes of /run/cc/STREAM from OFFSET if /run/cc is the attempt's (else exit 3).
_READ_SCRIPT = (
    'read -r cc_a </run/cc/attempt && [ "$cc_a" = "$CC_ATTEMPT" ] || exit 3\n'
    'cc_f=/run/cc/"$CC_STREAM"; [ -f "$cc_f" ] && [ ! -L "$cc_f" ] || exit 3\n'
    'tail -c +"$((CC_OFFSET + 1))" "$cc_f" | head -c "$CC_LIMIT"\n'
)
EXEC_TIMEOUT_SECONDS = 20.0


class LiveOutput:
    """Reads the output of attempts running in one LXD project's workers."""

    def __init__(self, project: str, api: LXDApi | None = None, host_access: bool = True) -> None:
        """Read ``project``'s workers from the host (``host_access``), else through ``api``."""
        self.project = project
        self.api = api
        self.host_access = host_access

    def read(
        self, worker: str, attempt: str, stream: str, offset: int, limit: int
    ) -> bytes | None:
        """Up to ``limit`` bytes of the attempt's ``stream`` from ``offset``.

        None when they cannot be read now: the worker is not running here, or its /run/cc
        is not (or no longer) the attempt's.
        """
        if stream not in STREAMS:
            raise ValueError(f"stream: {stream!r} is not stdout or stderr")
        volume = volume_name(self.project, worker)
        pid = init_pid_from_cgroup(volume) if self.host_access else 0
        if not pid:
            return self._read_through_exec(worker, attempt, stream, offset, limit)
        return _read_host_side(pid, attempt, stream, offset, limit)

    def _read_through_exec(
        self, worker: str, attempt: str, stream: str, offset: int, limit: int
    ) -> bytes | None:
        """The same bytes through an exec in the worker (one the host does not see)."""
        if self.api is None:
            return None
        environment = {
            "CC_ATTEMPT": attempt,
            "CC_STREAM": stream,
            "CC_OFFSET": str(offset),
            "CC_LIMIT": str(limit),
        }
        try:
            code, said = run_recorded(
                self.api, worker, _READ_SCRIPT, environment, EXEC_TIMEOUT_SECONDS
            )
        except (OperationFailedError, pylxd.exceptions.LXDAPIException, requests.RequestException):
            return None
        return said[:limit] if code == 0 else None


def _read_host_side(pid: int, attempt: str, stream: str, offset: int, limit: int) -> bytes | None:
    """Read through ``/proc/<pid>/root`` (the worker's init), None when it cannot be."""
    fds: list[int] = []
    try:
        fds.append(os.open(f"/proc/{pid}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        for part in CC_DIR.split("/"):
            fds.append(os.open(part, DIR_FLAGS, dir_fd=fds[-1]))
        if _read_file(fds[-1], "attempt", 0, ATTEMPT_FILE_BYTES).strip() != attempt.encode():
            return None
        return _read_file(fds[-1], stream, offset, limit)
    except OSError:
        return None
    finally:
        for fd in reversed(fds):
            os.close(fd)


def _read_file(directory: int, name: str, offset: int, limit: int) -> bytes:
    """Read a regular file of ``directory`` from ``offset`` (OSError when it is not one)."""
    fd = os.open(name, _READ_FLAGS, dir_fd=directory)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{name} is not a regular file")
        with contextlib.suppress(InterruptedError):
            return os.pread(fd, limit, offset)
        return b""
    finally:
        os.close(fd)
