"""Jobs end to end on a real Nova (libvirt LXC) through the agent's engine."""

import time
from pathlib import Path
from typing import Any

import pytest

from container_compute import actions
from container_compute.jobs import runner
from container_compute.jobs.params import JobParams, LaunchJobParams

from .conftest import NovaHost
from .stack import OpenStackStack

SQUARE = "echo $((TASK_INDEX * TASK_INDEX)) > /results/square; echo out-$TASK_INDEX"


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries wait 0.5 s, 1 s, ... instead of 10 s, 20 s, ..."""
    monkeypatch.setattr(runner, "engine_options", {"backoff_base": 0.5, "backoff_cap": 2.0})


def launch(nova_host: NovaHost, **params: Any) -> dict[str, Any]:
    return actions.run_action(
        "launch-job", LaunchJobParams(**params), nova_host.config, nova_host.state_dir
    )


def our_servers(stack: OpenStackStack) -> list[str]:
    return sorted(s.name for s in stack.nova_admin().servers.list(search_opts={"all_tenants": 1}))


def test_sixteen_squares(stack: OpenStackStack, nova_host: NovaHost) -> None:
    started = time.monotonic()
    result = launch(
        nova_host, command=SQUARE, tasks=16, parallelism=16, wait=True, wait_timeout="10m"
    )
    elapsed = time.monotonic() - started
    print(f"\n16-task job on Nova: {elapsed:.1f}s")

    assert result["state"] == "succeeded", result
    job_dir = Path(result["results-dir"])
    for index in range(16):
        task = job_dir / str(index)
        assert (task / "files" / "square").read_text() == f"{index * index}\n"
        assert (task / "stdout").read_text() == f"out-{index}\n"
        assert (task / "exit_code").read_text() == "0\n"
    joblog = (job_dir / "joblog.tsv").read_text().splitlines()
    assert len(joblog) == 17
    status = actions.run_action(
        "job-status", JobParams(job=result["job"]), nova_host.config, nova_host.state_dir
    )
    assert status["completed-indexes"] == "0-15"
    assert our_servers(stack) == []
