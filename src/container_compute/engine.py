"""The scheduler: validates and records jobs, runs their tasks on a backend, resumes after a crash.

``Engine.submit`` checks a job against the host and records it — nothing else. ``Engine.step``
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
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

from . import results
from .backends import Backend, LaunchError, TaskOutcome, WorkerSpec
from .config import HostConfig
from .jobs import FailureReason, JobState, TaskState
from .ledger import ATTEMPT_RUNNING, JobRecord, Ledger, TaskRecord
from .params import LaunchJobParams
from .units import parse_duration, parse_size

logger = logging.getLogger(__name__)

BackendFactory = Callable[[str], Backend]
BACKOFF_BASE_SECONDS = 10.0
BACKOFF_CAP_SECONDS = 360.0
DETAIL_CHARS = 500
VANISHED = "worker vanished"
LOCK_FILE = "engine.lock"
MEMINFO = Path("/proc/meminfo")


class ActionError(Exception):
    """An action (or CLI command) cannot be done; the message tells the operator why."""


# Launch errors retried without spending the task's retries, before they count.
FREE_LAUNCH_RETRIES = 3


def backoff_delay(
    failures: int, base: float = BACKOFF_BASE_SECONDS, cap: float = BACKOFF_CAP_SECONDS
) -> float:
    """Return the wait before the next attempt after ``failures`` failed ones (1, 2, ...)."""
    return min(cap, base * 2 ** max(0, failures - 1))


def host_cpu_count() -> int:
    """Return the number of CPUs of this host."""
    return os.cpu_count() or 1


def host_memory_bytes(meminfo: Path = MEMINFO) -> int:
    """Return the host's total memory in bytes (from /proc/meminfo)."""
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no MemTotal in {meminfo}")


def default_backend_factory(config: HostConfig) -> BackendFactory:
    """Return a factory building the real backends (imported lazily)."""

    def build(name: str) -> Backend:
        if name == "lxd":
            from .backends.lxd import LXDBackend

            return LXDBackend(config)
        raise ActionError(f"backend: {name} is not available yet; use backend=lxd")

    return build


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
    """Jobs of one state directory on one host."""

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
        image_exists: Callable[[str, str], bool] | None = None,
    ) -> None:
        """Set up an engine; nothing runs until ``step`` or ``run``.

        ``image_exists(backend, image)`` defaults to the backend's ``image_exists`` method,
        else to ``backends.lxd.image_exists``.
        """
        self.state_dir = state_dir
        self.config = config
        self.ledger = ledger or Ledger(state_dir)
        self._factory = backend_factory or default_backend_factory(config)
        self._backends: dict[str, Backend] = {}
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._clock = clock
        self._image_exists = image_exists
        self._inflight: dict[tuple[str, int], threading.Thread] = {}
        self._deleting: set[str] = set()
        self._deleted = threading.Condition()
        self._lock = threading.RLock()
        self._wakeup = threading.Event()  # set when an attempt ends: a slot is free
        self._stop_reasons: dict[str, FailureReason] = {}
        self._deadlines: dict[str, float] = {}
        self._resumed = False
        self.launching = True

    # Backends ---------------------------------------------------------------------------

    def backend(self, name: str) -> Backend:
        """Return the (cached) backend called ``name``."""
        with self._lock:
            if name not in self._backends:
                self._backends[name] = self._factory(name)
            return self._backends[name]

    def _check_image(self, backend_name: str, image: str) -> bool:
        if self._image_exists is not None:
            return self._image_exists(backend_name, image)
        backend = self.backend(backend_name)
        method = getattr(backend, "image_exists", None)
        if callable(method):
            return bool(method(image))
        from .backends.lxd import image_exists

        return image_exists(self.config, image)

    # Submitting -------------------------------------------------------------------------

    def validate(self, params: LaunchJobParams) -> tuple[str, str]:
        """Check a job against this host; return (backend, image).

        Raises:
            ActionError: naming the parameter that cannot work here.
        """
        backend_name = params.backend or self.config.default_backend
        if backend_name == "nova":
            raise ActionError(
                "backend: nova is not available yet (it needs the identity-credentials "
                "relation and the nova backend); use backend=lxd"
            )
        image = params.image or self.config.default_image
        try:
            self.backend(backend_name)
            found = self._check_image(backend_name, image)
        except ActionError:
            raise
        except Exception as err:
            raise ActionError(f"backend: {backend_name} does not answer: {err}") from err
        if not found:
            source = "image" if params.image else "image (the default-image option)"
            raise ActionError(
                f"{source}: {image!r} does not exist in LXD project "
                f"{self.config.lxd_project!r}; build it with build-worker-image"
            )
        if params.input_dir:
            path = Path(params.input_dir)
            if not path.exists():
                raise ActionError(f"input-dir: {params.input_dir} does not exist")
            if not path.is_dir():
                raise ActionError(f"input-dir: {params.input_dir} is not a directory")
        if params.cpu:
            self._check_cpu(params.cpu)
        if params.memory and not params.memory.endswith("%"):
            memory, total = parse_size(params.memory), host_memory_bytes()
            if memory > total:
                raise ActionError(
                    f"memory: {params.memory} is more than this host's {total >> 20} MiB"
                )
        return backend_name, image

    @staticmethod
    def _check_cpu(cpu: str) -> None:
        cpus = host_cpu_count()
        if cpu.isdigit():
            if int(cpu) > cpus:
                raise ActionError(f"cpu: {cpu} is more than this host's {cpus} CPUs")
            return
        highest = max(int(bound) for part in cpu.split(",") for bound in part.split("-"))
        if highest >= cpus:
            raise ActionError(
                f"cpu: CPU {highest} in {cpu!r} does not exist (this host has CPUs 0-{cpus - 1})"
            )

    def submit(self, params: LaunchJobParams) -> JobRecord:
        """Validate the job against the host, record it (one transaction) and return it."""
        backend_name, image = self.validate(params)
        recorded = asdict(params)
        recorded.update(image=image, backend=backend_name)
        job_id = self.ledger.create_job(
            recorded,
            name=params.name,
            backend=backend_name,
            task_count=params.task_count,
            inputs=params.input_lines,
            deadline_seconds=params.deadline_seconds,
            now=self._clock(),
        )
        job = self.ledger.job(job_id)
        assert job is not None
        return job

    # Scheduling -------------------------------------------------------------------------

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
        now = self._clock()
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
        if self.ledger.set_job_state(job.id, state, self._clock()):
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
                lambda number, index=task.index: self._spec(job, index, None, number).worker_name,
                self._clock(),
            )
            if attempt is not None:
                self._spawn(job, self._spec(job, task.index, task.input, attempt), adopt=False)

    def _spec(
        self, job: JobRecord, index: int, task_input: str | None, attempt: int
    ) -> WorkerSpec:
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
            timeout_seconds=parse_duration(params.get("timeout") or "0"),
            results_cap_bytes=self.config.task_results_cap_bytes,
        )

    def _spawn(self, job: JobRecord, spec: WorkerSpec, adopt: bool) -> None:
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
        if deadline is not None and self._clock() >= deadline:
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
                outcome = _failed(FailureReason.LAUNCH_ERROR, str(err))
            except Exception as err:  # a backend bug must not kill the engine
                logger.exception("attempt %s failed", spec.worker_name)
                outcome = _failed(FailureReason.LAUNCH_ERROR, f"{type(err).__name__}: {err}")
            lost = adopt and not outcome.succeeded and outcome.exit_code is None
            lost = lost and outcome.reason in (FailureReason.EXIT_CODE, FailureReason.LAUNCH_ERROR)
            if lost:  # the crash came before the command ran: like a vanished worker
                outcome.reason = FailureReason.LAUNCH_ERROR
                outcome.detail = f"{VANISHED} in a crash: {outcome.detail}"
            self._commit(job, spec, outcome, temp, vanished=lost)
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

    def _commit(
        self,
        job: JobRecord,
        spec: WorkerSpec,
        outcome: TaskOutcome,
        temp: Path | None,
        vanished: bool = False,
    ) -> bool:
        now = self._clock()
        task = self.ledger.task(job.id, spec.task_index)
        current = self.ledger.job(job.id)
        if task is None or current is None:
            return False
        retries = int(job.params.get("retries", 0))
        charge, not_before = True, now
        if outcome.succeeded:
            state, charge = TaskState.SUCCEEDED, False
        elif current.state == JobState.CANCELLED:
            state = TaskState.FAILED
            outcome.reason = FailureReason.CANCELLED
        elif outcome.reason in (FailureReason.DEADLINE, FailureReason.CANCELLED):
            state = TaskState.FAILED
        elif vanished:
            state, charge = TaskState.PENDING, False
        elif (
            outcome.reason == FailureReason.LAUNCH_ERROR
            and task.attempts - task.charged <= FREE_LAUNCH_RETRIES
        ):
            # The host, not the command, failed (e.g. LXD refused an idmap under load): try
            # again soon without spending the task's retries.
            state, charge = TaskState.PENDING, False
            not_before = now + self._backoff_base / 5
        elif task.charged + 1 <= retries:
            state = TaskState.PENDING
            not_before = now + backoff_delay(
                task.charged + 1, self._backoff_base, self._backoff_cap
            )
        else:
            state = TaskState.FAILED
        record = outcome_record(spec, outcome)
        if temp is not None:
            results.write_outcome(temp, record)
            results.install_task_dir(
                temp, results.task_dir(self.state_dir, job.id, spec.task_index)
            )
        committed = self.ledger.finish_attempt(
            job.id,
            spec.task_index,
            spec.attempt,
            record,
            task_state=state,
            charge=charge,
            not_before=not_before,
            now=now,
        )
        if committed:
            logger.info(
                "task %s/%s attempt %s: %s",
                job.id,
                spec.task_index,
                spec.attempt,
                record["reason"] or "succeeded",
            )
        return committed

    # Resume, reap, retention ------------------------------------------------------------

    def resume(self) -> None:
        """Adopt attempts a previous engine left running, or retry those whose worker is gone."""
        running = self.ledger.attempts(state=ATTEMPT_RUNNING)
        if not self.inflight_count():
            results.remove_temp_dirs(self.state_dir)
        workers: dict[str, set[str]] = {}
        try:
            for attempt in running:
                job = self.ledger.job(attempt.job)
                if job is None or (attempt.job, attempt.index) in self._inflight:
                    continue
                if job.backend not in workers:
                    workers[job.backend] = {
                        w.name for w in self.backend(job.backend).list_workers()
                    }
                task = self.ledger.task(attempt.job, attempt.index)
                spec = self._spec(
                    job, attempt.index, task.input if task else None, attempt.attempt
                )
                if attempt.worker in workers[job.backend]:
                    logger.info("adopting worker %s", attempt.worker)
                    self._spawn(job, spec, adopt=True)
                else:
                    logger.info("worker %s vanished: retrying", attempt.worker)
                    self._commit(
                        job,
                        spec,
                        _failed(FailureReason.LAUNCH_ERROR, VANISHED),
                        None,
                        vanished=True,
                    )
        except Exception:
            logger.exception("cannot resume yet (backend unavailable?)")
            return
        self._resumed = True

    def cancel_stale(self, job_id: str) -> list[str]:
        """Stop a cancelled job's attempts that no engine follows; return deleted workers.

        Only call this while holding the state directory's ``EngineLock``.
        """
        job = self.ledger.job(job_id)
        if job is None:
            return []
        deleted = []
        for attempt in self.ledger.attempts(job_id, state=ATTEMPT_RUNNING):
            if (job_id, attempt.index) in self._inflight:
                continue
            if self.backend(job.backend).delete(attempt.worker):
                deleted.append(attempt.worker)
            spec = self._spec(job, attempt.index, None, attempt.attempt)
            self._commit(
                job, spec, _failed(FailureReason.CANCELLED, "the job was cancelled"), None
            )
        return deleted

    def reap(self) -> list[str]:
        """Delete labelled workers that belong to no running attempt; return their names."""
        running = {
            (a.job, a.index): a.attempt for a in self.ledger.attempts(state=ATTEMPT_RUNNING)
        }
        deleted: list[str] = []
        backend = self.backend("lxd")
        for worker in backend.list_workers():
            job = self.ledger.job(worker.job_id) if worker.job_id else None
            if job is not None and not job.state.finished and worker.task_index is not None:
                if running.get((job.id, worker.task_index)) == worker.attempt:
                    continue
            if backend.delete(worker.name):
                deleted.append(worker.name)
        return deleted

    def apply_retention(self) -> list[str]:
        """Delete finished jobs (record and results) older than job-retention; return ids."""
        keep = self.config.job_retention_seconds
        if not keep:
            return []
        cutoff = self._clock() - keep
        deleted = []
        for job in self.ledger.jobs():
            if job.state.finished and job.finished is not None and job.finished < cutoff:
                results.delete_job_results(self.state_dir, job.id)
                self.ledger.delete_job(job.id)
                deleted.append(job.id)
        return deleted

    # Running ----------------------------------------------------------------------------

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
            self.ledger.heartbeat(os.getpid(), role, self._clock())
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
            if until is not None and self._clock() >= until:
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


def _failed(reason: FailureReason, detail: str) -> TaskOutcome:
    now = time.time()
    return TaskOutcome(
        exit_code=None, reason=reason, started_at=now, finished_at=now, detail=detail
    )


def outcome_record(spec: WorkerSpec, outcome: TaskOutcome) -> dict[str, Any]:
    """Return an attempt's outcome as the JSON record kept in the ledger and outcome.json."""
    total = outcome.stdout_bytes + outcome.stderr_bytes + outcome.files_bytes
    return {
        "worker": spec.worker_name,
        "attempt": spec.attempt,
        "succeeded": outcome.succeeded,
        "exit-code": outcome.exit_code,
        "reason": outcome.reason.value if outcome.reason else None,
        "detail": outcome.detail[:DETAIL_CHARS],
        "started-at": outcome.started_at,
        "finished-at": outcome.finished_at,
        "stdout-bytes": outcome.stdout_bytes,
        "stderr-bytes": outcome.stderr_bytes,
        "files-bytes": outcome.files_bytes,
        "bytes": total,
        "send": len(spec.env.get("TASK_INPUT", "").encode()),
        "truncated": outcome.truncated,
        "skipped": outcome.skipped[:20],
    }


def task_summary(task: TaskRecord) -> dict[str, Any]:
    """Return one task's state as action-result data."""
    entry: dict[str, Any] = {"state": task.state.value, "attempts": task.attempts}
    # Attempts lost to the host (launch errors, vanished workers) spend none of the retries.
    uncharged = task.attempts - task.charged - (task.state == TaskState.SUCCEEDED)
    if uncharged > 0:
        entry["uncharged-attempts"] = uncharged
    if task.exit_code is not None:
        entry["exit-code"] = task.exit_code
    if task.reason:
        entry["reason"] = task.reason
    if task.detail:
        entry["detail"] = task.detail
    if task.state in (TaskState.SUCCEEDED, TaskState.FAILED):
        entry["bytes"] = task.bytes
        entry["truncated"] = task.truncated
    return entry
