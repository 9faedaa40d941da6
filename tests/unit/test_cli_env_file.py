"""launch-job --env-file: KEY=VALUE lines read by the CLI, merged with --env, never echoed."""

from pathlib import Path

import pytest
import yaml

from container_compute import agent, cli
from container_compute.contract import render_actions

from .fake_backend import make_config

ROOT = Path(__file__).resolve().parents[2]


def params_of(*argv: str) -> object:
    args = cli.build_parser().parse_args(["launch-job", *argv])
    return cli.params_from_args("launch-job", args)


def refused(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, state: Path, *argv: str
) -> str:
    """Run launch-job; expect exit status 2 with nothing written; return stderr."""
    monkeypatch.setattr(agent, "load_config", lambda state_dir: make_config())
    with pytest.raises(SystemExit) as exit_:
        cli.main(["launch-job", "--state-dir", str(state), *argv])
    out, err = capsys.readouterr()
    assert exit_.value.code == cli.EXIT_BAD_PARAMS and out == ""
    assert list(state.iterdir()) == []  # nothing recorded
    assert "s3cret" not in err
    return err


def test_the_file_is_merged_with_env(tmp_path: Path) -> None:
    env_file = tmp_path / "job.env"
    env_file.write_text("# secrets\n\nTOKEN=s3cret\r\n  # indented comment\nURL=a=b c\n")
    params = params_of("--env", "A=1", "--env-file", str(env_file), "--", "true")
    assert params.env == ["A=1", "TOKEN=s3cret", "URL=a=b c"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("A=1\nB=2\n\ns3cret\n", "env-file: line 4 is not KEY=VALUE"),
        ("A=1\n1B=s3cret\n", "env-file: line 2 is not KEY=VALUE"),
        (" A=s3cret\n", "env-file: line 1 is not KEY=VALUE"),
        ("A=1\nA=s3cret\n", "env-file: line 2: A is given twice (first on line 1)"),
        ("\nCC_KEEP=s3cret\n", "env-file: line 2: CC_KEEP is set by container-compute"),
        ("TASK_INDEX=s3cret\n", "env-file: line 1: TASK_INDEX is set by container-compute"),
        ("A=s3cret\x00\n", "env-file: line 1: the value of A contains a NUL byte"),
        ("A=1\nB=s3cret\n", "env-file: B is given with --env too"),
    ],
)
def test_a_bad_file_is_refused_by_line_never_by_value(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    text: str,
    message: str,
) -> None:
    env_file = tmp_path / "job.env"
    env_file.write_text(text)
    state = tmp_path / "state"
    state.mkdir()
    err = refused(
        capsys, monkeypatch, state, "--env", "B=s3cret", "--env-file", str(env_file), "--", "true"
    )
    assert message in err


def test_an_unreadable_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    missing = tmp_path / "nosuch.env"
    err = refused(capsys, monkeypatch, state, "--env-file", str(missing), "--", "true")
    assert f"env-file: cannot read {missing}: No such file or directory" in err
    err = refused(capsys, monkeypatch, state, "--env-file", str(state), "--", "true")
    assert "env-file: cannot read" in err
    binary = tmp_path / "binary.env"
    binary.write_bytes(b"A=s3cret\xff\n")
    err = refused(capsys, monkeypatch, state, "--env-file", str(binary), "--", "true")
    assert "env-file: " in err and "is not UTF-8 text" in err


def test_a_huge_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    huge = tmp_path / "huge.env"
    huge.write_text("A=" + "x" * cli.MAX_ENV_FILE_BYTES)
    err = refused(capsys, monkeypatch, state, "--env-file", str(huge), "--", "true")
    assert f"is over {cli.MAX_ENV_FILE_BYTES} bytes" in err


def test_env_file_is_a_flag_of_the_command_only() -> None:
    actions = yaml.safe_load(render_actions())
    assert "env" in actions["launch-job"]["params"]
    assert all("env-file" not in spec["params"] for spec in actions.values())
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["job-status", "--job", "j1", "--env-file", "x"])


def test_the_guide_tells_of_env_file_in_prose() -> None:
    text = (ROOT / "docs" / "cli.md").read_text()
    prose = "".join(text.split("```")[::2])  # outside fenced blocks
    assert "--env-file PATH" in prose
