"""A task's output as ``kubectl logs`` shows a pod's: live while it runs, then its results.

While an attempt runs, its stdout or stderr is read from its worker (``LiveRead``: the LXD
backend's ``live``, on this host's daemon) from an offset, so the first lines of a task show
before it ends; once the attempt ended, from the task's results tree. Nothing is held whole:
reads go in chunks of ``CHUNK_BYTES``, and a tail keeps at most ``TAIL_BYTES``.
"""

import collections
import datetime
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import results
from .ledger import ATTEMPT_RUNNING, Ledger, TaskRecord
from .model import TaskState

CHUNK_BYTES = 64 * 1024
TAIL_BYTES = 1 << 20  # a tail shows at most this much of its last lines
POLL_SECONDS = 0.25
STREAMS = ("stdout", "stderr")

# (worker, attempt id, stream, offset, limit) -> bytes, or None: not readable live now.
LiveRead = Callable[[str, str, str, int, int], bytes | None]


@dataclass
class Position:
    """Where a reader is in a task's output: which attempt, how far into it."""

    attempt: int = 0
    offset: int = 0


class TaskLogs:
    """Reads the output of one state directory's tasks."""

    def __init__(self, ledger: Ledger, state_dir: Path, live: LiveRead | None) -> None:
        """Read from ``ledger``'s attempts; ``live``: how running ones are read (None: not)."""
        self.ledger = ledger
        self.state_dir = state_dir
        self.live = live

    def read(self, job_id: str, index: int, stream: str, at: Position) -> tuple[bytes, bool]:
        """The next bytes of the task's output after ``at`` (which follows a new attempt).

        Returns the bytes and whether the attempt still runs (then more may come).
        """
        attempt = self.ledger.last_attempt(job_id, index)
        if attempt is None:
            return b"", False
        if attempt.attempt != at.attempt:  # a new attempt: its output from the start
            at.attempt, at.offset = attempt.attempt, 0
        if attempt.state == ATTEMPT_RUNNING:
            attempt_id = f"{job_id}/{index}/{attempt.attempt}"
            data = None
            if self.live is not None:
                data = self.live(attempt.worker, attempt_id, stream, at.offset, CHUNK_BYTES)
            return data or b"", True
        path = results.task_dir(self.state_dir, job_id, index) / stream
        return _read_at(path, at.offset, CHUNK_BYTES), False

    def tail(self, job_id: str, index: int, stream: str, lines: int, at: Position) -> bytes:
        """The last ``lines`` lines written so far (within ``TAIL_BYTES``); ``at`` moves on."""
        kept: collections.deque[bytes] = collections.deque()
        size = 0
        while True:
            data, _running = self.read(job_id, index, stream, at)
            if not data:
                break
            at.offset += len(data)
            kept.append(data)
            size += len(data)
            while size - len(kept[0]) >= TAIL_BYTES:
                size -= len(kept.popleft())
        text = b"".join(kept)[-TAIL_BYTES:]
        parts = text.split(b"\n")
        ended = text.endswith(b"\n")
        chosen = parts[-(lines + 1) :] if ended else parts[-lines:]
        return b"\n".join(chosen) if lines else b""

    def follow(
        self,
        job_id: str,
        index: int,
        stream: str,
        write: Callable[[bytes], None],
        *,
        follow: bool,
        tail: int = -1,
        new_attempt: Callable[[int], None] | None = None,
        poll: float = POLL_SECONDS,
    ) -> TaskRecord | None:
        """Write the task's output, and return the task as it is then.

        With ``follow``, until the task ends (waiting for it to start); ``tail`` >= 0: only
        its last lines so far first; ``new_attempt`` hears of each attempt after the first.
        """
        at = Position()
        if tail >= 0:
            write(self.tail(job_id, index, stream, tail, at))
        shown = at.attempt
        while True:
            data, running = self.read(job_id, index, stream, at)
            if at.attempt != shown and new_attempt is not None and shown:
                new_attempt(at.attempt)
            shown = at.attempt
            if data:
                write(data)
                at.offset += len(data)
                continue
            task = self.ledger.task(job_id, index)
            ended = task is None or task.state in (TaskState.SUCCEEDED, TaskState.FAILED)
            if not follow or (ended and not running):
                return task
            time.sleep(poll)


def _read_at(path: Path, offset: int, limit: int) -> bytes:
    """Up to ``limit`` bytes of a results file from ``offset`` (b"" when there is none)."""
    try:
        with path.open("rb") as file:
            file.seek(offset)
            return file.read(limit)
    except OSError:
        return b""


class Timestamps:
    """Prefixes each line with the time it was read (``--timestamps``)."""

    def __init__(self, write: Callable[[bytes], None]) -> None:
        """Pass the stamped bytes to ``write``."""
        self.write = write
        self._at_line_start = True

    def __call__(self, data: bytes) -> None:
        """Stamp the lines that start in ``data``."""
        stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
        out = bytearray()
        for line in data.splitlines(keepends=True):
            if self._at_line_start:
                out += stamp.encode() + b" "
            out += line
            self._at_line_start = line.endswith(b"\n")
        self.write(bytes(out))
