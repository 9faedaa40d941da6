"""The agent's sampler: reads the ledger and the engine's workers every few seconds.

It runs in its own thread with its own ledger connection. What it reads becomes a snapshot
(gauges) and increments of counters and histograms (``instruments``); a scrape reads only the
last snapshot and those values, so it never waits on the engine or on LXD.
"""

import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .. import instruments
from ..backends import FailureReason
from ..backends.lxd.backend import LXDBackend
from ..instruments import PREFIX
from ..jobs.figures import LedgerFigures
from ..jobs.model import TaskState
from ..jobs.registry import Role
from ..jobs.scheduler import Engine

logger = logging.getLogger(__name__)

SAMPLE_SECONDS = 5.0
HOST_SAMPLE_SECONDS = 60.0
# Commits carry the time their thread read before it took the ledger's lock: a row may land
# a little behind one already seen. Rows this far back are read again (and counted once).
LAG_SECONDS = 30.0
# A task's final outcome as a metric label: its failure reason, "failed" for a non-zero exit.
OUTCOMES = (
    "succeeded",
    "failed",
    *(reason.value for reason in FailureReason if reason != FailureReason.EXIT_CODE),
)
WORKER_KINDS = {
    "running": Role.ATTEMPT,
    "warm": Role.WARM,
    "spare": Role.SPARE,
    "ready": Role.READY,
    "deleting": Role.DELETING,
}

_Item = TypeVar("_Item")


def outcome_label(state: str, reason: str | None) -> str:
    """The ``outcome`` label of a finished task."""
    if state == TaskState.SUCCEEDED.value:
        return "succeeded"
    if reason in OUTCOMES and reason != "succeeded":
        return str(reason)
    return "failed"


class Since:
    """Rows of a time column, each taken once, from ``start`` on (earlier ones never)."""

    def __init__(self, start: float, lag: float = LAG_SECONDS) -> None:
        """Take rows stamped at ``start`` or later."""
        self.start = start
        self.lag = lag
        self.mark = start
        self._seen: dict[Hashable, float] = {}

    def since(self) -> float:
        """The time to read rows from."""
        return self.mark - self.lag

    def take(self, rows: Iterable[tuple[Hashable, float, _Item]]) -> list[_Item]:
        """The rows not taken before (key, time, item), in their order."""
        new = []
        for key, stamp, item in rows:
            if key in self._seen:
                continue
            self._seen[key] = stamp
            self.mark = max(self.mark, stamp)
            if stamp >= self.start:
                new.append(item)
        floor = self.since()
        self._seen = {key: stamp for key, stamp in self._seen.items() if stamp >= floor}
        return new


@dataclass(frozen=True)
class Snapshot:
    """The gauges of one sample."""

    tasks: dict[str, int] = field(default_factory=dict)
    jobs: dict[str, int] = field(default_factory=dict)
    workers: dict[str, int] = field(default_factory=dict)
    oldest_pending_seconds: float = 0.0
    max_parallel_workers: int = 0
    pools: dict[str, tuple[int, int]] = field(default_factory=dict)


class SnapshotCollector(Collector):
    """Serves the last snapshot as gauges (a reference read: no lock, no wait)."""

    def __init__(self) -> None:
        """Serve nothing until the first sample."""
        self.snapshot: Snapshot | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """The gauges of the last snapshot."""
        snap = self.snapshot
        if snap is None:
            return
        yield _family("tasks", "Tasks of active jobs, by state", "state", snap.tasks)
        yield _family("jobs", "Jobs in the ledger, by state", "state", snap.jobs)
        yield _family("workers", "Workers this agent holds, by kind", "kind", snap.workers)
        yield GaugeMetricFamily(
            f"{PREFIX}_task_oldest_pending_seconds",
            "How long the longest-waiting pending task has waited",
            value=snap.oldest_pending_seconds,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_max_parallel_workers",
            "The max-parallel-workers option",
            value=snap.max_parallel_workers,
        )
        used = GaugeMetricFamily(
            f"{PREFIX}_storage_pool_used_bytes", "Space used in the workers' pool", labels=["pool"]
        )
        size = GaugeMetricFamily(
            f"{PREFIX}_storage_pool_size_bytes", "Size of the workers' pool", labels=["pool"]
        )
        for pool, (used_bytes, total) in snap.pools.items():
            used.add_metric([pool], used_bytes)
            size.add_metric([pool], total)
        yield used
        yield size


def _family(name: str, text: str, label: str, values: dict[str, int]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(f"{PREFIX}_{name}", text, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


class Sampler:
    """Samples one engine's ledger and workers into the agent's metrics."""

    def __init__(
        self,
        engine: Engine,
        collector: SnapshotCollector,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Count what happens from now on (the ledger's past is not counted)."""
        self.engine = engine
        self.collector = collector
        self.clock = clock
        self.figures = LedgerFigures(engine.state_dir)
        now = clock()
        self._submitted = Since(now)
        self._finished = Since(now)
        self._ended = Since(now)
        self._started = Since(now)
        self._templates = 0
        self._pools: dict[str, tuple[int, int]] = {}
        self._host_sampled = float("-inf")
        for outcome in OUTCOMES:
            instruments.TASKS_FINISHED.labels(outcome=outcome)
        for mode in ("user", "system"):
            instruments.CPU_SECONDS.labels(mode=mode)

    def sample(self) -> Snapshot:
        """Read the ledger and the workers once; serve and return the new snapshot."""
        now = self.clock()
        self._count_events()
        if time.monotonic() - self._host_sampled >= HOST_SAMPLE_SECONDS:
            self._host_sampled = time.monotonic()
            self._sample_host()
        oldest = self.figures.oldest_pending_since()
        workers = {
            kind: len(self.engine.registry.names(role)) for kind, role in WORKER_KINDS.items()
        }
        workers["template"] = self._templates
        snapshot = Snapshot(
            tasks=self.figures.active_task_counts(),
            jobs=self.figures.job_state_counts(),
            workers=workers,
            oldest_pending_seconds=0.0 if oldest is None else max(0.0, now - oldest),
            max_parallel_workers=self.engine.config.max_parallel_workers,
            pools=dict(self._pools),
        )
        self.collector.snapshot = snapshot
        return snapshot

    def _count_events(self) -> None:
        figures = self.figures
        for count in self._submitted.take(
            (job, created, count)
            for job, created, count in figures.tasks_submitted_since(self._submitted.since())
        ):
            instruments.TASKS_SUBMITTED.inc(count)
        for task in self._finished.take(
            (t.key, t.finished, t) for t in figures.tasks_finished_since(self._finished.since())
        ):
            instruments.TASKS_FINISHED.labels(outcome=outcome_label(task.state, task.reason)).inc()
        for attempt in self._started.take(
            (a.key, a.started, a) for a in figures.attempts_started_since(self._started.since())
        ):
            if attempt.waited is not None:
                instruments.QUEUE_WAIT.observe(attempt.waited)
            if attempt.key[2] > 1:
                instruments.RETRIES.inc()
        for ended in self._ended.take(
            (a.key, a.finished, a) for a in figures.attempts_ended_since(self._ended.since())
        ):
            _count_usage(ended.seconds, ended.outcome)

    def _sample_host(self) -> None:
        """Templates and the pool's space: LXD calls, once a minute."""
        try:
            backend = self.engine.backend("lxd")
            if not isinstance(backend, LXDBackend):
                return
            self._templates = backend.templates.count()
            pool = self.engine.config.storage_pool
            space = backend.api.pool_space(pool)
            self._pools = {} if space is None else {pool: space}
        except Exception as err:
            logger.info("metrics: could not read LXD's templates and pool: %s", err)

    def run(self, stop: threading.Event, interval: float = SAMPLE_SECONDS) -> None:
        """Sample every ``interval`` seconds until ``stop`` is set; a failed sample is logged."""
        while True:
            try:
                self.sample()
            except Exception:  # the next sample tries again: metrics never stop the agent
                logger.exception("metrics: sampling failed; trying again in %.0fs", interval)
            if stop.wait(interval):
                break
        self.figures.close()


def _count_usage(seconds: float, outcome: dict[str, Any]) -> None:
    """Count one ended attempt's duration and usage (what it knows of it)."""
    instruments.TASK_DURATION.observe(max(0.0, seconds))
    for mode in ("user", "system"):
        value = outcome.get(f"cpu-{mode}-seconds")
        if isinstance(value, (int, float)) and value > 0:
            instruments.CPU_SECONDS.labels(mode=mode).inc(value)
    peak = outcome.get("memory-peak-bytes")
    if isinstance(peak, int) and peak > 0:
        instruments.MEMORY_PEAK.observe(peak)
    kills = outcome.get("oom-kills")
    if isinstance(kills, int) and kills > 0:
        instruments.OOM_KILLS.inc(kills)
