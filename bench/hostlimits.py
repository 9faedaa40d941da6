"""What 200 live workers need of this host, checked and raised by the bench (and printed).

- kernel limits (/proc/sys): the library's list for many containers (inotify instances,
  watches and events, keys, map count, aio, neighbour table) and pid_max for N workers'
  processes; only ever raised, and put back afterwards when nobody changed them meanwhile;
- uid ranges: none needed, with isolated idmaps a job's workers share the job's one range;
- file descriptors: the bench's own soft limit is raised to its hard limit; LXD's limit is
  printed with the peak it reached (raising a running daemon's hard limit needs
  CAP_SYS_RESOURCE, which this machine's root does not have).
"""

import resource
from dataclasses import dataclass, field
from pathlib import Path

from container_compute.host.sysctl import SYSCTL_SETTINGS

PROC_SYS = Path("/proc/sys")
PIDS_PER_WORKER = 16  # init, the task's shell and sleep, LXD's monitor and forkexec, margin


@dataclass
class Raised:
    """What the bench changed on the host, to print and to put back."""

    changes: list[str] = field(default_factory=list)
    restore: dict[str, tuple[int, int]] = field(default_factory=dict)


def _path(key: str) -> Path:
    return PROC_SYS / key.replace(".", "/")


def read_sysctl(key: str) -> int | None:
    """A single-number kernel setting, or None when this kernel has no such key."""
    try:
        return int(_path(key).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def threads_now() -> int:
    """Tasks (threads) alive on the host: what pid_max limits."""
    count = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                count += sum(1 for _ in (entry / "task").iterdir())
            except OSError:
                continue
    return count


def wanted_sysctls(workers: int, threads: int) -> dict[str, int]:
    """The kernel settings N live workers want: the library's list, and twice the pids."""
    wanted = dict(SYSCTL_SETTINGS)
    wanted["kernel.pid_max"] = 2 * (threads + workers * PIDS_PER_WORKER)
    return wanted


def key_users(path: Path = Path("/proc/key-users")) -> dict[int, tuple[int, int]]:
    """Keys each uid holds against its quota: {uid: (keys, maxkeys)} from /proc/key-users."""
    users: dict[int, tuple[int, int]] = {}
    try:
        text = path.read_text()
    except OSError:
        return users
    for line in text.splitlines():
        uid, sep, rest = line.partition(":")
        fields = rest.split()
        if not sep or len(fields) < 3 or "/" not in fields[2]:
            continue
        try:
            keys, maxkeys = (int(n) for n in fields[2].split("/"))
            users[int(uid)] = (keys, maxkeys)
        except ValueError:
            continue
    return users


def checked(workers: int) -> list[str]:
    """The limits checked for ``workers`` live workers, as ``key have (wanted)``."""
    lines = []
    for key, value in wanted_sysctls(workers, threads_now()).items():
        lines.append(f"{key} {read_sysctl(key)} (wanted >= {value})")
    return lines


def raise_limits(workers: int) -> Raised:
    """Raise the kernel settings below what ``workers`` need, and our own fd soft limit."""
    raised = Raised()
    for key, value in wanted_sysctls(workers, threads_now()).items():
        have = read_sysctl(key)
        if have is None or have >= value:
            continue
        _path(key).write_text(f"{value}\n")
        raised.restore[key] = (have, value)
        raised.changes.append(f"{key} {have} -> {value}")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        raised.changes.append(f"bench's open files soft limit {soft} -> {hard}")
    return raised


def restore_limits(raised: Raised) -> list[str]:
    """Put back kernel settings the bench raised, unless someone changed them since."""
    notes = []
    for key, (before, ours) in raised.restore.items():
        if read_sysctl(key) == ours:
            _path(key).write_text(f"{before}\n")
            notes.append(f"{key} back to {before}")
    return notes


def lxd_open_files_limit(pid: int | None) -> int | None:
    """The soft open-files limit of a process (LXD), or None."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
    except (OSError, ValueError, IndexError):
        return None
    return None
