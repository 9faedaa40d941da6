"""Spare workers on the REAL LXD daemon: made ahead of demand, each runs one task, none stays.

A cold job's next workers are created and started while its tasks run (``spare-workers``,
on by default); an attempt that finds one ready only gives it its command. They are not
attempts: job-status never counts more running tasks than the job's parallelism.
"""

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from container_compute import actions
from container_compute.config import HostConfig
from container_compute.constants import LABEL_JOB, LABEL_TASK
from container_compute.jobs.ledger import Ledger
from container_compute.jobs.params import JobParams, LaunchJobParams
from container_compute.lxdclient import connect

from .conftest import no_workers_left, worker_names, workers_of

pytestmark = [pytest.mark.functional, pytest.mark.usefixtures("fast_engine")]

SLOW_SQUARE = "sleep 1; echo $((TASK_INDEX * TASK_INDEX)) > /results/square; echo out-$TASK_INDEX"


class Watch:
    """Polls LXD and job-status while a job runs: the most spares and running tasks seen.

    A spare is a worker named like one (``cc-<job>-s...``) that no attempt names yet. The
    workers of ended attempts are deleted after their slot frees, so the total count of a
    job's workers says nothing by itself.
    """

    def __init__(self, config: HostConfig, state_dir: Path) -> None:
        self.config = config
        self.state_dir = state_dir
        self.job = ""
        self.most_spares = 0
        self.most_running = 0
        self.spare_labels: dict[str, dict[str, str]] = {}

    def look(self) -> None:
        client = connect(project=self.config.lxd_project)
        listing = client.api.instances.get(params={"recursion": "1"}).json()["metadata"]
        spares = {
            r["name"]: r["config"]
            for r in listing
            if r["config"].get(LABEL_JOB) == self.job and r["name"].startswith(f"cc-{self.job}-s")
        }
        taken = set(workers_of(self.state_dir, self.job))  # read after the listing
        self.most_spares = max(self.most_spares, len(set(spares) - taken))
        for name, labels in spares.items():
            if name not in taken:
                self.spare_labels.setdefault(name, dict(labels))
        status = actions.run_action(
            "job-status", JobParams(job=self.job), self.config, self.state_dir
        )
        self.most_running = max(self.most_running, status["counts"]["running"])


def run_watched(
    config: HostConfig, state_dir: Path, **params: Any
) -> tuple[dict[str, Any], Watch]:
    """Run a job (wait=true) in a thread while watching it; return its result and the watch."""
    watch = Watch(config, state_dir)
    result: dict[str, Any] = {}

    def run() -> None:
        result.update(
            actions.run_action(
                "launch-job",
                LaunchJobParams(wait=True, **{"isolation": "container", **params}),
                config,
                state_dir,
            )
        )

    thread = threading.Thread(target=run)
    thread.start()
    end = time.monotonic() + 300
    while thread.is_alive() and time.monotonic() < end:
        ledger = Ledger(state_dir)
        try:
            jobs = ledger.jobs()
        finally:
            ledger.close()
        if jobs:
            watch.job = jobs[0].id
            watch.look()
        time.sleep(0.2)
    thread.join(timeout=60)
    return result, watch


def test_a_cold_job_runs_in_spares_and_never_beyond_its_parallelism(
    configured_host: HostConfig, state_dir: Path
) -> None:
    result, watch = run_watched(
        configured_host, state_dir, command=SLOW_SQUARE, tasks=10, parallelism=2
    )

    assert result["state"] == "succeeded", result
    job_dir = Path(result["results-dir"])
    for index in range(10):
        assert (job_dir / str(index) / "files" / "square").read_text() == f"{index * index}\n"
        assert (job_dir / str(index) / "stdout").read_text() == f"out-{index}\n"
    used = workers_of(state_dir, result["job"])
    in_spares = [w for w in used if w.startswith(f"cc-{result['job']}-s")]
    assert len(used) == 10 and len(set(used)) == 10  # one fresh worker per task
    assert in_spares, f"no task ran in a spare: {used}"
    assert watch.most_running <= 2  # job-status: the job's parallelism
    assert 0 < watch.most_spares <= 2  # spares: at most as many as its parallelism
    # A spare is labelled with its job only, until its task's attempt takes it.
    assert watch.spare_labels and all(
        labels[LABEL_JOB] == result["job"] and LABEL_TASK not in labels
        for labels in watch.spare_labels.values()
    )
    left = [n for n in worker_names(configured_host, templates=True) if result["job"] in n]
    assert left == []  # its workers, spares and template


def test_spares_of_a_cancelled_job_are_deleted(
    configured_host: HostConfig, state_dir: Path
) -> None:
    launched: dict[str, Any] = {}

    def run() -> None:
        launched.update(
            actions.run_action(
                "launch-job",
                LaunchJobParams(
                    command="sleep 60", tasks=8, parallelism=2, wait=True, isolation="container"
                ),
                configured_host,
                state_dir,
            )
        )

    thread = threading.Thread(target=run)
    thread.start()
    end = time.monotonic() + 120
    job_id = ""
    while time.monotonic() < end:
        names = worker_names(configured_host)
        spares = [n for n in names if n.split("-")[2].startswith("s")]
        if len(spares) == 2 and len(names) == 4:
            job_id = names[0].split("-")[1]
            break
        time.sleep(0.2)
    assert job_id, f"no two spares beside two running tasks: {worker_names(configured_host)}"

    actions.run_action("cancel-job", JobParams(job=job_id), configured_host, state_dir)
    thread.join(timeout=120)

    assert launched["state"] == "cancelled", launched
    assert no_workers_left(configured_host)
