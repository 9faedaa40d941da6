"""Knowing where every server of ours is, with one list call per poll for all attempts.

Each attempt's thread asks the board for its server; the board lists the servers whose names
start with the worker prefix at most once per ``poll_seconds`` and shares the answer.
"""

import threading
import time
from dataclasses import dataclass
from typing import Any

from ...constants import WORKER_NAME_PREFIX
from .api import NovaApi

META_JOB = "container-compute.job"
META_TASK = "container-compute.task"
META_ATTEMPT = "container-compute.attempt"
META_STARTED = "container-compute.started"


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
