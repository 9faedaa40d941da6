"""The actions, shared by the charm and the ``container-compute`` command.

``run_action(name, params, config, state_dir)`` returns a dict of JSON-able values whose keys
are lowercase and dashed (Juju action result keys), or raises ``ActionError`` with a message
for the operator; a failed action changes nothing. ``ACTION_PARAMS`` names every action's
typed parameters: actions.yaml and the CLI's flags are generated from it.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import HostConfig
from ..errors import ActionError
from ..jobs import housekeeping
from ..jobs.ledger import Ledger
from ..jobs.params import (
    ActionParams,
    GatherResultsParams,
    JobParams,
    LaunchJobParams,
    ListJobsParams,
    RetryJobParams,
    TaskLogsParams,
    WaitJobParams,
    check_action_wait,
)
from ..jobs.runner import open_engine
from ..jobs.scheduler import EngineLock
from ..jobs.status import job_status
from ..owner import check_owner, owner_id
from . import job_actions, logs
from .images import BuildWorkerImageParams, build_worker_image
from .job_actions import Progress, find_job

__all__ = [
    "ACTION_PARAMS",
    "ActionError",
    "check_action_wait",
    "reap",
    "run_action",
    "try_reap",
]

ACTION_PARAMS: dict[str, tuple[type[ActionParams], str]] = {
    "launch-job": (
        LaunchJobParams,
        "Launch a job: N tasks of one command, each in its own worker. "
        "Returns the job id at once.",
    ),
    "job-status": (JobParams, "State, counts, completed and failed indexes, timings of a job."),
    "wait-job": (
        WaitJobParams,
        "Wait until a job has finished (running it when no agent does); its final status.",
    ),
    "gather-results": (
        GatherResultsParams,
        "Where a finished job's results are on the host, its joblog and a per-task summary.",
    ),
    "task-logs": (
        TaskLogsParams,
        "The last lines of a task's output (stdout or stderr), read live while it runs.",
    ),
    "cancel-job": (JobParams, "Stop a job: its workers are stopped and deleted."),
    "retry-job": (
        RetryJobParams,
        "Run a finished job's failed tasks (or the given ones) again, in the same job.",
    ),
    "list-jobs": (ListJobsParams, "The jobs on this host, newest first."),
    "delete-job": (JobParams, "Delete a finished job's record and results."),
    "build-worker-image": (
        BuildWorkerImageParams,
        "Build a worker image offline and import it into LXD under an alias.",
    ),
}


# The actions that open what they need themselves (an engine, a ledger, the image builder).
_OWN_LEDGER: dict[type[ActionParams], Callable[..., dict[str, Any]]] = {
    BuildWorkerImageParams: lambda params, config, state_dir, _progress: build_worker_image(
        params, config, state_dir
    ),
    LaunchJobParams: job_actions.launch_job,
    WaitJobParams: job_actions.wait_job,
    RetryJobParams: job_actions.retry_job,
    TaskLogsParams: lambda params, config, state_dir, _progress: logs.task_logs(
        params, config, state_dir
    ),
}


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
    runner = _OWN_LEDGER.get(type(params))
    if runner is not None:
        return runner(params, config, state_dir, progress)
    ledger = Ledger(state_dir)
    try:
        if isinstance(params, GatherResultsParams):
            return job_actions.gather_results(ledger, params, state_dir)
        if isinstance(params, ListJobsParams):
            return job_actions.list_jobs(ledger, params)
        if not isinstance(params, JobParams):
            raise ActionError(f"{action} cannot take {type(params).__name__}")
        if action == "job-status":
            return job_status(ledger, find_job(ledger, params.job), config.worker_cpu)
        if action == "cancel-job":
            return job_actions.cancel_job(ledger, params, config, state_dir)
        return job_actions.delete_job(ledger, params, state_dir)
    finally:
        ledger.close()


def reap(config: HostConfig, state_dir: Path, owner: str = "") -> list[str]:
    """Delete this state dir's workers that nothing holds; return their names.

    ``owner``: the owner id of a state dir gone for good (or ``unowned``): delete every
    worker and template it left, whatever this state dir holds. See ``try_reap``.

    Raises:
        ActionError: for an owner that is not an owner id, or is this state dir's own.
    """
    return try_reap(config, state_dir, owner) or []


def try_reap(config: HostConfig, state_dir: Path, owner: str = "") -> list[str] | None:
    """As ``reap``; None when another engine holds the state dir, and nothing was done.

    That engine (the agent, a ``--wait`` client) reaps its own: only it knows the workers
    it is about to use. A reap of another owner's leftovers needs no lock.
    """
    if owner:
        try:
            check_owner(owner)
        except ValueError as err:
            raise ActionError(str(err)) from err
        if owner == owner_id(state_dir):
            raise ActionError(f"owner: {owner} is this state dir's own: reap without --owner")
    lock = EngineLock(state_dir)
    if not owner and not lock.acquire():
        return None
    engine = open_engine(config, state_dir)
    try:
        return housekeeping.reap_owner(engine, owner) if owner else housekeeping.reap(engine)
    finally:
        engine.ledger.close()
        lock.release()
