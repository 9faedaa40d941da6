"""The job model's vocabulary: job and task states, and index ranges like ``0-3,7``.

Why an attempt failed (``FailureReason``) is the backends' vocabulary: see ``backends``.
"""

import re
from collections.abc import Iterable
from enum import Enum


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

_RANGES_RE = re.compile(r"^\s*\d+(\s*-\s*\d+)?(\s*,\s*\d+(\s*-\s*\d+)?)*\s*$")


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


def parse_ranges(text: str, limit: int | None = None) -> list[int]:
    """Return the sorted indexes in ``text`` such as ``0-3,7``.

    Raises:
        ValueError: when ``text`` is not ranges, a range runs backwards, or an index is not
            below ``limit``.
    """
    if not _RANGES_RE.match(text):
        raise ValueError(f"{text!r} is not a list of indexes and ranges such as 0-3,7")
    indexes: set[int] = set()
    for part in text.split(","):
        first, _, last = (p.strip() for p in part.partition("-"))
        low, high = int(first), int(last or first)
        if high < low:
            raise ValueError(f"range {part.strip()!r} runs backwards")
        if limit is not None and high >= limit:
            raise ValueError(
                f"index {high} is out of range (the job has {limit} tasks: 0-{limit - 1})"
            )
        if high - low > 1_000_000:
            raise ValueError(f"range {part.strip()!r} is too long")
        indexes.update(range(low, high + 1))
    return sorted(indexes)
