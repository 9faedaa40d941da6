"""Task attempts as Nova servers: create, follow through the console log, gather, delete.

One server per attempt, named like an LXD worker and labelled in its metadata (job, task,
attempt, start time), booted from a Glance image with a flavor, a network or none, an
availability zone and, for ``spread`` jobs, a soft-anti-affinity server group of the job. The
task script comes as user-data (``payload``); ``wait`` polls the server and its console log
until the attempt's payload is there whole, then gathers it exactly like an LXD worker's
output (``gather.gather_task``: same tree, caps and path safety). A restarted agent finds its
servers again by their labels.
"""

import contextlib
import logging
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from novaclient import exceptions as nova_exceptions

from ...config import HostConfig
from ...units import parse_size
from .. import FailureReason, LaunchError, TaskOutcome, WorkerInfo, WorkerSpec
from ..gather import gather_task
from . import payload
from .api import NotFoundError, NovaApi, describe_error
from .payload import ConsolePayload, PayloadState
from .servers import (
    META_ATTEMPT,
    META_JOB,
    META_OWNER,
    META_STARTED,
    META_TASK,
    ServerBoard,
    ServerView,
    delete_servers,
)

logger = logging.getLogger(__name__)

CONSOLE_POLL_MAX_SECONDS = 3.0
GROUP_POLICY = "soft-anti-affinity"


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


class NovaBackend:
    """Run task attempts as servers of the Nova of the keystone relation's credentials."""

    def __init__(
        self,
        config: HostConfig,
        session: Any,
        region: str = "",
        poll_seconds: float = 1.0,
        owner: str = "",
    ) -> None:
        """Use a keystoneauth1 session (see ``identity.session_from_clouds_yaml``).

        ``owner``: the owner id its servers are labelled with (see owner.py).
        """
        self.config = config
        self.owner = owner
        self.api = NovaApi(session, region)
        self.board = ServerBoard(self.api, poll_seconds)
        self.poll_seconds = poll_seconds
        self._groups: dict[str, str] = {}
        self._lock = threading.Lock()

    # Checks before a job is recorded ---------------------------------------------------

    def image_exists(self, image: str) -> bool:
        """Tell whether Glance has this image (name or id)."""
        try:
            self.api.image(image)
        except NotFoundError:
            return False
        return True

    def image_config(self, image: str) -> dict[str, Any] | None:
        """The OCI config the Glance image carries (Env, WorkingDir...); None: it has none."""
        return self.api.image_config(image)

    def check_launch(self, options: dict[str, str]) -> list[str]:
        """Check a job's flavor, image, network and zone; return notes on the flavor.

        Raises:
            ValueError: naming the parameter (or option) that cannot work.
        """
        flavor_name = options.get("flavor") or self.config.nova_flavor
        if not flavor_name:
            raise ValueError("flavor: no Nova flavor: set the nova-flavor option or pass flavor=")
        try:
            flavor = self.api.flavor(flavor_name)
        except NotFoundError as err:
            raise ValueError(f"flavor: {err}") from None
        network = self._network_name(options)
        if network:
            try:
                self.api.network(network)
            except NotFoundError as err:
                raise ValueError(f"network: {err}") from None
        zone = options.get("availability_zone") or self.config.nova_availability_zone
        if zone:
            try:
                self.api.check_zone(zone)
            except NotFoundError as err:
                raise ValueError(f"availability-zone: {err}") from None
        return self.api.flavor_notes(
            flavor, self.config.worker_privileged, self.config.worker_nesting
        )

    def _network_name(self, options: dict[str, str]) -> str:
        network = options.get("network") or self.config.nova_network
        return "" if network in ("", "none") else network

    # Lifecycle --------------------------------------------------------------------------

    def start(self, spec: WorkerSpec) -> str:
        """Create the attempt's server with its user-data; return its name.

        Raises:
            LaunchError: an unknown flavor, image or network, user-data over Nova's limit, a
                quota exceeded or any refusal of Nova (its message kept, with the values of
                the job's environment redacted: Nova may echo the user-data).
        """
        name = spec.worker_name
        if self.board.by_name(name, force=True):
            return name  # created before a crash, or start() called twice
        options = dict(spec.options)
        try:
            flavor = self.api.flavor(options.get("flavor") or self.config.nova_flavor)
            image_id = self.api.image(spec.image)
            network = self._network_name(options)
            nics: Any = [{"net-id": self.api.network(network)}] if network else "none"
            text = payload.user_data(spec, parse_size(self.config.nova_console_cap))
        except (NotFoundError, ValueError) as err:
            raise LaunchError(str(err)) from err
        if payload.user_data_size(text) > payload.NOVA_USER_DATA_LIMIT:
            raise LaunchError(
                f"the task's user-data is {payload.user_data_size(text)} bytes in base64, over "
                f"Nova's {payload.NOVA_USER_DATA_LIMIT}: shorten the command or the task's input"
            )
        hints = {"group": self._group(spec.job_id)} if options.get("spread") == "true" else None
        metadata = {
            META_JOB: spec.job_id,
            META_TASK: str(spec.task_index),
            META_ATTEMPT: str(spec.attempt),
            META_STARTED: f"{time.time():.3f}",
            **({META_OWNER: self.owner} if self.owner else {}),
        }
        zone = options.get("availability_zone") or self.config.nova_availability_zone or None
        try:
            self.api.call(
                f"creating server {name}",
                lambda: self.api.client.servers.create(
                    name,
                    image_id,
                    flavor,
                    meta=metadata,
                    userdata=text,
                    nics=nics,
                    availability_zone=zone,
                    scheduler_hints=hints,
                ),
            )
        except LaunchError as err:  # no cause kept: Nova's answer may echo the user-data
            raise LaunchError(payload.redact(str(err), spec, text)) from None
        except Exception as err:
            detail = f"creating server {name}: {type(err).__name__}: {err}"
            raise LaunchError(payload.redact(detail, spec, text)) from None
        return name

    def _group(self, job_id: str) -> str:
        """The id of the job's soft-anti-affinity server group (created on first use)."""
        name = f"cc-{job_id}"
        with self._lock:
            if name not in self._groups:
                groups = self.api.call(
                    "listing server groups", lambda: self.api.client.server_groups.list()
                )
                found = next((g for g in groups if g.name == name), None)
                if found is None:
                    found = self.api.call(
                        f"creating server group {name}",
                        lambda: self.api.client.server_groups.create(
                            name=name, policy=GROUP_POLICY
                        ),
                    )
                self._groups[name] = found.id
            return self._groups[name]

    def wait(
        self,
        spec: WorkerSpec,
        task_dir: Path,
        should_stop: Callable[[], FailureReason | None],
    ) -> TaskOutcome:
        """Follow the server until its payload is whole or it must stop; gather to task_dir."""
        found = self.board.by_name(spec.worker_name, force=True)
        if not found:
            return TaskOutcome(
                None, FailureReason.EXIT_CODE, detail=f"server {spec.worker_name} does not exist"
            )
        server = found[0]
        started_at = server.started_at or time.time()
        deadline = started_at + spec.timeout_seconds if spec.timeout_seconds > 0 else None
        follower = _Follower(self, spec, server.id)
        outcome = follower.follow(deadline, should_stop)
        outcome.started_at = started_at
        if follower.payload is not None and follower.payload.state == PayloadState.COMPLETE:
            self._gather(spec, follower.payload, task_dir, outcome)
        outcome.detail = payload.redact(outcome.detail, spec)  # a fault or the console's end
        outcome.finished_at = time.time()
        return outcome

    def _gather(
        self, spec: WorkerSpec, found: ConsolePayload, task_dir: Path, outcome: TaskOutcome
    ) -> None:
        cap = spec.results_cap_bytes
        with tempfile.TemporaryDirectory(prefix="cc-nova-") as staging:
            root = Path(staging)
            try:
                skipped, cut = payload.unpack(found.data, root, cap)
            except ValueError as err:
                outcome.exit_code, outcome.reason = None, FailureReason.EXIT_CODE
                outcome.detail = f"{err}"
                return
            report = gather_task(
                root, task_dir, cap, outcome.exit_code, stdout="stdout", stderr="stderr"
            )
        outcome.stdout_bytes = report.stdout_bytes
        outcome.stderr_bytes = report.stderr_bytes
        outcome.files_bytes = report.files_bytes
        outcome.truncated = report.truncated or cut or found.truncated
        outcome.skipped = skipped + list(report.skipped)
        if found.truncated:
            outcome.detail = (
                f"the task's output ({found.full_size} bytes compressed) was over the console "
                f"cap (nova-console-cap, {self.config.nova_console_cap}): /results were not "
                "gathered and stdout and stderr were cut"
            )

    def delete(self, name: str) -> bool:
        """Delete the attempt's server(s) and wait until Nova has; False when there was none."""
        servers = [v for v in self.board.refresh(force=True).values() if v.name == name]
        if not servers:
            return False
        if not all(view.labelled for view in servers):
            raise ValueError(f"server {name!r} is not a container-compute worker (no labels)")
        delete_servers(self.api, self.board, name, [view.id for view in servers])
        return True

    def list_workers(self) -> list[WorkerInfo]:
        """Every server of this project that carries container-compute labels."""
        workers = [
            WorkerInfo(
                name=view.name,
                job_id=view.metadata.get(META_JOB),
                task_index=_int_or_none(view.metadata.get(META_TASK)),
                attempt=_int_or_none(view.metadata.get(META_ATTEMPT)),
                running=view.status in ("ACTIVE", "BUILD"),
                owner=view.metadata.get(META_OWNER, ""),
            )
            for view in self.board.refresh(force=True).values()
            if view.labelled
        ]
        return sorted(workers, key=lambda w: w.name)

    def job_finished(self, job_id: str) -> None:
        """Delete the job's server group (``spread``) if this backend made or found one.

        One it did not (another process ran the job) goes at the next reap.
        """
        with self._lock:
            group_id = self._groups.pop(f"cc-{job_id}", None)
        if group_id is not None:
            with contextlib.suppress(nova_exceptions.NotFound):  # gone already
                self.api.client.server_groups.delete(group_id)

    def reap_owner(self, owner: str) -> list[str]:
        """Nothing: server groups are named by job, reaped with the jobs the ledger knows."""
        return []

    def reap_extras(self, live_jobs: set[str], known_jobs: set[str]) -> list[str]:
        """Delete the server groups of known jobs that are not live; return their names.

        A group of a job this state dir does not know is another owner's: left alone.
        """
        deleted = []
        groups = self.api.call(
            "listing server groups", lambda: self.api.client.server_groups.list()
        )
        for group in groups:
            job = group.name[3:] if group.name.startswith("cc-") else None
            if job is None or job in live_jobs or job not in known_jobs:
                continue
            try:
                self.api.client.server_groups.delete(group.id)
            except nova_exceptions.NotFound:
                pass
            with self._lock:
                self._groups.pop(group.name, None)
            deleted.append(group.name)
        return deleted


class _Follower:
    """One attempt's server followed until its payload is whole or it must stop."""

    def __init__(self, backend: NovaBackend, spec: WorkerSpec, server_id: str) -> None:
        self.backend = backend
        self.spec = spec
        self.server_id = server_id
        self.tag = payload.attempt_tag(spec)
        self.payload: ConsolePayload | None = None
        self.console = ""
        self._next_console = 0.0
        self._console_interval = 0.5

    def follow(
        self, deadline: float | None, should_stop: Callable[[], FailureReason | None]
    ) -> TaskOutcome:
        """Poll until an outcome is known."""
        name = self.spec.worker_name
        while True:
            view = self.backend.board.get(self.server_id)
            if view is None:
                return TaskOutcome(None, FailureReason.EXIT_CODE, detail=f"server {name} vanished")
            if view.status == "ERROR":
                fault = view.fault or self._fault()
                return TaskOutcome(
                    None,
                    FailureReason.LAUNCH_ERROR,
                    detail=f"server {name} is in ERROR: {fault or 'Nova gave no fault message'}",
                )
            if view.status in ("ACTIVE", "SHUTOFF") and time.monotonic() >= self._next_console:
                outcome = self._read_console(view)
                if outcome is not None:
                    return outcome
            stop = should_stop()
            if stop is not None:
                return TaskOutcome(None, stop, detail=f"stopped: {stop.value}")
            if deadline is not None and time.time() >= deadline:
                return TaskOutcome(
                    None,
                    FailureReason.TIMEOUT,
                    detail=f"timed out after {self.spec.timeout_seconds}s; server deleted",
                )
            time.sleep(min(self.backend.poll_seconds, 0.5))

    def _fault(self) -> str:
        try:
            server = self.backend.api.client.servers.get(self.server_id)
        except nova_exceptions.ClientException:
            return ""
        fault = getattr(server, "fault", None) or {}
        return fault.get("message", "") if isinstance(fault, dict) else str(fault)

    def _read_console(self, view: ServerView) -> TaskOutcome | None:
        try:
            self.console = self.backend.api.client.servers.get_console_output(self.server_id)
        except nova_exceptions.ClientException as err:
            logger.debug("console of %s not readable yet: %s", view.name, describe_error(err))
            self._next_console = time.monotonic() + 1.0
            return None
        found = payload.parse_console(self.console or "", self.tag)
        self.payload = found
        if found.state == PayloadState.COMPLETE:
            reason = None if found.exit_code == 0 else FailureReason.EXIT_CODE
            return TaskOutcome(found.exit_code, reason)
        if found.state == PayloadState.CORRUPT:
            return TaskOutcome(
                None, FailureReason.EXIT_CODE, detail=f"server {view.name}: {found.detail}"
            )
        if view.status == "SHUTOFF":
            return TaskOutcome(None, FailureReason.EXIT_CODE, detail=self._no_payload(view))
        if found.state == PayloadState.PARTIAL:
            self._console_interval = 0.2  # the payload is flowing: read the rest soon
        else:
            self._console_interval = min(self._console_interval * 1.5, CONSOLE_POLL_MAX_SECONDS)
        self._next_console = time.monotonic() + self._console_interval
        return None

    def _no_payload(self, view: ServerView) -> str:
        assert self.payload is not None
        if self.payload.state == PayloadState.ABSENT:
            last = [line for line in self.console.replace("\r", "").splitlines() if line][-3:]
            return (
                f"server {view.name} powered off and its console has no container-compute "
                "markers: does the image run user-data (cloud-init, or an image from "
                f"build-worker-image target=nova)? Last console lines: {' | '.join(last)}"
            )
        return (
            f"server {view.name} powered off before its payload was whole "
            f"({self.payload.state.value})"
        )
