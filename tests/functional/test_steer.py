"""Steering jobs on the REAL LXD daemon: retry-job and the exit-code policies."""

from pathlib import Path
from typing import Any

import pytest

from container_compute import actions
from container_compute.config import HostConfig
from container_compute.jobs.params import JobParams, LaunchJobParams, RetryJobParams

from .conftest import worker_names
from .test_sandbox import outcomes

pytestmark = [pytest.mark.functional, pytest.mark.usefixtures("fast_engine")]


def run(config: HostConfig, state_dir: Path, action: str, params: object) -> dict[str, Any]:
    return actions.run_action(action, params, config, state_dir)


def test_retry_job_reruns_only_the_failed_tasks(
    configured_host: HostConfig, state_dir: Path
) -> None:
    # Tasks 1 and 3 fail while PHASE is "first"; rerun with "second", they succeed.
    command = (
        'echo "$PHASE" > /results/phase; [ "$PHASE" = second ] || [ $((TASK_INDEX % 2)) = 0 ]'
    )
    launched = run(
        configured_host,
        state_dir,
        "launch-job",
        LaunchJobParams(command=command, tasks=4, env=["PHASE=first"], wait=True),
    )
    assert launched["failed-indexes"] == "1,3", launched

    retried = run(
        configured_host,
        state_dir,
        "retry-job",
        RetryJobParams(job=launched["job"], env=["PHASE=second"], wait=True),
    )

    assert retried["retried-indexes"] == "1,3" and retried["state"] == "succeeded", retried
    results = state_dir / "results" / launched["job"]
    phases = [(results / str(i) / "files" / "phase").read_text() for i in range(4)]
    assert phases == ["first\n", "second\n", "first\n", "second\n"]  # 0 and 2 never reran
    attempts = [
        (record["attempt"], record["succeeded"]) for record in outcomes(state_dir, launched["job"])
    ]
    assert attempts == [(1, True), (1, False), (2, True), (1, True), (1, False), (2, True)]
    assert len((results / "joblog.tsv").read_text().splitlines()) == 5
    assert worker_names(configured_host) == []


def test_a_fail_job_exit_code_stops_the_running_tasks(
    configured_host: HostConfig, state_dir: Path
) -> None:
    command = '[ "$TASK_INDEX" = 2 ] && exit 42; sleep 120'
    launched = run(
        configured_host,
        state_dir,
        "launch-job",
        LaunchJobParams(
            command=command,
            tasks=6,
            parallelism=3,
            retries=2,
            fail_job_exit_codes="40-49",
            wait=True,
            wait_timeout="100s",
        ),
    )

    assert launched["state"] == "failed", launched  # long before any sleep ended
    status = run(configured_host, state_dir, "job-status", JobParams(job=launched["job"]))
    assert status["ended-by"] == "task 2 exited 42, one of fail-job-exit-codes"
    reasons = {int(i): task["reason"] for i, task in status["failures"].items()}
    assert reasons[2] == "exit-code" and status["failures"]["2"]["attempts"] == 1
    assert {reasons[i] for i in (0, 1, 3, 4, 5)} == {"job-ended"}
    assert worker_names(configured_host) == []
