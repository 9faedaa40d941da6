"""compute-jobs protocol versions, and writes only the leader may make."""

import json
import logging

import pytest
from charms.container_compute.v0.compute_jobs import JobReport
from ops import testing

from .conftest import Library
from .test_compute_jobs import (
    REQUIRER_ACTIONS,
    REQUIRER_META,
    UNIT0,
    FakeLedger,
    PortalCharm,
    jobs_of,
    requirer_data,
)

REQUESTS = {"sweep": {"command": "echo hi"}, "typo": {"cmd": "x"}}
TOO_OLD = (
    "the requirer's compute-jobs library is too old (LIBPATCH 1, no version); this provider "
    "speaks version 1: fetch the newer library "
    "(charmcraft fetch-lib charms.container_compute.v0.compute_jobs)"
)


@pytest.mark.parametrize(
    ("version", "message"),
    [
        ("2", "requirer speaks compute-jobs version 2, this provider 1"),
        (None, TOO_OLD),
    ],
)
def test_provider_refuses_a_requirer_version_it_does_not_speak(
    ctx: testing.Context,
    library: Library,
    monkeypatch: pytest.MonkeyPatch,
    version: str | None,
    message: str,
) -> None:
    ledger = FakeLedger().install(monkeypatch, library)
    relation = testing.Relation(
        "compute-jobs", remote_app_name="portal", remote_app_data=requirer_data(REQUESTS, version)
    )
    out = ctx.run(
        ctx.on.relation_changed(relation), testing.State(leader=True, relations={relation})
    )
    databag = out.get_relation(relation.id).local_app_data
    assert databag["version"] == "1"
    # Read before the request fields: "typo" is refused for the version, not "unknown field(s)".
    published = jobs_of(databag)
    assert {k: v["error"] for k, v in published.items()} == {"sweep": message, "typo": message}
    assert ledger.calls == []
    # A LIBPATCH 1 requirer reads each entry as a report: it hears request_rejected.
    assert all(JobReport.from_dict(v).error == message for v in published.values())


def test_a_version_refusal_is_undone_once_the_requirer_speaks_it(
    ctx: testing.Context, library: Library, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = FakeLedger().install(monkeypatch, library)
    running = {"host": UNIT0, "job": "j-7", "results-dir": "/r/j-7"}
    refused = {"sweep": {"error": TOO_OLD, "refused-version": True}}
    refused["older"] = {**running, "error": TOO_OLD, "refused-version": True}
    requests = {"sweep": {"command": "echo hi"}, "older": {"command": "echo older"}}
    relation = testing.Relation(
        "compute-jobs",
        remote_app_name="portal",
        remote_app_data=requirer_data(requests),  # the upgraded library announced "1"
        local_app_data={"version": "1", "jobs": json.dumps(refused)},
    )
    out = ctx.run(
        ctx.on.relation_changed(relation), testing.State(leader=True, relations={relation})
    )
    published = jobs_of(out.get_relation(relation.id).local_app_data)
    assert published["older"] == running  # followed again, not relaunched
    assert published["sweep"]["job"] == "j-1"
    assert ledger.launched() == ["echo hi"]


def test_requirer_refuses_a_provider_version_it_does_not_speak(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assignment = {"host": UNIT0, "job": "j-1"}
    relation = testing.Relation(
        "compute-jobs",
        remote_app_name="container-compute",
        remote_app_data={"version": "2", "jobs": json.dumps({"sweep": assignment})},
        remote_units_data={0: {"version": "2", "jobs": "{}"}},
    )
    portal = testing.Context(PortalCharm, meta=REQUIRER_META, actions=REQUIRER_ACTIONS)
    state = testing.State(relations={relation})
    with caplog.at_level(logging.ERROR):
        with portal(portal.on.relation_changed(relation, remote_unit=0), state) as manager:
            manager.run()
            assert manager.charm.heard == []
            assert manager.charm.jobs.reports() == {}
            problem = manager.charm.jobs.version_error or ""
    assert problem.startswith("provider speaks compute-jobs version 2, this library 1")
    assert "charmcraft fetch-lib" in problem
    assert problem in caplog.text


def test_requirer_ignores_reports_of_a_unit_speaking_another_version(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assignment = {"host": UNIT0, "job": "j-1"}
    report = {**assignment, "state": "succeeded"}
    relation = testing.Relation(
        "compute-jobs",
        remote_app_name="container-compute",
        remote_app_data={"version": "1", "jobs": json.dumps({"sweep": assignment})},
        remote_units_data={0: {"version": "2", "jobs": json.dumps({"sweep": report})}},
    )
    portal = testing.Context(PortalCharm, meta=REQUIRER_META, actions=REQUIRER_ACTIONS)
    state = testing.State(relations={relation})
    with portal(portal.on.relation_changed(relation, remote_unit=0), state) as m:
        m.run()
        assert m.charm.heard == [("JobChangedEvent", "sweep", assignment)]
    assert f"unit {UNIT0} speaks version 2" in caplog.text


def test_the_requirer_leader_announces_its_version_when_the_provider_answers() -> None:
    relation = testing.Relation(
        "compute-jobs",
        remote_app_name="container-compute",
        local_app_data={"requests": json.dumps({"sweep": {"command": "x"}})},
        remote_app_data={"version": "1", "jobs": json.dumps({"sweep": {"error": TOO_OLD}})},
    )
    portal = testing.Context(PortalCharm, meta=REQUIRER_META, actions=REQUIRER_ACTIONS)
    out = portal.run(
        portal.on.relation_changed(relation), testing.State(leader=True, relations={relation})
    )
    assert out.get_relation(relation.id).local_app_data["version"] == "1"


@pytest.mark.parametrize("method", ["publish", "assignments"])
def test_only_the_leader_publishes_assignments(
    ctx: testing.Context, library: Library, method: str
) -> None:
    relation = testing.Relation(
        "compute-jobs", remote_app_name="portal", remote_app_data=requirer_data(REQUESTS)
    )
    with ctx(ctx.on.update_status(), testing.State(relations={relation})) as manager:
        provides = manager.charm._jobs.provides
        served = provides.relations[0]
        with pytest.raises(RuntimeError, match="only the leader publishes"):
            if method == "publish":
                provides.publish(served, {"sweep": JobReport(error="no")})
            else:
                provides.assignments(served)


def test_an_upgraded_leader_takes_over_the_reports_it_published_as_libpatch_1(
    ctx: testing.Context, library: Library, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = FakeLedger().install(monkeypatch, library)
    ledger.jobs["j-1"] = {"state": "succeeded", "tasks": 2, "done": "0-1"}
    old = {"host": UNIT0, "job": "j-1", "state": "running", "tasks": 2, "results-dir": "/r/j-1"}
    relation = testing.Relation(
        "compute-jobs",
        remote_app_name="portal",
        remote_app_data=requirer_data({"sweep": {"command": "echo hi"}}),
        local_app_data={"jobs": json.dumps({"sweep": old})},  # no version: LIBPATCH 1
    )
    out = ctx.run(ctx.on.update_status(), testing.State(leader=True, relations={relation}))
    served = out.get_relation(relation.id)
    assert jobs_of(served.local_app_data) == {
        "sweep": {"host": UNIT0, "job": "j-1", "results-dir": "/r/j-1"}
    }
    assert jobs_of(served.local_unit_data)["sweep"]["state"] == "succeeded"
    assert ledger.launched() == []
