"""Spare workers: a cold job's next workers made ahead of demand, in the engine, without LXD.

The LXD side (a spare really is created and started, then only given its command) is in
tests/functional/test_spare_workers.py.
"""

import threading
import time
from collections.abc import Callable
from pathlib import Path

from container_compute.backends import (
    SPARE_TASK,
    FailureReason,
    LaunchError,
    TaskOutcome,
    WorkerInfo,
    WorkerSpec,
)
from container_compute.jobs import housekeeping
from container_compute.jobs.model import JobState
from container_compute.jobs.params import LaunchJobParams
from container_compute.jobs.registry import Role

from .fake_backend import FakeBackend, Plan, make_engine, run_until_done


class SpareBackend(FakeBackend):
    """The fake backend with ``prepare``: a spare is a worker with no task, started later.

    ``most_workers``: the most workers seen at once that run a task or wait as spares (those
    of ended attempts, still being deleted, do not count: their slot is free already).
    """

    def __init__(self, prepare_error: str = "", **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.prepare_error = prepare_error
        self.prepared: set[str] = set()
        self.in_spares: list[str] = []  # attempts that ran in a spare
        self.busy: set[str] = set()  # workers whose attempt has not ended
        self.most_workers = 0
        self.lock = threading.Lock()

    def _count(self) -> None:
        self.most_workers = max(self.most_workers, len(self.busy) + len(self.prepared))

    def prepare(self, spec: WorkerSpec) -> None:
        assert spec.task_index == SPARE_TASK and spec.worker_name.startswith(f"cc-{spec.job_id}-s")
        if self.prepare_error:
            raise LaunchError(self.prepare_error)
        time.sleep(0.005)
        with self.lock:
            worker = WorkerInfo(spec.worker_name, spec.job_id, None, None, True, self.owner)
            self.workers[spec.worker_name] = worker
            self.prepared.add(spec.worker_name)
            self._count()

    def start(self, spec: WorkerSpec) -> str:
        with self.lock:
            if spec.worker_name in self.prepared:
                self.prepared.discard(spec.worker_name)
                self.in_spares.append(spec.worker_name)
                self.started.append(spec.worker_name)
                self.busy.add(spec.worker_name)
                return spec.worker_name
        name = super().start(spec)
        with self.lock:
            self.busy.add(name)
            self._count()
        return name

    def wait(
        self, spec: WorkerSpec, task_dir: Path, should_stop: Callable[[], FailureReason | None]
    ) -> TaskOutcome:
        try:
            return super().wait(spec, task_dir, should_stop)
        finally:
            with self.lock:
                self.busy.discard(spec.worker_name)

    def delete(self, name: str) -> bool:
        with self.lock:
            self.prepared.discard(name)
        return super().delete(name)


def slow(spec: WorkerSpec) -> Plan:
    return Plan(seconds=0.05, files={"n": spec.env["TASK_INDEX"]})


def test_attempts_run_in_spares_and_never_beyond_parallelism(tmp_path: Path) -> None:
    backend = SpareBackend(plan=slow)
    engine = make_engine(tmp_path, backend, max_parallel_workers=8)
    job = engine.submit(
        LaunchJobParams(command="x", tasks=24, parallelism=2, isolation="container")
    )

    run_until_done(engine)
    engine.wait_deletions(timeout=5)

    assert engine.ledger.job(job.id).state == JobState.SUCCEEDED  # type: ignore[union-attr]
    assert backend.in_spares, "no attempt found a spare ready"
    assert backend.max_running <= 2  # running attempts: the job's parallelism
    assert backend.most_workers <= 4  # with the spares: at most twice
    workers = [a.worker for a in engine.ledger.attempts(job.id)]
    assert set(backend.in_spares) <= set(workers)
    assert backend.workers == {}  # every spare ran a task or was deleted with the job


def test_no_spares_when_off_or_the_job_reuses_workers_or_places_tasks(tmp_path: Path) -> None:
    backend = SpareBackend(plan=slow)
    engine = make_engine(tmp_path / "off", backend, spare_workers=False)
    engine.submit(LaunchJobParams(command="x", tasks=8, parallelism=2, isolation="container"))
    run_until_done(engine)

    placed = SpareBackend(plan=slow)
    placed_engine = make_engine(tmp_path / "placed", placed)
    placed_engine.submit(
        LaunchJobParams(
            command="x", tasks=8, parallelism=2, placement="round-robin", isolation="container"
        )
    )
    run_until_done(placed_engine)

    warm = SpareBackend(plan=slow)
    warm_engine = make_engine(tmp_path / "warm", warm)
    warm_engine.submit(LaunchJobParams(command="x", tasks=8, parallelism=2, reuse_workers=True))
    run_until_done(warm_engine)

    assert backend.in_spares == [] and backend.most_workers <= 2
    assert placed.in_spares == [] and placed.most_workers <= 2
    assert warm.in_spares == []


def test_spares_stay_within_max_parallel_workers(tmp_path: Path) -> None:
    backend = SpareBackend(plan=slow)
    engine = make_engine(tmp_path, backend, max_parallel_workers=3)
    engine.submit(LaunchJobParams(command="x", tasks=12, parallelism=3, isolation="container"))

    run_until_done(engine)

    assert backend.most_workers <= 3


def test_a_spare_that_cannot_be_made_leaves_the_attempts_their_own(tmp_path: Path) -> None:
    backend = SpareBackend(prepare_error="pool full", plan=slow)
    engine = make_engine(tmp_path, backend)
    job = engine.submit(LaunchJobParams(command="x", tasks=6, parallelism=2))

    run_until_done(engine)

    assert engine.ledger.job(job.id).state == JobState.SUCCEEDED  # type: ignore[union-attr]
    assert backend.in_spares == [] and len(backend.started) == 6


def test_spares_go_with_a_cancelled_job_and_when_the_engine_stops_launching(
    tmp_path: Path,
) -> None:
    backend = SpareBackend(plan=lambda spec: Plan(hang=True))
    engine = make_engine(tmp_path, backend, max_parallel_workers=8)
    cold = LaunchJobParams(command="x", tasks=10, parallelism=2, isolation="container")
    cancelled = engine.submit(cold)
    other = engine.submit(cold)
    end = time.time() + 5
    while len(backend.prepared) < 4 and time.time() < end:
        engine.step()
        time.sleep(0.01)
    jobs = sorted(name.split("-")[1] for name in backend.prepared)
    assert jobs == sorted([cancelled.id, other.id] * 2)

    assert engine.ledger.set_job_state(cancelled.id, JobState.CANCELLED)  # cancel-job
    while engine.inflight_count(cancelled.id) and time.time() < end:
        engine.step()
        time.sleep(0.01)
    engine.step()
    assert engine.wait_deletions(timeout=5, job_id=cancelled.id)
    assert not any(name.startswith(f"cc-{cancelled.id}-s") for name in backend.workers)
    assert any(name.startswith(f"cc-{other.id}-s") for name in backend.workers)

    engine.stop_launching()  # the engine hands over: its spares go, its attempts stay
    while backend.prepared and time.time() < end:
        time.sleep(0.01)
    assert backend.prepared == set() and engine.inflight_count(other.id) == 2
    backend.release.set()
    engine.drain(5)


def test_the_reaper_leaves_spares_alone_and_deletes_those_no_engine_keeps(tmp_path: Path) -> None:
    backend = SpareBackend(plan=lambda spec: Plan(hang=True))
    engine = make_engine(tmp_path, backend, max_parallel_workers=8)
    job = engine.submit(LaunchJobParams(command="x", tasks=10, parallelism=2))
    end = time.time() + 5
    while not backend.prepared and time.time() < end:
        engine.step()
        time.sleep(0.01)
    orphan = f"cc-{job.id}-sdead1"  # a spare a crashed engine left
    backend.workers[orphan] = WorkerInfo(orphan, job.id, None, None, True)

    assert housekeeping.reap(engine) == [orphan]
    assert backend.prepared <= set(backend.workers)
    backend.release.set()
    run_until_done(engine)


class MakesASpareWhileListed(SpareBackend):
    """A spare maker registers and creates a spare while the reaper lists the workers."""

    def __init__(self) -> None:
        super().__init__(plan=lambda spec: Plan(hang=True))
        self.engine: object = None
        self.job_id = ""

    def list_workers(self) -> list[WorkerInfo]:
        listed = super().list_workers()
        name = f"cc-{self.job_id}-snew1"
        self.engine.registry.hold(name, self.job_id, Role.SPARE)  # type: ignore[attr-defined]
        self.workers[name] = WorkerInfo(name, self.job_id, None, None, True, self.owner)
        return [*listed, self.workers[name]]


def test_a_spare_made_while_the_reaper_lists_is_kept(tmp_path: Path) -> None:
    backend = MakesASpareWhileListed()
    engine = make_engine(tmp_path, backend, spare_workers=False)
    job = engine.submit(LaunchJobParams(command="x", tasks=1, isolation="container"))
    backend.engine, backend.job_id = engine, job.id

    assert housekeeping.reap(engine) == []
    assert f"cc-{job.id}-snew1" in backend.workers


def test_a_spare_given_back_after_its_job_ended_is_deleted(tmp_path: Path) -> None:
    backend = SpareBackend()
    engine = make_engine(tmp_path, backend)
    job = engine.submit(LaunchJobParams(command="x", tasks=1, isolation="container"))
    spare = f"cc-{job.id}-sgone1"
    backend.workers[spare] = WorkerInfo(spare, job.id, None, None, True, backend.owner)
    engine.keeper.spares.close(job.id)

    engine.keeper.unplace(job, spare)

    assert spare in backend.deleted and spare not in engine.keeper.idle()
