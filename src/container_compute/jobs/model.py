"""The job model's vocabulary: job and task states, and index ranges like ``0-3,7``.

Why an attempt failed (``FailureReason``) is the backends' vocabulary: see ``backends``.
"""

import re
from collections.abc import Iterable
from enum import Enum
from typing import Any


class JobState(str, Enum):
    """Where a job is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """True once the job can change no more."""
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class TaskState(str, Enum):
    """Where one task is in its life."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


JOB_STATES = tuple(s.value for s in JobState)

MAX_TASKS = 100_000  # the most tasks a job can have
# launch-job's isolation: a fresh sandbox per task in warm workers, or a fresh worker per task.
SANDBOX = "sandbox"
CONTAINER = "container"
ISOLATIONS = (SANDBOX, CONTAINER)
MAX_RANGE_ITEMS = 1000  # comma-separated indexes and ranges in one list
MAX_RANGES_CHARS = 16 * 1024
_RANGE_RE = re.compile(r"\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?")


def format_ranges(indexes: Iterable[int]) -> str:
    """Return sorted indexes as compact ranges: ``[0, 1, 2, 3, 7]`` -> ``"0-3,7"``."""
    parts: list[str] = []
    run_start = previous = None
    for index in sorted(set(indexes)):
        if previous is not None and index == previous + 1:
            previous = index
            continue
        if run_start is not None:
            parts.append(str(run_start) if run_start == previous else f"{run_start}-{previous}")
        run_start = previous = index
    if run_start is not None:
        parts.append(str(run_start) if run_start == previous else f"{run_start}-{previous}")
    return ",".join(parts)


def check_ranges(text: str, task_count: int | None = None) -> list[tuple[int, int]]:
    """Return the ``(first, last)`` pairs of ``text`` such as ``0-3,7``, without expanding them.

    Every index must be below ``task_count``, or below ``MAX_TASKS`` when the job is not known.

    Raises:
        ValueError: when ``text`` is too long or not ranges, a range runs backwards, or an
            index is out of range.
    """
    limit = MAX_TASKS if task_count is None else task_count
    if len(text) > MAX_RANGES_CHARS:
        raise ValueError(f"is over {MAX_RANGES_CHARS} characters")
    if text.count(",") >= MAX_RANGE_ITEMS:
        raise ValueError(f"has more than {MAX_RANGE_ITEMS} comma-separated indexes and ranges")
    pairs: list[tuple[int, int]] = []
    for part in text.split(","):
        match = _RANGE_RE.fullmatch(part)
        if match is None:
            shown = text if len(text) <= 64 else text[:61] + "..."
            raise ValueError(f"{shown!r} is not a list of indexes and ranges such as 0-3,7")
        first, last = match.group(1), match.group(2) or match.group(1)
        for digits in (first, last):
            # The length first: a number of thousands of digits is never converted.
            if len(digits.lstrip("0")) > len(str(limit)) or int(digits) >= limit:
                raise ValueError(_out_of_range(digits, task_count))
        if int(last) < int(first):
            raise ValueError(f"range {part.strip()!r} runs backwards")
        pairs.append((int(first), int(last)))
    return pairs


def _out_of_range(digits: str, task_count: int | None) -> str:
    shown = digits if len(digits) <= 20 else digits[:17] + "..."
    if task_count is None:
        return f"index {shown} is out of range (a job has at most {MAX_TASKS} tasks)"
    return f"index {shown} is out of range (the job has {task_count} tasks: 0-{task_count - 1})"


def parse_ranges(text: str, task_count: int) -> list[int]:
    """Return the sorted indexes in ``text`` such as ``0-3,7``, each below ``task_count``.

    Raises:
        ValueError: as ``check_ranges``, before anything is expanded.
    """
    indexes: set[int] = set()
    for first, last in check_ranges(text, task_count):
        indexes.update(range(first, last + 1))
    return sorted(indexes)


def reuses_workers(params: dict[str, Any]) -> bool:
    """Whether a recorded job keeps warm workers for its tasks (isolation=sandbox).

    Jobs recorded before ``isolation`` existed reused workers only with reuse-workers.
    """
    isolation = params.get("isolation")
    if isolation:
        return isolation == SANDBOX
    return bool(params.get("reuse_workers"))


MAX_EXIT_CODE = 255


def exit_codes(text: str) -> frozenset[int]:
    """The exit codes in ``text`` such as ``3,64-78`` (empty: none).

    Raises:
        ValueError: as ``check_ranges``, for a code over 255 too.
    """
    return frozenset(parse_ranges(text, MAX_EXIT_CODE + 1)) if text.strip() else frozenset()
