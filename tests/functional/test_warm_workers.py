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
        # /results is bound into the sandbox: it cannot be removed, only emptied.
        pytest.param("rm -rf /results 2>/dev/null; ln -s /etc /results; ", id="results a link"),
    ],
)
def test_what_a_task_leaves_is_gone_and_its_worker_goes_on(
    configured_host: HostConfig, state_dir: Path, dirty: str
) -> None:
    """Task 0 tries to leave its worker dirty: in its sandbox, nothing of it outlives it.

    Each task says whether a file an earlier task left outside /results and /tmp is there:
    never, since every task starts from the image's own root, in the same worker.
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
    assert said == ["fresh"] * 4  # no task saw what an earlier one left
    assert len(set(workers_of(state_dir, report["job"]))) == 1
    assert worker_names(configured_host) == []


def test_timeouts_retries_and_failures_in_warm_workers(
    configured_host: HostConfig, state_dir: Path
) -> None:
    """A timed-out attempt ends its sandbox only: the task is retried in the same worker."""
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
    assert "its sandbox was ended, the worker goes on" in (by_task[(1, 1)].outcome or {})["detail"]
    assert len({attempt.worker for attempt in attempts}) == 1  # one worker ran every attempt
    assert [(by_task[(2, n)].outcome or {}).get("exit-code") for n in (1, 2)] == [3, 3]
    assert worker_names(configured_host) == []
