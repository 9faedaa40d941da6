"""Workers' root disks: can the pool enforce their size, and did a failed task fill its disk?

The worker profile's root disk has the host's ``worker-disk`` size, a job's ``disk`` replaces
it. btrfs (quota groups), zfs and lvm enforce it; LXD's dir driver only on a filesystem with
project quotas (``lxdclient.size_unenforced``), and says nothing when it skips it.

A task that hits the limit gets ENOSPC or EDQUOT and usually fails. When an attempt failed,
``explain_disk_full`` asks LXD how much of its root disk the worker uses (``disk.root.usage``
of the instance state, known only where the size is enforced) and reads the end of its
stderr; when the disk was (nearly) at its limit, or the task said so where the limit is
enforced, the outcome becomes ``DISK_FULL`` with a detail naming the limit.
"""

import contextlib
from pathlib import Path
from typing import Any

import pylxd
import pylxd.exceptions

from ...config import HostConfig
from ...lxdclient import LXDUnavailableError, connect, endpoint_of, is_local, size_unenforced
from ...units import format_size, parse_size
from .. import FailureReason, TaskOutcome, WorkerSpec
from .api import LXDApi, OperationFailedError

FULL_FRACTION = 0.95  # a root disk this full, with a failed task, was full
STDERR_TAIL_BYTES = 64 << 10
DISK_FULL_ERRORS = ("No space left on device", "Disk quota exceeded")


def disk_limit_note(config: HostConfig, limit: str, client: pylxd.Client | None = None) -> str:
    """Return why a root disk limit of ``limit`` is not enforced on the worker pool; "" if it is.

    Raises:
        pylxd.exceptions.LXDAPIException: when LXD does not know the pool.
    """
    client = client or connect(endpoint=endpoint_of(config))
    pool = client.api.storage_pools[config.storage_pool].get().json()["metadata"]
    if not is_local(client):
        return ""  # the pool's filesystem is not this host's to look at
    source = (pool.get("config") or {}).get("source", "")
    reason = size_unenforced(pool["driver"], source)
    if reason is None:
        return ""
    return (
        f"disk {limit} is not enforced on storage pool {config.storage_pool}: {reason}; "
        "a task can fill the pool the workers share"
    )


def root_disk(record: dict[str, Any]) -> tuple[int | None, int | None]:
    """Return (size limit, bytes used) of an instance record's root disk; None where unknown."""
    size = ((record.get("expanded_devices") or {}).get("root") or {}).get("size")
    limit = None
    if size:
        with contextlib.suppress(ValueError):
            limit = parse_size(size)
    usage = ((record.get("state") or {}).get("disk") or {}).get("root", {}).get("usage")
    return limit, usage if isinstance(usage, int) and usage > 0 else None


def stderr_says_full(task_dir: Path) -> str | None:
    """Return the disk-full error the end of the gathered stderr shows, or None."""
    try:
        with open(task_dir / "stderr", "rb") as stream:
            stream.seek(0, 2)
            stream.seek(max(0, stream.tell() - STDERR_TAIL_BYTES))
            tail = stream.read().decode(errors="replace")
    except OSError:
        return None
    return next((message for message in DISK_FULL_ERRORS if message in tail), None)


def _record(api: LXDApi, name: str) -> dict[str, Any] | None:
    """The worker's record with its state (``recursion=1``), or None (gone, or no answer)."""
    try:
        response = api.client.api.instances[name].get(params={"recursion": "1"})
        return response.json()["metadata"]
    except (
        pylxd.exceptions.LXDAPIException,
        LXDUnavailableError,
        OperationFailedError,
        OSError,
        ValueError,
    ):
        return None


def explain_disk_full(
    api: LXDApi, spec: WorkerSpec, outcome: TaskOutcome, task_dir: Path
) -> TaskOutcome:
    """Make a failed attempt's outcome DISK_FULL when its worker's root disk was full.

    Only an outcome with reason EXIT_CODE is looked at (the command failed, or its shell
    ended without an exit code); every other outcome is returned as it is.
    """
    if outcome.reason != FailureReason.EXIT_CODE:
        return outcome
    said = stderr_says_full(task_dir)
    record = _record(api, spec.worker_name)
    limit, usage = root_disk(record) if record is not None else (None, None)
    if limit is not None and usage is not None and (usage >= limit * FULL_FRACTION or said):
        used = f"{usage / (1 << 20):.1f}MiB"
        outcome.reason = FailureReason.DISK_FULL
        outcome.detail = (
            f"disk full: the worker's root disk reached its limit of {format_size(limit)} "
            f"({used} used; the job's disk or the host's worker-disk)"
            + (f"; stderr: {said}" if said else "")
            + (f"; {outcome.detail}" if outcome.detail else "")
        )
    elif said and limit is not None and usage is None:
        outcome.reason = FailureReason.DISK_FULL
        outcome.detail = (
            f"disk full ({said}) although the worker's root disk limit of "
            f"{format_size(limit)} is not enforced on this pool: the pool itself may be full"
        )
    return outcome
