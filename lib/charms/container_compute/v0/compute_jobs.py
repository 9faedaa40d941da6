"""compute_jobs: submit batch jobs to container-compute over the ``compute-jobs`` relation.

A charm that needs computations run (a workflow engine, a science portal, a CI runner) relates
to container-compute and asks for jobs: N tasks of one command, each in its own worker
container. container-compute's leader validates each request exactly as its ``launch-job``
action does, runs it, and publishes the job's state, counts, completed and failed index ranges
and where the results are; the requirer gets typed events when a job changes and finishes.
Invalid requests get an error entry naming what was wrong, never silence.

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
            framework.observe(self.jobs.on.request_rejected, self._on_rejected)

        def _on_submit_action(self, event):
            self.jobs.submit(
                "sweep-1",
                JobRequest(command='python3 /input/sim.py --seed "$TASK_INDEX"', tasks=64),
            )

        def _on_job_finished(self, event):
            report = event.report  # JobReport: state, counts, failed_indexes, results_dir...

Only the requirer's LEADER can submit (application databag). The provider's side
(``ComputeJobsProvides``) is used by container-compute itself. The library never sets a status.

Databags: the requirer's application data holds ``requests``, a JSON object of request id ->
request; the provider's application data holds ``jobs``, a JSON object of request id -> report
(or ``{"error": ...}``). Secrets never travel here: there is no ``env`` field.
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
LIBPATCH = 1
PYDEPS: list[str] = []

logger = logging.getLogger(__name__)

REQUESTS_KEY = "requests"
JOBS_KEY = "jobs"
FINISHED_STATES = ("succeeded", "failed", "cancelled")
REQUEST_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


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
    name: str = ""

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
    """What the provider publishes about one request: its job, or why it was refused."""

    job: str = ""
    state: str = ""
    tasks: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    completed_indexes: str = ""
    failed_indexes: str = ""
    results_dir: str = ""
    host: str = ""
    error: str = ""

    @property
    def finished(self) -> bool:
        """True once the job can change no more (or the request was refused)."""
        return bool(self.error) or self.state in FINISHED_STATES

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


class JobEvent(ops.RelationEvent):
    """A job of one request changed, finished, or the request was refused."""

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
    """The job's state or counts changed."""


class JobFinishedEvent(JobEvent):
    """The job reached a final state (succeeded, failed, cancelled)."""


class RequestRejectedEvent(JobEvent):
    """The provider refused the request; ``report.error`` says why."""


class ComputeJobsRequiresEvents(ops.ObjectEvents):
    """Events of the requirer side."""

    job_changed = ops.EventSource(JobChangedEvent)
    job_finished = ops.EventSource(JobFinishedEvent)
    request_rejected = ops.EventSource(RequestRejectedEvent)


class ComputeJobsRequires(ops.Object):
    """The requirer side: submit job requests, hear about their jobs."""

    on = ComputeJobsRequiresEvents()  # type: ignore[reportAssignmentType]
    _stored = ops.StoredState()

    def __init__(self, charm: ops.CharmBase, relation_name: str = "compute-jobs") -> None:
        super().__init__(charm, relation_name)
        self._charm = charm
        self._relation_name = relation_name
        self._stored.set_default(seen="{}")
        charm.framework.observe(charm.on[relation_name].relation_changed, self._on_changed)

    @property
    def relation(self) -> ops.Relation | None:
        """The compute-jobs relation (one provider)."""
        return self._charm.model.get_relation(self._relation_name)

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
        databag[REQUESTS_KEY] = json.dumps(requests, sort_keys=True)

    def withdraw(self, request_id: str) -> None:
        """Forget a request (leader only); the provider stops reporting it."""
        databag = self._app_databag()
        requests = _load_object(databag, REQUESTS_KEY)
        if requests.pop(request_id, None) is not None:
            databag[REQUESTS_KEY] = json.dumps(requests, sort_keys=True)

    def reports(self) -> dict[str, JobReport]:
        """Every report the provider published, by request id."""
        relation = self.relation
        if relation is None or relation.app is None:
            return {}
        published = _load_object(relation.data[relation.app], JOBS_KEY)
        return {request_id: JobReport.from_dict(data) for request_id, data in published.items()}

    def _app_databag(self) -> ops.RelationDataContent:
        relation = self.relation
        if relation is None:
            raise RuntimeError(f"no {self._relation_name} relation")
        if not self._charm.unit.is_leader():
            raise RuntimeError("only the leader can submit compute jobs")
        return relation.data[self._charm.app]

    def _on_changed(self, event: ops.RelationChangedEvent) -> None:
        if event.app is None:
            return
        published = _load_object(event.relation.data[event.app], JOBS_KEY)
        seen = json.loads(str(self._stored.seen))
        for request_id, data in sorted(published.items()):
            if seen.get(request_id) == data:
                continue
            report = JobReport.from_dict(data)
            args = (event.relation, event.app, event.unit, request_id, data)
            if report.error:
                self.on.request_rejected.emit(*args)
            elif report.finished:
                self.on.job_finished.emit(*args)
            else:
                self.on.job_changed.emit(*args)
        self._stored.seen = json.dumps(published, sort_keys=True)


class JobsRequestedEvent(ops.RelationEvent):
    """A requirer changed its requests: the provider's leader should look at them."""


class ComputeJobsProvidesEvents(ops.ObjectEvents):
    """Events of the provider side."""

    jobs_requested = ops.EventSource(JobsRequestedEvent)


class ComputeJobsProvides(ops.Object):
    """The provider side (container-compute): read requests, publish reports."""

    on = ComputeJobsProvidesEvents()  # type: ignore[reportAssignmentType]

    def __init__(self, charm: ops.CharmBase, relation_name: str = "compute-jobs") -> None:
        super().__init__(charm, relation_name)
        self._charm = charm
        self._relation_name = relation_name
        charm.framework.observe(charm.on[relation_name].relation_changed, self._on_changed)

    @property
    def relations(self) -> list[ops.Relation]:
        """Every compute-jobs relation."""
        return list(self._charm.model.relations[self._relation_name])

    def requests(self, relation: ops.Relation) -> dict[str, Any]:
        """The requirer's requests, raw (validate each with ``JobRequest.from_dict``)."""
        if relation.app is None:
            return {}
        return _load_object(relation.data[relation.app], REQUESTS_KEY)

    def published(self, relation: ops.Relation) -> dict[str, JobReport]:
        """What we published, by request id."""
        raw = _load_object(relation.data[self._charm.app], JOBS_KEY)
        return {request_id: JobReport.from_dict(data) for request_id, data in raw.items()}

    def publish(self, relation: ops.Relation, reports: dict[str, JobReport]) -> None:
        """Replace our published reports (leader only); requests withdrawn are dropped."""
        wanted = set(self.requests(relation))
        data = {k: r.to_dict() for k, r in sorted(reports.items()) if k in wanted}
        relation.data[self._charm.app][JOBS_KEY] = json.dumps(data, sort_keys=True)

    def _on_changed(self, event: ops.RelationChangedEvent) -> None:
        if self._charm.unit.is_leader():
            self.on.jobs_requested.emit(event.relation, event.app, event.unit)
