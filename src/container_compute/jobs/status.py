"""A job's status as the actions and the CLI report it: counts, index ranges, failures.

Counts and index lists are computed in SQL, so the status of a 10,000-task job stays cheap.
"""

import datetime
import os
import time
from typing import Any

from ..constants import ISOLATION_NOTE
from .ledger import ENDED_BY, JobRecord, Ledger, TaskRecord
from .model import CONTAINER, SANDBOX, TaskState, format_ranges, reuses_workers

MAX_FAILURES_LISTED = 20


def iso_time(timestamp: float | None) -> str:
    """Return a timestamp as ISO 8601 UTC; '' for None."""
    if timestamp is None:
        return ""
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).isoformat(
        timespec="seconds"
    )


def progress_line(ledger: Ledger, job: JobRecord) -> str:
    """Return one line of progress: done, running and failed tasks."""
    counts = ledger.task_counts(job.id)
    done = counts["succeeded"] + counts["failed"]
    return (
        f"job {job.id}: {done}/{job.task_count} done, {counts['running']} running, "
        f"{counts['failed']} failed"
    )


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


def cpu_count(limit: str) -> int | None:
    """The CPUs an LXD ``limits.cpu`` gives: a count (``2``) or a set (``0-3,6``); None: none."""
    limit = limit.strip()
    if not limit:
        return None
    if limit.isdigit():
        return int(limit) or None
    cpus: set[int] = set()
    for part in limit.split(","):
        first, _, last = part.strip().partition("-")
        if not first.isdigit() or (last and not last.isdigit()):
            return None
        cpus.update(range(int(first), int(last or first) + 1))
    return len(cpus) or None


def usage_summary(totals: dict[str, Any], cpu_limit: str) -> dict[str, Any]:
    """A job's usage totals and CPU efficiency, as seff: CPU seconds / (wall x CPUs).

    The CPUs are the job's (or the host's default) ``limits.cpu``; a worker without one may
    use every CPU of its host (this host's count is taken).
    """
    summary: dict[str, Any] = {
        key: round(value, 3) if isinstance(value, float) else value
        for key, value in totals.items()
        if key != "cpu-wall-seconds"
    }
    cpus = cpu_count(cpu_limit)
    summary["cpus-per-task"] = cpus or os.cpu_count() or 1
    if cpus is None:
        summary["cpus-per-task-note"] = "no CPU limit: this host's CPU count"
    user, system = totals.get("cpu-user-seconds"), totals.get("cpu-system-seconds")
    wall = totals.get("cpu-wall-seconds")
    if user is not None and system is not None and wall:
        efficiency = (user + system) / (wall * summary["cpus-per-task"])
        summary["cpu-efficiency"] = f"{100.0 * efficiency:.1f}%"
    return summary


def job_status(ledger: Ledger, job: JobRecord, default_cpu: str = "") -> dict[str, Any]:
    """Return the status of a job as action results (counts and ranges computed in SQL).

    ``default_cpu``: the host's ``worker-cpu``, the CPU limit of a job that gives none.
    """
    counts = ledger.task_counts(job.id)
    done = counts["succeeded"] + counts["failed"]
    failures = {
        str(task.index): task_summary(task)
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
        "created": iso_time(job.created),
        "started": iso_time(job.started),
        "finished": iso_time(job.finished),
        "elapsed-seconds": round(end - (job.started or job.created), 3),
        "command": job.params.get("command", ""),
        "isolation": SANDBOX if reuses_workers(job.params) else CONTAINER,
    }
    if job.params.get(ENDED_BY):  # a task exited with one of fail-job-exit-codes
        status["ended-by"] = job.params[ENDED_BY]
    if job.params.get(ISOLATION_NOTE):  # why the job runs without sandboxes, or in fewer
        status["isolation-note"] = job.params[ISOLATION_NOTE]
    hosts = ledger.host_counts(job.id)
    if hosts:  # on an LXD cluster: which member ran how many of the finished tasks
        status["hosts"] = hosts
    totals = ledger.usage_totals(job.id)
    if totals["attempts"]:
        status["usage"] = usage_summary(totals, str(job.params.get("cpu") or default_cpu))
    if job.deadline is not None:
        status["deadline"] = iso_time(job.deadline)
    if failures:
        status["failures"] = failures
        if counts["failed"] > len(failures):
            status["failures-not-listed"] = counts["failed"] - len(failures)
    return status
