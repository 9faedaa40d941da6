"""teardown_host on the REAL daemon: removes what is ours, keeps (and names) what is not."""

import pylxd
import pytest

from container_compute import constants
from container_compute.backends import WorkerSpec
from container_compute.backends.lxd import LXDBackend
from container_compute.config import HostConfig
from container_compute.host import configure_host, teardown_host
from container_compute.host.images import build_busybox_image
from container_compute.lxdclient import connect

from .conftest import host_paths_in

pytestmark = pytest.mark.functional


def test_teardown_keeps_what_is_not_ours_then_removes_everything(
    run_prefix: str, lxd_client: pylxd.Client, tmp_path_factory: pytest.TempPathFactory
) -> None:
    name = f"{run_prefix}-td"
    config = HostConfig(
        lxd_project=name,
        storage_pool=name,
        storage_driver="dir",
        worker_cpu="",
        worker_memory="256MiB",
        default_image="busybox",
        sysctl_tuning=False,
    )
    paths = host_paths_in(tmp_path_factory.mktemp("teardown-host"))
    assert configure_host(config, paths=paths).ok
    modules_file = paths.modules_load_dir / constants.MODULES_LOAD_FILE_NAME
    sysctl_file = paths.sysctl_dir / constants.SYSCTL_FILE_NAME
    for written in (modules_file, sysctl_file):
        written.parent.mkdir(parents=True, exist_ok=True)
        written.write_text("# ours\n")
    scoped = connect(project=name)
    build_busybox_image(scoped, "busybox")
    backend = LXDBackend(config)
    spec = WorkerSpec("jteardown", 0, 1, "busybox", "sleep 600", {})
    backend.start(spec)
    scoped.instances.create(
        {
            "name": "not-a-worker",
            "source": {"type": "image", "alias": "busybox"},
            "devices": {"root": {"type": "disk", "path": "/", "pool": name}},
        },
        wait=True,
    )

    report = teardown_host(config, paths=paths)

    assert f"deleted worker {spec.worker_name}" in report.changes
    assert f"removed {sysctl_file}" in report.changes
    assert f"removed {modules_file}" in report.changes
    assert f"deleted profile {constants.WORKER_PROFILE}" in report.changes  # no one used it
    assert not modules_file.exists() and not sysctl_file.exists()
    assert lxd_client.projects.exists(name)
    assert any(
        "not-a-worker" in kept and "not container-compute workers" in kept for kept in report.left
    ), report.left
    assert any(kept.startswith(f"project {name}") for kept in report.left), report.left
    assert any(kept.startswith(f"storage pool {name}") for kept in report.left), report.left
    assert [i.name.split("?")[0] for i in scoped.instances.all()] == ["not-a-worker"]

    scoped.instances.get("not-a-worker").delete(wait=True)
    dry = teardown_host(config, paths=paths, dry_run=True)
    assert f"deleted project {name}" in dry.changes
    assert lxd_client.projects.exists(name)  # a dry run changes nothing

    report = teardown_host(config, paths=paths)

    assert report.left == []
    assert f"deleted project {name}" in report.changes
    assert f"deleted storage pool {name}" in report.changes
    assert not lxd_client.projects.exists(name)
    assert not lxd_client.storage_pools.exists(name)
    assert teardown_host(config, paths=paths).changes == []


def test_teardown_never_deletes_a_project_or_pool_it_did_not_create(
    run_prefix: str, lxd_client: pylxd.Client, tmp_path_factory: pytest.TempPathFactory
) -> None:
    name = f"{run_prefix}-foreign"
    lxd_client.api.projects.post(json={"name": name, "description": "the operator's own"})
    lxd_client.api.storage_pools.post(json={"name": name, "driver": "dir"})
    config = HostConfig(lxd_project=name, storage_pool=name, storage_driver="dir")
    paths = host_paths_in(tmp_path_factory.mktemp("foreign-host"))

    report = teardown_host(config, paths=paths)

    assert f"project {name}: not created by container-compute" in report.left
    assert f"storage pool {name}: not created by container-compute" in report.left
    assert lxd_client.projects.exists(name) and lxd_client.storage_pools.exists(name)
