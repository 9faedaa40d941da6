"""compute-jobs across leader changes and departures: the unit that runs a job reports it."""

import dataclasses
import json
from typing import Any

import pytest
from ops import testing

from .conftest import Library
from .test_compute_jobs import (
    REQUIRER_ACTIONS,
    REQUIRER_META,
    UNIT0,
    FakeLedger,
    PortalCharm,
    jobs_of,
    provider_context,
    requirer_data,
)

REQUESTS = {"sweep": {"command": "echo hi", "tasks": 2}}


def provider_relation(**data: Any) -> testing.Relation:
    return testing.Relation(
        "compute-jobs", remote_app_name="portal", remote_app_data=requirer_data(REQUESTS), **data
    )


def test_a_job_is_followed_to_its_end_when_the_leader_moves(
    library: Library, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger0 = FakeLedger().install(monkeypatch, library)
    ctx0, ctx1 = provider_context(0), provider_context(1)

    # unit/0 leads and launches the job on its own host.
    relation = provider_relation()
    state0 = testing.State(
        leader=True, relations={relation, testing.PeerRelation("cluster", peers_data={1: {}})}
    )
    state0 = ctx0.run(ctx0.on.relation_changed(relation), state0)
    app_data = state0.get_relation(relation.id).local_app_data
    assignment = {"host": UNIT0, "job": "j-1", "results-dir": "/r/j-1"}
    assert jobs_of(app_data) == {"sweep": assignment}

    # unit/1 is elected and serves: its own ledger has no j-1, yet nothing is rejected.
    ledger1 = FakeLedger().install(monkeypatch, library)
    seen_by_1 = provider_relation(local_app_data=dict(app_data))
    peers1 = testing.PeerRelation("cluster", peers_data={0: {}})
    for event in (ctx1.on.leader_elected(), ctx1.on.update_status()):
        out = ctx1.run(event, testing.State(leader=True, relations={seen_by_1, peers1}))
        served = out.get_relation(seen_by_1.id)
        assert jobs_of(served.local_app_data) == {"sweep": assignment}
        assert jobs_of(served.local_unit_data) == {}
    assert ledger1.calls == []

    # unit/0, a follower now, still refreshes the report of the job it runs.
    ledger0.install(monkeypatch, library).jobs["j-1"].update(state="succeeded", done="0-1")
    state0 = ctx0.run(ctx0.on.update_status(), dataclasses.replace(state0, leader=False))
    unit0_data = state0.get_relation(relation.id).local_unit_data
    assert jobs_of(unit0_data)["sweep"]["state"] == "succeeded"

    # The requirer merges the assignment with unit/0's report.
    portal = testing.Context(PortalCharm, meta=REQUIRER_META, actions=REQUIRER_ACTIONS)
    heard = testing.Relation(
        "compute-jobs",
        remote_app_name="container-compute",
        remote_app_data=dict(app_data),
        remote_units_data={0: dict(unit0_data), 1: {"version": "1", "jobs": "{}"}},
    )
    with portal(portal.on.relation_changed(heard, remote_unit=0), state_of(heard)) as manager:
        manager.run()
        [(kind, request_id, report)] = manager.charm.heard
    assert (kind, request_id) == ("JobFinishedEvent", "sweep")
    assert report["host"] == UNIT0 and report["completed-indexes"] == "0-1"


def state_of(*relations: testing.RelationBase) -> testing.State:
    return testing.State(relations=set(relations))


@pytest.mark.parametrize("event", ["relation_departed", "leader_elected", "update_status"])
def test_the_new_leader_marks_the_jobs_of_a_departed_unit_lost(
    library: Library, monkeypatch: pytest.MonkeyPatch, event: str
) -> None:
    FakeLedger().install(monkeypatch, library)
    assignment = {"host": UNIT0, "job": "j-1", "results-dir": "/r/j-1"}
    relation = provider_relation(
        local_app_data={"version": "1", "jobs": json.dumps({"sweep": assignment})}
    )
    ctx1 = provider_context(1)
    if event == "relation_departed":  # unit/0 is still listed while it departs
        peers = testing.PeerRelation("cluster", peers_data={0: {}})
        trigger = ctx1.on.relation_departed(peers, remote_unit=0, departing_unit=0)
    else:  # unit/0 is gone
        peers = testing.PeerRelation("cluster")
        trigger = getattr(ctx1.on, event)()
    out = ctx1.run(trigger, testing.State(leader=True, relations={relation, peers}))
    lost = jobs_of(out.get_relation(relation.id).local_app_data)["sweep"]
    assert lost == {
        **assignment,
        "state": "lost",
        "reason": f"unit {UNIT0}, which ran job j-1, left",
    }

    portal = testing.Context(PortalCharm, meta=REQUIRER_META, actions=REQUIRER_ACTIONS)
    heard = testing.Relation(
        "compute-jobs",
        remote_app_name="container-compute",
        remote_app_data={"version": "1", "jobs": json.dumps({"sweep": lost})},
        remote_units_data={1: {"version": "1"}},
    )
    with portal(portal.on.relation_changed(heard, remote_unit=1), state_of(heard)) as manager:
        manager.run()
        assert manager.charm.heard == [("JobLostEvent", "sweep", lost)]
        assert manager.charm.jobs.reports()["sweep"].lost


@pytest.mark.parametrize("dying", [True, False])
def test_nothing_is_marked_lost_by_a_dying_leader_or_without_peers(
    library: Library, monkeypatch: pytest.MonkeyPatch, dying: bool
) -> None:
    ledger = FakeLedger().install(monkeypatch, library)
    assignment = {"host": UNIT0, "job": "j-1", "results-dir": "/r/j-1"}
    relation = testing.Relation(
        "compute-jobs",
        remote_app_name="portal",
        remote_app_data=requirer_data({**REQUESTS, "more": {"command": "echo more"}}),
        local_app_data={"version": "1", "jobs": json.dumps({"sweep": assignment})},
    )
    ctx1 = provider_context(1)
    if dying:  # unit/1 itself departs: unit/0 vanishes from its view; it launches nothing
        peers = testing.PeerRelation("cluster", peers_data={0: {}})
        out = ctx1.run(
            ctx1.on.relation_departed(peers, remote_unit=0, departing_unit=1),
            testing.State(leader=True, relations={relation, peers}),
        )
    else:  # the peer relation is gone (broken): who is alive is unknown
        out = ctx1.run(ctx1.on.update_status(), testing.State(leader=True, relations={relation}))
    assert ledger.launched() == ([] if dying else ["echo more"])
    assert jobs_of(out.get_relation(relation.id).local_app_data)["sweep"] == assignment


def requirer_sees(units: dict[int, dict[str, str]], jobs: dict[str, Any]) -> testing.Relation:
    return testing.Relation(
        "compute-jobs",
        remote_app_name="container-compute",
        remote_app_data={"version": "1", "jobs": json.dumps(jobs)},
        remote_units_data=units,
    )


def test_the_requirer_hears_a_host_depart_as_lost_once() -> None:
    assignment = {"host": UNIT0, "job": "j-1", "results-dir": "/r/j-1"}
    running = {**assignment, "state": "running", "tasks": 2}
    relation = requirer_sees(
        {0: {"version": "1", "jobs": json.dumps({"sweep": running})}, 1: {}},
        {"sweep": assignment},
    )
    portal = testing.Context(PortalCharm, meta=REQUIRER_META, actions=REQUIRER_ACTIONS)
    with portal(portal.on.relation_changed(relation, remote_unit=0), state_of(relation)) as m:
        state = m.run()
        assert m.charm.heard == [("JobChangedEvent", "sweep", running)]

    departed = requirer_sees({1: {}}, {"sweep": assignment})
    state = testing.State(relations={departed}, stored_states=state.stored_states)
    departs = portal.on.relation_departed(departed, remote_unit=0, departing_unit=0)
    with portal(departs, state) as m:
        state = m.run()
        [(kind, _, report)] = m.charm.heard
    assert kind == "JobLostEvent" and report["reason"] == f"unit {UNIT0}, which ran job j-1, left"

    # The new leader's mark says the same: not heard twice.
    marked = requirer_sees({1: {}}, {"sweep": report})
    state = testing.State(relations={marked}, stored_states=state.stored_states)
    with portal(portal.on.relation_changed(marked, remote_unit=1), state) as m:
        m.run()
        assert m.charm.heard == []


def test_a_finished_job_stays_finished_when_its_host_leaves() -> None:
    assignment = {"host": UNIT0, "job": "j-1", "results-dir": "/r/j-1"}
    done = {**assignment, "state": "succeeded", "tasks": 2}
    relation = requirer_sees(
        {0: {"version": "1", "jobs": json.dumps({"sweep": done})}}, {"sweep": assignment}
    )
    portal = testing.Context(PortalCharm, meta=REQUIRER_META, actions=REQUIRER_ACTIONS)
    with portal(portal.on.relation_changed(relation, remote_unit=0), state_of(relation)) as m:
        state = m.run()
        assert [kind for kind, _, _ in m.charm.heard] == ["JobFinishedEvent"]
    lost = {**assignment, "state": "lost", "reason": "unit left"}
    marked = requirer_sees({1: {}}, {"sweep": lost})
    state = testing.State(relations={marked}, stored_states=state.stored_states)
    with portal(portal.on.relation_changed(marked, remote_unit=1), state) as m:
        m.run()
        assert m.charm.heard == []
        assert m.charm.jobs.reports()["sweep"].state == "succeeded"


def test_a_host_not_joined_here_yet_is_not_lost() -> None:
    assignment = {"host": UNIT0, "job": "j-1", "results-dir": "/r/j-1"}
    relation = requirer_sees({1: {}}, {"sweep": assignment})  # unit/0 has not joined yet
    portal = testing.Context(PortalCharm, meta=REQUIRER_META, actions=REQUIRER_ACTIONS)
    with portal(portal.on.relation_changed(relation, remote_unit=1), state_of(relation)) as m:
        m.run()
        assert m.charm.heard == [("JobChangedEvent", "sweep", assignment)]


def test_two_requirers_with_the_same_request_id_get_two_jobs(
    ctx: testing.Context, library: Library, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = FakeLedger().install(monkeypatch, library)
    first = testing.Relation(
        "compute-jobs", remote_app_name="portal", remote_app_data=requirer_data(REQUESTS)
    )
    second = testing.Relation(
        "compute-jobs", remote_app_name="workflow", remote_app_data=requirer_data(REQUESTS)
    )
    state = testing.State(leader=True, relations={first, second})
    state = ctx.run(ctx.on.relation_changed(first), state)
    state = ctx.run(ctx.on.relation_changed(state.get_relation(second.id)), state)
    jobs = {
        relation.remote_app_name: jobs_of(state.get_relation(relation.id).local_app_data)
        for relation in (first, second)
    }
    # which relation the leader serves first is the model's order, not the test's
    assert sorted(j["sweep"]["job"] for j in jobs.values()) == ["j-1", "j-2"]
    for relation in (first, second):
        report = jobs_of(state.get_relation(relation.id).local_unit_data)
        assert report["sweep"]["job"] == jobs[relation.remote_app_name]["sweep"]["job"]
    assert len(ledger.launched()) == 2
