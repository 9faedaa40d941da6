"""The agent's metrics: the sampler on a fake backend's engine, the endpoint on loopback."""

import json
import socket
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from container_compute.backends import FailureReason, WorkerSpec
from container_compute.instruments import REGISTRY
from container_compute.jobs.params import LaunchJobParams
from container_compute.jobs.registry import Role
from container_compute.metrics.sampler import (
    OUTCOMES,
    Sampler,
    Since,
    SnapshotCollector,
    outcome_label,
)
from container_compute.metrics.server import STATUS_FILE, AgentMetrics, endpoint_problem

from .fake_backend import FakeBackend, Plan, make_engine, run_until_done


def value(name: str, **labels: str) -> float:
    """A sample's value in the agent's registry (0 when it has none yet)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_since_takes_each_row_once_and_none_from_before_it_started() -> None:
    since = Since(start=100.0, lag=10.0)
    assert since.since() == 90.0
    assert since.take([("old", 95.0, "old"), ("a", 101.0, "a")]) == ["a"]
    # A commit that lands late, stamped before a row already taken, is still counted once.
    assert since.take([("a", 101.0, "a"), ("late", 100.5, "late"), ("b", 103.0, "b")]) == [
        "late",
        "b",
    ]
    assert since.since() == 93.0
    assert since.take([("a", 101.0, "a"), ("b", 103.0, "b")]) == []


def test_a_finished_tasks_outcome_is_its_reason_or_failed() -> None:
    assert outcome_label("succeeded", None) == "succeeded"
    assert outcome_label("failed", "exit-code") == "failed"
    assert outcome_label("failed", "timeout") == "timeout"
    assert outcome_label("failed", "launch-error") == "launch-error"
    assert outcome_label("failed", "something new") == "failed"
    assert {"succeeded", "failed", "timeout", "cancelled", "launch-error"} <= set(OUTCOMES)
    assert "exit-code" not in OUTCOMES


def fates(spec: WorkerSpec) -> Plan:
    """Task 0 and 1 succeed, 2 exits 3, 3 is OOM-killed; none is retried."""
    index = int(spec.env["TASK_INDEX"])
    if index == 2:
        return Plan(exit_code=3)
    if index == 3:
        return Plan(exit_code=137, reason=FailureReason.OOM)
    return Plan(seconds=0.01)


def test_the_sampler_counts_what_happens_after_it_started(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, FakeBackend(fates))
    engine.submit(LaunchJobParams(command="true", tasks=2, isolation="container"))
    run_until_done(engine)  # a job from before the agent: never counted
    collector = SnapshotCollector()
    sampler = Sampler(engine, collector)
    before = {
        outcome: value("container_compute_tasks_finished_total", outcome=outcome)
        for outcome in OUTCOMES
    }
    submitted = value("container_compute_tasks_submitted_total")
    durations = value("container_compute_task_duration_seconds_count")

    job = engine.submit(LaunchJobParams(command="true", tasks=4, isolation="container", retries=0))
    snapshot = sampler.sample()
    assert snapshot.tasks == {"pending": 4, "running": 0}
    assert snapshot.jobs["queued"] == 1 and snapshot.jobs["succeeded"] == 1
    assert snapshot.max_parallel_workers == 4
    assert value("container_compute_tasks_submitted_total") == submitted + 4

    run_until_done(engine)
    snapshot = sampler.sample()
    assert snapshot.tasks == {"pending": 0, "running": 0}
    assert snapshot.jobs["failed"] == 1
    assert snapshot.oldest_pending_seconds == 0.0
    finished = {
        outcome: value("container_compute_tasks_finished_total", outcome=outcome) - before[outcome]
        for outcome in OUTCOMES
    }
    assert finished == {**dict.fromkeys(OUTCOMES, 0.0), "succeeded": 2, "failed": 1, "oom": 1}
    assert value("container_compute_task_duration_seconds_count") == durations + 4
    # Sampled again, nothing is counted twice.
    sampler.sample()
    assert value("container_compute_tasks_submitted_total") == submitted + 4
    assert value("container_compute_task_duration_seconds_count") == durations + 4
    assert engine.ledger.job(job.id) is not None


def test_the_snapshot_says_the_workers_by_kind_and_the_oldest_wait(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, FakeBackend(), max_parallel_workers=1)
    collector = SnapshotCollector()
    sampler = Sampler(engine, collector, clock=lambda: time.time() + 3600)
    engine.registry.hold("w1", "j1", Role.ATTEMPT)
    engine.registry.hold("w2", "j1", Role.WARM)
    engine.registry.hold("w3", "", Role.READY)
    engine.submit(LaunchJobParams(command="true", tasks=1, isolation="container"))
    snapshot = sampler.sample()
    assert snapshot.workers == {
        "running": 1,
        "warm": 1,
        "spare": 0,
        "ready": 1,
        "deleting": 0,
        "template": 0,
    }
    assert 3599 < snapshot.oldest_pending_seconds < 3700  # the clock is an hour ahead
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    assert 'container_compute_workers{kind="warm"} 1.0' in text
    assert 'container_compute_tasks{state="pending"} 1.0' in text


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def scrape(port: int, wanted: str, timeout: float = 10.0) -> str:
    """The endpoint's text once it holds ``wanted`` (the last text, or "", after timeout)."""
    text, deadline = "", time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
                text = answer.read().decode()
        except OSError:
            text = ""
        if wanted in text:
            break
        time.sleep(0.1)
    return text


def test_the_endpoint_serves_the_metrics_and_no_secret(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, FakeBackend())
    engine.submit(
        LaunchJobParams(command="echo hidden-command", tasks=1, env=["TOKEN=hidden-value"])
    )
    port = free_port()
    metrics = AgentMetrics(tmp_path, f"127.0.0.1:{port}")
    try:
        metrics.start(engine)
        AgentMetrics.passed(0.01)
        text = scrape(port, "container_compute_tasks{")
        assert 'container_compute_tasks{state="pending"} 1.0' in text
        assert "container_compute_agent_heartbeat_timestamp_seconds" in text
        assert "process_resident_memory_bytes" in text
        assert "hidden" not in text and "TOKEN" not in text
        assert json.loads((tmp_path / STATUS_FILE).read_text())["error"] == ""
        assert endpoint_problem(tmp_path, f"127.0.0.1:{port}") is None
    finally:
        metrics.close()
    assert not metrics.serving and scrape(port, "container_compute", timeout=0.5) == ""


def test_a_port_in_use_is_reported_then_taken_once_it_is_free(tmp_path: Path) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    listen = f"127.0.0.1:{port}"
    metrics = AgentMetrics(tmp_path, listen)
    metrics.retry_seconds = 0.2
    try:
        metrics.start(make_engine(tmp_path, FakeBackend()))
        deadline = time.monotonic() + 10
        while endpoint_problem(tmp_path, listen) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        problem = endpoint_problem(tmp_path, listen)
        assert problem is not None and problem.startswith(f"metrics-listen {listen}: cannot")
        assert "in use" in problem and not metrics.serving
        assert endpoint_problem(tmp_path, "127.0.0.1:9790") is None  # another value: not this
        holder.close()  # the other program goes: the agent takes the port, the problem clears
        assert "container_compute_tasks{" in scrape(port, "container_compute_tasks{")
        assert endpoint_problem(tmp_path, listen) is None
    finally:
        holder.close()
        metrics.close()


def test_metrics_off_serve_nothing_and_say_no_problem(tmp_path: Path) -> None:
    metrics = AgentMetrics(tmp_path, "")
    metrics.start(make_engine(tmp_path, FakeBackend()))
    assert metrics.serve() is None and not metrics.serving
    assert endpoint_problem(tmp_path, "") is None
    metrics.close()


@pytest.mark.parametrize("text", ["", "garbage", "[]", '{"listen": 1}'])
def test_an_unreadable_status_is_no_problem(tmp_path: Path, text: str) -> None:
    (tmp_path / STATUS_FILE).write_text(text)
    assert endpoint_problem(tmp_path, "127.0.0.1:9790") is None


class _Response:
    """What pylxd's exceptions carry: a status code and a JSON error."""

    def __init__(self, status_code: int, error: str) -> None:
        self.status_code = status_code
        self._error = error

    def json(self) -> dict:
        return {"error": self._error}


def test_lxd_api_errors_are_counted_but_not_found_is_an_answer() -> None:
    import pylxd.exceptions

    from container_compute.backends.lxd.api import LXDApi

    api = LXDApi("p", object(), retry_seconds=0.0)  # type: ignore[arg-type]
    before = value("container_compute_api_errors_total", api="lxd")

    def refused() -> None:
        raise pylxd.exceptions.LXDAPIException(_Response(400, "refused"))

    def missing() -> None:
        raise pylxd.exceptions.NotFound(_Response(404, "not found"))

    for call in (refused, missing):
        with pytest.raises(pylxd.exceptions.LXDAPIException):
            api.retry("a call", call)
    assert value("container_compute_api_errors_total", api="lxd") == before + 1


def test_nova_api_errors_are_counted() -> None:
    from novaclient import exceptions as nova_exceptions

    from container_compute.backends import LaunchError
    from container_compute.backends.nova.api import NovaApi

    api = NovaApi(session=object())
    before = value("container_compute_api_errors_total", api="nova")

    def refused() -> None:
        raise nova_exceptions.Forbidden(403, "quota")

    with pytest.raises(LaunchError):
        api.call("booting a server", refused)
    assert value("container_compute_api_errors_total", api="nova") == before + 1


def test_usage_of_ended_attempts_feeds_cpu_memory_and_oom_figures(tmp_path: Path) -> None:
    from container_compute.jobs.model import TaskState

    engine = make_engine(tmp_path, FakeBackend())
    sampler = Sampler(engine, SnapshotCollector())
    ledger = engine.ledger
    job = ledger.create_job(
        {}, name="usage", backend="lxd", task_count=3, inputs=[], deadline_seconds=0
    )
    records = [
        # A task the kernel OOM-killed once, its usage known from the worker's cgroup.
        {
            "cpu-user-seconds": 1.5,
            "cpu-system-seconds": 0.25,
            "memory-peak-bytes": 300 << 20,
            "oom-kills": 1,
            "wall-seconds": 2.0,
        },
        # A task whose usage no source showed: its duration only.
        {"cpu-user-seconds": None, "memory-peak-bytes": None, "wall-seconds": 0.5},
        # A damaged record: nothing but the ledger's own times.
        {"cpu-user-seconds": "lots", "memory-peak-bytes": -1, "oom-kills": "x"},
    ]
    figures = [
        ("container_compute_task_cpu_seconds_total", {"mode": "user"}),
        ("container_compute_task_cpu_seconds_total", {"mode": "system"}),
        ("container_compute_task_memory_peak_bytes_count", {}),
        ("container_compute_task_memory_peak_bytes_sum", {}),
        ("container_compute_oom_kills_total", {}),
        ("container_compute_task_duration_seconds_count", {}),
        ("container_compute_task_duration_seconds_sum", {}),
    ]
    before = [value(name, **labels) for name, labels in figures]
    for index, record in enumerate(records):
        assert ledger.start_attempt(job, index, lambda n: f"w{n}", now=time.time()) == 1
        ledger.finish_attempt(
            job,
            index,
            1,
            {"succeeded": True, **record},
            task_state=TaskState.SUCCEEDED,
            charge=False,
            not_before=0,
            now=time.time(),
        )
    sampler.sample()

    grown = [
        value(name, **labels) - old for (name, labels), old in zip(figures, before, strict=True)
    ]
    user, system, peaks, peak_sum, kills, durations, duration_sum = grown
    assert (user, system) == (1.5, 0.25)
    assert (peaks, peak_sum) == (1, 300 << 20)
    assert kills == 1
    assert durations == 3
    assert 2.5 <= duration_sum < 3.5  # 2 + 0.5 + the damaged one's few milliseconds
