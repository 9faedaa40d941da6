"""Worker containers on an LXD daemon: the lifecycle of a task attempt's worker.

A worker is created from an image with only the worker profile, labelled with its job, task
and attempt, started, and given its command through the exec API without a websocket: a tiny
launcher (``mkdir /run/cc`` is its lock, so the command never runs twice) puts the wrapper in
the background, where it runs the user's command (passed in the environment, never spliced
into a string) with stdout, stderr and finally the exit code in ``/run/cc``. Nothing depends
on a connection or on the daemon staying up: the task is a child of the worker's init.
Following the worker and gathering its results is ``watch``'s job.
"""

import contextlib
import dataclasses
import logging
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pylxd

from ...config import HostConfig, check_cpu_limit, check_disk_limit, check_memory_limit
from ...constants import (
    ENV_NAME_RE,
    INPUT_DIR_IN_WORKER,
    LABEL_ATTEMPT,
    LABEL_JOB,
    LABEL_OWNER,
    LABEL_TASK,
    RESULTS_DIR_IN_WORKER,
    SCRIPT_ENV,
    WORKER_PROFILE,
)
from ...lxdclient import LXDUnavailableError, endpoint_of
from .. import (
    SPARE_TASK,
    FailureReason,
    LaunchError,
    TaskOutcome,
    WorkerInfo,
    WorkerSpec,
    WorkerUnreachableError,
)
from ..gather import safe_name
from ..usage import LXD_STATE
from .api import LXDApi, OperationFailedError, boot_worker, is_transient, remove_log_dir
from .disk import explain_disk_full
from .launch import (
    LAUNCHER,
    SANDBOX_WRAPPER,
    WARM_LAUNCHER,
    WRAPPER,
    sandbox_environment,
)
from .members import (
    LostMemberGuard,
    MemberBook,
    lost_outcome,
    told_member_lost,
    unreachable,
)
from .ready import ReadyBook
from .remote import RemoteAttemptWatcher, explain_remote_oom
from .templates import TemplateBook
from .warm import PreparedWorkers, WarmWorkers
from .watch import LABEL_STARTED, AttemptWatcher

logger = logging.getLogger(__name__)
MEMBER_LOST_WAIT_SECONDS = 60.0  # for LXD to count an unreachable member offline
BUSY_WAIT_SECONDS = 60.0  # LXD refuses to delete an instance while another operation runs on it
DELETE_TIMEOUT_SECONDS = 60.0


class LXDBackend:
    """Run task attempts in worker containers of ``config.lxd_project`` on an LXD daemon."""

    def __init__(
        self,
        config: HostConfig,
        client: pylxd.Client | None = None,
        retry_seconds: float = 120.0,
        poll_seconds: float = 0.5,
        host_access: bool = True,
        owner: str = "",
        state_dir: Path | None = None,
    ) -> None:
        """Set up the backend; ``host_access=False`` (or lxd-endpoint) reads through the API.

        ``owner``: the owner id its workers and templates are labelled with (see owner.py).
        ``state_dir``: where PEM text of the lxd-* options is kept (``lxdclient.pem_file``).
        """
        self.config = config
        self.owner = owner
        endpoint = endpoint_of(config, state_dir)
        self.api = LXDApi(config.lxd_project, client, retry_seconds, poll_seconds, endpoint)
        self.host_access = host_access and endpoint is None
        self.local = endpoint is None  # the daemon of this host (its log directories)
        self.watcher = AttemptWatcher(self.api, self.host_access)
        self.remote_watcher = RemoteAttemptWatcher(self.api)
        self.members = MemberBook(self.api)
        self.templates = TemplateBook(self.api, config, owner)
        self.warm = WarmWorkers(self.api, self.host_access)
        self.prepared = PreparedWorkers()
        self.ready = ReadyBook(self, owner)
        self._launched: set[str] = set()  # workers whose launcher this backend ran

    @property
    def client(self) -> pylxd.Client:
        """A client of the workers' project."""
        return self.api.client

    def _create(self, spec: WorkerSpec, source: dict[str, Any]) -> None:
        body = create_body(spec, source, self.config.storage_pool, self.owner)
        target = self.members.target(spec.placement, spec.task_index, spec.worker_name)
        where = {"params": {"target": target}} if target else {}

        def create() -> None:
            try:
                self.api.wait_operation(self.client.api.instances.post(json=body, **where))
            except (pylxd.exceptions.LXDAPIException, OperationFailedError) as err:
                if is_transient(err):
                    raise
                # A create retried over a daemon restart, or start() called twice: reuse it.
                existing = self.api.instance(spec.worker_name)
                if existing is None or not _labels_match(existing["config"], spec):
                    raise LaunchError(f"creating worker {spec.worker_name} failed: {err}") from err

        self.api.retry(f"creating worker {spec.worker_name}", create)

    def start(self, spec: WorkerSpec) -> str:
        """Create, label and start the worker and start the command; return the worker's name.

        A worker made before (``prepare``, a ready one) only gets its job's labels and command.

        Raises:
            LaunchError: when the spec is invalid (nothing is changed), the image is missing,
                or the worker cannot be created, started or given its command (the half-made
                worker is deleted); MemberLostError when its cluster member is gone.
        """
        env = check_spec(spec)
        name = spec.worker_name
        with told_member_lost(self.members, name):
            if spec.reuse and self.warm.knows(name) and self._next_task(spec, env):
                return name
            if not self.prepared.claim(name) and not (spec.reuse and self.ready.adopt(spec)):
                self._make(spec)
            with self._deleted_on_failure(name):
                self._exec_launcher(name, spec, env)
        self._launched.add(name)
        return name

    def prepare(self, spec: WorkerSpec) -> None:
        """Create and start a worker ahead of its task, with no command yet.

        The attempt whose spec names it later only gives it its command (``start``).

        Raises:
            LaunchError: when it cannot be made (the half-made worker is deleted).
        """
        check_spec(spec)
        self._make(spec)
        self.prepared.add(spec.worker_name)

    def _make(self, spec: WorkerSpec) -> None:
        """Create the worker (a copy of a template where it can be) and start it."""
        # On a cluster a copy would cross members: there LXD unpacks the image for each worker.
        copy = self.local and not self.members.clustered
        began = time.monotonic()
        self._create(spec, self.templates.worker_source(spec.image, spec.job_id, copy))
        with self._deleted_on_failure(spec.worker_name):
            self.members.look_up(spec.worker_name)
            boot_worker(self.api, spec.worker_name, began)
            if spec.reuse and (not spec.sandbox or self.warm.makes_sandboxes(spec.worker_name)):
                self.warm.learn(spec.worker_name)

    @contextlib.contextmanager
    def _deleted_on_failure(self, name: str) -> Iterator[None]:
        """Delete the worker when the block fails; the failure is raised as a LaunchError."""
        try:
            yield
        except (LaunchError, OperationFailedError, pylxd.exceptions.LXDAPIException) as err:
            with contextlib.suppress(Exception):
                self.delete(name)
            if isinstance(err, LaunchError):
                raise
            raise LaunchError(f"starting worker {name} failed: {err}") from err

    def _next_task(self, spec: WorkerSpec, env: dict[str, str]) -> str | None:
        """Check, wipe and give a warm worker its next command; None: it was left dirty.

        A dirty worker (processes of its last task, /results or /tmp that cannot be wiped,
        a full disk) is deleted: the caller makes a fresh one of the same name.
        """
        name = spec.worker_name
        try:
            code = self._exec_launcher(name, spec, env, self.warm.environment(name))
        except (LaunchError, OperationFailedError, pylxd.exceptions.LXDAPIException) as err:
            logger.info("replacing warm worker %s: it could not take its next task: %s", name, err)
            code = -1
        if code == 0:
            self._launched.add(name)
            return name
        if code > 0:
            logger.info("replacing warm worker %s: %s", name, self.warm.verdict(code))
        self.delete(name)
        return None

    def recycle(self, spec: WorkerSpec) -> str:
        """Whether a warm worker may take the job's next task: "" when it may, else why not.

        The checks and the wipe run with the next task (``_next_task``): one exec per task.
        """
        if self.warm.knows(spec.worker_name):
            return ""
        return self.warm.refusal_note() or "not a warm worker of this backend"

    def relaunch(self, spec: WorkerSpec) -> None:
        """Make sure an existing worker runs its command: start it if stopped, run the launcher.

        For an attempt another process started (it may have died before the command ran).
        Idempotent: the launcher's ``mkdir /run/cc`` lock never lets the command run twice.

        Raises:
            LaunchError: when the worker cannot be started or given its command.
        """
        env = check_spec(spec)
        name = spec.worker_name
        try:
            record = self.api.instance(name)
            if record is not None and record.get("status") != "Running":
                boot_worker(self.api, name)
            self._exec_launcher(name, spec, env)
        except (OperationFailedError, pylxd.exceptions.LXDAPIException) as err:
            raise LaunchError(f"restarting the command in worker {name} failed: {err}") from err
        self._launched.add(name)

    def _exec_launcher(
        self, name: str, spec: WorkerSpec, env: dict[str, str], warm: dict[str, str] | None = None
    ) -> int:
        """Run the launcher (``warm``: the checks and wipe first); return its exit code.

        Raises:
            LaunchError: when the launcher itself failed.
        """
        attempt = f"{spec.job_id}/{spec.task_index}/{spec.attempt}"
        environment = {**env, "CC_COMMAND": spec.command, "CC_WRAPPER": WRAPPER, **(warm or {})}
        environment |= {"CC_ATTEMPT": attempt}
        if spec.sandbox and self.warm.knows(name):
            environment.update(CC_WRAPPER=SANDBOX_WRAPPER, **sandbox_environment(name))
        script = LAUNCHER if warm is None else WARM_LAUNCHER
        code = self.warm.launch(name, script, environment)
        if code != 0 and (warm is None or not self.warm.verdict(code)):
            raise LaunchError(
                f"the launcher of {attempt} in worker {name} exited {code} (7: it holds "
                "another attempt's /run/cc; else: has the image /bin/sh and a writable /run?)"
            )
        return code

    def wait(
        self,
        spec: WorkerSpec,
        task_dir: Path,
        should_stop: Callable[[], FailureReason | None],
    ) -> TaskOutcome:
        """Follow the worker until its command ends or it must stop; gather results to task_dir.

        A worker this backend did not start (an attempt adopted after a crash) first gets its
        command started again if it never ran: see ``relaunch``. A failure with a full root
        disk is told apart (``explain_disk_full``). On a cluster the outcome names the member
        (``host``); a member lost meanwhile ends it as MEMBER_LOST, nothing gathered (the
        engine runs it elsewhere).
        """
        name = spec.worker_name
        if spec.sandbox and not self.warm.knows(name):  # its own worker, no sandbox
            spec = dataclasses.replace(spec, sandbox=False)
        relaunch = None if name in self._launched else (lambda: self.relaunch(spec))
        try:
            outcome = _follow_on_member(self, spec, task_dir, should_stop, relaunch)
        finally:
            self._launched.discard(name)
        if outcome.reason == FailureReason.MEMBER_LOST:
            return outcome
        return explain_disk_full(self.api, spec, outcome, task_dir)

    def delete(self, name: str) -> bool:
        """Force-stop and delete a worker; return False when it did not exist.

        A worker that starts again meanwhile (the task rebooted it) is stopped again.

        Raises:
            ValueError: when the instance carries no container-compute labels (not a worker).
            WorkerUnreachableError: when it is on a cluster member that is offline.

        """
        self.warm.forget(name)
        self.watcher.forget(name)
        self.prepared.forget(name)
        try:
            removed = _remove_worker(self.api, name)
        except (OperationFailedError, pylxd.exceptions.LXDAPIException) as err:
            _raise_if_unreachable(self.members, name, err)
            raise
        if self.local:
            remove_log_dir(self.config.lxd_project, name)
        return removed

    def job_finished(self, job_id: str) -> None:
        """Delete the job's templates (its id range) once the job is over."""
        if self.local:
            self.templates.prune_job(job_id)

    def reap_extras(self, live_jobs: set[str], known_jobs: set[str]) -> list[str]:
        """Delete own templates of jobs not live, of images no alias names, of another mode."""
        return self.templates.prune_unused(live_jobs) if self.local else []

    def reap_owner(self, owner: str) -> list[str]:
        """Delete the templates another owner left (a state dir gone for good)."""
        return TemplateBook(self.api, self.config, owner).prune_all() if self.local else []

    def list_workers(self) -> list[WorkerInfo]:
        """Every worker of this backend's project that carries container-compute labels."""
        records = self.api.retry(
            "listing workers",
            lambda: self.client.api.instances.get(params={"recursion": 1}).json()["metadata"],
        )
        workers = []
        for record in records:
            if record.get("status") == "Error" and self.members.lost(record.get("location", "")):
                continue  # on a member that is offline: listed (and reaped) once it is back
            info = _worker_info(record)
            if info is not None:
                workers.append(info)
        return sorted(workers, key=lambda w: w.name)


def create_body(
    spec: WorkerSpec, source: dict[str, Any], pool: str, owner: str = ""
) -> dict[str, Any]:
    """The body of the instance create of a worker: labels, the job's limits and disks.

    Raises:
        LaunchError: when the job's disk size is not one.
    """
    config = {LABEL_JOB: spec.job_id, LABEL_STARTED: f"{time.time():.3f}"}
    if owner:
        config[LABEL_OWNER] = owner
    if spec.task_index != SPARE_TASK:  # a worker made ahead has no task yet
        config |= {LABEL_TASK: str(spec.task_index), LABEL_ATTEMPT: str(spec.attempt)}
    if spec.cpu:
        config["limits.cpu"] = spec.cpu
    if spec.memory:
        config["limits.memory"] = spec.memory
    devices: dict[str, dict[str, str]] = {}
    if spec.disk:
        try:
            check_disk_limit("disk", spec.disk)
        except ValueError as err:
            raise LaunchError(str(err)) from err
        # The job's own root disk size, in place of the profile's (worker-disk).
        root = {"type": "disk", "path": "/", "pool": pool}
        devices["root"] = {**root, "size": spec.disk}
    if spec.input_dir is not None:
        devices["input"] = {
            "type": "disk",
            "source": spec.input_dir,
            "path": INPUT_DIR_IN_WORKER,
            "readonly": "true",
        }
    return {
        "name": spec.worker_name,
        "type": "container",
        "source": source,
        "profiles": [WORKER_PROFILE],
        "config": config,
        "devices": devices,
    }


def check_spec(spec: WorkerSpec) -> dict[str, str]:
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
        if not ENV_NAME_RE.match(key) or key in SCRIPT_ENV:
            raise LaunchError(f"environment variable name {key!r} is not allowed")
        if "\0" in value:
            raise LaunchError(f"environment variable {key} contains a NUL byte")
        env[key] = value
    if "\0" in spec.command or not spec.command.strip():
        raise LaunchError("the command is empty or contains a NUL byte")
    return env


def _remove_worker(api: LXDApi, name: str) -> bool:
    """Stop and delete a labelled worker (riding out a busy instance); False if absent."""
    record = api.instance(name)
    if record is None:
        return False
    if LABEL_JOB not in record.get("config", {}):
        raise ValueError(f"instance {name!r} is not a container-compute worker (no labels)")

    def remove() -> bool:
        try:
            api.wait_operation(
                api.client.api.instances[name].delete(), timeout=DELETE_TIMEOUT_SECONDS
            )
        except pylxd.exceptions.NotFound:
            return True
        return True

    known_running = record.get("status") != "Stopped"
    busy_until = time.monotonic() + BUSY_WAIT_SECONDS
    while True:
        api.force_stop(name, known_running=known_running)
        known_running = False
        try:
            return api.retry(f"deleting worker {name}", remove)
        except (OperationFailedError, pylxd.exceptions.LXDAPIException) as err:
            if isinstance(err, pylxd.exceptions.NotFound) or api.instance(name) is None:
                return True
            text = str(err).lower()
            retry = "busy" in text or "running" in text
            if not retry or time.monotonic() >= busy_until:
                raise
            time.sleep(api.poll_seconds)  # a stop still running, or started again: again


def _worker_info(record: dict[str, Any]) -> WorkerInfo | None:
    """The worker an instance record describes; None when it carries no labels."""
    config = record.get("config", {})
    if LABEL_JOB not in config:
        return None
    return WorkerInfo(
        name=record["name"],
        job_id=config.get(LABEL_JOB),
        task_index=_int_or_none(config.get(LABEL_TASK)),
        attempt=_int_or_none(config.get(LABEL_ATTEMPT)),
        running=record.get("status") == "Running",
        owner=config.get(LABEL_OWNER, ""),
    )


def _raise_if_unreachable(members: MemberBook, name: str, err: Exception) -> None:
    """Raise WorkerUnreachableError when ``err`` came from a worker's member being offline."""
    member = members.location(name)
    if member and (unreachable(err) or members.lost(member, fresh=True)):
        raise WorkerUnreachableError(
            f"worker {name} is on cluster member {member}, which is offline; it is reaped "
            f"once {member} is back"
        ) from err


def _follow_on_member(
    backend: LXDBackend,
    spec: WorkerSpec,
    task_dir: Path,
    should_stop: Callable[[], FailureReason | None],
    relaunch: Callable[[], None] | None,
) -> TaskOutcome:
    """Watch an attempt host side (a worker of this host) or through the API; mind its member."""
    members = backend.members
    member = members.location(spec.worker_name)
    local = backend.host_access and member in ("", members.own_name())
    watcher = backend.watcher if local else backend.remote_watcher
    guard = LostMemberGuard(members, member, spec.worker_name)
    try:
        outcome = watcher.wait(spec, task_dir, lambda: should_stop() or guard.check(), relaunch)
    except (LXDUnavailableError, OperationFailedError, pylxd.exceptions.LXDAPIException) as err:
        if not member or not (unreachable(err) or members.lost(member)):
            raise
        if not members.wait_lost(member, MEMBER_LOST_WAIT_SECONDS):
            raise
        if members.answers_for(spec.worker_name):
            raise  # the member is back (or was only listed offline during an election)
        outcome = lost_outcome(member, str(err))
    peak = None if local else backend.remote_watcher.take_peak(spec.worker_name)
    if outcome.reason == FailureReason.MEMBER_LOST:
        _empty(task_dir)
        if outcome.host != member:  # told by the guard, not yet said which member
            outcome = lost_outcome(member, outcome.detail)
    elif not local:
        outcome = explain_remote_oom(backend.api, spec, outcome, peak)
        outcome.usage.take_memory(peak, LXD_STATE)
    outcome.host = member
    return outcome


def _empty(directory: Path) -> None:
    """Remove what a half-finished gathering left in ``directory``."""
    for entry in directory.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


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
