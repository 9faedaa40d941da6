"""Fixtures for tests against the REAL LXD daemon of this machine.

Every run works in LXD objects named ``cct<run id>-...`` (its own project and pools), and
deletes them at the end of the session, also when tests fail. The daemon must be running
(``scripts/setup-host`` starts it); a missing daemon is an error, not a skip.
"""

import secrets
from collections.abc import Iterator
from pathlib import Path

import pylxd
import pytest

from container_compute.config import HostConfig
from container_compute.host import HostPaths, configure_host
from container_compute.images import build_busybox_image
from container_compute.lxdclient import LXDUnavailableError, connect

from .lxd_cleanup import purge_run


@pytest.fixture(scope="session")
def run_prefix() -> Iterator[str]:
    """Name prefix of everything this run creates in LXD; all of it is purged at the end."""
    prefix = f"cct{secrets.token_hex(3)}"
    yield prefix
    leftovers = purge_run(prefix)
    print(f"\npurged after the run: {', '.join(leftovers) or 'nothing'}")


@pytest.fixture(scope="session")
def lxd_client() -> pylxd.Client:
    """A client of the local daemon's default project."""
    try:
        client = connect()
        client.host_info  # noqa: B018 - force a round trip
    except LXDUnavailableError as err:
        pytest.fail(f"functional tests need a running LXD daemon (scripts/setup-host): {err}")
    return client


def host_paths_in(directory: Path) -> HostPaths:
    """HostPaths whose /etc files are copies in ``directory`` (the real /etc is never written)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("subuid", "subgid"):
        source = Path("/etc") / name
        (directory / name).write_text(source.read_text() if source.exists() else "")
    return HostPaths(
        sysctl_dir=directory / "sysctl.d",
        modules_load_dir=directory / "modules-load.d",
        subuid=directory / "subuid",
        subgid=directory / "subgid",
    )


@pytest.fixture(scope="session")
def configured_host(
    run_prefix: str, lxd_client: pylxd.Client, tmp_path_factory: pytest.TempPathFactory
) -> HostConfig:
    """Configure a jobs host: project and dir pool ``<run_prefix>-jobs``, busybox image.

    The worker profile has no CPU limit and 256MiB of memory; the image alias is "busybox".
    """
    config = HostConfig(
        lxd_project=f"{run_prefix}-jobs",
        storage_pool=f"{run_prefix}-jobs",
        storage_driver="dir",
        worker_cpu="",
        worker_memory="256MiB",
        default_image="busybox",
        sysctl_tuning=False,
    )
    report = configure_host(config, paths=host_paths_in(tmp_path_factory.mktemp("jobs-host")))
    if not report.ok:
        pytest.fail(f"configure_host failed for the jobs project: {report.problems}")
    build_busybox_image(connect(project=config.lxd_project), "busybox")
    return config
