#!/usr/bin/env python3
"""The container-compute charm: a thin Juju adapter around the container_compute library.

It observes Juju events, loads the typed config and action parameters, passes them to the
library (which knows LXD and Nova, and nothing of Juju) and computes the unit's status in one
place. Relations: ``lxd`` (nova-compute's user joins the lxd group; we answer with a nonce and
the storage pool), ``cluster`` (hosts share LXD server certificates and trust each other),
``identity-credentials`` (Keystone service credentials for the Nova backend) and ``cos-agent``
(the agent's metrics endpoint, alert rules and dashboards for grafana-agent).
"""

import logging
from typing import Any

import ops

from clustering import ClusterFormation
from container_compute import actions, agent, host, identity
from container_compute.actions import ACTION_PARAMS
from container_compute.config import HostConfig
from container_compute.constants import (
    CLUSTER_ENDPOINT,
    COS_AGENT_ENDPOINT,
    IDENTITY_ENDPOINT,
    LXD_ENDPOINT,
    LXD_GROUP,
    STATE_DIR,
)
from cos_agent import CosAgentProvider
from relations import ClusterPeers, ComputeJobsServer, IdentityRequirer, LxdProvider

logger = logging.getLogger(__name__)

# Longest status message; the rest of the host's problems are in the debug log.
MAX_STATUS_LENGTH = 240
AGENT_DOWN_MESSAGE = "job agent is not running: see journalctl -u container-compute-agent"
IDENTITY_WAITING_MESSAGE = f"waiting for keystone's credentials on {IDENTITY_ENDPOINT}"


def check_identity(credentials: identity.KeystoneCredentials) -> str:
    """Prove keystone's credentials by getting a token; return who they authenticate.

    Raises:
        identity.IdentityError: why not (never with the password).
    """
    session = identity.keystone_session(credentials)
    return identity.verify(session, credentials.describe(), credentials.password)


class ContainerComputeCharm(ops.CharmBase):
    """Configure LXD on the principal's machine for compute workers, and run jobs there."""

    def __init__(self, framework: ops.Framework) -> None:
        super().__init__(framework)
        self._lxd = LxdProvider(self)
        self._peers = ClusterPeers(self)
        self._identity = IdentityRequirer(self)
        self._jobs = ComputeJobsServer(self)
        self._formation = ClusterFormation(self, host, self._peers)
        self._cos = CosAgentProvider(self, lambda: _metrics_listen(self.model), COS_AGENT_ENDPOINT)
        for host_event in (
            self.on.install,
            self.on.start,
            self.on.config_changed,
            self.on.upgrade_charm,
        ):
            framework.observe(host_event, self._on_host_event)
        framework.observe(self.on.update_status, self._on_update_status)
        framework.observe(self.on.stop, self._on_stop)
        framework.observe(self.on.remove, self._on_remove)
        lxd = self.on[LXD_ENDPOINT]
        framework.observe(lxd.relation_joined, self._on_lxd_relation)
        framework.observe(lxd.relation_changed, self._on_lxd_relation)
        cluster = self.on[CLUSTER_ENDPOINT]
        framework.observe(cluster.relation_joined, self._on_cluster_relation)
        framework.observe(cluster.relation_changed, self._on_cluster_relation)
        framework.observe(cluster.relation_departed, self._on_cluster_relation)
        framework.observe(self.on.leader_elected, self._on_cluster_relation)
        framework.observe(self.on.secret_changed, self._on_cluster_relation)
        keystone = self.on[IDENTITY_ENDPOINT]
        framework.observe(keystone.relation_joined, self._on_identity_relation)
        framework.observe(keystone.relation_changed, self._on_identity_relation)
        framework.observe(keystone.relation_broken, self._on_identity_relation_broken)
        framework.observe(self._jobs.provides.on.jobs_requested, self._on_jobs_requested)
        framework.observe(cluster.relation_departed, self._on_jobs_requested)
        framework.observe(self.on.leader_elected, self._on_jobs_requested)
        for action in ACTION_PARAMS:
            framework.observe(self.on[action].action, self._on_action)
        framework.observe(self.on.collect_unit_status, self._on_collect_unit_status)

    # Handlers, in the order observed.

    def _on_host_event(self, _: ops.HookEvent) -> None:
        """Install/start/config-changed/upgrade: configure the host and refresh every relation."""
        config = self._load_config()
        if config is None:
            return
        report = host.configure_host(config)
        for change in report.changes:
            logger.info("host: %s", change)
        for problem in report.problems:
            logger.error("host problem: %s", problem)
        if report.lxd_version:
            self.unit.set_workload_version(report.lxd_version)
        if host.save_config(config, STATE_DIR):
            logger.info("saved the new config for the job agent")
        if agent.install_service(STATE_DIR):
            logger.info("job agent service installed or updated")
        # New config or code (juju config, juju refresh) reaches the running agent in this hook.
        logger.info("job agent: %s", agent.await_current(STATE_DIR, restart=True))
        for relation in self._lxd.relations:
            self._serve_lxd_relation(relation, config, host_changed=report.changed)
        address = self._formation.publish_identity(config)
        self._formation.reconcile(config, address)
        self._request_identity(config)

    def _on_update_status(self, _: ops.UpdateStatusEvent) -> None:
        """Delete workers that belong to no live job; keep clustering and compute-jobs current."""
        config = self._load_config()
        if config is None:
            return
        try:
            reaped = actions.reap(config, STATE_DIR)
        except actions.ActionError as err:
            logger.warning("reaper could not run: %s", err)
            reaped = []
        if reaped:
            logger.info("reaped %d orphaned workers: %s", len(reaped), ", ".join(reaped))
        if config.lxd_cluster or self.unit.is_leader():
            self._formation.reconcile(config, self._formation.publish_identity(config))
        self._serve_compute_jobs(config)

    def _on_stop(self, _: ops.StopEvent) -> None:
        """Stop and remove the job agent: nothing launches once the unit is going away."""
        if agent.remove_service():
            logger.info("job agent service stopped and removed")

    def _on_remove(self, _: ops.RemoveEvent) -> None:
        """Remove what configure_host made; log what is kept and why."""
        config = self._load_config()
        if config is None:
            return
        report = host.teardown_host(config)
        for change in report.changes:
            logger.info("teardown: %s", change)
        for kept in report.left:
            logger.warning("teardown left %s", kept)

    def _on_lxd_relation(self, event: ops.RelationEvent) -> None:
        """nova-compute's lxd endpoint: its user joins the lxd group; answer nonce and pool."""
        config = self._load_config()
        if config is None:
            return
        self._serve_lxd_relation(event.relation, config, host_changed=False)

    def _on_cluster_relation(self, event: ops.EventBase) -> None:
        """Peers: publish our LXD certificate, trust every peer's, form the LXD cluster."""
        config = self._load_config()
        if config is None:
            return
        address = self._formation.publish_identity(config)
        if not config.lxd_listen_https:
            return
        departing = event.departing_unit if isinstance(event, ops.RelationDepartedEvent) else None
        self._formation.reconcile(config, address, departing)
        certificates = self._peers.certificates(departing)
        try:
            changes = host.trust_peers(config, certificates)
        except host.HostError as err:
            logger.error("could not update LXD's trust of the cluster peers: %s", err)
            return
        for change in changes:
            logger.info("cluster trust: %s", change)

    def _on_identity_relation(self, event: ops.RelationEvent) -> None:
        """Keystone: ask for a service user, and save the credentials once they are complete."""
        config = self._load_config()
        if config is None:
            return
        self._request_identity(config)
        credentials = self._identity.credentials(event.relation)
        if credentials is None:
            logger.info("waiting for keystone's credentials on %s", IDENTITY_ENDPOINT)
            return
        if credentials.save(identity.credentials_path(STATE_DIR)):
            logger.info(
                "keystone credentials saved for user %s (project %s, %s)",
                credentials.username,
                credentials.project,
                credentials.auth_url,
            )
        accept_credentials(credentials)

    def _on_identity_relation_broken(self, _: ops.RelationBrokenEvent) -> None:
        """Keystone went away: forget its credentials and every file made from them."""
        removed = identity.forget_all(STATE_DIR)
        if removed:
            logger.info("keystone credentials removed (%s)", ", ".join(removed))

    def _on_jobs_requested(self, event: ops.EventBase) -> None:
        """Requests changed, a peer left or leadership moved: serve compute-jobs again."""
        departing = event.departing_unit if isinstance(event, ops.RelationDepartedEvent) else None
        config = self._load_config()
        if config is not None:
            self._serve_compute_jobs(config, departing)

    def _on_action(self, event: ops.ActionEvent) -> None:
        """Every action: typed params and config to the library's run_action, results back."""
        action = event.handle.kind.removesuffix("_action").replace("_", "-")
        params_class, _description = ACTION_PARAMS[action]
        params = event.load_params(params_class, errors="fail")
        try:
            actions.check_action_wait(params)
        except ValueError as err:
            event.fail(str(err))
            return
        config, config_error = self._load_config_or_error()
        if config is None:
            event.fail(f"invalid config: {config_error}")
            return
        try:
            result = actions.run_action(action, params, config, STATE_DIR, progress=event.log)
        except actions.ActionError as err:
            event.fail(str(err))
            return
        event.set_results(result)

    def _on_collect_unit_status(self, event: ops.CollectStatusEvent) -> None:
        """Add every status that holds; ops shows the most severe (blocked before waiting)."""
        for status in self._unit_statuses():
            event.add_status(status)

    # Helpers.

    def _load_config_or_error(self) -> tuple[HostConfig | None, str]:
        """Return the typed config and "", or None and the message naming the bad option."""
        try:
            return _host_config(self.model), ""
        except ValueError as err:
            return None, str(err)

    def _load_config(self) -> HostConfig | None:
        """Return the typed config, or None (logged) when an option is invalid."""
        config, error = self._load_config_or_error()
        if config is None:
            logger.error("invalid config: %s", error)
        return config

    def _serve_lxd_relation(
        self, relation: ops.Relation, config: HostConfig, *, host_changed: bool
    ) -> None:
        """Add the remote user to the lxd group; publish the pool, and a new nonce on change.

        The nonce is kept while nothing changes, so nova-compute's hook does not loop; a new
        one tells nova-compute to re-check its access to LXD.
        """
        self._lxd.publish_pool(relation, config.storage_pool)
        user = self._lxd.requested_user(relation)
        if user is None or not host.user_exists(user):
            return
        group_changed = host.ensure_group_member(user, LXD_GROUP)
        if group_changed:
            logger.info("added user %s to group %s", user, LXD_GROUP)
        self._lxd.renew_nonce(relation, force=group_changed or host_changed)

    def _request_identity(self, config: HostConfig) -> None:
        """Ask Keystone for the configured service user (and project) on every relation."""
        self._identity.request(config.keystone_username, config.keystone_project)

    def _serve_compute_jobs(self, config: HostConfig, departing: ops.Unit | None = None) -> None:
        """Leader: launch new requests, mark departed units' jobs lost; all: refresh own jobs."""

        def run(action: str, params: object) -> dict[str, Any]:
            return actions.run_action(action, params, config, STATE_DIR)

        self._jobs.serve(run, actions.ActionError, departing)

    def _unit_statuses(self) -> list[ops.StatusBase]:
        """Every status that holds: config, host, keystone, lxd user, clustering, agent, active.

        ops shows the most severe, so a waiting status never hides a dead agent.
        """
        config, config_error = self._load_config_or_error()
        if config is None:
            return [ops.BlockedStatus(f"invalid config: {config_error}")]
        statuses: list[ops.StatusBase] = []
        report = host.configure_host(config, dry_run=True)
        if report.problems:
            statuses.append(ops.BlockedStatus(_join_problems(report.problems)))
        keystone = identity_status(bool(self.model.relations[IDENTITY_ENDPOINT]))
        if keystone is not None:
            statuses.append(keystone)
        missing = self._lxd.missing_user(host.user_exists)
        if missing is not None:
            user, application = missing
            statuses.append(
                ops.WaitingStatus(f"waiting for user {user} to exist (from {application})")
            )
        clustering = self._formation.view(config)
        if clustering.status is not None:
            statuses.append(clustering.status)
        if not agent.agent_alive(STATE_DIR):
            statuses.append(ops.BlockedStatus(AGENT_DOWN_MESSAGE))
        metrics_problem = agent.metrics_problem(STATE_DIR, config.metrics_listen)
        if metrics_problem is not None:
            statuses.append(ops.BlockedStatus(metrics_problem))
        summary = "; ".join(filter(None, (clustering.summary, report.summary)))
        statuses.append(ops.ActiveStatus(summary[:MAX_STATUS_LENGTH]))
        return statuses


def _metrics_listen(model: ops.Model) -> str:
    """The agent's metrics endpoint for cos-agent: "" when off or the config is invalid."""
    try:
        return _host_config(model).metrics_listen
    except ValueError:
        return ""


def _host_config(model: ops.Model) -> HostConfig:
    """Load the typed config; a Juju secret in lxd-client-key becomes a 0600 key file's path.

    (ops' ``load_config`` would hand the secret over as an object; the library takes a path.)

    Raises:
        ValueError: naming the option that is wrong, or lxd-client-key when the secret
            cannot be read.
    """
    values: dict[str, Any] = {k.replace("-", "_"): v for k, v in model.config.items()}
    key = values.get("lxd_client_key")
    if isinstance(key, str) and key.startswith("secret:"):
        try:
            pem = model.get_secret(id=key).get_content(refresh=True)["key"]
        except (ops.SecretNotFoundError, ops.ModelError, KeyError) as err:
            raise ValueError(
                "lxd-client-key: the secret cannot be read or has no 'key' field; grant it "
                "to this application (juju grant-secret) with key=<the PEM key>"
            ) from err
        values["lxd_client_key"] = str(host.store_client_key(STATE_DIR, pem))
    return HostConfig(**values)


def accept_credentials(credentials: identity.KeystoneCredentials) -> None:
    """Write keystone's credentials as clouds.yaml and remember whether they get a token."""
    identity.save_clouds_yaml(credentials, STATE_DIR / identity.CLOUDS_FILE_NAME)
    try:
        who = check_identity(credentials)
    except identity.IdentityError as err:
        logger.error("keystone credentials do not work: %s", err)
        identity.record_check(STATE_DIR, False, str(err))
        return
    logger.info("keystone credentials work: got a token for %s", who)
    identity.record_check(STATE_DIR, True, who)


def identity_status(related: bool) -> ops.StatusBase | None:
    """Blocked when keystone's credentials failed their token check; waiting while incomplete."""
    if not related:
        return None
    check = identity.last_check(STATE_DIR)
    if check is None:
        return ops.WaitingStatus(IDENTITY_WAITING_MESSAGE)
    ok, message = check
    if ok:
        return None
    return ops.BlockedStatus(f"keystone: {message}"[:MAX_STATUS_LENGTH])


def _join_problems(problems: list[str], limit: int = MAX_STATUS_LENGTH) -> str:
    """Join as many problems as fit in ``limit`` characters with "; ", counting the rest."""
    for count in range(len(problems), 0, -1):
        message = "; ".join(problems[:count]) + _more_suffix(len(problems) - count)
        if len(message) <= limit:
            return message
    suffix = _more_suffix(len(problems) - 1)
    return problems[0][: limit - len(suffix) - 1] + "…" + suffix


def _more_suffix(left_out: int) -> str:
    """Say how many problems a status message leaves out, and where to read them."""
    return f" (+{left_out} more: see juju debug-log)" if left_out else ""


if __name__ == "__main__":  # pragma: nocover
    ops.main(ContainerComputeCharm)
