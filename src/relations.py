"""The charm's own relation endpoints: what each databag holds, read and written in one place.

Each class wraps one endpoint and knows only Juju data: keys, validation of what the remote side
sent, what we publish. The charm passes that data to the library; nothing here calls LXD.

- ``LxdProvider`` (``lxd``, interface ``containers``): nova-compute sends ``user``; we answer
  ``pool`` and a ``nonce`` that changes only when nova-compute must re-check its LXD access.
- ``ClusterPeers`` (``cluster``): each unit publishes its LXD certificate and address.
- ``IdentityRequirer`` (``identity-credentials``, interface ``keystone-credentials``): we ask
  for a service user; the keystone leader answers credentials in its unit databag.
- ``compute-jobs`` is served by the charm library ``charms.container_compute.v0.compute_jobs``
  (lib/) through ``ComputeJobsServer``: the leader launches requests and publishes which unit
  runs each; every unit reports the jobs it runs. ``launch_params`` turns a request into the
  launch-job action's own params class.
"""

import dataclasses
import logging
import re
import uuid
from collections.abc import Callable
from typing import Any

import ops
from charms.container_compute.v0.compute_jobs import (
    LOST,
    ComputeJobsProvides,
    JobReport,
    JobRequest,
)

from container_compute import identity
from container_compute.constants import (
    CLUSTER_ENDPOINT,
    COMPUTE_JOBS_ENDPOINT,
    IDENTITY_ENDPOINT,
    LXD_ENDPOINT,
)
from container_compute.jobs.model import SANDBOX
from container_compute.jobs.params import JobParams, LaunchJobParams, RetryJobParams

logger = logging.getLogger(__name__)

# How job-status (the job actions' find_job) says a job is gone from this host's ledger.
JOB_GONE = "job {job} does not exist"

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
        retry_exit_codes=request.retry_exit_codes,
        fail_job_exit_codes=request.fail_job_exit_codes,
        name=request.name,
        isolation=request.isolation or SANDBOX,
    )


RunAction = Callable[[str, Any], dict[str, Any]]


class ComputeJobsServer:
    """Our side of ``compute-jobs``: the leader launches requests, each unit reports its jobs.

    A job runs on the unit that launched it (the leader of that moment) and that unit keeps its
    report current in its own unit databag, leader or not. The leader's assignments say which
    unit runs each request; a unit that left for good leaves its jobs ``lost``.
    """

    def __init__(self, charm: ops.CharmBase) -> None:
        """Serve the charm's compute-jobs relations through the charm library."""
        self._charm = charm
        self.provides = ComputeJobsProvides(charm, COMPUTE_JOBS_ENDPOINT)

    def serve(
        self, run_action: RunAction, refused: type[Exception], departing: ops.Unit | None = None
    ) -> None:
        """Leader: launch new requests, mark jobs of departed units lost. Every unit: refresh.

        ``refused`` is the exception ``run_action`` raises when it cannot do something: for a
        launch it becomes the request's error entry, like an invalid request; for job-status
        the last report is kept. ``departing`` is a peer leaving now (this unit: launch nothing).
        """
        unit = self._charm.unit
        leading = unit.is_leader() and departing != unit
        for relation in self.provides.relations:
            mine = self.provides.unit_reports(relation)
            if leading:
                self._assign(relation, mine, run_action, refused, departing)
            self._rerun(self.provides.requests(relation), mine, run_action, refused)
            self._refresh(mine, run_action, refused)
            self.provides.report(relation, mine)

    def _assign(
        self,
        relation: ops.Relation,
        mine: dict[str, JobReport],
        run_action: RunAction,
        refused: type[Exception],
        departing: ops.Unit | None,
    ) -> None:
        """Launch each request not yet assigned (here); mark lost the jobs of departed units."""
        assignments = self.provides.assignments(relation)
        self._adopt(assignments, mine)
        problem = self.provides.version_error(relation)
        if problem is not None:
            logger.error("compute-jobs: %s: its requests are refused", problem)
        for request_id, raw in self.provides.requests(relation).items():
            if problem is not None or request_id in assignments:
                continue
            try:
                launched = run_action("launch-job", launch_params(raw))
            except (ValueError, refused) as err:
                assignments[request_id] = JobReport(error=str(err))
                continue
            logger.info("compute-jobs: launched job %s for %s", launched["job"], request_id)
            mine[request_id] = assignments[request_id] = JobReport(
                job=launched["job"], results_dir=launched["results-dir"], host=self._unit_name
            )
        self._mark_lost(assignments, departing)
        self.provides.publish(relation, assignments)

    def _adopt(self, assignments: dict[str, JobReport], mine: dict[str, JobReport]) -> None:
        """Take over the reports of our jobs a LIBPATCH 1 leader published as assignments."""
        for request_id, assigned in assignments.items():
            legacy = assigned.state not in ("", LOST) and not assigned.error
            if legacy and assigned.host == self._unit_name:
                mine.setdefault(request_id, assigned)
                assignments[request_id] = JobReport(
                    job=assigned.job, results_dir=assigned.results_dir, host=assigned.host
                )

    def _mark_lost(self, assignments: dict[str, JobReport], departing: ops.Unit | None) -> None:
        """Mark lost the jobs whose host is neither this unit nor a peer (peers known)."""
        peers = self._charm.model.get_relation(CLUSTER_ENDPOINT)
        if peers is None:
            return  # no peer relation (yet, or this unit is going): who is alive is unknown
        alive = {self._unit_name} | {u.name for u in peers.units if u != departing}
        for request_id, assigned in assignments.items():
            if assigned.finished or not assigned.host or assigned.host in alive:
                continue
            assignments[request_id] = assigned.host_left()
            logger.warning("compute-jobs: %s: %s", request_id, assignments[request_id].reason)

    def _rerun(
        self,
        requests: dict[str, Any],
        mine: dict[str, JobReport],
        run_action: RunAction,
        refused: type[Exception],
    ) -> None:
        """Retry the failed tasks of each finished job here whose request asks for a rerun."""
        for request_id, known in mine.items():
            try:
                wanted = JobRequest.from_dict(requests.get(request_id)).reruns
            except ValueError:
                continue  # withdrawn, or refused when it was launched
            if wanted <= known.reruns or not known.job or not known.finished or known.lost:
                continue
            try:
                run_action("retry-job", RetryJobParams(job=known.job))
            except refused as err:  # e.g. no task failed: said once, not asked again
                logger.warning("compute-jobs: %s: retry-job refused: %s", request_id, err)
                mine[request_id] = dataclasses.replace(
                    known, reruns=wanted, reason=f"retry-job: {err}"
                )
                continue
            logger.info(
                "compute-jobs: %s: job %s runs its failed tasks again", request_id, known.job
            )
            mine[request_id] = dataclasses.replace(known, state="queued", reruns=wanted, reason="")

    def _refresh(
        self, mine: dict[str, JobReport], run_action: RunAction, refused: type[Exception]
    ) -> None:
        """Read the state of every unfinished job this unit runs; keep the last on failure."""
        for request_id, known in mine.items():
            if known.finished or not known.job:
                continue
            try:
                status = run_action("job-status", JobParams(job=known.job))
            except refused as err:
                if not str(err).startswith(JOB_GONE.format(job=known.job)):
                    logger.warning("compute-jobs: job %s not refreshed: %s", known.job, err)
                    continue
                reason = f"job {known.job} is no longer on {self._unit_name}: {err}"
                logger.warning("compute-jobs: %s: %s", request_id, reason)
                mine[request_id] = dataclasses.replace(known, state=LOST, reason=reason)
                continue
            mine[request_id] = JobReport(
                job=known.job,
                state=status["state"],
                tasks=status["tasks"],
                counts=status["counts"],
                completed_indexes=status["completed-indexes"],
                failed_indexes=status["failed-indexes"],
                results_dir=known.results_dir,
                host=self._unit_name,
                reason=known.reason,
                reruns=known.reruns,
            )

    @property
    def _unit_name(self) -> str:
        return self._charm.unit.name
