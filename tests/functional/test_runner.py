"""Warm workers' resident launchers (runner.py) on the REAL LXD daemon.

A warm worker with the sandbox helper gets its tasks' launchers from the host through its
runner, not through an LXD exec each; without the helper, or once its runner is gone, through
exec, and the job does not notice.
"""

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from container_compute.backends.lxd import helper, warm
from container_compute.config import HostConfig

from .conftest import worker_names, workers_of
from .test_warm_workers import run_job

pytestmark = [pytest.mark.functional, pytest.mark.usefixtures("fast_engine")]

COMMAND = 'echo "$TASK_INDEX" > /results/index; echo ok'


@pytest.fixture
def execs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The workers given a launcher through LXD's exec, one entry per call."""
    calls: list[str] = []
    real = warm.run_launcher

    def counting(api: object, name: str, script: str, environment: dict[str, str]) -> int:
        calls.append(name)
        return real(api, name, script, environment)  # type: ignore[arg-type]

    monkeypatch.setattr(warm, "run_launcher", counting)
    return calls


@pytest.fixture
def with_helper() -> None:
    if helper.sandbox_helper() is None:
        pytest.skip(f"the sandbox helper cannot be built here (no {helper.GCC}?)")


def check_results(state_dir: Path, report: dict[str, object], tasks: int) -> None:
    assert report["counts"] == {**report["counts"], "succeeded": tasks}, report  # type: ignore[dict-item]
    for index in range(tasks):
        task = state_dir / "results" / str(report["job"]) / str(index)
        assert (task / "files" / "index").read_text() == f"{index}\n"
        assert (task / "stdout").read_text() == "ok\n"


def processes_of(project: str, needle: bytes) -> list[int]:
    """Host pids of processes of ``project``'s workers whose command line holds ``needle``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if f"lxc.payload.{project}_" not in (entry / "cgroup").read_text():
                continue
            if needle in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.usefixtures("with_helper")
def test_a_warm_workers_launchers_go_to_its_runner(
    configured_host: HostConfig, state_dir: Path, execs: list[str]
) -> None:
    report = run_job(configured_host, state_dir, COMMAND, tasks=8, parallelism=2)

    check_results(state_dir, report, 8)
    assert len(set(workers_of(state_dir, str(report["job"])))) <= 2
    assert execs == []  # not one launcher through exec
    assert worker_names(configured_host) == []


def test_without_the_helper_each_launcher_is_an_exec(
    configured_host: HostConfig,
    state_dir: Path,
    execs: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(warm, "sandbox_helper", lambda: None)
    report = run_job(configured_host, state_dir, COMMAND, tasks=4, parallelism=1)

    check_results(state_dir, report, 4)
    assert len(execs) == 4


@pytest.mark.usefixtures("with_helper")
def test_a_runner_gone_mid_job_hands_its_worker_over_to_exec(
    configured_host: HostConfig, state_dir: Path, execs: list[str]
) -> None:
    project = configured_host.lxd_project
    killed: list[int] = []

    def kill_the_runner_while_task_0_runs() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not processes_of(project, b"sleep 3"):
            time.sleep(0.05)
        for pid in processes_of(project, b"--serve"):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    killer = threading.Thread(target=kill_the_runner_while_task_0_runs, daemon=True)
    killer.start()
    command = f'[ "$TASK_INDEX" = 0 ] && sleep 3; {COMMAND}'
    report = run_job(configured_host, state_dir, command, tasks=4, parallelism=1)
    killer.join(10)

    assert len(killed) == 1
    check_results(state_dir, report, 4)
    assert len(set(workers_of(state_dir, str(report["job"])))) == 1  # never replaced
    assert len(execs) == 3  # task 0 through the runner, the rest through exec
    assert worker_names(configured_host) == []
