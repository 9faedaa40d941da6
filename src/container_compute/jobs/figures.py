"""What the metrics sampler reads from a ledger: counts now, and rows that changed since a time.

``LedgerFigures`` opens its own connection to the state dir's ledger: its reads (WAL
snapshots) never take the lock the engine's ledger holds, and never block a writer.
"""

import json
from dataclasses import dataclass
from typing import Any

from .ledger import _ACTIVE, ATTEMPT_RUNNING, _Store
from .model import JOB_STATES, TaskState


@dataclass(frozen=True)
class EndedAttempt:
    """An attempt whose outcome was committed: what the metrics count of it."""

    key: tuple[str, int, int]
    finished: float
    seconds: float
    outcome: dict[str, Any]


@dataclass(frozen=True)
class FinishedTask:
    """A task that reached its final state."""

    key: tuple[str, int, float]
    finished: float
    state: str
    reason: str | None


@dataclass(frozen=True)
class StartedAttempt:
    """An attempt that started, with how long its task waited for it (first attempts)."""

    key: tuple[str, int, int]
    started: float
    waited: float | None


class LedgerFigures(_Store):
    """Read-only figures of one state directory's ledger (its own connection)."""

    def job_state_counts(self) -> dict[str, int]:
        """Jobs by state, every state present (0 when none)."""
        counts = dict.fromkeys(JOB_STATES, 0)
        for state, count in self._query("SELECT state, COUNT(*) FROM jobs GROUP BY state"):
            counts[str(state)] = int(count)
        return counts

    def active_task_counts(self) -> dict[str, int]:
        """Pending and running tasks of queued and running jobs."""
        wanted = (TaskState.PENDING.value, TaskState.RUNNING.value)
        counts: dict[str, int] = dict.fromkeys(wanted, 0)
        rows = self._query(
            "SELECT t.state, COUNT(*) FROM tasks t JOIN jobs j ON j.id = t.job "
            "WHERE j.state IN (?, ?) AND t.state IN (?, ?) GROUP BY t.state",
            (*_ACTIVE, *wanted),
        )
        for state, count in rows:
            counts[str(state)] = int(count)
        return counts

    def oldest_pending_since(self) -> float | None:
        """When the longest-waiting pending task became due (job created, or retry due)."""
        row = self._query(
            "SELECT MIN(MAX(j.created, t.not_before)) FROM tasks t JOIN jobs j ON j.id = t.job "
            "WHERE j.state IN (?, ?) AND t.state = ?",
            (*_ACTIVE, TaskState.PENDING.value),
        )[0]
        return None if row[0] is None else float(row[0])

    def tasks_submitted_since(self, since: float) -> list[tuple[str, float, int]]:
        """Jobs created at or after ``since``: id, created, task count."""
        return [
            (str(job), float(created), int(count))
            for job, created, count in self._query(
                "SELECT id, created, task_count FROM jobs WHERE created >= ?", (since,)
            )
        ]

    def tasks_finished_since(self, since: float) -> list[FinishedTask]:
        """Tasks that reached a final state at or after ``since``."""
        rows = self._query(
            "SELECT job, idx, finished, state, reason FROM tasks WHERE finished >= ? "
            "AND state IN (?, ?)",
            (since, TaskState.SUCCEEDED.value, TaskState.FAILED.value),
        )
        return [
            FinishedTask((str(job), int(idx), float(end)), float(end), str(state), reason)
            for job, idx, end, state, reason in rows
        ]

    def attempts_ended_since(self, since: float) -> list[EndedAttempt]:
        """Attempts whose outcome was committed at or after ``since``."""
        rows = self._query(
            "SELECT job, idx, attempt, started, finished, outcome FROM attempts "
            "WHERE finished >= ? AND state != ? AND outcome IS NOT NULL",
            (since, ATTEMPT_RUNNING),
        )
        ended = []
        for job, idx, attempt, started, finished, outcome in rows:
            record = _json_object(outcome)
            seconds = record.get("wall-seconds")
            if not isinstance(seconds, (int, float)):
                seconds = float(finished) - float(started)
            ended.append(
                EndedAttempt((str(job), int(idx), int(attempt)), float(finished), seconds, record)
            )
        return ended

    def attempts_started_since(self, since: float) -> list[StartedAttempt]:
        """Attempts started at or after ``since``; a first attempt says how long it waited."""
        rows = self._query(
            "SELECT a.job, a.idx, a.attempt, a.started, j.created FROM attempts a "
            "JOIN jobs j ON j.id = a.job WHERE a.started >= ?",
            (since,),
        )
        return [
            StartedAttempt(
                (str(job), int(idx), int(attempt)),
                float(started),
                max(0.0, float(started) - float(created)) if attempt == 1 else None,
            )
            for job, idx, attempt, started, created in rows
        ]


def _json_object(text: str) -> dict[str, Any]:
    """An attempt's outcome record; {} when it is not a JSON object (a damaged row)."""
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
