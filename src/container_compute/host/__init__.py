"""The host: LXD on this machine configured for compute workers, idempotently.

``configure_host`` orchestrates the steps of this package — ``daemon`` (install, start, HTTPS),
``project``, ``storage`` (pool), ``profile`` (worker profile), ``modules`` (kernel modules),
``ids`` (subuid/subgid, groups), ``sysctl``, ``trust`` (peers' certificates) — and ``images``
builds worker images offline. Nothing here knows about jobs.

``configure_host`` is the one entry point for the charm, the CLI and the tests; with
``dry_run=True`` the very same steps run and only the changes are skipped, so a status check
and a real run can never disagree. Anticipated failures become ``problems`` that name the
config option and say what to do; steps that depend on a failed one are skipped.

"""

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pylxd
import pylxd.exceptions

from .. import constants
from ..config import HostConfig, config_options, option_name
from ..lxdclient import LXDUnavailableError, connect
from ..privatefiles import update_private
from . import cluster
from .cluster import ClusterState
from .daemon import ensure_daemon, ensure_https, restart_daemon
from .ids import ensure_group_member, ensure_subids, needed_subids, user_exists
from .modules import ModulePlan, apply_modules, plan_modules
from .profile import ensure_profile, network_problem, render_profile
from .project import ensure_project
from .remote import configure_remote, connect_remote
from .storage import DISK_NOT_ENFORCED, ensure_pool
from .sysctl import ensure_sysctl
from .system import HostError, HostPaths, StepLog
from .teardown import TeardownReport, teardown_host
from .trust import sync_trust

__all__ = [
    "ClusterState",
    "HostConfig",
    "HostError",
    "HostPaths",
    "HostReport",
    "ServerIdentity",
    "TeardownReport",
    "bootstrap_cluster",
    "cluster_join_ticket",
    "cluster_leave_refusal",
    "cluster_status",
    "configure_host",
    "ensure_group_member",
    "join_cluster",
    "load_saved_config",
    "remove_cluster_members",
    "save_config",
    "server_identity",
    "store_client_key",
    "teardown_host",
    "trust_peers",
    "user_exists",
]

SAVED_CONFIG_FILE = "host-config.json"


@dataclass
class HostReport:
    """What configure_host changed (or would change), what blocks the host, and its shape."""

    changes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    lxd_version: str = ""
    project: str = ""
    pool: str = ""
    driver: str = ""
    profile: str = constants.WORKER_PROFILE
    kernel_modules_to_lxd: list[str] = field(default_factory=list)
    kernel_modules_on_host: list[str] = field(default_factory=list)
    summary: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """Whether anything changed (or, with dry_run, would change)."""
        return bool(self.changes)

    @property
    def ok(self) -> bool:
        """Whether nothing blocks the host."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """Return the report as a JSON-able dict with dashed keys (action results, CLI output)."""
        result = {option_name(k): v for k, v in dataclasses.asdict(self).items()}
        result["changed"] = self.changed
        result["ok"] = self.ok
        return result


def summarize(config: HostConfig, to_lxd: list[str] | None = None) -> str:
    """One line for the unit's active status: pool, worker policy, limits, network."""
    policy = ["privileged" if config.worker_privileged else "unprivileged"]
    if not config.worker_privileged and config.worker_idmap_isolated:
        policy.append("isolated idmap")
    if config.worker_nesting:
        policy.append("nesting")
    policy.append(f"cpu {config.worker_cpu or 'unlimited'}")
    policy.append(f"memory {config.worker_memory or 'unlimited'}")
    if to_lxd:
        policy.append(f"modules {','.join(to_lxd)}")
    policy.append(f"network {config.worker_network}" if config.worker_network else "no network")
    return f"{config.storage_driver} pool {config.storage_pool}; workers {', '.join(policy)}"


def configure_host(
    config: HostConfig, *, paths: HostPaths | None = None, dry_run: bool = False
) -> HostReport:
    """Bring LXD, storage, the worker profile, modules, id ranges and sysctl to ``config``.

    Idempotent: a second run with the same config reports no change. With ``dry_run`` nothing
    is changed and ``changes`` lists what would be. Never raises for anticipated failures.
    """
    paths = paths or HostPaths()
    log = StepLog(dry_run)
    if config.remote:
        return _configure_endpoint(config, paths, log)
    release = os.uname().release
    plan = plan_modules(config.kernel_modules, paths, release)
    report = HostReport(
        project=config.lxd_project,
        pool=config.storage_pool,
        driver=config.storage_driver,
        kernel_modules_to_lxd=list(plan.to_lxd),
        kernel_modules_on_host=list(plan.on_host),
        summary=summarize(config, plan.to_lxd),
    )
    client = ensure_daemon(config, log)
    if client is not None:
        report.lxd_version = client.host_info["environment"].get("server_version", "")
        try:
            _configure_lxd(client, config, paths, plan, log)
        except pylxd.exceptions.LXDAPIException as err:
            log.problems.append(f"LXD refused a change: {err}")
    else:
        log.problems.extend(plan.problems)
    if not config.worker_privileged and config.worker_idmap_isolated:
        subid_changes = ensure_subids(
            paths, needed_subids(config.max_parallel_workers), dry_run=dry_run
        )
        log.changes.extend(subid_changes)
        if subid_changes and client is not None:
            restart_daemon(log)
    sysctl_changes, sysctl_notes = ensure_sysctl(paths, config.sysctl_tuning, dry_run=dry_run)
    log.changes.extend(sysctl_changes)
    log.notes.extend(sysctl_notes)
    report.changes, report.problems, report.notes = log.changes, log.problems, log.notes
    if any(note.startswith(DISK_NOT_ENFORCED) for note in log.notes):
        report.summary += f"; worker-disk {config.worker_disk} NOT enforced on this dir pool"
    return report


def _configure_endpoint(config: HostConfig, paths: HostPaths, log: StepLog) -> HostReport:
    """configure_host for lxd-endpoint: the project, pool and profile there, nothing local."""
    report = HostReport(
        project=config.lxd_project,
        pool=config.storage_pool,
        driver=config.storage_driver,
        kernel_modules_to_lxd=list(config.kernel_modules),
        summary=f"{config.lxd_endpoint}: " + summarize(config, list(config.kernel_modules)),
    )
    client = connect_remote(config, log)
    if client is not None:
        environment = client.host_info["environment"]
        report.lxd_version = environment.get("server_version", "")
        if environment.get("server_clustered"):
            report.summary = f"LXD cluster at {report.summary}"
        try:
            configure_remote(client, config, paths, log)
        except pylxd.exceptions.LXDAPIException as err:
            log.problems.append(f"LXD refused a change: {err}")
    report.changes, report.problems, report.notes = log.changes, log.problems, log.notes
    return report


def _configure_lxd(
    client: pylxd.Client, config: HostConfig, paths: HostPaths, plan: ModulePlan, log: StepLog
) -> None:
    """Run steps 1-5 once a daemon answers; the profile only when all it depends on is fine."""
    ensure_https(client, config, log)
    project_ok = ensure_project(client, config, log)
    pool_ok = ensure_pool(client, config, paths, log)
    log.problems.extend(plan.problems)
    modules_ok = not plan.problems
    if modules_ok:
        try:
            log.changes.extend(apply_modules(plan, paths, dry_run=log.dry_run))
        except HostError as err:
            log.problems.append(str(err))
            modules_ok = False
    network = network_problem(client, config.worker_network)
    if network:
        log.problems.append(network)
    if not (project_ok and pool_ok and modules_ok and network is None):
        return
    scoped = None
    if client.projects.exists(config.lxd_project):
        scoped = connect(project=config.lxd_project)
    ensure_profile(scoped, config, render_profile(config, plan.to_lxd), log)


@dataclass(frozen=True)
class ServerIdentity:
    """The LXD certificate of this host and the address peers reach it on ("" if none)."""

    certificate: str
    fingerprint: str
    address: str


def _client() -> pylxd.Client:
    try:
        client = connect()
        client.host_info  # noqa: B018 - a round trip proves the daemon answers
    except (LXDUnavailableError, pylxd.exceptions.LXDAPIException) as err:
        raise HostError(f"LXD does not answer on this host: {err}") from err
    return client


def server_identity(config: HostConfig, ingress_address: str | None) -> ServerIdentity:
    """Return LXD's server certificate and ``ingress:port`` of lxd-listen-https.

    The address is "" when lxd-listen-https is empty or no ingress address is known.

    Raises:
        HostError: when LXD does not answer.

    """
    environment = _client().host_info["environment"]
    address = ""
    if config.lxd_listen_https and ingress_address:
        port = config.lxd_listen_https.rsplit(":", 1)[1]
        host = f"[{ingress_address}]" if ":" in ingress_address else ingress_address
        address = f"{host}:{port}"
    return ServerIdentity(
        certificate=environment.get("certificate", ""),
        fingerprint=environment.get("certificate_fingerprint", ""),
        address=address,
    )


def trust_peers(config: HostConfig, peers: dict[str, str]) -> list[str]:
    """Make LXD trust exactly the peers' certificates among those we manage; return changes.

    ``peers`` maps unit name to PEM certificate. Entries are named TRUST_NAME_PREFIX + unit;
    entries of ours whose unit is no longer listed are removed. Nothing happens (``[]``) when
    lxd-listen-https is empty.

    Raises:
        HostError: for a certificate that is not PEM (before any change), or LXD refusing.

    """
    if not config.lxd_listen_https:
        return []
    client = _client()
    try:
        return sync_trust(client, peers)
    except pylxd.exceptions.LXDAPIException as err:
        raise HostError(f"LXD refused a trust store change: {err}") from err


def save_config(config: HostConfig, state_dir: Path) -> bool:
    """Write ``config`` to state_dir/host-config.json; return whether the file changed."""
    values = {name: getattr(config, name.replace("-", "_")) for name, *_ in config_options()}
    text = json.dumps(values, indent=2, sort_keys=True) + "\n"
    return update_private(state_dir / SAVED_CONFIG_FILE, text)


def load_saved_config(state_dir: Path) -> HostConfig:
    """Read the config save_config wrote; the defaults when none was saved.

    Options the file does not know take their defaults; keys no longer known are ignored.

    Raises:
        HostError: when the file is not JSON or holds an invalid value (named).

    """
    path = state_dir / SAVED_CONFIG_FILE
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        return HostConfig()
    except (OSError, ValueError) as err:
        raise HostError(f"{path} is not readable JSON: {err}") from err
    if not isinstance(values, dict):
        raise HostError(f"{path} does not hold a JSON object")
    known = {name for name, *_ in config_options()}
    arguments = {k.replace("-", "_"): v for k, v in values.items() if k in known}
    try:
        return HostConfig(**arguments)
    except ValueError as err:
        raise HostError(f"{path}: {err}") from err


# LXD clustering of this application's hosts (the lxd-cluster option), on the local daemon.


def cluster_status(config: HostConfig) -> ClusterState:
    """Return whether this host's LXD is clustered, and its members with their state.

    Raises:
        HostError: when LXD does not answer.

    """
    try:
        return cluster.cluster_state(_client())
    except pylxd.exceptions.LXDAPIException as err:
        raise HostError(f"LXD did not say whether it is clustered: {err}") from err


def bootstrap_cluster(config: HostConfig, server_name: str, address: str) -> bool:
    """Make this host's LXD the first member of a new cluster; False when it is clustered.

    Raises:
        HostError: when LXD refuses.

    """
    return cluster.bootstrap(_client(), server_name, address)


def cluster_join_ticket(config: HostConfig, server_name: str) -> dict[str, str]:
    """Return what a new member needs to join: ``token`` and ``member-config`` (JSON).

    The token is a secret: hand it over in a Juju secret, never in plain relation data.

    Raises:
        HostError: when LXD refuses.

    """
    client = _client()
    token = cluster.issue_join_token(client, server_name)
    return {
        "token": token,
        "member-config": json.dumps(cluster.join_member_config(client), sort_keys=True),
    }


def join_cluster(
    config: HostConfig, server_name: str, address: str, ticket: dict[str, str]
) -> None:
    """Join this host's LXD to a cluster with a ticket from ``cluster_join_ticket``.

    Raises:
        HostError: when the ticket is malformed or LXD refuses (the token is never shown).

    """
    try:
        token = ticket["token"]
        member_config = json.loads(ticket.get("member-config") or "[]")
    except (KeyError, ValueError) as err:
        raise HostError("lxd-cluster: the join ticket from the leader is malformed") from err
    preseed = cluster.render_join_preseed(server_name, address, token, member_config)
    cluster.join(preseed)


def cluster_leave_refusal(config: HostConfig) -> str | None:
    """Why clustering cannot be turned off now (the cluster holds instances); None if it can.

    Raises:
        HostError: when LXD does not answer.

    """
    try:
        return cluster.refuse_leaving(cluster.instance_counts(_client()))
    except pylxd.exceptions.LXDAPIException as err:
        raise HostError(f"LXD did not list its instances: {err}") from err


def remove_cluster_members(config: HostConfig, names: list[str]) -> list[str]:
    """Remove these members from this host's cluster; return the ones removed.

    Raises:
        HostError: when LXD refuses.

    """
    client = _client()
    return [name for name in names if cluster.remove_member(client, name)]


CLIENT_KEY_FILE = "lxd-client.key"


def store_client_key(state_dir: Path, pem: str) -> Path:
    """Keep the lxd-endpoint client key (from a Juju secret) in a 0600 file; return its path."""
    path = state_dir / CLIENT_KEY_FILE
    update_private(path, pem.strip() + "\n")
    return path
