"""Workers' disk limit: worker-disk and disk=, the profile, refusals, notes, disk-full outcomes."""

import os
from pathlib import Path
from typing import Any

import pylxd.exceptions
import pytest

from container_compute import actions, lxdclient
from container_compute.backends import FailureReason, TaskOutcome, WorkerSpec
from container_compute.backends.lxd import LXDBackend
from container_compute.backends.lxd import disk as lxd_disk
from container_compute.backends.lxd.api import LXDApi
from container_compute.config import HostConfig
from container_compute.errors import ActionError
from container_compute.host import storage
from container_compute.host.profile import render_profile
from container_compute.host.system import StepLog
from container_compute.jobs import runner
from container_compute.jobs.params import LaunchJobParams
from container_compute.jobs.scheduler import worker_spec

from .fake_backend import FakeBackend, make_config, make_engine, run_until_done

MiB = 1 << 20


class FakeResponse:
    """What pylxd's raw API returns: an object with ``json()``."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body

    def json(self) -> dict[str, Any]:
        return self.body


class FakeInstance:
    def __init__(self, record: dict[str, Any] | None) -> None:
        self.record = record

    def get(self, params: dict[str, str] | None = None) -> FakeResponse:
        if self.record is None:
            raise pylxd.exceptions.NotFound(FakeResponse({"error": "not found"}))
        return FakeResponse({"metadata": self.record})


class FakeInstances:
    """``client.api.instances``: records creates, serves one record for every name."""

    def __init__(self, record: dict[str, Any] | None = None) -> None:
        self.record = record
        self.created: list[dict[str, Any]] = []

    def post(self, json: dict[str, Any]) -> FakeResponse:
        self.created.append(json)
        return FakeResponse({"type": "sync", "metadata": {}})

    def __getitem__(self, name: str) -> FakeInstance:
        return FakeInstance(self.record)


class FakeApi:
    def __init__(self, record: dict[str, Any] | None) -> None:
        self.instances = FakeInstances(record)


class FakeClient:
    def __init__(self, record: dict[str, Any] | None = None) -> None:
        self.api = FakeApi(record)


def spec(**fields: Any) -> WorkerSpec:
    values: dict[str, Any] = {
        "job_id": "j1",
        "task_index": 0,
        "attempt": 1,
        "image": "busybox",
        "command": "true",
        "env": {},
    }
    values.update(fields)
    return WorkerSpec(**values)


# The profile --------------------------------------------------------------------------------


def test_profile_root_disk_has_the_worker_disk_size() -> None:
    profile = render_profile(HostConfig(storage_pool="p1", worker_disk="64MiB"), [])
    assert profile["devices"]["root"] == {
        "type": "disk",
        "path": "/",
        "pool": "p1",
        "size": "64MiB",
    }


def test_profile_root_disk_without_worker_disk_has_no_size() -> None:
    profile = render_profile(HostConfig(storage_pool="p1", worker_disk=""), [])
    assert profile["devices"]["root"] == {"type": "disk", "path": "/", "pool": "p1"}


# Params and the job's spec ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("lots", "disk: 'lots' is not a size"),
        ("10%", "disk: '10%' is not a size"),
        ("16MiB", "disk: '16MiB' is below the minimum of 32MiB"),
    ],
)
def test_bad_disk_param_is_named(value: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        LaunchJobParams(command="true", disk=value)


def test_disk_param_reaches_the_worker_spec(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, FakeBackend())
    job = engine.submit(LaunchJobParams(command="true", disk="2GiB"))
    assert job.params["disk"] == "2GiB"
    assert worker_spec(job, 0, None, 1, 1024).disk == "2GiB"
    plain = engine.submit(LaunchJobParams(command="true"))
    assert worker_spec(plain, 0, None, 1, 1024).disk is None  # the profile's worker-disk


# Within the host's limit --------------------------------------------------------------------


def test_job_over_the_hosts_worker_disk_is_refused_and_not_recorded(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, FakeBackend(), worker_disk="1GiB")
    before = engine.ledger.count_rows()
    with pytest.raises(ActionError, match=r"^disk: 2GiB is more than this host's worker-disk"):
        engine.submit(LaunchJobParams(command="true", disk="2GiB"))
    assert engine.ledger.count_rows() == before
    assert engine.submit(LaunchJobParams(command="true", disk="1GiB")).params["disk"] == "1GiB"


def test_any_job_disk_is_allowed_when_the_host_has_no_limit(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, FakeBackend(), worker_disk="")
    assert engine.submit(LaunchJobParams(command="true", disk="5TiB")).params["disk"] == "5TiB"


# Enforcement notes --------------------------------------------------------------------------


class NotEnforcingBackend(FakeBackend):
    """A fake backend whose pool ignores disk sizes, as a dir pool without project quotas."""

    def disk_limit_note(self, limit: str) -> str:
        return f"disk {limit} is not enforced on storage pool p: no project quotas"


def test_launch_job_says_when_the_jobs_disk_limit_is_not_enforced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = NotEnforcingBackend()
    monkeypatch.setattr(runner, "backend_factory_for", lambda config: lambda name: backend)
    config = make_config(worker_disk="1GiB")
    launched = actions.run_action(
        "launch-job", LaunchJobParams(command="true", disk="512MiB"), config, tmp_path
    )
    assert launched["disk-note"] == (
        "disk 512MiB is not enforced on storage pool p: no project quotas"
    )
    by_default = actions.run_action(
        "launch-job", LaunchJobParams(command="true"), config, tmp_path
    )
    assert "disk 1GiB is not enforced" in by_default["disk-note"]
    unlimited = make_config(worker_disk="")
    none = actions.run_action("launch-job", LaunchJobParams(command="true"), unlimited, tmp_path)
    assert "disk-note" not in none


def test_an_enforcing_backend_gives_no_note(tmp_path: Path) -> None:
    backend = FakeBackend()
    engine = make_engine(tmp_path, backend)
    job = engine.submit(LaunchJobParams(command="true", disk="64MiB"))
    assert "disk_note" not in job.params
    run_until_done(engine)


def test_size_is_enforced_by_copy_on_write_drivers_and_dir_with_project_quotas(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for driver in ("btrfs", "zfs", "lvm"):
        assert lxdclient.size_unenforced(driver, "/anything") is None
    monkeypatch.setattr(lxdclient, "_project_quotas_on", lambda source: True)
    assert lxdclient.size_unenforced("dir", "/var/lib/lxd/storage-pools/p") is None
    monkeypatch.setattr(lxdclient, "_project_quotas_on", lambda source: False)
    reason = lxdclient.size_unenforced("dir", "/var/lib/lxd/storage-pools/p")
    assert reason is not None and "has no project quotas" in reason


def test_mount_of_a_path_comes_from_mountinfo(tmp_path: Path) -> None:
    device = os.stat(tmp_path).st_dev
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "1 0 0:1 / /other rw - tmpfs none rw\n"
        f"2 1 {os.major(device)}:{os.minor(device)} / /srv rw,relatime shared:1 - ext4 "
        "/dev/vdz rw,prjquota\n"
    )
    # A path not created yet is looked up through its nearest existing parent.
    mount = lxdclient._mount_of(tmp_path / "not" / "yet", mountinfo)
    assert mount == ("ext4", "/srv", "/dev/vdz")


def test_configure_host_notes_a_dir_pool_that_ignores_worker_disk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(storage, "size_unenforced", lambda driver, source: "no project quotas")
    log = StepLog(dry_run=True)
    pool = {"driver": "dir", "config": {"source": "/var/lib/lxd/storage-pools/p"}}
    storage._note_disk_enforcement(pool, HostConfig(storage_pool="p"), log)
    assert log.problems == []
    assert log.notes == [
        "worker-disk is NOT enforced on dir pool p here: no project quotas, so a worker can "
        "write more than 10GiB and fill the pool all workers share; storage-driver btrfs, zfs "
        "or lvm enforces it"
    ]
    unlimited = StepLog(dry_run=True)
    storage._note_disk_enforcement(pool, HostConfig(worker_disk=""), unlimited)
    assert unlimited.notes == []


def test_a_dir_pool_not_created_yet_is_judged_by_its_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[tuple[str, str]] = []

    def unenforced(driver: str, source: str) -> str:
        seen.append((driver, source))
        return "no project quotas"

    monkeypatch.setattr(storage, "size_unenforced", unenforced)
    log = StepLog(dry_run=True)
    config = HostConfig(storage_driver="dir", storage_source="/srv/workers", storage_pool="p")
    storage._note_disk_enforcement(None, config, log)
    assert seen == [("dir", "/srv/workers")]
    assert log.notes[0].startswith("worker-disk is NOT enforced on dir pool p here")


def test_configure_host_has_no_disk_note_for_btrfs() -> None:
    log = StepLog(dry_run=True)
    storage._note_disk_enforcement(
        {"driver": "btrfs", "config": {"size": "2GiB"}}, HostConfig(), log
    )
    assert log.notes == []


# The worker's root disk in the create request -----------------------------------------------


def test_create_gives_the_job_its_own_root_disk_size() -> None:
    client = FakeClient()
    backend = LXDBackend(HostConfig(storage_pool="pool1"), client=client)  # type: ignore[arg-type]
    source = {"type": "image", "alias": "busybox"}
    backend._create(spec(disk="256MiB"), source)
    backend._create(spec(attempt=2), source)
    with_disk, without = client.api.instances.created
    assert with_disk["devices"]["root"] == {
        "type": "disk",
        "path": "/",
        "pool": "pool1",
        "size": "256MiB",
    }
    assert "root" not in without["devices"]  # the profile's root disk (worker-disk)


# Disk-full outcomes -------------------------------------------------------------------------


def record(size: str | None, usage: int | None) -> dict[str, Any]:
    root: dict[str, str] = {"type": "disk", "path": "/", "pool": "p"}
    if size:
        root["size"] = size
    disk = {"root": {"usage": usage}} if usage is not None else {}
    return {"expanded_devices": {"root": root}, "state": {"disk": disk}}


def explain(
    tmp_path: Path, worker: dict[str, Any] | None, stderr: str = "", **outcome: Any
) -> TaskOutcome:
    (tmp_path / "stderr").write_text(stderr)
    api = LXDApi("p", FakeClient(worker))  # type: ignore[arg-type]
    values: dict[str, Any] = {"exit_code": 1, "reason": FailureReason.EXIT_CODE}
    values.update(outcome)
    return lxd_disk.explain_disk_full(api, spec(), TaskOutcome(**values), tmp_path)


def test_a_failed_task_at_its_disk_limit_is_disk_full(tmp_path: Path) -> None:
    outcome = explain(tmp_path, record("64MiB", 62 * MiB))
    assert outcome.reason == FailureReason.DISK_FULL
    assert outcome.detail.startswith(
        "disk full: the worker's root disk reached its limit of 64MiB (62.0MiB used"
    )


def test_a_failed_task_that_says_quota_exceeded_is_disk_full(tmp_path: Path) -> None:
    stderr = "dd: error writing '/results/big': Disk quota exceeded\n"
    outcome = explain(tmp_path, record("1GiB", 100 * MiB), stderr)
    assert outcome.reason == FailureReason.DISK_FULL
    assert "limit of 1GiB" in outcome.detail and "Disk quota exceeded" in outcome.detail


def test_a_failure_well_within_the_disk_limit_stays_exit_code(tmp_path: Path) -> None:
    outcome = explain(tmp_path, record("64MiB", 10 * MiB), "some other error\n")
    assert outcome.reason == FailureReason.EXIT_CODE and outcome.detail == ""


def test_no_disk_limit_means_no_disk_full_verdict(tmp_path: Path) -> None:
    outcome = explain(tmp_path, record(None, 500 * MiB), "No space left on device\n")
    assert outcome.reason == FailureReason.EXIT_CODE


def test_an_unenforced_limit_with_enospc_says_the_pool_may_be_full(tmp_path: Path) -> None:
    outcome = explain(tmp_path, record("64MiB", None), "write: No space left on device\n")
    assert outcome.reason == FailureReason.DISK_FULL
    assert "limit of 64MiB is not enforced" in outcome.detail
    assert "pool itself may be full" in outcome.detail


def test_other_reasons_and_successes_are_left_alone(tmp_path: Path) -> None:
    full = record("64MiB", 64 * MiB)
    timeout = explain(tmp_path, full, reason=FailureReason.TIMEOUT, exit_code=None)
    assert timeout.reason == FailureReason.TIMEOUT
    success = explain(tmp_path, full, reason=None, exit_code=0)
    assert success.succeeded


def test_a_worker_lxd_cannot_report_keeps_its_outcome(tmp_path: Path) -> None:
    outcome = explain(tmp_path, None, "No space left on device\n")
    assert outcome.reason == FailureReason.EXIT_CODE
