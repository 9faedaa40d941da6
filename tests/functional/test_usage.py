"""Each attempt's CPU, peak memory and OOM kills, as sacct reports them, on the REAL LXD daemon.

These machines have hybrid cgroups (controllers on v1, none delegated to workers): a sandboxed
task's CPU comes from its own cgroup2 ``cpu.stat`` and its peak from its sandbox's rusage; a
fresh worker's both from the worker's cgroups seen from the host.
"""

from pathlib import Path
from typing import Any

import pytest

from container_compute import actions
from container_compute.config import HostConfig
from container_compute.jobs.params import GatherResultsParams, JobParams, LaunchJobParams

from .conftest import no_task_limits
from .test_sandbox import outcomes

pytestmark = [pytest.mark.functional, pytest.mark.usefixtures("fast_engine")]

MIB = 1 << 20
# Burns 2.1 s of its own CPU (read from its /proc stat: user + system ticks), then holds
# 384 MiB at once (tail keeps the one endless line whole).
BURN_AND_HOLD = (
    "while :; do read -r s < /proc/$$/stat; set -- ${s##*) };"
    " [ $(( ${12} + ${13} )) -ge 210 ] && break; done; "
    "head -c 402653184 /dev/zero | tail -n 1 | wc -c"
)


def run(config: HostConfig, state_dir: Path, isolation: str, command: str) -> dict[str, Any]:
    launched = actions.run_action(
        "launch-job",
        LaunchJobParams(command=command, tasks=1, isolation=isolation, memory="1GiB", wait=True),
        config,
        state_dir,
    )
    return actions.run_action("job-status", JobParams(job=launched["job"]), config, state_dir)


@pytest.mark.parametrize(
    ("isolation", "sources"),
    [
        pytest.param("sandbox", {"cpu": "task-cgroup", "memory": "sandbox-rusage"}, id="sandbox"),
        pytest.param(
            "container", {"cpu": "worker-cgroup", "memory": "worker-cgroup"}, id="container"
        ),
    ],
)
def test_a_tasks_cpu_and_memory_are_recorded(
    configured_host: HostConfig, state_dir: Path, isolation: str, sources: dict[str, str]
) -> None:
    report = run(configured_host, state_dir, isolation, BURN_AND_HOLD)

    assert report["counts"]["succeeded"] == 1, report
    (record,) = outcomes(state_dir, report["job"])
    if isolation == "sandbox" and not no_task_limits():  # cgroup v2: the task cgroup's peak
        sources = {**sources, "memory": "task-cgroup"}
    assert record["usage-source"] == sources
    cpu = record["cpu-user-seconds"] + record["cpu-system-seconds"]
    assert cpu >= 1.8, record
    assert record["memory-peak-bytes"] >= 384 * MIB, record
    assert record["oom-kills"] == 0
    assert record["wall-seconds"] >= cpu / 2  # two cores at most here
    usage = report["usage"]  # job-status: the totals, and the CPU efficiency as seff's
    assert usage["attempts"] == 1 and usage["cpu-user-seconds"] == round(
        record["cpu-user-seconds"], 3
    )
    assert usage["memory-peak-bytes"] == record["memory-peak-bytes"]
    assert usage["cpu-efficiency"].endswith("%")
    tsv = (state_dir / "results" / report["job"] / "usage.tsv").read_text().splitlines()
    assert len(tsv) == 2 and tsv[1].split("\t")[-2:] == [sources["cpu"], sources["memory"]]
    gathered = actions.run_action(
        "gather-results", GatherResultsParams(job=report["job"]), configured_host, state_dir
    )
    task = gathered["summary"]["0"]
    assert task["cpu-user-seconds"] == record["cpu-user-seconds"]
    assert task["memory-peak-bytes"] == record["memory-peak-bytes"]
    assert task["usage-source"] == sources and gathered["usage"].endswith("usage.tsv")
