"""After an attempt: keep its worker warm for the job's next task, or delete it.

``WorkerKeeper`` deletes the worker of an ended attempt, or, for a job with ``reuse-workers``,
has the backend check and wipe it and keeps it for the job's next task (``WarmPool``); once a
job is over it deletes the job's idle workers and lets the backend drop what it kept for the
job (its LXD templates).

A job's attempt takes an idle worker of its own job (``take``), or a new name: there are never
more of a job's workers than its attempts running plus those idle between two tasks, so never
more than its parallelism. After its task the worker is checked by the backend and given back
(``give_back``) or deleted; when the job is over its idle workers are deleted (``close``).
Only this engine's workers are ever handed out: after a restart the next engine makes its own.
"""

import itertools
import logging
import secrets
import threading
from collections.abc import Callable

from ..backends import (
    Backend,
    FailureReason,
    KeepsPerJob,
    ReusesWorkers,
    TaskOutcome,
    WorkerSpec,
    WorkerUnreachableError,
)
from ..constants import ISOLATION_NOTE, SANDBOX_REFUSED
from .ledger import JobRecord, Ledger
from .model import TaskState, reuses_workers
from .ready import ReadyWorkers
from .registry import Role, WorkerRegistry
from .spares import Deletions, SpareWorkers

logger = logging.getLogger(__name__)

# A warm worker whose task ended so is deleted, never checked for reuse.
REPLACED_AFTER = frozenset(
    {
        FailureReason.TIMEOUT,
        FailureReason.CANCELLED,
        FailureReason.DEADLINE,
        FailureReason.JOB_ENDED,
        FailureReason.OOM,
        FailureReason.DISK_FULL,
        FailureReason.PROCESS_LIMIT,
        FailureReason.LAUNCH_ERROR,
        FailureReason.MEMBER_LOST,
    }
)


class WarmPool:
    """Idle warm workers by job, and the names of new ones."""

    def __init__(self, registry: WorkerRegistry | None = None) -> None:
        """No job yet; idle workers are recorded as held in ``registry``."""
        self.registry = registry or WorkerRegistry()
        self._lock = threading.Lock()
        self._idle: dict[str, list[str]] = {}
        self._closed: set[str] = set()
        self._numbers = itertools.count(1)
        self._tag = secrets.token_hex(2)  # names of another engine's workers never collide

    def take(self, job_id: str) -> str:
        """Return an idle worker of the job, else the name of a new one."""
        return self.take_idle(job_id) or self.new_name(job_id)

    def take_idle(self, job_id: str) -> str | None:
        """Return an idle worker of the job, or None."""
        with self._lock:
            idle = self._idle.get(job_id)
            worker = idle.pop() if idle else None
        if worker is not None:
            self.registry.release(worker, Role.WARM)  # its attempt holds it from now on
        return worker

    def new_name(self, job_id: str) -> str:
        """The name of a new warm worker of the job."""
        return f"cc-{job_id}-w{self._tag}{next(self._numbers)}"

    def give_back(self, job_id: str, worker: str) -> bool:
        """Keep ``worker`` idle for the job's next task; False when the job is over (delete it)."""
        with self._lock:
            if job_id in self._closed:
                return False
            self._idle.setdefault(job_id, []).append(worker)
            self.registry.hold(worker, job_id, Role.WARM)
            return True

    def close(self, job_id: str) -> list[str]:
        """The job is over: return its idle workers (to delete); nothing is given back after."""
        with self._lock:
            self._closed.add(job_id)
            idle = self._idle.pop(job_id, [])
        for worker in idle:
            self.registry.release(worker, Role.WARM)
        return idle

    def jobs(self) -> list[str]:
        """The jobs that have idle workers."""
        with self._lock:
            return [job_id for job_id, workers in self._idle.items() if workers]

    def idle(self) -> set[str]:
        """The names of every idle worker (the reaper leaves them alone)."""
        with self._lock:
            return {worker for workers in self._idle.values() for worker in workers}


class WorkerKeeper:
    """Deletes the workers of ended attempts, or keeps them warm; releases finished jobs."""

    def __init__(
        self,
        ledger: Ledger,
        backend_of: Callable[[str], Backend],
        deletions: Deletions,
        registry: WorkerRegistry | None = None,
        ready: ReadyWorkers | None = None,
    ) -> None:
        """Work with the engine's ledger, backends, deletion count and worker registry.

        ``ready``: a sandbox job's new warm workers may be ready ones (``ready.py``).
        """
        self.ready = ready
        self.ledger = ledger
        self.backend_of = backend_of
        self.deletions = deletions
        self.registry = registry or WorkerRegistry()
        self.pool = WarmPool(self.registry)
        self.spares = SpareWorkers(backend_of, deletions, self.delete_worker, self.registry)
        self._lock = threading.Lock()
        self._released: set[str] = set()

    def place(self, job: JobRecord, started: float) -> tuple[str, float] | None:
        """(worker, start time) for a new attempt of the job, or None: it makes its own.

        The worker is the job's idle warm worker (or a new name), or a ready spare.
        """
        if reuses_workers(job.params):
            worker = self.pool.take_idle(job.id) or (self.ready and self.ready.take(job))
            return worker or self.pool.new_name(job.id), started
        spare = self.spares.take(job.id)
        return (spare, started) if spare else None

    def unplace(self, job: JobRecord, worker: str) -> None:
        """Take back the worker ``place`` gave an attempt that did not start.

        A job that ended meanwhile keeps nothing: the worker is deleted (it may not exist).
        """
        keeper = self.pool if reuses_workers(job.params) else self.spares
        if not keeper.give_back(job.id, worker):
            self.delete_worker(job.backend, worker)

    def prepare_ahead(
        self, job: JobRecord, wanted: int, room: int, spec_of: Callable[[str], WorkerSpec]
    ) -> None:
        """Have ``wanted`` spares made for the job's next tasks, room allowing.

        ``room``: how many workers the host may run besides the running attempts' (the spares
        of every job count against it).
        """
        room -= self.spares.count()
        self.spares.top_up(job, spec_of, min(wanted, self.spares.count(job.id) + room))

    def idle(self) -> set[str]:
        """The workers kept for the jobs' next tasks: idle warm ones and spares."""
        return self.pool.idle() | self.spares.names()

    def keep_warm(self, job: JobRecord, spec: WorkerSpec, outcome: TaskOutcome) -> bool:
        """Check and wipe a warm worker after its task; True when it waits for the next one."""
        if not outcome.sandbox_ended and (
            outcome.exit_code is None or outcome.reason in REPLACED_AFTER
        ):
            return False  # stopped, timed out, cancelled, out of memory, disk or processes
        if outcome.reason in (FailureReason.LAUNCH_ERROR, FailureReason.MEMBER_LOST):
            return False  # the worker itself is in doubt
        if not self.ledger.task_counts(job.id)[TaskState.PENDING.value]:
            return False  # nothing left for it to run
        backend = self.backend_of(job.backend)
        reuses = isinstance(backend, ReusesWorkers)
        why = backend.recycle(spec) if reuses else "the backend cannot reuse workers"
        if why:
            logger.info("replacing warm worker %s: %s", spec.worker_name, why)
            if why.startswith(SANDBOX_REFUSED) and job.params.get(ISOLATION_NOTE) != why:
                self.ledger.note_job(job.id, ISOLATION_NOTE, why)  # job-status says why
            return False
        return self.pool.give_back(job.id, spec.worker_name)

    def keep_ready(self, force: bool = False, wait: bool = False) -> None:
        """Look at the ready workers between jobs (``ReadyWorkers.keep_soon``)."""
        if self.ready is not None:
            self.ready.keep_soon(force=force, wait=wait)

    def delete_worker(self, backend_name: str, name: str) -> None:
        """Delete a worker; one that cannot be deleted now is left to the reaper."""
        try:
            self.backend_of(backend_name).delete(name)
        except WorkerUnreachableError as err:  # e.g. its cluster member is offline
            logger.warning("worker %s left for the reaper: %s", name, err)
        except Exception:  # the reaper will get it
            logger.exception("could not delete worker %s", name)

    def release_finished(self) -> None:
        """Release the jobs with idle workers that ended meanwhile (e.g. cancelled)."""
        for job_id in {*self.pool.jobs(), *self.spares.jobs()}:
            job = self.ledger.job(job_id)
            if job is None:
                for worker in self.pool.close(job_id) + self.spares.close(job_id):
                    self.delete_worker("lxd", worker)
            elif job.state.finished:
                self.release(job)

    def release_if_over(self, job: JobRecord) -> None:
        """Release what the job kept once the ledger says it is over."""
        current = self.ledger.job(job.id)
        if current is None or current.state.finished:
            self.release(job)

    def release(self, job: JobRecord) -> None:
        """Delete a finished job's idle warm workers and spares; the backend drops what it kept.

        Once per job; the deletions run in the background (the engine's ``wait_deletions``
        waits for them).
        """
        with self._lock:
            if job.id in self._released:
                return
            self._released.add(job.id)
        idle = self.pool.close(job.id) + self.spares.close(job.id)
        backend = self.backend_of(job.backend)
        self.keep_ready(force=True)  # ready workers for the next job, made while idle

        def finished() -> None:
            if isinstance(backend, KeepsPerJob):
                try:
                    backend.job_finished(job.id)
                except Exception:  # the reaper removes it later
                    logger.exception("could not release what job %s kept", job.id)

        self._delete_later(job.backend, job.id, idle, then=finished)

    def drop_spares(self) -> None:
        """Delete every spare (in the background): the engine launches no more."""
        for job_id in self.spares.jobs():
            job = self.ledger.job(job_id)
            self._delete_later(job.backend if job else "lxd", job_id, self.spares.close(job_id))

    def _delete_later(
        self,
        backend: str,
        job_id: str,
        workers: list[str],
        then: Callable[[], None] | None = None,
    ) -> None:
        """Delete a job's workers, then call ``then``, in a thread ``wait_deletions`` counts."""

        def delete() -> None:
            for worker in workers:
                self.delete_worker(backend, worker)
                self.deletions.deleted(worker)
            if then is not None:
                then()
            self.deletions.deleted(token)

        token = f"release of {job_id} ({secrets.token_hex(4)})"
        for worker in [*workers, token]:
            self.deletions.deleting(worker, job_id)
        threading.Thread(target=delete, daemon=True, name=f"release-{job_id}").start()
