"""retry-job: a finished job's failed tasks run again in the same job (on a fake backend)."""

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from container_compute import actions
from container_compute.actions import job_actions
from container_compute.errors import ActionError
from container_compute.jobs import ledger as ledger_module
from container_compute.jobs import results, runner
from container_compute.jobs.ledger import Ledger
from container_compute.jobs.model import JobState, TaskState
from container_compute.jobs.params import JobParams, LaunchJobParams, RetryJobParams

from .fake_backend import FakeBackend, Plan, make_config

CONFIG = make_config()


@pytest.fixture
def fixed(monkeypatch: pytest.MonkeyPatch) -> dict[str, bool]:
    """A fake backend whose task 1 fails until ``fixed["now"]``, and 2 while MODE is wrong."""
    state = {"now": False}

    def plan(spec: Any) -> Plan:
        if spec.task_index == 1 and not state["now"]:
            return Plan(exit_code=5, stderr="not yet\n")
        if spec.task_index == 2 and spec.env.get("MODE") != "fixed":
            return Plan(exit_code=6)
        return Plan(stdout=f"{spec.task_index}\n", files={"i": str(spec.task_index)})

    fake = FakeBackend(plan)
    monkeypatch.setattr(runner, "backend_factory_for", lambda config: lambda name: fake)
    monkeypatch.setattr(runner, "engine_options", {"backoff_base": 0.01, "backoff_cap": 0.05})
    monkeypatch.setattr(job_actions, "IN_PROCESS_POLL_SECONDS", 0.01)
    return state


def run(action: str, params: object, state_dir: Path) -> dict[str, Any]:
    return actions.run_action(action, params, CONFIG, state_dir)


def launch(state_dir: Path) -> str:
    params = LaunchJobParams(
        command="x", tasks=4, retries=1, env=["MODE=broken"], isolation="container", wait=True
    )
    launched = run("launch-job", params, state_dir)
    assert launched["state"] == "failed" and launched["failed-indexes"] == "1-2"
    return str(launched["job"])


def test_only_the_failed_tasks_run_again_and_the_job_says_the_new_truth(
    tmp_path: Path, fixed: dict[str, bool]
) -> None:
    job = launch(tmp_path)
    first_result = (results.task_dir(tmp_path, job, 0) / "stdout").stat().st_mtime_ns
    fixed["now"] = True

    retried = run("retry-job", RetryJobParams(job=job, env=["MODE=fixed"], wait=True), tmp_path)

    assert retried["retried-indexes"] == "1-2" and retried["state"] == "succeeded"
    ledger = Ledger(tmp_path)
    try:
        tasks = {task.index: task for task in ledger.tasks(job)}
        assert [tasks[i].attempts for i in range(4)] == [1, 3, 3, 1]  # 2 before, 1 now
        attempts = [(a.index, a.attempt, a.state) for a in ledger.attempts(job) if a.index == 1]
        assert attempts == [(1, 1, "failed"), (1, 2, "failed"), (1, 3, "succeeded")]
        record = ledger.job(job)
        assert record is not None and record.params["env"] == ["MODE=<redacted>"]
    finally:
        ledger.close()
    # The succeeded tasks were not run again; the retried ones have their new results.
    assert (results.task_dir(tmp_path, job, 0) / "stdout").stat().st_mtime_ns == first_result
    assert (results.task_dir(tmp_path, job, 2) / "files" / "i").read_text() == "2"
    joblog = results.joblog_path(tmp_path, job).read_text().splitlines()
    assert [line.split("\t")[6] for line in joblog[1:]] == ["0", "0", "0", "0"]
    status = run("job-status", JobParams(job=job), tmp_path)
    assert status["state"] == "succeeded" and "failures" not in status


def test_a_retried_task_gets_the_jobs_retries_afresh(
    tmp_path: Path, fixed: dict[str, bool]
) -> None:
    job = launch(tmp_path)  # task 1 spent its one retry

    retried = run("retry-job", RetryJobParams(job=job, env=["MODE=fixed"], wait=True), tmp_path)

    assert retried["state"] == "failed" and retried["failed-indexes"] == "1"
    ledger = Ledger(tmp_path)
    try:
        task = ledger.task(job, 1)
        assert task is not None and (task.attempts, task.charged, task.spent) == (4, 4, 2)
        assert task.state == TaskState.FAILED
    finally:
        ledger.close()
    assert "uncharged-attempts" not in retried["failures"]["1"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "env: job .* ran with MODE; its values are not kept once a job ends"),
        ({"env": ["OTHER=1"]}, "give exactly those keys again \\(given: OTHER\\)"),
        ({"env": ["MODE=fixed"], "indexes": "9"}, "indexes: "),
    ],
)
def test_bad_retries_are_refused_and_change_nothing(
    tmp_path: Path, fixed: dict[str, bool], params: dict[str, Any], message: str
) -> None:
    job = launch(tmp_path)
    joblog = results.joblog_path(tmp_path, job).read_text()

    with pytest.raises(ActionError, match=message):
        run("retry-job", RetryJobParams(job=job, **params), tmp_path)

    ledger = Ledger(tmp_path)
    try:
        record = ledger.job(job)
        assert record is not None and record.state == JobState.FAILED
        assert ledger.task_indexes(job, TaskState.FAILED) == [1, 2]
    finally:
        ledger.close()
    assert results.joblog_path(tmp_path, job).read_text() == joblog


def test_unknown_running_and_all_succeeded_jobs_are_refused(
    tmp_path: Path, fixed: dict[str, bool]
) -> None:
    with pytest.raises(ActionError, match="job jnope does not exist"):
        run("retry-job", RetryJobParams(job="jnope"), tmp_path)
    queued = run("launch-job", LaunchJobParams(command="x", tasks=1), tmp_path)["job"]
    with pytest.raises(ActionError, match=f"job {queued} is still queued"):
        run("retry-job", RetryJobParams(job=queued), tmp_path)
    fixed["now"] = True
    done = run(
        "launch-job",
        LaunchJobParams(command="x", tasks=2, env=["MODE=fixed"], wait=True),
        tmp_path,
    )
    assert done["state"] == "succeeded"
    with pytest.raises(ActionError, match="has no failed task to retry"):
        run("retry-job", RetryJobParams(job=done["job"], env=["MODE=fixed"]), tmp_path)


def test_a_ledger_of_the_last_version_gets_the_new_column(tmp_path: Path) -> None:
    old_schema = ledger_module._SCHEMA.replace("    spent INTEGER NOT NULL DEFAULT 0,\n", "")
    assert old_schema != ledger_module._SCHEMA
    db = sqlite3.connect(str(tmp_path / "ledger.sqlite3"))
    db.executescript(old_schema)
    db.execute(
        "INSERT INTO jobs (id, name, state, params, backend, task_count, created) "
        "VALUES ('j1', '', 'failed', '{}', 'lxd', 1, 1.0)"
    )
    db.execute("INSERT INTO tasks (job, idx, state) VALUES ('j1', 0, 'failed')")
    db.commit()
    db.close()

    ledger = Ledger(tmp_path)
    try:
        task = ledger.task("j1", 0)
        assert task is not None and task.spent == 0
        assert ledger.retry_tasks("j1", None, None, 2.0) == [0]
    finally:
        ledger.close()
