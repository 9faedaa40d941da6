"""Warm workers (reuse-workers=true) on the REAL LXD daemon: reused only when clean."""

from pathlib import Path
from typing import Any

import pytest

from container_compute import actions
from container_compute.config import HostConfig
from container_compute.jobs.ledger import Ledger
from container_compute.jobs.params import JobParams, LaunchJobParams

from .conftest import worker_names, workers_of

pytestmark = [pytest.mark.functional, pytest.mark.usefixtures("fast_engine")]

# Fails unless /results and /tmp are empty and no task of this job is seen running.
CLEAN_START = (
    'test -z "$(ls -A /results)$(ls -A /tmp)" || { echo dirty; ls -A /results /tmp; exit 9; }; '
    "echo $TASK_INDEX > /results/index; echo junk > /tmp/junk-$TASK_INDEX; "
)


def run_job(config: HostConfig, state_dir: Path, command: str, **params: Any) -> dict[str, Any]:
    """Launch a warm job and wait for it; return its final status."""
    launched = actions.run_action(
        "launch-job",
        LaunchJobParams(command=command, reuse_workers=True, wait=True, **params),
        config,
        state_dir,
    )
    return actions.run_action("job-status", JobParams(job=launched["job"]), config, state_dir)


def test_tasks_share_workers_and_each_starts_clean(
    configured_host: HostConfig, state_dir: Path
) -> None:
    report = run_job(configured_host, state_dir, CLEAN_START + "echo ok", tasks=12, parallelism=2)

    assert report["counts"]["succeeded"] == 12, report
    used = workers_of(state_dir, report["job"])
    assert len(used) == 12 and len(set(used)) <= 2  # 12 tasks ran in the job's 2 workers
    for index in range(12):
        task = state_dir / "results" / report["job"] / str(index)
        assert (task / "files" / "index").read_text() == f"{index}\n"
        assert (task / "stdout").read_text() == "ok\n"
    assert worker_names(configured_host, templates=True) == []  # and the job's template


@pytest.mark.parametrize(
    "dirty",
    [
        pytest.param("(sleep 300 &) ; ", id="a process left running"),
        pytest.param("mount -t tmpfs tmpfs /results; ", id="a mount on results"),
        pytest.param("rm -rf /results && ln -s /etc /results; ", id="results a link"),
    ],
)
def test_a_worker_a_task_left_dirty_is_replaced(
    configured_host: HostConfig, state_dir: Path, dirty: str
) -> None:
    """Task 0 leaves its worker dirty: task 1 gets a fresh one, tasks 2 and 3 reuse that.

    Each task says whether a file an earlier task left outside /results and /tmp (not wiped
    between tasks) is there: only in a reused worker.
    """
    command = (
        CLEAN_START + "if [ -e /var/seen ]; then echo reused; else echo fresh; fi; "
        f'touch /var/seen; if [ "$TASK_INDEX" = 0 ]; then {dirty}fi'
    )
    report = run_job(configured_host, state_dir, command, tasks=4, parallelism=1)

    assert report["counts"]["succeeded"] == 4, report
    said = [
        (state_dir / "results" / report["job"] / str(i) / "stdout").read_text().split()[0]
        for i in range(4)
    ]
    assert said == ["fresh", "fresh", "reused", "reused"]  # the dirty worker was replaced
    assert len(set(workers_of(state_dir, report["job"]))) == 1  # under the same name
    assert worker_names(configured_host) == []


def test_timeouts_retries_and_failures_in_warm_workers(
    configured_host: HostConfig, state_dir: Path
) -> None:
    """A timed-out attempt's worker is replaced and the task retried; a plain failure keeps it."""
    command = (
        CLEAN_START + 'case "$TASK_INDEX:$TASK_ATTEMPT" in 1:1) sleep 60;; 2:*) exit 3;; esac; '
        "echo ok"
    )
    report = run_job(
        configured_host, state_dir, command, tasks=4, parallelism=1, timeout="3s", retries=1
    )

    assert report["counts"] == {**report["counts"], "succeeded": 3, "failed": 1}, report
    ledger = Ledger(state_dir)
    try:
        attempts = ledger.attempts(report["job"])
    finally:
        ledger.close()
    by_task = {(a.index, a.attempt): a for a in attempts}
    assert (by_task[(1, 1)].outcome or {})["reason"] == "timeout"
    assert (by_task[(1, 2)].outcome or {})["succeeded"] is True
    assert by_task[(1, 2)].worker != by_task[(1, 1)].worker  # never the timed-out worker
    assert [(by_task[(2, n)].outcome or {}).get("exit-code") for n in (1, 2)] == [3, 3]
    assert worker_names(configured_host) == []
