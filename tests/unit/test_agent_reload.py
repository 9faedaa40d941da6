"""The agent notices a new saved config or new code, refuses a config that does not load."""

import dataclasses
import json
import logging
from pathlib import Path

import pytest

from container_compute import agent, host
from container_compute.config import HostConfig


@pytest.fixture
def code_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for the library's installed code: one module and one template."""
    package = tmp_path / "package"
    (package / "templates").mkdir(parents=True)
    (package / "engine.py").write_text("VERSION = 1\n")
    (package / "templates" / "unit.j2").write_text("{{ x }}\n")
    monkeypatch.setattr(agent, "PACKAGE_DIR", package)
    return package


@pytest.fixture
def state(tmp_path: Path, code_dir: Path) -> Path:
    directory = tmp_path / "state"
    host.save_config(HostConfig(max_parallel_workers=1), directory)
    return directory


def test_nothing_changed_means_no_reload(state: Path) -> None:
    watch = agent.VersionWatch(state)
    watch.start()

    assert not watch.check()
    assert not watch.check()
    assert agent.running_version(state) == agent.AgentVersion.on_disk(state)


def test_a_new_saved_config_is_noticed(state: Path) -> None:
    watch = agent.VersionWatch(state)
    watch.start()
    before = agent.running_version(state)

    assert host.save_config(HostConfig(max_parallel_workers=4), state)

    assert watch.check()
    assert watch.new_version is not None
    assert watch.new_version.config != watch.running.config
    assert watch.new_version.code == watch.running.code
    assert agent.running_version(state) == before  # the running agent said what it runs


def test_saving_the_same_config_again_is_no_change(state: Path) -> None:
    watch = agent.VersionWatch(state)

    host.save_config(HostConfig(max_parallel_workers=1), state)

    assert not watch.check()


def test_new_code_is_noticed(state: Path, code_dir: Path) -> None:
    watch = agent.VersionWatch(state)

    (code_dir / "templates" / "unit.j2").write_text("{{ x }} {{ y }}\n")

    assert watch.check()
    assert watch.new_version is not None
    assert watch.new_version.code != watch.running.code


def test_touching_without_changing_is_no_change(state: Path, code_dir: Path) -> None:
    watch = agent.VersionWatch(state)

    (code_dir / "engine.py").write_text("VERSION = 1\n")
    (code_dir / "engine.py").touch()

    assert not watch.check()


def test_a_config_that_does_not_load_is_refused_and_logged_once(
    state: Path, caplog: pytest.LogCaptureFixture
) -> None:
    watch = agent.VersionWatch(state)
    saved = state / host.SAVED_CONFIG_FILE
    values = json.loads(saved.read_text())
    saved.write_text(json.dumps({**values, "max-parallel-workers": "many"}))

    with caplog.at_level(logging.ERROR, logger="container_compute.agent"):
        assert not watch.check()
        saved.touch()  # the same bad text again
        assert not watch.check()

    refusals = [r for r in caplog.records if "does not load" in r.getMessage()]
    assert len(refusals) == 1
    assert "max-parallel-workers" in refusals[0].getMessage()
    assert watch.new_version is None

    host.save_config(HostConfig(max_parallel_workers=3), state)  # fixed: now it reloads
    assert watch.check()


def test_await_current_without_an_agent_returns_at_once(state: Path) -> None:
    assert agent.await_current(state, timeout=30) == "no agent runs"


def test_await_current_says_stale_when_the_agent_does_not_take_it(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent, "agent_alive", lambda _state_dir: True)
    watch = agent.VersionWatch(state)
    watch.start()

    assert agent.await_current(state, timeout=30) == "current"
    host.save_config(dataclasses.replace(HostConfig(), max_parallel_workers=7), state)
    assert agent.await_current(state, timeout=0.3) == "stale"
