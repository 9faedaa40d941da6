"""A small requirer charm asks container-compute for jobs over ``compute-jobs``.

container-compute rides on two principal units, so that its leader can go: the requirer keeps
following the request the leader ran, and hears ``lost`` once that unit is gone; the new leader
serves the next request. Everything the requirer hears is read through its ``reports`` action.
"""

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from pytest_operator.plugin import OpsTest

from .helpers import (
    APP,
    BASE,
    PRINCIPAL,
    REQUIRER,
    ROOT,
    build_worker_images,
    deploy_on_principal,
    leader_of,
    locked_requirements,
    model_of,
    poll,
    principal_of,
    run_action,
    units_of,
)

REQUIRER_SOURCE = Path(__file__).with_name("requirer")
HOSTS = 2


async def reports(ops_test: OpsTest) -> dict[str, dict[str, Any]]:
    """Every report the requirer has heard, by request id."""
    (requirer,) = units_of(ops_test, REQUIRER)
    heard = await run_action(ops_test, requirer.name, "reports")
    return json.loads(heard["reports"])


async def submit(ops_test: OpsTest, request_id: str, command: str, tasks: int) -> None:
    (requirer,) = units_of(ops_test, REQUIRER)
    await run_action(
        ops_test, requirer.name, "submit", id=request_id, command=command, tasks=tasks
    )


@pytest.mark.abort_on_fail
async def test_requirer_job_runs_and_is_reported(
    ops_test: OpsTest,
    charm_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    await deploy_on_principal(ops_test, charm_path, hosts=HOSTS)
    await build_worker_images(ops_test)  # whichever unit leads runs the jobs on its host
    source = tmp_path_factory.mktemp("requirer") / "requirer"
    shutil.copytree(REQUIRER_SOURCE, source)
    shutil.copytree(ROOT / "lib", source / "lib")  # the library as `charmcraft fetch-lib` would
    (source / "requirements.txt").write_text(locked_requirements("ops"))
    requirer = await ops_test.build_charm(source)
    model = model_of(ops_test)
    await model.deploy(requirer, application_name=REQUIRER, base=BASE)
    await model.integrate(f"{APP}:compute-jobs", f"{REQUIRER}:compute-jobs")
    await model.wait_for_idle(apps=[APP, REQUIRER], timeout=1800)
    await model.wait_for_idle(apps=[REQUIRER], status="active", timeout=1800)

    heard = await reports(ops_test)
    assert heard["squares"]["state"] == "succeeded"
    assert heard["squares"]["completed-indexes"] == "0-2"
    assert heard["squares"]["host"] == await leader_of(ops_test, APP)
    assert "tasks:" in heard["broken"]["error"]


@pytest.mark.abort_on_fail
async def test_the_leaders_job_is_reported_lost_when_its_unit_goes(ops_test: OpsTest) -> None:
    leader = await leader_of(ops_test, APP)
    await submit(ops_test, "long", "sleep 3600", tasks=2)
    running = await poll(
        lambda: reports(ops_test),
        lambda r: r.get("long", {}).get("state") == "running",
        600,
        "the long job running",
    )
    assert running["long"]["host"] == leader
    job = running["long"]["job"]

    model = model_of(ops_test)
    await model.applications[PRINCIPAL].destroy_unit(await principal_of(ops_test, leader))
    await model.block_until(lambda: leader not in model.units, timeout=900)
    await model.wait_for_idle(apps=[APP], timeout=1800, wait_for_exact_units=HOSTS - 1)
    await model.wait_for_idle(apps=[REQUIRER], timeout=600)
    new_leader = await leader_of(ops_test, APP)
    assert new_leader != leader

    lost = await poll(
        lambda: reports(ops_test),
        lambda r: r["long"].get("state") == "lost",
        900,
        "the long job reported lost",
    )
    assert lost["long"]["job"] == job
    assert lost["long"]["host"] == leader
    assert lost["long"].get("reason"), lost["long"]
    assert lost["squares"]["state"] == "succeeded"  # what finished before stays as it was

    await submit(ops_test, "after", "echo $TASK_INDEX > /results/index", tasks=2)
    served = await poll(
        lambda: reports(ops_test),
        lambda r: r.get("after", {}).get("state") in ("succeeded", "failed"),
        900,
        "a request after the leader change",
    )
    assert served["after"]["state"] == "succeeded", served["after"]
    assert served["after"]["host"] == new_leader
    assert served["long"]["state"] == "lost"  # lost is final
