"""Jobs on an LXD cluster without LXD: placement, members lost, the host of each task."""

import csv
from pathlib import Path
from typing import Any

import pytest
import requests

from container_compute.backends import (
    FailureReason,
    LaunchError,
    MemberLostError,
    TaskOutcome,
    WorkerSpec,
)
from container_compute.backends.lxd.members import (
    ELECTION_WAIT_SECONDS,
    LostMemberGuard,
    MemberBook,
    told_member_lost,
    unreachable,
)
from container_compute.jobs import results
from container_compute.jobs.ledger import TaskRecord
from container_compute.jobs.model import JobState, TaskState
from container_compute.jobs.outcomes import FREE_HOST_RETRIES, decide
from container_compute.jobs.params import LaunchJobParams
from container_compute.jobs.status import job_status

from .fake_backend import FakeBackend, make_engine, run_until_done


class ClusterBackend(FakeBackend):
    """The fake backend as if on a cluster: task i runs on member (i % 3 + 1).

    member2 is lost under the first attempt of every task placed there.
    """

    def wait(self, spec: WorkerSpec, task_dir: Path, should_stop: Any) -> TaskOutcome:
        member = f"member{spec.task_index % 3 + 1}"
        if member == "member2" and spec.attempt == 1:
            return TaskOutcome(None, FailureReason.MEMBER_LOST, detail="gone", host=member)
        outcome = super().wait(spec, task_dir, should_stop)
        outcome.host = "member1" if member == "member2" else member
        return outcome


def test_member_lost_attempts_run_again_uncharged_and_hosts_are_reported(
    tmp_path: Path,
) -> None:
    engine = make_engine(tmp_path, ClusterBackend())
    job_id = engine.submit(LaunchJobParams(command="echo", tasks=6, retries=0)).id

    run_until_done(engine)

    job = engine.ledger.job(job_id)
    assert job is not None and job.state == JobState.SUCCEEDED
    for index in (1, 4):
        task = engine.ledger.task(job_id, index)
        assert task is not None and task.state == TaskState.SUCCEEDED
        assert (task.attempts, task.charged) == (2, 0)
    text = results.render_joblog(engine.ledger, job_id)
    rows = list(csv.DictReader(text.splitlines(), delimiter="\t"))
    assert [r["Host"] for r in rows] == ["member1", "member1", "member3"] * 2
    status = job_status(engine.ledger, job)
    assert status["hosts"] == {"member1": 4, "member3": 2}


@pytest.mark.parametrize("placement", ["", "round-robin", "member1", "member1, member3"])
def test_placement_values(placement: str) -> None:
    assert LaunchJobParams(command="x", placement=placement).placement == placement


@pytest.mark.parametrize("placement", ["round robin", "member1;rm", ",", "m1,,m2"])
def test_bad_placement_is_refused_naming_it(placement: str) -> None:
    with pytest.raises(ValueError, match=r"^placement: "):
        LaunchJobParams(command="x", placement=placement)


class FakeInstances:
    """``client.api.instances[name].state.get()``: answers for the workers of reachable members."""

    def __init__(self, answering: set[str]) -> None:
        self.answering = answering
        self.name = ""
        self.state = self

    def __getitem__(self, name: str) -> "FakeInstances":
        self.name = name
        return self

    def get(self, timeout: float) -> None:
        assert timeout > 0
        if self.name not in self.answering:
            raise requests.exceptions.ConnectionError(f"{self.name}: EOF")


class FakeApi:
    """Just what MemberBook asks of LXDApi."""

    def __init__(
        self, members: dict[str, str] | None, answering: frozenset[str] = frozenset()
    ) -> None:
        self.members = members
        self.client = self
        self.api = self
        self.instances = FakeInstances(set(answering))

    @property
    def host_info(self) -> dict[str, Any]:
        return {"environment": {"server_clustered": self.members is not None}}

    def retry(self, what: str, call: Any) -> Any:
        if what.startswith("listing the cluster members"):
            return [{"server_name": n, "status": s} for n, s in (self.members or {}).items()]
        return call()


def book(members: dict[str, str] | None, answering: frozenset[str] = frozenset()) -> MemberBook:
    return MemberBook(FakeApi(members, answering))  # type: ignore[arg-type]


def test_a_daemon_that_is_not_clustered_ignores_placement() -> None:
    assert book(None).target("round-robin", 3) is None


def test_round_robin_goes_over_the_online_members() -> None:
    members = book({"member1": "Online", "member2": "Offline", "member3": "Online"})

    assert [members.target("round-robin", i) for i in range(4)] == [
        "member1",
        "member3",
        "member1",
        "member3",
    ]
    assert members.target("", 0) is None  # LXD's scheduler decides


def test_round_robin_waits_out_an_election_that_lists_no_member_online(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    members = book({"member1": "Offline", "member2": "Offline"})
    api: Any = members.api
    naps: list[float] = []
    elected = [False]

    def nap(seconds: float) -> None:
        naps.append(seconds)
        if len(naps) == 3 and not elected[0]:  # a new leader: the heartbeats are fresh again
            elected[0] = True
            api.members = {"member1": "Online", "member2": "Offline"}

    monkeypatch.setattr("container_compute.backends.lxd.members.time.sleep", nap)
    assert members.target("round-robin", 1) == "member1"
    assert len(naps) == 3

    members = book({"member1": "Offline", "member2": "Offline"})  # and it never ends
    naps.clear()
    clock = iter(range(0, 10_000, 5))
    monkeypatch.setattr(
        "container_compute.backends.lxd.members.time.monotonic", lambda: next(clock)
    )
    with pytest.raises(MemberLostError, match="no member of 'round-robin' is online now"):
        members.target("round-robin", 1)
    assert naps and len(naps) <= ELECTION_WAIT_SECONDS  # it waited, for a bounded time


def test_a_list_of_members_skips_those_offline() -> None:
    members = book({"member1": "Online", "member2": "Offline", "member3": "Online"})

    assert [members.target("member2,member3", i) for i in range(2)] == ["member3", "member3"]
    with pytest.raises(MemberLostError, match="no member of 'member2' is online"):
        members.target("member2", 0)
    with pytest.raises(LaunchError, match="member9 is not a member of the cluster"):
        members.target("member9", 0)


def test_the_guard_stops_an_attempt_once_its_member_is_offline() -> None:
    members = book({"member1": "Online", "member2": "Offline"})

    guard = LostMemberGuard(members, "member2", "w2", every=0)
    assert guard.check() == FailureReason.MEMBER_LOST
    assert LostMemberGuard(members, "member1", "w1", every=0).check() is None
    assert LostMemberGuard(members, "", "w", every=0).check() is None


def test_a_member_listed_offline_that_answers_for_its_worker_is_not_lost() -> None:
    """While a new leader is elected, LXD may list every member offline for a moment."""
    members = book({"member1": "Offline", "member2": "Offline"}, answering=frozenset({"w1"}))

    assert LostMemberGuard(members, "member1", "w1", every=0).check() is None
    assert LostMemberGuard(members, "member2", "w2", every=0).check() == FailureReason.MEMBER_LOST


def test_unreachable_members_are_told_by_lxd_messages() -> None:
    assert unreachable(RuntimeError("Missing event connection with target cluster member"))
    assert not unreachable(RuntimeError("Instance not found"))


def test_a_member_that_could_not_take_a_worker_is_lost_and_left_out_of_placement() -> None:
    """LXD lists a member that just died as online until its heartbeats are missed."""
    members = book({"member1": "Online", "member2": "Online", "member3": "Online"})
    assert members.target("round-robin", 1, "w1") == "member2"

    with pytest.raises(MemberLostError) as raised, told_member_lost(members, "w1"):
        raise LaunchError("creating worker w1 failed: Unable to connect to: 10.1.2.3:8443")

    assert raised.value.member == "member2"
    placed = [members.target("round-robin", i) for i in range(3)]
    assert placed == ["member1", "member3", "member1"]


def test_a_launch_error_of_a_member_that_answers_stays_a_launch_error() -> None:
    members = book({"member1": "Online", "member2": "Online"})
    assert members.target("round-robin", 1, "w1") == "member2"

    with pytest.raises(LaunchError) as raised, told_member_lost(members, "w1"):
        raise LaunchError("the launcher in worker w1 exited 1")

    assert not isinstance(raised.value, MemberLostError)
    assert members.online() == ["member1", "member2"]


class NoMemberOnline(FakeBackend):
    """Every start of the first ``lost`` attempts finds no member online (an election)."""

    def __init__(self, lost: int) -> None:
        super().__init__()
        self.lost = lost

    def start(self, spec: WorkerSpec) -> str:
        if spec.attempt <= self.lost:
            raise MemberLostError("", "placement: no member of 'round-robin' is online now")
        return super().start(spec)


def test_a_task_no_member_could_take_runs_later_without_spending_a_retry(
    tmp_path: Path,
) -> None:
    engine = make_engine(tmp_path, NoMemberOnline(lost=5))
    job_id = engine.submit(LaunchJobParams(command="echo", tasks=2, retries=0)).id

    run_until_done(engine)

    job = engine.ledger.job(job_id)
    assert job is not None and job.state == JobState.SUCCEEDED
    task = engine.ledger.task(job_id, 0)
    assert task is not None and (task.attempts, task.charged) == (6, 0)
    reasons = {(a.outcome or {}).get("reason") for a in engine.ledger.attempts(job_id)}
    assert reasons == {"member-lost", None}


def test_attempts_lost_to_the_host_are_bounded_and_backed_off(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, NoMemberOnline(lost=1000))
    job_id = engine.submit(LaunchJobParams(command="echo", tasks=1, retries=1)).id

    run_until_done(engine)

    task = engine.ledger.task(job_id, 0)
    assert task is not None and task.state == TaskState.FAILED
    # FREE_HOST_RETRIES free, then one charged (retries=1), then the last one charged
    assert (task.attempts, task.charged) == (FREE_HOST_RETRIES + 2, 2)
    attempts = engine.ledger.attempts(job_id)
    assert "were lost to the host without counting" in (attempts[-1].outcome or {})["detail"]


@pytest.mark.parametrize(
    ("lost_before", "delay"), [(0, 0.0), (1, 2.0), (2, 4.0), (3, 8.0), (8, 256.0)]
)
def test_the_first_attempt_lost_to_the_host_runs_again_at_once_the_next_ones_later(
    lost_before: int, delay: float
) -> None:
    task = TaskRecord(
        job="j1",
        index=0,
        state=TaskState.RUNNING,
        attempts=lost_before + 1,
        charged=0,
        exit_code=None,
        reason=None,
        detail="",
        input=None,
        started=None,
        finished=None,
        bytes=0,
        truncated=False,
        not_before=0.0,
    )
    outcome = TaskOutcome(None, FailureReason.MEMBER_LOST, detail="gone")

    decision = decide(task, JobState.RUNNING, outcome, retries=0, vanished=False, now=100.0)

    assert (decision.state, decision.charge, decision.not_before) == (
        TaskState.PENDING,
        False,
        100.0 + delay,
    )
