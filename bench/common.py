"""What every method of the bench shares: the task, its expected result, clocks and CPU."""

import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Each task writes a small result file into /results and echoes (as in issue 11).
TASK_COMMAND = 'echo $((TASK_INDEX * TASK_INDEX)) > "$RESULTS_DIR/square"; echo done'
LXD_BINARY = "/usr/bin/lxd"


class BenchError(RuntimeError):
    """Something broke (a job failed, a competitor could not run): the bench exits non-zero."""


def check_square(results: Path, index: int, where: str) -> None:
    """Raise BenchError unless ``results/square`` holds the task's square."""
    try:
        text = (results / "square").read_text()
    except OSError as err:
        raise BenchError(f"{where}: task {index} left no result: {err}") from err
    if text != f"{index * index}\n":
        raise BenchError(f"{where}: task {index} wrote {text!r}, not {index * index}")


def lxd_pid() -> int | None:
    """The pid of the LXD daemon (``lxd --group ...``), or None."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if os.readlink(entry / "exe") == LXD_BINARY and argv[1:2] == [b"--group"]:
                return int(entry.name)
        except OSError:
            continue
    return None


def process_cpu(pid: int | None) -> float:
    """CPU seconds (user + system, children waited for included) of a process; 0 if gone."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    """CPU seconds of this process and its waited-for children."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime


@dataclass(frozen=True)
class Measured:
    """Seconds of wall time, and CPU seconds of the LXD daemon and of the bench meanwhile."""

    seconds: float
    lxd_cpu: float
    own_cpu: float


def measure(action: Callable[[], object]) -> Measured:
    """Run ``action``; return its wall time and the CPU it cost LXD and this process."""
    pid = lxd_pid()
    lxd_before, own_before = process_cpu(pid), own_cpu()
    begin = time.perf_counter()
    action()
    seconds = time.perf_counter() - begin
    return Measured(seconds, process_cpu(pid) - lxd_before, own_cpu() - own_before)


def mem_available_kib() -> int:
    """MemAvailable of the host, in KiB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    return 0
