"""The workers' storage pool: on a device, directory or loop file; never losing instances."""

import contextlib
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pylxd
import pylxd.exceptions

from .. import constants
from ..config import HostConfig
from ..lxdclient import connect, endpoint_of, is_local, size_unenforced, socket_path
from ..units import parse_size
from .system import HostPaths, StepLog

_MKFS_BTRFS = (Path("/usr/sbin/mkfs.btrfs"), Path("/sbin/mkfs.btrfs"), Path("/usr/bin/mkfs.btrfs"))
DISK_NOT_ENFORCED = "worker-disk is NOT enforced"
_INSTANCE_URLS = ("/1.0/instances/", "/1.0/containers/", "/1.0/virtual-machines/")
_INSTALL_HINTS = {
    "btrfs": "install btrfs-progs (and a kernel with btrfs)",
    "zfs": "install zfsutils-linux (and the zfs kernel module)",
    "lvm": "install lvm2 and thin-provisioning-tools",
}


def driver_problem(client: pylxd.Client, driver: str, paths: HostPaths) -> str | None:
    """Why ``driver`` cannot be used on this host, or None when it can."""
    if driver == "dir":
        return None
    environment = client.host_info["environment"]
    supported = {d["Name"] for d in environment.get("storage_supported_drivers", [])}
    reasons = []
    if driver not in supported:
        reasons.append(f"LXD does not support {driver} here")
    if driver == "btrfs" and is_local(client):
        try:
            kernel = "btrfs" in paths.proc_filesystems.read_text().split()
        except FileNotFoundError:
            kernel = False
        if not kernel:
            reasons.append(f"the kernel has no btrfs (not in {paths.proc_filesystems})")
        snap = str(socket_path() or "").startswith("/var/snap/")
        if not snap and not any(p.exists() for p in _MKFS_BTRFS):
            reasons.append("mkfs.btrfs is missing")
    if not reasons:
        return None
    return (
        f"storage-driver: {driver} is not usable on this host ({'; '.join(reasons)}): "
        f"{_INSTALL_HINTS.get(driver, 'install its tools')}, or set storage-driver=dir"
    )


def _pool_request(config: HostConfig) -> dict[str, Any]:
    pool_config: dict[str, str] = {}
    if config.storage_source:
        pool_config["source"] = config.storage_source
    elif config.storage_driver != "dir":
        pool_config["size"] = config.storage_size
    return {
        "name": config.storage_pool,
        "driver": config.storage_driver,
        "description": constants.POOL_DESCRIPTION,
        "config": pool_config,
    }


MEMBER_POOL_KEYS = ("source", "size", "zfs.pool_name", "lvm.vg_name", "lvm.thinpool_name")


def create_pool(client: pylxd.Client, request: dict[str, Any]) -> None:
    """Create a storage pool; on a cluster, first on every member, then cluster-wide.

    LXD creates a clustered pool in two steps: a pending definition per member (with the
    member-specific keys such as ``source`` and ``size``), then the pool itself.
    """
    if not client.host_info["environment"].get("server_clustered"):
        client.api.storage_pools.post(json=request)
        return
    config = request.get("config") or {}
    local = {k: v for k, v in config.items() if k in MEMBER_POOL_KEYS}
    shared = {k: v for k, v in config.items() if k not in MEMBER_POOL_KEYS}
    for url in client.api.cluster.members.get().json()["metadata"]:
        member = url.rsplit("/", 1)[-1]
        client.api.storage_pools.post(
            params={"target": member},
            json={"name": request["name"], "driver": request["driver"], "config": local},
        )
    client.api.storage_pools.post(json={**request, "config": shared})


def _instances_using(used_by: list[str]) -> list[str]:
    names = []
    for url in used_by:
        parsed = urlparse(url)
        if parsed.path.startswith(_INSTANCE_URLS):
            project = parse_qs(parsed.query).get("project", ["default"])[0]
            names.append(f"{parsed.path.rsplit('/', 1)[-1]} (project {project})")
    return names


def ensure_pool(client: pylxd.Client, config: HostConfig, paths: HostPaths, log: StepLog) -> bool:
    """Create the worker pool, or keep/re-create an existing one; return whether it is usable."""
    name, driver = config.storage_pool, config.storage_driver
    try:
        pool = client.api.storage_pools[name].get().json()["metadata"]
    except pylxd.exceptions.NotFound:
        pool = None
    if pool is not None and pool["driver"] == driver:
        _note_pool_differences(pool, config, log)
        _note_disk_enforcement(pool, config, log, client)
        return True
    problem = driver_problem(client, driver, paths)
    if problem:
        log.problems.append(problem)
        return False
    if pool is not None and not _remove_pool(client, config, pool, log):
        return False
    where = config.storage_source or (
        "LXD's directory" if driver == "dir" else f"a {config.storage_size} loop file"
    )
    log.changes.append(f"created {driver} storage pool {name} on {where}")
    if log.dry_run:
        _note_disk_enforcement(None, config, log, client)
        return True
    try:
        create_pool(client, _pool_request(config))
    except pylxd.exceptions.LXDAPIException as err:
        log.changes.pop()
        log.problems.append(
            f"storage-driver: LXD could not create {driver} pool {name} on {where}: {err}; "
            "check storage-source/storage-size or set storage-driver=dir"
        )
        return False
    created = None
    with contextlib.suppress(pylxd.exceptions.LXDAPIException):
        created = client.api.storage_pools[name].get().json()["metadata"]
    _note_disk_enforcement(created, config, log, client)
    return True


def _note_disk_enforcement(
    pool: dict[str, Any] | None,
    config: HostConfig,
    log: StepLog,
    client: pylxd.Client | None = None,
) -> None:
    """Note (not a problem) that worker-disk is not enforced when the pool ignores sizes.

    ``pool`` is the pool's record, or None for one not created yet (dry run).
    """
    if not config.worker_disk:
        return
    if client is not None and not is_local(client):
        log.notes.append(
            f"worker-disk: whether {config.storage_pool} enforces it is not checked on an LXD "
            "endpoint (a dir pool enforces it only on filesystems with project quotas)"
        )
        return
    if pool is not None:
        driver, source = pool["driver"], (pool.get("config") or {}).get("source", "")
    else:
        driver, source = config.storage_driver, config.storage_source
        socket = socket_path()
        if not source and socket is not None:
            source = str(socket.parent / "storage-pools" / config.storage_pool)
    reason = size_unenforced(driver, source)
    if reason is not None:
        log.notes.append(
            f"{DISK_NOT_ENFORCED} on {driver} pool {config.storage_pool} here: {reason}, so a "
            f"worker can write more than {config.worker_disk} and fill the pool all workers "
            "share; storage-driver btrfs, zfs or lvm enforces it"
        )


def _note_pool_differences(pool: dict[str, Any], config: HostConfig, log: StepLog) -> None:
    have = pool.get("config") or {}
    name = config.storage_pool
    if config.storage_source and have.get("source") != config.storage_source:
        log.notes.append(
            f"pool {name} is on {have.get('source')}, not storage-source={config.storage_source};"
            " it is kept as it is"
        )
    size = have.get("size")
    if not config.storage_source and config.storage_driver != "dir" and size:
        with contextlib.suppress(ValueError):
            if parse_size(size) != config.storage_size_bytes:
                log.notes.append(
                    f"pool {name} is {size}, not storage-size={config.storage_size}; "
                    "it is kept as it is"
                )


def _templates_using(used_by: list[str], project: str) -> dict[str, str]:
    """The worker templates of ``project`` among a pool's users: url -> name."""
    found = {}
    for url in used_by:
        parsed = urlparse(url)
        name = parsed.path.rsplit("/", 1)[-1]
        in_project = parse_qs(parsed.query).get("project", ["default"])[0] == project
        if parsed.path.startswith(_INSTANCE_URLS) and in_project:
            if name.startswith(constants.TEMPLATE_NAME_PREFIX):
                found[url] = name
    return found


def delete_instances(scoped: pylxd.Client, names: list[str]) -> None:
    """Delete instances of the client's project (force-stopped first); gone ones are fine."""
    for name in names:
        with contextlib.suppress(pylxd.exceptions.NotFound):
            instance = scoped.instances.get(name)
            if instance.status != "Stopped":
                instance.stop(force=True, wait=True)
            instance.delete(wait=True)


def _remove_pool(
    client: pylxd.Client, config: HostConfig, pool: dict[str, Any], log: StepLog
) -> bool:
    """Delete a pool of another driver that holds no instance; False (problem) otherwise."""
    name, used_by = pool["name"], pool.get("used_by") or []
    # Worker templates are ours and made again from the image: they never keep a pool.
    templates = _templates_using(used_by, config.lxd_project)
    used_by = [url for url in used_by if url not in templates]
    instances = _instances_using(used_by)
    if instances:
        shown = ", ".join(instances[:5]) + (", ..." if len(instances) > 5 else "")
        log.problems.append(
            f"storage-driver: pool {name} is {pool['driver']} and holds {len(instances)} "
            f"instances ({shown}); it is never re-created: move or delete them, or set "
            f"storage-driver={pool['driver']}"
        )
        return False
    our_profile = f"/1.0/profiles/{constants.WORKER_PROFILE}?project={config.lxd_project}"
    others = []
    for url in used_by:
        parsed = urlparse(url)
        if parsed.path.startswith("/1.0/images/"):
            continue  # cached image volumes are dropped below
        if url != our_profile and not (
            config.lxd_project == "default" and url == f"/1.0/profiles/{constants.WORKER_PROFILE}"
        ):
            others.append(url)
    if others:
        log.problems.append(
            f"storage-driver: pool {name} is {pool['driver']} and is used by "
            f"{', '.join(others[:5])}; it is not re-created: free it or set "
            f"storage-driver={pool['driver']}"
        )
        return False
    log.changes.extend(
        f"deleted worker template {template} (made again from its image)"
        for template in templates.values()
    )
    log.changes.append(f"deleted {pool['driver']} storage pool {name} (it held no instance)")
    if log.dry_run:
        return True
    scoped = connect(project=config.lxd_project, endpoint=endpoint_of(config))
    delete_instances(scoped, list(templates.values()))
    with contextlib.suppress(pylxd.exceptions.NotFound):
        profile = scoped.profiles.get(constants.WORKER_PROFILE)
        profile.devices = {k: v for k, v in profile.devices.items() if v.get("pool") != name}
        profile.save()
    try:
        volumes = client.api.storage_pools[name].volumes.get(
            params={"all-projects": "true", "recursion": "1"}
        )
        for volume in volumes.json()["metadata"]:
            if volume["type"] == "image":
                endpoint = client.api.storage_pools[name].volumes.image[volume["name"]]
                endpoint.delete(params={"project": volume.get("project") or "default"})
        client.api.storage_pools[name].delete()
    except pylxd.exceptions.LXDAPIException as err:
        log.changes.pop()
        log.problems.append(f"storage-driver: pool {name} could not be deleted: {err}")
        return False
    return True
