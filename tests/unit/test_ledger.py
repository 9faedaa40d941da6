"""The SQLite ledger: records, exactly-once commits, aggregates, heartbeat."""

import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from container_compute.jobs.ledger import Ledger, new_job_id
from container_compute.jobs.model import JobState, TaskState, format_ranges


def record(ledger: Ledger, tasks: int = 5, inputs: tuple[str, ...] = ()) -> str:
    return ledger.create_job(
        {"command": "true"},
        name="n",
        backend="lxd",
        task_count=tasks,
        inputs=inputs,
        deadline_seconds=0,
    )


def test_job_ids_are_j_and_8_hex() -> None:
    ids = {new_job_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(re.fullmatch(r"j[0-9a-f]{8}", job_id) for job_id in ids)


def test_ledger_uses_wal(tmp_path: Path) -> None:
    Ledger(tmp_path)
    with sqlite3.connect(tmp_path / "ledger.sqlite3") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_create_job_records_job_and_pending_tasks(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    job_id = record(ledger, 3, ("a", "b", "c"))
    job = ledger.job(job_id)
    assert job is not None and job.state == JobState.QUEUED and job.task_count == 3
    assert [t.input for t in ledger.tasks(job_id)] == ["a", "b", "c"]
    assert ledger.task_counts(job_id) == {"pending": 3, "running": 0, "succeeded": 0, "failed": 0}
    assert ledger.count_rows() == {"jobs": 1, "tasks": 3, "attempts": 0}
    assert ledger.job("jnothere0") is None


def test_a_failed_transaction_leaves_nothing(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    with pytest.raises(RuntimeError), ledger.transaction() as db:
        db.execute(
            "INSERT INTO jobs (id, name, state, params, backend, task_count, created) "
            "VALUES ('jx', '', 'queued', '{}', 'lxd', 0, 0)"
        )
        raise RuntimeError("boom")
    assert ledger.count_rows() == {"jobs": 0, "tasks": 0, "attempts": 0}


class CommitFailsOnce:
    """A connection whose next COMMIT fails, as one does on a full disk."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.failed = False

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "COMMIT" and not self.failed:
            self.failed = True
            raise sqlite3.OperationalError("database or disk is full")
        return self.db.execute(sql, *args)

    def __getattr__(self, name: str) -> object:
        return getattr(self.db, name)


def test_a_failed_commit_leaves_the_connection_usable_and_nothing_written(
    tmp_path: Path,
) -> None:
    ledger = Ledger(tmp_path)
    ledger._db = CommitFailsOnce(ledger._db)  # type: ignore[assignment]
    with pytest.raises(sqlite3.OperationalError, match="disk is full"):
        record(ledger, 2)

    assert ledger.count_rows() == {"jobs": 0, "tasks": 0, "attempts": 0}
    job_id = record(ledger, 2)  # the next transaction works
    assert ledger.job(job_id) is not None


def test_attempt_lifecycle_is_exactly_once(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    job_id = record(ledger, 2)
    now = time.time()
    attempt = ledger.start_attempt(job_id, 0, lambda n: f"w-{n}", now)
    assert attempt == 1
    assert ledger.start_attempt(job_id, 0, lambda n: f"w-{n}", now) is None  # not pending
    assert ledger.job(job_id).state == JobState.RUNNING  # type: ignore[union-attr]
    assert [a.worker for a in ledger.attempts(job_id, state="running")] == ["w-1"]
    outcome = {"succeeded": False, "exit-code": 2, "reason": "exit-code", "detail": "d"}
    assert ledger.finish_attempt(
        job_id,
        0,
        1,
        outcome,
        task_state=TaskState.PENDING,
        charge=True,
        not_before=now + 5,
        now=now,
    )
    assert not ledger.finish_attempt(
        job_id, 0, 1, outcome, task_state=TaskState.FAILED, charge=True, not_before=now, now=now
    )
    task = ledger.task(job_id, 0)
    assert task is not None and (task.state, task.charged, task.exit_code) == (
        TaskState.PENDING,
        1,
        2,
    )
    assert [t.index for t in ledger.runnable_tasks(job_id, now, 10)] == [1]
    assert [t.index for t in ledger.runnable_tasks(job_id, now + 5, 10)] == [0, 1]
    assert ledger.start_attempt(job_id, 0, lambda n: f"w-{n}", now + 5) == 2


def test_indexes_and_ranges(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    job_id = record(ledger, 10)
    with ledger.transaction() as db:
        db.execute("UPDATE tasks SET state = 'succeeded' WHERE idx IN (0, 1, 2, 3, 7)")
    assert format_ranges(ledger.task_indexes(job_id, TaskState.SUCCEEDED)) == "0-3,7"
    assert ledger.fail_pending(job_id, "deadline", "late", time.time()) == 5
    assert format_ranges(ledger.task_indexes(job_id, TaskState.FAILED)) == "4-6,8-9"


def test_job_state_changes_only_while_unfinished(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    job_id = record(ledger)
    assert ledger.set_job_state(job_id, JobState.CANCELLED)
    assert not ledger.set_job_state(job_id, JobState.SUCCEEDED)
    job = ledger.job(job_id)
    assert job is not None and job.state == JobState.CANCELLED and job.finished is not None


def test_list_and_delete(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    first = record(ledger)
    time.sleep(0.01)
    second = record(ledger)
    assert [j.id for j in ledger.jobs()] == [second, first]
    assert [j.id for j in ledger.jobs(limit=1)] == [second]
    assert ledger.jobs(state="failed") == []
    assert ledger.delete_job(first)
    assert not ledger.delete_job(first)
    assert ledger.count_rows() == {"jobs": 1, "tasks": 5, "attempts": 0}


def test_heartbeat(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    assert ledger.last_heartbeat() is None
    ledger.heartbeat(42, "agent", 100.0)
    ledger.heartbeat(42, "agent", 160.0)
    assert ledger.last_heartbeat() == (42, "agent", 160.0)
    ledger.clear_heartbeat(7)
    assert ledger.last_heartbeat() is not None
    ledger.clear_heartbeat(42)
    assert ledger.last_heartbeat() is None


def test_two_connections_see_each_others_writes(tmp_path: Path) -> None:
    writer, reader = Ledger(tmp_path), Ledger(tmp_path)
    job_id = record(writer)
    assert reader.job(job_id) is not None
