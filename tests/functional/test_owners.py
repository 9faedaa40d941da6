"""Two owners on one LXD project, on the REAL daemon: neither ever touches the other's work.

State dir A (its agent reaping every second) and state dir B (an in-process ``--wait``
engine, as a CLI user beside the charm) run jobs side by side in the run's project, while
update-status reaps of both (``actions.reap``) keep coming and a crashed third owner's
worker waits for ``reap --owner``. Every task succeeds at its first attempt; once the jobs
are over nothing of A or B is left, and the third owner's worker is there until reaped
explicitly.
"""

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from container_compute import actions
from container_compute.backends import WorkerSpec
from container_compute.backends.lxd import LXDBackend
from container_compute.config import HostConfig
from container_compute.jobs.ledger import Ledger
from container_compute.jobs.params import JobParams, LaunchJobParams
from container_compute.owner import owner_id

from .conftest import state_dirs, worker_names
from .test_jobs_e2e import Agent

pytestmark = [pytest.mark.functional, pytest.mark.usefixtures("fast_engine")]

SQUARE = "sleep 6; echo $((TASK_INDEX * TASK_INDEX)) > /results/square"


@pytest.fixture
def two_state_dirs(configured_host: HostConfig) -> Iterator[tuple[Path, Path]]:
    with state_dirs(configured_host, "cc-owner") as (a_dir, b_dir):
        yield a_dir, b_dir


def first_attempts_only(state_dir: Path, job_id: str) -> list[tuple[int, int, Any]]:
    """The attempts of the job that were not its tasks' first, with their outcomes."""
    ledger = Ledger(state_dir)
    try:
        return [(a.index, a.attempt, a.outcome) for a in ledger.attempts(job_id) if a.attempt != 1]
    finally:
        ledger.close()


def test_two_owners_on_one_project_lose_no_task(
    configured_host: HostConfig, two_state_dirs: tuple[Path, Path]
) -> None:
    config = configured_host
    a_dir, b_dir = two_state_dirs
    # A crashed owner's worker (its state dir gone): only `reap --owner` may take it.
    crashed = LXDBackend(config, owner="o0000deadbeef")
    orphan = WorkerSpec("jcrashed", 0, 1, "busybox", "sleep 600", {})
    crashed.start(orphan)
    agent = Agent(a_dir, "--reap-interval", "1")
    try:
        a_job = actions.run_action(
            "launch-job", LaunchJobParams(command=SQUARE, tasks=6, parallelism=3), config, a_dir
        )["job"]
        b_result: dict[str, Any] = {}

        def run_b() -> None:
            params = LaunchJobParams(command=SQUARE, tasks=6, parallelism=3, wait=True)
            b_result.update(actions.run_action("launch-job", params, config, b_dir))

        b_thread = threading.Thread(target=run_b)
        b_thread.start()
        reaped: list[str] = []
        while b_thread.is_alive():  # update-status of both units, every 0.3 s
            reaped += actions.reap(config, a_dir) + actions.reap(config, b_dir)
            time.sleep(0.3)
        b_thread.join()
        end = time.monotonic() + 180
        while time.monotonic() < end:
            a_state = actions.run_action("job-status", JobParams(job=a_job), config, a_dir)
            if a_state["state"] != "running" and a_state["state"] != "queued":
                break
            reaped += actions.reap(config, a_dir) + actions.reap(config, b_dir)
            time.sleep(0.3)
    finally:
        agent.stop()

    assert b_result.get("state") == "succeeded", b_result
    assert a_state["state"] == "succeeded", (a_state, agent.log.read_text()[-3000:])
    assert first_attempts_only(a_dir, a_job) == []
    assert first_attempts_only(b_dir, b_result["job"]) == []
    assert orphan.worker_name not in reaped
    end = time.monotonic() + 60
    while (left := [n for n in worker_names(config) if n != orphan.worker_name]) and (
        time.monotonic() < end
    ):
        actions.reap(config, a_dir)
        actions.reap(config, b_dir)
        time.sleep(0.5)
    assert left == []
    assert worker_names(config) == [orphan.worker_name]  # another owner's: still there

    taken = actions.reap(config, a_dir, owner="o0000deadbeef")
    assert taken[0] == orphan.worker_name  # then its templates
    assert worker_names(config) == []
    assert not [n for n in worker_names(config, templates=True) if n in taken]
    assert owner_id(a_dir) != owner_id(b_dir)
