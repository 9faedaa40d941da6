"""Following a started worker until its command ends, then gathering what it left.

``AttemptWatcher.wait`` polls for ``/run/cc/exit_code`` host side (see ``hostside``) or, when
the host cannot see the worker, through the files API; it ends the attempt on the command's
exit, the attempt's timeout, the engine's stop request, or a worker that can no longer finish;
then it gathers stdout, stderr and /results with the byte cap and path safety of ``gather``.
"""

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pylxd

from ...lxdclient import socket_path
from .. import FailureReason, TaskOutcome, WorkerSpec
from ..gather import GatherReport, gather_task
from . import files
from .api import LXDApi
from .hostside import (
    CC_DIR,
    DIR_FLAGS,
    WorkerView,
    has_cc_dir,
    init_pid_from_cgroup,
    memory_cgroup,
    parse_exit_code,
    read_small,
)

LABEL_STARTED = "user.container-compute.started"
WRAPPER_START_CHECKS = 15  # liveness checks (2 s apart) without /run/cc/pid: never started
_OOM_DETAIL = "killed: out of memory (the worker's memory cgroup counted an OOM kill)"


class AttemptWatcher:
    """Follow attempts' workers of one LXD project and gather their results."""

    def __init__(self, api: LXDApi, host_access: bool = True) -> None:
        """Watch through ``api``; ``host_access=False`` reads workers through the API only."""
        self.api = api
        self.host_access = host_access

    @property
    def poll_seconds(self) -> float:
        """Longest pause between two polls."""
        return self.api.poll_seconds

    def _init_pid(self, name: str, volume: str) -> int:
        """Return the worker's init pid: from its cgroup on the host, else LXD's state call."""
        pid = init_pid_from_cgroup(volume) if self.host_access else 0
        if pid:
            return pid

        def get() -> int:
            try:
                state = self.api.client.api.instances[name].state.get().json()["metadata"]
            except pylxd.exceptions.NotFound:
                return 0
            return int(state.get("pid") or 0)

        return self.api.retry(f"reading the state of worker {name}", get)

    def locate(self, name: str, record: dict[str, Any]) -> WorkerView | None:
        """Find a running worker's init pid, a host view of its root, and its memory cgroup.

        The root is ``/proc/<init pid>/root`` (the worker's own view, on every storage
        driver), else the rootfs under LXD's storage-pools directory (dir, btrfs); either
        must hold ``/run/cc`` as a real directory. None: read through the files API.
        """
        if record.get("status") != "Running":
            return None
        project = record.get("project") or self.api.project
        volume = name if project == "default" else f"{project}_{name}"
        pid = self._init_pid(name, volume)
        candidates: list[Path] = []
        if pid and self.host_access:
            candidates.append(Path(f"/proc/{pid}/root"))
        pool = (record.get("expanded_devices", {}).get("root") or {}).get("pool")
        socket = socket_path()
        if pool and socket is not None and self.host_access:
            candidates.append(
                socket.parent / "storage-pools" / pool / "containers" / volume / "rootfs"
            )
        rootfs = next((c for c in candidates if has_cc_dir(c)), None)
        return WorkerView(name, rootfs, pid, memory_cgroup(pid) if pid else None)

    def _read_cc(self, worker: WorkerView, name: str) -> str | None:
        """Read a small file of /run/cc in the worker: host side when possible, else the API."""
        if worker.rootfs is not None:
            try:
                root_fd = os.open(worker.rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                return None
            try:
                run_fd = os.open("run", DIR_FLAGS, dir_fd=root_fd)
                try:
                    cc_fd = os.open("cc", DIR_FLAGS, dir_fd=run_fd)
                finally:
                    os.close(run_fd)
                try:
                    return read_small(cc_fd, name)
                finally:
                    os.close(cc_fd)
            except OSError:
                return None
            finally:
                os.close(root_fd)
        return self._api_read(worker.name, f"/{CC_DIR}/{name}", 64)

    def _api_read(self, worker: str, path: str, limit: int) -> str | None:
        data = files.pull_file(self.api.client, worker, path, limit)
        return None if data is None else data.decode(errors="replace")

    def wait(
        self,
        spec: WorkerSpec,
        task_dir: Path,
        should_stop: Callable[[], FailureReason | None],
    ) -> TaskOutcome:
        """Follow the worker until its command ends or it must stop; gather results to task_dir.

        ``task_dir`` must be an existing empty directory (the caller's temporary one). Works
        on a worker started by another process (resume). The outcome's reason is TIMEOUT
        after ``spec.timeout_seconds`` (counted from ``start``), OOM when the worker's memory
        cgroup counted an OOM kill and the command failed, the should_stop reason when it
        asked, EXIT_CODE for a non-zero exit or a worker that stopped without an exit code.
        """
        name = spec.worker_name
        record = self.api.instance(name)
        if record is None:
            return TaskOutcome(
                None, FailureReason.EXIT_CODE, detail=f"worker {name} does not exist"
            )
        started_at = float(record["config"].get(LABEL_STARTED) or time.time())
        worker = self.locate(name, record)
        if worker is None:
            outcome = TaskOutcome(
                None,
                FailureReason.EXIT_CODE,
                started_at,
                time.time(),
                detail=f"worker {name} stopped before its command finished",
            )
            return outcome
        deadline = started_at + spec.timeout_seconds if spec.timeout_seconds > 0 else None
        outcome = self._follow(spec, worker, deadline, should_stop)
        outcome.started_at = started_at
        report = self._gather(worker, task_dir, spec.results_cap_bytes, outcome.exit_code)
        if outcome.reason is not None and outcome.exit_code is None:
            self.api.force_stop(name)
        outcome.finished_at = time.time()
        outcome.stdout_bytes = report.stdout_bytes
        outcome.stderr_bytes = report.stderr_bytes
        outcome.files_bytes = report.files_bytes
        outcome.truncated = report.truncated
        outcome.skipped = list(report.skipped)
        return outcome

    def _follow(
        self,
        spec: WorkerSpec,
        worker: WorkerView,
        deadline: float | None,
        should_stop: Callable[[], FailureReason | None],
    ) -> TaskOutcome:
        """Poll until an exit code appears, the deadline passes, or should_stop says so."""
        interval = 0.02 if worker.rootfs is not None else self.poll_seconds
        limit = self.poll_seconds if worker.rootfs is not None else max(self.poll_seconds, 2.0)
        next_check = time.monotonic() + 2.0
        while True:
            exit_code = parse_exit_code(self._read_cc(worker, "exit_code"))
            if exit_code is not None:
                if exit_code != 0 and worker.oom_kills() > 0:
                    return TaskOutcome(exit_code, FailureReason.OOM, detail=_OOM_DETAIL)
                reason = None if exit_code == 0 else FailureReason.EXIT_CODE
                return TaskOutcome(exit_code, reason)
            stop_reason = should_stop()
            if stop_reason is not None:
                return TaskOutcome(None, stop_reason, detail=f"stopped: {stop_reason.value}")
            if deadline is not None and time.time() >= deadline:
                return TaskOutcome(
                    None,
                    FailureReason.TIMEOUT,
                    detail=f"timed out after {spec.timeout_seconds}s; worker stopped",
                )
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + 2.0
                lost = self._lost(worker)
                if lost is not None:
                    return lost
            time.sleep(interval)
            interval = min(interval * 1.5, limit)

    def _lost(self, worker: WorkerView) -> TaskOutcome | None:
        """Return an outcome when the command can no longer end normally, else None."""
        if worker.rootfs is None or not worker.init_alive():
            record = self.api.instance(worker.name)
            if record is None or record.get("status") != "Running":
                return TaskOutcome(
                    None,
                    FailureReason.EXIT_CODE,
                    detail=f"worker {worker.name} stopped before its command finished",
                )
        wrapper_pid = parse_exit_code(self._read_cc(worker, "pid"))
        if wrapper_pid is None:
            worker.checks_without_wrapper += 1
            if worker.checks_without_wrapper > WRAPPER_START_CHECKS:
                return TaskOutcome(
                    None, FailureReason.EXIT_CODE, detail="the command's wrapper never started"
                )
        elif not worker.wrapper_alive(wrapper_pid):
            if parse_exit_code(self._read_cc(worker, "exit_code")) is not None:
                return None  # finished just now: the next poll reads it
            if worker.oom_kills() > 0:
                return TaskOutcome(None, FailureReason.OOM, detail=_OOM_DETAIL)
            return TaskOutcome(
                None, FailureReason.EXIT_CODE, detail="the task's shell ended without an exit code"
            )
        return None

    def _gather(
        self, worker: WorkerView, task_dir: Path, cap_bytes: int, exit_code: int | None
    ) -> GatherReport:
        if worker.rootfs is not None:
            try:
                return gather_task(worker.rootfs, task_dir, cap_bytes, exit_code)
            except OSError:
                # The worker stopped meanwhile (its /proc/<pid>/root is gone): start again
                # through the files API, which reads stopped workers too.
                for entry in task_dir.iterdir():
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry)
                    else:
                        entry.unlink()
        with tempfile.TemporaryDirectory(prefix="cc-pull-") as staging:
            root = Path(staging)
            files.pull_tree(self.api.client, worker.name, root, cap_bytes)
            return gather_task(root, task_dir, cap_bytes, exit_code)
