"""One owner per worker: its id, reaps that respect the lock and other owners, a sturdy agent.

The same on the real LXD daemon: tests/functional/test_owners.py.
"""

import multiprocessing
import threading
import time
from pathlib import Path

import pytest

from container_compute import actions, agent
from container_compute.backends import SPARE_TASK, WorkerInfo, WorkerSpec
from container_compute.constants import OWNER_FILE
from container_compute.errors import ActionError
from container_compute.jobs import housekeeping, runner
from container_compute.jobs.params import LaunchJobParams
from container_compute.jobs.scheduler import Engine, EngineLock
from container_compute.owner import OWNER_RE, UNOWNED, owner_id

from .fake_backend import FakeBackend, make_config, make_engine

THEIRS = "o0123456789ab"


def _owner_of(directory: str, queue: "multiprocessing.Queue[str]") -> None:
    queue.put(owner_id(Path(directory)))


def test_a_state_dir_has_one_owner_id_even_when_asked_at_once(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[str] = context.Queue()
    processes = [context.Process(target=_owner_of, args=(str(tmp_path), queue)) for _ in range(6)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(30)
    ids = {queue.get(timeout=5) for _ in processes}
    assert len(ids) == 1 and OWNER_RE.match(ids.pop() or "")
    assert (tmp_path / OWNER_FILE).stat().st_mode & 0o077 == 0
    assert [p.name for p in tmp_path.iterdir()] == [OWNER_FILE]  # no temporary file left


@pytest.fixture
def backend(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeBackend:
    fake = FakeBackend()
    fake.owner = owner_id(tmp_path)
    monkeypatch.setattr(runner, "backend_factory_for", lambda config: lambda name: fake)
    return fake


def test_a_reap_does_nothing_while_another_engine_holds_the_state_dir(
    tmp_path: Path, backend: FakeBackend
) -> None:
    orphan = WorkerInfo("cc-jdead-0-1", "jdead", 0, 1, True, backend.owner)
    backend.workers[orphan.name] = orphan
    holder = EngineLock(tmp_path)
    assert holder.acquire()
    try:
        assert actions.reap(make_config(), tmp_path) == []
        assert orphan.name in backend.workers
    finally:
        holder.release()
    assert actions.reap(make_config(), tmp_path) == [orphan.name]


def test_reap_owner_takes_only_that_owners_leftovers(tmp_path: Path, backend: FakeBackend) -> None:
    for name, owner in [("cc-ja-0-1", backend.owner), ("cc-jb-0-1", THEIRS), ("cc-jc-0-1", "")]:
        backend.workers[name] = WorkerInfo(name, name[3:5], 0, 1, True, owner)

    assert actions.reap(make_config(), tmp_path, owner=THEIRS) == ["cc-jb-0-1"]
    assert actions.reap(make_config(), tmp_path, owner=UNOWNED) == ["cc-jc-0-1"]
    assert sorted(backend.workers) == ["cc-ja-0-1"]


@pytest.mark.parametrize(
    ("owner", "words"), [("o12", "is not an owner id"), ("mine", "this state dir's own")]
)
def test_reap_owner_refuses_a_bad_or_own_id(
    tmp_path: Path, backend: FakeBackend, owner: str, words: str
) -> None:
    backend.workers["cc-ja-0-1"] = WorkerInfo("cc-ja-0-1", "ja", 0, 1, True, backend.owner)
    with pytest.raises(ActionError, match=f"^owner: .*{words}"):
        actions.reap(make_config(), tmp_path, owner=backend.owner if owner == "mine" else owner)
    assert list(backend.workers) == ["cc-ja-0-1"]


def test_the_agent_survives_a_pass_that_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = FakeBackend()
    monkeypatch.setattr(runner, "backend_factory_for", lambda config: lambda name: backend)
    engine = make_engine(tmp_path, backend)
    job = engine.submit(LaunchJobParams(command="true", tasks=2))
    engine.ledger.close()
    real_step = Engine.step
    failures = []

    def step(self: Engine) -> bool:
        if not failures:
            failures.append("disk full")
            raise OSError(28, "No space left on device")
        return real_step(self)

    monkeypatch.setattr(Engine, "step", step)
    stop = threading.Event()
    bound = threading.Timer(20, stop.set)  # a bound only: --once ends it when the job is done
    bound.start()
    try:
        done = agent.run_agent(tmp_path, make_config(), once=True, poll=0.01, stop=stop)
    finally:
        bound.cancel()

    assert failures == ["disk full"]
    assert done.ledger.job(job.id).state.value == "succeeded"  # type: ignore[union-attr]


def test_the_reaper_keeps_what_this_engine_holds_and_its_attempts(tmp_path: Path) -> None:
    backend = FakeBackend()
    engine = make_engine(tmp_path, backend)
    held = "cc-jheld-w1"
    backend.workers[held] = WorkerInfo(held, "jheld", None, None, True, backend.owner)
    engine.threads.deleting(held, "jheld")  # e.g. a warm worker between two tasks

    assert housekeeping.reap(engine) == []
    engine.threads.deleted(held)
    assert housekeeping.reap(engine) == [held]


def test_the_reap_command_says_when_the_agent_holds_the_state_dir(
    tmp_path: Path, backend: FakeBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    from container_compute import cli

    backend.workers["cc-jb-0-1"] = WorkerInfo("cc-jb-0-1", "jb", 0, 1, True, THEIRS)
    holder = EngineLock(tmp_path)
    assert holder.acquire()
    try:
        assert cli.main(["reap", "--state-dir", str(tmp_path), "--format", "json"]) == 0
        assert '"note": "another engine (the agent) runs this state dir' in capsys.readouterr().out
        assert cli.main(["reap", "--state-dir", str(tmp_path), "--owner", THEIRS]) == 0
    finally:
        holder.release()
    assert "cc-jb-0-1" in capsys.readouterr().out and not backend.workers
    assert cli.main(["reap", "--state-dir", str(tmp_path), "--owner", "bad"]) == 1
    assert "owner: 'bad' is not an owner id" in capsys.readouterr().err


def test_a_waiting_client_reaps_what_its_state_dir_left_before_it_lets_go(
    tmp_path: Path, backend: FakeBackend
) -> None:
    left = WorkerInfo("cc-jgone-s1", "jgone", None, None, True, backend.owner)  # e.g. a spare
    backend.workers[left.name] = left
    params = LaunchJobParams(command="true", tasks=2, wait=True)

    result = actions.run_action("launch-job", params, make_config(), tmp_path)

    assert result["state"] == "succeeded"
    assert left.name in backend.deleted and not backend.workers


def test_the_registry_follows_a_worker_from_hand_to_hand() -> None:
    from container_compute.jobs.registry import Role, WorkerRegistry

    registry = WorkerRegistry()
    registry.hold("w1", "j1", Role.SPARE)
    registry.hold_unless_held("w1", "j1", Role.DELETING)  # counted while made: still a spare
    assert registry.role("w1") == Role.SPARE
    registry.release("w1", Role.DELETING)
    assert registry.role("w1") == Role.SPARE
    registry.release("w1", Role.SPARE)
    registry.hold("w1", "j1", Role.ATTEMPT)  # taken by an attempt
    registry.hold("w1", "j1", Role.WARM)  # kept warm after it
    registry.release("w1", Role.ATTEMPT)  # the attempt's thread ends: the pool holds it
    assert registry.names(job_id="j1") == {"w1"} and registry.names(Role.ATTEMPT) == set()
    registry.release("w1", Role.WARM)
    assert registry.names() == set()


def test_an_engine_holds_its_spares_ready_and_being_made(tmp_path: Path) -> None:
    from .test_spare_workers import SpareBackend

    backend = SpareBackend()
    engine = make_engine(tmp_path, backend, max_parallel_workers=8)
    engine.submit(LaunchJobParams(command="x", tasks=10, parallelism=2, isolation="container"))
    engine.keeper.spares.top_up(engine.ledger.jobs()[0], lambda n: _spare_spec(engine, n), 2)
    end = time.monotonic() + 5
    while len(backend.prepared) < 2 and time.monotonic() < end:
        time.sleep(0.01)
    assert backend.prepared and backend.prepared <= engine.held_workers()


def _spare_spec(engine: Engine, name: str) -> "WorkerSpec":
    job = engine.ledger.jobs()[0]
    return engine.spec(job, SPARE_TASK, None, 0, (name, 0.0))
