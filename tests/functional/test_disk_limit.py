"""Workers' disk limit on the REAL LXD daemon: enforced on btrfs, reported where it is not.

``disk_host`` is a throwaway project with a small btrfs loop pool and worker-disk=64MiB (names
from the run prefix, purged at the end of the session with everything else of the run).
"""

import dataclasses
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pylxd
import pytest

from container_compute import actions, host
from container_compute.config import HostConfig
from container_compute.errors import ActionError
from container_compute.host import HostPaths, configure_host
from container_compute.host.images import build_busybox_image
from container_compute.jobs import results
from container_compute.jobs.ledger import Ledger
from container_compute.jobs.params import LaunchJobParams
from container_compute.lxdclient import connect, size_unenforced

from .conftest import host_paths_in, no_workers_left

pytestmark = pytest.mark.functional

# Task 0 writes 300MB into /results, far over the 64MiB worker-disk; task 1 a small file.
FILL = (
    'if [ "$TASK_INDEX" = 0 ]; then dd if=/dev/zero of=/results/big bs=1M count=300; '
    "else echo small > /results/small; fi"
)


@pytest.fixture(scope="module")
def disk_paths(tmp_path_factory: pytest.TempPathFactory) -> HostPaths:
    """Host paths whose /etc files are copies (the real /etc is never written)."""
    return host_paths_in(tmp_path_factory.mktemp("disk-host"))


@pytest.fixture(scope="module")
def disk_host(run_prefix: str, lxd_client: pylxd.Client, disk_paths: HostPaths) -> HostConfig:
    """A jobs host on a 2GiB btrfs loop pool whose workers have a 64MiB root disk."""
    name = f"{run_prefix}-disk"
    config = HostConfig(
        lxd_project=name,
        storage_pool=name,
        storage_driver="btrfs",
        storage_size="2GiB",
        worker_disk="64MiB",
        worker_cpu="",
        worker_memory="256MiB",
        default_image="busybox",
        sysctl_tuning=False,
    )
    report = configure_host(config, paths=disk_paths)
    if not report.ok:
        pytest.fail(f"configure_host failed for the btrfs disk project: {report.problems}")
    assert report.notes == [], report.notes  # btrfs enforces worker-disk: nothing to say
    assert "NOT enforced" not in report.summary
    build_busybox_image(connect(project=config.lxd_project), "busybox")
    return config


def new_state_dir(config: HostConfig) -> Path:
    """A fresh state directory with the host config saved in it (as configure-host does)."""
    path = Path(tempfile.mkdtemp(prefix="cc-disk-state-"))
    host.save_config(config, path)
    return path


@pytest.fixture
def disk_state(disk_host: HostConfig) -> Iterator[Path]:
    """A state directory of the btrfs disk host."""
    path = new_state_dir(disk_host)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def launch(config: HostConfig, state_dir: Path, **params: Any) -> dict[str, Any]:
    """Run launch-job with wait=true, a fresh worker per task (its disk is what is limited)."""
    values: dict[str, Any] = {
        "wait": True,
        "wait_timeout": "5m",
        "timeout": "2m",
        "isolation": "container",
    }
    values.update(params)
    return actions.run_action("launch-job", LaunchJobParams(**values), config, state_dir)


def outcome(state_dir: Path, job_id: str, index: int) -> dict[str, Any]:
    """The outcome.json of a task."""
    return json.loads((results.task_dir(state_dir, job_id, index) / "outcome.json").read_text())


def test_a_task_filling_its_disk_fails_as_disk_full_and_spares_the_pool(
    disk_host: HostConfig, disk_state: Path
) -> None:
    started = time.monotonic()
    result = launch(disk_host, disk_state, command=FILL, tasks=2)
    elapsed = time.monotonic() - started
    assert "disk-note" not in result  # btrfs quota groups enforce the limit
    assert result["state"] == "failed", json.dumps(result)[:3000]
    assert result["completed-indexes"] == "1" and result["failed-indexes"] == "0"
    failure = result["failures"]["0"]
    assert failure["reason"] == "disk-full", failure
    assert "limit of 64MiB" in failure["detail"], failure
    job_id = result["job"]
    ledger = Ledger(disk_state)
    try:
        attempts = ledger.attempts(job_id)
    finally:
        ledger.close()
    shown = [(a.index, a.attempt, a.state, a.outcome) for a in attempts]
    print(f"\nattempts: {shown}")
    # An attempt lost to LXD (a launch error under load) is retried free; nothing else is.
    assert failure["attempts"] - failure.get("uncharged-attempts", 0) == 1, shown
    lost = [a for a in attempts if a.outcome and a.outcome["reason"] == "launch-error"]
    assert len(attempts) - len(lost) == 2, shown
    full = outcome(disk_state, job_id, 0)
    took = full["finished-at"] - full["started-at"]
    print(f"\ndisk-full task ended in {took:.2f}s (job {elapsed:.1f}s): {full['detail']}")
    assert took < 60
    assert full["reason"] == "disk-full" and full["files-bytes"] <= 64 << 20
    small = results.task_dir(disk_state, job_id, 1) / "files" / "small"
    assert small.read_text() == "small\n"
    joblog = results.joblog_path(disk_state, job_id).read_text().splitlines()
    assert len(joblog) == 3
    assert no_workers_left(disk_host)


def test_a_jobs_own_disk_limit_is_enforced_and_over_the_hosts_refused(
    disk_host: HostConfig, disk_state: Path
) -> None:
    before = Ledger(disk_state).count_rows()
    with pytest.raises(ActionError, match=r"^disk: 128MiB is more than this host's worker-disk"):
        launch(disk_host, disk_state, command="true", disk="128MiB")
    assert Ledger(disk_state).count_rows() == before
    command = "dd if=/dev/zero of=/var/tmp/fill bs=1M count=100"  # /tmp is a tmpfs
    result = launch(disk_host, disk_state, command=command, disk="40MiB")
    assert result["state"] == "failed", json.dumps(result)[:3000]
    failure = result["failures"]["0"]
    assert failure["reason"] == "disk-full" and "limit of 40MiB" in failure["detail"], failure
    assert no_workers_left(disk_host)


@pytest.fixture
def jobs_state(configured_host: HostConfig) -> Iterator[Path]:
    """A state directory of the dir-pool jobs host."""
    path = new_state_dir(configured_host)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_dir_pool_reports_that_worker_disk_is_not_enforced(
    configured_host: HostConfig,
    jobs_state: Path,
    lxd_client: pylxd.Client,
    tmp_path: Path,
    run_prefix: str,
) -> None:
    pool = lxd_client.api.storage_pools[configured_host.storage_pool].get().json()["metadata"]
    if size_unenforced("dir", pool["config"]["source"]) is None:
        pytest.skip("this dir pool's filesystem has project quotas: LXD enforces sizes on it")
    report = configure_host(configured_host, paths=host_paths_in(tmp_path), dry_run=True)
    assert report.ok, report.problems
    note = next(n for n in report.notes if n.startswith("worker-disk is NOT enforced"))
    assert f"dir pool {configured_host.storage_pool}" in note and "10GiB" in note
    assert report.summary.endswith("; worker-disk 10GiB NOT enforced on this dir pool")
    # A status check of a dir pool not created yet says the same (nothing is created).
    new_pool = dataclasses.replace(configured_host, storage_pool=f"{run_prefix}-dirnew")
    planned = configure_host(new_pool, paths=host_paths_in(tmp_path), dry_run=True)
    assert any(n.startswith("worker-disk is NOT enforced on dir pool") for n in planned.notes)
    assert f"{run_prefix}-dirnew" not in [p.name for p in lxd_client.storage_pools.all()]
    # LXD really ignores the size there: 100MB written under a 64MiB limit succeed.
    command = "dd if=/dev/zero of=/results/big bs=1M count=100"
    result = launch(configured_host, jobs_state, command=command, disk="64MiB")
    assert result["state"] == "succeeded", json.dumps(result)[:3000]
    assert result["disk-note"].startswith(
        f"disk 64MiB is not enforced on storage pool {configured_host.storage_pool}: "
    )
    assert "no project quotas" in result["disk-note"]
