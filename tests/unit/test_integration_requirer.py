"""The integration tests' requirer charm, driven here (it runs only on a Juju controller)."""

import dataclasses
import importlib.util
import json
from pathlib import Path
from typing import Any

import ops
import pytest
import yaml
from ops import testing

SOURCE = Path(__file__).resolve().parents[1] / "integration" / "requirer"
RECIPE = yaml.safe_load((SOURCE / "charmcraft.yaml").read_text())
META = {key: RECIPE[key] for key in ("name", "requires")}


def requirer_charm() -> type[ops.CharmBase]:
    spec = importlib.util.spec_from_file_location("requirer_charm", SOURCE / "src" / "charm.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.RequirerCharm


@pytest.fixture
def ctx() -> testing.Context[ops.CharmBase]:
    return testing.Context(requirer_charm(), meta=META, actions=RECIPE["actions"])


def requests(relation: testing.RelationBase) -> dict[str, Any]:
    return json.loads(relation.local_app_data["requests"])


def test_it_asks_for_a_valid_and_an_invalid_job_once(ctx: testing.Context[ops.CharmBase]) -> None:
    relation = testing.Relation("compute-jobs", remote_units_data={0: {}, 1: {}})
    state = testing.State(leader=True, relations={relation})
    out = ctx.run(ctx.on.relation_joined(relation, remote_unit=0), state)
    asked = requests(out.get_relation(relation.id))
    assert sorted(asked) == ["broken", "squares"]
    relation = out.get_relation(relation.id)
    again = ctx.run(ctx.on.relation_joined(relation, remote_unit=1), out)
    assert requests(again.get_relation(relation.id)) == asked
    assert again.unit_status == testing.WaitingStatus("0 of 2 reported")


def test_the_submit_action_asks_for_one_more(ctx: testing.Context[ops.CharmBase]) -> None:
    relation = testing.Relation("compute-jobs")
    state = testing.State(leader=True, relations={relation})
    params = {"id": "long", "command": "sleep 3600", "tasks": 2}
    out = ctx.run(ctx.on.action("submit", params=params), state)
    assert requests(out.get_relation(relation.id))["long"] == {
        "command": "sleep 3600",
        "tasks": 2,
    }
    with pytest.raises(testing.ActionFailed, match="leader"):
        ctx.run(ctx.on.action("submit", params=params), testing.State(relations={relation}))


def test_it_is_active_once_every_request_is_finished(ctx: testing.Context[ops.CharmBase]) -> None:
    asked = {"squares": {"command": "x", "tasks": 3}, "long": {"command": "sleep 1"}}
    jobs = {
        "squares": {"host": "container-compute/0", "job": "j1"},
        "long": {"state": "lost", "host": "container-compute/0", "job": "j2", "reason": "gone"},
    }
    relation = testing.Relation(
        "compute-jobs",
        remote_app_name="container-compute",
        local_app_data={"version": "1", "requests": json.dumps(asked)},
        remote_app_data={"version": "1", "jobs": json.dumps(jobs)},
        remote_units_data={0: {}},
    )
    state = testing.State(leader=True, relations={relation})
    out = ctx.run(ctx.on.update_status(), state)
    assert out.unit_status == testing.WaitingStatus("1 of 2 reported")

    report = {"job": "j1", "state": "succeeded", "tasks": 3, "host": "container-compute/0"}
    unit_data = {"version": "1", "jobs": json.dumps({"squares": report})}
    relation = dataclasses.replace(relation, remote_units_data={0: unit_data})
    out = ctx.run(ctx.on.update_status(), testing.State(leader=True, relations={relation}))
    assert out.unit_status == testing.ActiveStatus("all 2 jobs reported")
    ctx.run(ctx.on.action("reports"), testing.State(leader=True, relations={relation}))
    assert ctx.action_results is not None
    heard = json.loads(ctx.action_results["reports"])
    assert heard["long"]["state"] == "lost" and heard["squares"]["state"] == "succeeded"
