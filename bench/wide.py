"""N live workers at once: a job of N ``sleep`` tasks with parallelism N (default 200).

The project's host configuration is raised to allow it (max-parallel-workers N; with isolated
idmaps the job's workers share the job's one id range, so /etc/subuid needs no more room),
kernel limits are checked and raised (bench/hostlimits.py), and while the job runs a sampler
reads MemAvailable, the tasks running, LXD's open files, the kernel keys of the busiest uid
and the host's threads.
"""

import dataclasses
import threading
from dataclasses import dataclass
from pathlib import Path

from container_compute.config import HostConfig
from container_compute.jobs.ledger import Ledger

from . import hostlimits, lxdsetup, ours
from .common import Measured, lxd_pid, mem_available_kib
from .report import mib


@dataclass
class WideRun:
    """The wide job: its time, peak tasks running, memory and LXD CPU, LXD's open files."""

    measured: Measured
    launch_failures: int
    peak_running: int
    mem_before_kib: int
    mem_low_kib: int
    lxd_fds_peak: int
    keys_peak: tuple[int, int]
    threads_peak: int


class Sampler(threading.Thread):
    """Samples MemAvailable, the job's running tasks and LXD's open files every second."""

    def __init__(self, state: Path, lxd: int | None) -> None:
        """Sample the ledger of ``state`` and the LXD daemon ``lxd``."""
        super().__init__(daemon=True)
        self.state = state
        self.lxd = lxd
        self.stop = threading.Event()
        self.peak_running = 0
        self.mem_low = mem_available_kib()
        self.fds_peak = 0
        self.keys_peak = (0, 0)  # keys held by one non-root uid, and its quota
        self.threads_peak = 0

    def run(self) -> None:
        """Sample until stopped."""
        ledger = None
        while not self.stop.wait(1.0):
            self.mem_low = min(self.mem_low, mem_available_kib())
            users = [v for uid, v in hostlimits.key_users().items() if uid != 0]
            self.keys_peak = max([self.keys_peak, *users])
            self.threads_peak = max(self.threads_peak, hostlimits.threads_now())
            if self.lxd is not None:
                try:
                    self.fds_peak = max(
                        self.fds_peak, len(list(Path(f"/proc/{self.lxd}/fd").iterdir()))
                    )
                except OSError:
                    pass
            try:
                ledger = ledger or Ledger(self.state)
                for job in ledger.active_jobs():
                    self.peak_running = max(
                        self.peak_running, ledger.task_counts(job.id)["running"]
                    )
            except Exception:  # the ledger may be busy: sample next time
                continue
        if ledger is not None:
            ledger.close()


def run_wide(
    config: HostConfig,
    alias: str,
    workers: int,
    sleep: int,
    state: Path,
    scratch: Path,
) -> WideRun:
    """Run the wide job and print what it took of the host.

    Raises:
        BenchError: when the job fails.
    """
    config = dataclasses.replace(config, max_parallel_workers=workers)
    lxdsetup.set_up(config, scratch)
    print(f"  host limits checked: {'; '.join(hostlimits.checked(workers))}")
    raised = hostlimits.raise_limits(workers)
    print(f"  host limits raised: {'; '.join(raised.changes) or 'none needed'}")
    pid = lxd_pid()
    print(f"  LXD open files limit: {hostlimits.lxd_open_files_limit(pid)}")
    sampler = Sampler(state, pid)
    before = mem_available_kib()
    sampler.start()
    params = dataclasses.replace(
        ours.job_params(alias, workers, workers), command=f"sleep {sleep}"
    )
    try:
        run = ours.run_job(config, state, params, check_results=False)
    finally:
        sampler.stop.set()
        sampler.join()
        notes = hostlimits.restore_limits(raised)
        if notes:
            print(f"  host limits put back: {'; '.join(notes)}")
    if run.failure_details:
        print(f"  launch failures: {'; '.join(run.failure_details)}")
    used = before - sampler.mem_low
    print(
        f"  done in {run.measured.seconds:.1f}s, {run.launch_failures} launch failures, "
        f"peak {sampler.peak_running} tasks running at once\n"
        f"  MemAvailable before {mib(before)}, lowest {mib(sampler.mem_low)} "
        f"(peak use {mib(used)}, {used / max(1, sampler.peak_running):.0f} KiB per worker)\n"
        f"  LXD daemon CPU {run.measured.lxd_cpu:.1f}s, bench CPU {run.measured.own_cpu:.1f}s, "
        f"LXD open files peak {sampler.fds_peak}\n"
        f"  kernel keys peak {sampler.keys_peak[0]} of {sampler.keys_peak[1]} (one uid), "
        f"threads peak {sampler.threads_peak} "
        f"(pid_max {hostlimits.read_sysctl('kernel.pid_max')})"
    )
    return WideRun(
        run.measured,
        run.launch_failures,
        sampler.peak_running,
        before,
        sampler.mem_low,
        sampler.fds_peak,
        sampler.keys_peak,
        sampler.threads_peak,
    )
