"""The seven actions, shared by the charm and the ``container-compute`` command.

``run_action(name, params, config, state_dir)`` returns a dict of JSON-able values whose keys
are lowercase and dashed (Juju action result keys), or raises ``ActionError`` with a message
for the operator; a failed action changes nothing.
"""

import datetime
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import results
from .config import HostConfig
from .engine import ActionError, BackendFactory, Engine, EngineLock, default_backend_factory
from .engine import task_summary as _task_summary
from .jobs import JobState, TaskState, format_ranges, parse_ranges
from .ledger import JobRecord, Ledger
from .params import (
    ACTION_PARAMS,
    BuildWorkerImageParams,
    GatherResultsParams,
    JobParams,
    LaunchJobParams,
    ListJobsParams,
)

__all__ = ["ActionError", "reap", "run_action"]

Progress = Callable[[str], None]
MAX_FAILURES_LISTED = 20
MAX_SUMMARY_TASKS = 100
CANCEL_WAIT_SECONDS = 60.0
POLL_SECONDS = 1.0
IN_PROCESS_POLL_SECONDS = 0.5

# Tests replace this to run jobs on a fake backend.
backend_factory_for: Callable[[HostConfig], BackendFactory] = default_backend_factory
engine_options: dict[str, Any] = {}


def _iso(timestamp: float | None) -> str:
    if timestamp is None:
        return ""
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).isoformat(
        timespec="seconds"
    )


def _engine(config: HostConfig, state_dir: Path) -> Engine:
    return Engine(state_dir, config, backend_factory_for(config), **engine_options)


def _job(ledger: Ledger, job_id: str) -> JobRecord:
    job = ledger.job(job_id)
    if job is None:
        raise ActionError(f"job {job_id} does not exist (see list-jobs)")
    return job


def _progress_line(ledger: Ledger, job: JobRecord) -> str:
    counts = ledger.task_counts(job.id)
    done = counts["succeeded"] + counts["failed"]
    return (
        f"job {job.id}: {done}/{job.task_count} done, {counts['running']} running, "
        f"{counts['failed']} failed"
    )


def run_action(
    action: str,
    params: Any,
    config: HostConfig,
    state_dir: Path,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run one action with its typed params; return its results.

    Raises:
        ActionError: with a message for the operator; nothing was changed.
    """
    if action not in ACTION_PARAMS:
        raise ActionError(f"unknown action {action!r}; known: {', '.join(ACTION_PARAMS)}")
    expected = ACTION_PARAMS[action][0]
    if not isinstance(params, expected):
        raise ActionError(f"{action} takes {expected.__name__}, not {type(params).__name__}")
    if isinstance(params, BuildWorkerImageParams):
        return _build_worker_image(params, config)
    if isinstance(params, LaunchJobParams):
        return _launch_job(params, config, state_dir, progress)
    ledger = Ledger(state_dir)
    try:
        if isinstance(params, GatherResultsParams):
            return _gather_results(ledger, params, state_dir)
        if isinstance(params, ListJobsParams):
            return _list_jobs(ledger, params)
        if not isinstance(params, JobParams):
            raise ActionError(f"{action} cannot take {type(params).__name__}")
        if action == "job-status":
            return job_status(ledger, _job(ledger, params.job))
        if action == "cancel-job":
            return _cancel_job(ledger, params, config, state_dir)
        return _delete_job(ledger, params, state_dir)
    finally:
        ledger.close()


def reap(config: HostConfig, state_dir: Path) -> list[str]:
    """Delete workers that belong to no running attempt of a live job; return their names."""
    engine = _engine(config, state_dir)
    try:
        return engine.reap()
    finally:
        engine.ledger.close()


def _launch_job(
    params: LaunchJobParams, config: HostConfig, state_dir: Path, progress: Progress | None
) -> dict[str, Any]:
    from .agent import agent_alive

    engine = _engine(config, state_dir)
    job = engine.submit(params)
    result: dict[str, Any] = {
        "job": job.id,
        "tasks": job.task_count,
        "state": job.state.value,
        "backend": job.backend,
        "image": job.params["image"],
        "results-dir": str(results.job_dir(state_dir, job.id)),
    }
    if not params.wait:
        if not agent_alive(state_dir):
            result["note"] = (
                "no agent is running: the job starts when container-compute-agent runs"
            )
        return result
    until = time.time() + params.wait_timeout_seconds
    report = (lambda: progress(_progress_line(engine.ledger, job))) if progress else None
    lock = EngineLock(state_dir)
    if not agent_alive(state_dir) and lock.acquire():
        done = engine.run(
            job_id=job.id,
            until=until,
            role="in-process",
            on_tick=report,
            poll=IN_PROCESS_POLL_SECONDS,
        )
        if done:
            lock.release()
        else:
            engine.launching = False
            threading.Thread(target=_release_after_drain, args=(engine, lock), daemon=True).start()
    else:
        while time.time() < until:
            current = engine.ledger.job(job.id)
            if current is None or current.state.finished:
                break
            if report:
                report()
            time.sleep(min(POLL_SECONDS, IN_PROCESS_POLL_SECONDS * 2))
    status = job_status(engine.ledger, _job(engine.ledger, job.id))
    result.update(
        {key: status[key] for key in ("state", "counts", "completed-indexes", "failed-indexes")}
    )
    if status.get("failures"):
        result["failures"] = status["failures"]
    result["waited"] = "finished" if JobState(status["state"]).finished else "wait-timeout passed"
    return result


def _release_after_drain(engine: Engine, lock: EngineLock) -> None:
    engine.drain(timeout=float(24 * 3600))
    lock.release()


def job_status(ledger: Ledger, job: JobRecord) -> dict[str, Any]:
    """Return the status of a job as action results (counts and ranges computed in SQL)."""
    counts = ledger.task_counts(job.id)
    done = counts["succeeded"] + counts["failed"]
    failures = {
        str(task.index): _task_summary(task)
        for task in ledger.tasks(job.id, state=TaskState.FAILED, limit=MAX_FAILURES_LISTED)
    }
    end = job.finished or time.time()
    status: dict[str, Any] = {
        "job": job.id,
        "name": job.name,
        "state": job.state.value,
        "tasks": job.task_count,
        "counts": counts,
        "completed-indexes": format_ranges(ledger.task_indexes(job.id, TaskState.SUCCEEDED)),
        "failed-indexes": format_ranges(ledger.task_indexes(job.id, TaskState.FAILED)),
        "progress": f"{100.0 * done / job.task_count:.1f}%",
        "created": _iso(job.created),
        "started": _iso(job.started),
        "finished": _iso(job.finished),
        "elapsed-seconds": round(end - (job.started or job.created), 3),
        "command": job.params.get("command", ""),
    }
    if job.deadline is not None:
        status["deadline"] = _iso(job.deadline)
    if failures:
        status["failures"] = failures
        if counts["failed"] > len(failures):
            status["failures-not-listed"] = counts["failed"] - len(failures)
    return status


def _gather_results(
    ledger: Ledger, params: GatherResultsParams, state_dir: Path
) -> dict[str, Any]:
    job = _job(ledger, params.job)
    if not job.state.finished:
        raise ActionError(
            f"job {job.id} is still {job.state.value}: {_progress_line(ledger, job)}; "
            "see job-status, or cancel-job"
        )
    indexes = None
    if params.indexes:
        try:
            indexes = parse_ranges(params.indexes, limit=job.task_count)
        except ValueError as err:
            raise ActionError(f"indexes: {err}") from err
    joblog = results.write_joblog(state_dir, ledger, job.id)
    tasks = ledger.tasks(job.id, indexes=indexes, limit=MAX_SUMMARY_TASKS)
    selected = len(indexes) if indexes is not None else job.task_count
    summary = {}
    for task in tasks:
        entry = _task_summary(task)
        entry["dir"] = str(results.task_dir(state_dir, job.id, task.index))
        summary[str(task.index)] = entry
    result: dict[str, Any] = {
        "job": job.id,
        "state": job.state.value,
        "results-dir": str(results.job_dir(state_dir, job.id)),
        "joblog": str(joblog),
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


def _cancel_job(
    ledger: Ledger, params: JobParams, config: HostConfig, state_dir: Path
) -> dict[str, Any]:
    job = _job(ledger, params.job)
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
            engine = Engine(
                state_dir, config, backend_factory_for(config), ledger=ledger, **engine_options
            )
            try:
                deleted = engine.cancel_stale(job.id)
            finally:
                lock.release()
            break
        if not ledger.attempts(job.id, state="running") or time.time() >= end:
            break
        time.sleep(0.2)
    counts = ledger.task_counts(job.id)
    return {
        "job": job.id,
        "state": JobState.CANCELLED.value,
        "previous-state": job.state.value,
        "counts": counts,
        "workers-deleted": len(deleted),
    }


def _list_jobs(ledger: Ledger, params: ListJobsParams) -> dict[str, Any]:
    jobs = {}
    for job in ledger.jobs(params.state, params.limit):
        counts = ledger.task_counts(job.id)
        jobs[job.id] = {
            "name": job.name,
            "state": job.state.value,
            "tasks": job.task_count,
            "succeeded": counts["succeeded"],
            "failed": counts["failed"],
            "created": _iso(job.created),
        }
    return {"count": len(jobs), "jobs": jobs}


def _delete_job(ledger: Ledger, params: JobParams, state_dir: Path) -> dict[str, Any]:
    job = _job(ledger, params.job)
    if not job.state.finished:
        raise ActionError(f"job {job.id} is still {job.state.value}: cancel it first (cancel-job)")
    removed_results = results.delete_job_results(state_dir, job.id)
    ledger.delete_job(job.id)
    return {"job": job.id, "deleted": True, "results-deleted": removed_results}


def _build_worker_image(params: BuildWorkerImageParams, config: HostConfig) -> dict[str, Any]:
    from . import images, lxdclient

    alias = params.alias or config.default_image
    try:
        client = lxdclient.connect(project=config.lxd_project)
        if params.source == "busybox":
            report = images.build_busybox_image(client, alias)
        else:
            build = getattr(images, "build_debootstrap_image", None)
            if build is None:
                raise ActionError("source: debootstrap images are not available in this version")
            report = build(
                client,
                alias,
                suite=params.suite,
                packages=tuple(params.package_list),
                mirror=params.mirror,
            )
    except ActionError:
        raise
    except Exception as err:
        raise ActionError(
            f"build-worker-image ({params.source}) failed in LXD project "
            f"{config.lxd_project!r}: {err}"
        ) from err
    return report.to_dict()
