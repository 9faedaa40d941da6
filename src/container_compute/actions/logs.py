"""A task's output for the ``task-logs`` action and ``container-compute logs``.

Live while the task runs on this host's LXD (``backends/lxd/live.py``), from its results once
it ended (``jobs/logs.py``). The action returns a bounded tail; the command streams, and with
``--follow`` waits for the task to start and ends with it.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..backends.lxd.api import LXDApi
from ..backends.lxd.live import LiveOutput
from ..config import HostConfig
from ..constants import NOVA_LIVE_BYTES
from ..errors import ActionError
from ..identity import IdentityError
from ..jobs.ledger import JobRecord, Ledger
from ..jobs.logs import LiveRead, Position, TaskLogs
from ..jobs.model import TaskState
from ..jobs.params import TaskLogsParams
from ..lxdclient import endpoint_of
from .job_actions import find_job

ACTION_OUTPUT_BYTES = 64 * 1024  # an action's result is small: the end of the tail only


def live_reader(config: HostConfig, job: JobRecord, state_dir: Path) -> LiveRead | None:
    """How the job's running tasks are read live: LXD workers, or Nova servers' consoles."""
    if job.backend == "nova":
        from ..backends.nova import NovaLiveOutput, open_nova_api  # novaclient: only for Nova

        try:
            return NovaLiveOutput(open_nova_api(state_dir)).read
        except IdentityError:
            return None  # no credentials any more: the results still show once the task ends
    endpoint = endpoint_of(config, state_dir)
    api = LXDApi(config.lxd_project, retry_seconds=5.0, endpoint=endpoint)
    return LiveOutput(config.lxd_project, api, host_access=endpoint is None).read


def _checked(ledger: Ledger, job_id: str, index: int) -> JobRecord:
    job = find_job(ledger, job_id)
    if not 0 <= index < job.task_count:
        raise ActionError(
            f"task: {index} is not a task of job {job.id} (its tasks are 0-{job.task_count - 1})"
        )
    return job


def not_live_note(job: JobRecord) -> str:
    """What cannot be shown of a running task of ``job`` (empty when all can)."""
    if job.backend == "lxd":
        return ""
    return (
        f"a Nova server mirrors only the first {NOVA_LIVE_BYTES // 1024} KiB of each stream "
        "to its console, whole lines, while its task runs: the rest shows once the task ends"
    )


def task_logs(params: TaskLogsParams, config: HostConfig, state_dir: Path) -> dict[str, Any]:
    """The last lines of a task's output so far, and the task's state (bounded)."""
    ledger = Ledger(state_dir)
    try:
        job = _checked(ledger, params.job, params.task)
        logs = TaskLogs(ledger, state_dir, live_reader(config, job, state_dir))
        stream = "stderr" if params.stderr else "stdout"
        at = Position()
        text = logs.tail(job.id, params.task, stream, params.tail, at)
        task = ledger.task(job.id, params.task)
        attempt = ledger.last_attempt(job.id, params.task)
    finally:
        ledger.close()
    result: dict[str, Any] = {
        "job": job.id,
        "task": params.task,
        "state": task.state.value if task else "",
        "attempt": attempt.attempt if attempt else 0,
        "stream": stream,
        "output": text[-ACTION_OUTPUT_BYTES:].decode(errors="replace"),
        "truncated": len(text) > ACTION_OUTPUT_BYTES,
    }
    if task is not None and task.exit_code is not None:
        result["exit-code"] = task.exit_code
    note = not_live_note(job)
    if note and task is not None and task.state == TaskState.RUNNING:
        result["note"] = note
    return result


def follow_logs(
    config: HostConfig,
    state_dir: Path,
    job_id: str,
    index: int,
    stream: str,
    write: Callable[[bytes], None],
    say: Callable[[str], None],
    *,
    follow: bool,
    tail: int,
) -> TaskState | None:
    """Write a task's output (``follow``: until it ends); its final state when it ended."""
    ledger = Ledger(state_dir)
    try:
        job = _checked(ledger, job_id, index)
        note = not_live_note(job)
        if note:
            say(note)
        logs = TaskLogs(ledger, state_dir, live_reader(config, job, state_dir))
        task = logs.follow(
            job.id,
            index,
            stream,
            write,
            follow=follow,
            tail=tail,
            new_attempt=lambda n: say(f"-- attempt {n} of task {index} --"),
        )
    finally:
        ledger.close()
    if not follow or task is None or task.state not in (TaskState.SUCCEEDED, TaskState.FAILED):
        return None
    code = "" if task.exit_code is None else f", exit code {task.exit_code}"
    reason = f" ({task.reason})" if task.reason else ""
    say(f"task {index} of job {job_id}: {task.state.value}{reason}{code}")
    return task.state
