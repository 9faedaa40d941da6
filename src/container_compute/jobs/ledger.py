"""The ledger: durable job state in SQLite (WAL) — the single source of truth.

One file, ``<state dir>/ledger.sqlite3``, holds jobs, their tasks, every attempt of every
task (with the worker's name, recorded before the worker is started) and the agent's
heartbeat. Every change is one transaction, so a crash at any point leaves a consistent
state that a restarted agent resumes from. Counts and index lists are computed in SQL, so
status of a 10,000-task job stays cheap.

A job reaches its final state in the same transaction as the last of its tasks (an attempt's
commit, the deadline failing its pending tasks), whichever process commits it, so the job's
state can never lag behind its tasks. In that transaction the values of the job's
environment are redacted (the names are kept): with ``secure_delete`` on and the WAL
checkpointed and truncated after it, the values are gone from the database files. The
database and its -wal and -shm files are mode 0600 in a 0700 state directory.
"""

import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..constants import LEDGER_FILE, REDACTED
from .model import JobState, TaskState
from .private import private_dir, private_file, tighten_file

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    params TEXT NOT NULL,
    backend TEXT NOT NULL,
    task_count INTEGER NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    deadline REAL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, created);
CREATE TABLE IF NOT EXISTS tasks (
    job TEXT NOT NULL,
    idx INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    charged INTEGER NOT NULL DEFAULT 0,
    exit_code INTEGER,
    reason TEXT,
    detail TEXT NOT NULL DEFAULT '',
    input TEXT,
    started REAL,
    finished REAL,
    bytes INTEGER NOT NULL DEFAULT 0,
    truncated INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,
    spent INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job, idx)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tasks_state ON tasks (job, state, idx);
CREATE TABLE IF NOT EXISTS attempts (
    job TEXT NOT NULL,
    idx INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    worker TEXT NOT NULL,
    state TEXT NOT NULL,
    started REAL NOT NULL,
    finished REAL,
    outcome TEXT,
    PRIMARY KEY (job, idx, attempt)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS attempts_state ON attempts (state);
CREATE INDEX IF NOT EXISTS attempts_started ON attempts (started);
CREATE INDEX IF NOT EXISTS attempts_finished ON attempts (finished);
CREATE INDEX IF NOT EXISTS tasks_finished ON tasks (finished);
CREATE TABLE IF NOT EXISTS agent (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    pid INTEGER NOT NULL,
    role TEXT NOT NULL,
    heartbeat REAL NOT NULL
);
"""

SCHEMA_VERSION = 2  # 1: env values of finished jobs are redacted; 2: tasks.spent
ENV_REDACTED = REDACTED
_ACTIVE = (JobState.QUEUED.value, JobState.RUNNING.value)
_FINISHED = tuple(state.value for state in JobState if state.finished)

ATTEMPT_RUNNING = "running"
_TASK_COLUMNS = (
    "job, idx, state, attempts, charged, exit_code, reason, detail, input, started, finished, "
    "bytes, truncated, not_before, spent"
)
ENDED_BY = "ended-by"  # in a job's params: why it ended before its tasks did
_OUTCOME_FIELD = "json_extract(outcome, '$.\"{}\"')"  # a field of an attempt's record
ATTEMPT_SUCCEEDED = "succeeded"
ATTEMPT_FAILED = "failed"


@dataclass(frozen=True)
class JobRecord:
    """One row of the jobs table."""

    id: str
    name: str
    state: JobState
    params: dict[str, Any]
    backend: str
    task_count: int
    created: float
    started: float | None
    finished: float | None
    deadline: float | None


@dataclass(frozen=True)
class TaskRecord:
    """One row of the tasks table."""

    job: str
    index: int
    state: TaskState
    attempts: int
    charged: int
    exit_code: int | None
    reason: str | None
    detail: str
    input: str | None
    started: float | None
    finished: float | None
    bytes: int
    truncated: bool
    not_before: float
    # Retries spent before the last retry-job (``charged`` then): the budget is counted after.
    spent: int = 0


@dataclass(frozen=True)
class AttemptRecord:
    """One row of the attempts table."""

    job: str
    index: int
    attempt: int
    worker: str
    state: str
    started: float
    finished: float | None
    outcome: dict[str, Any] | None


def new_job_id() -> str:
    """Return a fresh job id: ``j`` and 8 random hex digits."""
    return "j" + secrets.token_hex(4)


def redacted_env(env: Sequence[str]) -> list[str]:
    """Return ``KEY=VALUE`` entries with every value replaced by ``<redacted>``."""
    return [f"{entry.split('=', 1)[0]}={ENV_REDACTED}" for entry in env]


def _while_locked(statement: Callable[[], object], timeout: float = 30.0) -> None:
    """Run ``statement``, again while another client holds the database (bounded).

    Switching a new database to WAL takes an exclusive lock and fails at once ("database is
    locked", no busy handler) while another client is opening or creating it.
    """
    end = time.monotonic() + timeout
    while True:
        try:
            statement()
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > end:
                raise
            time.sleep(0.02)


class _Store:
    """The SQLite connection of one state directory, shared by threads under one lock."""

    def __init__(self, state_dir: Path) -> None:
        """Open (creating if needed) ``state_dir/ledger.sqlite3``, private to its owner."""
        private_dir(state_dir)
        self.path = state_dir / LEDGER_FILE
        # SQLite gives the -wal and -shm files the database file's mode.
        private_file(self.path)
        for suffix in ("-wal", "-shm"):
            tighten_file(self.path.with_name(self.path.name + suffix))
        self._lock = threading.RLock()
        self._scrub_pending = False
        self._db = sqlite3.connect(
            str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False
        )
        _while_locked(lambda: self._db.execute("PRAGMA journal_mode=WAL"))
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.execute("PRAGMA secure_delete=ON")  # deleted or rewritten rows are zeroed
        with self.transaction() as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            columns = {row[1] for row in db.execute("PRAGMA table_info(tasks)")}
            if "spent" not in columns:  # a ledger of an earlier version
                db.execute("ALTER TABLE tasks ADD COLUMN spent INTEGER NOT NULL DEFAULT 0")
            if db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                self._redact_finished_jobs(db)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Run the block as one IMMEDIATE transaction; roll back on any exception."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            try:
                self._db.execute("COMMIT")
            except BaseException:  # e.g. disk full: the connection must not stay in it
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            if self._scrub_pending:
                self._scrub()

    def _scrub(self) -> None:
        """Copy the WAL into the database and truncate it, so no old page version lingers.

        When readers keep it from completing, the next transaction tries again.
        """
        try:
            busy = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except sqlite3.Error:
            busy = 1
        self._scrub_pending = bool(busy)

    def _redact(self, db: sqlite3.Connection, job_id: str) -> None:
        """Replace the values of the job's environment with ``<redacted>`` (in a transaction)."""
        row = db.execute("SELECT params FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return
        params = json.loads(row[0])
        env = params.get("env") or []
        if env and env != redacted_env(env):
            params["env"] = redacted_env(env)
            db.execute("UPDATE jobs SET params = ? WHERE id = ?", (json.dumps(params), job_id))
            self._scrub_pending = True

    def _redact_finished_jobs(self, db: sqlite3.Connection) -> None:
        """Redact the environment of jobs an older version finished without redacting."""
        marks = ",".join("?" * len(_FINISHED))
        for (job_id,) in db.execute(
            f"SELECT id FROM jobs WHERE state IN ({marks})",  # noqa: S608 - placeholders only
            _FINISHED,
        ).fetchall():
            self._redact(db, job_id)

    def _conclude(self, db: sqlite3.Connection, job_id: str, now: float) -> JobState | None:
        """Finish an active job none of whose tasks is pending or running (in a transaction).

        The job fails when a task failed, else succeeds; its environment is redacted.
        Returns the state it reached, or None when it was not finished by this call.
        """
        cursor = db.execute(
            "UPDATE jobs SET state = CASE WHEN EXISTS (SELECT 1 FROM tasks WHERE job = :job "
            "AND state = :failed) THEN :failed ELSE :succeeded END, finished = :now, "
            "started = COALESCE(started, :now) "
            "WHERE id = :job AND state IN (:queued, :running) AND NOT EXISTS (SELECT 1 FROM "
            "tasks WHERE job = :job AND state IN (:pending, :task_running))",
            {
                "job": job_id,
                "now": now,
                "failed": TaskState.FAILED.value,
                "succeeded": JobState.SUCCEEDED.value,
                "queued": JobState.QUEUED.value,
                "running": JobState.RUNNING.value,
                "pending": TaskState.PENDING.value,
                "task_running": TaskState.RUNNING.value,
            },
        )
        if cursor.rowcount != 1:
            return None
        self._redact(db, job_id)
        return JobState(db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()[0])

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()


class _JobRows(_Store):
    """The jobs table."""

    def create_job(
        self,
        params: dict[str, Any],
        *,
        name: str,
        backend: str,
        task_count: int,
        inputs: Sequence[str],
        deadline_seconds: int,
        now: float | None = None,
    ) -> str:
        """Record a queued job and its pending tasks in one transaction; return its id."""
        now = time.time() if now is None else now
        deadline = now + deadline_seconds if deadline_seconds else None
        with self.transaction() as db:
            while True:
                job_id = new_job_id()
                if not db.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone():
                    break
            db.execute(
                "INSERT INTO jobs (id, name, state, params, backend, task_count, created, "
                "deadline) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    name,
                    JobState.QUEUED.value,
                    json.dumps(params),
                    backend,
                    task_count,
                    now,
                    deadline,
                ),
            )
            db.executemany(
                "INSERT INTO tasks (job, idx, state, input) VALUES (?, ?, ?, ?)",
                (
                    (job_id, index, TaskState.PENDING.value, inputs[index] if inputs else None)
                    for index in range(task_count)
                ),
            )
        return job_id

    def note_job(self, job_id: str, key: str, text: str) -> None:
        """Record a note on a job (in its params, as ``key``): e.g. why it fell back."""
        with self.transaction() as db:
            db.execute(
                "UPDATE jobs SET params = json_set(params, ?, ?) WHERE id = ?",
                (f"$.{key}", text, job_id),
            )

    def job(self, job_id: str) -> JobRecord | None:
        """Return the job, or None when it does not exist."""
        rows = self._query(
            "SELECT id, name, state, params, backend, task_count, created, started, finished, "
            "deadline FROM jobs WHERE id = ?",
            (job_id,),
        )
        return _job_record(rows[0]) if rows else None

    def jobs(self, state: str = "", limit: int = 0) -> list[JobRecord]:
        """Return jobs newest first, optionally only in ``state``, at most ``limit`` (0: all)."""
        sql = (
            "SELECT id, name, state, params, backend, task_count, created, started, finished, "
            "deadline FROM jobs"
        )
        args: list[Any] = []
        if state:
            sql += " WHERE state = ?"
            args.append(state)
        sql += " ORDER BY created DESC, id"
        if limit:
            sql += " LIMIT ?"
            args.append(limit)
        return [_job_record(row) for row in self._query(sql, args)]

    def active_jobs(self) -> list[JobRecord]:
        """Return queued and running jobs, oldest first."""
        return [
            _job_record(row)
            for row in self._query(
                "SELECT id, name, state, params, backend, task_count, created, started, "
                "finished, deadline FROM jobs WHERE state IN (?, ?) ORDER BY created, id",
                _ACTIVE,
            )
        ]

    def set_job_state(self, job_id: str, state: JobState, now: float | None = None) -> bool:
        """Move an unfinished job to ``state``; return False when it was already finished."""
        now = time.time() if now is None else now
        finished = now if state.finished else None
        with self.transaction() as db:
            cursor = db.execute(
                "UPDATE jobs SET state = ?, finished = ?, started = COALESCE(started, ?) "
                "WHERE id = ? AND state IN (?, ?)",
                (
                    state.value,
                    finished,
                    now if state != JobState.QUEUED else None,
                    job_id,
                    JobState.QUEUED.value,
                    JobState.RUNNING.value,
                ),
            )
            if cursor.rowcount == 1 and state.finished:
                self._redact(db, job_id)
            return cursor.rowcount == 1

    def finish_if_done(self, job_id: str, now: float | None = None) -> JobState | None:
        """Finish the job when no task of it is pending or running; return its final state.

        Returns None while the job is unfinished. Commits finish a job themselves; this
        catches what they cannot (a job an older version left running with every task done).
        """
        now = time.time() if now is None else now
        with self.transaction() as db:
            self._conclude(db, job_id, now)
            row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
        state = JobState(row[0]) if row else None
        return state if state is not None and state.finished else None

    def delete_job(self, job_id: str) -> bool:
        """Delete a job with its tasks and attempts; return False when it did not exist."""
        with self.transaction() as db:
            db.execute("DELETE FROM attempts WHERE job = ?", (job_id,))
            db.execute("DELETE FROM tasks WHERE job = ?", (job_id,))
            return db.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount == 1

    def count_rows(self) -> dict[str, int]:
        """Return the number of rows in each table (tests compare these)."""
        return {
            table: self._query(f"SELECT COUNT(*) FROM {table}")[0][0]  # noqa: S608 - fixed names
            for table in ("jobs", "tasks", "attempts")
        }


class _TaskRows(_Store):
    """The tasks table."""

    def task_counts(self, job_id: str) -> dict[str, int]:
        """Return the number of tasks of the job in each task state (all states present)."""
        counts = {state.value: 0 for state in TaskState}
        for state, count in self._query(
            "SELECT state, COUNT(*) FROM tasks WHERE job = ? GROUP BY state", (job_id,)
        ):
            counts[state] = count
        return counts

    def task_indexes(self, job_id: str, state: TaskState) -> list[int]:
        """Return the sorted indexes of the job's tasks in ``state``."""
        return [
            row[0]
            for row in self._query(
                "SELECT idx FROM tasks WHERE job = ? AND state = ? ORDER BY idx",
                (job_id, state.value),
            )
        ]

    def tasks(
        self,
        job_id: str,
        *,
        state: TaskState | None = None,
        indexes: Sequence[int] | None = None,
        limit: int = 0,
    ) -> list[TaskRecord]:
        """Return the job's tasks by index, filtered by state and/or indexes."""
        sql = f"SELECT {_TASK_COLUMNS} FROM tasks WHERE job = ?"  # noqa: S608 - constants
        args: list[Any] = [job_id]
        if state is not None:
            sql += " AND state = ?"
            args.append(state.value)
        if indexes is not None:
            wanted = set(indexes)
            records = [
                r for r in self._task_rows(sql + " ORDER BY idx", args) if r.index in wanted
            ]
            return records[:limit] if limit else records
        sql += " ORDER BY idx"
        if limit:
            sql += " LIMIT ?"
            args.append(limit)
        return self._task_rows(sql, args)

    def _task_rows(self, sql: str, args: Sequence[Any]) -> list[TaskRecord]:
        return [
            TaskRecord(
                job=row[0],
                index=row[1],
                state=TaskState(row[2]),
                attempts=row[3],
                charged=row[4],
                exit_code=row[5],
                reason=row[6],
                detail=row[7],
                input=row[8],
                started=row[9],
                finished=row[10],
                bytes=row[11],
                truncated=bool(row[12]),
                not_before=row[13],
                spent=row[14],
            )
            for row in self._query(sql, args)
        ]

    def task(self, job_id: str, index: int) -> TaskRecord | None:
        """Return one task, or None when it does not exist."""
        rows = self._task_rows(
            f"SELECT {_TASK_COLUMNS} FROM tasks WHERE job = ? AND idx = ?",  # noqa: S608
            (job_id, index),
        )
        return rows[0] if rows else None

    def runnable_tasks(self, job_id: str, now: float, limit: int) -> list[TaskRecord]:
        """Return up to ``limit`` pending tasks of the job whose back-off has passed."""
        return self._task_rows(
            f"SELECT {_TASK_COLUMNS} FROM tasks "  # noqa: S608 - constants
            "WHERE job = ? AND state = ? AND not_before <= ? ORDER BY idx LIMIT ?",
            (job_id, TaskState.PENDING.value, now, limit),
        )

    def retry_tasks(
        self, job_id: str, indexes: list[int] | None, env: list[str] | None, now: float
    ) -> list[int]:
        """Make a finished job's failed tasks (or ``indexes``) pending again; return them.

        One transaction: the tasks keep their attempts (the next ones are numbered after) and
        get the job's retries afresh (``spent``); the job is queued again, its deadline
        counted from now, its ``ended-by`` dropped and, when given, its ``env`` set again
        (redacted once more when it ends). Returns [] (nothing changed) when the job is not
        finished or has no such task.
        """
        with self.transaction() as db:
            row = db.execute(
                "SELECT state, params, created, deadline FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
            if row is None or row[0] not in _FINISHED:
                return []
            if indexes is None:
                indexes = [
                    index
                    for (index,) in db.execute(
                        "SELECT idx FROM tasks WHERE job = ? AND state = ? ORDER BY idx",
                        (job_id, TaskState.FAILED.value),
                    )
                ]
            if not indexes:
                return []
            db.executemany(
                "UPDATE tasks SET state = ?, spent = charged, exit_code = NULL, reason = NULL, "
                "detail = '', finished = NULL, bytes = 0, truncated = 0, not_before = ? "
                "WHERE job = ? AND idx = ?",
                [(TaskState.PENDING.value, now, job_id, index) for index in indexes],
            )
            params = json.loads(row[1])
            params.pop(ENDED_BY, None)
            if env is not None:
                params["env"] = env
            deadline = None if row[3] is None else now + (row[3] - row[2])
            db.execute(
                "UPDATE jobs SET state = ?, finished = NULL, deadline = ?, params = ? "
                "WHERE id = ?",
                (JobState.QUEUED.value, deadline, json.dumps(params), job_id),
            )
            return indexes

    def end_job(self, job_id: str, reason: str, detail: str, now: float) -> int:
        """End a job early; return how many pending tasks failed.

        Its params say why (``ended-by``, the first one kept); its pending tasks fail with
        ``reason``; the engine stops its running ones.
        """
        with self.transaction() as db:
            db.execute(
                f"UPDATE jobs SET params = json_set(params, '$.\"{ENDED_BY}\"', ?) "  # noqa: S608
                f"WHERE id = ? AND json_extract(params, '$.\"{ENDED_BY}\"') IS NULL",
                (detail, job_id),
            )
        return self.fail_pending(job_id, reason, f"the job ended: {detail}", now)

    def fail_pending(self, job_id: str, reason: str, detail: str, now: float) -> int:
        """Mark every pending task of the job failed with ``reason``; return how many.

        When no task is left running, the job fails in the same transaction.
        """
        with self.transaction() as db:
            count = db.execute(
                "UPDATE tasks SET state = ?, reason = ?, detail = ?, finished = ? "
                "WHERE job = ? AND state = ?",
                (TaskState.FAILED.value, reason, detail, now, job_id, TaskState.PENDING.value),
            ).rowcount
            self._conclude(db, job_id, now)
            return count


class _AttemptRows(_Store):
    """The attempts table: every attempt, recorded before its worker starts."""

    def start_attempt(self, job_id: str, index: int, worker_of: Any, now: float) -> int | None:
        """Record the next attempt of a pending task as running; return its number.

        ``worker_of(attempt)`` names the worker. Returns None when the task is not pending
        (someone else took it) or the job has finished (e.g. it was cancelled meanwhile).
        The job becomes running with its first attempt.
        """
        with self.transaction() as db:
            row = db.execute(
                "SELECT t.attempts FROM tasks t JOIN jobs j ON j.id = t.job "
                "WHERE t.job = ? AND t.idx = ? AND t.state = ? AND j.state IN (?, ?)",
                (job_id, index, TaskState.PENDING.value, *_ACTIVE),
            ).fetchone()
            if row is None:
                return None
            attempt = row[0] + 1
            db.execute(
                "UPDATE tasks SET state = ?, attempts = ?, started = COALESCE(started, ?) "
                "WHERE job = ? AND idx = ?",
                (TaskState.RUNNING.value, attempt, now, job_id, index),
            )
            db.execute(
                "INSERT INTO attempts (job, idx, attempt, worker, state, started) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (job_id, index, attempt, worker_of(attempt), ATTEMPT_RUNNING, now),
            )
            db.execute(
                "UPDATE jobs SET state = ?, started = COALESCE(started, ?) "
                "WHERE id = ? AND state = ?",
                (JobState.RUNNING.value, now, job_id, JobState.QUEUED.value),
            )
            return attempt

    def finish_attempt(
        self,
        job_id: str,
        index: int,
        attempt: int,
        outcome: dict[str, Any],
        *,
        task_state: TaskState,
        charge: bool,
        not_before: float,
        now: float,
    ) -> bool:
        """Commit an attempt's outcome and its task's new state, exactly once.

        When this makes the job's last task final, the job finishes in the same transaction
        (``finish_if_done``). Returns False (changing nothing) when the attempt is no longer
        running: its outcome was committed before, or the job was deleted.
        """
        attempt_state = ATTEMPT_SUCCEEDED if outcome.get("succeeded") else ATTEMPT_FAILED
        with self.transaction() as db:
            cursor = db.execute(
                "UPDATE attempts SET state = ?, finished = ?, outcome = ? "
                "WHERE job = ? AND idx = ? AND attempt = ? AND state = ?",
                (attempt_state, now, json.dumps(outcome), job_id, index, attempt, ATTEMPT_RUNNING),
            )
            if cursor.rowcount != 1:
                return False
            final = task_state != TaskState.PENDING
            db.execute(
                "UPDATE tasks SET state = ?, exit_code = ?, reason = ?, detail = ?, "
                "finished = ?, bytes = ?, truncated = ?, charged = charged + ?, "
                "not_before = ? WHERE job = ? AND idx = ?",
                (
                    task_state.value,
                    outcome.get("exit-code"),
                    outcome.get("reason"),
                    outcome.get("detail", ""),
                    now if final else None,
                    outcome.get("bytes", 0),
                    int(bool(outcome.get("truncated"))),
                    int(charge),
                    not_before,
                    job_id,
                    index,
                ),
            )
            if final:
                self._conclude(db, job_id, now)
            return True

    def attempts(self, job_id: str | None = None, state: str | None = None) -> list[AttemptRecord]:
        """Return attempts, optionally of one job and/or in one state."""
        sql = "SELECT job, idx, attempt, worker, state, started, finished, outcome FROM attempts"
        clauses, args = [], []
        if job_id is not None:
            clauses.append("job = ?")
            args.append(job_id)
        if state is not None:
            clauses.append("state = ?")
            args.append(state)
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY job, idx, attempt"
        return [_attempt_from_row(row) for row in self._query(sql, args)]

    def last_attempt(self, job_id: str, index: int) -> AttemptRecord | None:
        """Return the task's latest attempt (running or ended), None before its first."""
        rows = self._query(
            "SELECT job, idx, attempt, worker, state, started, finished, outcome FROM attempts "
            "WHERE job = ? AND idx = ? ORDER BY attempt DESC LIMIT 1",
            (job_id, index),
        )
        return _attempt_from_row(rows[0]) if rows else None

    def final_attempts(self, job_id: str) -> list[AttemptRecord]:
        """Return the last attempt of every finished task of the job, by index."""
        return [
            _attempt_from_row(row)
            for row in self._query(
                "SELECT a.job, a.idx, a.attempt, a.worker, a.state, a.started, a.finished, "
                "a.outcome FROM attempts a JOIN tasks t ON t.job = a.job AND t.idx = a.idx "
                "AND t.attempts = a.attempt WHERE a.job = ? AND t.state IN (?, ?) "
                "AND a.state != ? ORDER BY a.idx",
                (job_id, TaskState.SUCCEEDED.value, TaskState.FAILED.value, ATTEMPT_RUNNING),
            )
        ]

    def usage_totals(self, job_id: str) -> dict[str, float | int | None]:
        """Sum the usage of every ended attempt of the job (computed in SQL; None: unknown).

        ``cpu-wall-seconds`` is the wall time of the attempts whose CPU time is known (the
        denominator of the job's CPU efficiency).
        """
        figures = {
            "attempts": "COUNT(*)",
            "wall-seconds": f"SUM({_OUTCOME_FIELD.format('wall-seconds')})",
            "cpu-user-seconds": f"SUM({_OUTCOME_FIELD.format('cpu-user-seconds')})",
            "cpu-system-seconds": f"SUM({_OUTCOME_FIELD.format('cpu-system-seconds')})",
            "cpu-wall-seconds": (
                f"SUM(CASE WHEN {_OUTCOME_FIELD.format('cpu-user-seconds')} IS NOT NULL "
                f"THEN {_OUTCOME_FIELD.format('wall-seconds')} END)"
            ),
            "memory-peak-bytes": f"MAX({_OUTCOME_FIELD.format('memory-peak-bytes')})",
            "oom-kills": f"SUM({_OUTCOME_FIELD.format('oom-kills')})",
        }
        row = self._query(
            f"SELECT {', '.join(figures.values())} FROM attempts "  # noqa: S608 - constants
            "WHERE job = ? AND outcome IS NOT NULL AND state != ?",
            (job_id, ATTEMPT_RUNNING),
        )[0]
        return dict(zip(figures, row, strict=True))

    def host_counts(self, job_id: str) -> dict[str, int]:
        """Return host -> finished tasks whose last attempt ran there (hosts that are known)."""
        rows = self._query(
            "SELECT json_extract(a.outcome, '$.host') AS host, COUNT(*) FROM attempts a "
            "JOIN tasks t ON t.job = a.job AND t.idx = a.idx AND t.attempts = a.attempt "
            "WHERE a.job = ? AND t.state IN (?, ?) AND a.outcome IS NOT NULL "
            "GROUP BY host HAVING host IS NOT NULL AND host != '' ORDER BY host",
            (job_id, TaskState.SUCCEEDED.value, TaskState.FAILED.value),
        )
        return {str(host): int(count) for host, count in rows}


class Ledger(_JobRows, _TaskRows, _AttemptRows):
    """The job ledger of one state directory; safe to share between threads."""

    def heartbeat(self, pid: int, role: str, now: float | None = None) -> None:
        """Record that an engine (the agent, or an in-process one) is alive."""
        now = time.time() if now is None else now
        with self.transaction() as db:
            db.execute(
                "INSERT INTO agent (id, pid, role, heartbeat) VALUES (1, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET pid = excluded.pid, role = excluded.role, "
                "heartbeat = excluded.heartbeat",
                (pid, role, now),
            )

    def last_heartbeat(self) -> tuple[int, str, float] | None:
        """Return (pid, role, time) of the last heartbeat, or None."""
        rows = self._query("SELECT pid, role, heartbeat FROM agent WHERE id = 1")
        return (rows[0][0], rows[0][1], rows[0][2]) if rows else None

    def clear_heartbeat(self, pid: int) -> None:
        """Forget the heartbeat of ``pid`` (a clean shutdown)."""
        with self.transaction() as db:
            db.execute("DELETE FROM agent WHERE id = 1 AND pid = ?", (pid,))


def _job_record(row: tuple[Any, ...]) -> JobRecord:
    return JobRecord(
        id=row[0],
        name=row[1],
        state=JobState(row[2]),
        params=json.loads(row[3]),
        backend=row[4],
        task_count=row[5],
        created=row[6],
        started=row[7],
        finished=row[8],
        deadline=row[9],
    )


def _attempt_from_row(row: Sequence[Any]) -> AttemptRecord:
    """Build an AttemptRecord from a row: job, idx, attempt, worker, state, times, outcome."""
    outcome = json.loads(row[7]) if row[7] else None
    return AttemptRecord(row[0], row[1], row[2], row[3], row[4], row[5], row[6], outcome)
