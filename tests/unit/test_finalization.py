"""A job's end in the ledger, and the privacy of the state directory.

A job reaches its final state in the transaction that makes its last task final (success,
failure, the deadline) or that cancels it, with its environment values redacted there and
then; the database files and everything else under the state directory are private.
"""

import json
import os
import sqlite3
import stat
import time
from pathlib import Path

import pytest

from container_compute.backends import WorkerSpec
from container_compute.jobs import results
from container_compute.jobs.ledger import ENV_REDACTED, Ledger
from container_compute.jobs.model import JobState, TaskState
from container_compute.jobs.params import LaunchJobParams
from container_compute.jobs.scheduler import EngineLock

from .fake_backend import FakeBackend, Plan, make_engine, run_until_done

SECRET = "s3cr3t-Value-0123456789"
OK = {"succeeded": True, "exit-code": 0}
BAD = {"succeeded": False, "exit-code": 1, "reason": "exit-code"}


def record(ledger: Ledger, tasks: int = 2, env: tuple[str, ...] = ()) -> str:
    return ledger.create_job(
        {"command": "true", "env": list(env)},
        name="n",
        backend="lxd",
        task_count=tasks,
        inputs=(),
        deadline_seconds=0,
    )


def start(ledger: Ledger, job_id: str, index: int) -> int:
    attempt = ledger.start_attempt(job_id, index, lambda n: f"w-{index}-{n}", time.time())
    assert attempt is not None
    return attempt


def finish(ledger: Ledger, job_id: str, index: int, state: TaskState, now: float) -> bool:
    outcome = OK if state == TaskState.SUCCEEDED else BAD
    return ledger.finish_attempt(
        job_id, index, 1, outcome, task_state=state, charge=True, not_before=now, now=now
    )


def database_bytes(state_dir: Path) -> bytes:
    """The bytes of the ledger's database, -wal and -shm files."""
    return b"".join(
        path.read_bytes() for path in state_dir.glob("ledger.sqlite3*") if path.is_file()
    )


@pytest.mark.parametrize(
    ("last", "expected"),
    [(TaskState.SUCCEEDED, JobState.SUCCEEDED), (TaskState.FAILED, JobState.FAILED)],
)
def test_the_last_commit_finishes_the_job_in_its_own_transaction(
    tmp_path: Path, last: TaskState, expected: JobState
) -> None:
    ledger = Ledger(tmp_path)
    job_id = record(ledger, 3)
    for index in range(3):
        start(ledger, job_id, index)
    assert finish(ledger, job_id, 0, TaskState.SUCCEEDED, 100.0)
    assert finish(ledger, job_id, 1, TaskState.PENDING, 101.0)  # a retry: not final
    assert ledger.job(job_id).state == JobState.RUNNING  # type: ignore[union-attr]
    retry = start(ledger, job_id, 1)
    assert ledger.finish_attempt(
        job_id, 1, retry, OK, task_state=TaskState.SUCCEEDED, charge=False, not_before=0, now=102
    )
    assert ledger.job(job_id).state == JobState.RUNNING  # type: ignore[union-attr]
    assert finish(ledger, job_id, 2, last, 103.0)
    # another connection (another process) sees the job finished, with no engine involved
    job = Ledger(tmp_path).job(job_id)
    assert job is not None and (job.state, job.finished) == (expected, 103.0)
    assert not finish(ledger, job_id, 2, TaskState.FAILED, 104.0)  # exactly once
    assert ledger.job(job_id).finished == 103.0  # type: ignore[union-attr]


def test_a_failed_commit_leaves_neither_task_nor_job_changed(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    job_id = record(ledger, 1)
    start(ledger, job_id, 0)
    with ledger.transaction() as db:  # finishing the job fails: so must the whole commit
        db.execute(
            "CREATE TRIGGER refuse BEFORE UPDATE OF state ON jobs "
            "BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
    with pytest.raises(sqlite3.IntegrityError):
        finish(ledger, job_id, 0, TaskState.SUCCEEDED, 100.0)
    assert ledger.task(job_id, 0).state == TaskState.RUNNING  # type: ignore[union-attr]
    assert ledger.attempts(job_id, state="running") != []


def test_the_deadline_fails_the_job_with_its_pending_tasks(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    idle = record(ledger, 3)
    assert ledger.fail_pending(idle, "deadline", "late", 50.0) == 3
    job = ledger.job(idle)
    assert job is not None and (job.state, job.finished) == (JobState.FAILED, 50.0)
    busy = record(ledger, 3)
    start(ledger, busy, 0)
    assert ledger.fail_pending(busy, "deadline", "late", 60.0) == 2
    assert ledger.job(busy).state == JobState.RUNNING  # type: ignore[union-attr]
    assert finish(ledger, busy, 0, TaskState.FAILED, 61.0)  # the stopped attempt
    job = ledger.job(busy)
    assert job is not None and (job.state, job.finished) == (JobState.FAILED, 61.0)


def test_cancel_is_final_at_once_and_later_commits_keep_it(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    job_id = record(ledger, 3, env=(f"TOKEN={SECRET}",))
    start(ledger, job_id, 0)
    assert ledger.set_job_state(job_id, JobState.CANCELLED, 70.0)
    assert ledger.job(job_id).params["env"] == [f"TOKEN={ENV_REDACTED}"]  # type: ignore[union-attr]
    assert ledger.start_attempt(job_id, 1, lambda n: "w", 71.0) is None  # nothing new starts
    assert finish(ledger, job_id, 0, TaskState.FAILED, 72.0)
    job = ledger.job(job_id)
    assert job is not None and (job.state, job.finished) == (JobState.CANCELLED, 70.0)


def test_env_values_are_gone_from_the_files_when_the_job_ends(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    reader = Ledger(tmp_path)  # another client keeps the WAL from being removed at close
    job_id = record(ledger, 1, env=(f"TOKEN={SECRET}", "MODE=x=y"))
    start(ledger, job_id, 0)
    assert SECRET.encode() in database_bytes(tmp_path)
    assert reader.job(job_id).params["env"][0] == f"TOKEN={SECRET}"  # type: ignore[union-attr]
    assert finish(ledger, job_id, 0, TaskState.SUCCEEDED, 80.0)
    assert reader.job(job_id).params["env"] == [  # type: ignore[union-attr]
        f"TOKEN={ENV_REDACTED}",
        f"MODE={ENV_REDACTED}",
    ]
    assert SECRET.encode() not in database_bytes(tmp_path)
    assert b"x=y" not in database_bytes(tmp_path)


def test_opening_an_older_ledger_redacts_its_finished_jobs(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    finished, running = record(ledger, env=(f"A={SECRET}",)), record(ledger, env=("B=keep",))
    with ledger.transaction() as db:  # as an older version left them
        db.execute("UPDATE jobs SET state = 'succeeded' WHERE id = ?", (finished,))
        db.execute("PRAGMA user_version = 0")
    ledger.close()
    opened = Ledger(tmp_path)
    assert opened.job(finished).params["env"] == [f"A={ENV_REDACTED}"]  # type: ignore[union-attr]
    assert opened.job(running).params["env"] == ["B=keep"]  # type: ignore[union-attr]
    assert SECRET.encode() not in database_bytes(tmp_path)


def test_a_job_an_older_version_left_running_is_finished_by_the_engine(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, FakeBackend())
    job_id = engine.submit(LaunchJobParams(command="true", tasks=2)).id
    run_until_done(engine)
    with engine.ledger.transaction() as db:  # the wedge of issue item 3
        db.execute("UPDATE jobs SET state = 'running', finished = NULL WHERE id = ?", (job_id,))
    results.joblog_path(tmp_path, job_id).unlink()
    assert engine.ledger.finish_if_done(job_id) == JobState.SUCCEEDED
    with engine.ledger.transaction() as db:
        db.execute("UPDATE jobs SET state = 'running', finished = NULL WHERE id = ?", (job_id,))
    run_until_done(engine)
    assert engine.ledger.job(job_id).state == JobState.SUCCEEDED  # type: ignore[union-attr]
    assert len(results.joblog_path(tmp_path, job_id).read_text().splitlines()) == 3


def test_each_commit_writes_the_joblog_of_the_job_it_finished(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, FakeBackend())
    job_id = engine.submit(LaunchJobParams(command="true", tasks=3)).id
    engine.step()
    engine.drain(10)  # every attempt committed by its thread; no further pass of the engine
    assert engine.ledger.job(job_id).state == JobState.SUCCEEDED  # type: ignore[union-attr]
    assert len(results.joblog_path(tmp_path, job_id).read_text().splitlines()) == 4


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_an_older_world_readable_state_dir_is_made_private(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o755)
    state_dir.chmod(0o755)
    sqlite3.connect(state_dir / "ledger.sqlite3").execute("PRAGMA journal_mode=WAL").close()
    os.chmod(state_dir / "ledger.sqlite3", 0o644)
    (state_dir / "engine.lock").touch(mode=0o644)
    os.chmod(state_dir / "engine.lock", 0o644)
    Ledger(state_dir)
    assert mode(state_dir) == 0o700
    assert mode(state_dir / "ledger.sqlite3") == 0o600
    assert EngineLock(state_dir).acquire()
    assert mode(state_dir / "engine.lock") == 0o600


def test_everything_a_job_leaves_is_private(tmp_path: Path) -> None:
    state_dir = tmp_path / "fresh"
    os.umask(previous := os.umask(0o022))

    def plan(spec: WorkerSpec) -> Plan:
        return Plan(stdout=spec.env["TOKEN"], files={"copy": spec.env["TOKEN"]})

    engine = make_engine(state_dir, FakeBackend(plan))
    job_id = engine.submit(LaunchJobParams(command="true", tasks=2, env=[f"TOKEN={SECRET}"])).id
    reader = Ledger(state_dir)
    run_until_done(engine)
    assert EngineLock(state_dir).acquire()
    assert previous == 0o022  # the test ran with an ordinary umask
    seen = []
    for path in [state_dir, *state_dir.rglob("*")]:
        seen.append(path.name)
        expected = 0o700 if path.is_dir() else 0o600
        assert mode(path) & 0o077 == 0 and mode(path) & 0o700 == expected, (path, oct(mode(path)))
    assert {"ledger.sqlite3", "ledger.sqlite3-wal", "engine.lock", "joblog.tsv"} <= set(seen)
    assert {"stdout", "copy", "outcome.json"} <= set(seen)
    assert reader.job(job_id).params["env"] == [f"TOKEN={ENV_REDACTED}"]  # type: ignore[union-attr]
    assert SECRET.encode() not in database_bytes(state_dir)
    assert json.loads((results.task_dir(state_dir, job_id, 0) / "outcome.json").read_text())


WRITER = """
import sys
from pathlib import Path
from container_compute.jobs.ledger import Ledger
ledger = Ledger(Path(sys.argv[1]))
ledger.heartbeat(int(sys.argv[2]), "agent")
if sys.argv[3] == "stay":
    print("ready", flush=True)
    sys.stdin.read()
ledger.close()
"""


def test_opening_a_ledger_keeps_the_locks_of_the_others_in_the_process(tmp_path: Path) -> None:
    """Other processes' writes stay visible while this one opens and closes ledgers."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}

    def writer(pid: int, stay: bool) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), str(pid), "stay" if stay else "go"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    kept = Ledger(tmp_path)
    kept.heartbeat(1, "agent")
    Ledger(tmp_path).close()  # another client in this process comes and goes
    first = writer(2, stay=False)
    assert first.wait(30) == 0  # the last connection closing would checkpoint and delete the WAL
    second = writer(3, stay=True)
    try:
        assert second.stdout is not None and second.stdout.readline() == "ready\n"
        assert kept.last_heartbeat()[0] == 3  # type: ignore[index]
        assert Ledger(tmp_path).last_heartbeat()[0] == 3  # type: ignore[index]
    finally:
        second.communicate("", timeout=30)
