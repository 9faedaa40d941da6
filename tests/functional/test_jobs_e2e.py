"""Jobs end to end on the REAL LXD daemon: actions, agent, CLI, crashes, daemon restart.

Every job runs in the run's throwaway project (``configured_host``); each test has its own
state directory. The agent runs as a real subprocess where crashes are part of the test.
"""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from container_compute import actions, cli
from container_compute.backends import WorkerSpec
from container_compute.backends.lxd import LXDBackend
from container_compute.config import HostConfig
from container_compute.jobs import results
from container_compute.jobs.ledger import Ledger
from container_compute.jobs.params import GatherResultsParams, JobParams, LaunchJobParams
from container_compute.owner import owner_id

from ..unit.test_cli import INVALID, INVALID_ON_THIS_HOST
from .conftest import lxd_daemon_down, lxd_daemon_process, no_workers_left, worker_names

pytestmark = [pytest.mark.functional, pytest.mark.usefixtures("fast_engine")]

SRC_DIR = Path(__file__).resolve().parents[2] / "src"
SQUARE = "echo $((TASK_INDEX * TASK_INDEX)) > /results/square; echo out-$TASK_INDEX"


def launch(config: HostConfig, state_dir: Path, **params: Any) -> dict[str, Any]:
    return actions.run_action("launch-job", LaunchJobParams(**params), config, state_dir)


def status(config: HostConfig, state_dir: Path, job_id: str) -> dict[str, Any]:
    return actions.run_action("job-status", JobParams(job=job_id), config, state_dir)


class Agent:
    """The real agent as a subprocess of this test."""

    def __init__(self, state_dir: Path, *extra: str) -> None:
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
                    "0.2",
                    *extra,
                ],
                env=env,
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(60)


@pytest.fixture
def agents() -> Iterator[list[Agent]]:
    started: list[Agent] = []
    yield started
    for agent in started:
        agent.stop()


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    end = time.time() + timeout
    while not predicate():
        if time.time() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_sixteen_squares_every_result_checked(
    configured_host: HostConfig, state_dir: Path
) -> None:
    result = launch(
        configured_host,
        state_dir,
        command=SQUARE,
        tasks=16,
        parallelism=4,
        wait=True,
        wait_timeout="10m",
    )
    assert result["state"] == "succeeded", json.dumps(result)[:3000]
    assert result["completed-indexes"] == "0-15" and result["failed-indexes"] == ""
    job_id = result["job"]
    for index in range(16):
        directory = results.task_dir(state_dir, job_id, index)
        assert (directory / "files" / "square").read_text() == f"{index * index}\n"
        assert (directory / "stdout").read_text() == f"out-{index}\n"
        assert (directory / "exit_code").read_text().strip() == "0"
    gathered = actions.run_action(
        "gather-results", GatherResultsParams(job=job_id, inline=True), configured_host, state_dir
    )
    assert gathered["inline"]["7"]["stdout"] == "out-7\n"
    joblog = Path(gathered["joblog"]).read_text().splitlines()
    assert len(joblog) == 17
    assert sorted(int(line.split("\t")[0]) for line in joblog[1:]) == list(range(1, 17))
    assert no_workers_left(configured_host, timeout=5)


def test_inputs_and_read_only_input_dir(configured_host: HostConfig, state_dir: Path) -> None:
    input_dir = Path(tempfile.mkdtemp(prefix="cc-e2e-input-", dir=state_dir))
    input_dir.chmod(0o755)
    (input_dir / "data.txt").write_text("shared data\n")
    (input_dir / "data.txt").chmod(0o644)
    command = (
        'cat /input/data.txt > /results/copy; echo "$TASK_INPUT" > /results/input; '
        "if touch /input/new 2>/dev/null; then echo writable; else echo readonly; fi"
    )
    result = launch(
        configured_host,
        state_dir,
        command=command,
        inputs="red\ngreen\nblue\n",
        input_dir=str(input_dir),
        wait=True,
        wait_timeout="5m",
    )
    assert result["state"] == "succeeded", json.dumps(result)[:3000]
    for index, colour in enumerate(("red", "green", "blue")):
        directory = results.task_dir(state_dir, result["job"], index)
        assert (directory / "files" / "input").read_text() == f"{colour}\n"
        assert (directory / "files" / "copy").read_text() == "shared data\n"
        assert (directory / "stdout").read_text() == "readonly\n"
    assert not (input_dir / "new").exists()


def charged_attempts(failure: dict[str, Any]) -> int:
    """Attempts that spent the task's retries (not those lost to LXD launch errors)."""
    return failure["attempts"] - failure.get("uncharged-attempts", 0)


def test_failing_timing_out_oom_and_retried_tasks(
    configured_host: HostConfig, state_dir: Path
) -> None:
    command = (
        "case $TASK_INDEX in "
        "0) echo bad >&2; exit 3;; "
        "1) sleep 60;; "
        "2) head -c 200m /dev/zero | tail > /dev/null;; "
        '3) [ "$TASK_ATTEMPT" -ge 2 ] || exit 9; echo ok > /results/ok;; '
        "esac"
    )
    result = launch(
        configured_host,
        state_dir,
        command=command,
        tasks=4,
        retries=1,
        timeout="4s",
        memory="32MiB",
        wait=True,
        wait_timeout="10m",
    )
    assert result["state"] == "failed", result
    assert result["completed-indexes"] == "3" and result["failed-indexes"] == "0-2"
    failures = result["failures"]
    assert (
        failures["0"]["reason"],
        failures["0"]["exit-code"],
        charged_attempts(failures["0"]),
    ) == (
        "exit-code",
        3,
        2,
    )
    assert (failures["1"]["reason"], charged_attempts(failures["1"])) == ("timeout", 2)
    assert (failures["2"]["reason"], charged_attempts(failures["2"])) == ("oom", 2)
    job_id = result["job"]
    assert (results.task_dir(state_dir, job_id, 0) / "stderr").read_text() == "bad\n"
    assert (results.task_dir(state_dir, job_id, 3) / "files" / "ok").read_text() == "ok\n"
    ledger = Ledger(state_dir)
    assert ledger.task(job_id, 3).attempts == 2  # type: ignore[union-attr]
    assert no_workers_left(configured_host, timeout=10)


def test_output_over_the_cap_and_symlink_not_followed(
    configured_host: HostConfig, state_dir: Path
) -> None:
    capped = dataclasses.replace(configured_host, task_results_cap="4KiB")
    command = (
        "head -c 20000 /dev/zero > /results/big; ln -s /etc/shadow /results/shadow; "
        "ln -s / /results/root; echo small > /results/small; echo hi"
    )
    result = launch(capped, state_dir, command=command, wait=True, wait_timeout="5m")
    assert result["state"] == "succeeded", json.dumps(result)[:3000]
    gathered = actions.run_action(
        "gather-results", GatherResultsParams(job=result["job"]), capped, state_dir
    )
    summary = gathered["summary"]["0"]
    assert summary["truncated"] is True and summary["bytes"] <= 4096
    files = Path(summary["dir"]) / "files"
    assert not (files / "shadow").exists() and not (files / "shadow").is_symlink()
    assert not (files / "root").exists() and not (files / "root").is_symlink()
    total = sum(
        p.stat().st_size
        for p in Path(summary["dir"]).rglob("*")
        if p.is_file() and p.name not in ("outcome.json", "exit_code")
    )
    assert total <= 4096


def test_cancel_stops_and_deletes_workers(
    configured_host: HostConfig, state_dir: Path, agents: list[Agent]
) -> None:
    result = launch(configured_host, state_dir, command="sleep 300", tasks=4, parallelism=2)
    job_id = result["job"]
    agents.append(Agent(state_dir))
    wait_for(
        lambda: status(configured_host, state_dir, job_id)["counts"]["running"] == 2,
        120,
        "two running tasks",
    )
    # Two running tasks' workers, and maybe already spares for the two waiting tasks.
    wait_for(lambda: len(worker_names(configured_host)) >= 2, 60, "two workers")
    cancelled = actions.run_action("cancel-job", JobParams(job=job_id), configured_host, state_dir)
    assert cancelled["state"] == "cancelled"
    assert no_workers_left(configured_host, timeout=60)
    final = status(configured_host, state_dir, job_id)
    assert final["state"] == "cancelled"
    assert final["counts"] == {"pending": 2, "running": 0, "succeeded": 0, "failed": 2}
    with pytest.raises(actions.ActionError, match="already finished"):
        actions.run_action("cancel-job", JobParams(job=job_id), configured_host, state_dir)


def test_reaper_deletes_workers_of_unknown_jobs(
    configured_host: HostConfig, state_dir: Path
) -> None:
    backend = LXDBackend(configured_host, owner=owner_id(state_dir))  # a crashed engine's
    spec = WorkerSpec(
        job_id="jdeadbeef", task_index=0, attempt=1, image="busybox", command="sleep 300", env={}
    )
    backend.start(spec)
    assert spec.worker_name in worker_names(configured_host)
    # The unknown job's template (isolated ids: one per job) goes with its worker.
    template = backend.templates.name_for(
        backend.templates.fingerprint({"alias": "busybox"}), "jdeadbeef"
    )
    assert template in worker_names(configured_host, templates=True)
    assert actions.reap(configured_host, state_dir) == [spec.worker_name, template]
    assert spec.worker_name not in worker_names(configured_host)
    assert template not in worker_names(configured_host, templates=True)
    assert actions.reap(configured_host, state_dir) == []


def test_agent_killed_mid_job_then_restarted_records_exactly_once(
    configured_host: HostConfig, state_dir: Path, agents: list[Agent]
) -> None:
    result = launch(
        configured_host,
        state_dir,
        tasks=6,
        parallelism=3,
        command="sleep 3; echo $TASK_INDEX > /results/i; echo done-$TASK_INDEX",
    )
    job_id = result["job"]
    first = Agent(state_dir)
    agents.append(first)
    wait_for(
        lambda: (c := status(configured_host, state_dir, job_id)["counts"])["succeeded"] >= 1
        and c["running"] >= 1,
        180,
        "some tasks done and some running",
    )
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    running_at_kill = Ledger(state_dir).attempts(job_id, state="running")
    assert running_at_kill, "the kill should leave running attempts behind"
    second = Agent(state_dir, "--once")
    agents.append(second)
    assert second.process.wait(300) == 0, second.log.read_text()
    assert "adopting worker" in second.log.read_text()  # resumed, not restarted from scratch
    final = status(configured_host, state_dir, job_id)
    assert final["state"] == "succeeded", final
    attempts = Ledger(state_dir).attempts(job_id)
    succeeded = [a.index for a in attempts if a.state == "succeeded"]
    assert sorted(succeeded) == list(range(6))  # each task recorded exactly once
    for index in range(6):
        directory = results.task_dir(state_dir, job_id, index)
        assert (directory / "files" / "i").read_text() == f"{index}\n"
        assert (directory / "stdout").read_text() == f"done-{index}\n"
    joblog = results.joblog_path(state_dir, job_id).read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in joblog[1:]) == [str(i) for i in range(1, 7)]
    assert no_workers_left(configured_host, timeout=30)


def test_lxd_daemon_restart_mid_job(
    configured_host: HostConfig, state_dir: Path, agents: list[Agent]
) -> None:
    result = launch(
        configured_host,
        state_dir,
        tasks=3,
        parallelism=3,
        command="sleep 8; echo survived > /results/s",
    )
    job_id = result["job"]
    agents.append(Agent(state_dir))
    wait_for(lambda: len(worker_names(configured_host)) == 3, 120, "three workers")
    with lxd_daemon_down() as old_pid:
        pass  # the workers and the agent carry on while the daemon is away
    new = lxd_daemon_process()
    assert new is not None and new[0] != old_pid
    wait_for(
        lambda: status(configured_host, state_dir, job_id)["state"] != "running",
        180,
        "the job to finish after the daemon restart",
    )
    final = status(configured_host, state_dir, job_id)
    assert final["state"] == "succeeded", (final, agents[0].log.read_text()[-3000:])
    for index in range(3):
        assert (results.task_dir(state_dir, job_id, index) / "files" / "s").read_text() == (
            "survived\n"
        )
    assert no_workers_left(configured_host, timeout=60)


@pytest.mark.parametrize(("argv", "message"), INVALID + INVALID_ON_THIS_HOST)
def test_cli_invalid_parameters_create_nothing(
    configured_host: HostConfig,
    state_dir: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    ledger = Ledger(state_dir)
    before = ledger.count_rows()
    workers_before = worker_names(configured_host)
    try:
        code = cli.main([argv[0], "--state-dir", str(state_dir), *argv[1:]])
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    _out, err = capsys.readouterr()
    assert code == (2 if (argv, message) in INVALID else 1)
    assert message in err
    assert ledger.count_rows() == before
    assert worker_names(configured_host) == workers_before


def test_cli_launch_wait_json(
    configured_host: HostConfig, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(
        [
            "launch-job",
            "--state-dir",
            str(state_dir),
            "--tasks",
            "2",
            "--wait",
            "--format",
            "json",
            "--",
            "sh",
            "-c",
            SQUARE,
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out)
    assert result["state"] == "succeeded" and result["completed-indexes"] == "0-1"
    square = results.task_dir(state_dir, result["job"], 1) / "files" / "square"
    assert square.read_text() == "1\n"
