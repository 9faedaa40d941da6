"""A fresh sandbox for every task of a warm worker, on the REAL LXD daemon.

Task 0 of each job attacks its worker; task 1 then runs in the same worker and must find
nothing of it, or the worker must have survived what ended task 0.
"""

import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from container_compute.backends.lxd import helper
from container_compute.backends.lxd.hostside import init_pid_from_cgroup, volume_name
from container_compute.config import HostConfig
from container_compute.jobs.ledger import Ledger
from container_compute.lxdclient import connect

from .conftest import Incarnations, no_task_limits, worker_names, workers_of
from .test_warm_workers import run_job

pytestmark = [pytest.mark.functional, pytest.mark.usefixtures("fast_engine")]

# Task 0 writes everywhere it can, renames the host, leaves a process and reaches for the
# worker's root through /proc; every task then says what it finds of all that.
LEAVE = (
    "for d in /etc /root /usr /var/tmp /tmp /dev/shm /; do"
    " echo left > $d/cc-left 2>/dev/null; done; "
    "hostname cc-evil; "
    "nohup sleep 600 >/dev/null 2>&1 & "
    "for p in /proc/[0-9]*; do echo left > $p/root/cc-proc-root 2>/dev/null; done; "
)
LOOK = (
    "found=; for f in /etc/cc-left /root/cc-left /usr/cc-left /var/tmp/cc-left /tmp/cc-left"
    ' /dev/shm/cc-left /cc-left /cc-proc-root; do [ -e $f ] && found="$found $f"; done; '
    "pgrep -f 'sleep 600' >/dev/null 2>&1 && found=\"$found process\"; "
    "ps 2>/dev/null | grep -v grep | grep -q 'sleep 600' && found=\"$found process\"; "
    '[ "$(hostname)" = cc-evil ] && found="$found hostname"; '
    'echo "found:${found:- nothing}"; '
)


def stdout_of(state_dir: Path, job: str, index: int) -> str:
    return (state_dir / "results" / job / str(index) / "stdout").read_text()


def outcomes(state_dir: Path, job: str) -> list[dict[str, Any]]:
    """Every attempt's recorded outcome, by task then attempt."""
    ledger = Ledger(state_dir)
    try:
        return [record.outcome or {} for record in ledger.attempts(job)]
    finally:
        ledger.close()


def test_the_next_task_in_the_same_worker_finds_nothing_of_the_last(
    configured_host: HostConfig, state_dir: Path, incarnations: Incarnations, recipe: str
) -> None:
    command = LOOK + f'if [ "$TASK_INDEX" = 0 ]; then {LEAVE}fi; sleep 0.5; echo done'
    report = run_job(configured_host, state_dir, command, tasks=3, parallelism=1)

    assert report["counts"]["succeeded"] == 3, report
    peaks = [outcome["memory-peak-bytes"] for outcome in outcomes(state_dir, report["job"])]
    if recipe == "helper" or not no_task_limits():  # the helper's rusage, the cgroup's peak
        assert all(peak and peak > 0 for peak in peaks), peaks
    else:
        assert peaks == [None, None, None]
    workers = workers_of(state_dir, report["job"])
    assert len(set(workers)) == 1
    assert len(incarnations.of(workers)) == 1  # one worker, never replaced, ran all three
    for index in range(3):
        assert stdout_of(state_dir, report["job"], index) == "found: nothing\ndone\n"
    assert worker_names(configured_host) == []


@pytest.mark.parametrize(
    ("first", "reason", "limits"),
    [
        pytest.param("sleep 60", "timeout", {"timeout": "3s"}, id="timeout"),
        pytest.param(  # memory to spare: the processes, not the memory, are what runs out
            "f(){ f|f& }; f; sleep 2; exit 0",
            "process-limit",
            {"timeout": "60s", "memory": "1GiB"},
            id="fork-bomb",
        ),
        pytest.param(
            "echo 1000 > /proc/self/oom_score_adj; exec tail /dev/zero > /dev/null",
            "oom",
            {"memory": "64MiB"},
            id="oom",
        ),
    ],
)
def test_what_ends_a_task_ends_only_its_sandbox(
    configured_host: HostConfig,
    state_dir: Path,
    incarnations: Incarnations,
    first: str,
    reason: str,
    limits: dict[str, str],
) -> None:
    """Task 0 times out, fork-bombs (exiting 0) or runs out of memory; task 1 still runs there."""
    command = f"if [ \"$TASK_INDEX\" = 0 ]; then sh -c '{first}'; fi; sleep 0.5; echo ok"
    report = run_job(
        configured_host,
        state_dir,
        command,
        tasks=2,
        parallelism=1,
        **limits,
    )

    first_outcome, second_outcome = outcomes(state_dir, report["job"])
    assert first_outcome.get("reason") == reason, first_outcome
    if reason == "timeout":
        assert first_outcome["detail"].endswith("its sandbox was ended, the worker goes on")
    assert report["counts"]["failed"] == 1 and report["counts"]["succeeded"] == 1, report
    assert stdout_of(state_dir, report["job"], 1) == "ok\n", second_outcome
    workers = workers_of(state_dir, report["job"])
    assert len(incarnations.of(workers)) == 1  # the worker survived task 0: never replaced
    assert worker_names(configured_host) == []


def test_a_tasks_peak_memory_is_recorded(configured_host: HostConfig, state_dir: Path) -> None:
    """The helper's rusage: a task whose tail buffers 100 MiB shows a peak of at least that."""
    if helper.sandbox_helper() is None:
        pytest.skip(f"the sandbox helper cannot be built here (no {helper.GCC}?)")
    command = 'if [ "$TASK_INDEX" = 0 ]; then head -c 100m /dev/zero | tail >/dev/null; fi'
    # tail's buffer grows by copies: room for two of them, under a task's own limit too
    report = run_job(configured_host, state_dir, command, tasks=2, parallelism=1, memory="512MiB")

    assert report["counts"]["succeeded"] == 2, report
    big, small = (o["memory-peak-bytes"] for o in outcomes(state_dir, report["job"]))
    assert big >= 100 << 20, big
    assert 0 < small < 16 << 20, small  # the next task in the same worker: its own peak


def sandbox_inits(volume: str) -> list[int]:
    """Host pids of worker ``volume``'s processes that are pid 1 of a namespace below its own."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cgroups = re.split(r"[:/\n]", (entry / "cgroup").read_text())
            status = (entry / "status").read_text().splitlines()
        except OSError:  # not a pid, or gone
            continue
        if f"lxc.payload.{volume}" not in cgroups:
            continue
        nspid = next((line.split()[1:] for line in status if line.startswith("NSpid:")), [])
        if len(nspid) >= 3 and nspid[-1] == "1":
            found.append(int(entry.name))
    return found


def test_a_sandboxs_init_is_never_taken_for_its_workers(
    configured_host: HostConfig, state_dir: Path, recipe: str
) -> None:
    """The worker's init is found on the host while a sandbox (pid 1 of its own) runs in it.

    The host reads the task's files and the resident launcher's through that init's root.
    """
    project = configured_host.lxd_project
    seen: list[tuple[int, int, int]] = []  # (sandbox init, init found, LXD's init)

    def look_while_task_0_runs() -> None:
        client = connect(project=project)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not seen:
            for name in worker_names(configured_host):
                volume = volume_name(project, name)
                for sandbox in sandbox_inits(volume):
                    state = client.instances.get(name).state()
                    seen.append((sandbox, init_pid_from_cgroup(volume), state.pid))
            time.sleep(0.05)

    looker = threading.Thread(target=look_while_task_0_runs, daemon=True)
    looker.start()
    report = run_job(configured_host, state_dir, "sleep 3; echo ok", tasks=2, parallelism=1)
    looker.join(10)

    assert report["counts"]["succeeded"] == 2, report
    assert seen, "no sandbox was seen running"
    sandbox, found, lxd = seen[0]
    assert found == lxd != sandbox, seen
