"""The scheduler on a fake backend: states, caps, retries, deadline, cancel, resume, reaping."""

import os
import threading
import time
from pathlib import Path

import pytest

from container_compute import actions
from container_compute.backends import FailureReason, WorkerSpec
from container_compute.errors import ActionError
from container_compute.jobs import housekeeping, results, runner
from container_compute.jobs import status as job_status_module
from container_compute.jobs.ledger import Ledger
from container_compute.jobs.model import JobState, TaskState
from container_compute.jobs.outcomes import FREE_LAUNCH_RETRIES, backoff_delay
from container_compute.jobs.params import JobParams, LaunchJobParams
from container_compute.jobs.scheduler import Engine

from .fake_backend import Crash, FakeBackend, Plan, make_engine, run_until_done, square_plan

# Simulated crashes end engine threads with fake_backend.Crash, as a dying agent would.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:(?s).*fake_backend\.Crash:pytest.PytestUnhandledThreadExceptionWarning"
)


def launch(engine: Engine, **params: object) -> str:
    """Submit a job; a fresh worker per task unless asked (the engine's own mechanics)."""
    values: dict[str, object] = {"command": "echo $TASK_INDEX", "isolation": "container"}
    values.update(params)
    return engine.submit(LaunchJobParams(**values)).id  # type: ignore[arg-type]


def test_backoff_schedule_doubles_from_10s_to_6min() -> None:
    assert [backoff_delay(n) for n in range(1, 9)] == [10, 20, 40, 80, 160, 320, 360, 360]
    assert backoff_delay(3, base=1, cap=100) == 4


def test_sixteen_tasks_succeed_with_results_and_exactly_once_joblog(tmp_path: Path) -> None:
    backend = FakeBackend()
    engine = make_engine(tmp_path, backend)
    job_id = launch(engine, tasks=16, name="squares")
    assert engine.ledger.job(job_id).state == JobState.QUEUED  # type: ignore[union-attr]
    run_until_done(engine)
    job = engine.ledger.job(job_id)
    assert job is not None and job.state == JobState.SUCCEEDED
    assert engine.ledger.task_counts(job_id) == {
        "pending": 0,
        "running": 0,
        "succeeded": 16,
        "failed": 0,
    }
    for index in range(16):
        directory = results.task_dir(tmp_path, job_id, index)
        assert (directory / "files" / "square").read_text() == f"{index * index}\n"
        assert (directory / "stdout").read_text() == f"task {index}\n"
        assert (directory / "outcome.json").exists()
    lines = results.joblog_path(tmp_path, job_id).read_text().splitlines()
    assert lines[0].split("\t") == list(results.JOBLOG_COLUMNS)
    assert sorted(int(line.split("\t")[0]) for line in lines[1:]) == list(range(1, 17))
    # regenerating never duplicates
    results.write_joblog(tmp_path, engine.ledger, job_id)
    assert len(results.joblog_path(tmp_path, job_id).read_text().splitlines()) == 17
    assert sorted(backend.deleted) == sorted(backend.started)
    assert backend.workers == {}
    assert not [p for p in results.job_dir(tmp_path, job_id).iterdir() if p.name.startswith(".")]


def test_environment_and_inputs_reach_the_worker(tmp_path: Path) -> None:
    seen: dict[int, WorkerSpec] = {}

    def plan(spec: WorkerSpec) -> Plan:
        seen[spec.task_index] = spec
        return Plan()

    engine = make_engine(tmp_path, FakeBackend(plan))
    job_id = launch(
        engine,
        inputs="alpha\n\nbeta\ngamma\n",
        env=["A=1", "B=x=y"],
        cpu="1",
        memory="64MiB",
        timeout="90s",
    )
    run_until_done(engine)
    assert sorted(seen) == [0, 1, 2]
    assert seen[1].env == {
        "A": "1",
        "B": "x=y",
        "TASK_INDEX": "1",
        "TASK_COUNT": "3",
        "JOB_ID": job_id,
        "RESULTS_DIR": "/results",
        "TASK_INPUT": "beta",
        "TASK_ATTEMPT": "1",
    }
    assert (seen[2].cpu, seen[2].memory, seen[2].timeout_seconds) == ("1", "64MiB", 90)
    assert seen[0].image == "busybox"
    assert seen[0].worker_name == f"cc-{job_id}-0-1"


@pytest.mark.parametrize(
    ("parallelism", "max_parallel", "expected"), [(2, 4, 2), (0, 3, 3), (8, 2, 2)]
)
def test_parallelism_caps(
    tmp_path: Path, parallelism: int, max_parallel: int, expected: int
) -> None:
    backend = FakeBackend(lambda spec: Plan(seconds=0.05))
    engine = make_engine(tmp_path, backend, max_parallel_workers=max_parallel)
    launch(engine, tasks=10, parallelism=parallelism)
    run_until_done(engine)
    assert backend.max_running == expected


def test_host_cap_holds_over_two_jobs(tmp_path: Path) -> None:
    backend = FakeBackend(lambda spec: Plan(seconds=0.05))
    engine = make_engine(tmp_path, backend, max_parallel_workers=3)
    launch(engine, tasks=6, parallelism=3)
    launch(engine, tasks=6, parallelism=3)
    run_until_done(engine)
    assert backend.max_running == 3


def test_failed_task_is_retried_with_backoff_then_succeeds(tmp_path: Path) -> None:
    def plan(spec: WorkerSpec) -> Plan:
        if spec.task_index == 1 and spec.attempt < 3:
            return Plan(exit_code=7, stderr="boom\n")
        return square_plan(spec)

    engine = make_engine(tmp_path, FakeBackend(plan))
    job_id = launch(engine, tasks=3, retries=2)
    run_until_done(engine)
    assert engine.ledger.job(job_id).state == JobState.SUCCEEDED  # type: ignore[union-attr]
    attempts = engine.ledger.attempts(job_id)
    of_task_1 = [a for a in attempts if a.index == 1]
    assert [a.state for a in of_task_1] == ["failed", "failed", "succeeded"]
    # each retry waited at least its back-off (10 ms, then 20 ms) after the failure
    assert of_task_1[1].started - of_task_1[0].finished >= 0.01  # type: ignore[operator]
    assert of_task_1[2].started - of_task_1[1].finished >= 0.02  # type: ignore[operator]
    assert engine.ledger.task(job_id, 1).charged == 2  # type: ignore[union-attr]


def test_exhausted_retries_fail_the_job_but_others_run_to_the_end(tmp_path: Path) -> None:
    def plan(spec: WorkerSpec) -> Plan:
        if spec.task_index in (2, 5):
            return Plan(exit_code=3, stderr="bad\n")
        return Plan(seconds=0.02)

    engine = make_engine(tmp_path, FakeBackend(plan), max_parallel_workers=2)
    job_id = launch(engine, tasks=8, retries=1)
    run_until_done(engine)
    assert engine.ledger.job(job_id).state == JobState.FAILED  # type: ignore[union-attr]
    assert engine.ledger.task_indexes(job_id, TaskState.SUCCEEDED) == [0, 1, 3, 4, 6, 7]
    failed = engine.ledger.tasks(job_id, state=TaskState.FAILED)
    assert [(t.index, t.attempts, t.exit_code, t.reason) for t in failed] == [
        (2, 2, 3, "exit-code"),
        (5, 2, 3, "exit-code"),
    ]
    status = job_status_module.job_status(engine.ledger, engine.ledger.job(job_id))  # type: ignore[arg-type]
    assert status["completed-indexes"] == "0-1,3-4,6-7"
    assert status["failed-indexes"] == "2,5"
    assert status["failures"]["5"]["exit-code"] == 3
    assert status["progress"] == "100.0%"


def test_timeout_and_oom_reasons_are_recorded(tmp_path: Path) -> None:
    def plan(spec: WorkerSpec) -> Plan:
        return {
            0: Plan(exit_code=137, reason=FailureReason.OOM),
            1: Plan(exit_code=124, reason=FailureReason.TIMEOUT),
        }.get(spec.task_index, Plan())

    engine = make_engine(tmp_path, FakeBackend(plan))
    job_id = launch(engine, tasks=3)
    run_until_done(engine)
    reasons = {t.index: t.reason for t in engine.ledger.tasks(job_id)}
    assert reasons == {0: "oom", 1: "timeout", 2: None}


def test_launch_error_is_a_failure_with_its_message(tmp_path: Path) -> None:
    backend = FakeBackend(lambda spec: Plan(launch_error="pool is full"))
    engine = make_engine(tmp_path, backend)
    job_id = launch(engine, tasks=2)
    run_until_done(engine)
    task = engine.ledger.task(job_id, 0)
    assert task is not None and (task.reason, task.detail) == ("launch-error", "pool is full")
    assert task.attempts == 1 + FREE_LAUNCH_RETRIES and task.charged == 1
    assert engine.ledger.job(job_id).state == JobState.FAILED  # type: ignore[union-attr]


def test_a_passing_launch_error_is_retried_without_spending_retries(tmp_path: Path) -> None:
    def plan(spec: WorkerSpec) -> Plan:
        if spec.task_index == 0 and spec.attempt == 1:
            return Plan(launch_error="newuidmap: uid range not allowed")
        return Plan(stdout="ok\n")

    engine = make_engine(tmp_path, FakeBackend(plan))
    job_id = launch(engine, tasks=2, retries=0)
    run_until_done(engine)
    task = engine.ledger.task(job_id, 0)
    assert task is not None and task.state == TaskState.SUCCEEDED
    assert (task.attempts, task.charged) == (2, 0)
    assert engine.ledger.job(job_id).state == JobState.SUCCEEDED  # type: ignore[union-attr]


def test_deadline_stops_running_and_fails_pending_tasks(tmp_path: Path) -> None:
    clock = {"now": 1000.0}
    backend = FakeBackend(lambda spec: Plan(hang=True))
    engine = Engine(
        tmp_path,
        make_engine(tmp_path, backend).config,
        lambda _n: backend,
        clock=lambda: clock["now"],
    )
    job_id = launch(engine, tasks=6, parallelism=2, deadline="1m")
    engine.step()
    assert engine.inflight_count(job_id) == 2
    clock["now"] += 61
    run_until_done(engine)
    job = engine.ledger.job(job_id)
    assert job is not None and job.state == JobState.FAILED
    tasks = engine.ledger.tasks(job_id)
    assert {t.reason for t in tasks} == {"deadline"}
    assert sum(1 for t in tasks if t.attempts == 1) == 2
    assert backend.workers == {}


def test_cancel_stops_workers_and_keeps_pending_tasks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = FakeBackend(lambda spec: Plan(hang=True))
    engine = make_engine(tmp_path, backend)
    monkeypatch.setattr(runner, "backend_factory_for", lambda config: lambda name: backend)
    job_id = launch(engine, tasks=6, parallelism=2)
    engine.step()
    assert engine.inflight_count() == 2
    stop = threading.Event()
    driver = threading.Thread(target=engine.run, kwargs={"poll": 0.01, "stop": stop})
    driver.start()
    try:
        result = actions.run_action("cancel-job", JobParams(job=job_id), engine.config, tmp_path)
    finally:
        driver.join(10)
        stop.set()
    assert result["state"] == "cancelled"
    assert engine.ledger.job(job_id).state == JobState.CANCELLED  # type: ignore[union-attr]
    counts = engine.ledger.task_counts(job_id)
    assert counts == {"pending": 4, "running": 0, "succeeded": 0, "failed": 2}
    assert {t.reason for t in engine.ledger.tasks(job_id, state=TaskState.FAILED)} == {"cancelled"}
    assert backend.workers == {}
    with pytest.raises(ActionError, match="already finished"):
        actions.run_action("cancel-job", JobParams(job=job_id), engine.config, tmp_path)


def test_cancel_without_a_running_engine_deletes_left_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = FakeBackend(lambda spec: Plan(crash_in_wait=True))
    engine = make_engine(tmp_path, backend)
    monkeypatch.setattr(runner, "backend_factory_for", lambda config: lambda name: backend)
    job_id = launch(engine, tasks=2)
    engine.step()
    engine.drain()
    assert len(backend.workers) == 2
    result = actions.run_action("cancel-job", JobParams(job=job_id), engine.config, tmp_path)
    assert result["workers-deleted"] == 2
    assert backend.workers == {}
    assert engine.ledger.attempts(job_id, state="running") == []


def test_resume_adopts_running_workers_after_a_crash(tmp_path: Path) -> None:
    crashing = {"on": True}

    def plan(spec: WorkerSpec) -> Plan:
        return Plan(crash_in_wait=crashing["on"], stdout=f"{spec.task_index}\n")

    backend = FakeBackend(plan)
    first = make_engine(tmp_path, backend)
    job_id = launch(first, tasks=4, parallelism=4)
    first.step()
    first.drain()  # every thread "died" in wait: workers run on, the ledger says running
    assert len(backend.workers) == 4
    crashing["on"] = False
    second = make_engine(tmp_path, backend)
    run_until_done(second)
    assert second.ledger.job(job_id).state == JobState.SUCCEEDED  # type: ignore[union-attr]
    assert len(backend.started) == 4  # adopted, not started again
    assert [a.attempt for a in second.ledger.attempts(job_id)] == [1, 1, 1, 1]


def test_resume_retries_when_the_worker_vanished_without_charging(tmp_path: Path) -> None:
    def plan(spec: WorkerSpec) -> Plan:
        return Plan(crash_in_start=spec.attempt == 1)

    backend = FakeBackend(plan)
    first = make_engine(tmp_path, backend)
    job_id = launch(first, tasks=2, retries=0)
    first.step()
    first.drain()
    assert backend.workers == {}
    second = make_engine(tmp_path, backend)
    run_until_done(second)
    assert second.ledger.job(job_id).state == JobState.SUCCEEDED  # type: ignore[union-attr]
    first_attempts = [a for a in second.ledger.attempts(job_id) if a.attempt == 1]
    assert {a.outcome["detail"] for a in first_attempts} == {"worker vanished"}  # type: ignore[index]
    assert {t.charged for t in second.ledger.tasks(job_id)} == {0}


def test_adopted_worker_whose_command_never_ran_is_retried_without_charging(
    tmp_path: Path,
) -> None:
    phase = {"first": True}

    def plan(spec: WorkerSpec) -> Plan:
        if phase["first"]:
            return Plan(crash_in_wait=True)
        return Plan(never_ran=spec.attempt == 1)

    backend = FakeBackend(plan)
    first = make_engine(tmp_path, backend)
    job_id = launch(first, tasks=1, retries=0)
    first.step()
    first.drain()
    phase["first"] = False
    second = make_engine(tmp_path, backend)
    run_until_done(second)
    assert second.ledger.job(job_id).state == JobState.SUCCEEDED  # type: ignore[union-attr]
    attempts = second.ledger.attempts(job_id)
    assert [(a.attempt, a.state) for a in attempts] == [(1, "failed"), (2, "succeeded")]
    assert attempts[0].outcome["detail"].startswith("worker vanished in a crash")  # type: ignore[index]
    assert second.ledger.task(job_id, 0).charged == 0  # type: ignore[union-attr]


def test_crash_between_rename_and_commit_records_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = FakeBackend()
    first = make_engine(tmp_path, backend)
    job_id = launch(first, tasks=3)

    def crash(*args: object, **kwargs: object) -> bool:
        raise Crash("after rename")

    monkeypatch.setattr(first.ledger, "finish_attempt", crash)
    first.step()
    first.drain()
    assert all(results.task_dir(tmp_path, job_id, i).is_dir() for i in range(3))
    assert len(backend.workers) == 3  # not deleted: the outcome was never committed
    second = make_engine(tmp_path, backend)
    run_until_done(second)
    attempts = second.ledger.attempts(job_id)
    assert [(a.index, a.attempt, a.state) for a in attempts] == [
        (0, 1, "succeeded"),
        (1, 1, "succeeded"),
        (2, 1, "succeeded"),
    ]
    joblog = results.joblog_path(tmp_path, job_id).read_text().splitlines()
    assert len(joblog) == 4
    assert backend.workers == {}


def test_a_second_commit_of_an_attempt_changes_nothing(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, FakeBackend())
    job_id = launch(engine, tasks=1)
    run_until_done(engine)
    again = engine.ledger.finish_attempt(
        job_id,
        0,
        1,
        {"succeeded": False, "reason": "exit-code"},
        task_state=TaskState.FAILED,
        charge=True,
        not_before=0,
        now=time.time(),
    )
    assert again is False
    assert engine.ledger.task(job_id, 0).state == TaskState.SUCCEEDED  # type: ignore[union-attr]


def test_reaper_deletes_workers_of_no_live_attempt(tmp_path: Path) -> None:
    backend = FakeBackend(lambda spec: Plan(hang=True))
    engine = make_engine(tmp_path, backend)
    job_id = launch(engine, tasks=1)
    engine.step()
    time.sleep(0.05)
    live = f"cc-{job_id}-0-1"
    from container_compute.backends import WorkerInfo

    mine, theirs = engine.owner, "o0123456789ab"
    for name, job, attempt, owner in [
        ("cc-jdeadbeef-0-1", "jdeadbeef", 1, mine),
        (f"cc-{job_id}-0-7", job_id, 7, mine),
        # Made before owners were labelled: ours when we know its job, else left alone.
        (f"cc-{job_id}-0-8", job_id, 8, ""),
        ("cc-jold-0-1", "jold", 1, ""),
        # Another state dir's, on the same project: never touched, whatever its job.
        ("cc-jfeed-0-1", "jfeed", 1, theirs),
        (f"cc-{job_id}-0-9", job_id, 9, theirs),
    ]:
        backend.workers[name] = WorkerInfo(name, job, 0, attempt, True, owner)
    backend.workers["cc-nolabel"] = WorkerInfo("cc-nolabel", None, None, None, False, mine)
    deleted = housekeeping.reap(engine)
    assert sorted(deleted) == sorted(
        ["cc-jdeadbeef-0-1", f"cc-{job_id}-0-7", "cc-nolabel", f"cc-{job_id}-0-8"]
    )
    left = sorted(backend.workers)
    assert left == sorted([live, "cc-jold-0-1", "cc-jfeed-0-1", f"cc-{job_id}-0-9"])
    backend.release.set()
    run_until_done(engine)
    assert housekeeping.reap(engine) == []


class NoProjectYet(FakeBackend):
    """An LXD backend on a host before configure-host: its project does not exist."""

    reaped_extras = False

    def job_finished(self, job_id: str) -> None:
        pass

    def reap_extras(self, live_jobs: set[str], known_jobs: set[str]) -> list[str]:
        self.reaped_extras = True
        raise RuntimeError("Project not found")

    def reap_owner(self, owner: str) -> list[str]:
        return []


def test_a_backend_that_cannot_be_reaped_does_not_stop_the_others(tmp_path: Path) -> None:
    lxd, nova = NoProjectYet(), FakeBackend()
    config = make_engine(tmp_path, nova, nova_image="busybox").config
    engine = Engine(tmp_path, config, {"lxd": lxd, "nova": nova}.__getitem__)
    job_id = launch(engine, tasks=1, backend="nova")
    run_until_done(engine)
    from container_compute.backends import WorkerInfo

    mine = engine.owner
    nova.workers["cc-jdeadbeef-0-1"] = WorkerInfo(
        "cc-jdeadbeef-0-1", "jdeadbeef", 0, 1, True, mine
    )
    lxd.workers["cc-jfeedbeef-0-1"] = WorkerInfo("cc-jfeedbeef-0-1", "jfeedbeef", 0, 1, True, mine)

    deleted = housekeeping.reap(engine)

    assert sorted(deleted) == ["cc-jdeadbeef-0-1", "cc-jfeedbeef-0-1"]
    assert lxd.reaped_extras  # and that failure was met
    assert not nova.workers and not lxd.workers
    assert engine.ledger.job(job_id).state == JobState.SUCCEEDED  # type: ignore[union-attr]


def test_retention_deletes_old_finished_jobs(tmp_path: Path) -> None:
    clock = {"now": time.time()}
    backend = FakeBackend()
    config = make_engine(tmp_path, backend, job_retention="1h").config
    engine = Engine(tmp_path, config, lambda _n: backend, clock=lambda: clock["now"])
    old = launch(engine, tasks=2)
    run_until_done(engine)
    clock["now"] += 1800
    young = launch(engine, tasks=1)
    run_until_done(engine)
    assert housekeeping.apply_retention(engine) == []
    clock["now"] += 1801
    assert housekeeping.apply_retention(engine) == [old]
    assert engine.ledger.job(old) is None
    assert not results.job_dir(tmp_path, old).exists()
    assert engine.ledger.job(young) is not None


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"image": "nosuch"}, "image: 'nosuch' does not exist"),
        ({"backend": "nova"}, "image: no Nova image"),
        ({"backend": "nova", "image": "x", "cpu": "1"}, "cpu: not available with backend=nova"),
        ({"input_dir": "/nonexistent/dir"}, "input-dir: /nonexistent/dir does not exist"),
        ({"input_dir": "/etc/hostname"}, "input-dir: /etc/hostname is not a directory"),
        ({"cpu": "9999"}, "cpu: 9999 is more than this host's"),
        ({"cpu": "0-4096"}, "cpu: CPU 4096"),
        ({"memory": "100TiB"}, "memory: 100TiB is more than this host's"),
    ],
)
def test_submit_refuses_what_the_host_cannot_do_and_records_nothing(
    tmp_path: Path, params: dict[str, object], message: str
) -> None:
    backend = FakeBackend()
    engine = make_engine(tmp_path, backend)
    before = engine.ledger.count_rows()
    with pytest.raises(ActionError, match=message.replace("(", r"\(")):
        launch(engine, tasks=3, **params)
    assert engine.ledger.count_rows() == before
    assert backend.started == []


def test_default_image_missing_names_the_option(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, FakeBackend(), default_image="absent")
    with pytest.raises(ActionError, match=r"default-image option"):
        launch(engine)


def test_ten_thousand_tasks_submit_and_status_timing(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, FakeBackend())
    started = time.perf_counter()
    job_id = launch(engine, tasks=10_000)
    recorded = time.perf_counter() - started
    ledger = Ledger(tmp_path)
    # half done, every third failed: ranges are long
    with ledger.transaction() as db:
        db.execute("UPDATE tasks SET state = 'succeeded' WHERE job = ? AND idx % 2 = 0", (job_id,))
        db.execute(
            "UPDATE tasks SET state = 'failed', reason = 'exit-code', exit_code = 1 "
            "WHERE job = ? AND idx % 3 = 1",
            (job_id,),
        )
    started = time.perf_counter()
    status = job_status_module.job_status(ledger, ledger.job(job_id))  # type: ignore[arg-type]
    took = time.perf_counter() - started
    print(
        f"\n10,000-task job: recorded in {recorded * 1000:.0f} ms, "
        f"job-status in {took * 1000:.1f} ms (pid {os.getpid()})"
    )
    assert status["tasks"] == 10_000
    assert sum(status["counts"].values()) == 10_000
    assert len(status["failures"]) == job_status_module.MAX_FAILURES_LISTED
    assert status["failures-not-listed"] == status["counts"]["failed"] - 20


def test_results_that_cannot_be_installed_are_recorded_at_once_and_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(tmp_path, FakeBackend())
    job_id = launch(engine, tasks=2)
    real_install = results.install_task_dir
    full: list[Path] = []

    def install(temp: Path, final: Path) -> None:
        if not full:
            full.append(final)
            raise OSError(28, "No space left on device")
        real_install(temp, final)

    monkeypatch.setattr(results, "install_task_dir", install)
    run_until_done(engine)

    assert engine.ledger.job(job_id).state == JobState.SUCCEEDED  # type: ignore[union-attr]
    lost = [a for a in engine.ledger.attempts(job_id) if a.state != "succeeded"]
    assert len(lost) == 1 and "could not be kept on the host" in lost[0].outcome["detail"]  # type: ignore[index]
    task = engine.ledger.task(job_id, lost[0].index)
    assert task is not None and (task.attempts, task.charged) == (2, 0)
    assert not list((tmp_path / "results" / job_id).glob(".tmp-*"))
