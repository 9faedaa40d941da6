"""What an attempt used (CPU, peak memory, OOM kills), and where each figure came from.

Sources, best first, as sacct takes them from the job's own cgroup:

- ``task-cgroup``: the task's own cgroup in its warm worker (``cpu.stat``; ``memory.peak``
  where the worker delegates the memory controller, a cgroup v2 host);
- ``sandbox-rusage``: the sandbox init's rusage of its descendants (``ru_maxrss``, CPU times);
- ``worker-cgroup``: the worker's cgroup seen from the host (a fresh worker per task);
- ``lxd-state``: LXD's instance state (a worker the host cannot see; memory only, cgroup v1).

A figure no source shows stays None. The bytes read come from a worker: parsing never raises.
"""

from dataclasses import dataclass
from typing import Any

TASK_CGROUP = "task-cgroup"
SANDBOX_RUSAGE = "sandbox-rusage"
WORKER_CGROUP = "worker-cgroup"
LXD_STATE = "lxd-state"
_MAX_NUMBER_DIGITS = 20


@dataclass
class Usage:
    """An attempt's CPU seconds, peak memory and OOM kills; None where nothing showed them."""

    cpu_user_seconds: float | None = None
    cpu_system_seconds: float | None = None
    memory_peak_bytes: int | None = None
    oom_kills: int | None = None
    cpu_source: str = ""
    memory_source: str = ""

    @property
    def cpu_seconds(self) -> float | None:
        """User plus system CPU seconds (None when either is unknown)."""
        if self.cpu_user_seconds is None or self.cpu_system_seconds is None:
            return None
        return self.cpu_user_seconds + self.cpu_system_seconds

    def take_cpu(self, user_usec: int | None, system_usec: int | None, source: str) -> None:
        """Keep CPU times (microseconds) from ``source`` unless a better one gave them."""
        if self.cpu_source or user_usec is None or system_usec is None:
            return
        self.cpu_user_seconds = user_usec / 1e6
        self.cpu_system_seconds = system_usec / 1e6
        self.cpu_source = source

    def take_memory(self, peak_bytes: int | None, source: str) -> None:
        """Keep a memory peak from ``source`` unless a better one gave it."""
        if self.memory_source or peak_bytes is None or peak_bytes <= 0:
            return
        self.memory_peak_bytes = peak_bytes
        self.memory_source = source

    def record(self) -> dict[str, Any]:
        """The figures as the fields of an attempt's record."""
        return {
            "cpu-user-seconds": _rounded(self.cpu_user_seconds),
            "cpu-system-seconds": _rounded(self.cpu_system_seconds),
            "memory-peak-bytes": self.memory_peak_bytes,
            "oom-kills": self.oom_kills,
            "usage-source": {"cpu": self.cpu_source or None, "memory": self.memory_source or None},
        }


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 6)


def keyed_numbers(data: bytes) -> dict[str, int]:
    """The ``KEY NUMBER`` lines of ``data`` (cpu.stat, memory.events, the helper's report).

    Lines that are not a key and a plain decimal number are left out.
    """
    numbers: dict[str, int] = {}
    for line in data.decode(errors="replace").splitlines():
        key, _, value = line.strip().partition(" ")
        value = value.strip()
        if key and value.isdigit() and len(value) <= _MAX_NUMBER_DIGITS:
            numbers[key] = int(value)
    return numbers


@dataclass
class TaskLimits:
    """A sandboxed task's own cgroup limits and what they did.

    Only where the worker delegates the memory and pids controllers (cgroup v2); elsewhere the
    worker's limits are the task's.
    """

    memory_max_bytes: int | None
    pids_max: int | None
    oom_kills: int
    forks_refused: int

    def memory_detail(self) -> str:
        """Why a task its memory limit ended was killed."""
        limit = (
            f", memory.max {self.memory_max_bytes // (1024 * 1024)} MiB,"
            if self.memory_max_bytes is not None
            else ""
        )
        return f"killed: out of memory (the task's own memory cgroup{limit} counted an OOM kill)"

    def process_detail(self) -> str:
        """What a task that met its process limit met."""
        limit = f", pids.max {self.pids_max}," if self.pids_max is not None else ""
        return (
            f"the task hit its process limit: its own pids cgroup{limit} refused "
            f"{self.forks_refused} forks (pids.events max)"
        )


def task_limits(report: bytes) -> TaskLimits | None:
    """The task cgroup's limits and events from the sandbox's report; None: it had no limits.

    ``report`` is what the helper (or the shell recipe) wrote after the command:
    ``task-memory-max``, ``task-pids-max``, ``oom-kills``, ``forks-refused``.
    """
    said = keyed_numbers(report)
    memory, pids = said.get("task-memory-max"), said.get("task-pids-max")
    if memory is None and pids is None:
        return None
    return TaskLimits(memory, pids, said.get("oom-kills", 0), said.get("forks-refused", 0))


def sandbox_usage(cpu_stat: bytes, report: bytes) -> Usage:
    """A sandboxed task's usage: its cgroup's ``cpu.stat``, then the sandbox's report.

    ``report`` is what the sandbox helper wrote on fd 3 (``peak-rss-kib``, ``cpu-user-usec``,
    ``cpu-system-usec``; the shell recipe writes none of them), and, where the task cgroup had
    limits, its ``memory-peak-bytes`` and ``oom-kills``.
    """
    usage = Usage()
    stat = keyed_numbers(cpu_stat)
    usage.take_cpu(stat.get("user_usec"), stat.get("system_usec"), TASK_CGROUP)
    said = keyed_numbers(report)
    usage.take_cpu(said.get("cpu-user-usec"), said.get("cpu-system-usec"), SANDBOX_RUSAGE)
    limits = task_limits(report)
    if limits is not None:
        usage.take_memory(said.get("memory-peak-bytes"), TASK_CGROUP)
        usage.oom_kills = limits.oom_kills
    peak_kib = said.get("peak-rss-kib")
    usage.take_memory(None if peak_kib is None else peak_kib * 1024, SANDBOX_RUSAGE)
    return usage
