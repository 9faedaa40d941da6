"""Reading a worker from the host: its init pid, its root through /proc, its cgroups.

On the local daemon the engine never asks LXD while it polls: the worker's init pid comes from
its cgroup, its files are read through ``/proc/<init>/root`` (or the rootfs under LXD's
storage-pools directory) opening every path below with ``O_NOFOLLOW``, and OOM kills are read
from its memory cgroup (v1 ``memory.oom_control`` or v2 ``memory.events``).
"""

import contextlib
import os
import stat
from pathlib import Path

CC_DIR = "run/cc"
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def read_small(dir_fd: int, name: str, limit: int = 64) -> str | None:
    """Read a small regular file in ``dir_fd`` without following links; None if absent."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, limit).decode(errors="replace")
    finally:
        os.close(fd)


def parse_exit_code(text: str | None) -> int | None:
    """Return the integer in ``text``; None when it holds none."""
    if text is None:
        return None
    with contextlib.suppress(ValueError):
        return int(text.strip())
    return None


class WorkerView:
    """What ``wait`` learns once about a running worker: host paths, init pid, cgroups."""

    def __init__(self, name: str, rootfs: Path | None, pid: int, memory_cgroup: Path | None):
        self.name = name
        self.rootfs = rootfs
        self.pid = pid
        self.memory_cgroup = memory_cgroup
        self.checks_without_wrapper = 0

    def init_alive(self) -> bool:
        """Tell whether the worker's init process still exists on the host."""
        return self.pid > 0 and Path(f"/proc/{self.pid}").exists()

    def oom_kills(self) -> int:
        """OOM kills counted in the worker's memory cgroup (0 when unknown)."""
        if self.memory_cgroup is None:
            return 0
        for name in ("memory.oom_control", "memory.events"):
            with contextlib.suppress(OSError):
                for line in (self.memory_cgroup / name).read_text().splitlines():
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        return 0

    def wrapper_alive(self, wrapper_pid: int) -> bool:
        """Tell whether a process of the worker has ``wrapper_pid`` as its in-worker pid."""
        if self.memory_cgroup is None:
            return True
        try:
            pids = (self.memory_cgroup / "cgroup.procs").read_text().split()
        except OSError:
            return True
        for pid in pids:
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("NSpid:") and line.split()[-1] == str(wrapper_pid):
                        return True
        return False


def init_pid_from_cgroup(volume: str) -> int:
    """Return the host pid of the init of the container in cgroup ``lxc.payload.<volume>``."""
    for base in ("/sys/fs/cgroup/pids", "/sys/fs/cgroup/memory", "/sys/fs/cgroup"):
        try:
            pids = Path(base, f"lxc.payload.{volume}", "cgroup.procs").read_text().split()
        except OSError:
            continue
        for pid in pids:
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("NSpid:") and line.split()[-1] == "1":
                        return int(pid)
    return 0


def has_cc_dir(root: Path) -> bool:
    """Tell whether ``root``/run/cc is a real directory (no link followed below ``root``)."""
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    fds = [root_fd]
    try:
        for part in CC_DIR.split("/"):
            fds.append(os.open(part, DIR_FLAGS, dir_fd=fds[-1]))
        return True
    except OSError:
        return False
    finally:
        for fd in fds:
            os.close(fd)


def memory_cgroup(pid: int) -> Path | None:
    """Return the host path of the memory cgroup of ``pid`` (cgroup v1 or v2), if any."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    v2: Path | None = None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return Path("/sys/fs/cgroup/memory" + path)
        if controllers == "":
            v2 = Path("/sys/fs/cgroup" + path)
    if v2 is not None and (v2 / "memory.events").exists():
        return v2
    return None
