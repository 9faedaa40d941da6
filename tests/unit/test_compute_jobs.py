"""The compute-jobs relation library: a small requirer charm, and our charm as the provider."""

import json
import re
from typing import Any

import ops
import pytest
from charms.container_compute.v0 import compute_jobs
from charms.container_compute.v0.compute_jobs import (
    ComputeJobsRequires,
    InvalidRequestError,
    JobEvent,
    JobRequest,
)
from ops import testing

from .conftest import Library

REQUIRER_META = {
    "name": "portal",
    "requires": {"compute-jobs": {"interface": "compute-jobs"}},
}
REQUIRER_ACTIONS = {"submit": {"params": {"id": {"type": "string"}}}}


class PortalCharm(ops.CharmBase):
    """A requirer: submits on an action, records every job event it hears."""

    def __init__(self, framework: ops.Framework) -> None:
        super().__init__(framework)
        self.jobs = ComputeJobsRequires(self, "compute-jobs")
        self.heard: list[tuple[str, str, dict[str, Any]]] = []
        framework.observe(self.on.submit_action, self._on_submit)
        for event in (
            self.jobs.on.job_changed,
            self.jobs.on.job_finished,
            self.jobs.on.request_rejected,
        ):
            framework.observe(event, self._on_job_event)

    def _on_submit(self, event: ops.ActionEvent) -> None:
        try:
            self.jobs.submit(
                event.params["id"], JobRequest(command="echo $TASK_INDEX", tasks=3, retries=1)
            )
        except (InvalidRequestError, RuntimeError) as err:
            event.fail(str(err))

    def _on_job_event(self, event: JobEvent) -> None:
        kind = type(event).__name__
        self.heard.append((kind, event.request_id, event.report.to_dict()))


@pytest.fixture
def portal() -> testing.Context[PortalCharm]:
    return testing.Context(PortalCharm, meta=REQUIRER_META, actions=REQUIRER_ACTIONS)


def test_library_metadata() -> None:
    assert compute_jobs.LIBAPI == 0 and compute_jobs.LIBPATCH >= 1
    assert len(compute_jobs.LIBID) == 32 and compute_jobs.PYDEPS == []
    assert "Usage in a requiring charm" in (compute_jobs.__doc__ or "")


def test_leader_submits_into_its_application_databag(portal: testing.Context) -> None:
    relation = testing.Relation("compute-jobs", remote_app_name="worker")
    out = portal.run(
        portal.on.action("submit", params={"id": "sweep-1"}),
        testing.State(leader=True, relations={relation}),
    )
    requests = json.loads(out.get_relation(relation.id).local_app_data["requests"])
    assert requests == {"sweep-1": {"command": "echo $TASK_INDEX", "tasks": 3, "retries": 1}}


@pytest.mark.parametrize(
    ("leader", "request_id", "message"),
    [(False, "sweep-1", "only the leader"), (True, "Bad Id!", "request id 'Bad Id!'")],
)
def test_submit_refusals(
    portal: testing.Context, leader: bool, request_id: str, message: str
) -> None:
    relation = testing.Relation("compute-jobs", remote_app_name="worker")
    with pytest.raises(testing.ActionFailed) as failure:
        portal.run(
            portal.on.action("submit", params={"id": request_id}),
            testing.State(leader=leader, relations={relation}),
        )
    assert message in failure.value.message


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"tasks": 2}, "command: missing"),
        ({"command": "x", "cmd": "y"}, "unknown field(s): cmd"),
        ({"command": "x", "tasks": "2"}, "tasks: '2' has the wrong type"),
        ({"command": "x", "inputs": "a\nb"}, "inputs: 'a\\nb' has the wrong type"),
        ({"command": "  "}, "command: must not be empty"),
        (["command"], "must be a JSON object"),
    ],
)
def test_request_model_names_what_is_wrong(data: Any, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=re.escape(message)):
        JobRequest.from_dict(data)


def test_requirer_hears_changed_finished_and_rejected_once(portal: testing.Context) -> None:
    jobs = {
        "a": {"job": "j1", "state": "running", "tasks": 3, "counts": {"succeeded": 1}},
        "b": {"job": "j2", "state": "succeeded", "tasks": 2, "results-dir": "/r/j2"},
        "c": {"error": "tasks: -1 is not between 0 and 100000"},
    }
    relation = testing.Relation(
        "compute-jobs", remote_app_name="worker", remote_app_data={"jobs": json.dumps(jobs)}
    )
    state = testing.State(relations={relation})
    with portal(portal.on.relation_changed(relation), state) as manager:
        out = manager.run()
        heard = manager.charm.heard
    assert heard == [
        ("JobChangedEvent", "a", jobs["a"]),
        ("JobFinishedEvent", "b", jobs["b"]),
        ("RequestRejectedEvent", "c", jobs["c"]),
    ]
    with portal(portal.on.relation_changed(relation), out) as manager:
        manager.run()
        assert manager.charm.heard == []  # nothing new: no event twice


def test_provider_launches_valid_requests_and_refuses_invalid_ones(
    ctx: testing.Context, library: Library
) -> None:
    library.actions.result = {
        "job": "j-1",
        "results-dir": "/var/lib/container-compute/results/j-1",
        "state": "queued",
        "tasks": 2,
        "counts": {"pending": 2, "running": 0, "succeeded": 0, "failed": 0},
        "completed-indexes": "",
        "failed-indexes": "",
    }
    requests = {
        "good": {"command": "echo hi", "tasks": 2},
        "bad": {"command": "echo hi", "tasks": -1},
        "typo": {"cmd": "echo hi"},
    }
    relation = testing.Relation(
        "compute-jobs",
        remote_app_name="portal",
        remote_app_data={"requests": json.dumps(requests)},
    )
    out = ctx.run(
        ctx.on.relation_changed(relation), testing.State(leader=True, relations={relation})
    )
    published = json.loads(out.get_relation(relation.id).local_app_data["jobs"])
    assert published["good"]["job"] == "j-1" and published["good"]["state"] == "queued"
    assert published["good"]["host"] == "container-compute/0"
    assert published["good"]["results-dir"] == "/var/lib/container-compute/results/j-1"
    assert published["bad"] == {"error": "tasks: -1 is not between 0 and 100000"}
    assert published["typo"] == {"error": "unknown field(s): cmd"}
    launched = [args for name, args in library.actions.calls if args[0] == "launch-job"]
    assert len(launched) == 1 and launched[0][1].command == "echo hi"


def test_provider_refreshes_unfinished_jobs_and_never_relaunches(
    ctx: testing.Context, library: Library
) -> None:
    library.actions.result = {
        "state": "succeeded",
        "tasks": 2,
        "counts": {"pending": 0, "running": 0, "succeeded": 2, "failed": 0},
        "completed-indexes": "0-1",
        "failed-indexes": "",
    }
    relation = testing.Relation(
        "compute-jobs",
        remote_app_name="portal",
        remote_app_data={"requests": json.dumps({"good": {"command": "echo hi"}})},
        local_app_data={"jobs": json.dumps({"good": {"job": "j-1", "state": "running"}})},
    )
    out = ctx.run(ctx.on.update_status(), testing.State(leader=True, relations={relation}))
    published = json.loads(out.get_relation(relation.id).local_app_data["jobs"])
    assert published["good"]["state"] == "succeeded"
    assert published["good"]["completed-indexes"] == "0-1"
    assert [args[0] for name, args in library.actions.calls if name == "run_action"] == [
        "job-status"
    ]


def test_provider_follower_publishes_nothing(ctx: testing.Context, library: Library) -> None:
    relation = testing.Relation(
        "compute-jobs",
        remote_app_name="portal",
        remote_app_data={"requests": json.dumps({"good": {"command": "echo hi"}})},
    )
    out = ctx.run(
        ctx.on.relation_changed(relation), testing.State(leader=False, relations={relation})
    )
    assert "jobs" not in out.get_relation(relation.id).local_app_data
    assert library.actions.calls == []
