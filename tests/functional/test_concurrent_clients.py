"""Several clients of one state directory at once, and its privacy, on the REAL LXD daemon.

Clients are real processes: ``container-compute launch-job --wait`` (the CLI) and the agent.
Whoever drives the jobs, every job ends exactly when its last task does, each task's result
is recorded once, and nothing under the state directory is readable by another local user.
"""

import json
import os
import secrets
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from container_compute.config import HostConfig
from container_compute.jobs import results, runner
from container_compute.jobs.ledger import Ledger

from .test_jobs_e2e import SRC_DIR, Agent, no_workers_left, worker_names

pytestmark = pytest.mark.functional

RUNUSER = "/usr/sbin/runuser"
CAT = "/bin/cat"
LS = "/bin/ls"
QUICK = "echo $TASK_INDEX > /results/i; echo out-$TASK_INDEX"
CLIENT_SECONDS = 600


@pytest.fixture
def agents() -> Iterator[list[Agent]]:
    """Agents a test starts; stopped at its end."""
    started: list[Agent] = []
    yield started
    for agent in started:
        agent.stop()


class Client:
    """``container-compute launch-job --wait --format json`` as a process of its own."""

    def __init__(self, state_dir: Path, tasks: int, command: str, *extra: str) -> None:
        """Start the client: ``tasks`` tasks of ``command``, ``extra`` flags."""
        env = {**os.environ, "PYTHONPATH": f"{SRC_DIR}:{os.environ.get('PYTHONPATH', '')}"}
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "container_compute.cli",
                "launch-job",
                "--state-dir",
                str(state_dir),
                "--tasks",
                str(tasks),
                "--wait",
                "--wait-timeout",
                "15m",
                "--format",
                "json",
                *extra,
                "--",
                "sh",
                "-c",
                command,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self.seconds = 0.0

    def result(self) -> dict[str, Any]:
        """Wait (bounded) for the client to exit 0; return its JSON result."""
        try:
            out, err = self.process.communicate(timeout=CLIENT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, err = self.process.communicate()
            pytest.fail(f"the client did not end in {CLIENT_SECONDS} s: {err[-3000:]}")
        self.seconds = time.monotonic() - self.started
        assert self.process.returncode == 0, err[-3000:]
        return json.loads(out)


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    end = time.time() + timeout
    while not predicate():
        if time.time() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def assert_recorded_once(state_dir: Path, result: dict[str, Any], tasks: int) -> None:
    """The job succeeded; every task's result and joblog row exists exactly once."""
    assert result["state"] == "succeeded", result
    assert result["completed-indexes"] == f"0-{tasks - 1}", result
    job_id = result["job"]
    ledger = Ledger(state_dir)
    try:
        job = ledger.job(job_id)
        assert job is not None and job.state.value == "succeeded"
        succeeded = [a.index for a in ledger.attempts(job_id) if a.state == "succeeded"]
        assert sorted(succeeded) == list(range(tasks))
        assert ledger.attempts(job_id, state="running") == []
    finally:
        ledger.close()
    job_dir = results.job_dir(state_dir, job_id)
    assert sorted(p.name for p in job_dir.iterdir()) == sorted(
        [*(str(i) for i in range(tasks)), "joblog.tsv", "usage.tsv"]
    )
    for index in range(tasks):
        task_dir = results.task_dir(state_dir, job_id, index)
        assert (task_dir / "files" / "i").read_text() == f"{index}\n"
        assert (task_dir / "stdout").read_text() == f"out-{index}\n"
    rows = results.joblog_path(state_dir, job_id).read_text().splitlines()[1:]
    assert sorted(int(row.split("\t")[0]) for row in rows) == list(range(1, tasks + 1))


def test_two_waiting_clients_both_finish(configured_host: HostConfig, state_dir: Path) -> None:
    started = time.monotonic()
    first = Client(state_dir, 4, f"sleep 2; {QUICK}")
    wait_for(lambda: worker_names(configured_host), 120, "the first client's workers")
    second = Client(state_dir, 24, QUICK)
    first_result, second_result = first.result(), second.result()
    took = time.monotonic() - started
    print(
        f"\ntwo clients (4 + 24 tasks): first done in {first.seconds:.1f} s, "
        f"second in {second.seconds:.1f} s, both in {took:.1f} s"
    )
    assert_recorded_once(state_dir, first_result, 4)
    assert_recorded_once(state_dir, second_result, 24)
    assert no_workers_left(configured_host, timeout=30)


def test_two_clients_and_the_agent_started_and_stopped_midway(
    configured_host: HostConfig, state_dir: Path, agents: list[Agent]
) -> None:
    first = Client(state_dir, 4, f"sleep 3; {QUICK}")
    wait_for(lambda: worker_names(configured_host), 120, "the first client's workers")
    second = Client(state_dir, 24, f"sleep 3; {QUICK}")
    ledger = Ledger(state_dir)
    wait_for(lambda: len(ledger.jobs()) == 2, 60, "the second job")
    second_id = next(job.id for job in ledger.jobs() if job.task_count == 24)
    agent = Agent(state_dir)  # it waits for the engine lock
    agents.append(agent)
    first_result = first.result()  # its client has left: the agent or the second client drives

    def second_done() -> bool:
        job = ledger.job(second_id)
        return job is not None and job.state.finished

    wait_for(lambda: runner.agent_alive(state_dir) or second_done(), 300, "a new engine")
    agent_drove = runner.agent_alive(state_dir) and not second_done()
    if agent_drove:  # stop it mid-job: the waiting client takes over what it leaves running
        wait_for(lambda: ledger.attempts(second_id, state="running"), 60, "running attempts")
        left = ledger.task_counts(second_id)
        assert agent.stop() == 0
        print(f"\nthe agent was stopped with the second job at {left}")
    second_result = second.result()
    drivers = "the agent, then the second client" if agent_drove else "the second client"
    print(f"after the first client: {drivers}")
    assert_recorded_once(state_dir, first_result, 4)
    assert_recorded_once(state_dir, second_result, 24)
    later = Agent(state_dir)  # a client following the agent's engine
    agents.append(later)
    wait_for(lambda: runner.agent_alive(state_dir), 60, later.log.read_text()[-3000:])
    third = Client(state_dir, 3, QUICK)
    assert_recorded_once(state_dir, third.result(), 3)
    assert no_workers_left(configured_host, timeout=30)
    for each in agents:
        assert "Traceback" not in each.log.read_text(), each.log.read_text()[-3000:]
    ledger.close()


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as the user nobody; return the finished process (it may fail)."""
    return subprocess.run(
        [RUNUSER, "-u", "nobody", "--", *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


def test_nothing_under_the_state_dir_is_readable_by_another_user(
    configured_host: HostConfig, state_dir: Path
) -> None:
    assert as_nobody(CAT, "/etc/hostname").returncode == 0  # runuser works here
    state_dir.chmod(0o755)  # as older versions (and mkdir with umask 022) left it
    secret = f"cc-secret-{secrets.token_hex(16)}"
    reader = Ledger(state_dir)  # another client: the -wal and -shm files stay on disk
    client = Client(
        state_dir, 2, "echo $SECRET > /results/secret; echo $SECRET", "--env", f"SECRET={secret}"
    )
    result = client.result()
    assert result["state"] == "succeeded", result
    assert reader.job(result["job"]).params["env"] == ["SECRET=<redacted>"]  # type: ignore[union-attr]
    holding = []
    modes = {}
    for path in sorted([state_dir, *state_dir.rglob("*")]):
        mode = stat.S_IMODE(path.lstat().st_mode)
        modes[str(path.relative_to(state_dir))] = oct(mode)
        assert mode & 0o077 == 0, f"{path} is mode {oct(mode)}"
        if path.is_file() and secret.encode() in path.read_bytes():
            holding.append(path.relative_to(state_dir).as_posix())
    print(f"\nmodes under the state dir: {modes}")
    job = result["job"]
    assert sorted(holding) == sorted(
        f"results/{job}/{index}/{name}" for index in (0, 1) for name in ("files/secret", "stdout")
    )
    for name in ("ledger.sqlite3", "ledger.sqlite3-wal", "ledger.sqlite3-shm"):
        path = state_dir / name
        assert path.exists() and secret.encode() not in path.read_bytes(), name
    for name in ("ledger.sqlite3", "engine.lock", "host-config.json"):
        assert modes[name] == oct(0o600), name
    assert modes["."] == oct(0o700)
    for relative in [*holding, "ledger.sqlite3", "host-config.json"]:
        denied = as_nobody(CAT, str(state_dir / relative))
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, relative
        assert secret not in denied.stdout
    listing = as_nobody(LS, str(state_dir))
    assert listing.returncode != 0 and "Permission denied" in listing.stderr
    reader.close()
