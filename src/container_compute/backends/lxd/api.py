"""Talking to LXD's REST API for workers: retries over daemon restarts, operations, images.

Calls made while the daemon is away (a restart) are retried for ``retry_seconds``; real
refusals are raised at once. Nothing here knows about jobs.
"""

import contextlib
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pylxd
import requests

from ...config import HostConfig
from ...lxdclient import Endpoint, LXDUnavailableError, connect, endpoint_of

_FINGERPRINT_RE = re.compile(r"^[0-9a-f]{12,64}$")
_TRANSIENT_ERRORS = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
)
_T = TypeVar("_T")


class OperationFailedError(RuntimeError):
    """An LXD background operation ended in failure."""


def is_transient(err: Exception) -> bool:
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
    client = connect(project=config.lxd_project, endpoint=endpoint_of(config))
    return image_source(client, image) is not None


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
                *_TRANSIENT_ERRORS,
            ) as err:
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

    def wait_operation(self, response: requests.Response) -> dict[str, Any]:
        """Wait for the background operation a request started; return its metadata."""
        body = response.json()
        if body.get("type") != "async":
            return body.get("metadata") or {}
        # A cluster answers /1.0/operations/<id>?project=...: the id is before the query.
        operation_id = body["operation"].split("?", 1)[0].rsplit("/", 1)[-1]
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

    def instance(self, name: str) -> dict[str, Any] | None:
        """Return the instance's record (config, status; no costly state), or None if gone."""

        def get() -> dict[str, Any] | None:
            try:
                return self.client.api.instances[name].get().json()["metadata"]
            except pylxd.exceptions.NotFound:
                return None

        return self.retry(f"reading worker {name}", get)

    def force_stop(self, name: str, known_running: bool = False) -> None:
        """Force-stop an instance; nothing when it is stopped or gone (survives restarts)."""
        for _ in range(5):
            if not known_running:
                record = self.instance(name)
                if record is None or record.get("status") == "Stopped":
                    return
            known_running = False

            def stop() -> None:
                response = self.client.api.instances[name].state.put(
                    json={"action": "stop", "force": True, "timeout": -1}
                )
                self.wait_operation(response)

            try:
                self.retry(f"stopping worker {name}", stop)
            except pylxd.exceptions.NotFound:
                return
            except OperationFailedError:
                continue  # look again: stopped meanwhile, or try once more
            return
