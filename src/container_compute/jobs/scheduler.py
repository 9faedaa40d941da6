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

One engine at a time drives a state directory (``EngineLock``), and it drives every active
job there, whoever submitted it. A job finishes in the ledger with the commit of its last
task (``Ledger.finish_attempt``), so it does not matter which engine ran it. An engine leaves
its attempts to the next one either by draining them (``drain``) before it releases the lock,
or by ``park``: no thread starts, commits or deletes a worker any more, so the process can
exit (which releases the lock) and the next engine adopts what is still running.
"""

import fcntl
import logging
import os
import shlex
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from ..backends import (
    SPARE_TASK,
    Backend,
    FailureReason,
    LaunchError,
    MemberLostError,
    TaskOutcome,
    WorkerSpec,
    open_backend,
)
from ..config import HostConfig
from ..constants import ENV_NAME_RE, IMAGE_CONFIG, RESERVED_ENV
from ..lxdclient import endpoint_of
from ..owner import owner_id
from ..units import parse_duration
from . import housekeeping, results
from .ledger import ENDED_BY, JobRecord, Ledger
from .model import JobState, TaskState, reuses_workers
from .outcomes import (
    BACKOFF_BASE_SECONDS,
    BACKOFF_CAP_SECONDS,
    VANISHED,
    OutcomeCommitter,
    failed,
)
from .params import LaunchJobParams
from .private import FILE_MODE, private_dir, tighten_file
from .ready import ReadyWorkers
from .registry import Role, WorkerRegistry
from .submission import ImageCheck, JobSubmitter
from .warm import WorkerKeeper

logger = logging.getLogger(__name__)

BackendFactory = Callable[[str], Backend]
LOCK_FILE = "engine.lock"


def default_backend_factory(config: HostConfig, state_dir: Path | None = None) -> BackendFactory:
    """Return a factory building the real backends of this host (of ``state_dir``)."""
    return lambda name: open_backend(name, config, state_dir)


def default_parallelism(config: HostConfig, backend: str) -> int:
    """Return a job's parallelism when it names none.

    Twice this host's CPUs for workers on this host's LXD (LXD's own work for each worker
    needs the CPUs too); max-parallel-workers elsewhere (Nova, a remote LXD or a cluster).
    Both at most max-parallel-workers.
    """
    if backend != "lxd" or endpoint_of(config) is not None:
        return config.max_parallel_workers
    return min(config.max_parallel_workers, 2 * len(os.sched_getaffinity(0)))


def job_parallelism(config: HostConfig, job: JobRecord) -> int:
    """How many attempts of the job may run at once: its parallelism, or the default."""
    parallelism = job.params.get("parallelism") or default_parallelism(config, job.backend)
    return min(parallelism, config.max_parallel_workers)


def in_working_dir(command: str, directory: str) -> str:
    """``command`` run from the image's WorkingDir (exit 126 when the image lacks it)."""
    if not directory or directory == "/":
        return command
    quoted = shlex.quote(directory)
    return f"cd -- {quoted} || {{ echo no WorkingDir: {quoted} >&2; exit 126; }}\n{command}"


def worker_spec(
    job: JobRecord,
    index: int,
    task_input: str | None,
    attempt: int,
    results_cap: int,
    placed: tuple[str, float] | None = None,
) -> WorkerSpec:
    """Return the WorkerSpec of one attempt of one task of a recorded job.

    ``placed``: (worker, start time) of an attempt in a worker made before it: the job's warm
    worker (reuse-workers), a spare, or the worker the ledger names.
    """
    params = job.params
    image = params.get(IMAGE_CONFIG) or {}  # an OCI image's Env and WorkingDir, if any
    env = {
        **{
            name: value
            for name, _, value in (entry.partition("=") for entry in image.get("env", []))
            if ENV_NAME_RE.match(name) and name not in RESERVED_ENV
        },
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
        command=in_working_dir(params["command"], image.get("working-dir") or ""),
        env=env,
        input_dir=params.get("input_dir") or None,
        cpu=params.get("cpu") or None,
        memory=params.get("memory") or None,
        disk=params.get("disk") or None,
        placement=params.get("placement") or "",
        timeout_seconds=parse_duration(params.get("timeout") or "0"),
        results_cap_bytes=results_cap,
        options=dict(params.get("backend-options") or {}),
        worker=placed[0] if placed else "",
        reuse=reuses_workers(params),
        sandbox=reuses_workers(params),
        started_at=placed[1] if placed else 0.0,
    )


def follow_attempt(
    backend: Backend,
    spec: WorkerSpec,
    temp: Path,
    adopt: bool,
    threads: "AttemptThreads",
    should_stop: Callable[[], FailureReason | None],
) -> tuple[TaskOutcome, Path, bool] | None:
    """Start the worker (unless adopted) and wait for it: (outcome, results, vanished).

    Results are gathered into ``temp``. Returns None when the engine was parked before the
    worker was started.
    """
    try:
        if not adopt:
            with threads.acting() as allowed:
                if not allowed:
                    return None
                backend.start(spec)
        outcome = backend.wait(spec, temp, should_stop)
    except MemberLostError as err:  # not the task's fault: it runs again, elsewhere
        outcome = failed(FailureReason.MEMBER_LOST, str(err))
        outcome.host = err.member
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
    return outcome, temp, lost


NO_ROOM = "the attempt's results could not be kept on the host"


def commit_or_record_lost(
    commit: Callable[..., bool],
    job: JobRecord,
    spec: WorkerSpec,
    followed: tuple[TaskOutcome, Path | None, bool],
) -> None:
    """Commit an attempt; one whose results cannot be installed is recorded at once.

    A full disk or an I/O error while its results are installed is the host's fault, not
    the task's: the attempt is recorded as lost to the host, with nothing kept, and its task
    runs again (bounded, not charged). Only when even that fails (the ledger cannot be
    written) is it left running for the next engine to resume.
    """
    try:
        commit(job, spec, *followed)
        return
    except Exception as err:
        logger.exception("could not record attempt %s", spec.worker_name)
        why = f"{NO_ROOM}: {type(err).__name__}: {err}"
    if followed[1] is not None:
        shutil.rmtree(followed[1], ignore_errors=True)
    try:
        commit(job, spec, failed(FailureReason.LAUNCH_ERROR, why), None, True)
    except Exception:
        logger.exception("could not record attempt %s at all: resumed later", spec.worker_name)


class EngineLock:
    """An exclusive lock on a state directory: at most one engine runs jobs there."""

    def __init__(self, state_dir: Path) -> None:
        """Prepare the lock file ``state_dir/engine.lock`` (mode 0600 in a 0700 directory)."""
        private_dir(state_dir)
        self.path = state_dir / LOCK_FILE
        self._file: IO[str] | None = None

    def acquire(self, blocking: bool = False) -> bool:
        """Take the lock; return False when another engine holds it (``blocking=False``)."""
        if self._file is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
        handle = os.fdopen(fd, "a+")
        tighten_file(self.path)
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


class AttemptThreads:
    """The attempt threads of one engine: who follows what, and when a thread may act.

    A thread starts a worker, and commits and deletes it, inside ``acting``; once the engine
    is parked, a thread that would act ends instead and leaves its attempt (recorded as
    running) to the next engine.
    """

    def __init__(self, registry: WorkerRegistry | None = None) -> None:
        """Track no thread yet; the workers of attempts are recorded as held in ``registry``."""
        self.registry = registry or WorkerRegistry()
        self._lock = threading.RLock()
        self._inflight: dict[tuple[str, int], threading.Thread] = {}
        self._deleting: dict[object, str] = {}  # (worker, attempt key) or worker -> job id
        self._changed = threading.Condition(self._lock)
        self._acting = 0
        self.parked = False
        self.wakeup = threading.Event()  # set when an attempt ends: a slot is free

    def add(self, key: tuple[str, int], worker: str, thread: threading.Thread) -> None:
        """Record that ``thread`` follows the attempt of ``key`` (job, index) on ``worker``."""
        with self._lock:
            self._inflight[key] = thread
            self._deleting[(worker, key)] = key[0]
        self.registry.hold(worker, key[0], Role.ATTEMPT)

    def done(self, key: tuple[str, int]) -> None:
        """Record that the attempt of ``key`` is no longer followed (a slot is free)."""
        with self._lock:
            self._inflight.pop(key, None)
        self.wakeup.set()

    def deleting(self, worker: str, job_id: str) -> None:
        """Record that ``worker`` (no attempt's) is being deleted: wait_deletions waits."""
        with self._lock:
            self._deleting[worker] = job_id
        self.registry.hold_unless_held(worker, job_id, Role.DELETING)  # e.g. a spare being made

    def deleted(self, worker: str, key: tuple[str, int] | None = None) -> None:
        """Record that ``worker`` (of the attempt of ``key``) is deleted, kept or reaped later."""
        with self._changed:
            self._deleting.pop(worker if key is None else (worker, key), None)
            self._changed.notify_all()
        self.registry.release(worker, Role.DELETING if key is None else Role.ATTEMPT)

    def job_ids(self) -> set[str]:
        """Return the jobs whose attempts are followed."""
        with self._lock:
            return {key[0] for key in self._inflight}

    def is_inflight(self, key: tuple[str, int]) -> bool:
        """Tell whether an attempt of ``key`` (job, index) is followed."""
        with self._lock:
            return key in self._inflight

    def count(self, job_id: str | None = None) -> int:
        """Return how many attempts are followed (of one job, or in all)."""
        with self._lock:
            if job_id is None:
                return len(self._inflight)
            return sum(1 for key in self._inflight if key[0] == job_id)

    @contextmanager
    def acting(self) -> Iterator[bool]:
        """Yield True when the thread may act on its worker; False once parked."""
        with self._changed:
            if self.parked:
                allowed = False
            else:
                allowed = True
                self._acting += 1
        try:
            yield allowed
        finally:
            if allowed:
                with self._changed:
                    self._acting -= 1
                    self._changed.notify_all()

    def park(self, timeout: float) -> bool:
        """Let no thread act any more; wait (bounded) for those acting; True when none is."""
        with self._changed:
            self.parked = True
            return self._changed.wait_for(lambda: not self._acting, timeout)

    def wait_deletions(self, job_id: str | None, timeout: float) -> bool:
        """Wait (bounded) until the workers of ended attempts (of one job) are deleted."""

        def finished() -> bool:
            return not any(job_id in (None, job) for job in self._deleting.values())

        with self._changed:
            return self._changed.wait_for(finished, timeout)

    def drain(self, timeout: float) -> None:
        """Wait (bounded) for every thread to end."""
        end = time.monotonic() + timeout
        with self._lock:
            threads = list(self._inflight.values())
        for thread in threads:
            thread.join(max(0.0, end - time.monotonic()))


class StopReasons:
    """Why the running attempts of a job must stop: it was cancelled, or its deadline passed."""

    def __init__(self, clock: Callable[[], float]) -> None:
        """Know of no job yet; ``clock`` tells when deadlines pass."""
        self.clock = clock
        self._reasons: dict[str, FailureReason] = {}
        self._deadlines: dict[str, float] = {}

    def follow(self, job: JobRecord) -> None:
        """Remember the job's deadline (an attempt of it is followed)."""
        if job.deadline is not None:
            self._deadlines[job.id] = job.deadline

    def stop(self, job_id: str, reason: FailureReason) -> None:
        """Stop the job's attempts for ``reason``."""
        self._reasons[job_id] = reason

    def refresh(self, ledger: Ledger, followed: set[str]) -> None:
        """Forget jobs none of whose attempts is ``followed``; stop those cancelled or ended."""
        for job_id in set(self._reasons) | set(self._deadlines):
            if job_id not in followed:
                self._reasons.pop(job_id, None)
                self._deadlines.pop(job_id, None)
        for job_id in followed:
            job = ledger.job(job_id)
            if job is None or job.state == JobState.CANCELLED:
                self._reasons[job_id] = FailureReason.CANCELLED
            elif job.params.get(ENDED_BY):  # a task exited with a fail-job-exit-code
                self._reasons[job_id] = FailureReason.JOB_ENDED

    def reason(self, job_id: str) -> FailureReason | None:
        """Return why the job's running attempts must stop now, or None."""
        reason = self._reasons.get(job_id)
        if reason is not None:
            return reason
        deadline = self._deadlines.get(job_id)
        if deadline is not None and self.clock() >= deadline:
            return FailureReason.DEADLINE
        return None


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

        ``image_exists(backend, image)``: default, the backend's (else LXD's) image check.
        """
        self.state_dir = state_dir
        self.config = config
        self.ledger = ledger or Ledger(state_dir)
        self.owner = owner_id(state_dir)
        self.clock = clock
        self._factory = backend_factory or default_backend_factory(config, state_dir)
        self._backends: dict[str, Backend] = {}
        self._committer = OutcomeCommitter(
            state_dir, self.ledger, clock, backoff_base, backoff_cap
        )
        self._submitter = JobSubmitter(config, self.ledger, self.backend, image_exists)
        self.registry = WorkerRegistry()  # every worker this engine holds (registry.py)
        self.threads = AttemptThreads(self.registry)
        idle = lambda: not self.threads.parked and not self.ledger.active_jobs()  # noqa: E731
        ready = ReadyWorkers(self.backend, self.ledger, config, self.registry, idle)
        self.keeper = WorkerKeeper(self.ledger, self.backend, self.threads, self.registry, ready)
        self._lock = threading.RLock()
        self.stops = StopReasons(clock)
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
        return self.threads.is_inflight((job_id, index))

    def held_workers(self) -> set[str]:
        """Every worker this engine holds now: its attempts', idle warm ones, spares."""
        return self.registry.names()

    def inflight_count(self, job_id: str | None = None) -> int:
        """Return how many attempts this engine is running (of one job, or in all)."""
        return self.threads.count(job_id)

    def step(self) -> bool:
        """One scheduling pass: resume, deadlines, finish jobs, launch. True while work remains."""
        if not self._resumed:
            self.resume()
        now = self.clock()
        self.stops.refresh(self.ledger, self.threads.job_ids())
        self.keeper.release_finished()
        active = self.ledger.active_jobs()
        for job in active:
            if job.deadline is not None and now >= job.deadline:
                self.stops.stop(job.id, FailureReason.DEADLINE)
                self.ledger.fail_pending(
                    job.id, FailureReason.DEADLINE.value, "the job's deadline passed", now
                )
            counts = self.ledger.task_counts(job.id)
            if self._finish_if_done(job, counts):
                continue
            if self.launching and self._resumed and not self.threads.parked:
                self._launch_some(job, now, counts[TaskState.PENDING.value])
        if not active and self.launching and self._resumed:
            self.keeper.keep_ready()  # in a thread, once a minute: workers for the next job
        return bool(active) or self.inflight_count() > 0

    def _finish_if_done(self, job: JobRecord, counts: dict[str, int]) -> bool:
        """True when the job is finished: by a commit, the deadline, or (older ledgers) now."""
        if counts[TaskState.PENDING.value] or counts[TaskState.RUNNING.value]:
            return False
        state = self.ledger.finish_if_done(job.id, self.clock())
        if state is None:
            return False
        if not results.joblog_path(self.state_dir, job.id).exists():
            results.write_joblog(self.state_dir, self.ledger, job.id)
            logger.info("job %s %s", job.id, state.value)
            self.keeper.release(job)
        return True

    def _launch_some(self, job: JobRecord, now: float, pending: int) -> None:
        limit = job_parallelism(self.config, job)
        room = self.config.max_parallel_workers - self.inflight_count()  # on the whole host
        free = min(limit - self.inflight_count(job.id), room)
        for task in self.ledger.runnable_tasks(job.id, now, free) if free > 0 else []:
            started = self.clock()
            placed = self.keeper.place(job, started)
            attempt = self.ledger.start_attempt(
                job.id,
                task.index,
                lambda n, i=task.index, w=placed: self.spec(job, i, None, n, w).worker_name,
                started,
            )
            if attempt is not None:
                pending, room = pending - 1, room - 1
                self.spawn(job, self.spec(job, task.index, task.input, attempt, placed), False)
            elif placed is not None:
                self.keeper.unplace(job, placed[0])
        if self.config.spare_workers:
            spec_of = lambda name: self.spec(job, SPARE_TASK, None, 0, (name, 0.0))  # noqa: E731
            self.keeper.prepare_ahead(job, min(limit, pending), room, spec_of)

    def spec(
        self,
        job: JobRecord,
        index: int,
        task_input: str | None,
        attempt: int,
        placed: tuple[str, float] | None = None,
    ) -> WorkerSpec:
        """Return what the backend needs to run ``attempt`` of task ``index``.

        ``placed``: (worker, start time) of an attempt in a worker made before it.
        """
        cap = self.config.task_results_cap_bytes
        return worker_spec(job, index, task_input, attempt, cap, placed)

    def spawn(self, job: JobRecord, spec: WorkerSpec, adopt: bool) -> None:
        """Follow one attempt in a thread of its own (``adopt``: it was started before)."""
        self.stops.follow(job)
        thread = threading.Thread(
            target=self._run_attempt,
            args=(job, spec, adopt),
            daemon=True,
            name=spec.worker_name,
        )
        self.threads.add((job.id, spec.task_index), spec.worker_name, thread)
        thread.start()

    def _run_attempt(self, job: JobRecord, spec: WorkerSpec, adopt: bool) -> None:
        key = (job.id, spec.task_index)
        try:
            backend = self.backend(job.backend)
            try:
                temp = results.temp_task_dir(self.state_dir, job.id, spec.task_index, spec.attempt)
            except OSError as err:  # e.g. the state dir's disk is full: nothing is started
                followed = (failed(FailureReason.LAUNCH_ERROR, f"{NO_ROOM}: {err}"), None, True)
            else:
                followed = follow_attempt(
                    backend, spec, temp, adopt, self.threads, lambda: self.stops.reason(job.id)
                )
            if followed is None:
                return
            with self.threads.acting() as allowed:
                if not allowed:  # parked: the attempt is left running, to be adopted
                    return
                commit_or_record_lost(self.commit, job, spec, followed)
                kept = spec.reuse and not adopt and self.keeper.keep_warm(job, spec, followed[0])
                self.threads.done(key)
                if not kept:
                    self.keeper.delete_worker(job.backend, spec.worker_name)
                self.keeper.release_if_over(job)
        except Exception:
            logger.exception("could not follow attempt %s", spec.worker_name)
        finally:
            self.threads.done(key)
            self.threads.deleted(spec.worker_name, key)

    def wait_deletions(self, timeout: float = 60.0, job_id: str | None = None) -> bool:
        """Wait (bounded) until the workers of ended attempts (of one job) are deleted."""
        return self.threads.wait_deletions(job_id, timeout)

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
            if job_id is not None and self._over(job_id):  # checked first: launch no more
                job = self.ledger.job(job_id)
                if job is not None:
                    self.keeper.release(job)
                self.wait_deletions(job_id=job_id)
                return True
            active = self.step()
            if on_tick is not None:
                on_tick()
            if job_id is None and not active:
                self.wait_deletions()
                return True
            if until is not None and self.clock() >= until:
                return False
            self.threads.wakeup.wait(poll)  # the next pass starts when a slot frees, or after poll
            self.threads.wakeup.clear()
            if stop.is_set():
                return False

    def _over(self, job_id: str) -> bool:
        """True when the job is finished (or gone) and none of its attempts is followed."""
        job = self.ledger.job(job_id)
        return job is None or (job.state.finished and not self.inflight_count(job_id))

    def drain(self, timeout: float = 30.0) -> None:
        """Wait (bounded) for this engine's attempt threads to end."""
        self.threads.drain(timeout)

    def park(self, timeout: float = 60.0) -> bool:
        """Stop launching and acting, so this process may exit leaving its attempts to adopt.

        Waits (bounded) for threads starting, committing or deleting a worker to be done;
        after that, no thread changes a worker or the ledger any more. True when none was
        left acting.
        """
        self.stop_launching()
        return self.threads.park(timeout)

    def stop_launching(self) -> None:
        """Launch no more attempts; delete the spares (in the background: wait_deletions)."""
        self.launching = False
        self.keeper.drop_spares()
