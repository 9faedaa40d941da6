"""Housekeeping of a state directory: resume after a crash, cancel, reap, retention.

These run with the state directory's ``EngineLock`` held (by the agent, or by an in-process
engine), so no other engine follows the attempts they touch.
"""

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from ..backends import Backend, FailureReason, KeepsPerJob, TaskOutcome, WorkerInfo, WorkerSpec
from ..config import HostConfig
from ..constants import READY_JOB
from ..owner import UNOWNED
from . import results
from .ledger import ATTEMPT_RUNNING, JobRecord, Ledger
from .outcomes import VANISHED, failed

logger = logging.getLogger(__name__)


class Engine(Protocol):
    """What housekeeping needs of the engine (``scheduler.Engine``)."""

    state_dir: Path
    config: HostConfig
    ledger: Ledger
    owner: str
    clock: Callable[[], float]

    def backend(self, name: str) -> Backend:
        """Return the backend called ``name``."""
        ...

    def is_inflight(self, job_id: str, index: int) -> bool:
        """Tell whether the engine follows an attempt of this task."""
        ...

    def held_workers(self) -> set[str]:
        """Every worker the engine holds now: its attempts', idle warm ones, spares."""
        ...

    def inflight_count(self, job_id: str | None = None) -> int:
        """Return how many attempts the engine follows."""
        ...

    def spec(
        self,
        job: JobRecord,
        index: int,
        task_input: str | None,
        attempt: int,
        placed: tuple[str, float] | None = None,
    ) -> WorkerSpec:
        """Return the WorkerSpec of an attempt (``placed``: its worker and start time)."""
        ...

    def spawn(self, job: JobRecord, spec: WorkerSpec, adopt: bool) -> None:
        """Follow an attempt in a thread."""
        ...

    def commit(
        self,
        job: JobRecord,
        spec: WorkerSpec,
        outcome: TaskOutcome,
        temp: Path | None,
        vanished: bool = False,
    ) -> bool:
        """Commit an attempt's outcome exactly once."""
        ...


def resume(engine: Engine) -> bool:
    """Adopt attempts a previous engine left running, or retry those whose worker is gone.

    Returns False when a backend could not be asked (try again on the next pass).
    """
    ledger = engine.ledger
    if not engine.inflight_count():
        results.remove_temp_dirs(engine.state_dir)
    workers: dict[str, set[str]] = {}
    try:
        for attempt in ledger.attempts(state=ATTEMPT_RUNNING):
            job = ledger.job(attempt.job)
            if job is None or engine.is_inflight(attempt.job, attempt.index):
                continue
            if job.backend not in workers:
                listed = engine.backend(job.backend).list_workers()
                workers[job.backend] = {worker.name for worker in listed}
            task = ledger.task(attempt.job, attempt.index)
            placed = (attempt.worker, attempt.started)  # a warm worker or a spare: its own name
            task_input = task.input if task else None
            spec = engine.spec(job, attempt.index, task_input, attempt.attempt, placed)
            if attempt.worker in workers[job.backend]:
                logger.info("adopting worker %s", attempt.worker)
                engine.spawn(job, spec, adopt=True)
            else:
                logger.info("worker %s vanished: retrying", attempt.worker)
                outcome = failed(FailureReason.LAUNCH_ERROR, VANISHED)
                engine.commit(job, spec, outcome, None, vanished=True)
    except Exception:
        logger.exception("cannot resume yet (backend unavailable?)")
        return False
    return True


def cancel_stale(engine: Engine, job_id: str) -> list[str]:
    """Stop a cancelled job's attempts that no engine follows; return deleted workers."""
    job = engine.ledger.job(job_id)
    if job is None:
        return []
    deleted = []
    for attempt in engine.ledger.attempts(job_id, state=ATTEMPT_RUNNING):
        if engine.is_inflight(job_id, attempt.index):
            continue
        if engine.backend(job.backend).delete(attempt.worker):
            deleted.append(attempt.worker)
        spec = engine.spec(job, attempt.index, None, attempt.attempt)
        engine.commit(job, spec, failed(FailureReason.CANCELLED, "the job was cancelled"), None)
    return deleted


def reap(engine: Engine) -> list[str]:
    """Delete this state dir's workers that nothing holds; return their names.

    Only workers of this owner are looked at (``owner.py``); of those, a worker is kept
    while a running attempt names it or the engine holds it (a spare, an idle warm worker).
    A backend that cannot be reaped now (no credentials, no LXD project yet, its service
    away) is logged and skipped: it never keeps the others from being reaped.
    """
    jobs = engine.ledger.jobs()
    known = {job.id for job in jobs}
    live = {job.id for job in jobs if not job.state.finished}
    deleted: list[str] = []
    for name in reap_backends(engine):
        try:
            backend = engine.backend(name)
        except Exception as err:  # e.g. nova without credentials: nothing of ours to reap
            logger.info("not reaping backend %s: %s", name, err)
            continue
        try:
            deleted += _reap_backend(engine, backend, live, known)
        except Exception as err:  # one backend that cannot be reaped must not stop the others
            logger.warning("could not reap backend %s: %s", name, err)
    return deleted


def is_ours(worker: WorkerInfo, owner: str, known_jobs: set[str]) -> bool:
    """Whether a listed worker is this owner's (one made before owners: its job is ours)."""
    if worker.owner:
        return worker.owner == owner
    return worker.job_id is not None and worker.job_id in known_jobs


def _reap_backend(engine: Engine, backend: Backend, live: set[str], known: set[str]) -> list[str]:
    """Reap one backend's workers (and what it keeps per job); return what was deleted."""
    listed = [w for w in backend.list_workers() if is_ours(w, engine.owner, known)]
    # What the engine holds is read after the listing: a worker made meanwhile (a spare, a
    # new attempt's) was held before it was created, so it is seen here and kept.
    attempts = engine.ledger.attempts(state=ATTEMPT_RUNNING)
    running = {(a.job, a.index): a.attempt for a in attempts}
    busy = {a.worker for a in attempts} | engine.held_workers()
    unused = [
        worker.name
        for worker in listed
        if worker.name not in busy
        and worker.job_id != READY_JOB  # ready workers are ready.ReadyWorkers' to keep
        and not (
            worker.job_id in live
            and worker.task_index is not None
            and running.get((worker.job_id, worker.task_index)) == worker.attempt
        )
    ]
    deleted = _delete_each(backend, unused)
    if isinstance(backend, KeepsPerJob):
        try:
            deleted += backend.reap_extras(live, known)
        except Exception as err:  # the workers reaped above still count
            logger.warning("could not reap what a backend keeps per job: %s", err)
    return deleted


def reap_owner(engine: Engine, owner: str) -> list[str]:
    """Delete every worker and template another owner left (a state dir gone for good).

    ``owner``: its owner id, or ``unowned`` for those made before owners were labelled.
    """
    deleted: list[str] = []
    for name in reap_backends(engine):
        try:
            backend = engine.backend(name)
            label = "" if owner == UNOWNED else owner
            deleted += _delete_each(
                backend, [w.name for w in backend.list_workers() if w.owner == label]
            )
            if isinstance(backend, KeepsPerJob):
                deleted += backend.reap_owner(label)
        except Exception as err:  # one backend that cannot be reaped must not stop the others
            logger.warning("could not reap backend %s: %s", name, err)
    return deleted


def _delete_each(backend: Backend, names: list[str]) -> list[str]:
    """Delete these workers; return those deleted (one that resists never stops the others)."""
    deleted = []
    for name in names:
        try:
            if backend.delete(name):
                deleted.append(name)
        except Exception as err:
            logger.warning("could not reap worker %s: %s", name, err)
    return deleted


def reap_backends(engine: Engine) -> list[str]:
    """The backends to reap: lxd, and every other backend a recorded job used."""
    names = {job.backend for job in engine.ledger.jobs()}
    return ["lxd", *sorted(names - {"lxd"})]


def apply_retention(engine: Engine) -> list[str]:
    """Delete finished jobs (record and results) older than job-retention; return ids."""
    keep = engine.config.job_retention_seconds
    if not keep:
        return []
    cutoff = engine.clock() - keep
    deleted = []
    for job in engine.ledger.jobs():
        if job.state.finished and job.finished is not None and job.finished < cutoff:
            results.delete_job_results(engine.state_dir, job.id)
            engine.ledger.delete_job(job.id)
            deleted.append(job.id)
    return deleted
