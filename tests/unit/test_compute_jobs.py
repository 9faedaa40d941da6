"""The compute-jobs relation library: a small requirer charm, and our charm as the provider."""

import json
import re
from collections.abc import Mapping
from typing import Any

import ops
import pytest
from charms.container_compute.v0 import compute_jobs
from charms.container_compute.v0.compute_jobs import (
    ComputeJobsRequires,
    InvalidRequestError,
    JobEvent,
    JobRequest,
    JobsRequestedEvent,
)
from ops import testing

import charm
import relations

from .conftest import FakeActionError, Library

REQUIRER_META = {
    "name": "portal",
    "requires": {"compute-jobs": {"interface": "compute-jobs"}},
}
REQUIRER_ACTIONS = {"submit": {"params": {"id": {"type": "string"}}}}
UNIT0, UNIT1 = "container-compute/0", "container-compute/1"


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
            self.jobs.on.job_lost,
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


class FakeLedger:
    """One host's job ledger behind ``actions.run_action``: launch-job and job-status."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []
        self.refuse: str = ""  # every action fails with this message (a transient failure)
        self.next_job = 1

    def install(self, monkeypatch: pytest.MonkeyPatch, library: Library) -> "FakeLedger":
        """Answer the charm's run_action calls from this ledger."""
        monkeypatch.setattr(library.actions, "run_action", self.run_action)
        return self

    def run_action(
        self, action: str, params: Any, config: Any, state_dir: Any, progress: Any = None
    ) -> dict[str, Any]:
        self.calls.append((action, getattr(params, "job", "") or params.command))
        if self.refuse:
            raise FakeActionError(self.refuse)
        if action == "retry-job":
            if self.jobs[params.job]["state"] != "failed":
                raise FakeActionError(f"job {params.job} has no failed task to run again")
            self.jobs[params.job]["state"] = "queued"
            return {"job": params.job, "state": "queued"}
        if action == "launch-job":
            job = f"j-{self.next_job}"
            self.next_job += 1
            self.jobs[job] = {"state": "queued", "tasks": params.tasks, "done": ""}
            return {"job": job, "results-dir": f"/r/{job}"}
        if params.job not in self.jobs:
            raise FakeActionError(f"job {params.job} does not exist (see list-jobs)")
        job = self.jobs[params.job]
        return {
            "job": params.job,
            "state": job["state"],
            "tasks": job["tasks"],
            "counts": {"succeeded": 2} if job["done"] else {"pending": job["tasks"]},
            "completed-indexes": job["done"],
            "failed-indexes": "",
        }

    def launched(self) -> list[str]:
        return [what for action, what in self.calls if action == "launch-job"]


def requirer_data(requests: dict[str, Any], version: str | None = "1") -> dict[str, str]:
    """A requirer's application databag."""
    data = {"requests": json.dumps(requests)}
    if version is not None:
        data["version"] = version
    return data


def jobs_of(databag: Mapping[str, str]) -> dict[str, Any]:
    return json.loads(databag.get("jobs", "{}"))


def provider_context(unit_id: int) -> testing.Context[charm.ContainerComputeCharm]:
    return testing.Context(charm.ContainerComputeCharm, unit_id=unit_id)


def update_status_of_unit0(
    leader: bool, mine: dict[str, Any], requests: dict[str, Any]
) -> tuple[testing.Relation, testing.State]:
    """Unit 0 runs the jobs ``mine`` (its own reports) of the portal's ``requests``."""
    assignments = {k: {"host": UNIT0, "job": v["job"]} for k, v in mine.items()}
    relation = testing.Relation(
        "compute-jobs",
        remote_app_name="portal",
        remote_app_data=requirer_data(requests),
        local_app_data={"version": "1", "jobs": json.dumps(assignments)} if leader else {},
        local_unit_data={"version": "1", "jobs": json.dumps(mine)},
    )
    ctx = provider_context(0)
    state = testing.State(leader=leader, relations={relation, testing.PeerRelation("cluster")})
    return relation, ctx.run(ctx.on.update_status(), state)


@pytest.fixture
def portal() -> testing.Context[PortalCharm]:
    return testing.Context(PortalCharm, meta=REQUIRER_META, actions=REQUIRER_ACTIONS)


def test_library_metadata() -> None:
    assert compute_jobs.LIBAPI == 0 and compute_jobs.LIBPATCH == 4
    assert compute_jobs.LIBID == "01aad22c62b94e5abf79a5ed235d6d29" and compute_jobs.PYDEPS == []
    assert compute_jobs.VERSION == "1"
    assert "Usage in a requiring charm" in (compute_jobs.__doc__ or "")
    assert all(hasattr(compute_jobs, name) for name in compute_jobs.__all__)


def test_leader_submits_into_its_application_databag(portal: testing.Context) -> None:
    relation = testing.Relation("compute-jobs", remote_app_name="worker")
    out = portal.run(
        portal.on.action("submit", params={"id": "sweep-1"}),
        testing.State(leader=True, relations={relation}),
    )
    databag = out.get_relation(relation.id).local_app_data
    requests = json.loads(databag["requests"])
    assert requests == {"sweep-1": {"command": "echo $TASK_INDEX", "tasks": 3, "retries": 1}}
    assert databag["version"] == "1"


@pytest.mark.parametrize("leader", [True, False])
def test_requirer_leader_announces_its_version_when_related(
    portal: testing.Context, leader: bool
) -> None:
    relation = testing.Relation("compute-jobs", remote_app_name="worker")
    out = portal.run(
        portal.on.relation_created(relation), testing.State(leader=leader, relations={relation})
    )
    databag = out.get_relation(relation.id).local_app_data
    assert databag == ({"version": "1"} if leader else {})


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


def test_requirer_merges_assignments_with_unit_reports_and_hears_each_once(
    portal: testing.Context,
) -> None:
    assignments = {
        "a": {"host": UNIT0, "job": "j1", "results-dir": "/r/j1"},
        "b": {"host": UNIT1, "job": "j2", "results-dir": "/r/j2"},
        "c": {"error": "tasks: -1 is not between 0 and 100000"},
        "d": {"state": "lost", "host": "container-compute/7", "job": "j9", "reason": "gone"},
        "e": {"host": UNIT1, "job": "j3", "results-dir": "/r/j3"},  # not reported yet
    }
    running = {"host": UNIT0, "job": "j1", "state": "running", "tasks": 3, "results-dir": "/r/j1"}
    done = {"host": UNIT1, "job": "j2", "state": "succeeded", "tasks": 2, "results-dir": "/r/j2"}
    relation = testing.Relation(
        "compute-jobs",
        remote_app_name="container-compute",
        remote_app_data={"version": "1", "jobs": json.dumps(assignments)},
        remote_units_data={
            0: {"version": "1", "jobs": json.dumps({"a": running})},
            1: {"version": "1", "jobs": json.dumps({"b": done})},
        },
    )
    state = testing.State(relations={relation})
    with portal(portal.on.relation_changed(relation, remote_unit=1), state) as manager:
        out = manager.run()
        heard = manager.charm.heard
        assert manager.charm.jobs.reports()["a"].state == "running"
    assert heard == [
        ("JobChangedEvent", "a", running),
        ("JobFinishedEvent", "b", done),
        ("RequestRejectedEvent", "c", assignments["c"]),
        ("JobLostEvent", "d", assignments["d"]),
        ("JobChangedEvent", "e", assignments["e"]),
    ]
    with portal(portal.on.relation_changed(relation, remote_unit=0), out) as manager:
        manager.run()
        assert manager.charm.heard == []  # nothing new: no event twice


def test_requirer_still_reads_a_libpatch_1_provider(portal: testing.Context) -> None:
    jobs = {"a": {"job": "j1", "state": "failed", "failed-indexes": "2"}}
    relation = testing.Relation(
        "compute-jobs", remote_app_name="worker", remote_app_data={"jobs": json.dumps(jobs)}
    )
    with portal(portal.on.relation_changed(relation), testing.State(relations={relation})) as m:
        m.run()
        assert m.charm.heard == [("JobFinishedEvent", "a", jobs["a"])]


def test_provider_launches_valid_requests_and_refuses_invalid_ones(
    ctx: testing.Context, library: Library, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = FakeLedger().install(monkeypatch, library)
    requests = {
        "good": {"command": "echo hi", "tasks": 2},
        "bad": {"command": "echo hi", "tasks": -1},
        "typo": {"cmd": "echo hi"},
    }
    relation = testing.Relation(
        "compute-jobs", remote_app_name="portal", remote_app_data=requirer_data(requests)
    )
    out = ctx.run(
        ctx.on.relation_changed(relation), testing.State(leader=True, relations={relation})
    )
    served = out.get_relation(relation.id)
    assert served.local_app_data["version"] == "1" == served.local_unit_data["version"]
    assert jobs_of(served.local_app_data) == {
        "good": {"host": UNIT0, "job": "j-1", "results-dir": "/r/j-1"},
        "bad": {"error": "tasks: -1 is not between 0 and 100000"},
        "typo": {"error": "unknown field(s): cmd"},
    }
    report = jobs_of(served.local_unit_data)
    assert list(report) == ["good"]  # the leader reports the job it runs, in the same hook
    assert report["good"]["state"] == "queued" and report["good"]["host"] == UNIT0
    assert ledger.launched() == ["echo hi"]


def test_a_refused_launch_is_an_error_entry(
    ctx: testing.Context, library: Library, monkeypatch: pytest.MonkeyPatch
) -> None:
    FakeLedger().install(monkeypatch, library).refuse = "image 'x' does not exist in LXD"
    relation = testing.Relation(
        "compute-jobs",
        remote_app_name="portal",
        remote_app_data=requirer_data({"r": {"command": "x", "image": "x"}}),
    )
    out = ctx.run(
        ctx.on.relation_changed(relation), testing.State(leader=True, relations={relation})
    )
    served = out.get_relation(relation.id)
    assert jobs_of(served.local_app_data) == {"r": {"error": "image 'x' does not exist in LXD"}}
    assert jobs_of(served.local_unit_data) == {}


@pytest.mark.parametrize("leader", [True, False])
def test_every_unit_refreshes_the_jobs_it_runs_and_never_relaunches(
    library: Library, monkeypatch: pytest.MonkeyPatch, leader: bool
) -> None:
    ledger = FakeLedger().install(monkeypatch, library)
    ledger.jobs["j-1"] = {"state": "succeeded", "tasks": 2, "done": "0-1"}
    ledger.jobs["j-2"] = {"state": "running", "tasks": 2, "done": ""}
    mine = {
        "good": {"host": UNIT0, "job": "j-1", "state": "running"},
        "over": {"host": UNIT0, "job": "j-2", "state": "failed"},  # finished: not asked again
    }
    requests = {k: {"command": "echo hi"} for k in mine}
    relation, out = update_status_of_unit0(leader, mine, requests)
    served = out.get_relation(relation.id)
    assignments = {k: {"host": UNIT0, "job": v["job"]} for k, v in mine.items()}
    report = jobs_of(served.local_unit_data)
    assert report["good"]["state"] == "succeeded" and report["good"]["completed-indexes"] == "0-1"
    assert report["over"] == mine["over"]
    assert ledger.calls == [("job-status", "j-1")]
    assert jobs_of(served.local_app_data) == (assignments if leader else {})


def test_follower_hears_requests_but_launches_nothing(
    ctx: testing.Context, library: Library, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = FakeLedger().install(monkeypatch, library)
    relation = testing.Relation(
        "compute-jobs",
        remote_app_name="portal",
        remote_app_data=requirer_data({"good": {"command": "echo hi"}}),
    )
    ctx = testing.Context(charm.ContainerComputeCharm, capture_framework_events=True)
    out = ctx.run(
        ctx.on.relation_changed(relation), testing.State(leader=False, relations={relation})
    )
    assert any(isinstance(e, JobsRequestedEvent) for e in ctx.emitted_events)
    assert "jobs" not in out.get_relation(relation.id).local_app_data
    assert jobs_of(out.get_relation(relation.id).local_unit_data) == {}
    assert ledger.calls == []


RUNNING_HERE = {"good": {"host": UNIT0, "job": "j-1", "state": "running", "tasks": 2}}


def refresh_running_here() -> tuple[testing.Context, testing.RelationBase]:
    """update-status on unit 0, which reports job j-1 running; return the context and relation."""
    relation = testing.Relation(
        "compute-jobs",
        remote_app_name="portal",
        remote_app_data=requirer_data({"good": {"command": "echo hi"}}),
        local_unit_data={"version": "1", "jobs": json.dumps(RUNNING_HERE)},
    )
    ctx = provider_context(0)
    out = ctx.run(ctx.on.update_status(), testing.State(relations={relation}))
    return ctx, out.get_relation(relation.id)


def test_a_transient_status_failure_keeps_the_last_report(
    library: Library, monkeypatch: pytest.MonkeyPatch
) -> None:
    FakeLedger().install(monkeypatch, library).refuse = "the ledger is locked"
    ctx, relation = refresh_running_here()
    assert jobs_of(relation.local_unit_data) == RUNNING_HERE
    assert any("j-1 not refreshed: the ledger is locked" in log.message for log in ctx.juju_log)


def test_a_job_gone_from_its_hosts_ledger_is_lost(
    library: Library, monkeypatch: pytest.MonkeyPatch
) -> None:
    FakeLedger().install(monkeypatch, library)  # j-1 was deleted (retention)
    _ctx, relation = refresh_running_here()
    report = jobs_of(relation.local_unit_data)["good"]
    assert report["state"] == "lost" and "error" not in report
    assert report["reason"].startswith(f"job j-1 is no longer on {UNIT0}: job j-1 does not exist")


def test_a_withdrawn_request_leaves_both_databags(
    ctx: testing.Context, library: Library, monkeypatch: pytest.MonkeyPatch
) -> None:
    FakeLedger().install(monkeypatch, library)
    entry = {"host": UNIT0, "job": "j-1", "state": "succeeded"}
    relation = testing.Relation(
        "compute-jobs",
        remote_app_name="portal",
        remote_app_data=requirer_data({}),
        local_app_data={"version": "1", "jobs": json.dumps({"gone": entry})},
        local_unit_data={"version": "1", "jobs": json.dumps({"gone": entry})},
    )
    out = ctx.run(
        ctx.on.relation_changed(relation), testing.State(leader=True, relations={relation})
    )
    served = out.get_relation(relation.id)
    assert jobs_of(served.local_app_data) == {} == jobs_of(served.local_unit_data)


@pytest.mark.parametrize(
    ("isolation", "expected"),
    [("", "sandbox"), ("sandbox", "sandbox"), ("container", "container")],
)
def test_a_request_picks_its_isolation(isolation: str, expected: str) -> None:
    request = {"command": "true", **({"isolation": isolation} if isolation else {})}

    assert relations.launch_params(request).isolation == expected


def test_a_request_with_an_unknown_isolation_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match=r"^isolation: "):
        relations.launch_params({"command": "true", "isolation": "vm"})


def test_the_leader_asks_for_a_rerun_of_a_request(portal: testing.Context[PortalCharm]) -> None:
    relation = testing.Relation(
        "compute-jobs",
        local_app_data=requirer_data({"sweep": {"command": "echo hi", "tasks": 4}}),
    )
    state = testing.State(leader=True, relations={relation})
    with portal(portal.on.update_status(), state) as manager:
        manager.charm.jobs.rerun("sweep")
        with pytest.raises(InvalidRequestError, match="'nope': no such request"):
            manager.charm.jobs.rerun("nope")
        out = manager.run()
    requests = json.loads(out.get_relation(relation.id).local_app_data["requests"])
    assert requests == {"sweep": {"command": "echo hi", "tasks": 4, "reruns": 1}}


@pytest.mark.parametrize("leader", [True, False])
def test_the_unit_running_a_finished_job_reruns_its_failed_tasks_once(
    library: Library, monkeypatch: pytest.MonkeyPatch, leader: bool
) -> None:
    ledger = FakeLedger().install(monkeypatch, library)
    ledger.jobs["j-1"] = {"state": "failed", "tasks": 2, "done": "0"}
    ledger.jobs["j-2"] = {"state": "succeeded", "tasks": 2, "done": "0-1"}
    ledger.jobs["j-3"] = {"state": "running", "tasks": 2, "done": ""}
    mine = {
        "sweep": {"host": UNIT0, "job": "j-1", "state": "failed"},
        "done": {"host": UNIT0, "job": "j-2", "state": "succeeded", "reruns": 1},
        "busy": {"host": UNIT0, "job": "j-3", "state": "running"},
    }
    requests = {
        "sweep": {"command": "echo hi", "reruns": 1},
        "done": {"command": "echo hi", "reruns": 1},  # already done: not again
        "busy": {"command": "echo hi", "reruns": 1},  # not finished: not yet
    }
    relation, out = update_status_of_unit0(leader, mine, requests)

    assert ("retry-job", "j-1") in ledger.calls
    assert [c for c in ledger.calls if c[0] == "retry-job"] == [("retry-job", "j-1")]
    report = jobs_of(out.get_relation(relation.id).local_unit_data)
    assert report["sweep"]["reruns"] == 1 and report["done"]["reruns"] == 1
    assert "reruns" not in report["busy"]

    ledger.calls.clear()  # the next hook: nothing asked twice
    ctx = provider_context(0)
    ctx.run(ctx.on.update_status(), out)
    assert not [c for c in ledger.calls if c[0] == "retry-job"]
