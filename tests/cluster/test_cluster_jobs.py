"""One job across a REAL 3-member LXD cluster, driven over HTTPS with a pinned certificate.

LXD's scheduler spreads the workers; ``placement`` spreads them round-robin or over chosen
members; a member stopped from the host mid-job loses its attempts, which run again on the
others without spending retries; its workers are reaped once it is back. Bad endpoints,
untrusted certificates and wrong pins are refused with a clear message and launch nothing.
"""

import csv
import dataclasses
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from container_compute import actions, host
from container_compute.config import HostConfig
from container_compute.errors import ActionError
from container_compute.host import cluster
from container_compute.jobs.ledger import Ledger
from container_compute.jobs.params import (
    JobParams,
    LaunchJobParams,
    ListJobsParams,
    TaskLogsParams,
)
from container_compute.lxdclient import connect, endpoint_of

from .lab import OPENSSL, ClusterLab, run

pytestmark = pytest.mark.functional

SQUARE = 'echo $((TASK_INDEX * TASK_INDEX)) > "$RESULTS_DIR/square"; echo out-$TASK_INDEX'
MEMBERS = {"member1", "member2", "member3"}


def launch(config: HostConfig, state_dir: Path, **params: Any) -> dict[str, Any]:
    return actions.run_action("launch-job", LaunchJobParams(**params), config, state_dir)


def status(config: HostConfig, state_dir: Path, job_id: str) -> dict[str, Any]:
    return actions.run_action("job-status", JobParams(job=job_id), config, state_dir)


def joblog(state_dir: Path, job_id: str) -> list[dict[str, str]]:
    path = state_dir / "results" / job_id / "joblog.tsv"
    return list(csv.DictReader(path.read_text().splitlines(), delimiter="\t"))


def workers(config: HostConfig) -> list[tuple[str, str, str]]:
    client = connect(project=config.lxd_project, endpoint=endpoint_of(config))
    listing = client.api.instances.get(params={"recursion": "1"}).json()["metadata"]
    return sorted((i["name"], i["status"], i.get("location", "")) for i in listing)


def failed_attempts(state_dir: Path, job_id: str) -> list[dict[str, Any]]:
    """Every attempt of the job that did not succeed, with its times: what a failure was."""
    ledger = Ledger(state_dir)
    try:
        attempts = ledger.attempts(job_id)
    finally:
        ledger.close()
    return [
        {
            "task": a.index,
            "attempt": a.attempt,
            "worker": a.worker,
            "seconds": round((a.finished or time.time()) - a.started, 1),
            **{k: v for k, v in (a.outcome or {}).items() if k in ("reason", "detail", "host")},
        }
        for a in attempts
        if not (a.outcome or {}).get("succeeded")
    ]


def check_squares(state_dir: Path, job_id: str, tasks: int) -> None:
    for index in range(tasks):
        task = state_dir / "results" / job_id / str(index)
        assert (task / "files" / "square").read_text() == f"{index * index}\n"
        assert (task / "stdout").read_text() == f"out-{index}\n"
        assert (task / "exit_code").read_text().strip() == "0"


def test_a_job_spreads_over_every_member(cluster_config: HostConfig, state_dir: Path) -> None:
    begin = time.monotonic()
    result = launch(cluster_config, state_dir, command=SQUARE, tasks=9, parallelism=9, wait=True)
    elapsed = time.monotonic() - begin

    assert result["state"] == "succeeded", (result, failed_attempts(state_dir, result["job"]))
    check_squares(state_dir, result["job"], 9)
    rows = joblog(state_dir, result["job"])
    assert sorted(int(r["Seq"]) for r in rows) == list(range(1, 10))
    hosts = [r["Host"] for r in rows]
    assert set(hosts) == MEMBERS  # LXD's scheduler used every member
    job = status(cluster_config, state_dir, result["job"])
    assert job["hosts"] == {m: hosts.count(m) for m in MEMBERS}
    assert workers(cluster_config) == []
    print(f"\n9-task job over the 3-member cluster: {elapsed:.1f}s, hosts {job['hosts']}")


def test_round_robin_placement(cluster_config: HostConfig, state_dir: Path) -> None:
    result = launch(
        cluster_config, state_dir, command=SQUARE, tasks=9, placement="round-robin", wait=True
    )

    assert result["state"] == "succeeded", result
    check_squares(state_dir, result["job"], 9)
    hosts = {int(r["Seq"]) - 1: r["Host"] for r in joblog(state_dir, result["job"])}
    assert hosts == {index: f"member{index % 3 + 1}" for index in range(9)}


def test_placement_on_chosen_members(cluster_config: HostConfig, state_dir: Path) -> None:
    result = launch(
        cluster_config,
        state_dir,
        command=SQUARE,
        tasks=6,
        placement="member3, member1",
        wait=True,
    )

    assert result["state"] == "succeeded", result
    hosts = {int(r["Seq"]) - 1: r["Host"] for r in joblog(state_dir, result["job"])}
    assert hosts == {index: ("member3", "member1")[index % 2] for index in range(6)}
    assert status(cluster_config, state_dir, result["job"])["hosts"] == {
        "member1": 3,
        "member3": 3,
    }


def test_placement_on_an_unknown_member_launches_nothing(
    cluster_config: HostConfig, state_dir: Path
) -> None:
    result = launch(
        cluster_config, state_dir, command=SQUARE, tasks=2, placement="member7", wait=True
    )

    assert result["state"] == "failed"
    job = status(cluster_config, state_dir, result["job"])
    assert "placement: member7 is not a member of the cluster" in str(job["failures"])
    assert workers(cluster_config) == []


def test_a_member_lost_mid_job(
    lab: ClusterLab, cluster_config: HostConfig, state_dir: Path
) -> None:
    """member2 is stopped from the host while its tasks run: they run again elsewhere."""
    command = "sleep 12; " + SQUARE
    outcome: dict[str, Any] = {}

    def run_job() -> None:
        outcome["state"] = "raised"  # replaced by the result when launch-job returns
        outcome.update(
            launch(
                cluster_config,
                state_dir,
                command=command,
                tasks=9,
                parallelism=9,
                placement="round-robin",
                retries=0,
                wait=True,
            )
        )

    thread = threading.Thread(target=run_job, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not any(w[1:] == ("Running", "member2") for w in workers(cluster_config)):
        assert time.monotonic() < deadline and thread.is_alive(), (
            outcome,
            workers(cluster_config),
        )
        time.sleep(0.3)
    time.sleep(1.0)  # the tasks' commands are running (they sleep 12 s)
    lab.stop_member(2)
    try:
        lab.wait_offline(2)
        state = cluster.cluster_state(lab.local_client(1))
        assert state.offline == ["member2"] and state.size == 3
        assert "member2 offline" in state.summary()
        thread.join(timeout=300)
        assert not thread.is_alive()

        assert outcome["state"] == "succeeded", outcome
        job_id = outcome["job"]
        check_squares(state_dir, job_id, 9)
        rows = joblog(state_dir, job_id)
        assert sorted(int(r["Seq"]) for r in rows) == list(range(1, 10))  # each task once
        assert {r["Host"] for r in rows} <= {"member1", "member3"}
        ledger = Ledger(state_dir)
        try:
            attempts = ledger.attempts(job_id)
        finally:
            ledger.close()
        for index in range(9):
            mine = [a.outcome or {} for a in attempts if a.index == index]
            assert [o["succeeded"] for o in mine].count(True) == 1  # recorded exactly once
            # retries=0: every other attempt was one the host lost, not charged to the task
            assert {o["reason"] for o in mine if not o["succeeded"]} <= {
                "member-lost",
                "launch-error",
            }
        lost = [
            a.outcome or {} for a in attempts if (a.outcome or {}).get("reason") == "member-lost"
        ]
        assert lost and {o["host"] for o in lost} == {"member2"}, [
            (o["host"], o.get("detail")) for o in lost if o["host"] != "member2"
        ]
        report = status(cluster_config, state_dir, job_id)
        assert report["counts"]["succeeded"] == 9 and report["counts"]["failed"] == 0
        assert "member2" not in report["hosts"]
    finally:
        lab.start_member(2)  # whatever happened: the next tests need all three
    left = [w for w in workers(cluster_config) if w[2] == "member2"]
    assert left, "the lost workers are still recorded on member2 while it was away"
    reaped = actions.reap(cluster_config, state_dir)
    assert sorted(reaped) == sorted(w[0] for w in left)
    assert workers(cluster_config) == []
    assert cluster.cluster_state(lab.local_client(1)).offline == []


def test_a_task_on_a_member_is_followed_live(cluster_config: HostConfig, state_dir: Path) -> None:
    """The host does not see a member's workers: task-logs reads one through an exec in it."""
    outcome: dict[str, Any] = {}

    def run_job() -> None:
        command = "echo first; echo warm >&2; sleep 20; echo second"
        outcome.update(
            launch(
                cluster_config, state_dir, command=command, tasks=1, placement="member3", wait=True
            )
        )

    thread = threading.Thread(target=run_job, daemon=True)
    thread.start()
    seen: dict[str, Any] = {}

    def shows_first() -> bool:
        ledger = Ledger(state_dir)
        try:
            running = [a for a in ledger.attempts(ledger.jobs()[0].id) if a.state == "running"]
        except IndexError:
            return False
        finally:
            ledger.close()
        if not running:
            return False
        params = TaskLogsParams(job=running[0].job, task=0)
        seen.update(actions.run_action("task-logs", params, cluster_config, state_dir))
        return "first" in seen["output"]

    deadline = time.monotonic() + 60
    while not shows_first():
        assert time.monotonic() < deadline and thread.is_alive(), (outcome, seen)
        time.sleep(0.3)
    assert seen["state"] == "running" and seen["output"] == "first\n", seen
    assert "note" not in seen
    thread.join(timeout=120)
    assert outcome["state"] == "succeeded", outcome
    assert joblog(state_dir, outcome["job"])[0]["Host"] == "member3"
    ended = actions.run_action(
        "task-logs", TaskLogsParams(job=outcome["job"], task=0), cluster_config, state_dir
    )
    assert ended["output"] == "first\nsecond\n" and ended["state"] == "succeeded"


def test_an_oom_kill_is_told_through_the_api(cluster_config: HostConfig, state_dir: Path) -> None:
    result = launch(
        cluster_config,
        state_dir,
        command="head -c 200m /dev/zero | tail > /dev/null",
        tasks=1,
        memory="32MiB",
        wait=True,
    )

    failure = status(cluster_config, state_dir, result["job"])["failures"]["0"]
    assert failure["reason"] == "oom", failure
    assert "as LXD's API shows it" in failure["detail"]


def test_the_cluster_refuses_to_be_left_while_it_holds_instances(lab: ClusterLab) -> None:
    client = lab.local_client(1)
    counts = cluster.instance_counts(client)

    refusal = cluster.refuse_leaving({**counts, "extra": 1})

    assert refusal is not None and "cannot be turned off" in refusal
    assert cluster.cluster_state(client).size == 3
    assert cluster.join_member_config(client)  # the worker pool needs a source per member


def with_endpoint(config: HostConfig, **changes: str) -> HostConfig:
    return dataclasses.replace(config, **changes)


@pytest.mark.parametrize(
    ("what", "words"),
    [
        ("bad-endpoint", "no LXD answers at https://"),
        ("untrusted-cert", "does not trust the client certificate"),
        ("wrong-pin", "is not the pinned one"),
    ],
)
def test_bad_endpoints_are_refused_clearly(
    lab: ClusterLab,
    cluster_config: HostConfig,
    state_dir: Path,
    tmp_path: Path,
    what: str,
    words: str,
) -> None:
    if what == "bad-endpoint":
        config = with_endpoint(cluster_config, lxd_endpoint=f"https://{lab.address(1)}:8444")
    elif what == "untrusted-cert":
        run(
            OPENSSL,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(tmp_path / "k"),
            "-out",
            str(tmp_path / "c"),
            "-days",
            "1",
            "-subj",
            "/CN=stranger",
        )
        config = with_endpoint(
            cluster_config, lxd_client_cert=str(tmp_path / "c"), lxd_client_key=str(tmp_path / "k")
        )
    else:
        config = with_endpoint(cluster_config, lxd_server_cert=str(lab.client_cert))
    host.save_config(config, state_dir)
    before = workers(cluster_config)

    report = host.configure_host(config)
    with pytest.raises(ActionError) as refused:
        launch(config, state_dir, command=SQUARE, tasks=3, wait=True)

    assert not report.ok and words in report.problems[0]
    assert words in str(refused.value)
    assert workers(cluster_config) == before == []
    listed = actions.run_action("list-jobs", ListJobsParams(), config, state_dir)
    assert listed["count"] == 0
