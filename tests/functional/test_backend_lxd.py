"""The LXD backend against the REAL daemon: run, gather, limits, timeouts, OOM, resume, restart."""

import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pylxd
import pytest

from container_compute.backends import FailureReason, LaunchError, TaskOutcome, WorkerSpec
from container_compute.backends.lxd import LXDBackend, image_exists
from container_compute.backends.lxd import watch as lxd_watch
from container_compute.config import HostConfig
from container_compute.constants import (
    LABEL_ATTEMPT,
    LABEL_JOB,
    LABEL_OWNER,
    LABEL_TASK,
    TEMPLATE_NAME_PREFIX,
)
from container_compute.lxdclient import connect

from .conftest import lxd_daemon_down, lxd_daemon_process, no_task_limits


@pytest.fixture(scope="module")
def backend(configured_host: HostConfig) -> Iterator[LXDBackend]:
    """Give a backend on the configured test project; delete leftovers at the end."""
    backend = LXDBackend(configured_host)
    yield backend
    for worker in backend.list_workers():
        backend.delete(worker.name)


# Workers of engine jobs (ids j + 8 hex digits) other modules' tests ran in the same project.
ENGINE_JOB_WORKER_RE = re.compile(r"_cc-j[0-9a-f]{8}-")


def _spec(job: str, command: str, index: int = 0, **kwargs: object) -> WorkerSpec:
    env = kwargs.pop("env", {"TASK_COUNT": "4"})
    return WorkerSpec(
        job_id=job,
        task_index=index,
        attempt=kwargs.pop("attempt", 1),  # type: ignore[arg-type]
        image="busybox",
        command=command,
        env=env,  # type: ignore[arg-type]
        **kwargs,  # type: ignore[arg-type]
    )


def _never() -> FailureReason | None:
    return None


def _run(backend: LXDBackend, spec: WorkerSpec, tmp_path: Path, delete: bool = True):
    task_dir = tmp_path / f"task-{spec.worker_name}"
    task_dir.mkdir()
    backend.start(spec)
    outcome = backend.wait(spec, task_dir, _never)
    if delete:
        assert backend.delete(spec.worker_name) is True
    return outcome, task_dir


def test_success_gathers_everything_with_env(backend: LXDBackend, tmp_path: Path) -> None:
    command = (
        'echo "index=$TASK_INDEX count=$TASK_COUNT job=$JOB_ID results=$RESULTS_DIR '
        'input=$TASK_INPUT extra=$EXTRA cc=${CC_COMMAND:-unset}"; echo oops >&2; '
        "mkdir -p $RESULTS_DIR/sub && echo $((TASK_INDEX * TASK_INDEX)) > $RESULTS_DIR/sub/square"
    )
    spec = _spec(
        "ok", command, index=3, env={"TASK_COUNT": "4", "TASK_INPUT": "a b;$x", "EXTRA": "x'y"}
    )
    outcome, task_dir = _run(backend, spec, tmp_path)
    assert outcome.succeeded, outcome
    assert (task_dir / "stdout").read_text() == (
        "index=3 count=4 job=ok results=/results input=a b;$x extra=x'y cc=unset\n"
    )
    assert (task_dir / "stderr").read_text() == "oops\n"
    assert (task_dir / "exit_code").read_text() == "0\n"
    assert (task_dir / "files" / "sub" / "square").read_text() == "9\n"
    assert outcome.files_bytes == 2 and outcome.stderr_bytes == 5
    assert outcome.started_at <= outcome.finished_at


def test_non_zero_exit(backend: LXDBackend, tmp_path: Path) -> None:
    outcome, task_dir = _run(backend, _spec("fail", "echo partial > /results/p; exit 7"), tmp_path)
    assert outcome.exit_code == 7
    assert outcome.reason is FailureReason.EXIT_CODE
    assert not outcome.succeeded
    assert (task_dir / "exit_code").read_text() == "7\n"
    assert (task_dir / "files" / "p").read_text() == "partial\n"


def test_labels_limits_and_listing(backend: LXDBackend, tmp_path: Path) -> None:
    spec = _spec("lbl", "sleep 30", index=5, attempt=2, cpu="1", memory="64MiB")
    name = backend.start(spec)
    try:
        assert name == "cc-lbl-5-2"
        instance = connect(project=backend.config.lxd_project).instances.get(name)
        assert instance.config[LABEL_JOB] == "lbl"
        assert instance.config[LABEL_TASK] == "5"
        assert instance.config[LABEL_ATTEMPT] == "2"
        assert instance.config["limits.cpu"] == "1"
        assert instance.config["limits.memory"] == "64MiB"
        assert instance.profiles == ["container-compute-worker"]
        listed = {w.name: w for w in backend.list_workers()}
        assert listed[name].job_id == "lbl"
        assert (listed[name].task_index, listed[name].attempt) == (5, 2)
        assert listed[name].running
    finally:
        assert backend.delete(name) is True
    assert backend.delete(name) is False
    assert name not in {w.name for w in backend.list_workers()}


def test_input_dir_is_read_only(backend: LXDBackend, tmp_path: Path) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "data.txt").write_text("payload\n")
    inputs.chmod(0o755)
    (inputs / "data.txt").chmod(0o644)
    command = "cat /input/data.txt; if echo x > /input/new; then echo WRITABLE; else echo ro; fi"
    outcome, task_dir = _run(backend, _spec("inp", command, input_dir=str(inputs)), tmp_path)
    assert outcome.succeeded
    assert (task_dir / "stdout").read_text() == "payload\nro\n"
    assert not (inputs / "new").exists()


def test_timeout_stops_worker(backend: LXDBackend, tmp_path: Path) -> None:
    spec = _spec("tmo", "echo begun; sleep 300", timeout_seconds=2)
    outcome, task_dir = _run(backend, spec, tmp_path, delete=False)
    try:
        assert outcome.reason is FailureReason.TIMEOUT
        assert outcome.exit_code is None
        assert (task_dir / "stdout").read_text() == "begun\n"
        status = connect(project=backend.config.lxd_project).instances.get(spec.worker_name)
        assert status.status == "Stopped"
    finally:
        backend.delete(spec.worker_name)


def test_should_stop_reason_stops_worker(backend: LXDBackend, tmp_path: Path) -> None:
    spec = _spec("cnl", "sleep 300")
    task_dir = tmp_path / "t"
    task_dir.mkdir()
    backend.start(spec)
    asked = {"n": 0}

    def cancel_on_third_poll() -> FailureReason | None:
        asked["n"] += 1
        return FailureReason.CANCELLED if asked["n"] >= 3 else None

    try:
        outcome = backend.wait(spec, task_dir, cancel_on_third_poll)
        assert outcome.reason is FailureReason.CANCELLED
        instance = connect(project=backend.config.lxd_project).instances.get(spec.worker_name)
        assert instance.status == "Stopped"
    finally:
        backend.delete(spec.worker_name)


def test_worker_stopped_from_outside_is_noticed(backend: LXDBackend, tmp_path: Path) -> None:
    spec = _spec("ext", "sleep 300")
    backend.start(spec)
    instance = connect(project=backend.config.lxd_project).instances.get(spec.worker_name)
    stopper = threading.Timer(1.0, lambda: instance.stop(force=True, wait=True))
    stopper.start()
    task_dir = tmp_path / "t"
    task_dir.mkdir()
    try:
        outcome = backend.wait(spec, task_dir, _never)
    finally:
        stopper.join()
        backend.delete(spec.worker_name)
    assert outcome.exit_code is None
    assert outcome.reason is FailureReason.EXIT_CODE
    assert "stopped before its command finished" in outcome.detail


def test_oom_is_told_apart(backend: LXDBackend, tmp_path: Path) -> None:
    spec = _spec("oom", "head -c 200m /dev/zero | tail > /dev/null", memory="32MiB")
    outcome, _ = _run(backend, spec, tmp_path)
    assert outcome.reason is FailureReason.OOM, outcome
    # The OOM killer may take the task's shell too: then there is no exit code at all.
    assert outcome.exit_code != 0
    assert not outcome.succeeded


@pytest.mark.parametrize(
    ("tag", "after"),
    [
        ("oa1", ""),  # the command's status: 137
        # The OOM killer took the task's shell too (as it may, at its own time): no exit code.
        ("oa2", "; kill -9 $PPID; sleep 5"),
    ],
)
@pytest.mark.skipif(
    not no_task_limits(),
    reason="on cgroup v2, LXD 5.0's instance state shows no memory peak (usage_peak 0): "
    "through the API alone an OOM kill is an exit 137 (see backends/usage.py, lxd-state)",
)
def test_oom_is_told_apart_through_the_api(
    configured_host: HostConfig, tmp_path: Path, tag: str, after: str
) -> None:
    backend = LXDBackend(configured_host, host_access=False)
    # One process allocates (tail buffering /dev/zero, which has no newline), made the OOM
    # killer's first choice: nothing allocates after it is killed, so in "oa1" the task's
    # shell lives to write 137. (With `head | tail`, head's next pipe write can invoke the
    # killer again before tail's memory is freed, and it may then take the shell.)
    command = "echo 1000 > /proc/self/oom_score_adj; exec tail /dev/zero > /dev/null"
    command = f"sh -c '{command}'" + after
    outcome, _ = _run(backend, _spec(tag, command, memory="32MiB"), tmp_path)
    assert outcome.reason is FailureReason.OOM, outcome
    assert "as LXD's API shows it" in outcome.detail
    assert outcome.exit_code == (137 if not after else None)


def test_symlink_to_shadow_is_not_followed(backend: LXDBackend, tmp_path: Path) -> None:
    command = (
        "ln -s /etc/shadow /results/shadow; ln -s / /results/root; mkfifo /results/fifo; "
        "echo fine > /results/plain"
    )
    outcome, task_dir = _run(backend, _spec("lnk", command), tmp_path)
    assert outcome.succeeded
    assert sorted(p.name for p in (task_dir / "files").iterdir()) == ["plain"]
    assert "files/shadow (symlink)" in outcome.skipped
    assert "files/root (symlink)" in outcome.skipped
    assert "files/fifo (fifo)" in outcome.skipped


def test_replaced_results_dir_is_not_followed(backend: LXDBackend, tmp_path: Path) -> None:
    spec = _spec("rdl", "rm -rf /results; ln -s /etc /results")
    outcome, task_dir = _run(backend, spec, tmp_path)
    assert outcome.succeeded
    assert list((task_dir / "files").iterdir()) == []
    assert any("/results" in entry for entry in outcome.skipped)


def test_results_cap_truncates(backend: LXDBackend, tmp_path: Path) -> None:
    command = "head -c 3000 /dev/zero; head -c 5000 /dev/zero > /results/big"
    outcome, task_dir = _run(backend, _spec("cap", command, results_cap_bytes=4096), tmp_path)
    assert outcome.succeeded
    assert outcome.truncated
    assert (task_dir / "stdout").stat().st_size == 3000
    assert (task_dir / "files" / "big").stat().st_size == 1096


def test_files_api_fallback(configured_host: HostConfig, tmp_path: Path) -> None:
    backend = LXDBackend(configured_host, host_access=False)
    command = (
        "echo out; mkdir /results/d; echo hi > /results/d/f; ln -s /etc/passwd /results/l; exit 4"
    )
    outcome, task_dir = _run(backend, _spec("api", command), tmp_path)
    assert outcome.exit_code == 4
    assert (task_dir / "stdout").read_text() == "out\n"
    assert (task_dir / "files" / "d" / "f").read_text() == "hi\n"
    assert not (task_dir / "files" / "l").exists()


def test_storage_pool_rootfs_path(
    backend: LXDBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Path] = []
    real_has_cc_dir = lxd_watch.has_cc_dir

    def no_proc_root(root: Path) -> bool:
        seen.append(root)
        return not str(root).startswith("/proc/") and real_has_cc_dir(root)

    monkeypatch.setattr(lxd_watch, "has_cc_dir", no_proc_root)
    outcome, task_dir = _run(backend, _spec("sto", "echo pool > /results/p"), tmp_path)
    assert outcome.succeeded
    assert (task_dir / "files" / "p").read_text() == "pool\n"
    assert any("/storage-pools/" in str(path) for path in seen)


def test_resume_wait_from_another_backend(
    backend: LXDBackend, configured_host: HostConfig, tmp_path: Path
) -> None:
    spec = _spec("res", "sleep 2; echo resumed > /results/r")
    backend.start(spec)
    other = LXDBackend(configured_host)
    task_dir = tmp_path / "t"
    task_dir.mkdir()
    try:
        outcome = other.wait(spec, task_dir, _never)
        assert outcome.succeeded
        assert (task_dir / "files" / "r").read_text() == "resumed\n"
    finally:
        other.delete(spec.worker_name)


def test_start_twice_runs_command_once(backend: LXDBackend, tmp_path: Path) -> None:
    spec = _spec("twc", "echo run >> /results/count")
    backend.start(spec)
    backend.start(spec)
    task_dir = tmp_path / "t"
    task_dir.mkdir()
    try:
        outcome = backend.wait(spec, task_dir, _never)
        assert outcome.succeeded
        assert (task_dir / "files" / "count").read_text() == "run\n"
    finally:
        backend.delete(spec.worker_name)


def test_launch_errors_change_nothing(backend: LXDBackend, tmp_path: Path) -> None:
    before = backend.list_workers()
    with pytest.raises(LaunchError, match="image 'no-such-image' not found"):
        backend.start(WorkerSpec("img", 0, 1, "no-such-image", "true", {}))
    with pytest.raises(LaunchError, match="environment variable name 'BAD-NAME'"):
        backend.start(_spec("env", "true", env={"BAD-NAME": "1"}))
    with pytest.raises(LaunchError, match="input-dir"):
        backend.start(_spec("ind", "true", input_dir=str(tmp_path / "missing")))
    with pytest.raises(LaunchError, match="memory"):
        backend.start(_spec("mem", "true", memory="1MiB"))
    assert backend.list_workers() == before


def test_image_exists(configured_host: HostConfig) -> None:
    assert image_exists(configured_host, "busybox")
    assert not image_exists(configured_host, "no-such-image")
    client = connect(project=configured_host.lxd_project)
    fingerprint = client.api.images.aliases["busybox"].get().json()["metadata"]["target"]
    assert image_exists(configured_host, fingerprint)
    assert image_exists(configured_host, fingerprint[:16])


def test_delete_refuses_unlabelled_instances(
    backend: LXDBackend, configured_host: HostConfig, run_prefix: str
) -> None:
    client = connect(project=configured_host.lxd_project)
    name = f"{run_prefix}-plain"
    client.instances.create(
        {
            "name": name,
            "source": {"type": "image", "alias": "busybox"},
            "profiles": ["container-compute-worker"],
        },
        wait=True,
    )
    try:
        with pytest.raises(ValueError, match="not a container-compute worker"):
            backend.delete(name)
        assert name not in {w.name for w in backend.list_workers()}
    finally:
        client.instances.get(name).delete(wait=True)


def test_daemon_restart_mid_task(backend: LXDBackend, tmp_path: Path) -> None:
    spec = _spec("rst", "sleep 6; echo survived > /results/s")
    backend.start(spec)
    task_dir = tmp_path / "t"
    task_dir.mkdir()
    box: dict[str, object] = {}

    def follow() -> None:  # a fresh backend starts following while the daemon is away
        box["outcome"] = LXDBackend(backend.config).wait(spec, task_dir, _never)

    follower = threading.Thread(target=follow)
    with lxd_daemon_down(pause=3) as old_pid:
        follower.start()
    follower.join(180)
    new = lxd_daemon_process()
    assert new is not None and new[0] != old_pid  # the daemon really was replaced
    outcome = box["outcome"]
    assert isinstance(outcome, TaskOutcome)
    assert outcome.succeeded, outcome
    assert (task_dir / "files" / "s").read_text() == "survived\n"
    assert backend.delete(spec.worker_name) is True


def test_no_worker_left_behind(backend: LXDBackend) -> None:
    """Every worker is gone; the templates of jobs no longer live are pruned by the reaper."""
    assert backend.list_workers() == []
    client: pylxd.Client = connect(project=backend.config.lxd_project)
    listing = client.api.instances.get(params={"recursion": "1"}).json()["metadata"]
    # This backend's (no owner): another owner's templates are not its to prune.
    mine = [r for r in listing if LABEL_OWNER not in r["config"]]
    templates = sorted(record["name"] for record in mine)
    assert templates and all(name.startswith(TEMPLATE_NAME_PREFIX) for name in templates)
    assert sorted(backend.reap_extras(live_jobs=set(), known_jobs=set())) == templates
    listing = client.api.instances.get(params={"recursion": "1"}).json()["metadata"]
    assert [r["name"] for r in listing if LABEL_OWNER not in r["config"]] == []
    project = backend.config.lxd_project
    logs = [
        p.name
        for prefix in ("cc-", TEMPLATE_NAME_PREFIX)
        for p in Path("/var/log/lxd").glob(f"{project}_{prefix}*")
        if not ENGINE_JOB_WORKER_RE.search(p.name)  # the workers of this module's tests only
    ]
    assert logs == []  # LXD's log directory of every worker and template went with it
