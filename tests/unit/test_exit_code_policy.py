"""Exit-code policies of a job: retry-exit-codes and fail-job-exit-codes (the engine's logic)."""

from pathlib import Path

import pytest

from container_compute.backends import FailureReason, WorkerSpec
from container_compute.jobs import status
from container_compute.jobs.model import JobState, TaskState
from container_compute.jobs.params import LaunchJobParams

from .fake_backend import FakeBackend, Plan, make_engine, run_until_done
from .test_engine import launch


def test_only_the_listed_exit_codes_are_retried(tmp_path: Path) -> None:
    def plan(spec: WorkerSpec) -> Plan:
        if spec.task_index == 0 and spec.attempt < 3:
            return Plan(exit_code=75)  # "try again later": listed
        if spec.task_index == 1:
            return Plan(exit_code=2)  # a usage error: not listed, no retry
        if spec.task_index == 2 and spec.attempt == 1:
            return Plan(exit_code=124, reason=FailureReason.TIMEOUT)  # not an exit code
        return Plan()

    engine = make_engine(tmp_path, FakeBackend(plan))
    job_id = launch(engine, tasks=3, retries=3, retry_exit_codes="75,100-110")
    run_until_done(engine)

    tasks = {task.index: task for task in engine.ledger.tasks(job_id)}
    assert (tasks[0].state, tasks[0].attempts) == (TaskState.SUCCEEDED, 3)
    assert (tasks[1].state, tasks[1].attempts, tasks[1].exit_code) == (TaskState.FAILED, 1, 2)
    assert "exit code 2 is not in retry-exit-codes" in tasks[1].detail
    assert (tasks[2].state, tasks[2].attempts) == (TaskState.SUCCEEDED, 2)


def test_a_fail_job_exit_code_ends_the_job_at_once(tmp_path: Path) -> None:
    def plan(spec: WorkerSpec) -> Plan:
        if spec.task_index == 1:
            return Plan(exit_code=42, seconds=0.05)
        return Plan(hang=True)  # task 0 runs on until the job ends

    backend = FakeBackend(plan)
    engine = make_engine(tmp_path, backend)
    job_id = launch(engine, tasks=6, parallelism=2, retries=2, fail_job_exit_codes="3,40-49")
    run_until_done(engine)

    job = engine.ledger.job(job_id)
    assert job is not None and job.state == JobState.FAILED
    tasks = {task.index: task for task in engine.ledger.tasks(job_id)}
    assert (tasks[1].exit_code, tasks[1].attempts) == (42, 1)  # not retried
    assert tasks[0].reason == FailureReason.JOB_ENDED.value  # stopped while it ran
    assert tasks[0].attempts == 1
    assert all(tasks[i].attempts == 0 and tasks[i].reason == "job-ended" for i in range(2, 6))
    assert "task 1 exited 42" in tasks[5].detail
    reported = status.job_status(engine.ledger, job)
    assert reported["ended-by"] == "task 1 exited 42, one of fail-job-exit-codes"
    assert backend.workers == {}


def test_other_failures_do_not_end_the_job(tmp_path: Path) -> None:
    def plan(spec: WorkerSpec) -> Plan:
        return Plan(exit_code=1) if spec.task_index == 0 else Plan()

    engine = make_engine(tmp_path, FakeBackend(plan))
    job_id = launch(engine, tasks=4, fail_job_exit_codes="42")
    run_until_done(engine)

    assert engine.ledger.task_indexes(job_id, TaskState.SUCCEEDED) == [1, 2, 3]
    job = engine.ledger.job(job_id)
    assert job is not None and "ended-by" not in status.job_status(engine.ledger, job)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"retry_exit_codes": "256"}, "retry-exit-codes: '256' is not exit codes 1-255"),
        ({"retry_exit_codes": "-1"}, "retry-exit-codes: '-1' is not exit codes 1-255"),
        ({"fail_job_exit_codes": "0-3"}, "fail-job-exit-codes: 0 is success, not a failure"),
        ({"fail_job_exit_codes": "x"}, "fail-job-exit-codes: 'x' is not exit codes"),
        (
            {"retry_exit_codes": "1-10", "fail_job_exit_codes": "5,20"},
            "fail-job-exit-codes: 5 also in retry-exit-codes",
        ),
    ],
)
def test_bad_exit_codes_are_refused_naming_the_field(fields: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LaunchJobParams(command="true", **fields)  # type: ignore[arg-type]
