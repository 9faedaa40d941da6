"""The packed charm on a real controller: deploy on a principal, configure, run a job.

container-compute is a subordinate: it rides on an ``ubuntu`` principal through ``juju-info``.
"""

from pathlib import Path

import pytest

APP = "container-compute"
PRINCIPAL = "host"
UNIT = f"{APP}/0"
SQUARE = "echo $((TASK_INDEX * TASK_INDEX)) > /results/square"


async def run_action(ops_test, action: str, **params: object) -> dict:
    """Run an action on the unit; return its results (fails the test when the action fails)."""
    unit = ops_test.model.units[UNIT]
    action_run = await unit.run_action(action, **params)
    action_run = await action_run.wait()
    assert action_run.status == "completed", action_run.results
    return action_run.results


@pytest.mark.abort_on_fail
async def test_deploy_configures_the_host(ops_test, charm_path: Path) -> None:
    await ops_test.model.deploy("ubuntu", application_name=PRINCIPAL, base="ubuntu@24.04")
    await ops_test.model.deploy(
        charm_path, application_name=APP, num_units=0, config={"storage-driver": "dir"}
    )
    await ops_test.model.integrate(f"{APP}:juju-info", f"{PRINCIPAL}:juju-info")
    await ops_test.model.wait_for_idle(apps=[PRINCIPAL, APP], status="active", timeout=1800)
    unit = ops_test.model.units[UNIT]
    assert "dir pool container-compute" in unit.workload_status_message
    assert unit.workload_version  # LXD's version


async def test_invalid_config_blocks_naming_the_option(ops_test) -> None:
    app = ops_test.model.applications[APP]
    await app.set_config({"storage-driver": "ext4"})
    await ops_test.model.wait_for_idle(apps=[APP], status="blocked", timeout=600)
    assert "storage-driver" in ops_test.model.units[UNIT].workload_status_message
    await app.set_config({"storage-driver": "dir"})
    await ops_test.model.wait_for_idle(apps=[APP], status="active", timeout=600)


async def test_a_job_through_the_actions(ops_test) -> None:
    image = await run_action(ops_test, "build-worker-image", source="busybox")
    assert image["alias"]
    launched = await run_action(ops_test, "launch-job", command=SQUARE, tasks=4, wait=True)
    assert launched["state"] == "succeeded"
    assert launched["completed-indexes"] == "0-3"
    status = await run_action(ops_test, "job-status", job=launched["job"])
    assert status["state"] == "succeeded"
    gathered = await run_action(ops_test, "gather-results", job=launched["job"])
    results_dir = gathered["results-dir"]
    for index in range(4):
        code, out, err = await ops_test.juju(
            "ssh", UNIT, "sudo", "cat", f"{results_dir}/{index}/files/square"
        )
        assert code == 0, err
        assert out.strip() == str(index * index)
