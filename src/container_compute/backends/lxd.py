"""Worker containers on the local LXD daemon.

A worker is created from an image with only the worker profile, labelled with its job, task
and attempt, started, and given its command through the exec API without a websocket: a tiny
launcher (``mkdir /run/cc`` is its lock, so the command never runs twice) puts the wrapper in
the background, where it runs the user's command (passed in the environment, never spliced
into a string) with stdout, stderr and finally the exit code in ``/run/cc``. Nothing depends
on a connection or on the daemon staying up: the task is a child of the worker's init.

``wait`` polls for ``/run/cc/exit_code`` on the host side: through ``/proc/<init>/root`` (the
worker's own view of its files, on any storage driver), else the rootfs below LXD's
storage-pools directory (dir, btrfs), opening every path below with ``O_NOFOLLOW``; without
either it falls back to the files API. The init pid comes from the worker's cgroup on the host
(LXD's state call costs the daemon ~60 ms of CPU, so it is only the fallback). OOM kills are
read from the worker's memory cgroup (v1 ``memory.oom_control`` or v2 ``memory.events``).
API calls made while the daemon is away (restart) are retried for ``retry_seconds``.
"""

import contextlib
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pylxd
import requests

from ..config import HostConfig, check_cpu_limit, check_memory_limit
from ..constants import (
    INPUT_DIR_IN_WORKER,
    LABEL_ATTEMPT,
    LABEL_JOB,
    LABEL_TASK,
    RESULTS_DIR_IN_WORKER,
    WORKER_PROFILE,
)
from ..gather import GatherReport, gather_task, safe_name
from ..jobs import FailureReason
from ..lxdclient import LXDUnavailableError, connect, socket_path
from . import LaunchError, TaskOutcome, WorkerInfo, WorkerSpec

LABEL_STARTED = "user.container-compute.started"
CC_DIR = "run/cc"
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_RESERVED_ENV = ("CC_COMMAND", "CC_WRAPPER")
WRAPPER_START_CHECKS = 15  # liveness checks (2 s apart) without /run/cc/pid: never started
BUSY_WAIT_SECONDS = 60.0  # LXD refuses to delete an instance while another operation runs on it
_FINGERPRINT_RE = re.compile(r"^[0-9a-f]{12,64}$")

# Runs in the worker through exec; returns as soon as the wrapper is in the background.
_LAUNCHER = (
    "mkdir -p /run " + RESULTS_DIR_IN_WORKER + " || exit 1\n"
    "mkdir /run/cc 2>/dev/null || { test -d /run/cc && exit 0; exit 1; }\n"
    # A session of its own: no controlling terminal inherited from however LXD was started,
    # so no SIGHUP reaches the task when the daemon goes away.
    "cc_setsid=; command -v setsid >/dev/null 2>&1 && cc_setsid=setsid\n"
    'exec $cc_setsid /bin/sh -c "$CC_WRAPPER" </dev/null >/dev/null 2>&1 &\n'
)
# The wrapper: the user's command comes from the environment, its output goes to files.
_WRAPPER = (
    "trap '' HUP\n"
    "cd /\n"
    "echo $$ >/run/cc/pid\n"
    "cc_command=$CC_COMMAND\n"
    "unset CC_COMMAND CC_WRAPPER\n"
    '/bin/sh -c "$cc_command" </dev/null >/run/cc/stdout 2>/run/cc/stderr\n'
    "echo $? >/run/cc/exit_code.tmp && mv /run/cc/exit_code.tmp /run/cc/exit_code\n"
)
_TRANSIENT_ERRORS = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
)
_T = TypeVar("_T")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_OOM_DETAIL = "killed: out of memory (the worker's memory cgroup counted an OOM kill)"


class OperationFailedError(RuntimeError):
    """An LXD background operation ended in failure."""


def _is_transient(err: Exception) -> bool:
    """Tell whether an error means "the daemon is away or restarting", not a real refusal."""
    if isinstance(err, _TRANSIENT_ERRORS):
        return True
    if isinstance(err, pylxd.exceptions.LXDAPIException):
        response = getattr(err, "response", None)
        code = getattr(response, "status_code", 0)
        text = str(err).lower()
        return code in (502, 503, 504) or "shutting down" in text or "not ready" in text
    return False


def image_exists(config: HostConfig, image: str) -> bool:
    """Tell whether ``image`` is an image alias or fingerprint in ``config.lxd_project``."""
    client = connect(project=config.lxd_project)
    return _image_source(client, image) is not None


def _image_source(client: pylxd.Client, image: str) -> dict[str, str] | None:
    """Return the ``source`` of an instance create for ``image``; None when there is none."""
    with contextlib.suppress(pylxd.exceptions.NotFound):
        client.api.images.aliases[image].get()
        return {"type": "image", "alias": image}
    if _FINGERPRINT_RE.match(image):
        with contextlib.suppress(pylxd.exceptions.NotFound):
            full = client.api.images[image].get().json()["metadata"]["fingerprint"]
            return {"type": "image", "fingerprint": full}
    return None


def _read_small(dir_fd: int, name: str, limit: int = 64) -> str | None:
    """Read a small regular file in ``dir_fd`` without following links; None if absent."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, limit).decode(errors="replace")
    finally:
        os.close(fd)


def _parse_exit_code(text: str | None) -> int | None:
    if text is None:
        return None
    with contextlib.suppress(ValueError):
        return int(text.strip())
    return None


class _Worker:
    """What ``wait`` learns once about a running worker: host paths, init pid, cgroups."""

    def __init__(self, name: str, rootfs: Path | None, pid: int, memory_cgroup: Path | None):
        self.name = name
        self.rootfs = rootfs
        self.pid = pid
        self.memory_cgroup = memory_cgroup
        self.checks_without_wrapper = 0

    def init_alive(self) -> bool:
        """Tell whether the worker's init process still exists on the host."""
        return self.pid > 0 and Path(f"/proc/{self.pid}").exists()

    def oom_kills(self) -> int:
        """OOM kills counted in the worker's memory cgroup (0 when unknown)."""
        if self.memory_cgroup is None:
            return 0
        for name in ("memory.oom_control", "memory.events"):
            with contextlib.suppress(OSError):
                for line in (self.memory_cgroup / name).read_text().splitlines():
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        return 0

    def wrapper_alive(self, wrapper_pid: int) -> bool:
        """Tell whether a process of the worker has ``wrapper_pid`` as its in-worker pid."""
        if self.memory_cgroup is None:
            return True
        try:
            pids = (self.memory_cgroup / "cgroup.procs").read_text().split()
        except OSError:
            return True
        for pid in pids:
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("NSpid:") and line.split()[-1] == str(wrapper_pid):
                        return True
        return False


def _init_pid_from_cgroup(volume: str) -> int:
    """Return the host pid of the init of the container in cgroup ``lxc.payload.<volume>``."""
    for base in ("/sys/fs/cgroup/pids", "/sys/fs/cgroup/memory", "/sys/fs/cgroup"):
        try:
            pids = Path(base, f"lxc.payload.{volume}", "cgroup.procs").read_text().split()
        except OSError:
            continue
        for pid in pids:
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("NSpid:") and line.split()[-1] == "1":
                        return int(pid)
    return 0


def _has_cc_dir(root: Path) -> bool:
    """Tell whether ``root``/run/cc is a real directory (no link followed below ``root``)."""
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    fds = [root_fd]
    try:
        for part in CC_DIR.split("/"):
            fds.append(os.open(part, _DIR_FLAGS, dir_fd=fds[-1]))
        return True
    except OSError:
        return False
    finally:
        for fd in fds:
            os.close(fd)


def _memory_cgroup(pid: int) -> Path | None:
    """Return the host path of the memory cgroup of ``pid`` (cgroup v1 or v2), if any."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    v2: Path | None = None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return Path("/sys/fs/cgroup/memory" + path)
        if controllers == "":
            v2 = Path("/sys/fs/cgroup" + path)
    if v2 is not None and (v2 / "memory.events").exists():
        return v2
    return None


class LXDBackend:
    """Run task attempts in worker containers of ``config.lxd_project`` on the local LXD."""

    def __init__(
        self,
        config: HostConfig,
        client: pylxd.Client | None = None,
        retry_seconds: float = 120.0,
        poll_seconds: float = 0.5,
        host_access: bool = True,
    ) -> None:
        """Set up the backend; ``host_access=False`` reads workers through the files API only."""
        self.config = config
        self.host_access = host_access
        self.retry_seconds = retry_seconds
        self.poll_seconds = poll_seconds
        self._client = client
        self._images: dict[str, dict[str, str]] = {}

    # -- LXD plumbing -----------------------------------------------------------------------

    @property
    def client(self) -> pylxd.Client:
        """A client of the workers' project (connected on first use, reconnected when lost)."""
        if self._client is None:
            self._client = connect(project=self.config.lxd_project)
        return self._client

    def _retry(self, what: str, call: Callable[[], _T]) -> _T:
        """Run ``call``; while the daemon is away retry it for ``retry_seconds``."""
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.2
        while True:
            try:
                return call()
            except (
                LXDUnavailableError,
                pylxd.exceptions.LXDAPIException,
                *_TRANSIENT_ERRORS,
            ) as err:
                transient = isinstance(err, LXDUnavailableError) or _is_transient(err)
                if not transient or time.monotonic() + delay > deadline:
                    if transient:
                        raise LXDUnavailableError(
                            f"{what}: LXD did not answer for {self.retry_seconds:.0f}s: {err}"
                        ) from err
                    raise
                self._client = None if isinstance(err, LXDUnavailableError) else self._client
                time.sleep(delay)
                delay = min(delay * 2, 3.0)

    def _wait_operation(self, response: requests.Response) -> dict[str, Any]:
        """Wait for the background operation a request started; return its metadata."""
        body = response.json()
        if body.get("type") != "async":
            return body.get("metadata") or {}
        operation_id = body["operation"].rsplit("/", 1)[-1]
        while True:
            metadata = (
                self.client.api.operations[operation_id]
                .wait.get(params={"timeout": 30})
                .json()["metadata"]
            )
            if metadata["status"] == "Success":
                return metadata.get("metadata") or {}
            if metadata["status_code"] >= 400:
                raise OperationFailedError(metadata.get("err") or metadata["status"])

    def _instance(self, name: str) -> dict[str, Any] | None:
        """Return the instance's record (config, status; no costly state), or None if gone."""

        def get() -> dict[str, Any] | None:
            try:
                return self.client.api.instances[name].get().json()["metadata"]
            except pylxd.exceptions.NotFound:
                return None

        return self._retry(f"reading worker {name}", get)

    def _stop(self, name: str, known_running: bool = False) -> None:
        """Force-stop a worker; nothing when it is stopped or gone (survives daemon restarts)."""
        for _ in range(5):
            if not known_running:
                record = self._instance(name)
                if record is None or record.get("status") == "Stopped":
                    return
            known_running = False

            def stop() -> None:
                response = self.client.api.instances[name].state.put(
                    json={"action": "stop", "force": True, "timeout": -1}
                )
                self._wait_operation(response)

            try:
                self._retry(f"stopping worker {name}", stop)
            except pylxd.exceptions.NotFound:
                return
            except OperationFailedError:
                continue  # look again: stopped meanwhile, or try once more
            return

    # -- the Backend protocol ----------------------------------------------------------------

    def _check_spec(self, spec: WorkerSpec) -> dict[str, str]:
        """Validate a spec and return the worker's environment; LaunchError names the fault."""
        if not safe_name(spec.worker_name) or not re.match(
            r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$", spec.worker_name
        ):
            raise LaunchError(f"worker name {spec.worker_name!r} is not a valid LXD name")
        try:
            if spec.cpu:
                check_cpu_limit("cpu", spec.cpu)
            if spec.memory:
                check_memory_limit("memory", spec.memory)
        except ValueError as err:
            raise LaunchError(str(err)) from err
        if spec.input_dir is not None:
            path = Path(spec.input_dir)
            if not path.is_absolute() or not path.is_dir():
                raise LaunchError(
                    f"input-dir {spec.input_dir!r} is not an existing absolute directory"
                )
        env = {
            "JOB_ID": spec.job_id,
            "TASK_INDEX": str(spec.task_index),
            "RESULTS_DIR": RESULTS_DIR_IN_WORKER,
        }
        for key, value in spec.env.items():
            if not _ENV_NAME_RE.match(key) or key in _RESERVED_ENV:
                raise LaunchError(f"environment variable name {key!r} is not allowed")
            if "\0" in value:
                raise LaunchError(f"environment variable {key} contains a NUL byte")
            env[key] = value
        if "\0" in spec.command or not spec.command.strip():
            raise LaunchError("the command is empty or contains a NUL byte")
        return env

    def _source(self, image: str) -> dict[str, str]:
        cached = self._images.get(image)
        if cached is not None:
            return cached
        source = self._retry(
            f"looking up image {image}", lambda: _image_source(self.client, image)
        )
        if source is None:
            raise LaunchError(
                f"image {image!r} not found in LXD project {self.config.lxd_project!r} "
                "(build one with the build-worker-image action)"
            )
        self._images[image] = source
        return source

    def _create(self, spec: WorkerSpec, source: dict[str, str]) -> None:
        config = {
            LABEL_JOB: spec.job_id,
            LABEL_TASK: str(spec.task_index),
            LABEL_ATTEMPT: str(spec.attempt),
            LABEL_STARTED: f"{time.time():.3f}",
        }
        if spec.cpu:
            config["limits.cpu"] = spec.cpu
        if spec.memory:
            config["limits.memory"] = spec.memory
        devices: dict[str, dict[str, str]] = {}
        if spec.input_dir is not None:
            devices["input"] = {
                "type": "disk",
                "source": spec.input_dir,
                "path": INPUT_DIR_IN_WORKER,
                "readonly": "true",
            }
        body = {
            "name": spec.worker_name,
            "type": "container",
            "source": source,
            "profiles": [WORKER_PROFILE],
            "config": config,
            "devices": devices,
        }

        def create() -> None:
            try:
                self._wait_operation(self.client.api.instances.post(json=body))
            except (pylxd.exceptions.LXDAPIException, OperationFailedError) as err:
                if _is_transient(err):
                    raise
                # A create retried over a daemon restart, or start() called twice: reuse it.
                existing = self._instance(spec.worker_name)
                if existing is None or not _labels_match(existing["config"], spec):
                    raise LaunchError(f"creating worker {spec.worker_name} failed: {err}") from err

        self._retry(f"creating worker {spec.worker_name}", create)

    def start(self, spec: WorkerSpec) -> str:
        """Create, label and start the worker and start the command; return the worker's name.

        Raises:
            LaunchError: when the spec is invalid (nothing is changed), the image is missing,
                or the worker cannot be created, started or given its command (the half-made
                worker is deleted).

        """
        env = self._check_spec(spec)
        source = self._source(spec.image)
        name = spec.worker_name
        self._create(spec, source)
        try:
            self._start_and_exec(name, spec, env)
        except (LaunchError, OperationFailedError, pylxd.exceptions.LXDAPIException) as err:
            with contextlib.suppress(Exception):
                self.delete(name)
            if isinstance(err, LaunchError):
                raise
            raise LaunchError(f"starting worker {name} failed: {err}") from err
        return name

    def _start_and_exec(self, name: str, spec: WorkerSpec, env: dict[str, str]) -> None:
        def start() -> None:
            try:
                self._wait_operation(
                    self.client.api.instances[name].state.put(json={"action": "start"})
                )
            except (OperationFailedError, pylxd.exceptions.LXDAPIException) as err:
                record = None if _is_transient(err) else self._instance(name)
                if record is None or record.get("status") != "Running":
                    raise  # start() called twice or retried over a restart finds it running

        self._retry(f"starting worker {name}", start)
        environment = {**env, "CC_COMMAND": spec.command, "CC_WRAPPER": _WRAPPER}

        def execute() -> dict[str, Any]:
            response = self.client.api.instances[name].exec.post(
                json={
                    "command": ["/bin/sh", "-c", _LAUNCHER],
                    "environment": environment,
                    "wait-for-websocket": False,
                    "interactive": False,
                    "record-output": False,
                }
            )
            return self._wait_operation(response)

        result = self._retry(f"starting the command in worker {name}", execute)
        if result.get("return", 0) != 0:
            raise LaunchError(
                f"the launcher in worker {name} exited {result.get('return')} "
                "(does the image have /bin/sh and a writable /run?)"
            )

    def _init_pid(self, name: str, volume: str) -> int:
        """Return the worker's init pid: from its cgroup on the host, else LXD's state call."""
        pid = _init_pid_from_cgroup(volume) if self.host_access else 0
        if pid:
            return pid

        def get() -> int:
            try:
                state = self.client.api.instances[name].state.get().json()["metadata"]
            except pylxd.exceptions.NotFound:
                return 0
            return int(state.get("pid") or 0)

        return self._retry(f"reading the state of worker {name}", get)

    def _locate(self, name: str, record: dict[str, Any]) -> _Worker | None:
        """Find a running worker's init pid, a host view of its root, and its memory cgroup.

        The root is ``/proc/<init pid>/root`` (the worker's own view, on every storage
        driver), else the rootfs under LXD's storage-pools directory (dir, btrfs); either
        must hold ``/run/cc`` as a real directory. None: read through the files API.
        """
        if record.get("status") != "Running":
            return None
        project = record.get("project") or self.config.lxd_project
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
        rootfs = next((c for c in candidates if _has_cc_dir(c)), None)
        return _Worker(name, rootfs, pid, _memory_cgroup(pid) if pid else None)

    def _read_cc(self, worker: _Worker, name: str) -> str | None:
        """Read a small file of /run/cc in the worker: host side when possible, else the API."""
        if worker.rootfs is not None:
            try:
                root_fd = os.open(worker.rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                return None
            try:
                run_fd = os.open("run", _DIR_FLAGS, dir_fd=root_fd)
                try:
                    cc_fd = os.open("cc", _DIR_FLAGS, dir_fd=run_fd)
                finally:
                    os.close(run_fd)
                try:
                    return _read_small(cc_fd, name)
                finally:
                    os.close(cc_fd)
            except OSError:
                return None
            finally:
                os.close(root_fd)
        return self._api_read(worker.name, f"/{CC_DIR}/{name}", 64)

    def _api_read(self, worker: str, path: str, limit: int) -> str | None:
        data = _api_pull_file(self.client, worker, path, limit)
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
        record = self._instance(name)
        if record is None:
            return TaskOutcome(
                None, FailureReason.EXIT_CODE, detail=f"worker {name} does not exist"
            )
        started_at = float(record["config"].get(LABEL_STARTED) or time.time())
        worker = self._locate(name, record)
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
            self._stop(name)
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
        worker: _Worker,
        deadline: float | None,
        should_stop: Callable[[], FailureReason | None],
    ) -> TaskOutcome:
        """Poll until an exit code appears, the deadline passes, or should_stop says so."""
        interval = 0.02 if worker.rootfs is not None else self.poll_seconds
        limit = self.poll_seconds if worker.rootfs is not None else max(self.poll_seconds, 2.0)
        next_check = time.monotonic() + 2.0
        while True:
            exit_code = _parse_exit_code(self._read_cc(worker, "exit_code"))
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

    def _lost(self, worker: _Worker) -> TaskOutcome | None:
        """Return an outcome when the command can no longer end normally, else None."""
        if worker.rootfs is None or not worker.init_alive():
            record = self._instance(worker.name)
            if record is None or record.get("status") != "Running":
                return TaskOutcome(
                    None,
                    FailureReason.EXIT_CODE,
                    detail=f"worker {worker.name} stopped before its command finished",
                )
        wrapper_pid = _parse_exit_code(self._read_cc(worker, "pid"))
        if wrapper_pid is None:
            worker.checks_without_wrapper += 1
            if worker.checks_without_wrapper > WRAPPER_START_CHECKS:
                return TaskOutcome(
                    None, FailureReason.EXIT_CODE, detail="the command's wrapper never started"
                )
        elif not worker.wrapper_alive(wrapper_pid):
            if _parse_exit_code(self._read_cc(worker, "exit_code")) is not None:
                return None  # finished just now: the next poll reads it
            if worker.oom_kills() > 0:
                return TaskOutcome(None, FailureReason.OOM, detail=_OOM_DETAIL)
            return TaskOutcome(
                None, FailureReason.EXIT_CODE, detail="the task's shell ended without an exit code"
            )
        return None

    def _gather(
        self, worker: _Worker, task_dir: Path, cap_bytes: int, exit_code: int | None
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
            _api_pull_tree(self.client, worker.name, root, cap_bytes)
            return gather_task(root, task_dir, cap_bytes, exit_code)

    def delete(self, name: str) -> bool:
        """Stop and delete a worker; return False when it did not exist.

        Raises:
            ValueError: when the instance carries no container-compute labels (not a worker).

        """
        record = self._instance(name)
        if record is None:
            return False
        if LABEL_JOB not in record.get("config", {}):
            raise ValueError(f"instance {name!r} is not a container-compute worker (no labels)")
        if record.get("status") != "Stopped":
            self._stop(name, known_running=True)

        def remove() -> bool:
            try:
                self._wait_operation(self.client.api.instances[name].delete())
            except pylxd.exceptions.NotFound:
                return True
            return True

        busy_until = time.monotonic() + BUSY_WAIT_SECONDS
        while True:
            try:
                return self._retry(f"deleting worker {name}", remove)
            except OperationFailedError as err:
                if self._instance(name) is None:
                    return True
                if "busy" not in str(err) or time.monotonic() >= busy_until:
                    raise
                time.sleep(self.poll_seconds)  # e.g. a stop still running: wait for it

    def list_workers(self) -> list[WorkerInfo]:
        """Every worker of this backend's project that carries container-compute labels."""
        records = self._retry(
            "listing workers",
            lambda: self.client.api.instances.get(params={"recursion": 1}).json()["metadata"],
        )
        workers = []
        for record in records:
            config = record.get("config", {})
            if LABEL_JOB not in config:
                continue
            workers.append(
                WorkerInfo(
                    name=record["name"],
                    job_id=config.get(LABEL_JOB),
                    task_index=_int_or_none(config.get(LABEL_TASK)),
                    attempt=_int_or_none(config.get(LABEL_ATTEMPT)),
                    running=record.get("status") == "Running",
                )
            )
        return sorted(workers, key=lambda w: w.name)


def _int_or_none(text: str | None) -> int | None:
    with contextlib.suppress(TypeError, ValueError):
        return int(text)  # type: ignore[arg-type]
    return None


def _labels_match(config: dict[str, str], spec: WorkerSpec) -> bool:
    return (
        config.get(LABEL_JOB) == spec.job_id
        and config.get(LABEL_TASK) == str(spec.task_index)
        and config.get(LABEL_ATTEMPT) == str(spec.attempt)
    )


def _api_get_path(client: pylxd.Client, worker: str, path: str) -> requests.Response | None:
    try:
        return client.api.instances[worker].files.get(params={"path": path}, stream=True)
    except pylxd.exceptions.NotFound:
        return None


def _api_pull_file(client: pylxd.Client, worker: str, path: str, limit: int) -> bytes | None:
    """Up to ``limit`` bytes of a regular file in the worker through the files API."""
    response = _api_get_path(client, worker, path)
    if response is None or response.headers.get("X-LXD-type") != "file":
        return None
    with contextlib.closing(response):
        return response.raw.read(limit)


def _api_pull_tree(client: pylxd.Client, worker: str, root: Path, cap_bytes: int) -> None:
    """Copy stdout, stderr and /results of a worker into ``root`` through the files API.

    Only regular files and directories are written (never a link); names are checked; every
    file is read up to the remaining cap (gather_task then applies the cap exactly).
    """
    budget = cap_bytes + 1
    (root / "run" / "cc").mkdir(parents=True)
    for name in ("stdout", "stderr"):
        data = _api_pull_file(client, worker, f"/{CC_DIR}/{name}", budget)
        if data is not None:
            (root / "run" / "cc" / name).write_bytes(data)
            budget -= len(data)
    pending = [("results", root / "results")]
    entries = 0
    while pending:
        relative, target = pending.pop(0)
        response = _api_get_path(client, worker, "/" + relative)
        if response is None:
            continue
        kind = response.headers.get("X-LXD-type")
        if kind == "directory":
            target.mkdir()
            names = response.json().get("metadata") or []
            for child in sorted(names):
                entries += 1
                if safe_name(child) and entries < 100_000:
                    pending.append((f"{relative}/{child}", target / child))
        elif kind == "file" and budget > 0:
            with contextlib.closing(response):
                data = response.raw.read(budget)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            budget -= len(data)
        else:
            response.close()
