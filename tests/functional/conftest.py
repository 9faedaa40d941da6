"""Fixtures for tests against the REAL LXD daemon of this machine.

Every run works in LXD objects named ``cct<run id>-...`` (its own project and pools), and
deletes them at the end of the session, also when tests fail. The daemon must be running
(``scripts/setup-host`` starts it); a missing daemon is an error, not a skip.
"""

import secrets
from collections.abc import Iterator

import pylxd
import pytest
from container_compute.lxdclient import LXDUnavailableError, connect

from .lxd_cleanup import purge_run


@pytest.fixture(scope="session")
def run_prefix() -> Iterator[str]:
    """Name prefix of everything this run creates in LXD; all of it is purged at the end."""
    prefix = f"cct{secrets.token_hex(3)}"
    yield prefix
    leftovers = purge_run(prefix)
    print(f"\npurged after the run: {', '.join(leftovers) or 'nothing'}")


@pytest.fixture(scope="session")
def lxd_client() -> pylxd.Client:
    """A client of the local daemon's default project."""
    try:
        client = connect()
        client.host_info  # noqa: B018 - force a round trip
    except LXDUnavailableError as err:
        pytest.fail(f"functional tests need a running LXD daemon (scripts/setup-host): {err}")
    return client
