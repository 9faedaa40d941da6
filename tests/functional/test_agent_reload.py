"""A running agent takes a new config (as juju config or configure-host saves it) mid-job.

The real agent process, the real LXD: the limit on running workers is lowered and raised while
a job runs; the concurrency follows, and every task runs exactly once.
"""

import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from container_compute import actions, agent, host
from container_compute.config import HostConfig
from container_compute.jobs.ledger import Ledger
from container_compute.jobs.params import JobParams

from .conftest import no_workers_left
from .test_jobs_e2e import Agent, agents, launch, status, wait_for  # noqa: F401 (fixture)

pytestmark = [pytest.mark.functional, pytest.mark.usefixtures("fast_engine")]

TASK_SECONDS = 4


class RunningSampler:
    """Sample the job's running count every 0.2 s in the background, with the time."""

    def __init__(self, config: HostConfig, state_dir: Path, job_id: str) -> None:
        self.samples: list[tuple[float, int]] = []
        self._args = (config, state_dir, job_id)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            counts = status(*self._args)["counts"]
            self.samples.append((time.monotonic(), int(counts["running"])))
            self._stop.wait(0.2)

    def most_since(self, since: float) -> int:
        return max((n for t, n in self.samples if t >= since), default=0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture
def sampler_box() -> Iterator[list[RunningSampler]]:
    box: list[RunningSampler] = []
    yield box
    for sampler in box:
        sampler.stop()


@pytest.fixture
def cancel_on_failure(
    agents: list[Agent],  # noqa: F811 (the fixture: stopped after this one's teardown)
) -> Iterator[list[tuple[HostConfig, Path, str]]]:
    """Jobs to cancel at the end, so that a failed test leaves no worker behind."""
    jobs: list[tuple[HostConfig, Path, str]] = []
    yield jobs
    for agent_process in agents:
        agent_process.stop()
    for config, state_dir, job in jobs:
        if status(config, state_dir, job)["state"] == "running":
            actions.run_action("cancel-job", JobParams(job=job), config, state_dir)


def save_limit(config: HostConfig, state_dir: Path, limit: int) -> str:
    """Save the config with a new limit (as the charm and configure-host do); await the agent."""
    assert host.save_config(dataclasses.replace(config, max_parallel_workers=limit), state_dir)
    return agent.await_current(state_dir, timeout=60)


def test_lowering_and_raising_the_limit_mid_job_is_followed(
    configured_host: HostConfig,
    state_dir: Path,
    agents: list[Agent],  # noqa: F811 (the fixture)
    sampler_box: list[RunningSampler],
    cancel_on_failure: list[tuple[HostConfig, Path, str]],
) -> None:
    config = dataclasses.replace(configured_host, max_parallel_workers=1)
    host.save_config(config, state_dir)
    agents.append(Agent(state_dir))
    wait_for(lambda: agent.agent_alive(state_dir), 30, "the agent's first heartbeat")
    pid = agents[0].process.pid
    # A fresh worker per task: what is followed here is the limit, not the sandboxes.
    sleep = f"sleep {TASK_SECONDS}"
    job = launch(config, state_dir, command=sleep, tasks=10, isolation="container")["job"]
    cancel_on_failure.append((config, state_dir, job))
    sampler = RunningSampler(config, state_dir, job)
    sampler_box.append(sampler)

    # Limit 1: one task at a time.
    wait_for(lambda: sampler.most_since(0) >= 1, 60, "the first task to run")
    time.sleep(TASK_SECONDS + 1)
    assert sampler.most_since(0) == 1

    # Raised to 3: the agent takes it within the call, adopts the running task, runs 3.
    assert save_limit(config, state_dir, 3) == "reloaded"
    raised = time.monotonic()
    wait_for(lambda: sampler.most_since(raised) == 3, 60, "3 tasks running at once")

    # Lowered to 1: no new task starts until one is left, then never more than one again.
    assert save_limit(config, state_dir, 1) == "reloaded"
    lowered = time.monotonic()
    wait_for(
        lambda: any(t >= lowered and n <= 1 for t, n in sampler.samples),
        60,
        "the running tasks to drain to the new limit",
    )
    drained = next(t for t, n in sampler.samples if t >= lowered and n <= 1)
    wait_for(lambda: status(config, state_dir, job)["state"] != "running", 120, "the job's end")
    sampler.stop()
    assert sampler.most_since(drained) <= 1, sampler.samples

    final = status(config, state_dir, job)
    assert final["state"] == "succeeded", json.dumps(final)
    ledger = Ledger(state_dir)
    try:
        indexes = sorted(record.index for record in ledger.attempts(job))
    finally:
        ledger.close()
    assert indexes == list(range(10))  # adopted across two reloads: none lost, none run twice
    assert agents[0].process.poll() is None and agents[0].process.pid == pid
    log = agents[0].log.read_text()
    assert log.count("executing the agent again") == 2, log[-3000:]
    assert no_workers_left(configured_host)
