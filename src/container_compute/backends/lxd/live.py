"""A running task's output as it is written, read from the host from an offset.

That is ``/run/cc/stdout`` or ``stderr`` of its worker, through the worker's own root
(``/proc/<init>/root``). Only workers of the local daemon are read so (the host sees their
roots); the file is read only when ``/run/cc/attempt`` names the attempt asked for (a warm
worker's next task has its own), and every path below the root is opened without following
a link, as ``hostside`` does.
"""

import contextlib
import os
import stat

from .hostside import CC_DIR, DIR_FLAGS, init_pid_from_cgroup

_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
ATTEMPT_FILE_BYTES = 256
STREAMS = ("stdout", "stderr")


class LiveOutput:
    """Reads the output of attempts running in one LXD project's workers on this host."""

    def __init__(self, project: str) -> None:
        """Read workers of ``project`` on the local daemon."""
        self.project = project

    def read(
        self, worker: str, attempt: str, stream: str, offset: int, limit: int
    ) -> bytes | None:
        """Up to ``limit`` bytes of the attempt's ``stream`` from ``offset``.

        None when they cannot be read now: the worker is not running here, or its /run/cc
        is not (or no longer) the attempt's.
        """
        if stream not in STREAMS:
            raise ValueError(f"stream: {stream!r} is not stdout or stderr")
        volume = worker if self.project == "default" else f"{self.project}_{worker}"
        pid = init_pid_from_cgroup(volume)
        if not pid:
            return None
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
