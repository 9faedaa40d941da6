"""The packed charm on a real controller: deploy on a principal, configure, run jobs, refresh.

container-compute is a subordinate: it rides on an ``ubuntu`` principal through ``juju-info``.
The tests run in order on one model: deploy, a bad option, a job through the actions, a
config change the running agent follows, a refresh under a running job.
"""

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from pytest_operator.plugin import OpsTest

from .helpers import (
    APP,
    PRINCIPAL,
    SQUARE,
    build_worker_images,
    counts,
    deploy_on_principal,
    juju_status,
    model_of,
    poll,
    run_action,
    unit,
)

UNIT = f"{APP}/0"
SLEEPERS = 12  # tasks of the config-change job: enough to outlast two agent restarts
SLEEP_SECONDS = 20
REFRESH_SLEEP_SECONDS = 120  # two rounds of 2 tasks: longer than a refresh takes


async def job_status(ops_test: OpsTest, job: str) -> dict[str, Any]:
    return await run_action(ops_test, UNIT, "job-status", job=job)


async def set_max_parallel_workers(ops_test: OpsTest, value: int) -> None:
    app = model_of(ops_test).applications[APP]
    await app.set_config({"max-parallel-workers": str(value)})
    await model_of(ops_test).wait_for_idle(apps=[APP], status="active", timeout=600)


def assert_one_attempt_each(gathered: dict[str, Any], tasks: int) -> None:
    """Every task ran once: no restart or refresh ran a task twice."""
    summary = gathered["summary"]
    assert sorted(summary, key=int) == [str(i) for i in range(tasks)]
    for index, task in summary.items():
        assert task["state"] == "succeeded", (index, task)
        assert task["attempts"] == "1", (index, task)


@pytest.mark.abort_on_fail
async def test_deploy_configures_the_host(ops_test: OpsTest, charm_path: Path) -> None:
    await deploy_on_principal(ops_test, charm_path)
    deployed = unit(ops_test, UNIT)
    assert "dir pool container-compute" in deployed.workload_status_message
    assert deployed.workload_version  # LXD's version
    status = await juju_status(ops_test)
    assert status["applications"][APP]["subordinate-to"] == [PRINCIPAL]


async def test_invalid_config_blocks_naming_the_option(ops_test: OpsTest) -> None:
    app = model_of(ops_test).applications[APP]
    await app.set_config({"storage-driver": "ext4"})
    await model_of(ops_test).wait_for_idle(apps=[APP], status="blocked", timeout=600)
    assert "storage-driver" in unit(ops_test, UNIT).workload_status_message
    await app.set_config({"storage-driver": "dir"})
    await model_of(ops_test).wait_for_idle(apps=[APP], status="active", timeout=600)


@pytest.mark.abort_on_fail
async def test_a_job_through_the_actions(ops_test: OpsTest) -> None:
    await build_worker_images(ops_test)
    launched = await run_action(ops_test, UNIT, "launch-job", command=SQUARE, tasks=4)
    assert launched["state"] == "queued"
    waited = await run_action(ops_test, UNIT, "wait-job", job=launched["job"])
    assert waited["state"] == "succeeded"
    assert waited["completed-indexes"] == "0-3"
    status = await job_status(ops_test, launched["job"])
    assert status["state"] == "succeeded"
    assert counts(status)["succeeded"] == 4
    gathered = await run_action(ops_test, UNIT, "gather-results", job=launched["job"])
    assert_one_attempt_each(gathered, 4)
    results_dir = gathered["results-dir"]
    for index in range(4):
        code, out, err = await ops_test.juju(
            "ssh", UNIT, "sudo", "cat", f"{results_dir}/{index}/files/square"
        )
        assert code == 0, err
        assert out.strip() == str(index * index)


async def test_a_config_change_reaches_the_running_agent(ops_test: OpsTest) -> None:
    """max-parallel-workers 1 -> 3 -> 1 under a running job: the agent follows each change."""
    code, out, err = await ops_test.juju("ssh", UNIT, "nproc")
    assert code == 0, err
    widest = min(3, 2 * int(out.strip()))  # parallelism 0: twice the CPUs, at most the option
    await set_max_parallel_workers(ops_test, 1)
    launched = await run_action(
        ops_test,
        UNIT,
        "launch-job",
        command=f"sleep {SLEEP_SECONDS}",
        tasks=SLEEPERS,
        parallelism=0,
        name="follows-config",
    )
    job = launched["job"]
    samples: list[tuple[float, dict[str, int]]] = []

    async def sample() -> dict[str, int]:
        now = counts(await job_status(ops_test, job))
        samples.append((time.monotonic(), now))
        assert now["running"] <= 3, f"more than max-parallel-workers=3 running: {samples}"
        return now

    await poll(sample, lambda c: c["running"] == 1, 300, "the first task running")
    for _ in range(3):  # one at a time while the option says 1
        assert (await sample())["running"] <= 1, samples

    await set_max_parallel_workers(ops_test, 3)
    await poll(sample, lambda c: c["running"] >= widest, 300, f"{widest} tasks running")

    await set_max_parallel_workers(ops_test, 1)
    lowered = await poll(
        sample, lambda c: c["running"] <= 1, 300, "back to one task running at a time"
    )
    assert lowered["pending"] > 0, f"the job ran out before the lower limit showed: {samples}"
    while (now := await sample())["pending"] > 0:
        assert now["running"] <= 1, samples
        await asyncio.sleep(2)

    waited = await run_action(ops_test, UNIT, "wait-job", job=job)
    assert waited["state"] == "succeeded", waited
    gathered = await run_action(ops_test, UNIT, "gather-results", job=job)
    assert_one_attempt_each(gathered, SLEEPERS)
    await model_of(ops_test).applications[APP].reset_config(["max-parallel-workers"])
    await model_of(ops_test).wait_for_idle(apps=[APP], status="active", timeout=600)


async def test_a_refresh_leaves_a_running_job_to_finish(
    ops_test: OpsTest, charm_path: Path
) -> None:
    """`juju refresh --path` the same charm under a job: it succeeds, no task runs twice."""
    launched = await run_action(
        ops_test,
        UNIT,
        "launch-job",
        command=f"sleep {REFRESH_SLEEP_SECONDS}; echo $TASK_INDEX > /results/index",
        tasks=4,
        parallelism=2,
        name="spans-refresh",
    )
    job = launched["job"]
    await poll(
        lambda: job_status(ops_test, job),
        lambda s: counts(s)["running"] >= 1,
        300,
        "the job running",
    )
    revision = (await juju_status(ops_test))["applications"][APP]["charm-rev"]

    code, out, err = await ops_test.juju("refresh", APP, "--path", str(charm_path))
    assert code == 0, (out, err)
    await poll(
        lambda: juju_status(ops_test),
        lambda s: s["applications"][APP]["charm-rev"] != revision,
        600,
        "the refreshed charm",
    )
    await model_of(ops_test).wait_for_idle(apps=[APP], status="active", timeout=900)

    after = await job_status(ops_test, job)
    assert after["state"] == "running", f"the job did not span the refresh: {after}"
    waited = await run_action(ops_test, UNIT, "wait-job", job=job)
    assert waited["state"] == "succeeded", waited
    assert waited["completed-indexes"] == "0-3"
    gathered = await run_action(ops_test, UNIT, "gather-results", job=job)
    assert_one_attempt_each(gathered, 4)
