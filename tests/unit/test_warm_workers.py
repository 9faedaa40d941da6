"""Warm workers (reuse-workers) in the engine, and the id ranges of templates, without LXD."""

import json
import os
from pathlib import Path

import pytest

from container_compute.backends import FailureReason, LaunchError, WorkerInfo, WorkerSpec
from container_compute.backends.lxd.templates import free_block, isolated_ranges, root_id_range
from container_compute.constants import IDMAP_SIZE
from container_compute.errors import ActionError
from container_compute.jobs import housekeeping
from container_compute.jobs.model import JobState
from container_compute.jobs.params import LaunchJobParams
from container_compute.jobs.scheduler import default_parallelism
from container_compute.jobs.status import job_status
from container_compute.jobs.warm import WarmPool

from .fake_backend import (
    FakeBackend,
    Plan,
    make_config,
    make_engine,
    run_until_done,
    square_plan,
)


class WarmBackend(FakeBackend):
    """The fake backend with warm workers: a worker that exists takes the next task.

    ``dirty`` names the tasks that leave their worker unfit for another one.
    """

    def __init__(self, dirty: tuple[int, ...] = (), **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.dirty = set(dirty)
        self.specs: list[WorkerSpec] = []
        self.unfit: set[str] = set()

    def start(self, spec: WorkerSpec) -> str:
        self.specs.append(spec)
        if spec.reuse and spec.worker_name in self.workers:
            if spec.worker_name in self.unfit:
                raise AssertionError(f"{spec.worker_name} was reused after a dirty task")
            return spec.worker_name
        return super().start(spec)

    def recycle(self, spec: WorkerSpec) -> str:
        if spec.task_index in self.dirty:
            self.unfit.add(spec.worker_name)
            return "a process of the task was still running"
        return ""


def test_a_jobs_tasks_run_in_at_most_parallelism_workers(tmp_path: Path) -> None:
    backend = WarmBackend()
    engine = make_engine(tmp_path, backend)
    job = engine.submit(LaunchJobParams(command="x", tasks=20, parallelism=3, reuse_workers=True))

    run_until_done(engine)

    assert engine.ledger.job(job.id).state == JobState.SUCCEEDED  # type: ignore[union-attr]
    names = {spec.worker_name for spec in backend.specs}
    assert len(backend.specs) == 20 and 1 <= len(names) <= 3
    assert all(name.startswith(f"cc-{job.id}-w") for name in names)
    assert all(spec.reuse and spec.started_at > 0 for spec in backend.specs)
    assert sorted(backend.deleted) == sorted(names)  # every worker went once the job was over
    assert backend.workers == {}


def test_a_worker_left_dirty_is_never_reused(tmp_path: Path) -> None:
    backend = WarmBackend(dirty=(0, 4))
    engine = make_engine(tmp_path, backend)
    engine.submit(LaunchJobParams(command="x", tasks=8, parallelism=1, reuse_workers=True))

    run_until_done(engine)  # WarmBackend.start raises on a dirty reuse

    assert len(backend.unfit) == 2 and backend.unfit <= set(backend.deleted)
    assert len({spec.worker_name for spec in backend.specs}) == 3
    assert backend.workers == {}


@pytest.mark.parametrize(
    "reason", [FailureReason.TIMEOUT, FailureReason.OOM, FailureReason.CANCELLED]
)
def test_a_worker_whose_task_ended_badly_is_replaced_unchecked(
    tmp_path: Path, reason: FailureReason
) -> None:
    def plan(spec: WorkerSpec) -> Plan:
        if spec.task_index == 0:
            return Plan(exit_code=0 if reason != FailureReason.OOM else 137, reason=reason)
        return square_plan(spec)

    backend = WarmBackend(plan=plan)
    engine = make_engine(tmp_path, backend)
    engine.submit(LaunchJobParams(command="x", tasks=3, parallelism=1, reuse_workers=True))

    run_until_done(engine)

    first, second = backend.specs[0].worker_name, backend.specs[1].worker_name
    assert first != second and first in backend.deleted


def test_cold_jobs_get_a_worker_per_attempt(tmp_path: Path) -> None:
    backend = WarmBackend()
    engine = make_engine(tmp_path, backend)
    engine.submit(LaunchJobParams(command="x", tasks=4, parallelism=2, isolation="container"))

    run_until_done(engine)

    assert len({spec.worker_name for spec in backend.specs}) == 4
    assert not any(spec.reuse for spec in backend.specs)


def test_the_reaper_leaves_busy_and_idle_warm_workers_alone(tmp_path: Path) -> None:
    backend = WarmBackend()
    engine = make_engine(tmp_path, backend)
    job = engine.submit(LaunchJobParams(command="x", tasks=4, reuse_workers=True))
    idle = engine.keeper.pool.take(job.id)
    engine.keeper.pool.give_back(job.id, idle)
    # A warm worker labelled with the first task it ran, now idle; and a stray one.
    backend.workers[idle] = WorkerInfo(idle, job.id, 0, 1, True)
    backend.workers["cc-stray-0-1"] = WorkerInfo("cc-stray-0-1", job.id, 9, 1, True)

    assert housekeeping.reap(engine) == ["cc-stray-0-1"]
    assert idle in backend.workers


def test_reuse_workers_is_refused_with_nova(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, FakeBackend())
    with pytest.raises(ActionError, match=r"^reuse-workers: not available with backend=nova"):
        engine.submit(LaunchJobParams(command="x", backend="nova", reuse_workers=True))


def test_the_pool_hands_out_idle_workers_then_new_names() -> None:
    pool = WarmPool()
    first, second = pool.take("j1"), pool.take("j1")
    assert first != second and first.startswith("cc-j1-w")
    assert pool.give_back("j1", first) and pool.idle() == {first}
    assert pool.take("j1") == first and pool.idle() == set()
    assert pool.give_back("j1", second)
    assert pool.close("j1") == [second]
    assert not pool.give_back("j1", first)  # the job is over: the caller deletes it
    assert WarmPool().take("j1") != first  # another engine never hands out the same name


def test_root_owns_the_range_both_files_give(tmp_path: Path) -> None:
    (tmp_path / "subuid").write_text("lxd:100000:65536\nroot:100000:1000000\nroot:5:10\n")
    (tmp_path / "subgid").write_text("root:200000:2000000\n")
    assert root_id_range(tmp_path / "subuid", tmp_path / "subgid") == (200000, 900000)
    (tmp_path / "subgid").write_text("")
    with pytest.raises(LaunchError, match="root owns no subordinate ids"):
        root_id_range(tmp_path / "subuid", tmp_path / "subgid")


def test_isolated_ranges_are_read_from_every_isolated_instance() -> None:
    idmap = json.dumps([{"Isuid": True, "Hostid": 300000, "Nsid": 0, "Maprange": 65536}])
    records = [
        {"config": {"security.idmap.isolated": "true", "volatile.idmap.next": idmap}},
        {"config": {"security.idmap.isolated": "true", "security.idmap.base": "500000"}},
        {"config": {"volatile.idmap.next": idmap}},  # not isolated: shares the default map
        {"config": {"security.idmap.isolated": "true", "volatile.idmap.next": "garbage"}},
    ]
    assert sorted(isolated_ranges(records)) == [
        (300000, 300000 + IDMAP_SIZE),
        (500000, 500000 + IDMAP_SIZE),
    ]


def test_a_free_block_is_taken_from_the_top_and_never_the_first() -> None:
    size = IDMAP_SIZE
    top = 100000 + 9 * size
    assert free_block(100000, 10 * size, []) == top
    assert free_block(100000, 10 * size, [(top + 5, top + 6)]) == top - size
    everything_but_first = [(100000 + size, 100000 + 10 * size)]
    assert free_block(100000, 10 * size, everything_but_first) is None
    assert free_block(100000, size, []) is None  # only LXD's first block


def test_the_default_parallelism_follows_the_hosts_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2})
    assert default_parallelism(make_config(max_parallel_workers=16), "lxd") == 6
    assert default_parallelism(make_config(max_parallel_workers=4), "lxd") == 4
    assert default_parallelism(make_config(max_parallel_workers=16), "nova") == 16
    remote = make_config(
        max_parallel_workers=16,
        lxd_endpoint="https://10.0.0.1:8443",
        lxd_client_cert="/c.pem",
        lxd_client_key="/k.pem",
        lxd_server_cert="/s.pem",
    )
    assert default_parallelism(remote, "lxd") == 16


def test_a_warm_attempt_left_by_a_crash_is_adopted_in_its_worker(tmp_path: Path) -> None:
    crashing = {"on": True}

    def plan(spec: WorkerSpec) -> Plan:
        return Plan(crash_in_wait=crashing["on"], stdout=f"{spec.task_index}\n")

    backend = WarmBackend(plan=plan)
    first = make_engine(tmp_path, backend)
    job = first.submit(LaunchJobParams(command="x", tasks=2, parallelism=2, reuse_workers=True))
    first.step()
    first.drain()  # both threads "died" in wait: their workers run on
    running = {a.index: a for a in first.ledger.attempts(job.id)}
    crashing["on"] = False
    second = make_engine(tmp_path, backend)
    run_until_done(second)

    assert second.ledger.job(job.id).state == JobState.SUCCEEDED  # type: ignore[union-attr]
    assert len(backend.started) == 2  # adopted in the warm workers, not started again
    adopted = backend.waited[2:]
    assert sorted(adopted) == sorted(a.worker for a in running.values())
    assert [a.attempt for a in second.ledger.attempts(job.id)] == [1, 1]
    assert backend.workers == {}  # an adopted warm worker is deleted after its task


def test_idle_workers_of_a_job_cancelled_meanwhile_are_deleted(tmp_path: Path) -> None:
    backend = WarmBackend()
    engine = make_engine(tmp_path, backend)
    job = engine.submit(LaunchJobParams(command="x", tasks=4, reuse_workers=True))
    idle = engine.keeper.pool.take(job.id)
    backend.workers[idle] = WorkerInfo(idle, job.id, 0, 1, True)
    engine.keeper.pool.give_back(job.id, idle)
    assert engine.ledger.set_job_state(job.id, JobState.CANCELLED)  # by another client

    engine.step()

    assert engine.wait_deletions(10)
    assert backend.deleted == [idle] and engine.keeper.idle() == set()


def test_sandbox_is_the_default_and_status_says_so(tmp_path: Path) -> None:
    backend = WarmBackend()
    engine = make_engine(tmp_path, backend)
    job = engine.submit(LaunchJobParams(command="x", tasks=4, parallelism=2))

    run_until_done(engine)

    assert all(spec.reuse and spec.sandbox for spec in backend.specs)
    status = job_status(engine.ledger, engine.ledger.job(job.id))  # type: ignore[arg-type]
    assert status["isolation"] == "sandbox" and "isolation-note" not in status


@pytest.mark.parametrize(
    ("params", "note"),
    [
        ({"placement": "round-robin"}, "placement puts each task on its own member"),
        ({"isolation": "container"}, ""),
    ],
)
def test_a_fresh_worker_per_task_when_asked_or_placed(
    tmp_path: Path, params: dict[str, str], note: str
) -> None:
    backend = WarmBackend()
    engine = make_engine(tmp_path, backend)
    job = engine.submit(LaunchJobParams(command="x", tasks=3, parallelism=1, **params))  # type: ignore[arg-type]

    run_until_done(engine)

    assert not any(spec.reuse or spec.sandbox for spec in backend.specs)
    assert len({spec.worker_name for spec in backend.specs}) == 3
    status = job_status(engine.ledger, engine.ledger.job(job.id))  # type: ignore[arg-type]
    assert status["isolation"] == "container"
    assert status.get("isolation-note", "").startswith(note) and bool(note) == (
        "isolation-note" in status
    )


def test_reuse_workers_contradicting_isolation_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^reuse-workers: contradicts isolation=container"):
        LaunchJobParams(command="x", reuse_workers=True, isolation="container")
