"""Fakes of the library at the charm's boundary, and an ops.testing Context of the charm.

The charm calls ``host``, ``actions`` and ``agent`` through module attributes; the ``library``
fixture replaces those attributes with the small fakes below, which record every call and
answer what each test sets. Until the real modules exist, an empty placeholder module lets
``charm`` be imported at all.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ops import testing

import charm
from container_compute.host import ClusterState, HostReport, TeardownReport
from container_compute.host.cluster import ClusterMember
from container_compute.jobs.params import check_action_wait

PEM = "-----BEGIN CERTIFICATE-----\nMIIB{}\n-----END CERTIFICATE-----\n"


SUMMARY = "btrfs pool container-compute; workers unprivileged, no network"


@dataclass(frozen=True)
class FakeServerIdentity:
    """The shape of host.ServerIdentity."""

    certificate: str
    fingerprint: str
    address: str


class FakeHostError(RuntimeError):
    """Stands for host.HostError."""


class FakeHost:
    """host: records calls; ``changes``/``problems`` are what configure_host reports."""

    HostError = FakeHostError

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.changes: list[str] = []
        self.problems: list[str] = []
        self.summary = SUMMARY
        self.users: set[str] = {"nova", "root"}
        self.group_members: set[tuple[str, str]] = set()
        self.certificate = PEM.format("OURS")
        self.lxd_version = "5.0.2"
        self.cluster = ClusterState(False)
        self.cluster_instances: dict[str, int] = {}

    def named(self, name: str) -> list[Any]:
        """Return the arguments of every call to ``name``."""
        return [args for called, args in self.calls if called == name]

    def configure_host(
        self, config: Any, *, paths: Any = None, dry_run: bool = False
    ) -> HostReport:
        self.calls.append(("configure_host", (config, dry_run)))
        return HostReport(
            changes=list(self.changes),
            problems=list(self.problems),
            summary=self.summary,
            lxd_version=self.lxd_version,
        )

    def ensure_group_member(self, user: str, group: str = "lxd") -> bool:
        self.calls.append(("ensure_group_member", (user, group)))
        if (user, group) in self.group_members:
            return False
        self.group_members.add((user, group))
        return True

    def user_exists(self, user: str) -> bool:
        return user in self.users

    def server_identity(self, config: Any, ingress_address: str | None) -> FakeServerIdentity:
        self.calls.append(("server_identity", ingress_address))
        return FakeServerIdentity(self.certificate, "f1ng3rpr1nt", f"{ingress_address}:8443")

    def trust_peers(self, config: Any, peers: dict[str, str]) -> list[str]:
        self.calls.append(("trust_peers", dict(peers)))
        return [f"trusted {unit}" for unit in peers]

    def cluster_status(self, config: Any) -> ClusterState:
        return self.cluster

    def bootstrap_cluster(self, config: Any, server_name: str, address: str) -> bool:
        self.calls.append(("bootstrap_cluster", (server_name, address)))
        if self.cluster.enabled:
            return False
        member = ClusterMember(server_name, f"https://{address}", "Online")
        self.cluster = ClusterState(True, server_name, (member,))
        return True

    def cluster_join_ticket(self, config: Any, server_name: str) -> dict[str, str]:
        self.calls.append(("cluster_join_ticket", server_name))
        return {"token": f"TOKEN-FOR-{server_name}", "member-config": "[]"}

    def join_cluster(
        self, config: Any, server_name: str, address: str, ticket: dict[str, str]
    ) -> None:
        self.calls.append(("join_cluster", (server_name, address, dict(ticket))))
        member = ClusterMember(server_name, f"https://{address}", "Online")
        self.cluster = ClusterState(True, server_name, (member,))

    def cluster_leave_refusal(self, config: Any) -> str | None:
        total = sum(self.cluster_instances.values())
        return f"lxd-cluster cannot be turned off: the cluster holds {total}" if total else None

    def remove_cluster_members(self, config: Any, names: list[str]) -> list[str]:
        self.calls.append(("remove_cluster_members", list(names)))
        return list(names)

    def store_client_key(self, state_dir: Path, pem: str) -> Path:
        self.calls.append(("store_client_key", "<key>"))
        return state_dir / "lxd-client.key"

    def save_config(self, config: Any, state_dir: Path) -> bool:
        self.calls.append(("save_config", (config, state_dir)))
        return True

    def teardown_host(
        self, config: Any, *, paths: Any = None, dry_run: bool = False
    ) -> TeardownReport:
        self.calls.append(("teardown_host", (config, dry_run)))
        return TeardownReport(changes=["deleted profile x"], left=["project p: it still holds y"])


class FakeActionError(Exception):
    """Stands for actions.ActionError."""


class FakeActions:
    """actions: run_action returns ``result`` or raises ``error``; reap returns ``reaped``."""

    ActionError = FakeActionError
    # Pure parameter logic: the real one.
    check_action_wait = staticmethod(check_action_wait)

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.result: dict[str, Any] = {"job": "j-1", "state": "queued"}
        self.error: Exception | None = None
        self.reaped: list[str] = []

    def run_action(
        self,
        action: str,
        params: Any,
        config: Any,
        state_dir: Path,
        progress: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        self.calls.append(("run_action", (action, params, config, state_dir)))
        if progress is not None:
            progress(f"running {action}")
        if self.error is not None:
            raise self.error
        return self.result

    def reap(self, config: Any, state_dir: Path) -> list[str]:
        self.calls.append(("reap", (config, state_dir)))
        if self.error is not None:
            raise self.error
        return list(self.reaped)


class FakeAgent:
    """agent: ``alive`` is what agent_alive answers; ``metrics_problems``, by metrics-listen."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.alive = True
        self.metrics_problems: dict[str, str] = {}

    def install_service(self, state_dir: Path) -> bool:
        self.calls.append(("install_service", state_dir))
        return True

    def await_current(
        self, state_dir: Path, timeout: float = 75.0, *, restart: bool = False
    ) -> str:
        self.calls.append(("await_current", (state_dir, restart)))
        return "current"

    def agent_alive(self, state_dir: Path) -> bool:
        return self.alive

    def metrics_problem(self, state_dir: Path, listen: str) -> str | None:
        return self.metrics_problems.get(listen)

    def remove_service(self) -> bool:
        self.calls.append(("remove_service", None))
        return True


@dataclass
class Library:
    """The fakes the charm sees, and the state directory it was given."""

    host: FakeHost
    actions: FakeActions
    agent: FakeAgent
    state_dir: Path


@pytest.fixture
def library(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Library]:
    """Replace the library modules the charm calls with fakes; state dir in tmp_path."""
    fakes = Library(FakeHost(), FakeActions(), FakeAgent(), tmp_path / "state")
    monkeypatch.setattr(charm, "host", fakes.host)
    monkeypatch.setattr(charm, "actions", fakes.actions)
    monkeypatch.setattr(charm, "agent", fakes.agent)
    monkeypatch.setattr(charm, "STATE_DIR", fakes.state_dir)
    # Keystone is not asked in unit tests (tests/openstack asks a real one).
    monkeypatch.setattr(charm, "check_identity", lambda credentials: credentials.describe())
    yield fakes


@pytest.fixture
def ctx(library: Library) -> testing.Context[charm.ContainerComputeCharm]:
    """Return a Context of the charm with its committed metadata, config and actions."""
    return testing.Context(charm.ContainerComputeCharm)
