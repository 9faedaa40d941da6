"""The packed charm as Juju gets it: unzipped, run with its own venv, its agent unit started.

``tox -e pack`` packs the charm into build/ with the real charmcraft, then runs these tests on
the newest ``build/*.charm``. Nothing here imports the repository's src/: every check runs the
UNPACKED tree in a subprocess with the interpreter and PYTHONPATH the charm's dispatch uses.
The handler and agent tests need the LXD daemon (like the functional suite); they work in a
throwaway LXD project and pool and delete them.
"""

import json
import os
import secrets
import shlex
import signal
import sqlite3
import subprocess
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..functional.lxd_cleanup import purge_run

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build"
DRIVER = Path(__file__).with_name("drive_charm.py")
TOP_LEVEL = {"dispatch", "manifest.yaml", "metadata.yaml", "config.yaml", "actions.yaml"}
TOP_LEVEL |= {"LICENSE", "icon.svg"}  # what Charmhub shows with the charm
ALLOWED_TOP_LEVEL = TOP_LEVEL | {"src", "lib", "venv"}
RUNTIME_IMPORTS = ("ops", "pylxd", "novaclient", "keystoneauth1", "jinja2", "yaml", "requests")


@pytest.fixture(scope="module")
def charm_file() -> Path:
    """The newest packed charm in build/."""
    charms = sorted(BUILD.glob("*.charm"), key=lambda p: p.stat().st_mtime)
    if not charms:
        pytest.fail("no build/*.charm: pack it first (scripts/pack-charm, or tox -e pack)")
    return charms[-1]


@pytest.fixture(scope="module")
def unpacked(charm_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The charm unzipped as Juju unpacks it, with the venv interpreter dispatch links."""
    target = tmp_path_factory.mktemp("unpacked-charm")
    with zipfile.ZipFile(charm_file) as archive:
        archive.extractall(target)
        for info in archive.infolist():  # zipfile drops the mode bits: restore them
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                (target / info.filename).chmod(mode)
    dispatch = (target / "dispatch").read_text()
    assert 'ln -s $(which python3) "${python_path}"' in dispatch
    assert 'python_path="${venv_bin_path}/python"' in dispatch
    (target / "venv" / "bin").mkdir(parents=True, exist_ok=True)
    python = target / "venv" / "bin" / "python"
    if not python.exists():
        python.symlink_to("/usr/bin/python3")  # what dispatch does on the unit
    return target


def charm_env(unpacked: Path) -> dict[str, str]:
    """The environment dispatch gives the charm: PYTHONPATH lib:src, and nothing of ours."""
    return {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "PYTHONPATH": f"{unpacked}/lib:{unpacked}/src",
        "LANG": "C.UTF-8",
    }


def test_layout_is_only_what_runs(charm_file: Path, unpacked: Path) -> None:
    names = {Path(n).parts[0] for n in zipfile.ZipFile(charm_file).namelist()}
    assert names >= TOP_LEVEL | {"src", "venv"}
    assert names <= ALLOWED_TOP_LEVEL, f"not needed at run time: {names - ALLOWED_TOP_LEVEL}"
    assert os.access(unpacked / "dispatch", os.X_OK)
    for name in ("metadata.yaml", "config.yaml", "actions.yaml"):
        assert (unpacked / name).read_text() == (ROOT / name).read_text(), name
    assert (unpacked / "src" / "charm.py").is_file()
    templates = unpacked / "src" / "container_compute" / "templates"
    assert sorted(p.name for p in templates.glob("*.j2")) == sorted(
        p.name for p in (ROOT / "templates").glob("*.j2")
    )
    for library in (ROOT / "lib").rglob("*.py") if (ROOT / "lib").is_dir() else []:
        assert (unpacked / library.relative_to(ROOT)).is_file(), library


def test_every_runtime_dependency_imports_from_the_charm_venv(unpacked: Path) -> None:
    modules = sorted(
        ".".join(p.relative_to(unpacked / "src").with_suffix("").parts).removesuffix(".__init__")
        for p in (unpacked / "src").rglob("*.py")
    )
    script = (
        "import importlib, json, sys\n"
        "found = {}\n"
        "for name in sys.argv[1:]:\n"
        "    found[name] = importlib.import_module(name).__file__\n"
        "print(json.dumps(found))\n"
    )
    result = subprocess.run(
        [str(unpacked / "venv" / "bin" / "python"), "-c", script, *RUNTIME_IMPORTS, *modules],
        env=charm_env(unpacked),
        cwd=unpacked,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    for name, location in found.items():
        assert Path(location).is_relative_to(unpacked), f"{name} came from {location}"


@pytest.fixture(scope="module")
def driven(unpacked: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Run install, config-changed, build-worker-image and launch-job from the unpacked tree."""
    project = f"cct{secrets.token_hex(3)}-art"
    state_dir = tmp_path_factory.mktemp("charm-state")
    paths_dir = tmp_path_factory.mktemp("charm-host-files")
    for name in ("subuid", "subgid"):
        source = Path("/etc") / name
        (paths_dir / name).write_text(source.read_text() if source.exists() else "")
    import scenario

    try:
        result = subprocess.run(
            [
                str(unpacked / "venv" / "bin" / "python"),
                str(DRIVER),
                str(unpacked),
                str(state_dir),
                str(paths_dir),
                project,
                str(Path(scenario.__file__).parents[1]),
            ],
            env=charm_env(unpacked),
            cwd=unpacked,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-4000:]
        yield {**json.loads(result.stdout.splitlines()[-1]), "state_dir": state_dir}
    finally:
        purge_run(project)


def test_handlers_run_from_the_unpacked_tree(unpacked: Path, driven: dict) -> None:
    for name, location in driven["locations"].items():
        assert Path(location).is_relative_to(unpacked), f"{name} came from {location}"
    # Configured, image built, no agent yet (no systemd here): blocked, saying so.
    assert driven["status"]["name"] == "blocked"
    assert "job agent is not running" in driven["status"]["message"]
    assert driven["image"]["alias"] == "busybox"
    job = driven["job"]
    assert job["state"] == "succeeded", job
    assert job["completed-indexes"] == "0-1"
    for index in (0, 1):
        square = Path(job["results-dir"]) / str(index) / "files" / "square"
        assert square.read_text() == f"{index * index}\n"


def test_config_changed_reaches_the_running_agent(driven: dict) -> None:
    """Juju config: the agent started from the artifact's unit runs the new config after it."""
    reload = driven["reload"]
    assert reload["saved_limit"] == 7
    assert reload["before"] is not None and reload["before"] != reload["on_disk"], reload
    assert reload["after"] == reload["on_disk"], reload
    assert reload["alive_after"], reload


def test_the_artifacts_agent_serves_metrics_and_cos_agent_publishes_them(
    unpacked: Path, driven: dict
) -> None:
    reload = driven["reload"]
    for text in (reload["metrics_before"], reload["metrics_after"]):
        assert 'container_compute_agent_info{version="' in text
        assert "container_compute_max_parallel_workers" in text
    assert "container_compute_max_parallel_workers 7.0" in reload["metrics_after"]
    data = driven["cos_agent"]
    target = driven["metrics_listen"]
    assert data["metrics_scrape_jobs"][0]["static_configs"] == [{"targets": [target]}]
    shipped = {
        directory: sorted(p.name for p in (unpacked / "src" / directory).iterdir())
        for directory in ("prometheus_alert_rules", "grafana_dashboards")
    }
    for directory, names in shipped.items():
        assert names and names == sorted(p.name for p in (ROOT / "src" / directory).iterdir())
    assert len(data["dashboards"]) == len(shipped["grafana_dashboards"])
    assert data["metrics_alert_rules"]["groups"]


def test_agent_unit_starts_from_the_artifact(unpacked: Path, driven: dict) -> None:
    lines = driven["unit"].splitlines()
    exec_start = next(line.split("=", 1)[1] for line in lines if line.startswith("ExecStart="))
    environment = [line.split("=", 1)[1] for line in lines if line.startswith("Environment=")]
    argv = shlex.split(exec_start)
    assert Path(argv[0]).is_relative_to(unpacked), exec_start
    log = driven["state_dir"] / "agent-from-unit.log"
    with log.open("wb") as out:
        agent = subprocess.Popen(
            ["/usr/bin/env", "-i", *environment, *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        beat = None
        deadline = time.monotonic() + 30
        while beat is None and time.monotonic() < deadline and agent.poll() is None:
            time.sleep(0.5)
            with sqlite3.connect(driven["state_dir"] / "ledger.sqlite3") as db:
                beat = db.execute("SELECT pid, role FROM agent WHERE role = 'agent'").fetchone()
        assert agent.poll() is None, log.read_text()
        assert beat is not None and beat[0] == agent.pid, log.read_text()
    finally:
        agent.send_signal(signal.SIGTERM)
        code = agent.wait(30)
    text = log.read_text()
    assert code == 0, text
    assert "Traceback" not in text, text
