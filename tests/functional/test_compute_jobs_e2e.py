"""A compute-jobs request from a requirer charm really runs on LXD, through the charm library.

The unit that launched it keeps reporting it after leadership moved to another unit.
"""

import dataclasses
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from ops import testing

import charm
from container_compute.config import HostConfig
from container_compute.jobs import runner

from ..unit.test_compute_jobs import REQUIRER_ACTIONS, REQUIRER_META, PortalCharm

pytestmark = pytest.mark.functional

SQUARE = "echo $((TASK_INDEX * TASK_INDEX)) > /results/square"


@pytest.fixture
def charm_state_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The charm's state directory, in /tmp for this test."""
    path = Path(tempfile.mkdtemp(prefix="cc-jobs-relation-"))
    monkeypatch.setattr(charm, "STATE_DIR", path)
    monkeypatch.setattr(runner, "engine_options", {"backoff_base": 0.5, "backoff_cap": 2.0})
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_requirers_request_runs_on_lxd_and_it_hears_the_end(
    configured_host: HostConfig, charm_state_dir: Path
) -> None:
    config = {
        "lxd-project": configured_host.lxd_project,
        "storage-pool": configured_host.storage_pool,
        "storage-driver": "dir",
        "worker-cpu": "",
        "worker-memory": "256MiB",
        "default-image": "busybox",
        "sysctl-tuning": False,
    }
    requests = {
        "squares": {"command": SQUARE, "tasks": 3},
        "broken": {"command": "x", "tasks": -2},
    }
    relation = testing.Relation(
        "compute-jobs",
        remote_app_name="portal",
        remote_app_data={"version": "1", "requests": json.dumps(requests)},
    )
    peers = testing.PeerRelation("cluster", peers_data={1: {}})
    provider = testing.Context(charm.ContainerComputeCharm)
    state = testing.State(leader=True, config=config, relations={relation, peers})

    state = provider.run(provider.on.relation_changed(relation), state)
    assigned = json.loads(state.get_relation(relation.id).local_app_data["jobs"])
    assert assigned["broken"] == {"error": "tasks: -2 is not between 0 and 100000"}
    assert assigned["squares"]["host"] == "container-compute/0"
    job_id = assigned["squares"]["job"]
    mine = json.loads(state.get_relation(relation.id).local_unit_data["jobs"])
    assert mine["squares"]["state"] in ("queued", "running")

    # Leadership moves to unit 1 while the job runs here; this unit still reports its job.
    state = dataclasses.replace(state, leader=False)
    engine = runner.open_engine(configured_host, charm_state_dir)
    assert engine.run(job_id=job_id, poll=0.2, until=None) is True
    engine.ledger.close()
    state = provider.run(provider.on.update_status(), state)
    provider_relation = state.get_relation(relation.id)
    report = json.loads(provider_relation.local_unit_data["jobs"])["squares"]
    assert report["state"] == "succeeded" and report["completed-indexes"] == "0-2"

    requirer = testing.Context(PortalCharm, meta=REQUIRER_META, actions=REQUIRER_ACTIONS)
    seen = testing.Relation(
        "compute-jobs",
        remote_app_name="container-compute",
        remote_app_data=dict(provider_relation.local_app_data),
        remote_units_data={0: dict(provider_relation.local_unit_data)},
    )
    with requirer(requirer.on.relation_changed(seen), testing.State(relations={seen})) as run:
        run.run()
        heard = {request: (kind, data) for kind, request, data in run.charm.heard}
    assert heard["broken"][0] == "RequestRejectedEvent"
    kind, data = heard["squares"]
    assert kind == "JobFinishedEvent"
    for index in range(3):
        square = Path(data["results-dir"]) / str(index) / "files" / "square"
        assert square.read_text() == f"{index * index}\n"
