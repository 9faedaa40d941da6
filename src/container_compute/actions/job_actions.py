"""The job actions: launch, status, gather, cancel, retry, list and delete jobs.

Each takes its typed params and returns JSON-able results with dashed keys, or raises
``ActionError``; a failed action changes nothing.
"""

import atexit
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import HostConfig
from ..errors import ActionError
from ..jobs import housekeeping, results
from ..jobs.ledger import JobRecord, Ledger
from ..jobs.model import JobState, TaskState, format_ranges, parse_ranges
from ..jobs.params import (
    GatherResultsParams,
    JobParams,
    LaunchJobParams,
    ListJobsParams,
    RetryJobParams,
    WaitJobParams,
)
from ..jobs.runner import agent_alive, open_engine
from ..jobs.scheduler import Engine, EngineLock
from ..jobs.status import iso_time, job_status, progress_line, task_summary

Progress = Callable[[str], None]
MAX_SUMMARY_TASKS = 100
CANCEL_WAIT_SECONDS = 60.0
POLL_SECONDS = 1.0
HAND_OVER_DELETIONS_SECONDS = 60.0
IN_PROCESS_POLL_SECONDS = 0.5

logger = logging.getLogger(__name__)


def find_job(ledger: Ledger, job_id: str) -> JobRecord:
    """Return the job, or raise ActionError naming it."""
    job = ledger.job(job_id)
    if job is None:
        raise ActionError(f"job {job_id} does not exist (see list-jobs)")
    return job


def finished_job(
    ledger: Ledger, job_id: str, indexes: str, hint: str
) -> tuple[JobRecord, list[int] | None]:
    """A finished job and the task indexes ``indexes`` names (None: all), or ActionError."""
    job = find_job(ledger, job_id)
    if not job.state.finished:
        raise ActionError(
            f"job {job.id} is still {job.state.value}: {progress_line(ledger, job)}; {hint}"
        )
    if not indexes:
        return job, None
    try:
        return job, parse_ranges(indexes, task_count=job.task_count)
    except ValueError as err:
        raise ActionError(f"indexes: {err}") from err


def launch_job(
    params: LaunchJobParams, config: HostConfig, state_dir: Path, progress: Progress | None
) -> dict[str, Any]:
    """Record a job; with ``wait``, follow it until it ends, running the jobs when no one does.

    Any number of clients may wait at once: whichever holds the state directory's engine
    lock runs every active job, and the others take the lock over when it is free.
    """
    engine = open_engine(config, state_dir)
    job = engine.submit(params)
    result: dict[str, Any] = {
        "job": job.id,
        "tasks": job.task_count,
        "state": job.state.value,
        "backend": job.backend,
        "image": job.params["image"],
        "results-dir": str(results.job_dir(state_dir, job.id)),
    }
    if job.params.get("disk_note"):
        result["disk-note"] = job.params["disk_note"]  # a disk limit the pool cannot enforce
    if job.params.get("notes"):
        result["notes"] = list(job.params["notes"])  # e.g. flavor extra specs (Nova)
    return _then_wait(engine, job, params, result, progress, "the job starts")


def _then_wait(
    engine: Engine,
    job: JobRecord,
    params: LaunchJobParams | RetryJobParams,
    result: dict[str, Any],
    progress: Progress | None,
    what: str,
) -> dict[str, Any]:
    """With ``wait``, follow the job and add its final status; else say when ``what``."""
    if not params.wait:
        if not agent_alive(engine.state_dir):
            result["note"] = f"no agent is running: {what} when container-compute-agent runs"
        return result
    result.update(_wait_and_report(engine, job, params.wait_timeout_seconds, progress))
    return result


def wait_job(
    params: WaitJobParams, config: HostConfig, state_dir: Path, progress: Progress | None
) -> dict[str, Any]:
    """Follow a recorded job until it ends or the wait times out; return its final status."""
    engine = open_engine(config, state_dir)
    try:
        job = find_job(engine.ledger, params.job)
        result: dict[str, Any] = {"job": job.id, "tasks": job.task_count}
        result.update(_wait_and_report(engine, job, params.wait_timeout_seconds, progress))
        result["results-dir"] = str(results.job_dir(state_dir, job.id))
        return result
    finally:
        if not engine.inflight_count():
            engine.ledger.close()


def _wait_and_report(
    engine: Engine, job: JobRecord, wait_seconds: int, progress: Progress | None
) -> dict[str, Any]:
    """Wait for the job (see wait_for_job); return its state, counts, indexes, failures."""
    report = (lambda: progress(progress_line(engine.ledger, job))) if progress else None
    wait_for_job(engine, job.id, time.time() + wait_seconds, report)
    status = job_status(engine.ledger, find_job(engine.ledger, job.id))
    result = {
        key: status[key] for key in ("state", "counts", "completed-indexes", "failed-indexes")
    }
    if status.get("failures"):
        result["failures"] = status["failures"]
    result["waited"] = "finished" if JobState(status["state"]).finished else "wait-timeout passed"
    return result


def retry_job(
    params: RetryJobParams, config: HostConfig, state_dir: Path, progress: Progress | None
) -> dict[str, Any]:
    """Run a finished job's failed tasks (or the given ones) again, in the same job.

    The succeeded tasks keep their results; each task rerun keeps its earlier attempts in
    the ledger; the job's joblog and usage are written again when it ends.
    """
    engine = open_engine(config, state_dir)
    job, indexes = finished_job(
        engine.ledger,
        params.job,
        params.indexes,
        "retry-job reruns the tasks of a finished job (wait-job, or cancel-job first)",
    )
    nothing = f"job {job.id} has no failed task to retry (give indexes to rerun some)"
    if indexes is None and not engine.ledger.task_indexes(job.id, TaskState.FAILED):
        raise ActionError(nothing)
    env = _env_again(job, params.env)
    retried = engine.ledger.retry_tasks(job.id, indexes, env, time.time())
    if not retried:
        current = find_job(engine.ledger, job.id)
        if not current.state.finished:
            raise ActionError(f"job {job.id} was retried meanwhile: it is {current.state.value}")
        raise ActionError(nothing)
    results.remove_joblog(state_dir, job.id)
    job = find_job(engine.ledger, job.id)
    result: dict[str, Any] = {
        "job": job.id,
        "tasks": job.task_count,
        "retried-indexes": format_ranges(retried),
        "state": job.state.value,
        "results-dir": str(results.job_dir(state_dir, job.id)),
    }
    return _then_wait(engine, job, params, result, progress, "the tasks start")


def _env_again(job: JobRecord, given: list[str]) -> list[str] | None:
    """The env a retried job runs with: the one given, with the keys the job had.

    A finished job's env values are redacted: a job that had env needs them again.
    """
    keys = [entry.partition("=")[0] for entry in job.params.get("env") or []]
    given_keys = [entry.partition("=")[0] for entry in given]
    if not keys and not given:
        return None
    if sorted(given_keys) != sorted(keys):
        wanted = ", ".join(keys) or "no env"
        raise ActionError(
            f"env: job {job.id} ran with {wanted}; its values are not kept once a job ends, "
            f"so give exactly those keys again (given: {', '.join(given_keys) or 'none'})"
        )
    return list(given)


def wait_for_job(
    engine: Engine, job_id: str, until: float, report: Callable[[], None] | None = None
) -> None:
    """Follow a job until it finished or ``until``; drive the jobs whenever no engine does.

    While another engine (the agent, another client) holds the state directory's lock, this
    polls the ledger and tries to take the lock; once it has it, its engine adopts what the
    previous one left running and runs every active job until this one is finished.
    """
    lock = EngineLock(engine.state_dir)
    while time.time() < until:
        current = engine.ledger.job(job_id)
        if current is None or current.state.finished:
            return
        if lock.acquire():
            done = engine.run(
                job_id=job_id,
                until=until,
                role="in-process",
                on_tick=report,
                poll=IN_PROCESS_POLL_SECONDS,
            )
            if not done:
                logger.info("job %s: wait-timeout passed; leaving it to the next engine", job_id)
            hand_over(engine, lock)
            return
        if report:
            report()
        time.sleep(min(POLL_SECONDS, IN_PROCESS_POLL_SECONDS * 2))


def hand_over(engine: Engine, lock: EngineLock) -> None:
    """Stop launching; release the lock once no attempt of this engine is followed any more.

    Attempts of other jobs this engine still follows are drained in the background, then
    the lock is released, so no two engines ever follow one attempt. Should the process
    exit first, the engine is parked at exit (no thread starts, commits or deletes a worker
    from then on) and the lock goes with the process: the next engine adopts the attempts.
    """
    engine.stop_launching()
    if not engine.inflight_count():
        # Attempts that ended (a slot frees before its worker is deleted) may still be
        # deleting their workers: the process must not exit under them.
        engine.wait_deletions(timeout=HAND_OVER_DELETIONS_SECONDS)
        reap_before_release(engine)
        lock.release()
        return
    atexit.register(engine.park)

    def release_after_drain() -> None:
        engine.drain(timeout=float(24 * 3600))
        reap_before_release(engine)
        lock.release()
        atexit.unregister(engine.park)

    threading.Thread(target=release_after_drain, daemon=True, name="hand-over").start()


def reap_before_release(engine: Engine) -> None:
    """Delete what this state dir left (a spare made as its job ended) while the lock is held.

    Whichever client ran a job, its workers go with it: no agent may be there to reap later.
    Then the ready workers for the next job are made (``jobs/ready.py``), while no job is
    active: no agent may be there to make them either.
    """
    try:
        for name in housekeeping.reap(engine):
            logger.info("reaped worker %s", name)
    except Exception:  # the next engine's reaper tries again
        logger.exception("could not reap before handing over")
    engine.keeper.keep_ready(force=True, wait=True)


def gather_results(ledger: Ledger, params: GatherResultsParams, state_dir: Path) -> dict[str, Any]:
    """Return where a finished job's results are, a per-task summary and optional inline output."""
    job, indexes = finished_job(
        ledger, params.job, params.indexes, "see job-status, or cancel-job"
    )
    joblog = results.write_joblog(state_dir, ledger, job.id)
    tasks = ledger.tasks(job.id, indexes=indexes, limit=MAX_SUMMARY_TASKS)
    selected = len(indexes) if indexes is not None else job.task_count
    finals = {attempt.index: attempt.outcome for attempt in ledger.final_attempts(job.id)}
    summary = {}
    for task in tasks:
        entry = task_summary(task)
        entry["dir"] = str(results.task_dir(state_dir, job.id, task.index))
        entry.update(results.usage_of(finals.get(task.index)))
        summary[str(task.index)] = entry
    result: dict[str, Any] = {
        "job": job.id,
        "state": job.state.value,
        "results-dir": str(results.job_dir(state_dir, job.id)),
        "joblog": str(joblog),
        "usage": str(joblog.with_name(results.USAGE_NAME)),
        "tasks": job.task_count,
        "summary": summary,
    }
    if selected > len(summary):
        result["summary-not-listed"] = selected - len(summary)
    if params.inline:
        inline: dict[str, Any] = {}
        budget = results.INLINE_TOTAL_BYTES
        cut = False
        for task in tasks:
            if budget <= 0:
                cut = True
                break
            entry, used = results.read_inline(
                results.task_dir(state_dir, job.id, task.index), budget
            )
            budget -= used
            cut = cut or entry["truncated"]
            inline[str(task.index)] = entry
        result["inline"] = inline
        result["inline-truncated"] = cut or len(tasks) < selected
    return result


def cancel_job(
    ledger: Ledger, params: JobParams, config: HostConfig, state_dir: Path
) -> dict[str, Any]:
    """Cancel an unfinished job: pending tasks never start, running workers are deleted."""
    job = find_job(ledger, params.job)
    if job.state.finished:
        raise ActionError(
            f"job {job.id} has already finished ({job.state.value}); nothing to cancel"
        )
    if not ledger.set_job_state(job.id, JobState.CANCELLED):
        raise ActionError(f"job {job.id} finished meanwhile; nothing to cancel")
    deleted: list[str] = []
    lock = EngineLock(state_dir)
    end = time.time() + CANCEL_WAIT_SECONDS
    while True:
        if lock.acquire():
            engine = open_engine(config, state_dir, ledger=ledger)
            try:
                deleted = housekeeping.cancel_stale(engine, job.id)
            finally:
                lock.release()
            break
        if not ledger.attempts(job.id, state="running") or time.time() >= end:
            break
        time.sleep(0.2)
    results.write_joblog(state_dir, ledger, job.id)
    counts = ledger.task_counts(job.id)
    return {
        "job": job.id,
        "state": JobState.CANCELLED.value,
        "previous-state": job.state.value,
        "counts": counts,
        "workers-deleted": len(deleted),
    }


def list_jobs(ledger: Ledger, params: ListJobsParams) -> dict[str, Any]:
    """Return the newest jobs with their state and counts."""
    jobs = {}
    for job in ledger.jobs(params.state, params.limit):
        counts = ledger.task_counts(job.id)
        jobs[job.id] = {
            "name": job.name,
            "state": job.state.value,
            "tasks": job.task_count,
            "succeeded": counts["succeeded"],
            "failed": counts["failed"],
            "created": iso_time(job.created),
        }
    return {"count": len(jobs), "jobs": jobs}


def delete_job(ledger: Ledger, params: JobParams, state_dir: Path) -> dict[str, Any]:
    """Delete a finished job's record and results."""
    job = find_job(ledger, params.job)
    if not job.state.finished:
        raise ActionError(f"job {job.id} is still {job.state.value}: cancel it first (cancel-job)")
    removed_results = results.delete_job_results(state_dir, job.id)
    ledger.delete_job(job.id)
    return {"job": job.id, "deleted": True, "results-deleted": removed_results}
