"""compute_jobs: submit batch jobs to container-compute over the ``compute-jobs`` relation.

A charm that needs computations run (a workflow engine, a science portal, a CI runner) relates
to container-compute and asks for jobs: N tasks of one command, each in its own worker
container. container-compute's leader validates each request exactly as its ``launch-job``
action does and launches it on its own host; the unit that runs a job reports its state, counts,
completed and failed index ranges and where the results are, whichever unit leads later. The
requirer gets typed events when a job changes, finishes, is refused or is lost. Invalid requests
get an error entry naming what was wrong, never silence.

Usage in a requiring charm (``metadata.yaml``: ``requires: compute-jobs: {interface:
compute-jobs}``; fetch this library with ``charmcraft fetch-lib
charms.container_compute.v0.compute_jobs``)::

    from charms.container_compute.v0.compute_jobs import ComputeJobsRequires, JobRequest

    class PortalCharm(ops.CharmBase):
        def __init__(self, framework):
            super().__init__(framework)
            self.jobs = ComputeJobsRequires(self, "compute-jobs")
            framework.observe(self.jobs.on.job_changed, self._on_job_changed)
            framework.observe(self.jobs.on.job_finished, self._on_job_finished)
            framework.observe(self.jobs.on.job_lost, self._on_job_lost)
            framework.observe(self.jobs.on.request_rejected, self._on_rejected)

        def _on_submit_action(self, event):
            self.jobs.submit(
                "sweep-1",
                JobRequest(command='python3 /input/sim.py --seed "$TASK_INDEX"', tasks=64),
            )

        def _on_job_finished(self, event):
            report = event.report  # JobReport: state, counts, failed_indexes, results_dir...

        def _on_collect_status(self, event):
            if self.jobs.version_error:  # the provider speaks another protocol version
                event.add_status(ops.BlockedStatus(self.jobs.version_error))

Only the requirer's LEADER can submit (application databag); ``rerun(request_id)`` asks for
the failed tasks of a finished job to run again. ``reports()`` gives every request's
report at any time. ``job_lost`` means the unit that ran the job left for good (or the job's
record is gone from it): ``report.reason`` says which; ``lost`` is final, like ``succeeded``.
The provider's side (``ComputeJobsProvides``) is used by container-compute itself. The library
never sets a status.

Databags (every value JSON; protocol ``version`` "1", read before anything else, so a peer
speaking another version is refused by name, never as "unknown field(s)"):

- requirer application: ``version`` (written by the leader on relation-created and on submit),
  ``requests``: request id -> request.
- provider application (its leader writes): ``version``, ``jobs``: request id -> assignment,
  one of ``{"host": unit, "job": id, "results-dir": path}``, ``{"error": why}`` (the request is
  invalid or could not be launched) or ``{"state": "lost", "host", "job", "reason"}``.
- provider unit (each unit writes its own): ``version``, ``jobs``: request id -> report
  (``job``, ``state``, ``tasks``, ``counts``, ``completed-indexes``, ``failed-indexes``,
  ``results-dir``, ``host``) of the jobs THIS unit runs.

The requirer merges them: an assignment's report comes from its host unit's databag. Request
ids are per relation. Secrets never travel here: there is no ``env`` field.
"""

import dataclasses
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import ops

LIBID = "01aad22c62b94e5abf79a5ed235d6d29"
LIBAPI = 0
LIBPATCH = 4
PYDEPS: list[str] = []

__all__ = [
    "ComputeJobsProvides",
    "ComputeJobsRequires",
    "InvalidRequestError",
    "JobChangedEvent",
    "JobEvent",
    "JobFinishedEvent",
    "JobLostEvent",
    "JobReport",
    "JobRequest",
    "JobsRequestedEvent",
    "RequestRejectedEvent",
]

logger = logging.getLogger(__name__)

VERSION = "1"
VERSION_KEY = "version"
REQUESTS_KEY = "requests"
JOBS_KEY = "jobs"
LOST = "lost"
FINISHED_STATES = ("succeeded", "failed", "cancelled", LOST)
REQUEST_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
FETCH_LIB = "charmcraft fetch-lib charms.container_compute.v0.compute_jobs"
# Marks an error entry that refuses the requirer's version: undone once its version is known.
_REFUSED_KEY = "refused-version"


class InvalidRequestError(ValueError):
    """A job request that cannot be run; the message names the field."""


@dataclass(frozen=True)
class JobRequest:
    """What a requirer asks for: the fields of container-compute's launch-job action."""

    command: str
    tasks: int = 0
    inputs: list[str] = field(default_factory=list)
    parallelism: int = 0
    image: str = ""
    cpu: str = ""
    memory: str = ""
    timeout: str = "0"
    deadline: str = "0"
    retries: int = 0
    # Exit codes as ranges ("75,100-110"): the only ones retried; those that end the job.
    retry_exit_codes: str = ""
    fail_job_exit_codes: str = ""
    name: str = ""
    # "sandbox" (a fresh sandbox per task in warm workers) or "container" (a fresh worker per
    # task); "": the provider's default, sandbox.
    isolation: str = ""
    # How many times the failed, timed-out and cancelled tasks of the finished job are to be
    # run again in the same job (container-compute's retry-job): ``rerun`` raises it by one;
    # the report's ``reruns`` says how many the provider did.
    reruns: int = 0

    def __post_init__(self) -> None:
        """Check the type of every field (the provider checks the values)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "inputs":
                ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
            elif f.type in ("int", int):
                ok = isinstance(value, int) and not isinstance(value, bool)
            else:
                ok = isinstance(value, str)
            if not ok:
                raise InvalidRequestError(f"{f.name}: {value!r} has the wrong type")
        if not self.command.strip():
            raise InvalidRequestError("command: must not be empty")

    @classmethod
    def from_dict(cls, data: Any) -> "JobRequest":
        """Build a request from databag JSON; InvalidRequestError names what is wrong."""
        if not isinstance(data, dict):
            raise InvalidRequestError("a request must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidRequestError(f"unknown field(s): {', '.join(unknown)}")
        if "command" not in data:
            raise InvalidRequestError("command: missing")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """The request as databag JSON (defaults left out)."""
        data = dataclasses.asdict(self)
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        return {k: v for k, v in data.items() if k == "command" or v not in (defaults[k], [])}


@dataclass(frozen=True)
class JobReport:
    """One request's job as the provider reports it, or why it was refused or lost.

    Also the shape of the provider's assignments (host, job, results-dir, error or lost).
    """

    job: str = ""
    state: str = ""
    tasks: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    completed_indexes: str = ""
    failed_indexes: str = ""
    results_dir: str = ""
    host: str = ""
    error: str = ""
    reason: str = ""
    reruns: int = 0

    @property
    def finished(self) -> bool:
        """True once the job can change no more (or the request was refused, or it is lost)."""
        return bool(self.error) or self.state in FINISHED_STATES

    @property
    def lost(self) -> bool:
        """True when the unit that ran the job left (or forgot it); ``reason`` says which."""
        return self.state == LOST and not self.error

    def host_left(self) -> "JobReport":
        """This job, lost because the unit that ran it left for good."""
        reason = f"unit {self.host}, which ran job {self.job}, left"
        return dataclasses.replace(self, state=LOST, reason=reason)

    @classmethod
    def from_dict(cls, data: Any) -> "JobReport":
        """Build a report from databag JSON (dashed keys); unknown keys are ignored."""
        if not isinstance(data, dict):
            return cls(error="the provider published a report that is not a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k.replace("-", "_"): v for k, v in data.items()}
        return cls(**{k: v for k, v in values.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        """The report as databag JSON with dashed keys (as the action results)."""
        return {k.replace("_", "-"): v for k, v in dataclasses.asdict(self).items() if v}


def _load_object(databag: ops.RelationDataContent, key: str) -> dict[str, Any]:
    """Read a JSON object from a databag key; {} when absent or malformed (logged)."""
    text = databag.get(key)
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        logger.error("compute-jobs: %s is not JSON", key)
        return {}
    if not isinstance(value, dict):
        logger.error("compute-jobs: %s is not a JSON object", key)
        return {}
    return value


def _write(databag: ops.RelationDataContent, key: str, value: str) -> None:
    """Set a databag key, only when its value changes."""
    if databag.get(key) != value:
        databag[key] = value


def _reports(raw: dict[str, Any]) -> dict[str, JobReport]:
    return {request_id: JobReport.from_dict(data) for request_id, data in raw.items()}


class JobEvent(ops.RelationEvent):
    """A job of one request changed, finished or was lost, or the request was refused."""

    def __init__(
        self,
        handle: ops.Handle,
        relation: ops.Relation,
        app: ops.Application | None = None,
        unit: ops.Unit | None = None,
        request_id: str = "",
        report: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(handle, relation, app, unit)
        self.request_id = request_id
        self._report = report or {}

    @property
    def report(self) -> JobReport:
        """The provider's report of this request."""
        return JobReport.from_dict(self._report)

    def snapshot(self) -> dict[str, Any]:
        """Save the event for deferral."""
        return {**super().snapshot(), "request_id": self.request_id, "report": self._report}

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Restore a deferred event."""
        super().restore(snapshot)
        self.request_id = snapshot["request_id"]
        self._report = snapshot["report"]


class JobChangedEvent(JobEvent):
    """The job's state or counts changed (state "" until its host first reports)."""


class JobFinishedEvent(JobEvent):
    """The job reached a final state (succeeded, failed, cancelled)."""


class JobLostEvent(JobEvent):
    """The unit that ran the job left for good, or forgot it; ``report.reason`` says why."""


class RequestRejectedEvent(JobEvent):
    """The provider refused the request; ``report.error`` says why."""


class ComputeJobsRequiresEvents(ops.ObjectEvents):
    """Events of the requirer side."""

    job_changed = ops.EventSource(JobChangedEvent)
    job_finished = ops.EventSource(JobFinishedEvent)
    job_lost = ops.EventSource(JobLostEvent)
    request_rejected = ops.EventSource(RequestRejectedEvent)


class ComputeJobsRequires(ops.Object):
    """The requirer side: submit job requests, hear about their jobs."""

    on = ComputeJobsRequiresEvents()  # type: ignore[reportAssignmentType]
    _stored = ops.StoredState()

    def __init__(self, charm: ops.CharmBase, relation_name: str = "compute-jobs") -> None:
        super().__init__(charm, relation_name)
        self._charm = charm
        self._relation_name = relation_name
        self._stored.set_default(seen="{}", departed="[]")
        events = charm.on[relation_name]
        charm.framework.observe(events.relation_created, self._on_announce)
        charm.framework.observe(events.relation_changed, self._on_changed)
        charm.framework.observe(events.relation_departed, self._on_departed)
        charm.framework.observe(charm.on.upgrade_charm, self._on_announce)

    @property
    def relation(self) -> ops.Relation | None:
        """The compute-jobs relation (one provider)."""
        return self._charm.model.get_relation(self._relation_name)

    @property
    def version_error(self) -> str | None:
        """Why the provider's data cannot be read (another protocol version); None if it can."""
        relation = self.relation
        if relation is None or relation.app is None:
            return None
        version = relation.data[relation.app].get(VERSION_KEY)
        if not version or version == VERSION:
            return None
        return (
            f"provider speaks compute-jobs version {version}, this library {VERSION}: "
            f"fetch a newer library ({FETCH_LIB})"
        )

    def submit(self, request_id: str, request: JobRequest) -> None:
        """Ask for a job (leader only). Re-submitting an id replaces a request not yet run.

        Raises:
            InvalidRequestError: for a bad request id.
            RuntimeError: without the relation, or when this unit is not the leader.
        """
        if not REQUEST_ID_RE.match(request_id):
            raise InvalidRequestError(f"request id {request_id!r}: use a-z, 0-9 and '-'")
        databag = self._app_databag()
        requests = _load_object(databag, REQUESTS_KEY)
        requests[request_id] = request.to_dict()
        _write(databag, VERSION_KEY, VERSION)
        databag[REQUESTS_KEY] = json.dumps(requests, sort_keys=True)

    def rerun(self, request_id: str) -> None:
        """Run the failed tasks of a request's finished job again (leader only).

        The provider reruns them once the job has finished; the report's ``reruns`` then
        counts it and the job's state, counts and index ranges say the new truth.

        Raises:
            InvalidRequestError: no such request.
            RuntimeError: without the relation, or when this unit is not the leader.
        """
        databag = self._app_databag()
        requests = _load_object(databag, REQUESTS_KEY)
        if request_id not in requests:
            raise InvalidRequestError(f"request id {request_id!r}: no such request")
        request = JobRequest.from_dict(requests[request_id])
        requests[request_id] = dataclasses.replace(request, reruns=request.reruns + 1).to_dict()
        databag[REQUESTS_KEY] = json.dumps(requests, sort_keys=True)

    def withdraw(self, request_id: str) -> None:
        """Forget a request (leader only); the provider stops reporting it."""
        databag = self._app_databag()
        requests = _load_object(databag, REQUESTS_KEY)
        if requests.pop(request_id, None) is not None:
            databag[REQUESTS_KEY] = json.dumps(requests, sort_keys=True)

    def reports(self) -> dict[str, JobReport]:
        """Every request's report, by request id ({} while ``version_error`` says why)."""
        relation = self.relation
        if relation is None or self.version_error is not None:
            return {}
        return self._merged(relation)

    def _app_databag(self) -> ops.RelationDataContent:
        relation = self.relation
        if relation is None:
            raise RuntimeError(f"no {self._relation_name} relation")
        if not self._charm.unit.is_leader():
            raise RuntimeError("only the leader can submit compute jobs")
        return relation.data[self._charm.app]

    def _merged(self, relation: ops.Relation) -> dict[str, JobReport]:
        """The provider's assignments, each with its host unit's report.

        A job heard finished stays finished when its host leaves afterwards (not lost).
        """
        if relation.app is None:
            return {}
        app_data = relation.data[relation.app]
        published = _load_object(app_data, JOBS_KEY)
        if not app_data.get(VERSION_KEY):  # a LIBPATCH 1 provider publishes whole reports
            return _reports(published)
        units = {unit.name: unit for unit in relation.units}
        departed = set(json.loads(str(self._stored.departed)))
        seen = json.loads(str(self._stored.seen))
        merged, hosts = {}, {}
        for request_id, assigned in _reports(published).items():
            merged[request_id] = assigned
            if assigned.error:
                continue
            if assigned.host in departed and assigned.state != LOST:
                merged[request_id] = assigned.host_left()
            elif assigned.host in units and assigned.state != LOST:
                if assigned.host not in hosts:
                    hosts[assigned.host] = _unit_reports(relation, units[assigned.host])
                reported = hosts[assigned.host].get(request_id)
                if reported is not None and reported.job == assigned.job:
                    merged[request_id] = reported
            # else its host has not joined this relation here yet: state ""
            earlier = JobReport.from_dict(seen.get(request_id, {}))
            if merged[request_id].lost and earlier.finished and earlier.job == assigned.job:
                merged[request_id] = earlier
        return merged

    def _on_announce(self, _: ops.EventBase) -> None:
        """Tell the provider which protocol version we speak (leader)."""
        if self._charm.unit.is_leader():
            for relation in self._charm.model.relations[self._relation_name]:
                _write(relation.data[self._charm.app], VERSION_KEY, VERSION)

    def _on_changed(self, event: ops.RelationChangedEvent) -> None:
        self._on_announce(event)
        self._emit(event.relation)

    def _on_departed(self, event: ops.RelationDepartedEvent) -> None:
        gone = event.departing_unit
        if gone is not None and gone.app.name != self._charm.app.name:
            departed = set(json.loads(str(self._stored.departed))) | {gone.name}
            self._stored.departed = json.dumps(sorted(departed))
        self._emit(event.relation)

    def _emit(self, relation: ops.Relation) -> None:
        """Emit one event per report that changed since last heard."""
        problem = self.version_error
        if problem is not None:
            logger.error("compute-jobs: %s", problem)
            return
        reports = self._merged(relation)
        hosts = {report.host for report in reports.values()}
        departed = set(json.loads(str(self._stored.departed))) & hosts
        self._stored.departed = json.dumps(sorted(departed))
        units = {unit.name: unit for unit in relation.units}
        seen = json.loads(str(self._stored.seen))
        current = {request_id: report.to_dict() for request_id, report in reports.items()}
        for request_id, data in sorted(current.items()):
            if seen.get(request_id) == data:
                continue
            report = reports[request_id]
            args = (relation, relation.app, units.get(report.host), request_id, data)
            if report.error:
                self.on.request_rejected.emit(*args)
            elif report.lost:
                self.on.job_lost.emit(*args)
            elif report.finished:
                self.on.job_finished.emit(*args)
            else:
                self.on.job_changed.emit(*args)
        self._stored.seen = json.dumps(current, sort_keys=True)


def _unit_reports(relation: ops.Relation, unit: ops.Unit) -> dict[str, JobReport]:
    """The reports a provider unit publishes ({} from a unit speaking another version)."""
    databag = relation.data[unit]
    version = databag.get(VERSION_KEY)
    if version != VERSION:
        if databag.get(JOBS_KEY):
            logger.error(
                "compute-jobs: unit %s speaks version %s, this library %s; its reports are "
                "ignored",
                unit.name,
                version or "(none)",
                VERSION,
            )
        return {}
    return _reports(_load_object(databag, JOBS_KEY))


class JobsRequestedEvent(ops.RelationEvent):
    """A requirer changed its requests: the leader launches new ones, every unit refreshes."""


class ComputeJobsProvidesEvents(ops.ObjectEvents):
    """Events of the provider side."""

    jobs_requested = ops.EventSource(JobsRequestedEvent)


class ComputeJobsProvides(ops.Object):
    """The provider side (container-compute): read requests, publish assignments and reports.

    The leader publishes one assignment per request (``publish``); every unit reports the jobs
    it runs in its own unit databag (``report``).
    """

    on = ComputeJobsProvidesEvents()  # type: ignore[reportAssignmentType]

    def __init__(self, charm: ops.CharmBase, relation_name: str = "compute-jobs") -> None:
        super().__init__(charm, relation_name)
        self._charm = charm
        self._relation_name = relation_name
        events = charm.on[relation_name]
        charm.framework.observe(events.relation_created, self._on_created)
        charm.framework.observe(events.relation_changed, self._on_changed)

    @property
    def relations(self) -> list[ops.Relation]:
        """Every compute-jobs relation."""
        return list(self._charm.model.relations[self._relation_name])

    def version_error(self, relation: ops.Relation) -> str | None:
        """Why the requirer's requests cannot be served (its version); None when they can."""
        if relation.app is None:
            return None
        databag = relation.data[relation.app]
        version = databag.get(VERSION_KEY)
        if version == VERSION or (not version and not databag.get(REQUESTS_KEY)):
            return None
        if not version:
            return (
                f"the requirer's compute-jobs library is too old (LIBPATCH 1, no version); "
                f"this provider speaks version {VERSION}: fetch the newer library ({FETCH_LIB})"
            )
        return f"requirer speaks compute-jobs version {version}, this provider {VERSION}"

    def requests(self, relation: ops.Relation) -> dict[str, Any]:
        """The requirer's requests, raw: check ``version_error`` first, validate each one."""
        if relation.app is None:
            return {}
        return _load_object(relation.data[relation.app], REQUESTS_KEY)

    def assignments(self, relation: ops.Relation) -> dict[str, JobReport]:
        """Our assignments (leader only), by request id; version refusals are undone.

        Raises:
            RuntimeError: when this unit is not the leader.
        """
        self._check_leader()
        assignments = {}
        for request_id, data in _load_object(relation.data[self._charm.app], JOBS_KEY).items():
            if isinstance(data, dict) and data.get(_REFUSED_KEY):
                data = {k: v for k, v in data.items() if k not in ("error", _REFUSED_KEY)}
                if not data.get("job"):
                    continue  # never launched: served afresh once the version is known
            assignments[request_id] = JobReport.from_dict(data)
        return assignments

    def publish(self, relation: ops.Relation, assignments: dict[str, JobReport]) -> None:
        """Replace our assignments (leader only); requests withdrawn are dropped.

        While ``version_error`` refuses the requirer, every request gets an error entry
        naming the versions (an old library reads it as a rejection).

        Raises:
            RuntimeError: when this unit is not the leader.
        """
        self._check_leader()
        problem = self.version_error(relation)
        data = {}
        for request_id in sorted(self.requests(relation)):
            entry = assignments.get(request_id)
            if problem is not None:
                kept = entry.to_dict() if entry is not None else {}
                data[request_id] = {**kept, "error": problem, _REFUSED_KEY: True}
            elif entry is not None:
                data[request_id] = entry.to_dict()
        databag = relation.data[self._charm.app]
        _write(databag, VERSION_KEY, VERSION)
        _write(databag, JOBS_KEY, json.dumps(data, sort_keys=True))

    def unit_reports(self, relation: ops.Relation) -> dict[str, JobReport]:
        """The reports in our own unit databag: the jobs this unit runs."""
        return _reports(_load_object(relation.data[self._charm.unit], JOBS_KEY))

    def report(self, relation: ops.Relation, reports: dict[str, JobReport]) -> None:
        """Replace our unit's reports (any unit); requests withdrawn are dropped."""
        wanted = set(self.requests(relation))
        data = {k: r.to_dict() for k, r in sorted(reports.items()) if k in wanted}
        databag = relation.data[self._charm.unit]
        _write(databag, VERSION_KEY, VERSION)
        _write(databag, JOBS_KEY, json.dumps(data, sort_keys=True))

    def _check_leader(self) -> None:
        if not self._charm.unit.is_leader():
            raise RuntimeError("only the leader publishes compute-jobs assignments")

    def _on_created(self, event: ops.RelationCreatedEvent) -> None:
        _write(event.relation.data[self._charm.unit], VERSION_KEY, VERSION)
        if self._charm.unit.is_leader():
            _write(event.relation.data[self._charm.app], VERSION_KEY, VERSION)

    def _on_changed(self, event: ops.RelationChangedEvent) -> None:
        self.on.jobs_requested.emit(event.relation, event.app, event.unit)
