"""Jobs on an LXD cluster without LXD: placement, members lost, the host of each task."""

import csv
from pathlib import Path
from typing import Any

import pytest
import requests

from container_compute.backends import FailureReason, LaunchError, TaskOutcome, WorkerSpec
from container_compute.backends.lxd.members import LostMemberGuard, MemberBook, unreachable
from container_compute.jobs import results
from container_compute.jobs.model import JobState, TaskState
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


def test_a_list_of_members_skips_those_offline() -> None:
    members = book({"member1": "Online", "member2": "Offline", "member3": "Online"})

    assert [members.target("member2,member3", i) for i in range(2)] == ["member3", "member3"]
    with pytest.raises(LaunchError, match="no member of 'member2' is online"):
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
