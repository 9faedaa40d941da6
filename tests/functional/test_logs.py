"""A task's output, live while it runs, on the REAL LXD daemon (logs and task-logs)."""

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from container_compute import actions
from container_compute.actions.logs import follow_logs
from container_compute.backends.lxd.api import LXDApi
from container_compute.backends.lxd.live import LiveOutput
from container_compute.config import HostConfig
from container_compute.jobs.ledger import Ledger
from container_compute.jobs.model import TaskState
from container_compute.jobs.params import LaunchJobParams, TaskLogsParams

pytestmark = [pytest.mark.functional, pytest.mark.usefixtures("fast_engine")]

PRINT_SLEEP_PRINT = "echo first; echo oops >&2; sleep 8; echo second"


@pytest.fixture
def background(
    configured_host: HostConfig, state_dir: Path
) -> Iterator[Callable[[str], dict[str, Any]]]:
    """Launch a job with wait=true in a thread (it runs the engine); its result lands later.

    Every such job has ended (its workers deleted) before the host is torn down, also when
    the test failed.
    """
    threads: list[threading.Thread] = []

    def start(isolation: str) -> dict[str, Any]:
        done: dict[str, Any] = {}
        params = LaunchJobParams(
            command=PRINT_SLEEP_PRINT, tasks=1, isolation=isolation, wait=True
        )
        thread = threading.Thread(
            target=lambda: done.update(
                actions.run_action("launch-job", params, configured_host, state_dir)
            ),
            daemon=True,
        )
        thread.start()
        threads.append(thread)
        return done

    yield start
    for thread in threads:
        thread.join(120)


def finished(done: dict[str, Any]) -> dict[str, Any]:
    """The launch's result once its job ended (within a minute)."""
    deadline = time.monotonic() + 60
    while not done and time.monotonic() < deadline:
        time.sleep(0.1)
    return done


def the_job(state_dir: Path) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if (state_dir / "ledger.sqlite3").exists():
            ledger = Ledger(state_dir)
            try:
                jobs = ledger.jobs(limit=1)
            finally:
                ledger.close()
            if jobs:
                return jobs[0].id
        time.sleep(0.05)
    raise AssertionError("no job was recorded")


@pytest.mark.parametrize("isolation", ["sandbox", "container"])
def test_a_running_tasks_first_lines_show_before_it_ends(
    configured_host: HostConfig,
    state_dir: Path,
    background: Callable[[str], dict[str, Any]],
    isolation: str,
) -> None:
    done = background(isolation)
    job = the_job(state_dir)
    seen: list[tuple[float, bytes]] = []
    said: list[str] = []

    state = follow_logs(
        configured_host,
        state_dir,
        job,
        0,
        "stdout",
        lambda data: seen.append((time.monotonic(), data)),
        said.append,
        follow=True,
        tail=-1,
    )
    ended = time.monotonic()

    assert finished(done)["state"] == "succeeded", done
    assert state == TaskState.SUCCEEDED
    assert b"".join(data for _, data in seen) == b"first\nsecond\n"
    first_seen = next(when for when, data in seen if data.startswith(b"first"))
    assert ended - first_seen >= 4  # shown while the task slept, seconds before it ended
    assert said[-1] == f"task 0 of job {job}: succeeded, exit code 0"

    logs = actions.run_action(
        "task-logs", TaskLogsParams(job=job, task=0, stderr=True), configured_host, state_dir
    )
    assert (logs["state"], logs["output"], logs["exit-code"]) == ("succeeded", "oops\n", 0)


def test_task_logs_of_a_running_task_and_bad_requests(
    configured_host: HostConfig, state_dir: Path, background: Callable[[str], dict[str, Any]]
) -> None:
    done = background("sandbox")
    job = the_job(state_dir)
    deadline = time.monotonic() + 60
    logs: dict[str, Any] = {}
    while time.monotonic() < deadline:
        logs = actions.run_action(
            "task-logs", TaskLogsParams(job=job, task=0), configured_host, state_dir
        )
        if logs["output"]:
            break
        time.sleep(0.1)

    assert (logs["state"], logs["output"], logs["attempt"]) == ("running", "first\n", 1)
    with pytest.raises(actions.ActionError, match=f"task: 1 is not a task of job {job}"):
        actions.run_action(
            "task-logs", TaskLogsParams(job=job, task=1), configured_host, state_dir
        )
    with pytest.raises(actions.ActionError, match="job jnosuch does not exist"):
        actions.run_action(
            "task-logs", TaskLogsParams(job="jnosuch", task=0), configured_host, state_dir
        )
    assert finished(done)["state"] == "succeeded"


def test_a_worker_the_host_cannot_see_is_read_through_exec(
    configured_host: HostConfig, state_dir: Path, background: Callable[[str], dict[str, Any]]
) -> None:
    """As for a worker on another cluster member: the same bytes, bounded, through the API."""
    project = configured_host.lxd_project
    reader = LiveOutput(project, LXDApi(project), host_access=False)
    done = background("sandbox")
    job = the_job(state_dir)
    deadline = time.monotonic() + 60
    got, worker, attempt_id = None, "", ""
    while time.monotonic() < deadline and not got:
        ledger = Ledger(state_dir)
        try:
            attempt = ledger.last_attempt(job, 0)
        finally:
            ledger.close()
        if attempt is not None and attempt.state == "running":
            worker, attempt_id = attempt.worker, f"{job}/0/{attempt.attempt}"
            got = reader.read(worker, attempt_id, "stdout", 0, 1024)
        time.sleep(0.1)

    assert got == b"first\n"
    assert reader.read(worker, attempt_id, "stdout", 2, 1024) == b"rst\n"
    assert reader.read(worker, attempt_id, "stdout", 0, 3) == b"fir"
    assert reader.read(worker, attempt_id, "stderr", 0, 1024) == b"oops\n"
    assert reader.read(worker, f"{job}/0/9", "stdout", 0, 1024) is None  # not its
    assert finished(done)["state"] == "succeeded"
