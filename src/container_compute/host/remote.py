"""Configuring an LXD endpoint (lxd-endpoint): a remote LXD, or an LXD cluster over HTTPS.

Only what lives in LXD is configured there: the workers' project, storage pool (on a cluster,
on every member) and worker profile. What belongs to a machine (installing LXD, its HTTPS
listener, kernel modules, sysctl, subuid/subgid) is the business of that machine's own
operator (or of container-compute running there), and the report says so.
"""

import pylxd
import pylxd.exceptions

from ..config import HostConfig
from ..lxdclient import LXDAccessError, LXDUnavailableError, connect, endpoint_of
from .profile import ensure_profile, network_problem, render_profile
from .project import ensure_project
from .storage import ensure_pool
from .system import HostPaths, StepLog

REMOTE_NOTE = (
    "lxd-endpoint: installing LXD, its HTTPS listener, sysctl tuning and subuid/subgid ranges "
    "are left to the endpoint's own machines"
)


def connect_remote(config: HostConfig, log: StepLog) -> pylxd.Client | None:
    """Return a checked client of lxd-endpoint; None (with the reason as a problem) if none."""
    try:
        return connect(endpoint=endpoint_of(config), timeout=30.0)
    except (LXDUnavailableError, LXDAccessError) as err:
        log.problems.append(str(err))
        return None


def configure_remote(
    client: pylxd.Client, config: HostConfig, paths: HostPaths, log: StepLog
) -> None:
    """Bring the endpoint's project, pool and worker profile to ``config``."""
    log.notes.append(REMOTE_NOTE)
    project_ok = ensure_project(client, config, log)
    pool_ok = ensure_pool(client, config, paths, log)
    modules = list(config.kernel_modules)
    if modules:
        log.notes.append(
            "worker-kernel-modules: not checked on an LXD endpoint; LXD loads "
            f"{', '.join(modules)} on the member where a worker starts, and the start fails "
            "where one is missing"
        )
    network = network_problem(client, config.worker_network)
    if network:
        log.problems.append(network)
    if not (project_ok and pool_ok and network is None):
        return
    scoped = None
    if client.projects.exists(config.lxd_project):
        scoped = connect(project=config.lxd_project, endpoint=endpoint_of(config), timeout=30.0)
    try:
        ensure_profile(scoped, config, render_profile(config, modules), log)
    except pylxd.exceptions.LXDAPIException as err:
        log.problems.append(f"LXD refused a change: {err}")
