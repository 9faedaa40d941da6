"""The results tree of jobs on the host, the joblog, and bounded reading of task outputs.

Layout::

    <state dir>/results/<job>/joblog.tsv
    <state dir>/results/<job>/<index>/stdout|stderr|exit_code|outcome.json|files/...

A task's directory is written by the backend into a temporary sibling, then renamed into
place whole (``install_task_dir``), so readers never see half a task. The joblog is
regenerated from the ledger, never appended to: it cannot hold a task twice. Its Host column
is the LXD cluster member that ran the task's last attempt, else the worker's name.

The tree is private to its owner: directories 0700, files 0600 (``private``).
"""

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..constants import RESULTS_SUBDIR
from ..privatefiles import write_private
from .ledger import Ledger
from .private import private_dir, tighten_tree

JOBLOG_NAME = "joblog.tsv"
USAGE_NAME = "usage.tsv"  # beside the joblog: one line per ended attempt, as sacct's steps
USAGE_FIGURES = (
    "wall-seconds",
    "cpu-user-seconds",
    "cpu-system-seconds",
    "memory-peak-bytes",
    "oom-kills",
)
USAGE_COLUMNS = (
    "Seq",
    "Attempt",
    "Host",
    "Exitval",
    "Reason",
    "WallSeconds",
    "CPUUserSeconds",
    "CPUSystemSeconds",
    "MaxRSSBytes",
    "OOMKills",
    "CPUSource",
    "MemorySource",
)
OUTCOME_NAME = "outcome.json"
JOBLOG_COLUMNS = (
    "Seq",
    "Host",
    "Starttime",
    "JobRuntime",
    "Send",
    "Receive",
    "Exitval",
    "Signal",
    "Command",
)
INLINE_STREAM_BYTES = 4 << 10
INLINE_TOTAL_BYTES = 64 << 10
_TEMP_PREFIX = ".tmp-"
_OLD_PREFIX = ".old-"


def results_root(state_dir: Path) -> Path:
    """Return the directory holding every job's results."""
    return state_dir / RESULTS_SUBDIR


def job_dir(state_dir: Path, job_id: str) -> Path:
    """Return the results directory of a job."""
    return results_root(state_dir) / job_id


def task_dir(state_dir: Path, job_id: str, index: int) -> Path:
    """Return the results directory of one task."""
    return job_dir(state_dir, job_id) / str(index)


def joblog_path(state_dir: Path, job_id: str) -> Path:
    """Return the joblog of a job."""
    return job_dir(state_dir, job_id) / JOBLOG_NAME


def temp_task_dir(state_dir: Path, job_id: str, index: int, attempt: int) -> Path:
    """Return a fresh, empty temporary directory for one attempt's results."""
    private_dir(results_root(state_dir))
    path = private_dir(job_dir(state_dir, job_id)) / f"{_TEMP_PREFIX}{index}-{attempt}"
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(mode=0o700)
    return path


def install_task_dir(temp_dir: Path, final_dir: Path) -> None:
    """Move a complete temporary task directory into place, replacing any older one.

    What the backend wrote loses group and other permissions first.
    """
    tighten_tree(temp_dir)
    old = final_dir.with_name(f"{_OLD_PREFIX}{final_dir.name}")
    if old.exists():
        shutil.rmtree(old)
    if final_dir.exists():
        os.rename(final_dir, old)
    os.rename(temp_dir, final_dir)
    if old.exists():
        shutil.rmtree(old)


def write_outcome(directory: Path, outcome: dict[str, Any]) -> None:
    """Write a task's outcome summary (``outcome.json``) into its results directory."""
    write_private(directory / OUTCOME_NAME, json.dumps(outcome, indent=1, sort_keys=True) + "\n")


def remove_temp_dirs(state_dir: Path) -> None:
    """Remove leftover temporary directories of every job (after a crash)."""
    root = results_root(state_dir)
    if not root.is_dir():
        return
    for job in root.iterdir():
        if job.is_dir():
            for child in job.iterdir():
                # Only directories: a temporary joblog may be another client's, being written.
                named = child.name.startswith((_TEMP_PREFIX, _OLD_PREFIX))
                if named and child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)


def delete_job_results(state_dir: Path, job_id: str) -> bool:
    """Delete a job's results directory; return False when there was none."""
    path = job_dir(state_dir, job_id)
    if not path.exists():
        return False
    shutil.rmtree(path)
    return True


def _tsv_field(text: str) -> str:
    return text.replace("\t", " ").replace("\n", " ").replace("\r", " ")


def render_joblog(ledger: Ledger, job_id: str) -> str:
    """Return the joblog text (GNU parallel columns) of the job's finished tasks."""
    job = ledger.job(job_id)
    if job is None:
        raise KeyError(job_id)
    command = _tsv_field(str(job.params.get("command", "")))
    lines = ["\t".join(JOBLOG_COLUMNS)]
    for attempt in ledger.final_attempts(job_id):
        outcome = attempt.outcome or {}
        exit_code = outcome.get("exit-code")
        started = outcome.get("started-at") or attempt.started
        finished = outcome.get("finished-at") or attempt.finished or started
        signal = outcome.get("signal", 0)
        lines.append(
            "\t".join(
                (
                    str(attempt.index + 1),
                    _tsv_field(str(outcome.get("host") or attempt.worker)),
                    f"{started:.3f}",
                    f"{max(0.0, finished - started):.3f}",
                    str(outcome.get("send", 0)),
                    str(outcome.get("bytes", 0)),
                    str(exit_code if exit_code is not None else -1),
                    str(signal),
                    command,
                )
            )
        )
    return "\n".join(lines) + "\n"


def usage_of(outcome: dict[str, Any] | None) -> dict[str, Any]:
    """An attempt's usage figures and their sources, from its record (those it has)."""
    outcome = outcome or {}
    keys = (*USAGE_FIGURES, "usage-source")
    return {key: outcome[key] for key in keys if outcome.get(key) is not None}


def render_usage(ledger: Ledger, job_id: str) -> str:
    """Return usage.tsv: every ended attempt's wall time, CPU, peak memory, OOM kills."""
    lines = ["\t".join(USAGE_COLUMNS)]
    for attempt in ledger.attempts(job_id):
        outcome = attempt.outcome
        if not outcome:
            continue
        sources = outcome.get("usage-source") or {}
        fields = [attempt.index + 1, attempt.attempt, outcome.get("host") or attempt.worker]
        fields += [outcome.get("exit-code"), outcome.get("reason")]
        fields += [outcome.get(key) for key in USAGE_FIGURES]
        fields += [sources.get("cpu"), sources.get("memory")]
        lines.append(
            "\t".join("" if field is None else _tsv_field(str(field)) for field in fields)
        )
    return "\n".join(lines) + "\n"


def remove_joblog(state_dir: Path, job_id: str) -> None:
    """Remove a job's joblog and usage (it runs again; they are written when it ends)."""
    path = joblog_path(state_dir, job_id)
    for stale in (path, path.with_name(USAGE_NAME)):
        stale.unlink(missing_ok=True)


def write_joblog(state_dir: Path, ledger: Ledger, job_id: str) -> Path:
    """Regenerate the job's joblog.tsv and usage.tsv from the ledger (atomically).

    Returns the joblog's path.

    Several writers at once (the commit that finished the job, gather-results) each write
    their own temporary file: the last rename wins, and every version is whole.
    """
    path = joblog_path(state_dir, job_id)
    private_dir(results_root(state_dir))
    private_dir(path.parent)
    write_private(path, render_joblog(ledger, job_id))
    write_private(path.with_name(USAGE_NAME), render_usage(ledger, job_id))
    return path


def read_bounded(path: Path, limit: int) -> tuple[str, bool]:
    """Return up to ``limit`` bytes of a regular file as text, and whether it was cut.

    Symlinks are not followed; a missing file reads as empty.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except (FileNotFoundError, OSError):
        return "", False
    with os.fdopen(fd, "rb") as stream:
        data = stream.read(limit + 1)
    return data[:limit].decode(errors="replace"), len(data) > limit


def read_inline(
    directory: Path,
    budget: int,
    per_stream: int = INLINE_STREAM_BYTES,
) -> tuple[dict[str, Any], int]:
    """Return a task's stdout and stderr (each at most ``per_stream`` bytes, ``budget`` in all).

    Returns the entry and the bytes it used; the entry says ``truncated`` when anything was cut.
    """
    entry: dict[str, Any] = {}
    used = 0
    cut = False
    for stream in ("stdout", "stderr"):
        limit = max(0, min(per_stream, budget - used))
        text, stream_cut = read_bounded(directory / stream, limit)
        entry[stream] = text
        used += len(text.encode())
        cut = cut or stream_cut
    entry["truncated"] = cut
    return entry, used
