"""Two units of one charm-formed cluster: two engines (state dirs) on the same LXD project.

Each unit's agent reaps the shared project; each runs its own job at once, over the real
3-member cluster, while both keep reaping (as update-status does). No engine touches the
other's workers: no attempt is lost to the other's reaper, and nothing is left.
"""

import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from container_compute import actions, host
from container_compute.config import HostConfig
from container_compute.jobs.ledger import Ledger
from container_compute.jobs.params import LaunchJobParams

from .test_cluster_jobs import SQUARE, check_squares, workers

pytestmark = pytest.mark.functional


@pytest.fixture
def second_state_dir(cluster_config: HostConfig) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="cc-cluster-unit2-"))
    host.save_config(cluster_config, path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_two_units_on_one_cluster_lose_no_task(
    cluster_config: HostConfig, state_dir: Path, second_state_dir: Path
) -> None:
    units = (state_dir, second_state_dir)
    results: dict[Path, dict[str, Any]] = {}

    def run(unit: Path) -> None:
        params = LaunchJobParams(command=f"sleep 4; {SQUARE}", tasks=6, parallelism=3, wait=True)
        results[unit] = actions.run_action("launch-job", params, cluster_config, unit)

    threads = [threading.Thread(target=run, args=(unit,)) for unit in units]
    for thread in threads:
        thread.start()
    reaped: list[str] = []
    while any(thread.is_alive() for thread in threads):
        for unit in units:  # each unit's update-status
            reaped += actions.reap(cluster_config, unit)
        time.sleep(0.5)

    for unit in units:
        result = results[unit]
        ledger = Ledger(unit)
        try:
            attempts = ledger.attempts(result["job"])
            failed = [(a.index, a.state, a.outcome) for a in attempts if a.state != "succeeded"]
            assert result["state"] == "succeeded", (result, failed)
            check_squares(unit, result["job"], 6)
            assert sorted(a.index for a in attempts if a.state == "succeeded") == list(range(6))
            # LXD 5.0 on these nested members now and then fails to start one of many workers
            # started at once (an uncharged launch error, tried again): never a worker lost.
            others = [a.outcome or {} for a in attempts if a.state != "succeeded"]
            assert all(
                o.get("reason") == "launch-error" and "starting worker" in o.get("detail", "")
                for o in others
            ), others
        finally:
            ledger.close()
    assert reaped == []  # nothing was left to reap: no unit ever took another's worker
    end = time.monotonic() + 60
    while workers(cluster_config) and time.monotonic() < end:
        time.sleep(0.5)
    assert workers(cluster_config) == []
