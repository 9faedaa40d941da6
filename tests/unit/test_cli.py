"""The container-compute command on a fake backend: flags, JSON equality, bad parameters."""

import argparse
import dataclasses
import json
import shlex
from pathlib import Path
from typing import Any, cast

import pytest

from container_compute import actions, agent, cli
from container_compute.actions import ACTION_PARAMS, job_actions
from container_compute.config import HostConfig, config_options
from container_compute.jobs import runner
from container_compute.jobs.ledger import Ledger
from container_compute.jobs.params import JobParams
from container_compute.owner import owner_id

from .fake_backend import FakeBackend, Plan, make_config


@pytest.fixture
def backend(monkeypatch: pytest.MonkeyPatch) -> FakeBackend:
    fake = FakeBackend()
    monkeypatch.setattr(runner, "backend_factory_for", lambda config: lambda name: fake)
    monkeypatch.setattr(runner, "engine_options", {"backoff_base": 0.01, "backoff_cap": 0.05})
    monkeypatch.setattr(job_actions, "IN_PROCESS_POLL_SECONDS", 0.01)
    monkeypatch.setattr(agent, "load_config", lambda state_dir: make_config())
    return fake


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = cli.main(list(argv))
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_every_action_and_param_has_a_flag() -> None:
    parser = cli.build_parser()
    group = parser._subparsers._group_actions[0]  # type: ignore[union-attr]
    subcommands = cast(dict[str, argparse.ArgumentParser], group.choices)
    assert set(subcommands) == {"configure-host", "reap", "logs", *ACTION_PARAMS}
    for action, (params_class, _description) in ACTION_PARAMS.items():
        flags = {o for a in subcommands[action]._actions for o in a.option_strings}
        for f in dataclasses.fields(params_class):
            assert f"--{f.name.replace('_', '-')}" in flags
    host_flags = {o for a in subcommands["configure-host"]._actions for o in a.option_strings}
    for name, kind, _default, _description in config_options():
        assert f"--{name}" in host_flags
        if kind is bool:
            assert f"--no-{name}" in host_flags


def test_command_after_double_dash_is_joined(tmp_path: Path) -> None:
    words = ["sh", "-c", "echo $((TASK_INDEX * TASK_INDEX)) > /results/square"]
    args = cli.build_parser().parse_args(
        ["launch-job", "--tasks", "16", "--wait", "--env", "A=1", "--env", "B=2", "--", *words]
    )
    params = cli.params_from_args("launch-job", args)
    assert params.command == shlex.join(words)
    assert (params.tasks, params.wait, params.env) == (16, True, ["A=1", "B=2"])


def test_launch_wait_runs_in_process_and_json_equals_run_action(
    tmp_path: Path, backend: FakeBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(
        capsys,
        "launch-job",
        "--state-dir",
        str(tmp_path),
        "--tasks",
        "16",
        "--wait",
        "--format",
        "json",
        "--",
        "sh",
        "-c",
        "echo $((TASK_INDEX * TASK_INDEX)) > /results/square",
    )
    assert code == 0, err
    launched = json.loads(out)
    assert launched["state"] == "succeeded" and launched["completed-indexes"] == "0-15"
    job_id = launched["job"]
    code, out, _err = run_cli(
        capsys, "job-status", "--state-dir", str(tmp_path), "--job", job_id, "--format", "json"
    )
    expected = actions.run_action("job-status", JobParams(job=job_id), make_config(), tmp_path)
    assert code == 0 and json.loads(out) == expected
    code, out, _err = run_cli(
        capsys,
        "gather-results",
        "--state-dir",
        str(tmp_path),
        "--job",
        job_id,
        "--inline",
        "--indexes",
        "3,5",
        "--format",
        "json",
    )
    gathered = json.loads(out)
    assert code == 0 and sorted(gathered["summary"]) == ["3", "5"]
    assert gathered["inline"]["5"]["stdout"] == "task 5\n"
    assert Path(gathered["joblog"]).read_text().count("\n") == 17
    square = Path(gathered["summary"]["3"]["dir"]) / "files" / "square"
    assert square.read_text() == "9\n"


def test_text_output_is_readable(
    tmp_path: Path, backend: FakeBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _err = run_cli(
        capsys,
        "launch-job",
        "--state-dir",
        str(tmp_path),
        "--command",
        "true",
        "--tasks",
        "2",
        "--name",
        "demo",
    )
    assert code == 0
    assert "state: queued" in out and "note: no agent is running" in out
    code, out, _err = run_cli(capsys, "list-jobs", "--state-dir", str(tmp_path))
    assert code == 0 and "name: demo" in out and "count: 1" in out


def test_job_lifecycle_errors(
    tmp_path: Path, backend: FakeBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ("--state-dir", str(tmp_path))
    code, out, _err = run_cli(capsys, "launch-job", *base, "--command", "true", "--format", "json")
    job_id = json.loads(out)["job"]
    code, _out, err = run_cli(capsys, "gather-results", *base, "--job", job_id)
    assert code == 1 and f"job {job_id} is still queued" in err
    code, _out, err = run_cli(capsys, "delete-job", *base, "--job", job_id)
    assert code == 1 and "cancel it first" in err
    code, _out, err = run_cli(capsys, "job-status", *base, "--job", "jffffffff")
    assert code == 1 and "job jffffffff does not exist (see list-jobs)" in err
    code, out, _err = run_cli(capsys, "cancel-job", *base, "--job", job_id, "--format", "json")
    assert code == 0 and json.loads(out)["state"] == "cancelled"
    code, out, _err = run_cli(capsys, "delete-job", *base, "--job", job_id, "--format", "json")
    assert code == 0 and json.loads(out)["deleted"] is True
    assert Ledger(tmp_path).count_rows() == {"jobs": 0, "tasks": 0, "attempts": 0}


def test_failing_job_reports_failures(
    tmp_path: Path, backend: FakeBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    backend.plan = lambda spec: Plan(exit_code=spec.task_index % 2, stderr="x")
    code, out, _err = run_cli(
        capsys,
        "launch-job",
        "--state-dir",
        str(tmp_path),
        "--tasks",
        "4",
        "--wait",
        "--format",
        "json",
        "--",
        "false",
    )
    result = json.loads(out)
    assert code == cli.EXIT_TASKS_FAILED == 3
    assert (result["state"], result["failed-indexes"], result["completed-indexes"]) == (
        "failed",
        "1,3",
        "0,2",
    )
    assert result["failures"]["3"] == {
        "state": "failed",
        "attempts": 1,
        "exit-code": 1,
        "reason": "exit-code",
        "bytes": 1,
        "truncated": False,
    }


INVALID: list[tuple[list[str], str]] = [
    # launch-job: parameter shapes (exit 2)
    (["launch-job"], "command: is required"),
    (["launch-job", "--command", ""], "command: is empty"),
    (["launch-job", "--command", "   "], "command: is empty"),
    (["launch-job", "--command", "x" * 70000], "command: is over"),
    (["launch-job", "--command", "a\x00b"], "command: contains a NUL"),
    (["launch-job", "--command", "true", "--", "echo"], "command: give it either"),
    (["launch-job", "--command", "true", "--tasks", "-1"], "tasks: -1 is not between"),
    (["launch-job", "--command", "true", "--tasks", "100001"], "tasks: 100001 is not between"),
    (["launch-job", "--command", "true", "--tasks", "ten"], "--tasks: 'ten' is not an integer"),
    (
        ["launch-job", "--command", "true", "--tasks", "3", "--inputs", "a\nb"],
        "tasks: 3 does not match",
    ),
    (["launch-job", "--command", "true", "--inputs", "\n \n"], "inputs: has no non-empty line"),
    (["launch-job", "--command", "true", "--parallelism", "-2"], "parallelism: -2 is not between"),
    (["launch-job", "--command", "true", "--parallelism", "5000"], "parallelism: 5000"),
    (
        ["launch-job", "--command", "true", "--parallelism", "1.5"],
        "--parallelism: '1.5' is not an integer",
    ),
    (["launch-job", "--command", "true", "--image", "bad image"], "image: 'bad image' is not"),
    (["launch-job", "--command", "true", "--image=-x"], "image: '-x' is not"),
    (["launch-job", "--command", "true", "--env", "NOEQUALS"], "env: 'NOEQUALS' is not KEY=VALUE"),
    (["launch-job", "--command", "true", "--env", "1A=s3cret"], "env: '1A' is not KEY=VALUE"),
    (["launch-job", "--command", "true", "--env", "TASK_INDEX=3"], "env: TASK_INDEX is set"),
    (["launch-job", "--command", "true", "--env", "JOB_ID=x"], "env: JOB_ID is set"),
    (
        ["launch-job", "--command", "true", "--input-dir", "relative/dir"],
        "input-dir: 'relative/dir'",
    ),
    (
        ["launch-job", "--command", "true", "--timeout", "soon"],
        "timeout: 'soon' is not a duration",
    ),
    (["launch-job", "--command", "true", "--timeout", "-5"], "timeout: '-5' is not a duration"),
    (["launch-job", "--command", "true", "--deadline", "1y"], "deadline: '1y' is not a duration"),
    (["launch-job", "--command", "true", "--wait-timeout", "2d"], "wait-timeout: '2d' is over"),
    (["launch-job", "--command", "true", "--retries", "21"], "retries: 21 is not between"),
    (["launch-job", "--command", "true", "--retries", "-1"], "retries: -1 is not between"),
    (["launch-job", "--command", "true", "--cpu", "0"], "cpu: '0' is not a CPU count"),
    (["launch-job", "--command", "true", "--cpu", "a-b"], "cpu: 'a-b' is not a CPU count"),
    (["launch-job", "--command", "true", "--memory", "lots"], "memory: 'lots' is not a size"),
    (["launch-job", "--command", "true", "--memory", "1MiB"], "memory: '1MiB' is below"),
    (["launch-job", "--command", "true", "--disk", "lots"], "disk: 'lots' is not a size"),
    (["launch-job", "--command", "true", "--disk", "50%"], "disk: '50%' is not a size"),
    (["launch-job", "--command", "true", "--disk", "1MiB"], "disk: '1MiB' is below"),
    (["launch-job", "--command", "true", "--name", "has space"], "name: 'has space' is not"),
    (["launch-job", "--command", "true", "--backend", "k8s"], "backend: 'k8s' is not one of"),
    # other actions (exit 2)
    (["job-status"], "job: is required"),
    (["job-status", "--job", "NOT_AN_ID"], "job: 'NOT_AN_ID' is not a job id"),
    (["cancel-job", "--job", "../etc"], "job: '../etc' is not a job id"),
    (["delete-job", "--job", ""], "job: '' is not a job id"),
    (["gather-results", "--job", "j00000000", "--indexes", "3-1"], "indexes: range '3-1' runs"),
    (["gather-results", "--job", "j00000000", "--indexes", "x"], "indexes: 'x' is not a list"),
    (["list-jobs", "--state", "done"], "state: 'done' is not one of"),
    (["list-jobs", "--limit", "0"], "limit: 0 is not between"),
    (["build-worker-image", "--source", "alpine"], "source: 'alpine' is not busybox, debootstrap"),
    (
        ["build-worker-image", "--source", "oci:images/layout"],
        "source: 'oci:images/layout' must name an absolute path",
    ),
    (["build-worker-image", "--source", "docker://x"], "is not docker://REGISTRY/NAME:TAG"),
    (["build-worker-image", "--alias", "bad alias"], "alias: 'bad alias' is not"),
    (["build-worker-image", "--packages", "vim"], "packages: only applies"),
    (["build-worker-image", "--source", "debootstrap", "--packages", "Bad!"], "packages: 'Bad!'"),
    (["build-worker-image", "--source", "debootstrap", "--suite", "Bookworm1"], "suite: "),
    (["build-worker-image", "--source", "debootstrap", "--mirror", "ftp://x"], "mirror: "),
]

INVALID_ON_THIS_HOST: list[tuple[list[str], str]] = [
    # launch-job: valid shapes the host cannot run (ActionError, exit 1)
    (["launch-job", "--command", "true", "--image", "nosuch"], "image: 'nosuch' does not exist"),
    (["launch-job", "--command", "true", "--backend", "nova"], "image: no Nova image"),
    (
        ["launch-job", "--command", "true", "--input-dir", "/nonexistent"],
        "input-dir: /nonexistent does not exist",
    ),
    (
        ["launch-job", "--command", "true", "--input-dir", "/etc/hostname"],
        "input-dir: /etc/hostname is not a directory",
    ),
    (["launch-job", "--command", "true", "--cpu", "4096"], "cpu: 4096 is more than"),
    (["launch-job", "--command", "true", "--cpu", "0,4000"], "cpu: CPU 4000"),
    (["launch-job", "--command", "true", "--memory", "64TiB"], "memory: 64TiB is more than"),
    (
        ["launch-job", "--command", "true", "--disk", "64TiB"],
        "disk: 64TiB is more than this host's worker-disk of 10GiB",
    ),
    (["gather-results", "--job", "j00000000"], "job j00000000 does not exist"),
    (["cancel-job", "--job", "j00000000"], "job j00000000 does not exist"),
]


@pytest.mark.parametrize(("argv", "message"), INVALID + INVALID_ON_THIS_HOST)
def test_bad_parameters_are_named_and_change_nothing(
    tmp_path: Path,
    backend: FakeBackend,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    ledger = Ledger(tmp_path)
    ledger.create_job(
        {"command": "x"}, name="", backend="lxd", task_count=2, inputs=(), deadline_seconds=0
    )
    before = ledger.count_rows()
    code, out, err = run_cli(capsys, *argv[:1], "--state-dir", str(tmp_path), *argv[1:])
    assert code == (2 if (argv, message) in INVALID else 1)
    assert message in err
    assert "s3cret" not in err  # a value of env is never echoed
    assert out == ""
    assert ledger.count_rows() == before
    assert backend.started == []


def test_the_invalid_table_is_large_enough() -> None:
    assert len(INVALID) + len(INVALID_ON_THIS_HOST) >= 40


def test_configure_host_flags_build_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from container_compute import host

    seen: dict[str, Any] = {}

    class Report:
        ok = True
        problems: list[str] = []

        def to_dict(self) -> dict[str, Any]:
            return {"ok": True}

    def configure(config: HostConfig, *, paths: object = None, dry_run: bool = False) -> Report:
        seen.update(config=config, dry_run=dry_run)
        return Report()

    monkeypatch.setattr(host, "configure_host", configure)
    monkeypatch.setattr(
        host, "save_config", lambda config, state_dir: seen.update(saved=state_dir)
    )
    code, out, _err = run_cli(
        capsys,
        "configure-host",
        "--state-dir",
        str(tmp_path),
        "--storage-driver",
        "dir",
        "--worker-privileged",
        "--no-sysctl-tuning",
        "--max-parallel-workers",
        "3",
        "--format",
        "json",
    )
    assert code == 0 and json.loads(out) == {"ok": True}
    config = seen["config"]
    assert (
        config.storage_driver,
        config.worker_privileged,
        config.sysctl_tuning,
        config.max_parallel_workers,
        config.worker_memory,
    ) == ("dir", True, False, 3, "1GiB")
    assert seen["saved"] == tmp_path and seen["dry_run"] is False
    code, _out, err = run_cli(capsys, "configure-host", "--storage-driver", "ntfs")
    assert code == 2 and "storage-driver: 'ntfs' is not one of" in err
    Report.ok, Report.problems = False, ["pool: no space"]
    code, _out, err = run_cli(capsys, "configure-host", "--state-dir", str(tmp_path), "--dry-run")
    assert code == 1 and "pool: no space" in err


def test_agent_alive_follows_the_agent_heartbeat(tmp_path: Path) -> None:
    assert agent.agent_alive(tmp_path / "missing") is False
    ledger = Ledger(tmp_path)
    assert agent.agent_alive(tmp_path) is False
    ledger.heartbeat(1, "in-process")
    assert agent.agent_alive(tmp_path) is False  # only the agent counts
    ledger.heartbeat(1, "agent")
    assert agent.agent_alive(tmp_path) is True
    ledger.heartbeat(1, "agent", now=1.0)
    assert agent.agent_alive(tmp_path) is False


def test_service_unit_renders_and_needs_systemd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = agent.render_service(Path("/var/lib/container-compute"))
    assert 'agent --state-dir "/var/lib/container-compute"' in text
    assert "CONTAINER_COMPUTE_STATE_DIR=/var/lib/container-compute" in text
    monkeypatch.setattr(agent, "SYSTEMD_RUN_DIR", tmp_path / "no-systemd")
    unit = tmp_path / "agent.service"
    assert agent.install_service(tmp_path, unit_path=unit) is False
    assert not unit.exists()


def test_agent_once_runs_queued_jobs_and_reaps(
    tmp_path: Path, backend: FakeBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    from container_compute.backends import WorkerInfo

    code, out, _err = run_cli(
        capsys,
        "launch-job",
        "--state-dir",
        str(tmp_path),
        "--tasks",
        "3",
        "--format",
        "json",
        "--",
        "true",
    )
    assert code == 0
    job_id = json.loads(out)["job"]
    orphan = WorkerInfo("cc-jdeadbeef-0-1", "jdeadbeef", 0, 1, True, owner_id(tmp_path))
    backend.workers[orphan.name] = orphan
    engine = agent.run_agent(tmp_path, make_config(), once=True, poll=0.01)
    assert engine.ledger.job(job_id).state.value == "succeeded"  # type: ignore[union-attr]
    assert backend.workers == {}
    assert "cc-jdeadbeef-0-1" in backend.deleted
    assert agent.agent_alive(tmp_path) is False  # a clean exit clears the heartbeat


def test_wait_timeout_exits_still_running(
    tmp_path: Path, backend: FakeBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    backend.plan = lambda spec: Plan(hang=True)
    code, out, _err = run_cli(
        capsys,
        "launch-job",
        "--state-dir",
        str(tmp_path),
        "--tasks",
        "2",
        "--wait",
        "--wait-timeout",
        "1s",
        "--format",
        "json",
        "--",
        "sleep",
        "600",
    )
    result = json.loads(out)
    assert result["waited"] == "wait-timeout passed"
    assert code == cli.EXIT_STILL_RUNNING == 5


def test_without_wait_a_launch_exits_zero_whatever_the_tasks_do(
    tmp_path: Path, backend: FakeBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    backend.plan = lambda spec: Plan(exit_code=1)
    code, out, _err = run_cli(
        capsys, "launch-job", "--state-dir", str(tmp_path), "--format", "json", "--", "false"
    )
    assert code == 0 and json.loads(out)["state"] == "queued"


def test_wait_job_exit_status_follows_the_job(
    tmp_path: Path, backend: FakeBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--state-dir", str(tmp_path), "--format", "json"]
    backend.plan = lambda spec: Plan(exit_code=spec.task_index)
    code, out, _err = run_cli(capsys, "launch-job", *base, "--tasks", "2", "--", "exit 0")
    job = json.loads(out)["job"]
    code, out, _err = run_cli(capsys, "wait-job", *base, "--job", job)
    waited = json.loads(out)
    assert (waited["state"], waited["failed-indexes"], waited["waited"]) == (
        "failed",
        "1",
        "finished",
    )
    assert code == cli.EXIT_TASKS_FAILED

    backend.plan = lambda spec: Plan(hang=True)
    code, out, _err = run_cli(capsys, "launch-job", *base, "--tasks", "2", "--", "sleep 600")
    cancelled = json.loads(out)["job"]
    code, _out, _err = run_cli(capsys, "cancel-job", *base, "--job", cancelled)
    assert code == 0
    code, out, _err = run_cli(capsys, "wait-job", *base, "--job", cancelled)
    assert json.loads(out)["state"] == "cancelled"
    assert code == cli.EXIT_CANCELLED == 4

    code, out, _err = run_cli(capsys, "launch-job", *base, "--tasks", "2", "--", "sleep 600")
    job = json.loads(out)["job"]
    code, out, _err = run_cli(capsys, "wait-job", *base, "--job", job, "--wait-timeout", "1s")
    assert json.loads(out)["waited"] == "wait-timeout passed"
    assert code == cli.EXIT_STILL_RUNNING


def test_wait_job_for_an_unknown_job_fails_naming_it(
    tmp_path: Path, backend: FakeBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _out, err = run_cli(
        capsys, "wait-job", "--state-dir", str(tmp_path), "--job", "j00000000"
    )
    assert code == cli.EXIT_ACTION_FAILED
    assert "job j00000000 does not exist" in err
