"""Knowing where every server of ours is, with one list call per poll for all attempts.

Each attempt's thread asks the board for its server; the board lists the servers whose names
start with the worker prefix at most once per ``poll_seconds`` and shares the answer.
"""

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from novaclient import exceptions as nova_exceptions

from ...constants import WORKER_NAME_PREFIX
from .. import LaunchError
from .api import NovaApi, describe_error

logger = logging.getLogger(__name__)

META_JOB = "container-compute.job"
META_TASK = "container-compute.task"
META_ATTEMPT = "container-compute.attempt"
META_STARTED = "container-compute.started"
META_OWNER = "container-compute.owner"  # the state dir that made it (owner.py)
DELETE_WAIT_SECONDS = 120.0
DELETE_REQUESTS = 4  # a delete Nova failed (the server went to ERROR) is asked again


@dataclass(frozen=True)
class ServerView:
    """What one list call said of a server of ours."""

    id: str
    name: str
    status: str
    metadata: dict[str, str]
    fault: str = ""

    @property
    def labelled(self) -> bool:
        """True when the server carries container-compute labels."""
        return META_JOB in self.metadata

    @property
    def started_at(self) -> float:
        """When the agent created it (its label), or 0."""
        try:
            return float(self.metadata.get(META_STARTED, "0"))
        except ValueError:
            return 0.0


def _view(server: Any) -> ServerView:
    fault = getattr(server, "fault", None) or {}
    message = fault.get("message", "") if isinstance(fault, dict) else str(fault)
    return ServerView(
        id=server.id,
        name=server.name,
        status=str(getattr(server, "status", "")),
        metadata=dict(getattr(server, "metadata", {}) or {}),
        fault=message,
    )


class ServerBoard:
    """A shared, briefly cached listing of the servers named like our workers."""

    def __init__(self, api: NovaApi, poll_seconds: float) -> None:
        """List through ``api`` at most once per ``poll_seconds``."""
        self.api = api
        self.poll_seconds = poll_seconds
        self._lock = threading.Lock()
        self._listed_at = 0.0
        self._servers: dict[str, ServerView] = {}

    def refresh(self, force: bool = False) -> dict[str, ServerView]:
        """Return id -> view of our servers, listing again when the cache is old (or forced)."""
        with self._lock:
            if force or time.monotonic() - self._listed_at >= self.poll_seconds:
                servers = self.api.call(
                    "listing servers",
                    lambda: self.api.client.servers.list(
                        detailed=True, search_opts={"name": f"^{WORKER_NAME_PREFIX}"}
                    ),
                )
                self._servers = {s.id: _view(s) for s in servers}
                self._listed_at = time.monotonic()
            return dict(self._servers)

    def by_name(self, name: str, force: bool = False) -> list[ServerView]:
        """Our labelled servers called ``name`` (normally one)."""
        return [
            view for view in self.refresh(force).values() if view.name == name and view.labelled
        ]

    def get(self, server_id: str) -> ServerView | None:
        """The view of one server, or None when it is gone."""
        return self.refresh().get(server_id)

    def forget(self, server_id: str) -> None:
        """Drop a server from the cache (it was deleted)."""
        with self._lock:
            self._servers.pop(server_id, None)


def _delete_failed(server: Any) -> bool:
    """True when Nova gave up deleting a server: it is in ERROR with no task under way."""
    return (
        str(getattr(server, "status", "")) == "ERROR"
        and getattr(server, "OS-EXT-STS:task_state", None) is None
    )


def _request_delete(api: NovaApi, name: str, server_id: str) -> None:
    try:
        api.client.servers.delete(server_id)
    except nova_exceptions.NotFound:
        pass
    except nova_exceptions.ClientException as err:
        raise LaunchError(f"deleting server {name}: {describe_error(err)}") from err


def delete_servers(
    api: NovaApi,
    board: ServerBoard,
    name: str,
    server_ids: list[str],
    wait_seconds: float = DELETE_WAIT_SECONDS,
) -> None:
    """Delete servers and wait until Nova no longer knows them.

    Nova can fail a delete after accepting it (e.g. the compute lost placement mid-way): the
    server then goes back to ERROR. Such a server is asked again, up to DELETE_REQUESTS times.

    Raises:
        LaunchError: Nova refused the delete, or a server was still there after
            ``wait_seconds`` (the reaper tries again later).
    """
    requests = dict.fromkeys(server_ids, 1)
    for server_id in server_ids:
        _request_delete(api, name, server_id)
    end = time.monotonic() + wait_seconds
    last: dict[str, str] = {}
    while requests:
        for server_id in list(requests):
            try:
                server = api.client.servers.get(server_id)
            except nova_exceptions.NotFound:
                del requests[server_id]
                board.forget(server_id)
                continue
            view = _view(server)
            last[server_id] = f"{view.status}: {view.fault}" if view.fault else view.status
            if _delete_failed(server) and requests[server_id] < DELETE_REQUESTS:
                requests[server_id] += 1
                logger.warning(
                    "Nova did not delete server %s (%s); asking again", name, last[server_id]
                )
                _request_delete(api, name, server_id)
        if not requests:
            return
        if time.monotonic() >= end:
            break
        time.sleep(board.poll_seconds)
    states = ", ".join(last.get(server_id, "?") for server_id in requests)
    raise LaunchError(
        f"server {name} is still there {wait_seconds:.0f}s after {max(requests.values())} "
        f"delete request(s) ({states}); the reaper will try again"
    )
