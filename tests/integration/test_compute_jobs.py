"""A small requirer charm asks container-compute for a job over ``compute-jobs``."""

import json
import shutil
from pathlib import Path

import pytest

from .conftest import ROOT
from .test_charm import APP, PRINCIPAL

REQUIRER = "portal"
REQUIRER_SOURCE = Path(__file__).with_name("requirer")


@pytest.mark.abort_on_fail
async def test_requirer_job_runs_and_is_reported(
    ops_test,
    charm_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    if APP not in ops_test.model.applications:
        await ops_test.model.deploy("ubuntu", application_name=PRINCIPAL, base="ubuntu@24.04")
        await ops_test.model.deploy(
            charm_path, application_name=APP, num_units=0, config={"storage-driver": "dir"}
        )
        await ops_test.model.integrate(f"{APP}:juju-info", f"{PRINCIPAL}:juju-info")
    source = tmp_path_factory.mktemp("requirer") / "requirer"
    shutil.copytree(REQUIRER_SOURCE, source)
    shutil.copytree(ROOT / "lib", source / "lib")  # the library as `charmcraft fetch-lib` would
    requirer = await ops_test.build_charm(source)
    await ops_test.model.deploy(requirer, application_name=REQUIRER, base="ubuntu@24.04")
    await ops_test.model.integrate(f"{APP}:compute-jobs", f"{REQUIRER}:compute-jobs")
    await ops_test.model.wait_for_idle(apps=[APP, REQUIRER], timeout=1800)
    await ops_test.model.wait_for_idle(apps=[REQUIRER], status="active", timeout=1800)

    unit = ops_test.model.applications[REQUIRER].units[0]
    action = await (await unit.run_action("reports")).wait()
    reports = json.loads(action.results["reports"])
    assert reports["squares"]["state"] == "succeeded"
    assert reports["squares"]["completed-indexes"] == "0-2"
    assert "tasks:" in reports["broken"]["error"]
