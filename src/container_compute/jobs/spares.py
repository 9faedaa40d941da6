"""Workers made ahead of demand: a cold job's next task finds its worker created and started.

For a job that runs each task in a fresh worker, on a backend that can ``prepare`` one (LXD),
the engine keeps up to ``parallelism`` spare workers of the job (being made or ready) while
the job has tasks left to start. A launched attempt takes a ready spare, if there is one (its
spec names it), and only gives it its command; the worker is deleted after its task like any
cold worker. Spares are not attempts: job-status counts running attempts, never more than the
job's parallelism; with its spares a job has at most twice as many workers, and the engine
makes none beyond max-parallel-workers workers in all.

Jobs that reuse workers or place their tasks on cluster members get no spares. A spare
carries its job's label and no task. When its job is over (or the engine hands over)
it is deleted; after a crash the reaper deletes it. A job whose spare could not be made gets
no other for a while (the failure is logged; its attempts make their own workers).
"""

import itertools
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from typing import Protocol

from ..backends import Backend, MakesWorkersAhead, WorkerSpec
from .ledger import JobRecord
from .model import reuses_workers
from .registry import Role, WorkerRegistry

logger = logging.getLogger(__name__)

PAUSE_AFTER_FAILURE_SECONDS = 30.0
MAKERS = max(1, len(os.sched_getaffinity(0)) // 2)  # spares of a job made at once


class Deletions(Protocol):
    """Where the engine counts the worker deletions it waits for (``AttemptThreads``)."""

    def deleting(self, worker: str, job_id: str) -> None:
        """Record that ``worker`` is being deleted."""
        ...

    def deleted(self, worker: str, key: tuple[str, int] | None = None) -> None:
        """Record that ``worker`` is deleted."""
        ...


Prepare = Callable[[WorkerSpec], None]
Delete = Callable[[str, str], None]  # (backend, worker)


class SpareWorkers:
    """The spare workers of this engine's jobs: being made, or ready for an attempt."""

    def __init__(
        self,
        backend_of: Callable[[str], Backend],
        deletions: Deletions,
        delete: Delete,
        registry: WorkerRegistry | None = None,
        makers: int = MAKERS,
    ) -> None:
        """Make spares through the backends ``backend_of`` returns, delete them with ``delete``.

        Spares being made count in ``deletions``: the engine waits for them as for deletions.
        """
        self.backend_of = backend_of
        self.deletions = deletions
        self.delete = delete
        self.registry = registry or WorkerRegistry()  # a spare is held from before it is made
        self._lock = threading.Lock()
        self._ready: dict[str, list[str]] = {}  # job -> spares ready, oldest first
        self._making: dict[str, set[str]] = {}  # job -> spares being made
        self._closed: set[str] = set()
        self._paused: dict[str, float] = {}  # job -> no new spare before this monotonic time
        self._todo: dict[str, int] = {}  # job -> spares still to make (the last top_up's count)
        self._makers: dict[str, int] = {}  # job -> threads making its spares
        self.makers = makers
        self._numbers = itertools.count(1)
        self._tag = secrets.token_hex(2)  # names of another engine's spares never collide

    def preparer(self, job: JobRecord) -> Prepare | None:
        """The backend's ``prepare`` when the job's tasks may run in spares, else None."""
        if reuses_workers(job.params):
            return None  # warm workers are made once per slot anyway
        if job.params.get("placement"):
            return None  # a task's member depends on its index (round-robin, a member list)
        try:
            backend = self.backend_of(job.backend)
        except Exception:  # the backend cannot be opened: the attempts will say why
            return None
        return backend.prepare if isinstance(backend, MakesWorkersAhead) else None

    def take(self, job_id: str) -> str | None:
        """A ready spare of the job for an attempt (the oldest), or None."""
        with self._lock:
            ready = self._ready.get(job_id)
            spare = ready.pop(0) if ready else None
        if spare is not None:
            self.registry.release(spare, Role.SPARE)  # its attempt holds it from now on
        return spare

    def give_back(self, job_id: str, name: str) -> bool:
        """An attempt that did not start returns its spare; False: the job is over (delete it)."""
        with self._lock:
            if job_id in self._closed:
                return False
            self._ready.setdefault(job_id, []).insert(0, name)
            self.registry.hold(name, job_id, Role.SPARE)
            return True

    def count(self, job_id: str | None = None) -> int:
        """How many spares there are, being made or ready (of one job, or in all)."""
        with self._lock:
            jobs = [job_id] if job_id is not None else {*self._ready, *self._making}
            return sum(len(self._ready.get(j, ())) + len(self._making.get(j, ())) for j in jobs)

    def names(self) -> set[str]:
        """Every spare's name, being made or ready (the reaper leaves them alone)."""
        with self._lock:
            return {n for names in [*self._ready.values(), *self._making.values()] for n in names}

    def jobs(self) -> list[str]:
        """The jobs that have spares, being made or ready."""
        with self._lock:
            spares = [*self._ready.items(), *self._making.items()]
            return sorted({job_id for job_id, names in spares if names})

    def top_up(self, job: JobRecord, spec_of: Callable[[str], WorkerSpec], wanted: int) -> int:
        """Have spares made until the job has ``wanted``; return how many makers started.

        At most ``makers`` spares of a job are made at once, one after another; each call
        says afresh how many more are to be made (the room left may have shrunk).
        """
        prepare = self.preparer(job)
        if prepare is None:
            return 0
        with self._lock:
            have = len(self._making.get(job.id, ())) + len(self._ready.get(job.id, ()))
            self._todo[job.id] = max(0, wanted - have)
            if job.id in self._closed or time.monotonic() < self._paused.get(job.id, 0.0):
                return 0
            busy = self._makers.get(job.id, 0)
            start = min(self.makers - busy, self._todo[job.id])
            self._makers[job.id] = busy + start
        for _ in range(start):
            threading.Thread(
                target=self._maker, args=(job, prepare, spec_of), daemon=True, name="spares"
            ).start()
        return start

    def _maker(
        self, job: JobRecord, prepare: Prepare, spec_of: Callable[[str], WorkerSpec]
    ) -> None:
        """Make the job's spares one after another while some are still to be made."""
        try:
            while True:
                with self._lock:
                    paused = time.monotonic() < self._paused.get(job.id, 0.0)
                    if job.id in self._closed or paused or self._todo.get(job.id, 0) <= 0:
                        return
                    self._todo[job.id] -= 1
                    name = f"cc-{job.id}-s{self._tag}{next(self._numbers)}"
                    self._making.setdefault(job.id, set()).add(name)
                    self.registry.hold(name, job.id, Role.SPARE)
                self.deletions.deleting(name, job.id)
                self._make(job, prepare, spec_of(name))
        finally:
            with self._lock:
                self._makers[job.id] -= 1
                if not self._makers[job.id]:
                    del self._makers[job.id]

    def _make(self, job: JobRecord, prepare: Prepare, spec: WorkerSpec) -> None:
        job_id, name = job.id, spec.worker_name
        made = False
        try:
            prepare(spec)
            made = True
        except Exception as err:  # the attempts make their own workers
            logger.info("could not prepare a worker for job %s: %s", job_id, err)
        with self._lock:
            making = self._making.get(job_id, set())
            making.discard(name)
            if not making:
                self._making.pop(job_id, None)
            closed = job_id in self._closed
            if not made:
                self._paused[job_id] = time.monotonic() + PAUSE_AFTER_FAILURE_SECONDS
            elif not closed:
                self._ready.setdefault(job_id, []).append(name)
            if not made or closed:
                self.registry.release(name, Role.SPARE)
        if made and closed:  # its job ended meanwhile
            self.delete(job.backend, name)
        self.deletions.deleted(name)

    def close(self, job_id: str) -> list[str]:
        """The job is over: return its ready spares, to delete; no new one is made after.

        Those being made delete themselves once made.
        """
        with self._lock:
            self._closed.add(job_id)
            self._paused.pop(job_id, None)
            self._todo.pop(job_id, None)
            ready = self._ready.pop(job_id, [])
        for name in ready:
            self.registry.release(name, Role.SPARE)
        return ready
