"""Workers on an LXD cluster: which member to place a worker on, and members going away.

On a cluster, LXD's scheduler places a worker when no target is given; a job's ``placement``
may ask for round-robin over the members that are online, or over a list of members.
``MemberBook`` keeps the members' states for a few seconds, answers where a worker is
(``location``), and tells a member lost: LXD counts it offline (no heartbeat for
``cluster.offline_threshold``), or it stays unreachable while calls to it fail.
"""

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pylxd
import pylxd.exceptions
import requests

from ...lxdclient import LXDUnavailableError
from .. import FailureReason, LaunchError, MemberLostError, TaskOutcome
from .api import LXDApi

ROUND_ROBIN = "round-robin"
MEMBERS_TTL_SECONDS = 3.0
GUARD_SECONDS = 4.0
# How long a member that could not take a worker is left out of round-robin placement.
SUSPECT_SECONDS = 30.0
ANSWER_TIMEOUT_SECONDS = 5.0  # for a member to tell the state of one of its workers
# While a cluster elects a new leader, LXD may list no member online at all for a while.
ELECTION_WAIT_SECONDS = 20.0
# What LXD answers about an instance on a member it cannot reach.
UNREACHABLE_MARKS = (
    "missing event connection with target cluster member",
    "is offline",
    "unable to connect to",
    "connection refused",
    "no route to host",
    "i/o timeout",
)


def unreachable(err: Exception) -> bool:
    """Tell whether an LXD error says the member holding the instance cannot be reached."""
    text = str(err).lower()
    return any(mark in text for mark in UNREACHABLE_MARKS)


class MemberBook:
    """The cluster members of one LXD endpoint (a daemon that is not clustered has none)."""

    def __init__(self, api: LXDApi) -> None:
        """Ask ``api``'s daemon about its members."""
        self.api = api
        self._lock = threading.Lock()
        self._clustered: bool | None = None
        self._states: dict[str, str] = {}
        self._read_at = 0.0
        self._locations: dict[str, str] = {}
        self._suspects: dict[str, float] = {}

    @property
    def clustered(self) -> bool:
        """Whether the daemon is a member of a cluster."""
        if self._clustered is None:
            environment = self.api.retry(
                "asking LXD whether it is clustered",
                lambda: self.api.client.host_info.get("environment", {}),
            )
            self._clustered = bool(environment.get("server_clustered"))
        return self._clustered

    def own_name(self) -> str:
        """The member name of the daemon this book asks ("" when not clustered)."""
        if not self.clustered:
            return ""
        return str(self.api.client.host_info.get("environment", {}).get("server_name", ""))

    def states(self, fresh: bool = False) -> dict[str, str]:
        """Return member name -> LXD's status of it (``Online``, ``Offline``, ``Evacuated``)."""
        if not self.clustered:
            return {}
        with self._lock:
            if fresh or time.monotonic() - self._read_at > MEMBERS_TTL_SECONDS:
                listing = self.api.retry(
                    "listing the cluster members",
                    lambda: self.api.client.api.cluster.members.get(
                        params={"recursion": "1"}
                    ).json()["metadata"],
                )
                self._states = {m["server_name"]: m.get("status", "") for m in listing}
                self._read_at = time.monotonic()
            return dict(self._states)

    def online(self) -> list[str]:
        """The members that are online and not suspected (see ``suspect``), sorted."""
        now = time.monotonic()
        with self._lock:
            suspects = {m for m, until in self._suspects.items() if until > now}
        states = self.states()
        return sorted(n for n, s in states.items() if s == "Online" and n not in suspects)

    def _wait_for_online(self, seconds: float) -> list[str]:
        """The online members once there are any, reading them afresh; [] after ``seconds``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(1.0)
            try:
                self.states(fresh=True)
            except (
                LXDUnavailableError,
                pylxd.exceptions.LXDAPIException,
                requests.exceptions.RequestException,
            ):
                continue
            online = self.online()
            if online:
                return online
        return []

    def suspect(self, member: str) -> None:
        """Leave ``member`` out of placement for a while: it could not take a worker.

        LXD goes on listing a member that died as online until its heartbeats are missed
        (``cluster.offline_threshold``); meanwhile the tasks placed there go elsewhere.
        """
        with self._lock:
            self._suspects[member] = time.monotonic() + SUSPECT_SECONDS

    def target(self, placement: str, task_index: int, worker: str = "") -> str | None:
        """Return the member a task's worker must go to; None: LXD's scheduler decides.

        The member is noted as ``worker``'s location at once: a create that fails (the
        member died) still tells which member it was.

        Raises:
            LaunchError: when the placement names a member the cluster does not have.
            MemberLostError: when none of the members it names is online now.
        """
        if not placement or not self.clustered:
            return None
        online = self.online()
        if placement == ROUND_ROBIN:
            candidates = online
        else:
            wanted = [m.strip() for m in placement.split(",") if m.strip()]
            unknown = [m for m in wanted if m not in self.states()]
            if unknown:
                raise LaunchError(
                    f"placement: {', '.join(unknown)} is not a member of the cluster "
                    f"(members: {', '.join(sorted(self.states()))})"
                )
            candidates = [m for m in wanted if m in online]
        if not candidates and placement == ROUND_ROBIN:
            candidates = self._wait_for_online(ELECTION_WAIT_SECONDS)
        if not candidates:
            raise MemberLostError("", f"placement: no member of {placement!r} is online now")
        member = candidates[task_index % len(candidates)]
        if worker:
            self.remember(worker, {"location": member})
        return member

    def remember(self, worker: str, record: dict[str, Any]) -> str:
        """Note where a worker is (from its record); return the member ("" if not clustered)."""
        location = str(record.get("location") or "")
        if not self.clustered or location in ("", "none"):
            return ""
        with self._lock:
            self._locations[worker] = location
        return location

    def look_up(self, worker: str) -> str:
        """Read where a new worker was placed and note it; "" when not clustered."""
        if not self.clustered:
            return ""
        return self.remember(worker, self.api.instance(worker) or {})

    def location(self, worker: str) -> str:
        """Return the member a worker is on, as last seen (listing the instances if unknown)."""
        if not self.clustered:
            return ""
        with self._lock:
            known = self._locations.get(worker)
        if known:
            return known
        try:
            listing = self.api.client.api.instances.get(params={"recursion": "1"}).json()
        except (pylxd.exceptions.LXDAPIException, requests.exceptions.RequestException):
            return ""
        for record in listing["metadata"]:
            if record.get("name") == worker:
                return self.remember(worker, record)
        return ""

    def lost(self, member: str, fresh: bool = False) -> bool:
        """Tell whether LXD counts ``member`` as gone (offline, or no longer a member)."""
        if not member:
            return False
        try:
            state = self.states(fresh).get(member)
        except (pylxd.exceptions.LXDAPIException, requests.exceptions.RequestException):
            return False
        return state is None or state == "Offline"

    def answers_for(self, worker: str) -> bool:
        """Tell whether the member holding ``worker`` answers for it right now.

        While a cluster elects a new leader, members' heartbeats age and LXD may list a
        healthy member as offline for a moment; a member that tells its worker's state is
        not lost.
        """
        try:
            self.api.client.api.instances[worker].state.get(timeout=ANSWER_TIMEOUT_SECONDS)
        except (pylxd.exceptions.LXDAPIException, requests.exceptions.RequestException):
            return False
        return True

    def wait_lost(self, member: str, seconds: float) -> bool:
        """Wait up to ``seconds`` for LXD to count ``member`` offline; True once it does."""
        deadline = time.monotonic() + seconds
        while True:
            if self.lost(member, fresh=True):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(2.0, max(0.1, deadline - time.monotonic())))


@contextlib.contextmanager
def told_member_lost(book: MemberBook, worker: str) -> Iterator[None]:
    """Raise a launch failure of ``worker`` as MemberLostError when its member is gone.

    Gone: unreachable, or counted offline by LXD. The member is then left out of placement
    for a while (``MemberBook.suspect``), so the task's next attempt goes elsewhere.
    """
    try:
        yield
    except MemberLostError:
        raise
    except LaunchError as err:
        member = book.location(worker) if book.clustered else ""
        if not member or not (unreachable(err) or book.lost(member, fresh=True)):
            raise
        book.suspect(member)
        raise MemberLostError(
            member, f"cluster member {member} could not take worker {worker}: {err}"
        ) from err


class LostMemberGuard:
    """A ``should_stop`` addition for one attempt: MEMBER_LOST once its member is gone."""

    def __init__(
        self, book: MemberBook, member: str, worker: str, every: float = GUARD_SECONDS
    ) -> None:
        """Watch ``member`` (nothing when it is "") and its ``worker`` every ``every`` seconds."""
        self.book = book
        self.member = member
        self.worker = worker
        self.every = every
        self._next = time.monotonic() + every

    def check(self) -> FailureReason | None:
        """Return MEMBER_LOST when the member is gone and silent; None otherwise (or not due).

        Gone: LXD counts it offline; silent: it does not answer for the worker.
        """
        if not self.member or time.monotonic() < self._next:
            return None
        self._next = time.monotonic() + self.every
        if self.book.lost(self.member) and not self.book.answers_for(self.worker):
            return FailureReason.MEMBER_LOST
        return None


def lost_outcome(member: str, why: str) -> TaskOutcome:
    """The outcome of an attempt whose cluster member went away (retried elsewhere, free)."""
    return TaskOutcome(
        None,
        FailureReason.MEMBER_LOST,
        detail=f"cluster member {member} was lost while the task ran there ({why[:200]}); "
        "the task runs again on another member without spending a retry",
        host=member,
    )
