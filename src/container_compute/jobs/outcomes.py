"""An attempt's outcome: what is recorded of it, and what becomes of its task.

``decide`` is the whole retry policy: success ends the task; a cancelled job or a passed
deadline fails it; a worker lost to the host (vanished, its LXD cluster member lost, or a
launch error within the free budget) runs it again without spending its retries, within a
bound and backed off; otherwise it is retried with exponential back-off while retries
remain, and fails after.
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..backends import FailureReason, TaskOutcome, WorkerSpec
from . import results
from .ledger import JobRecord, Ledger, TaskRecord
from .model import JobState, TaskState, exit_codes

BACKOFF_BASE_SECONDS = 10.0
BACKOFF_CAP_SECONDS = 360.0
DETAIL_CHARS = 500
VANISHED = "worker vanished"
# Launch errors retried without spending the task's retries, before they count.
FREE_LAUNCH_RETRIES = 3
# Attempts lost to the host (a vanished worker, a lost cluster member) run again without
# spending the task's retries, up to this many; the first at once, the next ones backed off.
FREE_HOST_RETRIES = 10

# Attempts stopped because their job ended: never retried.
_JOB_STOPS = (FailureReason.DEADLINE, FailureReason.CANCELLED, FailureReason.JOB_ENDED)

logger = logging.getLogger(__name__)


def backoff_delay(
    failures: int, base: float = BACKOFF_BASE_SECONDS, cap: float = BACKOFF_CAP_SECONDS
) -> float:
    """Return the wait before the next attempt after ``failures`` failed ones (1, 2, ...)."""
    return min(cap, base * 2 ** max(0, failures - 1))


@dataclass(frozen=True)
class Decision:
    """What becomes of a task after one attempt."""

    state: TaskState
    charge: bool
    not_before: float


def decide(
    task: TaskRecord,
    job_state: JobState,
    outcome: TaskOutcome,
    *,
    retries: int,
    vanished: bool,
    now: float,
    backoff_base: float = BACKOFF_BASE_SECONDS,
    backoff_cap: float = BACKOFF_CAP_SECONDS,
    retry_codes: frozenset[int] = frozenset(),
) -> Decision:
    """Return the task's next state; may set ``outcome.reason`` to CANCELLED.

    ``retry_codes`` (a job's retry-exit-codes): when given, a command's exit code outside
    them fails the task at once.
    """
    if outcome.succeeded:
        return Decision(TaskState.SUCCEEDED, False, now)
    if job_state == JobState.CANCELLED:
        outcome.reason = FailureReason.CANCELLED
        return Decision(TaskState.FAILED, True, now)
    if outcome.reason in _JOB_STOPS:
        return Decision(TaskState.FAILED, True, now)
    free = task.attempts - task.charged  # this attempt and the earlier ones not charged
    if vanished or outcome.reason == FailureReason.MEMBER_LOST:
        # The worker (or the cluster member it ran on) went away: the command is not to
        # blame, so it runs again, elsewhere, without spending the task's retries; but a
        # host that keeps losing it is not tried for ever.
        if free <= FREE_HOST_RETRIES:
            delay = 0.0 if free <= 1 else backoff_delay(free - 1, backoff_base / 5, backoff_cap)
            return Decision(TaskState.PENDING, False, now + delay)
        outcome.detail = (
            f"{outcome.detail}; {free} attempts of this task were lost to the host without "
            "counting: this one counts as a failed attempt"
        )
    if outcome.reason == FailureReason.LAUNCH_ERROR and free <= FREE_LAUNCH_RETRIES:
        # The host, not the command, failed (e.g. LXD refused an idmap under load): try
        # again soon without spending the task's retries.
        return Decision(TaskState.PENDING, False, now + backoff_base / 5)
    code = outcome.exit_code
    if retry_codes and outcome.reason == FailureReason.EXIT_CODE and code not in retry_codes:
        said = f"exit code {code} is not in retry-exit-codes: not retried"
        outcome.detail = f"{outcome.detail}; {said}" if outcome.detail else said
        return Decision(TaskState.FAILED, True, now)
    spent = task.charged - task.spent  # since the last retry-job
    if spent + 1 <= retries:
        delay = backoff_delay(spent + 1, backoff_base, backoff_cap)
        return Decision(TaskState.PENDING, True, now + delay)
    return Decision(TaskState.FAILED, True, now)


def failed(reason: FailureReason, detail: str) -> TaskOutcome:
    """Return the outcome of an attempt that ended before its command ran."""
    now = time.time()
    return TaskOutcome(
        exit_code=None, reason=reason, started_at=now, finished_at=now, detail=detail
    )


def outcome_record(spec: WorkerSpec, outcome: TaskOutcome) -> dict[str, Any]:
    """Return an attempt's outcome as the JSON record kept in the ledger and outcome.json."""
    total = outcome.stdout_bytes + outcome.stderr_bytes + outcome.files_bytes
    return {
        "worker": spec.worker_name,
        "attempt": spec.attempt,
        "succeeded": outcome.succeeded,
        "exit-code": outcome.exit_code,
        "reason": outcome.reason.value if outcome.reason else None,
        "detail": outcome.detail[:DETAIL_CHARS],
        "started-at": outcome.started_at,
        "finished-at": outcome.finished_at,
        "stdout-bytes": outcome.stdout_bytes,
        "stderr-bytes": outcome.stderr_bytes,
        "files-bytes": outcome.files_bytes,
        "bytes": total,
        "send": len(spec.env.get("TASK_INPUT", "").encode()),
        "truncated": outcome.truncated,
        "skipped": outcome.skipped[:20],
        "host": outcome.host,
        "wall-seconds": _wall_seconds(outcome),
        **outcome.usage.record(),
    }


def _wall_seconds(outcome: TaskOutcome) -> float | None:
    """The attempt's wall time (None when its start or end is unknown)."""
    if outcome.started_at <= 0 or outcome.finished_at < outcome.started_at:
        return None
    return round(outcome.finished_at - outcome.started_at, 6)


def job_ender(job: JobRecord, spec: WorkerSpec, outcome: TaskOutcome) -> str:
    """Why this attempt ends its whole job (its exit code is in fail-job-exit-codes), or ""."""
    code = outcome.exit_code
    if outcome.reason != FailureReason.EXIT_CODE or code is None:
        return ""
    if code not in exit_codes(str(job.params.get("fail_job_exit_codes") or "")):
        return ""
    return f"task {spec.task_index} exited {code}, one of fail-job-exit-codes"


class OutcomeCommitter:
    """Commits attempts' outcomes of one state directory: results first, then the ledger."""

    def __init__(
        self,
        state_dir: Path,
        ledger: Ledger,
        clock: Callable[[], float] = time.time,
        backoff_base: float = BACKOFF_BASE_SECONDS,
        backoff_cap: float = BACKOFF_CAP_SECONDS,
    ) -> None:
        """Commit into ``ledger`` and the results tree of ``state_dir``."""
        self.state_dir = state_dir
        self.ledger = ledger
        self.clock = clock
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap

    def commit(
        self,
        job: JobRecord,
        spec: WorkerSpec,
        outcome: TaskOutcome,
        temp: Path | None,
        vanished: bool = False,
    ) -> bool:
        """Install an attempt's results and commit its outcome exactly once; True if committed."""
        now = self.clock()
        task = self.ledger.task(job.id, spec.task_index)
        current = self.ledger.job(job.id)
        if task is None or current is None:
            return False
        decision = decide(
            task,
            current.state,
            outcome,
            retries=int(job.params.get("retries", 0)),
            vanished=vanished,
            now=now,
            backoff_base=self.backoff_base,
            backoff_cap=self.backoff_cap,
            retry_codes=exit_codes(str(job.params.get("retry_exit_codes") or "")),
        )
        ender = job_ender(job, spec, outcome)
        if ender:
            decision = Decision(TaskState.FAILED, True, now)
        record = outcome_record(spec, outcome)
        if temp is not None:
            results.write_outcome(temp, record)
            results.install_task_dir(
                temp, results.task_dir(self.state_dir, job.id, spec.task_index)
            )
        committed = self.ledger.finish_attempt(
            job.id,
            spec.task_index,
            spec.attempt,
            record,
            task_state=decision.state,
            charge=decision.charge,
            not_before=decision.not_before,
            now=now,
        )
        if committed:
            logger.info(
                "task %s/%s attempt %s: %s",
                job.id,
                spec.task_index,
                spec.attempt,
                record["reason"] or "succeeded",
            )
            if ender:
                logger.info("job %s ends: %s", job.id, ender)
                self.ledger.end_job(job.id, FailureReason.JOB_ENDED.value, ender, now)
            if decision.state != TaskState.PENDING:
                self._after_final_task(job.id)
        return committed

    def _after_final_task(self, job_id: str) -> None:
        """Write the joblog when the job is finished (its last task was just committed).

        The ledger finished the job in the commit's own transaction; a cancelled job's
        joblog is rewritten as its stopped attempts are committed.
        """
        job = self.ledger.job(job_id)
        if job is not None and job.state.finished:
            results.write_joblog(self.state_dir, self.ledger, job_id)
            if job.state != JobState.CANCELLED:  # only the last task's commit sees it finished
                logger.info("job %s %s", job_id, job.state.value)
