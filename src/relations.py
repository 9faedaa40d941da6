"""The charm's own relation endpoints: what each databag holds, read and written in one place.

Each class wraps one endpoint and knows only Juju data: keys, validation of what the remote side
sent, what we publish. The charm passes that data to the library; nothing here calls LXD.

- ``LxdProvider`` (``lxd``, interface ``containers``): nova-compute sends ``user``; we answer
  ``pool`` and a ``nonce`` that changes only when nova-compute must re-check its LXD access.
- ``ClusterPeers`` (``cluster``): each unit publishes its LXD certificate and address.
- ``IdentityRequirer`` (``identity-credentials``, interface ``keystone-credentials``): we ask
  for a service user; the keystone leader answers credentials in its unit databag.
"""

import logging
import re
import uuid

import ops

from container_compute import identity
from container_compute.constants import CLUSTER_ENDPOINT, IDENTITY_ENDPOINT, LXD_ENDPOINT

logger = logging.getLogger(__name__)

# A user name another charm may ask us to add to the lxd group (POSIX portable, no leading '-').
_USER_NAME_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


class LxdProvider:
    """The ``lxd`` endpoint nova-compute's ``lxd`` relation joins."""

    NONCE = "nonce"
    POOL = "pool"
    USER = "user"

    def __init__(self, charm: ops.CharmBase) -> None:
        """Wrap the charm's ``lxd`` relations."""
        self._charm = charm

    @property
    def relations(self) -> list[ops.Relation]:
        """Every ``lxd`` relation."""
        return list(self._charm.model.relations[LXD_ENDPOINT])

    def requested_user(self, relation: ops.Relation) -> str | None:
        """Return the user the remote unit asks to be in the lxd group; None if none or invalid."""
        for unit in relation.units:
            user = relation.data[unit].get(self.USER)
            if not user:
                continue
            if _USER_NAME_RE.match(user):
                return user
            logger.error("%s sent an invalid user name %r on %s", unit.name, user, LXD_ENDPOINT)
        return None

    def publish_pool(self, relation: ops.Relation, pool: str) -> None:
        """Publish the storage pool nova-compute renders as ``[lxd] pool``."""
        relation.data[self._charm.unit][self.POOL] = pool

    def renew_nonce(self, relation: ops.Relation, *, force: bool) -> None:
        """Publish a fresh nonce when forced, or when none was published yet."""
        databag = relation.data[self._charm.unit]
        if force or not databag.get(self.NONCE):
            databag[self.NONCE] = str(uuid.uuid4())


class ClusterPeers:
    """The ``cluster`` peer relation: every unit's LXD certificate and address."""

    CERTIFICATE = "certificate"
    FINGERPRINT = "fingerprint"
    ADDRESS = "address"

    def __init__(self, charm: ops.CharmBase) -> None:
        """Wrap the charm's peer relation."""
        self._charm = charm

    @property
    def relation(self) -> ops.Relation | None:
        """The peer relation, once Juju created it."""
        return self._charm.model.get_relation(CLUSTER_ENDPOINT)

    def ingress_address(self) -> str | None:
        """Our address on the peer relation's network, if Juju knows one."""
        relation = self.relation
        binding = self._charm.model.get_binding(relation) if relation is not None else None
        ingress = binding.network.ingress_address if binding is not None else None
        return str(ingress) if ingress else None

    def publish(self, certificate: str, fingerprint: str, address: str) -> None:
        """Publish our LXD certificate, its fingerprint and our address."""
        if self.relation is not None:
            self.relation.data[self._charm.unit].update(
                {
                    self.CERTIFICATE: certificate,
                    self.FINGERPRINT: fingerprint,
                    self.ADDRESS: address,
                }
            )

    def withdraw(self) -> None:
        """Remove what ``publish`` published."""
        if self.relation is not None:
            databag = self.relation.data[self._charm.unit]
            for key in (self.CERTIFICATE, self.FINGERPRINT, self.ADDRESS):
                databag.pop(key, None)

    def certificates(self, departing: ops.Unit | None = None) -> dict[str, str]:
        """Return unit name -> PEM certificate of every peer (less one departing)."""
        relation = self.relation
        if relation is None:
            return {}
        return {
            unit.name: relation.data[unit][self.CERTIFICATE]
            for unit in relation.units
            if unit != departing and relation.data[unit].get(self.CERTIFICATE)
        }


class IdentityRequirer:
    """The ``identity-credentials`` endpoint: Keystone service credentials."""

    USERNAME = "username"
    PROJECT = "project"

    def __init__(self, charm: ops.CharmBase) -> None:
        """Wrap the charm's identity-credentials relations."""
        self._charm = charm

    def request(self, username: str, project: str) -> None:
        """Ask every keystone for ``username`` (and ``project``, unless empty)."""
        for relation in self._charm.model.relations[IDENTITY_ENDPOINT]:
            databag = relation.data[self._charm.unit]
            databag[self.USERNAME] = username
            if project:
                databag[self.PROJECT] = project
            else:
                databag.pop(self.PROJECT, None)

    @staticmethod
    def credentials(relation: ops.Relation) -> identity.KeystoneCredentials | None:
        """Return the credentials a keystone unit published, or None while incomplete."""
        for unit in relation.units:
            try:
                found = identity.from_relation_data(relation.data[unit])
            except ValueError as err:
                logger.error("keystone unit %s sent bad credentials: %s", unit.name, err)
                continue
            if found is not None:
                return found
        return None
