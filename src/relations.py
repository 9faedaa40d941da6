"""The charm's own relation endpoints: what each databag holds, read and written in one place.

Each class wraps one endpoint and knows only Juju data: keys, validation of what the remote side
sent, what we publish. The charm passes that data to the library; nothing here calls LXD.

- ``LxdProvider`` (``lxd``, interface ``containers``): nova-compute sends ``user``; we answer
  ``pool`` and a ``nonce`` that changes only when nova-compute must re-check its LXD access.
- ``ClusterPeers`` (``cluster``): each unit publishes its LXD certificate and address.
- ``IdentityRequirer`` (``identity-credentials``, interface ``keystone-credentials``): we ask
  for a service user; the keystone leader answers credentials in its unit databag.
- ``compute-jobs`` is served by the charm library ``charms.container_compute.v0.compute_jobs``
  (lib/); ``launch_params`` turns a request into the launch-job action's own params class.
"""

import logging
import re
import uuid
from collections.abc import Callable
from typing import Any

import ops
from charms.container_compute.v0.compute_jobs import ComputeJobsProvides, JobReport, JobRequest

from container_compute import identity
from container_compute.constants import (
    CLUSTER_ENDPOINT,
    COMPUTE_JOBS_ENDPOINT,
    IDENTITY_ENDPOINT,
    LXD_ENDPOINT,
)
from container_compute.jobs.params import JobParams, LaunchJobParams

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

    def missing_user(self, exists: Callable[[str], bool]) -> tuple[str, str] | None:
        """Return (user, remote application) of a relation whose user ``exists`` denies."""
        for relation in self.relations:
            user = self.requested_user(relation)
            if user is not None and not exists(user):
                return user, relation.app.name if relation.app else "the principal"
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


def launch_params(raw: object) -> LaunchJobParams:
    """Validate a compute-jobs request exactly as the launch-job action's params.

    Raises:
        ValueError: naming the field that is wrong.
    """
    request = JobRequest.from_dict(raw)
    return LaunchJobParams(
        command=request.command,
        tasks=request.tasks,
        inputs="\n".join(request.inputs),
        parallelism=request.parallelism,
        image=request.image,
        cpu=request.cpu,
        memory=request.memory,
        timeout=request.timeout,
        deadline=request.deadline,
        retries=request.retries,
        name=request.name,
    )


RunAction = Callable[[str, Any], dict[str, Any]]


class ComputeJobsServer:
    """Our side of ``compute-jobs``: requests launched as jobs, their reports kept current."""

    def __init__(self, charm: ops.CharmBase) -> None:
        """Serve the charm's compute-jobs relations through the charm library."""
        self._charm = charm
        self.provides = ComputeJobsProvides(charm, COMPUTE_JOBS_ENDPOINT)

    def serve(self, run_action: RunAction, refused: type[Exception]) -> None:
        """Launch requests not yet run and refresh unfinished jobs, with ``run_action``.

        ``refused`` is the exception ``run_action`` raises when it cannot do something; it
        becomes the request's error entry, like an invalid request.
        """
        for relation in self.provides.relations:
            reports = self.provides.published(relation)
            for request_id, raw in self.provides.requests(relation).items():
                known = reports.get(request_id)
                if known is not None and known.finished:
                    continue
                try:
                    reports[request_id] = self._report(run_action, raw, known)
                except (ValueError, refused) as err:
                    reports[request_id] = JobReport(error=str(err))
            self.provides.publish(relation, reports)

    def _report(self, run_action: RunAction, raw: object, known: JobReport | None) -> JobReport:
        """Launch a new request, or read the state of its job."""
        if known is None:
            launched = run_action("launch-job", launch_params(raw))
            logger.info("compute-jobs: launched job %s", launched["job"])
            job, results_dir = launched["job"], launched["results-dir"]
        else:
            job, results_dir = known.job, known.results_dir
        status = run_action("job-status", JobParams(job=job))
        return JobReport(
            job=job,
            state=status["state"],
            tasks=status["tasks"],
            counts=status["counts"],
            completed_indexes=status["completed-indexes"],
            failed_indexes=status["failed-indexes"],
            results_dir=results_dir,
            host=self._charm.unit.name,
        )
