"""The scheduler: runs their tasks on a backend, resumes after a crash.

``Engine.submit`` checks a job and records it (``submission``). ``Engine.step``
(called in a loop by the agent, or in-process by ``launch-job wait=true``) keeps at most
``min(job parallelism, max-parallel-workers)`` attempts running, each in a thread that:

1. has its attempt (and worker name) recorded in the ledger BEFORE the worker is started;
2. starts the worker and waits for it, gathering results into a temporary directory;
3. renames that directory into ``results/<job>/<index>/`` (replacing a half-written one);
4. THEN commits the outcome (exactly once: the ledger refuses a second commit);
5. deletes the worker.

A crash anywhere re-runs or re-adopts the attempt and never records it twice: on start,
attempts the ledger says are running are adopted when their worker still exists (``wait``
again) and retried when it is gone (not charged to the task's retry budget).
"""

import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from ..backends import Backend, FailureReason, LaunchError, TaskOutcome, WorkerSpec, open_backend
from ..config import HostConfig
from ..units import parse_duration
from . import housekeeping, results
from .ledger import JobRecord, Ledger
from .model import JobState, TaskState
from .outcomes import (
    BACKOFF_BASE_SECONDS,
    BACKOFF_CAP_SECONDS,
    VANISHED,
    OutcomeCommitter,
    failed,
)
from .params import LaunchJobParams
from .submission import ImageCheck, JobSubmitter

logger = logging.getLogger(__name__)

BackendFactory = Callable[[str], Backend]
LOCK_FILE = "engine.lock"


def default_backend_factory(config: HostConfig) -> BackendFactory:
    """Return a factory building the real backends of this host."""
    return lambda name: open_backend(name, config)


def worker_spec(
    job: JobRecord, index: int, task_input: str | None, attempt: int, results_cap: int
) -> WorkerSpec:
    """Return the WorkerSpec of one attempt of one task of a recorded job."""
    params = job.params
    env = {
        **dict(entry.split("=", 1) for entry in params.get("env", [])),
        "TASK_INDEX": str(index),
        "TASK_COUNT": str(job.task_count),
        "JOB_ID": job.id,
        "RESULTS_DIR": "/results",
        "TASK_ATTEMPT": str(attempt),
    }
    if task_input is not None:
        env["TASK_INPUT"] = task_input
    return WorkerSpec(
        job_id=job.id,
        task_index=index,
        attempt=attempt,
        image=params["image"],
        command=params["command"],
        env=env,
        input_dir=params.get("input_dir") or None,
        cpu=params.get("cpu") or None,
        memory=params.get("memory") or None,
        disk=params.get("disk") or None,
        placement=params.get("placement") or "",
        timeout_seconds=parse_duration(params.get("timeout") or "0"),
        results_cap_bytes=results_cap,
    )


class EngineLock:
    """An exclusive lock on a state directory: at most one engine runs jobs there."""

    def __init__(self, state_dir: Path) -> None:
        """Prepare the lock file ``state_dir/engine.lock``."""
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        self.path = state_dir / LOCK_FILE
        self._file: IO[str] | None = None

    def acquire(self, blocking: bool = False) -> bool:
        """Take the lock; return False when another engine holds it (``blocking=False``)."""
        if self._file is not None:
            return True
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.close()
            return False
        self._file = handle
        return True

    def release(self) -> None:
        """Release the lock."""
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


class Engine:
    """Runs the jobs of one state directory on one host."""

    def __init__(
        self,
        state_dir: Path,
        config: HostConfig,
        backend_factory: BackendFactory | None = None,
        *,
        ledger: Ledger | None = None,
        backoff_base: float = BACKOFF_BASE_SECONDS,
        backoff_cap: float = BACKOFF_CAP_SECONDS,
        clock: Callable[[], float] = time.time,
        image_exists: ImageCheck | None = None,
    ) -> None:
        """Set up an engine; nothing runs until ``step`` or ``run``.

        ``image_exists(backend, image)`` defaults to the backend's ``image_exists`` method,
        else to ``backends.lxd.image_exists``.
        """
        self.state_dir = state_dir
        self.config = config
        self.ledger = ledger or Ledger(state_dir)
        self.clock = clock
        self._factory = backend_factory or default_backend_factory(config)
        self._backends: dict[str, Backend] = {}
        self._committer = OutcomeCommitter(
            state_dir, self.ledger, clock, backoff_base, backoff_cap
        )
        self._submitter = JobSubmitter(config, self.ledger, self.backend, image_exists)
        self._inflight: dict[tuple[str, int], threading.Thread] = {}
        self._deleting: set[str] = set()
        self._deleted = threading.Condition()
        self._lock = threading.RLock()
        self._wakeup = threading.Event()  # set when an attempt ends: a slot is free
        self._stop_reasons: dict[str, FailureReason] = {}
        self._deadlines: dict[str, float] = {}
        self._resumed = False
        self.launching = True

    def backend(self, name: str) -> Backend:
        """Return the (cached) backend called ``name``."""
        with self._lock:
            if name not in self._backends:
                self._backends[name] = self._factory(name)
            return self._backends[name]

    def submit(self, params: LaunchJobParams) -> JobRecord:
        """Validate the job against the host, record it (one transaction) and return it."""
        return self._submitter.submit(params, self.clock())

    # Scheduling -------------------------------------------------------------------------

    def is_inflight(self, job_id: str, index: int) -> bool:
        """Tell whether this engine follows an attempt of task ``index`` of the job."""
        with self._lock:
            return (job_id, index) in self._inflight

    def inflight_count(self, job_id: str | None = None) -> int:
        """Return how many attempts this engine is running (of one job, or in all)."""
        with self._lock:
            if job_id is None:
                return len(self._inflight)
            return sum(1 for key in self._inflight if key[0] == job_id)

    def step(self) -> bool:
        """One scheduling pass: resume, deadlines, finish jobs, launch. True while work remains."""
        if not self._resumed:
            self.resume()
        now = self.clock()
        self._refresh_stop_reasons()
        active = self.ledger.active_jobs()
        for job in active:
            if job.deadline is not None and now >= job.deadline:
                self._stop_reasons[job.id] = FailureReason.DEADLINE
                self.ledger.fail_pending(
                    job.id, FailureReason.DEADLINE.value, "the job's deadline passed", now
                )
            if self._finish_if_done(job):
                continue
            if self.launching and self._resumed:
                self._launch_some(job, now)
        return bool(active) or self.inflight_count() > 0

    def _refresh_stop_reasons(self) -> None:
        with self._lock:
            job_ids = {key[0] for key in self._inflight}
        for job_id in job_ids:
            job = self.ledger.job(job_id)
            if job is None or job.state == JobState.CANCELLED:
                self._stop_reasons[job_id] = FailureReason.CANCELLED

    def _finish_if_done(self, job: JobRecord) -> bool:
        if self.inflight_count(job.id):
            return False
        counts = self.ledger.task_counts(job.id)
        if counts[TaskState.PENDING.value] or counts[TaskState.RUNNING.value]:
            return False
        state = JobState.FAILED if counts[TaskState.FAILED.value] else JobState.SUCCEEDED
        if self.ledger.set_job_state(job.id, state, self.clock()):
            results.write_joblog(self.state_dir, self.ledger, job.id)
            logger.info("job %s %s", job.id, state.value)
        self._stop_reasons.pop(job.id, None)
        return True

    def _launch_some(self, job: JobRecord, now: float) -> None:
        limit = min(
            job.params.get("parallelism") or self.config.max_parallel_workers,
            self.config.max_parallel_workers,
        )
        free = min(
            limit - self.inflight_count(job.id),
            self.config.max_parallel_workers - self.inflight_count(),
        )
        if free <= 0:
            return
        for task in self.ledger.runnable_tasks(job.id, now, free):
            attempt = self.ledger.start_attempt(
                job.id,
                task.index,
                lambda number, index=task.index: self.spec(job, index, None, number).worker_name,
                self.clock(),
            )
            if attempt is not None:
                self.spawn(job, self.spec(job, task.index, task.input, attempt), adopt=False)

    def spec(self, job: JobRecord, index: int, task_input: str | None, attempt: int) -> WorkerSpec:
        """Return what the backend needs to run ``attempt`` of task ``index``."""
        return worker_spec(job, index, task_input, attempt, self.config.task_results_cap_bytes)

    def spawn(self, job: JobRecord, spec: WorkerSpec, adopt: bool) -> None:
        """Follow one attempt in a thread of its own (``adopt``: it was started before)."""
        if job.deadline is not None:
            self._deadlines[job.id] = job.deadline
        thread = threading.Thread(
            target=self._run_attempt,
            args=(job, spec, adopt),
            daemon=True,
            name=spec.worker_name,
        )
        with self._lock:
            self._inflight[(job.id, spec.task_index)] = thread
        thread.start()

    def should_stop(self, job_id: str) -> FailureReason | None:
        """Return why a job's running attempts must stop now, or None."""
        reason = self._stop_reasons.get(job_id)
        if reason is not None:
            return reason
        deadline = self._deadlines.get(job_id)
        if deadline is not None and self.clock() >= deadline:
            return FailureReason.DEADLINE
        return None

    def _run_attempt(self, job: JobRecord, spec: WorkerSpec, adopt: bool) -> None:
        key = (job.id, spec.task_index)
        with self._deleted:
            self._deleting.add(spec.worker_name)
        try:
            backend = self.backend(job.backend)
            temp = results.temp_task_dir(self.state_dir, job.id, spec.task_index, spec.attempt)
            try:
                if not adopt:
                    backend.start(spec)
                outcome = backend.wait(spec, temp, lambda: self.should_stop(job.id))
            except LaunchError as err:
                outcome = failed(FailureReason.LAUNCH_ERROR, str(err))
            except Exception as err:  # a backend bug must not kill the engine
                logger.exception("attempt %s failed", spec.worker_name)
                outcome = failed(FailureReason.LAUNCH_ERROR, f"{type(err).__name__}: {err}")
            lost = adopt and not outcome.succeeded and outcome.exit_code is None
            lost = lost and outcome.reason in (FailureReason.EXIT_CODE, FailureReason.LAUNCH_ERROR)
            if lost:  # the crash came before the command ran: like a vanished worker
                outcome.reason = FailureReason.LAUNCH_ERROR
                outcome.detail = f"{VANISHED} in a crash: {outcome.detail}"
            self.commit(job, spec, outcome, temp, vanished=lost)
        except Exception:
            logger.exception("could not record attempt %s", spec.worker_name)
        finally:
            with self._lock:
                self._inflight.pop(key, None)
            self._wakeup.set()
        self._delete_worker(job.backend, spec.worker_name)

    def _delete_worker(self, backend_name: str, name: str) -> None:
        try:
            self.backend(backend_name).delete(name)
        except Exception:  # the reaper will get it
            logger.exception("could not delete worker %s", name)
        finally:
            with self._deleted:
                self._deleting.discard(name)
                self._deleted.notify_all()

    def wait_deletions(self, timeout: float = 60.0) -> bool:
        """Wait (bounded) until the workers of finished attempts are deleted; True when done."""
        with self._deleted:
            return self._deleted.wait_for(lambda: not self._deleting, timeout)

    def commit(
        self,
        job: JobRecord,
        spec: WorkerSpec,
        outcome: TaskOutcome,
        temp: Path | None,
        vanished: bool = False,
    ) -> bool:
        """Install an attempt's results and commit its outcome exactly once; True if committed."""
        return self._committer.commit(job, spec, outcome, temp, vanished)

    def resume(self) -> None:
        """Adopt attempts a previous engine left running, or retry those whose worker is gone.

        Cancel, reap and retention are ``housekeeping`` functions of an engine.
        """
        self._resumed = housekeeping.resume(self)

    def run(
        self,
        *,
        poll: float = 0.5,
        stop: threading.Event | None = None,
        until: float | None = None,
        job_id: str | None = None,
        role: str = "agent",
        on_tick: Callable[[], None] | None = None,
    ) -> bool:
        """Drive jobs until none is active (or ``job_id`` finished, ``until``, or ``stop``).

        Returns True when it ended because the work was done.
        """
        stop = stop or threading.Event()
        while True:
            self.ledger.heartbeat(os.getpid(), role, self.clock())
            active = self.step()
            if on_tick is not None:
                on_tick()
            if job_id is not None:
                job = self.ledger.job(job_id)
                if job is None or (job.state.finished and not self.inflight_count(job_id)):
                    self.wait_deletions()
                    return True
            elif not active:
                self.wait_deletions()
                return True
            if until is not None and self.clock() >= until:
                return False
            self._wakeup.wait(poll)  # the next pass starts when a slot frees, or after poll
            self._wakeup.clear()
            if stop.is_set():
                return False

    def drain(self, timeout: float = 30.0) -> None:
        """Wait (bounded) for this engine's attempt threads to end."""
        end = time.monotonic() + timeout
        with self._lock:
            threads = list(self._inflight.values())
        for thread in threads:
            thread.join(max(0.0, end - time.monotonic()))
