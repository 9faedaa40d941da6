"""Reading a worker from the host: its init pid, its root, its cgroups.

On the local daemon the engine never asks LXD while it polls: the worker's init pid comes from
its cgroup, its files are read through ``/proc/<init>/root`` while it runs, or through its
rootfs under LXD's storage-pools directory (dir and btrfs pools keep it there, also when the
worker is stopped), opening every path below with ``O_NOFOLLOW`` and never opening anything
but a regular file or a directory. OOM kills are read from its memory cgroup (v1
``memory.oom_control`` or v2 ``memory.events``), refused forks from its pids cgroup
(``pids.events``, v1 or v2).
"""

import contextlib
import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ..gather import kind_of
from ..usage import WORKER_CGROUP, Usage, keyed_numbers
from .parsing import event_count

CC_DIR = "run/cc"
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Found:
    """What a look at ``/run/cc/<name>`` in a worker found.

    ``kind`` is "file" (then ``data`` holds its first bytes), "missing", or the kind of what
    is there instead ("directory", "fifo", "symlink", ...). ``cc_problem`` says how the task
    broke ``/run/cc`` itself (removed it, replaced it with a link or a file), else is empty.
    """

    kind: str
    data: bytes = b""
    cc_problem: str = ""


def read_cc_file(root: Path, name: str, limit: int = 64) -> Found | None:
    """Look at ``/run/cc/<name>`` under a worker's root on the host; None if the root is gone.

    Nothing but a regular file is opened; no link is followed.
    """
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    fds = [root_fd]
    try:
        for part in CC_DIR.split("/"):
            try:
                fds.append(os.open(part, DIR_FLAGS, dir_fd=fds[-1]))
            except OSError as err:
                return Found("missing", cc_problem=_cc_problem(fds[-1], part, err))
        return _read_regular(fds[-1], name, limit)
    finally:
        for fd in reversed(fds):
            os.close(fd)


def _cc_problem(parent_fd: int, part: str, err: OSError) -> str:
    """Say how ``/run`` or ``/run/cc`` is broken, given the error opening ``part``."""
    path = "/run" if part == "run" else "/run/cc"
    if err.errno == errno.ENOENT:
        return f"the task removed {path}"
    try:
        kind = kind_of(os.stat(part, dir_fd=parent_fd, follow_symlinks=False).st_mode)
    except OSError:
        kind = "something unreadable"
    return f"the task replaced {path} with a {kind}"


def _read_regular(dir_fd: int, name: str, limit: int) -> Found:
    """Read up to ``limit`` bytes of ``name`` in ``dir_fd`` if it is a regular file."""
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return Found("missing")
    if not stat.S_ISREG(info.st_mode):
        return Found(kind_of(info.st_mode))
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except OSError:
        return Found("missing")
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):  # swapped between the stat and the open
            return Found(kind_of(mode))
        return Found("file", os.read(fd, limit))
    except OSError:
        return Found("missing")
    finally:
        os.close(fd)


def _read_bytes(path: Path, limit: int = 4096) -> bytes:
    """The first bytes of a cgroup file, b"" when it cannot be read."""
    try:
        with path.open("rb") as file:
            return file.read(limit)
    except OSError:
        return b""


def usable_root(path: Path) -> bool:
    """Tell whether ``path`` is a directory with something in it (a mounted, visible rootfs)."""
    try:
        with os.scandir(path) as scan:
            return next(scan, None) is not None
    except OSError:
        return False


def has_cc_dir(root: Path) -> bool:
    """Tell whether ``root``/run/cc is a real directory (no link followed below ``root``)."""
    found = read_cc_file(root, ".")
    return found is not None and not found.cc_problem


def volume_name(project: str, name: str) -> str:
    """How LXD names an instance of ``project`` on the host (cgroups, log and pool dirs)."""
    return name if project == "default" else f"{project}_{name}"


def _cgroup_path(controller: str, volume: str) -> list[Path]:
    """Candidate host paths of the worker's cgroup for ``controller`` (v1, then v2)."""
    name = f"lxc.payload.{volume}"
    return [_CGROUP_ROOT / controller / name, _CGROUP_ROOT / name]


def worker_level_pid(nspid: list[str]) -> str | None:
    """The pid in the worker's namespace of a worker process's ``NSpid`` fields, if it has one.

    The fields go from ours to the innermost namespace. A worker's process is one level down:
    ``NSpid: 4242 1`` is the worker's init. A sandbox's processes are one more level down, and
    a sandbox's init is also pid 1 of its own namespace (``NSpid: 4300 57 1``): the innermost
    pid would take it for the worker's init.
    """
    return nspid[1] if len(nspid) >= 2 else None


def _ns_pid(pid: str) -> str | None:
    """Return the in-worker pid of host pid ``pid``, if it still exists."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return worker_level_pid(line.split()[1:])
    return None


def tree_pids(cgroup: Path) -> list[str] | None:
    """The host pids in ``cgroup`` and every cgroup below it; None if it cannot be read.

    On cgroup v2 a worker's processes sit in child cgroups of its own: ``.lxc`` (LXD's exec),
    ``worker`` (its init, once its controllers are handed down) and ``task`` (a sandbox).
    """
    pids: list[str] = []
    try:
        pids.extend((cgroup / "cgroup.procs").read_text().split())
    except OSError:
        return None
    for directory, children, _ in os.walk(cgroup):
        for child in children:
            with contextlib.suppress(OSError):
                pids.extend(Path(directory, child, "cgroup.procs").read_text().split())
    return pids


def init_pid_from_cgroup(volume: str) -> int:
    """Return the host pid of the init of the container in cgroup ``lxc.payload.<volume>``."""
    for base in ("/sys/fs/cgroup/pids", "/sys/fs/cgroup/memory", "/sys/fs/cgroup"):
        for pid in tree_pids(Path(base, f"lxc.payload.{volume}")) or []:
            if _ns_pid(pid) == "1":
                return int(pid)
    return 0


def _worker_cgroup(path: str) -> str:
    """The worker's own cgroup (``.../lxc.payload.<volume>``) of a cgroup path in it."""
    parts = path.split("/")
    for index in range(len(parts) - 1, -1, -1):  # the innermost (an LXD in a container)
        if parts[index].startswith("lxc.payload."):
            return "/".join(parts[: index + 1])
    return path


def memory_cgroup(pid: int) -> Path | None:
    """Return the host path of the memory cgroup of worker init ``pid`` (cgroup v1 or v2).

    The worker's own cgroup, also when its init sits in a child of it (cgroup v2).
    """
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    v2: Path | None = None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return Path("/sys/fs/cgroup/memory" + _worker_cgroup(path))
        if controllers == "":
            v2 = Path("/sys/fs/cgroup" + _worker_cgroup(path))
    if v2 is not None and (v2 / "memory.events").exists():
        return v2
    return None


class WorkerView:
    """What ``wait`` knows of a worker on the host: its roots, init pid and cgroups."""

    def __init__(
        self,
        name: str,
        volume: str,
        pid: int,
        proc_root: Path | None,
        pool_root: Path | None,
    ) -> None:
        """Describe worker ``name`` (cgroup ``lxc.payload.<volume>``, host init ``pid``)."""
        self.name = name
        self.volume = volume
        self.pid = pid
        self.proc_root = proc_root
        self.pool_root = pool_root
        self.memory_cgroup = memory_cgroup(pid) if pid and proc_root is not None else None
        self.checks_without_wrapper = 0
        self.wrapper_pid: int | None = None
        self.refused_forks = 0
        self.oom_killed = 0
        # Counts before this task (a warm worker's earlier tasks): only later ones are its.
        self.refused_before = 0
        self.oom_before = 0
        self.sandboxed = False
        self.stopped = False  # stopped by the watcher (to read it through the files API)
        self.rootfs: Path | None = None  # the host view of its root in use (None: files API)

    def init_alive(self) -> bool:
        """Tell whether the init this view was made for still runs (not a reused pid)."""
        if self.pid <= 0:
            return False
        try:
            cgroups = Path(f"/proc/{self.pid}/cgroup").read_text()
        except OSError:
            return False
        return f"lxc.payload.{self.volume}" in cgroups and _ns_pid(str(self.pid)) == "1"

    def oom_kills(self) -> int:
        """OOM kills counted in the worker's memory cgroup (the most seen; 0 when unknown)."""
        if self.memory_cgroup is not None:
            for name, key in (("memory.oom_control", "oom_kill"), ("memory.events", "oom_kill")):
                with contextlib.suppress(OSError):
                    count = event_count((self.memory_cgroup / name).read_text(), key)
                    self.oom_killed = max(self.oom_killed, count)
                    break
        return max(0, self.oom_killed - self.oom_before)

    def forks_refused(self) -> int:
        """Forks the worker's pids cgroup refused at its limit (the most seen; 0 if unknown)."""
        if self.proc_root is not None:
            for path in _cgroup_path("pids", self.volume):
                with contextlib.suppress(OSError):
                    count = event_count((path / "pids.events").read_text(), "max")
                    self.refused_forks = max(self.refused_forks, count)
                    break
        return max(0, self.refused_forks - self.refused_before)

    def usage(self) -> Usage:
        """The worker's CPU times, memory peak and OOM kills from its cgroups on the host.

        The whole worker's (a fresh worker per task): cgroup2 ``cpu.stat`` (also the hybrid
        hierarchy's), else v1 ``cpuacct``; v1 ``memory.max_usage_in_bytes`` or v2
        ``memory.peak``. Read while the worker still runs.
        """
        usage = Usage()
        name = f"lxc.payload.{self.volume}"
        for path in (_CGROUP_ROOT / "unified" / name, _CGROUP_ROOT / name):
            stat = _read_bytes(path / "cpu.stat")
            if stat:
                numbers = keyed_numbers(stat)
                usage.take_cpu(numbers.get("user_usec"), numbers.get("system_usec"), WORKER_CGROUP)
        for controller in ("cpuacct", "cpu,cpuacct"):
            path = _CGROUP_ROOT / controller / name
            user, system = (
                _read_bytes(path / "cpuacct.usage_user"),
                _read_bytes(path / "cpuacct.usage_sys"),
            )
            if user.strip().isdigit() and system.strip().isdigit():
                usage.take_cpu(int(user) // 1000, int(system) // 1000, WORKER_CGROUP)
        if self.memory_cgroup is not None:
            for file in ("memory.max_usage_in_bytes", "memory.peak"):
                peak = _read_bytes(self.memory_cgroup / file).strip()
                if peak.isdigit():
                    usage.take_memory(int(peak), WORKER_CGROUP)
            usage.oom_kills = self.oom_kills()
        return usage

    def start_counting(self) -> None:
        """Count only the OOM kills and refused forks from now on (a warm worker's task)."""
        self.oom_before = self.oom_before + self.oom_kills()
        self.refused_before = self.refused_before + self.forks_refused()

    def wrapper_alive(self, wrapper_pid: int) -> bool:
        """Tell whether a process of the worker has ``wrapper_pid`` as its in-worker pid."""
        if self.memory_cgroup is None:
            return True
        pids = tree_pids(self.memory_cgroup)
        if pids is None:
            return True
        return any(_ns_pid(pid) == str(wrapper_pid) for pid in pids)
