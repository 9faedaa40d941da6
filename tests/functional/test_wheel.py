"""The wheel as users get it: built, installed in a fresh venv outside the repository, run.

Nothing here imports the source tree: every command runs the venv's own console scripts from
a directory outside the repository, with no PYTHONPATH, so a file missing from the wheel
(templates, a subpackage) fails here.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from container_compute import host
from container_compute.config import HostConfig

pytestmark = pytest.mark.functional

ROOT = Path(__file__).resolve().parents[2]
SQUARE = "echo $((TASK_INDEX * TASK_INDEX)) > /results/square"


def clean_env() -> dict[str, str]:
    """This environment without what points Python or pip at the source tree or tox's venv."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


@pytest.fixture(scope="module")
def venv_bin() -> Iterator[Path]:
    """Build the wheel and install it (with its dependencies) in a fresh venv in /tmp."""
    work = Path(tempfile.mkdtemp(prefix="cc-wheel-"))
    assert not work.is_relative_to(ROOT)
    try:
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", work, ROOT],
            check=True,
            capture_output=True,
            cwd=work,
            env=clean_env(),
        )
        (wheel,) = work.glob("container_compute-*.whl")
        subprocess.run([sys.executable, "-m", "venv", work / "venv"], check=True, env=clean_env())
        pip = work / "venv" / "bin" / "pip"
        subprocess.run(
            [pip, "install", "-q", wheel],
            check=True,
            capture_output=True,
            cwd=work,
            env=clean_env(),
        )
        yield work / "venv" / "bin"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(venv_bin: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run one of the venv's commands from a directory outside the repository, no PYTHONPATH."""
    env = clean_env()
    with tempfile.TemporaryDirectory(prefix="cc-elsewhere-") as elsewhere:
        return subprocess.run(
            [str(venv_bin / argv[0]), *argv[1:]],
            env=env,
            cwd=elsewhere,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )


def test_the_package_comes_from_the_venv_with_its_templates(venv_bin: Path) -> None:
    probe = run(
        venv_bin,
        "python",
        "-c",
        "import container_compute, container_compute.rendering as r; "
        "print(container_compute.__file__); print(','.join(r.template_names()))",
    )
    assert probe.returncode == 0, probe.stderr
    location, names = probe.stdout.split()
    assert Path(location).is_relative_to(venv_bin.parent)
    shipped = sorted(
        p.name for p in (ROOT / "src" / "container_compute" / "templates").glob("*.j2")
    )
    assert names.split(",") == shipped
    assert {"agent.service.j2", "sysctl.conf.j2", "worker-profile.yaml.j2"} <= set(shipped)


@pytest.mark.parametrize("command", ["container-compute", "container-compute-agent"])
def test_help(venv_bin: Path, command: str) -> None:
    result = run(venv_bin, command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


def test_configure_host_dry_run_json(venv_bin: Path, configured_host: HostConfig) -> None:
    result = run(
        venv_bin,
        "container-compute",
        "configure-host",
        "--dry-run",
        "--format",
        "json",
        "--lxd-project",
        configured_host.lxd_project,
        "--storage-pool",
        configured_host.storage_pool,
        "--storage-driver",
        "dir",
        "--worker-cpu",
        "",
        "--worker-memory",
        "256MiB",
        "--no-sysctl-tuning",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["project"] == configured_host.lxd_project
    assert report["pool"] == configured_host.storage_pool


def test_two_task_job(venv_bin: Path, configured_host: HostConfig) -> None:
    state_dir = Path(tempfile.mkdtemp(prefix="cc-wheel-state-"))
    try:
        host.save_config(configured_host, state_dir)
        result = run(
            venv_bin,
            "container-compute",
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
        )
        assert result.returncode == 0, result.stderr
        job = json.loads(result.stdout)
        assert job["state"] == "succeeded"
        assert job["completed-indexes"] == "0-1"
        for index in (0, 1):
            square = state_dir / "results" / job["job"] / str(index) / "files" / "square"
            assert square.read_text() == f"{index * index}\n"
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
