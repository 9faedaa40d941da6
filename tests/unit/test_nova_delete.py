"""Deleting Nova servers: a delete Nova accepts and then fails is asked again, never reported done.

Seen on the real stack: nova-compute accepted a delete, showed the server DELETED, then lost
its connection to placement while finishing and put the server back in ERROR. The servers
client here is a stand-in for novaclient's (the real Nova is exercised in tests/openstack);
it answers the way Nova did in that run.
"""

from types import SimpleNamespace
from typing import Any

import pytest
from novaclient import exceptions as nova_exceptions

from container_compute.backends import LaunchError
from container_compute.backends.nova import servers
from container_compute.backends.nova.servers import ServerBoard, delete_servers


class Servers:
    """A stand-in for ``novaclient.v2.servers.ServerManager``: one server and its states."""

    def __init__(self, after_delete: list[list[str]]) -> None:
        """``after_delete[n]``: the statuses GET shows after the n-th delete, then 404."""
        self.after_delete = after_delete
        self.deletes = 0
        self._shown: list[str] = []

    def delete(self, server_id: str) -> None:
        self.deletes += 1
        index = self.deletes - 1
        self._shown = list(self.after_delete[index]) if index < len(self.after_delete) else []

    def get(self, server_id: str) -> Any:
        if not self._shown:
            raise nova_exceptions.NotFound(404, "Instance could not be found.")
        status = self._shown.pop(0)
        task_state = "deleting" if status != "ERROR" else None
        fault = {"message": "ConnectFailure"} if status == "ERROR" else {}
        return SimpleNamespace(
            id=server_id,
            name="cc-j1-0-1",
            status=status,
            metadata={},
            fault=fault,
            **{"OS-EXT-STS:task_state": task_state},
        )


def _board(client_servers: Servers) -> ServerBoard:
    api = SimpleNamespace(client=SimpleNamespace(servers=client_servers))
    return ServerBoard(api, poll_seconds=0.0)  # type: ignore[arg-type]


def test_a_delete_nova_failed_is_asked_again() -> None:
    fake = Servers(after_delete=[["ACTIVE", "DELETED", "ERROR"], []])
    board = _board(fake)

    delete_servers(board.api, board, "cc-j1-0-1", ["s1"], wait_seconds=5)

    assert fake.deletes == 2


def test_a_server_nova_cannot_delete_is_an_error_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(servers, "DELETE_REQUESTS", 2)
    fake = Servers(after_delete=[["ERROR"] * 10_000] * 3)
    board = _board(fake)

    with pytest.raises(LaunchError, match=r"cc-j1-0-1 is still there .* 2 delete request\(s\) "):
        delete_servers(board.api, board, "cc-j1-0-1", ["s1"], wait_seconds=0.2)
    assert fake.deletes == 2


def test_a_server_still_deleting_is_not_asked_again() -> None:
    fake = Servers(after_delete=[["ACTIVE", "ACTIVE", "ACTIVE"]])
    board = _board(fake)

    delete_servers(board.api, board, "cc-j1-0-1", ["s1"], wait_seconds=5)

    assert fake.deletes == 1
