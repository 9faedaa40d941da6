"""LXD cluster formation over the ``cluster`` peer relation (the ``lxd-cluster`` option).

Each unit publishes its LXD certificate and address (``publish_identity``). The leader
bootstraps an LXD cluster on its own host and, for every peer that published its
address and is not a member yet, asks the library for a join ticket (token + member config).
The ticket goes into a Juju secret owned by the application (which its units, and only they,
can read); only the secret's ID is written to the application databag (``join-<unit>``),
never the token. The peer reads the secret and joins with a preseed. Once a unit is a member, its
secret is removed.

Turning ``lxd-cluster`` off is refused (blocked status, with the reason) while the cluster
holds instances; otherwise the leader removes the other members (LXD resets them to
standalone daemons) and keeps a cluster of one, which LXD cannot undo.

Nothing here talks to LXD: every LXD call is a ``container_compute.host`` function.
"""

import logging
from dataclasses import dataclass
from typing import Any

import ops

from container_compute.config import HostConfig
from container_compute.constants import CLUSTER_ENDPOINT
from relations import ClusterPeers

logger = logging.getLogger(__name__)

JOIN_KEY_PREFIX = "join-"
MAX_STATUS_LENGTH = 240
SECRET_LABEL_PREFIX = "lxd-cluster-join-"  # noqa: S105 - a label, not a secret


def member_name(unit: ops.Unit) -> str:
    """The LXD cluster member name of a unit: ``app-N``."""
    return unit.name.replace("/", "-")


@dataclass
class ClusterView:
    """What the status shows about clustering: blocked, waiting, or a summary to append."""

    blocked: str = ""
    waiting: str = ""
    summary: str = ""

    @property
    def status(self) -> ops.StatusBase | None:
        """Blocked or waiting status to show instead of active; None when active."""
        if self.blocked:
            return ops.BlockedStatus(self.blocked[:MAX_STATUS_LENGTH])
        if self.waiting:
            return ops.WaitingStatus(self.waiting)
        return None


class ClusterFormation:
    """Form (and refuse to disband while busy) the LXD cluster of this application's units."""

    def __init__(self, charm: ops.CharmBase, host_module: Any, peers: ClusterPeers) -> None:
        """Work for ``charm``; ``host_module`` is the library's ``host`` (a fake in tests)."""
        self._charm = charm
        self._host = host_module
        self._peers = peers

    def publish_identity(self, config: HostConfig) -> str:
        """Publish our LXD certificate, fingerprint and address to peers (if listening).

        Returns the address published ("" when none).
        """
        if self._peers.relation is None:
            return ""
        if not config.lxd_listen_https:
            self._peers.withdraw()
            return ""
        try:
            server = self._host.server_identity(config, self._peers.ingress_address())
        except self._host.HostError as err:
            logger.error("cannot publish this host's LXD certificate to peers: %s", err)
            return ""
        self._peers.publish(server.certificate, server.fingerprint, server.address)
        return server.address

    @property
    def relation(self) -> ops.Relation | None:
        """The peer relation, once Juju created it."""
        return self._charm.model.get_relation(CLUSTER_ENDPOINT)

    def reconcile(
        self, config: HostConfig, address: str, departing: ops.Unit | None = None
    ) -> None:
        """One pass: bootstrap and hand out tickets (leader), or join (peer); or undo.

        A unit ``departing`` the relation is taken out of the LXD cluster by the leader (LXD
        refuses while it holds instances: logged, and the member stays).
        """
        host = self._host
        try:
            if not config.lxd_cluster:
                self._disband(config)
                return
            if not address:
                logger.info("lxd-cluster: no address to offer the cluster yet")
                return
            name = member_name(self._charm.unit)
            if self._charm.unit.is_leader():
                if host.bootstrap_cluster(config, name, address):
                    logger.info("lxd-cluster: bootstrapped an LXD cluster as %s", name)
                self._hand_out_tickets(config)
                if departing is not None and departing != self._charm.unit:
                    self._remove_departed(config, departing)
            else:
                self._join(config, name, address)
        except host.HostError as err:
            logger.error("lxd-cluster: %s", err)

    def _peer_units(self) -> list[ops.Unit]:
        relation = self.relation
        if relation is None:
            return []
        return sorted(
            (u for u in relation.units if relation.data[u].get("address")),
            key=lambda u: u.name,
        )

    def _hand_out_tickets(self, config: HostConfig) -> None:
        relation = self.relation
        if relation is None:
            return
        state = self._host.cluster_status(config)
        members = {m.name for m in state.members}
        databag = relation.data[self._charm.app]
        for unit in self._peer_units():
            key = JOIN_KEY_PREFIX + unit.name
            if member_name(unit) in members:
                self._revoke(databag, key)
                continue
            if databag.get(key):
                continue
            ticket = self._host.cluster_join_ticket(config, member_name(unit))
            secret = self._charm.app.add_secret(
                ticket,
                label=SECRET_LABEL_PREFIX + member_name(unit),
                description=f"LXD cluster join token for {unit.name}",
            )
            databag[key] = secret.id or ""
            logger.info("lxd-cluster: join ticket for %s handed over in a secret", unit.name)
        for key in [k for k in databag if k.startswith(JOIN_KEY_PREFIX)]:
            if key[len(JOIN_KEY_PREFIX) :] not in {u.name for u in relation.units}:
                self._revoke(databag, key)  # the unit left before it joined

    def _remove_departed(self, config: HostConfig, unit: ops.Unit) -> None:
        name = member_name(unit)
        if name not in {m.name for m in self._host.cluster_status(config).members}:
            return
        removed = self._host.remove_cluster_members(config, [name])
        logger.info("lxd-cluster: %s left the relation; removed %s", unit.name, removed)

    def _revoke(self, databag: ops.RelationDataContent, key: str) -> None:
        secret_id = databag.get(key)
        if not secret_id:
            return
        try:
            self._charm.model.get_secret(id=secret_id).remove_all_revisions()
        except (ops.SecretNotFoundError, ops.ModelError):
            pass
        del databag[key]

    def _join(self, config: HostConfig, name: str, address: str) -> None:
        relation = self.relation
        if relation is None or self._charm.app is None:
            return
        if self._host.cluster_status(config).enabled:
            return
        secret_id = relation.data[self._charm.app].get(JOIN_KEY_PREFIX + self._charm.unit.name)
        if not secret_id:
            return
        try:
            ticket = self._charm.model.get_secret(id=secret_id).get_content(refresh=True)
        except (ops.SecretNotFoundError, ops.ModelError) as err:
            logger.warning("lxd-cluster: the join secret cannot be read yet: %s", err)
            return
        self._host.join_cluster(config, name, address, ticket)
        logger.info("lxd-cluster: joined the LXD cluster as %s", name)

    def _disband(self, config: HostConfig) -> None:
        state = self._host.cluster_status(config)
        relation = self.relation
        if self._charm.unit.is_leader() and relation is not None:
            databag = relation.data[self._charm.app]
            for key in [k for k in databag if k.startswith(JOIN_KEY_PREFIX)]:
                self._revoke(databag, key)
        if not state.enabled or state.size <= 1 or not self._charm.unit.is_leader():
            return
        if self._host.cluster_leave_refusal(config):
            return  # the status says why
        own = member_name(self._charm.unit)
        others = [m.name for m in state.members if m.name != own]
        removed = self._host.remove_cluster_members(config, others)
        logger.info("lxd-cluster: removed %s from the LXD cluster", ", ".join(removed))

    def view(self, config: HostConfig) -> ClusterView:
        """What the unit's status should say about clustering."""
        host = self._host
        try:
            state = host.cluster_status(config)
            if not config.lxd_cluster:
                if state.enabled and state.size > 1:
                    refusal = host.cluster_leave_refusal(config)
                    if refusal:
                        return ClusterView(blocked=refusal)
                    return ClusterView(summary=f"{state.summary()}; leaving")
                return ClusterView()
        except host.HostError as err:
            return ClusterView(blocked=f"lxd-cluster: {err}")
        if not state.enabled:
            if self._charm.unit.is_leader():
                return ClusterView(waiting="lxd-cluster: bootstrapping the LXD cluster")
            return ClusterView(waiting="lxd-cluster: waiting for a join token from the leader")
        return ClusterView(summary=state.summary())
