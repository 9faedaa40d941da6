"""The bench's own LXD project and pool per storage driver, and their removal.

Every name starts with the run's prefix (``ccb`` and 6 hex digits): the run deletes what
carries it, also on failure or Ctrl-C, and never touches anything else of the shared daemon.
"""

import dataclasses
import re
import shutil
import time
from collections import Counter
from pathlib import Path

from container_compute.config import HostConfig
from container_compute.constants import WORKER_PROFILE
from container_compute.host import HostPaths, configure_host
from container_compute.lxdclient import connect
from tests.functional.lxd_cleanup import purge_run

from .common import BenchError

LXD_LOG_DIR = Path("/var/log/lxd")


def host_paths(directory: Path) -> HostPaths:
    """HostPaths with copies of /etc/subuid and /etc/subgid (the real /etc is not written)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("subuid", "subgid"):
        (directory / name).write_text(Path("/etc", name).read_text())
    return HostPaths(
        sysctl_dir=directory / "sysctl.d",
        modules_load_dir=directory / "modules-load.d",
        subuid=directory / "subuid",
        subgid=directory / "subgid",
    )


def base_config(prefix: str, driver: str, idmap: str, max_workers: int) -> HostConfig:
    """The host configuration of one driver's project and pool (``<prefix>-<driver>``)."""
    name = f"{prefix}-{driver}"
    config = HostConfig(
        lxd_project=name,
        storage_pool=name,
        storage_driver=driver,
        storage_size="12GiB",
        worker_cpu="",
        worker_memory="256MiB",
        sysctl_tuning=False,
        max_parallel_workers=max_workers,
    )
    if idmap != "default":
        config = dataclasses.replace(config, worker_idmap_isolated=idmap == "isolated")
    return config


def set_up(config: HostConfig, scratch: Path) -> None:
    """Configure the project and pool; give the project's default profile the worker's.

    lxd-benchmark launches with the default profile: it gets the worker profile's settings.

    Raises:
        BenchError: when configure-host reports a problem.
    """
    report = configure_host(config, paths=host_paths(scratch / f"host-{config.lxd_project}"))
    if not report.ok:
        raise BenchError(f"configure_host {config.lxd_project} failed: {report.problems}")
    client = connect(project=config.lxd_project)
    worker = client.profiles.get(WORKER_PROFILE)
    default = client.profiles.get("default")
    default.config = dict(worker.config)
    default.devices = dict(worker.devices)
    default.save()


# liblxc logs these when a container is force-stopped or its monitor goes: not start failures.
BENIGN_MODULES = ("af_unix", "commands")


def first_error(log: str) -> str | None:
    """The first start ERROR of an instance's lxc.log, digits as #; or None.

    Errors of the modules in BENIGN_MODULES (a forced stop's noise) are passed over.
    """
    for line in log.splitlines():
        _, sep, message = line.partition(" ERROR ")
        if not sep:
            continue
        module, _, rest = message.strip().partition(" - ")
        if module.strip() in BENIGN_MODULES:
            continue
        text = rest.split(" - ", 1)[-1].strip()
        return re.sub(r"\d+", "#", text)[:160]
    return None


def start_errors(prefix: str) -> Counter[str]:
    """How many of the run's instances hit each first start error (from their lxc.log)."""
    errors: Counter[str] = Counter()
    if LXD_LOG_DIR.is_dir():
        for entry in LXD_LOG_DIR.iterdir():
            if entry.name.startswith(f"{prefix}-") and "_" in entry.name:
                try:
                    error = first_error((entry / "lxc.log").read_text(errors="replace"))
                except OSError:
                    continue
                if error:
                    errors[error] += 1
    return errors


def remove_log_dirs(prefix: str) -> int:
    """Remove LXD's per-instance log directories of the run's projects; return how many."""
    removed = 0
    if LXD_LOG_DIR.is_dir():
        for entry in LXD_LOG_DIR.iterdir():
            if entry.name.startswith(f"{prefix}-") and "_" in entry.name and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
    return removed


def purge(prefix: str) -> None:
    """Delete the run's projects and pools; retry while the daemon restarts (bounded)."""
    for attempt in range(12):
        try:
            removed = purge_run(prefix)
        except Exception as err:  # the shared daemon may be restarting
            print(f"cleanup attempt {attempt + 1} failed: {err}")
            time.sleep(10)
            continue
        for error, count in start_errors(prefix).most_common(3):
            print(f"  {count} instance(s) of this run logged at start: {error}")
        logs = remove_log_dirs(prefix)
        print(f"cleaned up: {', '.join(removed) or 'nothing'}; {logs} LXD log directories")
        return
    print(f"CLEANUP FAILED: delete the projects and pools {prefix}-* by hand")
