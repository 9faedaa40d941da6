"""The agent with Nova: cancel, crash and resume, the reaper, spread, and no password anywhere."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from container_compute import actions, identity
from container_compute.actions.logs import follow_logs
from container_compute.jobs.ledger import Ledger
from container_compute.jobs.model import TaskState
from container_compute.jobs.params import JobParams, LaunchJobParams, TaskLogsParams
from container_compute.owner import owner_id

from .conftest import FLAVOR, IMAGE, NovaHost
from .stack import OpenStackStack

SRC_DIR = Path(__file__).resolve().parents[2] / "src"


class Agent:
    """The real agent as a subprocess."""

    def __init__(self, state_dir: Path) -> None:
        env = {**os.environ, "PYTHONPATH": f"{SRC_DIR}:{os.environ.get('PYTHONPATH', '')}"}
        self.log = state_dir / "agent.log"
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "container_compute.agent",
                    "--state-dir",
                    str(state_dir),
                    "--poll",
                    "0.3",
                ],
                env=env,
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        self.process.wait(60)


@pytest.fixture
def agents() -> Iterator[list[Agent]]:
    started: list[Agent] = []
    yield started
    for agent in started:
        agent.stop()


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    end = time.time() + timeout
    while not predicate():
        if time.time() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.5)


def launch(nova_host: NovaHost, **params: Any) -> dict[str, Any]:
    return actions.run_action(
        "launch-job", LaunchJobParams(**params), nova_host.config, nova_host.state_dir
    )


def state(nova_host: NovaHost, job: str) -> dict[str, Any]:
    return actions.run_action(
        "job-status", JobParams(job=job), nova_host.config, nova_host.state_dir
    )


def servers(stack: OpenStackStack) -> list[Any]:
    return stack.nova_admin().servers.list(search_opts={"all_tenants": 1})


def running_attempts(nova_host: NovaHost, job: str) -> int:
    ledger = Ledger(nova_host.state_dir)
    try:
        return len(ledger.attempts(job, state="running"))
    finally:
        ledger.close()


def test_cancel_deletes_the_servers(
    stack: OpenStackStack, nova_host: NovaHost, agents: list[Agent]
) -> None:
    job = launch(nova_host, command="sleep 600", tasks=3)["job"]
    agents.append(Agent(nova_host.state_dir))
    wait_for(lambda: len(servers(stack)) == 3, 120, "3 servers")

    result = actions.run_action(
        "cancel-job", JobParams(job=job), nova_host.config, nova_host.state_dir
    )

    assert result["state"] == "cancelled"
    wait_for(lambda: state(nova_host, job)["counts"]["running"] == 0, 120, "attempts to end")
    wait_for(lambda: not servers(stack), 120, "no server left")


def test_agent_killed_mid_job_resumes_exactly_once(
    stack: OpenStackStack, nova_host: NovaHost, agents: list[Agent]
) -> None:
    command = "sleep 20; echo $TASK_INDEX > /results/i"
    job = launch(nova_host, command=command, tasks=6, parallelism=6)["job"]
    first = Agent(nova_host.state_dir)
    agents.append(first)
    wait_for(lambda: running_attempts(nova_host, job) == 6, 120, "6 running attempts")
    wait_for(
        lambda: sum(s.status == "ACTIVE" for s in servers(stack)) == 6, 120, "6 ACTIVE servers"
    )

    first.stop(signal.SIGKILL)
    agents.append(Agent(nova_host.state_dir))
    wait_for(lambda: state(nova_host, job)["state"] == "succeeded", 300, "the job to succeed")

    ledger = Ledger(nova_host.state_dir)
    try:
        attempts = ledger.attempts(job)
    finally:
        ledger.close()
    details = [(a.index, a.attempt, (a.outcome or {}).get("detail")) for a in attempts]
    log = (nova_host.state_dir / "agent.log").read_text()
    log = log[log.find("Traceback") :][:5000]
    assert sorted(a.index for a in attempts) == list(range(6)), (details, log)  # adopted
    job_dir = nova_host.state_dir / "results" / job
    for index in range(6):
        assert (job_dir / str(index) / "files" / "i").read_text() == f"{index}\n"
    assert len((job_dir / "joblog.tsv").read_text().splitlines()) == 7
    wait_for(lambda: not servers(stack), 120, "no server left")


def test_reaper_deletes_servers_of_no_live_job(stack: OpenStackStack, nova_host: NovaHost) -> None:
    session = identity.keystone_session(nova_host.credentials)
    from novaclient import client

    nova = client.Client("2.87", session=session)
    image = nova.glance.find_image(IMAGE)
    flavor = nova.flavors.find(name=FLAVOR)
    labels = {
        "container-compute.job": "orphan",
        "container-compute.task": "0",
        "container-compute.attempt": "1",
    }
    # Left by a crashed engine of this state dir: its owner's, so its reaper's.
    mine = {**labels, "container-compute.owner": owner_id(nova_host.state_dir)}
    nova.servers.create("cc-orphan-0-1", image, flavor, nics="none", meta=mine)
    # Another owner's (another unit on the same cloud project): never touched.
    theirs = {**labels, "container-compute.owner": "o0000feedbeef"}
    nova.servers.create("cc-orphan-0-2", image, flavor, nics="none", meta=theirs)
    nova.servers.create("not-ours", image, flavor, nics="none")

    reaped = actions.reap(nova_host.config, nova_host.state_dir)

    assert "cc-orphan-0-1" in reaped
    assert sorted(s.name for s in servers(stack)) == ["cc-orphan-0-2", "not-ours"]


def test_spread_puts_the_job_in_a_soft_anti_affinity_group(
    stack: OpenStackStack, nova_host: NovaHost, agents: list[Agent]
) -> None:
    job = launch(nova_host, command="sleep 15", tasks=2, spread=True)["job"]
    agents.append(Agent(nova_host.state_dir))
    wait_for(lambda: len(servers(stack)) == 2, 120, "2 servers")

    nova = stack.nova_admin()
    groups = [g for g in nova.server_groups.list(all_projects=True) if g.name == f"cc-{job}"]
    assert len(groups) == 1
    assert groups[0].policy == "soft-anti-affinity"
    assert sorted(groups[0].members) == sorted(s.id for s in servers(stack))
    wait_for(lambda: state(nova_host, job)["state"] == "succeeded", 180, "the job to succeed")

    # The job's group goes with the job (its agent deletes it), or at the next reap.
    wait_for(
        lambda: actions.reap(nova_host.config, nova_host.state_dir) is not None
        and not [g for g in nova.server_groups.list(all_projects=True) if g.name == f"cc-{job}"],
        60,
        "the job's server group to go",
    )


def test_the_password_is_in_no_output_file_or_record(nova_host: NovaHost) -> None:
    secret = nova_host.password.encode()
    private = {identity.CREDENTIALS_FILE_NAME, identity.CLOUDS_FILE_NAME}
    checked = 0
    for path in nova_host.state_dir.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.name not in private:
            assert secret not in path.read_bytes(), path
            checked += 1
    assert checked > 10
    for name in private:
        assert (nova_host.state_dir / name).stat().st_mode & 0o077 == 0


def test_a_running_tasks_output_is_followed_live(
    stack: OpenStackStack, nova_host: NovaHost, agents: list[Agent]
) -> None:
    command = "echo first; echo oops >&2; sleep 25; echo second"
    job = launch(nova_host, command=command, tasks=1)["job"]
    agents.append(Agent(nova_host.state_dir))
    params = TaskLogsParams(job=job, task=0)
    seen: dict[str, Any] = {}

    def shows_first() -> bool:
        seen.update(actions.run_action("task-logs", params, nova_host.config, nova_host.state_dir))
        return seen["state"] == "running" and "first" in seen["output"]

    wait_for(shows_first, 120, "the first line while the task runs")
    assert seen["output"] == "first\n" and "16 KiB" in seen["note"], seen
    said: list[str] = []
    written: list[bytes] = []
    final = follow_logs(
        nova_host.config,
        nova_host.state_dir,
        job,
        0,
        "stdout",
        written.append,
        said.append,
        follow=True,
        tail=-1,
    )
    assert final == TaskState.SUCCEEDED, said
    assert b"".join(written) == b"first\nsecond\n"  # live, then the rest from the results
    errors = actions.run_action(
        "task-logs",
        TaskLogsParams(job=job, task=0, stderr=True),
        nova_host.config,
        nova_host.state_dir,
    )
    assert errors["output"] == "oops\n" and errors["state"] == "succeeded"
    wait_for(lambda: not servers(stack), 120, "no server left")
