"""Fixtures of the cluster tests: a REAL 3-member LXD cluster on this machine (``lab``).

The cluster is built once per session (members are nested containers of the host's LXD, see
``lab.py``) and torn down at the end, also when tests fail or the session is interrupted.
Every object is named after the run's ``cct<hex>`` prefix. The members' image is cached under
/var/cache/container-compute-tests/ between runs (keyed by content).
"""

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pylxd.exceptions
import pytest

from container_compute import host
from container_compute.config import HostConfig
from container_compute.host.images import build_busybox_image
from container_compute.jobs import runner
from container_compute.lxdclient import connect, endpoint_of

from ..functional.conftest import run_prefix  # noqa: F401 - the run's name prefix
from .lab import ClusterLab


@pytest.fixture(scope="session")
def lab(run_prefix: str) -> Iterator[ClusterLab]:  # noqa: F811
    """A formed 3-member cluster; removed at the end whatever happened."""
    workdir = Path(tempfile.mkdtemp(prefix=f"{run_prefix}-lab-"))
    cluster = ClusterLab(run_prefix, workdir)
    try:
        cluster.up()
        yield cluster
    finally:
        removed = cluster.down()
        shutil.rmtree(workdir, ignore_errors=True)
        print(f"\ncluster lab {run_prefix}: {cluster.timings}; removed: {', '.join(removed)}")


@pytest.fixture(scope="session")
def cluster_config(lab: ClusterLab, run_prefix: str) -> HostConfig:  # noqa: F811
    """The cluster configured as a jobs host over HTTPS, with a busybox image."""
    endpoint = lab.endpoint()
    config = HostConfig(
        lxd_endpoint=endpoint.url,
        lxd_client_cert=endpoint.client_cert,
        lxd_client_key=endpoint.client_key,
        lxd_server_cert=endpoint.server_cert,
        lxd_project=f"{run_prefix}-jobs",
        storage_pool=f"{run_prefix}-jobs",
        storage_driver="dir",
        worker_cpu="",
        worker_memory="128MiB",
        worker_disk="",
        default_image="busybox",
        sysctl_tuning=False,
        max_parallel_workers=9,
    )
    report = host.configure_host(config)
    assert report.ok, report.problems
    build_busybox_image(
        connect(project=config.lxd_project, endpoint=endpoint_of(config)), "busybox"
    )
    return config


@pytest.fixture
def state_dir(cluster_config: HostConfig) -> Iterator[Path]:
    """A fresh state directory holding the cluster's config (as configure-host saves it).

    Workers a failed test left in the jobs project are force-deleted afterwards, so that one
    failure does not show up again in every later test.
    """
    path = Path(tempfile.mkdtemp(prefix="cc-cluster-state-"))
    host.save_config(cluster_config, path)
    yield path
    shutil.rmtree(path, ignore_errors=True)
    client = connect(project=cluster_config.lxd_project, endpoint=endpoint_of(cluster_config))
    for instance in client.instances.all():
        try:
            if instance.status == "Running":
                instance.stop(force=True, wait=True)
            instance.delete(wait=True)
        except pylxd.exceptions.LXDAPIException as err:
            print(f"could not delete leftover worker {instance.name}: {err}")


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries after failures wait 0.5 s, 1 s, ... instead of 10 s, 20 s, ..."""
    monkeypatch.setattr(runner, "engine_options", {"backoff_base": 0.5, "backoff_cap": 2.0})
