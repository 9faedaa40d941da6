"""Talking to LXD's REST API for workers: retries over daemon restarts, operations, images.

Calls made while the daemon is away (a restart) are retried for ``retry_seconds``; real
refusals are raised at once. Nothing here knows about jobs.
"""

import contextlib
import json
import re
import shutil
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pylxd
import requests

from ...config import HostConfig
from ...constants import IMAGE_CONFIG_PROPERTY, LXD_INSTANCE_LOG_DIRS
from ...instruments import WORKER_START, count_api_error
from ...lxdclient import Endpoint, LXDUnavailableError, connect, endpoint_of
from .hostside import volume_name

_FINGERPRINT_RE = re.compile(r"^[0-9a-f]{12,64}$")
TRANSIENT_ERRORS = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
)
_T = TypeVar("_T")


OPERATION_TIMEOUT_SECONDS = 120.0
STOP_SETTLE_SECONDS = 10.0


class OperationFailedError(RuntimeError):
    """An LXD background operation ended in failure."""


class OperationTimeoutError(OperationFailedError):
    """An LXD background operation did not end in time (it may still be running)."""


# What LXD answers while it restarts, or while its cluster database elects a new leader (a
# member went away): worth retrying for a while.
_TRANSIENT_MARKS = (
    "shutting down",
    "not ready",
    "database is closed",
    "no available dqlite leader",
    "not leader",
    "leadership lost",
)


def is_transient(err: Exception) -> bool:
    """Tell whether an error means "the daemon is away or restarting", not a real refusal."""
    if isinstance(err, TRANSIENT_ERRORS):
        return True
    if isinstance(err, pylxd.exceptions.LXDAPIException):
        response = getattr(err, "response", None)
        code = getattr(response, "status_code", 0)
        text = str(err).lower()
        return code in (502, 503, 504) or any(mark in text for mark in _TRANSIENT_MARKS)
    return False


def image_exists(config: HostConfig, image: str) -> bool:
    """Tell whether ``image`` is an image alias or fingerprint in ``config.lxd_project``."""
    client = connect(project=config.lxd_project, endpoint=endpoint_of(config))
    return image_source(client, image) is not None


def image_config(config: HostConfig, image: str) -> dict[str, Any] | None:
    """The OCI config recorded with ``image`` (see ``host.oci``); None when it has none."""
    client = connect(project=config.lxd_project, endpoint=endpoint_of(config))
    source = image_source(client, image)
    if source is None:
        return None
    fingerprint = (
        source.get("fingerprint")
        or (client.api.images.aliases[image].get().json()["metadata"]["target"])
    )
    metadata = client.api.images[fingerprint].get().json()["metadata"]
    text = (metadata.get("properties") or {}).get(IMAGE_CONFIG_PROPERTY)
    return json.loads(text) if text else None


def remove_log_dir(project: str, name: str) -> None:
    """Remove the log directory the local LXD keeps for an instance, also a deleted one."""
    entry = volume_name(project, name)
    for directory in LXD_INSTANCE_LOG_DIRS:
        shutil.rmtree(directory / entry, ignore_errors=True)


def image_source(client: pylxd.Client, image: str) -> dict[str, str] | None:
    """Return the ``source`` of an instance create for ``image``; None when there is none."""
    with contextlib.suppress(pylxd.exceptions.NotFound):
        client.api.images.aliases[image].get()
        return {"type": "image", "alias": image}
    if _FINGERPRINT_RE.match(image):
        with contextlib.suppress(pylxd.exceptions.NotFound):
            full = client.api.images[image].get().json()["metadata"]["fingerprint"]
            return {"type": "image", "fingerprint": full}
    return None


class LXDApi:
    """A client of one LXD project that rides out daemon restarts."""

    def __init__(
        self,
        project: str,
        client: pylxd.Client | None = None,
        retry_seconds: float = 120.0,
        poll_seconds: float = 0.5,
        endpoint: Endpoint | None = None,
    ) -> None:
        """Connect lazily to ``project`` of the local daemon or ``endpoint`` (or ``client``)."""
        self.project = project
        self.retry_seconds = retry_seconds
        self.poll_seconds = poll_seconds
        self.endpoint = endpoint
        self._client = client

    @property
    def client(self) -> pylxd.Client:
        """A client of the project (connected on first use, reconnected when lost)."""
        if self._client is None:
            self._client = connect(project=self.project, endpoint=self.endpoint)
        return self._client

    def retry(self, what: str, call: Callable[[], _T]) -> _T:
        """Run ``call``; while the daemon is away retry it for ``retry_seconds``."""
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.2
        while True:
            try:
                return call()
            except (
                LXDUnavailableError,
                pylxd.exceptions.LXDAPIException,
                *TRANSIENT_ERRORS,
            ) as err:
                if not isinstance(err, pylxd.exceptions.NotFound):  # often the answer sought
                    count_api_error("lxd")
                transient = isinstance(err, LXDUnavailableError) or is_transient(err)
                if not transient or time.monotonic() + delay > deadline:
                    if transient:
                        raise LXDUnavailableError(
                            f"{what}: LXD did not answer for {self.retry_seconds:.0f}s: {err}"
                        ) from err
                    raise
                self._client = None if isinstance(err, LXDUnavailableError) else self._client
                time.sleep(delay)
                delay = min(delay * 2, 3.0)

    def wait_operation(
        self, response: requests.Response, timeout: float = OPERATION_TIMEOUT_SECONDS
    ) -> dict[str, Any]:
        """Wait (at most ``timeout`` seconds) for the operation a request started.

        Returns:
            the operation's metadata.

        Raises:
            OperationFailedError: when it failed.
            OperationTimeoutError: when it is still running after ``timeout`` seconds.

        """
        body = response.json()
        if body.get("type") != "async":
            return body.get("metadata") or {}
        # A cluster answers /1.0/operations/<id>?project=...: the id is before the query.
        operation_id = body["operation"].split("?", 1)[0].rsplit("/", 1)[-1]
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise OperationTimeoutError(
                    f"LXD operation {operation_id} still running after {timeout:.0f}s"
                )
            step = max(1, min(30, int(left)))
            metadata = (
                self.client.api.operations[operation_id]
                .wait.get(params={"timeout": step}, timeout=step + 30)
                .json()["metadata"]
            )
            if metadata["status"] == "Success":
                return metadata.get("metadata") or {}
            if metadata["status_code"] >= 400:
                raise OperationFailedError(metadata.get("err") or metadata["status"])

    def pool_space(self, pool: str) -> tuple[int, int] | None:
        """Bytes used and total of a storage pool, as LXD reports them; None when unknown."""

        def get() -> tuple[int, int] | None:
            try:
                space = self.client.api.storage_pools[pool].resources.get().json()["metadata"]
            except pylxd.exceptions.NotFound:
                return None
            space = space.get("space") or {}
            used, total = space.get("used"), space.get("total")
            if not isinstance(used, int) or not isinstance(total, int) or total <= 0:
                return None
            return used, total

        return self.retry(f"reading storage pool {pool}", get)

    def instance(self, name: str) -> dict[str, Any] | None:
        """Return the instance's record (config, status; no costly state), or None if gone."""

        def get() -> dict[str, Any] | None:
            try:
                return self.client.api.instances[name].get().json()["metadata"]
            except pylxd.exceptions.NotFound:
                return None

        return self.retry(f"reading worker {name}", get)

    def force_stop(self, name: str, known_running: bool = False, within: float = 60.0) -> bool:
        """Force-stop an instance until LXD says it is stopped (a rebooting one starts again).

        Nothing when it is stopped or gone (survives daemon restarts). An instance that
        stopped by itself (its task powered it off) says "Stopped" a moment before LXD has
        run its stop hook (``volatile.last_state.power`` still RUNNING); a files API request
        in that window can deadlock with the hook, so this waits (at most
        ``STOP_SETTLE_SECONDS``) for the hook too. Returns False when the instance still was
        not stopped after ``within`` seconds.
        """
        end = time.monotonic() + within
        settled_by = time.monotonic() + STOP_SETTLE_SECONDS
        while True:
            if not known_running:
                record = self.instance(name)
                if record is None:
                    return True
                if record.get("status") == "Stopped":
                    power = record.get("config", {}).get("volatile.last_state.power")
                    if power != "RUNNING" or time.monotonic() >= settled_by:
                        return True
                    time.sleep(0.1)  # LXD is still running its stop hook: see the docstring
                    continue
            known_running = False
            if time.monotonic() >= end:
                return False

            def stop() -> None:
                response = self.client.api.instances[name].state.put(
                    json={"action": "stop", "force": True, "timeout": -1}
                )
                self.wait_operation(response, timeout=max(5.0, end - time.monotonic()))

            try:
                self.retry(f"stopping worker {name}", stop)
            except pylxd.exceptions.NotFound:
                return True
            except (OperationFailedError, pylxd.exceptions.LXDAPIException):
                time.sleep(min(self.poll_seconds, 0.5))  # stopped meanwhile, busy, rebooting


def boot_worker(api: LXDApi, name: str, making_began: float | None = None) -> None:
    """Start a worker (one found running already, by a retry or a second call, is fine).

    ``making_began`` (``time.monotonic()`` before its create): the worker's start latency,
    from then until it runs, is observed for the agent's metrics.
    """

    def start() -> None:
        try:
            api.wait_operation(api.client.api.instances[name].state.put(json={"action": "start"}))
        except (OperationFailedError, pylxd.exceptions.LXDAPIException) as err:
            record = None if is_transient(err) else api.instance(name)
            if record is None or record.get("status") != "Running":
                raise  # start() called twice or retried over a restart finds it running

    api.retry(f"starting worker {name}", start)
    if making_began is not None:
        WORKER_START.observe(time.monotonic() - making_began)
