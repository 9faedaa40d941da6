"""The worker profile: rendered from its template, compared, applied."""

import contextlib
from typing import Any

import pylxd
import pylxd.exceptions
import yaml

from .. import constants
from ..config import HostConfig
from ..rendering import render
from .system import StepLog


def render_profile(config: HostConfig, kernel_modules: list[str]) -> dict[str, Any]:
    """Return the worker profile (description, config, devices) the config asks for."""
    text = render(
        "worker-profile.yaml.j2",
        app=constants.APP_NAME,
        privileged=config.worker_privileged,
        nesting=config.worker_nesting,
        idmap_isolated=config.worker_idmap_isolated,
        cpu=config.worker_cpu,
        memory=config.worker_memory,
        disk=config.worker_disk,
        processes=config.worker_processes,
        kernel_modules=kernel_modules,
        pool=config.storage_pool,
        network=config.worker_network,
    )
    profile = yaml.safe_load(text)
    return {
        "description": profile["description"],
        "config": profile.get("config") or {},
        "devices": profile.get("devices") or {},
    }


def network_problem(client: pylxd.Client, network: str) -> str | None:
    """Why worker-network cannot be used, or None."""
    if not network:
        return None
    try:
        client.api.networks[network].get()
    except pylxd.exceptions.NotFound:
        return (
            f"worker-network: LXD has no network {network}; create it "
            f"(lxc network create {network}) or leave worker-network empty"
        )
    return None


def ensure_profile(
    scoped: pylxd.Client | None, config: HostConfig, wanted: dict[str, Any], log: StepLog
) -> None:
    """Create the worker profile or update it where it differs from ``wanted``."""
    name = constants.WORKER_PROFILE
    current = None
    if scoped is not None:
        with contextlib.suppress(pylxd.exceptions.NotFound):
            current = scoped.api.profiles[name].get().json()["metadata"]
    if current is None:
        log.changes.append(f"created worker profile {name} in project {config.lxd_project}")
        if not log.dry_run and scoped is not None:
            scoped.api.profiles.post(json={"name": name, **wanted})
        return
    differing = [k for k in ("description", "config", "devices") if current.get(k) != wanted[k]]
    if not differing:
        return
    log.changes.append(f"updated worker profile {name} ({', '.join(differing)})")
    if log.dry_run or scoped is None:
        return
    try:
        scoped.api.profiles[name].put(json=wanted)
    except pylxd.exceptions.LXDAPIException as err:
        log.changes.pop()
        log.problems.append(
            f"worker profile {name} could not be updated ({err}); stop the workers using it "
            "or undo the last worker-* option change"
        )
