"""Workers are copies of prepared templates, on the REAL LXD daemon (dir pool, isolated ids)."""

import dataclasses
import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pylxd
import pytest

from container_compute.backends import FailureReason, WorkerSpec
from container_compute.backends.lxd import LXDBackend
from container_compute.config import HostConfig
from container_compute.constants import IDMAP_SIZE, LABEL_OWNER, LABEL_TEMPLATE
from container_compute.host import images
from container_compute.lxdclient import connect
from container_compute.rootfs import busybox_rootfs


@pytest.fixture(scope="module")
def backend(configured_host: HostConfig) -> Iterator[LXDBackend]:
    """A backend on the configured test project; its workers and templates go at the end."""
    # An owner of its own: what other tests (other owners) left in the project is not seen.
    backend = LXDBackend(configured_host, owner=f"o{secrets.token_hex(6)}")
    yield backend
    for worker in backend.list_workers():
        backend.delete(worker.name)
    backend.reap_extras(live_jobs=set(), known_jobs=set())


def _never() -> FailureReason | None:
    return None


def _spec(job: str, index: int, image: str = "busybox") -> WorkerSpec:
    return WorkerSpec(job, index, 1, image, "echo $TASK_INDEX > $RESULTS_DIR/i", {})


def _names(client: pylxd.Client) -> set[str]:
    """The instances of the client's project (pylxd's ``instances.all()`` garbles names)."""
    listing = client.api.instances.get(params={"recursion": "1"}).json()["metadata"]
    return {record["name"] for record in listing}


def _templates_of(client: pylxd.Client, owner: str) -> set[str]:
    """The templates ``owner`` made in the client's project."""
    listing = client.api.instances.get(params={"recursion": "1"}).json()["metadata"]
    return {
        record["name"]
        for record in listing
        if LABEL_TEMPLATE in record["config"] and record["config"].get(LABEL_OWNER) == owner
    }


def _config(client: pylxd.Client, name: str) -> dict[str, str]:
    return client.api.instances[name].get().json()["metadata"]["config"]


def _rootfs_owner(config: HostConfig, name: str) -> int:
    """The host uid owning /bin in a worker's rootfs (dir pool: read on the host)."""
    pool = Path("/var/lib/lxd/storage-pools") / config.storage_pool
    return (pool / "containers" / f"{config.lxd_project}_{name}" / "rootfs" / "bin").stat().st_uid


def test_a_jobs_workers_share_its_id_range_and_jobs_differ(
    backend: LXDBackend, configured_host: HostConfig, tmp_path: Path
) -> None:
    client = connect(project=configured_host.lxd_project)
    specs = [_spec("tpla", 0), _spec("tpla", 1), _spec("tplb", 0)]
    for spec in specs:
        backend.start(spec)
    bases = [_config(client, s.worker_name)["security.idmap.base"] for s in specs]
    assert bases[0] == bases[1] != bases[2]
    for spec, base in zip(specs, bases, strict=True):
        config = _config(client, spec.worker_name)
        assert config[LABEL_TEMPLATE].startswith("job:")  # a copy of the job's template
        # The copy's files already belong to the job's range: its first start remapped nothing.
        assert json.loads(config["volatile.last_state.idmap"])[0]["Hostid"] == int(base)
        assert _rootfs_owner(configured_host, spec.worker_name) == int(base)
        (tmp_path / spec.worker_name).mkdir()
        outcome = backend.wait(spec, tmp_path / spec.worker_name, _never)
        assert outcome.succeeded, outcome
        assert (tmp_path / spec.worker_name / "files" / "i").read_text() == f"{spec.task_index}\n"
        assert backend.delete(spec.worker_name) is True
    assert abs(int(bases[0]) - int(bases[2])) >= IDMAP_SIZE

    templates = _templates_of(client, backend.owner)
    assert templates == {
        backend.templates.name_for(backend.templates.fingerprint({"alias": "busybox"}), job)
        for job in ("tpla", "tplb")
    }
    backend.job_finished("tpla")  # its range is free again
    left = _templates_of(client, backend.owner)
    assert left == templates - {n for n in templates if n.endswith("-tpla")}


def _import(client: pylxd.Client, alias: str, description: str, tmp_path: Path) -> None:
    """Import a busybox image of its own (``description`` makes its fingerprint) as ``alias``."""
    root = tmp_path / description
    busybox_rootfs(root, "/bin/busybox")
    architecture = client.host_info["environment"]["architectures"][0]
    metadata = images._metadata_tar(description, architecture, 1)
    images.import_image(client, alias, metadata, images._rootfs_tar(root), "test")


def test_an_image_alias_moved_gets_a_new_template(
    backend: LXDBackend, configured_host: HostConfig, tmp_path: Path
) -> None:
    client = connect(project=configured_host.lxd_project)
    _import(client, "tplimg", "template test one", tmp_path)
    first = backend.templates.fingerprint({"alias": "tplimg"})
    backend.start(_spec("tplc", 0, "tplimg"))
    assert backend.delete("cc-tplc-0-1") is True
    _import(client, "tplimg", "template test two", tmp_path)
    backend.templates._fingerprints.clear()
    second = backend.templates.fingerprint({"alias": "tplimg"})
    assert second != first
    backend.start(_spec("tplc", 1, "tplimg"))
    (tmp_path / "c1").mkdir()
    outcome = backend.wait(_spec("tplc", 1, "tplimg"), tmp_path / "c1", _never)
    assert outcome.succeeded, outcome
    assert backend.delete("cc-tplc-1-1") is True
    names = _templates_of(client, backend.owner)
    assert backend.templates.name_for(second, "tplc") in names

    client.images.get(first).delete(wait=True)  # the old image is gone: its template goes
    pruned = backend.reap_extras(live_jobs={"tplc", "tplb"}, known_jobs=set())
    assert pruned == [backend.templates.name_for(first, "tplc")]


def test_without_isolation_workers_share_one_template_and_map(
    configured_host: HostConfig, tmp_path: Path
) -> None:
    """Even while the profile still says isolated (configure-host not run again)."""
    shared = LXDBackend(
        dataclasses.replace(configured_host, worker_idmap_isolated=False),
        owner=f"o{secrets.token_hex(6)}",
    )
    client = connect(project=configured_host.lxd_project)
    specs = [_spec("tpld", 0), _spec("tple", 0)]
    try:
        for spec in specs:
            shared.start(spec)
        maps = [_config(client, s.worker_name)["volatile.last_state.idmap"] for s in specs]
        assert maps[0] == maps[1]  # one map for every job: no remap, no allocation
        for spec in specs:
            assert _config(client, spec.worker_name)["security.idmap.isolated"] == "false"
            (tmp_path / spec.worker_name).mkdir()
            assert shared.wait(spec, tmp_path / spec.worker_name, _never).succeeded
        template = shared.templates.name_for(
            shared.templates.fingerprint({"alias": "busybox"}), ""
        )
        assert template.endswith(f"-shared-{shared.owner}") and template in _names(client)
    finally:
        for spec in specs:
            shared.delete(spec.worker_name)
        # Its mode is its owner's own: no reap of another owner prunes it, it goes here.
        shared.templates.prune_all()
