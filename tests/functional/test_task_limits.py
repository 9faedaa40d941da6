"""Each task's own memory and process limits in a warm worker, on a cgroup v2 host.

Where the host delegates the memory and pids controllers to its workers (cgroup v2), each
task cgroup gets the worker's limits less a margin (``constants.TASK_MEMORY_MARGIN_BYTES``,
``TASK_PIDS_MARGIN``) and memory.oom.group: a task that allocates, or forks, without end meets
its own limit, the OOM killer ends that task whole, and the worker takes the next task.

These CI machines are hybrid (every controller on cgroup v1, none in the unified hierarchy):
the tests skip here, and ``scripts/cgroup2-lab`` runs them unchanged on the real LXD of a
cgroup v2 guest. On hybrid hosts the limits stay the worker's (``test_sandbox.py``).
"""

from pathlib import Path

import pytest

from container_compute.config import HostConfig
from container_compute.constants import TASK_MEMORY_MARGIN_BYTES, TASK_PIDS_MARGIN

from .conftest import Incarnations, no_task_limits, worker_names, workers_of
from .test_sandbox import outcomes, stdout_of
from .test_warm_workers import run_job

MiB = 1024 * 1024

pytestmark = [
    pytest.mark.functional,
    pytest.mark.usefixtures("fast_engine"),
    pytest.mark.skipif(bool(no_task_limits()), reason=no_task_limits() or "-"),
]


def _task_limit(limit: int, margin: int) -> int:
    return limit - min(margin, limit // 4)


def test_a_task_out_of_memory_meets_its_own_limit_and_the_worker_goes_on(
    configured_host: HostConfig, state_dir: Path, incarnations: Incarnations, recipe: str
) -> None:
    """Task 0 allocates without end: its own cgroup's OOM ends it; task 1 runs in the worker."""
    command = (
        'if [ "$TASK_INDEX" = 0 ]; then tail /dev/zero >/dev/null & tail /dev/zero >/dev/null;'
        " fi; echo ok"
    )
    report = run_job(configured_host, state_dir, command, tasks=2, parallelism=1, memory="128MiB")

    first, second = outcomes(state_dir, report["job"])
    task_max = _task_limit(128 * MiB, TASK_MEMORY_MARGIN_BYTES)
    assert first.get("reason") == "oom" and first.get("exit-code") == 137, first
    assert first["detail"] == (
        "killed: out of memory (the task's own memory cgroup, "
        f"memory.max {task_max // MiB} MiB, counted an OOM kill)"
    )
    # Its cgroup's peak: at its own limit, never the worker's.
    assert first["usage-source"]["memory"] == "task-cgroup", first
    assert task_max - 16 * MiB <= first["memory-peak-bytes"] <= task_max, first
    assert first["oom-kills"] >= 1  # memory.oom.group: both tails and their shell (137) at once
    assert second.get("reason") is None and stdout_of(state_dir, report["job"], 1) == "ok\n"
    assert second["usage-source"]["memory"] == "task-cgroup" and second["oom-kills"] == 0
    workers = workers_of(state_dir, report["job"])
    assert len(incarnations.of(workers)) == 1  # the worker survived task 0: never replaced
    assert worker_names(configured_host) == []


def test_a_task_past_its_process_limit_fails_at_its_own_and_the_worker_goes_on(
    configured_host: HostConfig, state_dir: Path, incarnations: Incarnations, recipe: str
) -> None:
    """Task 0 starts processes until a fork fails, then exits 0: it failed at its own limit.

    Processes that live on (sleeps), not a fork bomb: a bomb's orphans fall to the sandbox's
    init, which reaps them one by one; under the lab's emulated CPU it falls behind for
    minutes (a real CPU keeps up: ``test_sandbox.py``'s bomb).
    """
    command = (
        'if [ "$TASK_INDEX" = 0 ]; then'
        " sh -c 'while :; do sleep 120 & done' 2>/dev/null; exit 0; fi; sleep 0.5; echo ok"
    )
    # Memory to spare: on cgroup v2 each process's kernel memory counts against the task too.
    report = run_job(
        configured_host, state_dir, command, tasks=2, parallelism=1, timeout="300s", memory="1GiB"
    )

    first, second = outcomes(state_dir, report["job"])
    task_max = _task_limit(configured_host.worker_processes, TASK_PIDS_MARGIN)
    assert first.get("reason") == "process-limit" and first.get("exit-code") == 0, first
    assert first["detail"].startswith(
        f"the task hit its process limit: its own pids cgroup, pids.max {task_max}, refused "
    ), first
    assert first["detail"].endswith(" forks (pids.events max)"), first
    assert second.get("reason") is None and stdout_of(state_dir, report["job"], 1) == "ok\n"
    workers = workers_of(state_dir, report["job"])
    assert len(incarnations.of(workers)) == 1
    assert worker_names(configured_host) == []
