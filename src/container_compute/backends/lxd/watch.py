"""Following a started worker until its command ends, then gathering what it left.

``AttemptWatcher.wait`` polls for ``/run/cc/exit_code`` host side (see ``hostside``) or, when
the host cannot see the worker, through the files API; it ends the attempt on the command's
exit, the attempt's timeout, the engine's stop request, or a worker that can no longer finish
(stopped, rebooted, vanished, its ``/run/cc`` broken); then it gathers stdout, stderr and
/results with the byte cap and path safety of ``gather``.

Everything read from the worker is the task's to forge: whatever it holds becomes an outcome
with a reason that says what was found (``parsing``), never an exception.
"""

import errno
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
from ..usage import TaskLimits, Usage, sandbox_usage, task_limits
from . import files
from .api import TRANSIENT_ERRORS, LXDApi, OperationFailedError
from .hostside import (
    CC_DIR,
    Found,
    WorkerView,
    has_cc_dir,
    init_pid_from_cgroup,
    read_cc_file,
    usable_root,
    volume_name,
)
from .launch import SANDBOX_KILL, exec_script
from .parsing import parse_exit_status, parse_pid

LABEL_STARTED = "user.container-compute.started"
WRAPPER_START_CHECKS = 15  # liveness checks (2 s apart) without /run/cc/pid: never started
LIVENESS_SECONDS = 2.0
CHECK_TIMEOUT_SECONDS = 10.0
SANDBOX_END_SECONDS = 10.0  # for the wrapper to write the status of a sandbox it saw killed
SECOND_LOOK_SECONDS = 0.3  # between two looks at a /run/cc seen gone (a replacement?)
SANDBOX_STATUS_BYTES = 512  # /run/cc/sandbox ("ready", the helper's rusage), cpu.stat
HOST_POLL_CAP_SECONDS = 0.2  # longest pause between two looks at a worker from the host
SETTLE_SECONDS = 3.0  # how long a worker whose task's shell died may take to stop or reboot
# Exits 0 while the wrapper lives, 1 once it is gone, 3 when its pid cannot be read safely.
_WRAPPER_CHECK = (
    "[ -f /run/cc/pid ] && [ ! -L /run/cc/pid ] || exit 3\n"
    "read -r cc_pid < /run/cc/pid || exit 3\n"
    'kill -0 "$cc_pid" 2>/dev/null || exit 1\n'
)
_OOM_DETAIL = "killed: out of memory (the worker's memory cgroup counted an OOM kill)"


def _file_data(found: Found | None) -> bytes:
    """The bytes of a file found in /run/cc (b"" for anything else)."""
    return found.data if found is not None and found.kind == "file" else b""


def _limit_detail(refused: int) -> str:
    return (
        f"the worker hit its process limit: its pids cgroup refused {refused} forks "
        "(pids.events max)"
    )


def _started_at(record: dict[str, Any]) -> float:
    try:
        return float(record.get("config", {}).get(LABEL_STARTED) or time.time())
    except (TypeError, ValueError):
        return time.time()


class AttemptWatcher:
    """Follow attempts' workers of one LXD project and gather their results."""

    def __init__(self, api: LXDApi, host_access: bool = True) -> None:
        """Watch through ``api``; ``host_access=False`` reads workers through the API only."""
        self.api = api
        self.host_access = host_access
        self.judge = AttemptJudge(self)
        self._records: dict[str, dict[str, Any]] = {}  # warm workers' records, read once

    def forget(self, name: str) -> None:
        """``name`` is deleted: a worker made again under its name is read afresh."""
        self._records.pop(name, None)

    def init_pid(self, name: str, volume: str) -> int:
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

    def locate(self, name: str, record: dict[str, Any]) -> WorkerView:
        """Find a worker's init pid (when it runs) and the host's views of its root.

        The roots are ``/proc/<init pid>/root`` (the worker's own view, on every storage
        driver, while it runs) and the rootfs under LXD's storage-pools directory (dir, btrfs;
        also while stopped). ``rootfs`` is None when the host sees neither: then the worker is
        read through the files API.
        """
        project = record.get("project") or self.api.project
        volume = volume_name(project, name)
        pid = self.init_pid(name, volume) if record.get("status") == "Running" else 0
        proc_root = Path(f"/proc/{pid}/root") if pid and self.host_access else None
        pool = (record.get("expanded_devices", {}).get("root") or {}).get("pool")
        socket = socket_path()
        pool_root = None
        if pool and socket is not None and self.host_access:
            pool_root = socket.parent / "storage-pools" / pool / "containers" / volume / "rootfs"
        view = WorkerView(name, volume, pid, proc_root, pool_root)
        view.rootfs = self.root(view)
        return view

    def root(self, view: WorkerView) -> Path | None:
        """The best host view of the worker's root now (one with a real /run/cc preferred)."""
        candidates: list[Path] = []
        if view.proc_root is not None and view.init_alive():
            candidates.append(view.proc_root)
        if view.pool_root is not None and usable_root(view.pool_root):
            candidates.append(view.pool_root)
        return next((c for c in candidates if has_cc_dir(c)), next(iter(candidates), None))

    def read_cc(
        self, view: WorkerView, name: str, limit: int = 64, content: bool = True
    ) -> Found | None:
        """Look at ``/run/cc/<name>``: host side when possible, else through the files API.

        Through the API a running worker is only looked at with ``HEAD``; to read a file's
        content (``content``) the worker is stopped first (see ``files``): only do that when
        the command is over. None when nothing can be said now (root gone, daemon away).
        """
        if view.rootfs is not None:
            found = read_cc_file(view.rootfs, name, limit)
            if found is None:  # e.g. /proc/<init>/root of a worker that just stopped
                view.rootfs = self.root(view)
                found = None if view.rootfs is None else read_cc_file(view.rootfs, name, limit)
            return found
        client = self.api.client
        try:
            kind = files.head(client, view.name, f"/{CC_DIR}/{name}")
            if kind == "missing":
                directory = files.head(client, view.name, f"/{CC_DIR}")
                if directory == "missing":
                    return Found("missing", cc_problem="the task removed /run/cc")
                if directory != "directory":
                    problem = f"the task replaced /run/cc with a {directory}"
                    return Found("missing", cc_problem=problem)
                return Found("missing")
            if kind != "file" or not content:
                return Found(kind)
            if not view.stopped:
                self.stop(view.name)  # nothing may swap or hold the file any more
                view.stopped = True
            pulled = files.pull(client, view.name, f"/{CC_DIR}/{name}", limit)
        except files.FilesUnavailableError:
            return None
        return Found(pulled.kind, pulled.data)

    def stop(self, name: str) -> None:
        """Force-stop a watched worker (to read it safely, or to end its attempt)."""
        self.api.force_stop(name)

    def end_sandbox(self, view: WorkerView) -> bool:
        """End a task's sandbox (its cgroup's whole tree) and leave the worker running.

        True once the wrapper wrote the exit status of the ended sandbox: the worker is
        intact. False when it could not be ended so (the worker is then stopped).
        """
        if self._check_in_worker(view.name, SANDBOX_KILL) != 0:
            return False
        end = time.monotonic() + SANDBOX_END_SECONDS
        while time.monotonic() < end:
            found = self.read_cc(view, "exit_code", content=view.rootfs is not None)
            if found is not None and found.kind == "file":
                if view.rootfs is None or found.data.strip():  # through the API: no content
                    return True
            time.sleep(0.05)
        return False

    def wrapper_alive_in_worker(self, name: str) -> bool:
        """Ask inside a running worker whether its wrapper lives (for the files API path).

        The answer comes from the task's own /bin/sh, so it is only trusted about the task's
        own attempt; anything but a clear "gone" counts as alive.
        """
        return self._check_in_worker(name, _WRAPPER_CHECK) != 1

    def _check_in_worker(self, name: str, script: str) -> int | None:
        """Run a short script in a running worker; its exit code (None: no answer)."""
        try:
            result = exec_script(self.api, name, script, timeout=CHECK_TIMEOUT_SECONDS)
        except (OperationFailedError, pylxd.exceptions.LXDAPIException, *TRANSIENT_ERRORS):
            return None
        code = result.get("return")
        return code if isinstance(code, int) else None

    def _never_ran(self, name: str, record: dict[str, Any]) -> bool:
        """Tell whether a stopped worker shows no trace of its launcher (no /run/cc)."""
        found = self.read_cc(self.locate(name, record), ".")
        return found is not None and found.cc_problem.startswith("the task removed")

    def wait(
        self,
        spec: WorkerSpec,
        task_dir: Path,
        should_stop: Callable[[], FailureReason | None],
        relaunch: Callable[[], None] | None = None,
    ) -> TaskOutcome:
        """Follow the worker until its command ends or it must stop; gather results to task_dir.

        ``task_dir`` must be an existing empty directory (the caller's temporary one). Works
        on a worker started by another process (resume): ``relaunch`` is then called first
        when the command may never have started (a running worker, or a stopped one without
        /run/cc). The outcome's reason is TIMEOUT after ``spec.timeout_seconds`` (counted from
        ``start``), OOM when the worker's memory cgroup counted an OOM kill and the command
        failed, PROCESS_LIMIT when its pids cgroup refused forks and the command failed, the
        should_stop reason when it asked, EXIT_CODE for a non-zero exit, a worker that
        stopped, rebooted or vanished, or an exit code the task broke or forged.
        """
        name = spec.worker_name
        # A warm worker this backend launched is looked up once, not before every task.
        record = self._records.get(name) if spec.reuse and relaunch is None else None
        if record is None:
            record = self.api.instance(name)
            if record is not None and spec.reuse and relaunch is None:
                self._records[name] = record
        if record is None:
            return TaskOutcome(
                None, FailureReason.EXIT_CODE, detail=f"worker {name} does not exist"
            )
        started_at = spec.started_at or _started_at(record)
        if relaunch is not None and (
            record.get("status") == "Running" or self._never_ran(name, record)
        ):
            relaunch()
            record = self.api.instance(name) or record
        view = self.locate(name, record)
        if spec.sandbox:
            view.sandboxed = True
            view.start_counting()
        deadline = started_at + spec.timeout_seconds if spec.timeout_seconds > 0 else None
        outcome = self._follow(spec, view, deadline, should_stop)
        outcome.started_at = started_at
        ended = outcome.reason is not None and outcome.exit_code is None
        if ended and view.sandboxed and not outcome.sandbox_ended:
            outcome.sandbox_ended = self.end_sandbox(view)
        report = self._gather(view, task_dir, spec.results_cap_bytes, outcome.exit_code)
        if ended and outcome.sandbox_ended:
            outcome.detail += "; its sandbox was ended, the worker goes on"
        elif ended:
            self.stop(name)
            outcome.detail += "; worker stopped"
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
        view: WorkerView,
        deadline: float | None,
        should_stop: Callable[[], FailureReason | None],
    ) -> TaskOutcome:
        """Poll until an exit code appears, the deadline passes, or should_stop says so."""
        # Seen from the host, a look is a few stat calls: often (from 5 ms), so a task's end
        # is seen soon.
        poll = self.api.poll_seconds  # the longest pause between two looks
        interval = 0.005 if view.rootfs is not None else poll
        limit = min(poll, HOST_POLL_CAP_SECONDS) if view.rootfs is not None else max(poll, 2.0)
        next_check = time.monotonic() + (LIVENESS_SECONDS if view.pid else 0.0)
        while True:
            ended = self.judge.exit_status(view)
            if ended is not None:
                return ended
            stop_reason = should_stop()
            if stop_reason is not None:
                return TaskOutcome(None, stop_reason, detail=f"stopped: {stop_reason.value}")
            if deadline is not None and time.time() >= deadline:
                return TaskOutcome(
                    None,
                    FailureReason.TIMEOUT,
                    detail=f"timed out after {spec.timeout_seconds}s",
                )
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + LIVENESS_SECONDS
                lost = self.judge.lost(view)
                if lost is not None:
                    return lost
            time.sleep(interval)
            interval = min(interval * 1.25, limit)

    def _gather(
        self, view: WorkerView, task_dir: Path, cap_bytes: int, exit_code: int | None
    ) -> GatherReport:
        """Gather host side when the host sees the root, else (worker stopped) by the API."""
        for _ in range(2):
            root = view.rootfs if view.rootfs is not None else self.root(view)
            if root is None:
                break
            try:
                return gather_task(root, task_dir, cap_bytes, exit_code)
            except OSError as err:
                if host_side(err, task_dir):
                    raise  # the host's disk, not the worker: an error for the engine to record
                # The worker stopped meanwhile (its /proc/<pid>/root is gone): start again
                # from the storage pool's rootfs, or through the files API.
                _empty(task_dir)
                view.rootfs = None
                view.proc_root = None
        self.stop(view.name)  # nothing of the task may hold a fifo open
        with tempfile.TemporaryDirectory(prefix="cc-pull-") as staging:
            root = Path(staging)
            skipped = files.pull_tree(self.api.client, view.name, root, cap_bytes)
            report = gather_task(root, task_dir, cap_bytes, exit_code)
            report.skipped.extend(skipped)
            return report


# What only writing on the host's side can fail with: gathering reads the worker.
_HOST_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def host_side(err: OSError, task_dir: Path) -> bool:
    """Tell whether a gathering error came from the host (writing ``task_dir``), not the worker.

    Only the worker's side going away (it stopped, its root is gone) means "read it another
    way"; a full or failing disk on the host is an error of its own.
    """
    if err.errno in _HOST_ERRNOS:
        return True
    for name in (err.filename, err.filename2):
        if isinstance(name, (str, bytes, os.PathLike)):
            path = Path(os.fsdecode(name))
            if path == task_dir or task_dir in path.parents:
                return True
    return False


class AttemptJudge:
    """Decide, from what a watched worker shows, whether and how its attempt ended."""

    def __init__(self, watcher: AttemptWatcher) -> None:
        """Judge the workers ``watcher`` reads."""
        self.watcher = watcher

    def read_settled(self, view: WorkerView, name: str, content: bool = True) -> Found | None:
        """Read /run/cc/``name``; a /run/cc seen gone is looked at once more a moment later.

        A task that replaces /run/cc (``mv`` then ``ln -s``) shows no /run/cc for an instant:
        the second look tells "removed" from "replaced" with what is there.
        """
        found = self.watcher.read_cc(view, name, content=content)
        if found is not None and found.cc_problem.startswith("the task removed"):
            time.sleep(SECOND_LOOK_SECONDS)
            found = self.watcher.read_cc(view, name, content=content)
        return found

    def exit_status(self, view: WorkerView) -> TaskOutcome | None:
        """Return the outcome /run/cc/exit_code tells (None: the command has not ended yet)."""
        found = self.read_settled(view, "exit_code")
        if found is None or (found.kind == "missing" and not found.cc_problem):
            return None
        if found.cc_problem:
            return self.liveness(view) or self.failed(
                view, f"{found.cc_problem}: the command's exit code cannot be read there"
            )
        if found.kind != "file":
            return self.failed(
                view, f"the task left a {found.kind} at /run/cc/exit_code, not an exit status"
            )
        code, problem = parse_exit_status(found.data)
        if problem is not None:
            return TaskOutcome(None, FailureReason.EXIT_CODE, detail=problem)
        if code is None and view.stopped:
            return TaskOutcome(None, FailureReason.EXIT_CODE, detail="the exit code file is empty")
        if code is None:
            return None  # empty: being written
        if not view.sandboxed:
            outcome = self._status(view, code)
            outcome.usage = self.usage(view)
            return outcome
        report = b""  # through the files API, reading a file's content would stop the worker
        if view.rootfs is not None:
            report = _file_data(self.watcher.read_cc(view, "sandbox", limit=SANDBOX_STATUS_BYTES))
        outcome = self._sandbox_status(view, code, task_limits(report))
        outcome.usage = self.usage(view, report)
        return outcome

    def usage(self, view: WorkerView, report: bytes = b"") -> Usage:
        """What the task used: its sandbox's cgroup and ``report``, else its worker's cgroups.

        Nothing when the worker is read through the files API (see ``remote``).
        """
        if view.rootfs is None:
            return Usage()
        if not view.sandboxed:
            return view.usage()
        stat = self.watcher.read_cc(view, "cpu.stat", limit=SANDBOX_STATUS_BYTES)
        usage = sandbox_usage(_file_data(stat), report)
        if usage.oom_kills is None:  # no task limits: the worker's memory cgroup
            usage.oom_kills = view.oom_kills() if view.memory_cgroup is not None else None
        return usage

    def _sandbox_status(
        self, view: WorkerView, code: int, task: TaskLimits | None = None
    ) -> TaskOutcome:
        """The outcome of a sandboxed task (its worker intact), or why it never ran."""
        found = self.watcher.read_cc(view, "sandbox_error", content=view.rootfs is not None)
        if found is not None and found.kind == "file":
            why = found.data.decode(errors="replace").strip() or "see the task's stderr"
            return TaskOutcome(
                None,
                FailureReason.LAUNCH_ERROR,
                detail=f"the task's sandbox could not be made in worker {view.name}: {why}",
            )
        outcome = self._status(view, code, task)
        outcome.sandbox_ended = True
        return outcome

    def _status(self, view: WorkerView, code: int, task: TaskLimits | None = None) -> TaskOutcome:
        """The outcome of an exit status the wrapper wrote (``task``: the task cgroup's limits).

        A task that hit its memory or process limit failed, even when its command exited 0.
        """
        task_hit = task is not None and (task.oom_kills > 0 or task.forks_refused > 0)
        if code == 0 and not task_hit and not view.oom_kills() and not view.forks_refused():
            return TaskOutcome(0)
        return self.failed(view, f"the command exited {code}", code, task)

    def failed(
        self,
        view: WorkerView,
        detail: str,
        code: int | None = None,
        task: TaskLimits | None = None,
    ) -> TaskOutcome:
        """An outcome without success: OOM or PROCESS_LIMIT when the cgroups counted one.

        The task's own cgroup (``task``, where it had limits) first, then the worker's. Refused
        forks come first: a fork bomb can also run out of memory, and the process limit is
        what it hit first (the OOM kills are said too).
        """
        if task is not None and task.forks_refused > 0:
            also = "; the OOM killer also ran in the task" if task.oom_kills else ""
            return TaskOutcome(
                code, FailureReason.PROCESS_LIMIT, detail=task.process_detail() + also
            )
        if task is not None and task.oom_kills > 0:
            return TaskOutcome(code, FailureReason.OOM, detail=task.memory_detail())
        refused, oom_kills = view.forks_refused(), view.oom_kills()
        if refused > 0:
            also = "; the OOM killer also ran in the worker" if oom_kills else ""
            return TaskOutcome(
                code, FailureReason.PROCESS_LIMIT, detail=_limit_detail(refused) + also
            )
        if oom_kills > 0:
            return TaskOutcome(code, FailureReason.OOM, detail=_OOM_DETAIL)
        return TaskOutcome(code, FailureReason.EXIT_CODE, detail="" if code else detail)

    def liveness(self, view: WorkerView) -> TaskOutcome | None:
        """Return an outcome when the worker stopped, rebooted or vanished, else None."""
        if view.rootfs is not None and view.pid and view.init_alive():
            return None
        name = view.name
        record = self.watcher.api.instance(name)
        if record is None:
            detail = f"worker {name} vanished (deleted from outside) before its command finished"
        elif record.get("status") != "Running":
            detail = (
                f"worker {name} stopped before its command finished "
                "(powered off from inside, or stopped from outside)"
            )
        else:
            pid = self.watcher.init_pid(name, view.volume)
            if not view.pid or pid in (0, view.pid):
                view.pid = view.pid or pid
                return None
            detail = f"worker {name} rebooted before its command finished (its init restarted)"
        view.forks_refused()
        view.oom_kills()
        ended = self._exit_status_once(view)
        return ended or self.failed(view, detail)

    def _exit_status_once(self, view: WorkerView) -> TaskOutcome | None:
        """An exit code written just before the worker went away, if any."""
        view.rootfs = self.watcher.root(view)
        found = self.watcher.read_cc(view, "exit_code")
        if found is None or found.kind != "file":
            return None
        code, _ = parse_exit_status(found.data)
        if code is None:
            return None
        return TaskOutcome(code, None if code == 0 else FailureReason.EXIT_CODE)

    def lost(self, view: WorkerView) -> TaskOutcome | None:
        """Return an outcome when the command can no longer end normally, else None."""
        lost = self.liveness(view)
        if lost is not None:
            return lost
        view.forks_refused()
        view.oom_kills()
        if view.wrapper_pid is None:
            problem = self._find_wrapper(view)
            if problem is not None or view.wrapper_pid is None:
                return problem
        alive = (
            view.wrapper_alive(view.wrapper_pid)
            if view.rootfs is not None
            else self.watcher.wrapper_alive_in_worker(view.name)
        )
        if not alive:
            if self.exit_status(view) is not None:
                return None  # finished just now: the next poll reads it
            settle = time.monotonic() + SETTLE_SECONDS
            while time.monotonic() < settle:  # a reboot or poweroff kills the shell first
                time.sleep(0.5)
                lost = self.liveness(view)
                if lost is not None:
                    return lost
            return self.failed(view, "the task's shell ended without an exit code")
        return None

    def _find_wrapper(self, view: WorkerView) -> TaskOutcome | None:
        """Learn the wrapper's pid (``view.wrapper_pid``); an outcome if it cannot be followed."""
        found = self.read_settled(view, "pid", content=view.rootfs is not None)
        if found is None:
            return None
        if found.cc_problem:
            return self.failed(view, f"{found.cc_problem}: the command's exit code is lost")
        if found.kind not in ("file", "missing"):
            what = f"the task left a {found.kind} at /run/cc/pid"
            return self.failed(view, f"{what}: the command cannot be followed")
        pid, problem = (None, None)
        if found.kind == "file" and view.rootfs is not None:
            pid, problem = parse_pid(found.data)
            if problem is not None:
                return self.failed(view, f"{problem}: the command cannot be followed")
        elif found.kind == "file":
            pid = 0  # through the API only its existence is known: ask the worker
        if pid is None:
            view.checks_without_wrapper += 1
            if view.checks_without_wrapper > WRAPPER_START_CHECKS:
                return self.failed(view, "the command's wrapper never started (no /run/cc/pid)")
            return None
        view.wrapper_pid = pid
        return None


def _empty(directory: Path) -> None:
    """Remove everything in ``directory`` (a half-gathered task dir of ours)."""
    for entry in directory.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            os.unlink(entry)
