"""Ready workers between jobs, on the REAL daemon, with two owners on one project.

A sandbox job's first warm workers are ready ones its state dir made before (started,
probed, each with its own id map): the job takes them, gives them its labels and its input
directory, and they go with the job. Another state dir on the same project never takes,
reaps or deletes them, and keeps its own. Fewer wanted (``ready-workers`` lowered): the
extra ones are deleted.
"""

import dataclasses
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from container_compute import actions
from container_compute.backends.lxd import LXDBackend
from container_compute.config import HostConfig
from container_compute.constants import READY_NAME_PREFIX
from container_compute.jobs.ledger import Ledger
from container_compute.jobs.params import LaunchJobParams
from container_compute.jobs.runner import open_engine
from container_compute.owner import owner_id

from .conftest import state_dirs, worker_names

pytestmark = [pytest.mark.functional, pytest.mark.usefixtures("fast_engine")]

READS_INPUT = "cat /input/word > /results/word; hostname > /results/host"


@pytest.fixture
def ready_host(configured_host: HostConfig) -> HostConfig:
    return dataclasses.replace(configured_host, ready_workers=2)


@pytest.fixture
def two_state_dirs(ready_host: HostConfig) -> Iterator[tuple[Path, Path]]:
    with state_dirs(ready_host, "cc-ready") as (a_dir, b_dir):
        try:
            yield a_dir, b_dir
        finally:
            reap_ready(ready_host, a_dir)
            reap_ready(ready_host, b_dir)


@pytest.fixture
def input_dir() -> Iterator[Path]:
    """A directory the unprivileged workers may read (pytest's tmp_path is root's only)."""
    path = Path(tempfile.mkdtemp(prefix="cc-ready-input-"))
    path.chmod(0o755)
    (path / "word").write_text("hello\n")
    (path / "word").chmod(0o644)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def reap_ready(config: HostConfig, state_dir: Path) -> None:
    """Delete the state dir's ready workers (a test's clean-up, also when it failed)."""
    backend = LXDBackend(config, owner=owner_id(state_dir))
    for worker in backend.ready.listed():
        backend.delete(worker.name)


def ready_names(config: HostConfig, state_dir: Path) -> set[str]:
    """The made ready workers of a state dir, as LXD lists them."""
    backend = LXDBackend(config, owner=owner_id(state_dir))
    return {worker.name for worker in backend.ready.listed() if worker.made}


def job_workers(state_dir: Path, job_id: str) -> set[str]:
    ledger = Ledger(state_dir)
    try:
        return {attempt.worker for attempt in ledger.attempts(job_id)}
    finally:
        ledger.close()


def run_job(config: HostConfig, state_dir: Path, input_dir: Path) -> dict[str, object]:
    params = LaunchJobParams(
        command=READS_INPUT, tasks=6, parallelism=2, input_dir=str(input_dir), wait=True
    )
    result = actions.run_action("launch-job", params, config, state_dir)
    assert result["state"] == "succeeded", result
    return result


def test_a_job_takes_its_own_state_dirs_ready_workers_only(
    ready_host: HostConfig, two_state_dirs: tuple[Path, Path], input_dir: Path
) -> None:
    config = ready_host
    a_dir, b_dir = two_state_dirs
    first = run_job(config, a_dir, input_dir)
    # A's first job made its workers; handing over, A made two ready ones for the next.
    a_ready = ready_names(config, a_dir)
    assert len(a_ready) == 2, a_ready
    assert all(name.startswith(READY_NAME_PREFIX) for name in a_ready)
    assert not job_workers(a_dir, str(first["job"])) & a_ready

    # B, on the same project: its job, its reaps and its ready workers leave A's alone.
    b_job = run_job(config, b_dir, input_dir)
    assert actions.reap(config, b_dir) == []
    assert not job_workers(b_dir, str(b_job["job"])) & a_ready
    assert ready_names(config, a_dir) == a_ready
    b_ready = ready_names(config, b_dir)
    assert len(b_ready) == 2 and not b_ready & a_ready

    # A's next job takes A's ready workers: with the job's input directory, its sandboxes.
    second = run_job(config, a_dir, input_dir)
    taken = job_workers(a_dir, str(second["job"])) & a_ready
    assert taken == a_ready, (job_workers(a_dir, str(second["job"])), a_ready)
    results = Path(str(second["results-dir"]))
    for index in range(6):
        assert (results / str(index) / "files" / "word").read_text() == "hello\n"
    # ... and they went with the job; A has two new ones, B still its own.
    left = set(worker_names(config))
    assert not taken & left
    new_ready = ready_names(config, a_dir)
    assert len(new_ready) == 2 and not new_ready & a_ready
    assert ready_names(config, b_dir) == b_ready
    assert actions.reap(config, a_dir) == [] and actions.reap(config, b_dir) == []


def test_fewer_ready_workers_wanted_deletes_the_extra_ones(
    ready_host: HostConfig, two_state_dirs: tuple[Path, Path], input_dir: Path
) -> None:
    config = ready_host
    a_dir, b_dir = two_state_dirs
    run_job(config, a_dir, input_dir)
    run_job(config, b_dir, input_dir)
    assert len(ready_names(config, a_dir)) == 2
    b_ready = ready_names(config, b_dir)
    engine = open_engine(dataclasses.replace(config, ready_workers=1), a_dir)
    try:
        engine.keeper.keep_ready(force=True, wait=True)
        assert len(ready_names(config, a_dir)) == 1
        engine.config = dataclasses.replace(config, ready_workers=0)
        engine.keeper.ready.config = engine.config  # type: ignore[union-attr]
        engine.keeper.keep_ready(force=True, wait=True)
    finally:
        engine.ledger.close()
    assert ready_names(config, a_dir) == set()
    assert ready_names(config, b_dir) == b_ready
