"""Several clients of one state directory at once, on the fake backend.

Two ``launch-job --wait`` clients (threads here; each has its own engine, ledger connection
and EngineLock file, as two processes would): every job finishes exactly when its last task
does, whoever ran it; a waiting client takes the lock over when the engine's owner is done;
no attempt is ever followed by two engines.
"""

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from container_compute import actions
from container_compute.actions import job_actions
from container_compute.backends import WorkerSpec
from container_compute.jobs import results, runner
from container_compute.jobs.ledger import Ledger
from container_compute.jobs.model import JobState
from container_compute.jobs.params import LaunchJobParams
from container_compute.jobs.scheduler import EngineLock

from .fake_backend import FakeBackend, Plan, make_config, make_engine


@pytest.fixture
def backend(monkeypatch: pytest.MonkeyPatch) -> FakeBackend:
    """A fake backend every engine opened by the actions uses; fast polls and back-off."""
    fake = FakeBackend()
    monkeypatch.setattr(runner, "backend_factory_for", lambda config: lambda name: fake)
    monkeypatch.setattr(runner, "engine_options", {"backoff_base": 0.01, "backoff_cap": 0.05})
    monkeypatch.setattr(job_actions, "IN_PROCESS_POLL_SECONDS", 0.01)
    monkeypatch.setattr(job_actions, "POLL_SECONDS", 0.02)
    return fake


class Client(threading.Thread):
    """One ``launch-job --wait`` client in a thread; ``result`` is its action result."""

    def __init__(self, state_dir: Path, **params: Any) -> None:
        """Prepare a client launching a job with ``params``."""
        super().__init__(daemon=True)
        self.state_dir = state_dir
        self.params = LaunchJobParams(wait=True, **params)
        self.result: dict[str, Any] = {}

    def run(self) -> None:
        """Launch and wait."""
        self.result = actions.run_action(
            "launch-job", self.params, make_config(max_parallel_workers=8), self.state_dir
        )


def sleepy(seconds_by_job: dict[str, float]) -> Any:
    """A plan whose tasks run for a time depending on their job's command."""

    def plan(spec: WorkerSpec) -> Plan:
        return Plan(stdout=f"{spec.task_index}\n", seconds=seconds_by_job.get(spec.command, 0))

    return plan


def wait_until(predicate: Any, timeout: float) -> None:
    """Wait until ``predicate()`` or fail."""
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


def assert_exactly_once(state_dir: Path, backend: FakeBackend, job_id: str, tasks: int) -> None:
    """Each task ran once, results once, one joblog row each; no worker left or followed twice."""
    ledger = Ledger(state_dir)
    job = ledger.job(job_id)
    assert job is not None and job.state == JobState.SUCCEEDED
    attempts = ledger.attempts(job_id)
    assert sorted((a.index, a.state) for a in attempts) == [(i, "succeeded") for i in range(tasks)]
    for index in range(tasks):
        assert (results.task_dir(state_dir, job_id, index) / "stdout").read_text() == f"{index}\n"
    rows = results.joblog_path(state_dir, job_id).read_text().splitlines()[1:]
    assert sorted(int(row.split("\t")[0]) for row in rows) == list(range(1, tasks + 1))
    mine = [name for name in backend.waited if name.startswith(f"cc-{job_id}-")]
    assert len(mine) == len(set(mine)) == tasks  # no attempt followed by two engines
    ledger.close()


def test_two_waiting_clients_both_finish(tmp_path: Path, backend: FakeBackend) -> None:
    backend.plan = sleepy({"job-a": 0.2, "job-b": 0.05})
    first = Client(tmp_path, command="job-a", tasks=4, wait_timeout="60s")
    first.start()
    wait_until(lambda: backend.started, 10)  # the first client's engine runs
    second = Client(tmp_path, command="job-b", tasks=24, wait_timeout="60s")
    second.start()
    first.join(60)
    second.join(60)
    assert first.result["state"] == "succeeded", first.result
    assert second.result["state"] == "succeeded", second.result
    assert_exactly_once(tmp_path, backend, first.result["job"], 4)
    assert_exactly_once(tmp_path, backend, second.result["job"], 24)
    wait_until(lambda: not backend.workers, 10)


def test_a_waiting_client_takes_the_lock_over_and_adopts_nothing_twice(
    tmp_path: Path, backend: FakeBackend
) -> None:
    backend.plan = sleepy({"short": 0.05, "long": 0.1})
    first = Client(tmp_path, command="short", tasks=1, wait_timeout="60s")
    first.start()
    wait_until(lambda: backend.started, 10)
    # one at a time: most of these tasks are still pending when the first job is done
    second = Client(tmp_path, command="long", tasks=12, parallelism=1, wait_timeout="60s")
    second.start()
    first.join(60)
    assert first.result["state"] == "succeeded", first.result
    second.join(60)
    assert second.result["state"] == "succeeded", second.result
    assert_exactly_once(tmp_path, backend, second.result["job"], 12)
    assert_exactly_once(tmp_path, backend, first.result["job"], 1)


def test_a_waiting_client_runs_the_jobs_once_it_gets_the_lock(
    tmp_path: Path, backend: FakeBackend
) -> None:
    other = EngineLock(tmp_path)  # another engine (a client, the agent) holds the lock
    assert other.acquire()
    engine = runner.open_engine(make_config(), tmp_path)
    job = engine.submit(LaunchJobParams(command="true", tasks=3))
    waiter = threading.Thread(
        target=job_actions.wait_for_job, args=(engine, job.id, time.time() + 30), daemon=True
    )
    waiter.start()
    time.sleep(0.3)
    assert backend.started == [] and waiter.is_alive()  # it only polls while locked out
    other.release()
    waiter.join(30)
    assert not waiter.is_alive()
    assert engine.ledger.job(job.id).state == JobState.SUCCEEDED  # type: ignore[union-attr]
    assert len(backend.started) == 3
    assert EngineLock(tmp_path).acquire()  # released once it was done


def test_a_parked_engine_leaves_its_attempts_to_the_next_one(tmp_path: Path) -> None:
    backend = FakeBackend(lambda spec: Plan(hang=True, stdout=f"{spec.task_index}\n"))
    first = make_engine(tmp_path, backend)
    job_id = first.submit(
        LaunchJobParams(command="true", tasks=3, parallelism=2, isolation="container")
    ).id
    first.step()
    wait_until(lambda: len(backend.waited) == 2, 10)
    assert first.park(timeout=5)
    # a thread about to start a worker once parked leaves it unstarted
    attempt = first.ledger.start_attempt(job_id, 2, lambda n: f"cc-{job_id}-2-{n}", time.time())
    assert attempt == 1
    job = first.ledger.job(job_id)
    assert job is not None
    first.spawn(job, first.spec(job, 2, None, 1), adopt=False)
    backend.release.set()  # the two workers end: their threads neither commit nor delete
    first.drain(10)
    assert first.inflight_count() == 0
    assert len(first.ledger.attempts(job_id, state="running")) == 3
    assert sorted(backend.workers) == [f"cc-{job_id}-0-1", f"cc-{job_id}-1-1"]
    first.step()
    assert sorted(backend.started) == [f"cc-{job_id}-0-1", f"cc-{job_id}-1-1"]  # parked: no launch
    second = make_engine(tmp_path, backend)
    wait_until(lambda: not second.step(), 20)
    assert second.wait_deletions(10)
    assert second.ledger.job(job_id).state == JobState.SUCCEEDED  # type: ignore[union-attr]
    states = [(a.index, a.attempt, a.state) for a in second.ledger.attempts(job_id)]
    # 0 and 1 adopted; 2 was never started: retried without charging it
    assert states == [
        (0, 1, "succeeded"),
        (1, 1, "succeeded"),
        (2, 1, "failed"),
        (2, 2, "succeeded"),
    ]
    assert second.ledger.task(job_id, 2).charged == 0  # type: ignore[union-attr]
    assert backend.workers == {}


def test_an_engine_whose_job_is_done_keeps_the_lock_until_its_threads_end(
    tmp_path: Path, backend: FakeBackend
) -> None:
    backend.plan = lambda spec: Plan(hang=spec.command == "long")
    engine = runner.open_engine(make_config(), tmp_path)
    other = engine.submit(LaunchJobParams(command="long", tasks=1))
    mine = engine.submit(LaunchJobParams(command="short", tasks=1))
    job_actions.wait_for_job(engine, mine.id, time.time() + 30)
    assert engine.ledger.job(mine.id).state == JobState.SUCCEEDED  # type: ignore[union-attr]
    assert engine.is_inflight(other.id, 0) and not engine.launching
    assert not EngineLock(tmp_path).acquire()  # still following the other job's attempt
    backend.release.set()
    wait_until(lambda: EngineLock(tmp_path).acquire(), 10)
    assert engine.ledger.job(other.id).state == JobState.SUCCEEDED  # type: ignore[union-attr]
    assert results.joblog_path(tmp_path, other.id).exists()


def _open_ledger(state_dir: str) -> str:
    """Open (maybe create) the ledger of ``state_dir`` in another process; "" or the error."""
    try:
        Ledger(Path(state_dir)).close()
    except Exception as err:  # reported to the test, which fails on it
        return f"{type(err).__name__}: {err}"
    return ""


def test_clients_opening_a_new_state_dir_at_once_all_succeed(tmp_path: Path) -> None:
    # Seen in the functional tests: a job-status opening the ledger while launch-job created
    # it failed with "database is locked" (the switch to WAL takes an exclusive lock).
    import multiprocessing

    context = multiprocessing.get_context("fork")
    with context.Pool(6) as pool:
        for round_ in range(15):
            state_dir = str(tmp_path / f"state-{round_}")
            errors = pool.map(_open_ledger, [state_dir] * 6)
            assert [e for e in errors if e] == []
