"""Reading a task's output: bounded tails, timestamps at line starts, live before results."""

import re
import time
from pathlib import Path

from container_compute.jobs import logs, results
from container_compute.jobs.ledger import Ledger
from container_compute.jobs.logs import Position, TaskLogs, Timestamps
from container_compute.jobs.model import TaskState


def finished_job(tmp_path: Path, stdout: bytes) -> tuple[Ledger, str]:
    ledger = Ledger(tmp_path)
    job = ledger.create_job(
        {"command": "x"}, name="", backend="lxd", task_count=1, inputs=(), deadline_seconds=0
    )
    now = time.time()
    ledger.start_attempt(job, 0, lambda n: f"w{n}", now)
    task_dir = results.task_dir(tmp_path, job, 0)
    task_dir.mkdir(parents=True)
    (task_dir / "stdout").write_bytes(stdout)
    ledger.finish_attempt(
        job,
        0,
        1,
        {"succeeded": True},
        task_state=TaskState.SUCCEEDED,
        charge=False,
        not_before=now,
        now=now,
    )
    return ledger, job


def test_a_tail_is_the_last_lines(tmp_path: Path) -> None:
    ledger, job = finished_job(tmp_path, b"".join(b"line %d\n" % i for i in range(10)))
    reader = TaskLogs(ledger, tmp_path, live=None)
    assert reader.tail(job, 0, "stdout", 3, Position()) == b"line 7\nline 8\nline 9\n"
    assert reader.tail(job, 0, "stdout", 0, Position()) == b""
    at = Position()
    assert reader.tail(job, 0, "stdout", 100, at).count(b"\n") == 10
    assert at.offset == 70  # a follow goes on from the end


def test_a_tail_of_a_huge_output_holds_only_its_end(tmp_path: Path) -> None:
    big = b"x" * (3 * logs.TAIL_BYTES) + b"\nlast\n"
    ledger, job = finished_job(tmp_path, big)
    reader = TaskLogs(ledger, tmp_path, live=None)
    assert reader.tail(job, 0, "stdout", 1, Position()) == b"last\n"
    assert len(reader.tail(job, 0, "stdout", 2, Position())) <= logs.TAIL_BYTES


def test_a_running_attempt_is_read_live_from_its_offset(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    job = ledger.create_job(
        {"command": "x"}, name="", backend="lxd", task_count=1, inputs=(), deadline_seconds=0
    )
    ledger.start_attempt(job, 0, lambda n: f"w{n}", time.time())
    asked: list[tuple[str, str, int]] = []

    def live(worker: str, attempt: str, stream: str, offset: int, limit: int) -> bytes:
        asked.append((worker, attempt, offset))
        return b"hello\n"[offset:]

    at = Position()
    reader = TaskLogs(ledger, tmp_path, live)
    assert reader.read(job, 0, "stdout", at) == (b"hello\n", True)
    at.offset = 6
    assert reader.read(job, 0, "stdout", at) == (b"", True)
    assert asked == [("w1", f"{job}/0/1", 0), ("w1", f"{job}/0/1", 6)]


def test_timestamps_mark_each_line_start_across_chunks() -> None:
    out: list[bytes] = []
    stamp = Timestamps(out.append)
    stamp(b"one\ntw")
    stamp(b"o\nthree\n")
    lines = b"".join(out).decode().splitlines()
    assert [re.sub(r"^\S+ ", "", line) for line in lines] == ["one", "two", "three"]
    assert all(re.match(r"^\d{4}-\d\d-\d\dT\S+ ", line) for line in lines)
