"""container-compute itself: jobs of either isolation and a bare API exec round trip.

launch-job's ``isolation``: ``sandbox`` (the default: warm workers, a fresh sandbox per task)
or ``container`` (a fresh worker per task, the default before). The bench passes it
explicitly; on a build without it, the sandbox jobs ask for ``reuse_workers`` and the
container jobs take that build's default (a fresh worker per task).

Every job is ``launch-job`` with ``wait=true`` through the library (``actions.run_action``),
as a user would run it: the engine runs in this process, launches, gathers every result into
the results tree and records it. A job's time ends when its last result is recorded (the
job's ``finished`` time in the ledger, from the moment launch-job was called): what a user
waits for before the results are there, as with the agent. What follows is printed apart
("returned after"): launch-job returns once the job's workers are deleted and, before the
in-process engine hands over, the ready workers of the next job are made (``ready-workers``;
the agent does both in the background). The bench then waits, untimed, until the job's
workers are gone, so that one measurement's clean-up never overlaps the next one.

Sandbox jobs of one driver and image share one state dir, as a user's jobs do: each finds
the ready workers the previous one left (the host's default ``ready-workers``).
"""

import dataclasses
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from container_compute import actions
from container_compute.backends import FailureReason
from container_compute.backends.lxd import LXDBackend
from container_compute.backends.lxd.api import LXDApi
from container_compute.config import HostConfig
from container_compute.constants import WORKER_PROFILE
from container_compute.jobs.ledger import Ledger
from container_compute.jobs.model import TaskState
from container_compute.jobs.params import LaunchJobParams
from container_compute.lxdclient import connect

from .common import (
    TASK_COMMAND,
    BenchError,
    Measured,
    check_square,
    measure,
)
from .lxdsetup import LXD_LOG_DIR, first_error
from .report import TaskAttempts, launch_failures

ISOLATION_FIELD = "isolation"
WARM_FIELD = "reuse_workers"  # before ``isolation``: reuse_workers=true asked for sandboxes
ISOLATION_NOTE_KEY = "isolation_note"  # in a job's params: why it ran without sandboxes
SANDBOX = "sandbox"
CONTAINER = "container"
CLEAN_WAIT_SECONDS = 600.0


def _fields() -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(LaunchJobParams)}


def isolation_supported() -> bool:
    """Whether this build's launch-job has the ``isolation`` parameter."""
    return ISOLATION_FIELD in _fields()


def sandbox_supported() -> bool:
    """Whether this build can run a job's tasks in sandboxes (``isolation`` or the old flag)."""
    return isolation_supported() or WARM_FIELD in _fields()


def default_isolation() -> str:
    """The isolation launch-job gives when none is asked for (older builds: container)."""
    field = _fields().get(ISOLATION_FIELD)
    return CONTAINER if field is None else str(field.default)


def isolation_args(isolation: str | None) -> dict[str, Any]:
    """The launch-job parameters that ask for ``isolation`` (None: the build's default).

    Raises:
        BenchError: when this build has no sandbox mode and one is asked for.
    """
    if isolation is None:
        return {}
    if isolation_supported():
        return {ISOLATION_FIELD: isolation}
    if isolation == CONTAINER:
        return {}  # a build without isolation gives a fresh worker per task by default
    if WARM_FIELD in _fields():
        return {WARM_FIELD: True}
    raise BenchError("this build has no sandbox mode (neither isolation nor reuse_workers)")


def describe_isolation() -> str:
    """How the bench asks this build for each isolation (printed at the start)."""
    if isolation_supported():
        return (
            f"launch-job isolation: default {default_isolation()}; the bench passes "
            "isolation=sandbox and isolation=container explicitly"
        )
    if sandbox_supported():
        return (
            "launch-job has no isolation parameter (an older build): the sandbox jobs ask for "
            "reuse_workers=true, the container jobs take the build's default"
        )
    return "launch-job has no sandbox mode (an older build): only container jobs run"


@dataclass(frozen=True)
class JobRun:
    """One job: its time until launch-job returned, CPU, and attempts lost to launch errors."""

    measured: Measured  # until the last result was recorded
    clean_seconds: float
    returned_seconds: float  # until launch-job returned
    launch_failures: int
    failure_details: tuple[str, ...] = ()
    isolation_note: str = ""  # why a job that asked for sandboxes ran (partly) without them


def start_error(project: str, worker: str) -> str | None:
    """The first error LXD's lxc.log recorded for a worker (kept after its deletion), if any."""
    try:
        log = (LXD_LOG_DIR / f"{project}_{worker}" / "lxc.log").read_text(errors="replace")
    except OSError:
        return None
    return first_error(log)


def count_launch_failures(state: Path, job: str, project: str) -> tuple[int, tuple[str, ...]]:
    """Attempts of the job lost to the host (see report.launch_failures), and why.

    Why: the first error of the worker's lxc.log (e.g. the newuidmap race), else the detail
    the engine recorded.
    """
    ledger = Ledger(state)
    try:
        errors: dict[int, int] = {}
        details: list[str] = []
        for attempt in ledger.attempts(job):
            outcome = attempt.outcome or {}
            if outcome.get("reason") == FailureReason.LAUNCH_ERROR.value:
                errors[attempt.index] = errors.get(attempt.index, 0) + 1
                why = start_error(project, attempt.worker) or str(outcome.get("detail"))
                details.append(f"task {attempt.index}: {why[:200]}")
        count = launch_failures(
            TaskAttempts(
                task.attempts,
                task.charged,
                task.state == TaskState.SUCCEEDED,
                errors.get(task.index, 0),
            )
            for task in ledger.tasks(job)
        )
        return count, tuple(details[:5])
    finally:
        ledger.close()


def isolation_note(state: Path, job: str) -> str:
    """Why the job ran without sandboxes or in fewer (job-status's isolation-note), or ''."""
    ledger = Ledger(state)
    try:
        record = ledger.job(job)
        return str((record.params if record else {}).get(ISOLATION_NOTE_KEY) or "")
    finally:
        ledger.close()


def wait_workers_gone(config: HostConfig, job: str, within: float = CLEAN_WAIT_SECONDS) -> float:
    """Wait until no worker of ``job`` is left; return the seconds waited.

    Raises:
        BenchError: when some are still there after ``within`` seconds.
    """
    backend = LXDBackend(config)
    begin = time.monotonic()
    while True:
        left = [w.name for w in backend.list_workers() if w.job_id == job]
        if not left:
            return time.monotonic() - begin
        if time.monotonic() - begin > within:
            raise BenchError(f"job {job}: workers left behind: {left[:5]}")
        time.sleep(0.2)


def run_job(
    config: HostConfig,
    state: Path,
    params: LaunchJobParams,
    check_results: bool = True,
) -> JobRun:
    """Run one job with wait=true; check every task's result; wait for its workers to go.

    Raises:
        BenchError: when the job did not succeed or a result is wrong.
    """
    state.mkdir(parents=True, exist_ok=True)
    config = dataclasses.replace(
        config, max_parallel_workers=max(params.parallelism, config.max_parallel_workers)
    )
    result: dict[str, Any] = {}
    called = time.time()
    returned = measure(
        lambda: result.update(actions.run_action("launch-job", params, config, state))
    )
    job = str(result.get("job"))
    finished = job_finished(state, job)
    recorded = returned.seconds if finished is None else min(returned.seconds, finished - called)
    measured = dataclasses.replace(returned, seconds=recorded)
    if result.get("state") != "succeeded":
        failures = result.get("failures") or result.get("counts")
        raise BenchError(f"job {job} ended {result.get('state')}: {failures}")
    failures, details = count_launch_failures(state, job, config.lxd_project)
    if check_results:
        job_dir = Path(result["results-dir"])
        for index in range(params.task_count):
            check_square(job_dir / str(index) / "files", index, f"job {job}")
    note = isolation_note(state, job)
    clean = wait_workers_gone(config, job)
    return JobRun(measured, clean, returned.seconds, failures, details, note)


def job_finished(state: Path, job: str) -> float | None:
    """When the ledger recorded the job's end (its last result), or None."""
    ledger = Ledger(state)
    try:
        record = ledger.job(job)
        return record.finished if record else None
    finally:
        ledger.close()


def job_params(
    image: str, tasks: int, parallel: int, isolation: str | None = None, sleep: int = 0
) -> LaunchJobParams:
    """The trivial job of the bench, with ``isolation`` asked for (None: the build's default).

    ``sleep``: each task first sleeps that many seconds (a task that leaves the CPUs idle).

    Raises:
        BenchError: when this build has no sandbox mode and ``isolation`` is sandbox.
    """
    extra = isolation_args(isolation)
    return LaunchJobParams(
        command=f"sleep {sleep}; {TASK_COMMAND}" if sleep else TASK_COMMAND,
        tasks=tasks,
        parallelism=parallel,
        image=image,
        wait=True,
        wait_timeout="2h",
        **extra,
    )


def bare_exec(project: str, image: str, calls: int, parallel: int) -> float:
    """Seconds per call of a bare REST exec (record-output) in a started container.

    ``calls`` execs of the task command (no websocket, output recorded), ``parallel`` at
    a time, each one POST exec + wait for its operation: the floor of any warm mode.
    """
    client = connect(project=project)
    api = LXDApi(project, client=client)
    name = f"bare-{secrets.token_hex(3)}"
    client.instances.create(
        {"name": name, "source": {"type": "image", "alias": image}, "profiles": [WORKER_PROFILE]},
        wait=True,
    )
    try:
        instance = client.instances.get(name)
        instance.start(wait=True)

        def one(index: int) -> None:
            response = client.api.instances[name].exec.post(
                json={
                    "command": ["/bin/sh", "-c", TASK_COMMAND],
                    "environment": {"TASK_INDEX": str(index), "RESULTS_DIR": "/results"},
                    "wait-for-websocket": False,
                    "interactive": False,
                    "record-output": True,
                }
            )
            metadata = api.wait_operation(response, timeout=60)
            if metadata.get("return") != 0:
                raise BenchError(f"bare exec {index} in {name}: {metadata}")

        one(-1)  # the first exec of a container is slower: not counted
        begin = time.perf_counter()
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            for future in [pool.submit(one, index) for index in range(calls)]:
                future.result()
        return (time.perf_counter() - begin) / calls
    finally:
        instance = client.instances.get(name)
        if instance.status != "Stopped":
            instance.stop(force=True, wait=True)
        instance.delete(wait=True)
