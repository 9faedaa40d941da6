"""The LXD side of host configuration: daemon, server settings, project, pool, profile, trust.

Each ``ensure_*`` function compares what LXD has with what the config asks for, changes only
what differs (nothing with ``dry_run``) and appends human-readable lines to a ``StepLog``.
Anticipated failures become problems that name the config option; they never raise.
"""

import base64
import contextlib
import hashlib
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pylxd
import pylxd.exceptions
import yaml

from . import constants
from .config import HostConfig
from .host_system import HostError, HostPaths, render_template
from .lxdclient import LXDUnavailableError, connect, socket_path
from .units import parse_size

HTTPS_OWNER_KEY = constants.CONFIG_KEY_PREFIX + "https-address"
LXD_START_TIMEOUT = 120.0
_MKFS_BTRFS = (Path("/usr/sbin/mkfs.btrfs"), Path("/sbin/mkfs.btrfs"), Path("/usr/bin/mkfs.btrfs"))
_INSTANCE_URLS = ("/1.0/instances/", "/1.0/containers/", "/1.0/virtual-machines/")
_INSTALL_HINTS = {
    "btrfs": "install btrfs-progs (and a kernel with btrfs)",
    "zfs": "install zfsutils-linux (and the zfs kernel module)",
    "lvm": "install lvm2 and thin-provisioning-tools",
}


@dataclass
class StepLog:
    """What the steps did, would do, or could not do."""

    dry_run: bool
    changes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- daemon


def _answering_client() -> pylxd.Client | None:
    try:
        client = connect()
        client.host_info  # noqa: B018 - a round trip proves the daemon answers
    except (LXDUnavailableError, pylxd.exceptions.LXDAPIException, OSError):
        return None
    return client


def _run(command: list[str], log: StepLog, option: str, what: str) -> bool:
    try:
        subprocess.run(command, check=True, capture_output=True)
    except (subprocess.CalledProcessError, OSError) as err:
        detail = getattr(err, "stderr", b"") or str(err).encode()
        log.problems.append(
            f"{option}: {what} failed ({' '.join(command)}): "
            f"{detail.decode(errors='replace').strip()[-300:]}"
        )
        return False
    return True


def ensure_daemon(config: HostConfig, log: StepLog) -> pylxd.Client | None:
    """Return a client of a daemon that answers, installing and starting LXD when needed."""
    client = _answering_client()
    if client is not None:
        return client
    use_snap = config.lxd_source == "snap" or (
        config.lxd_source == "auto" and Path(constants.SNAP).exists()
    )
    installed = Path(constants.LXD_SNAP_BIN).exists() or Path(constants.LXD_DEB_BIN).exists()
    if not installed:
        if use_snap and not Path(constants.SNAP).exists():
            log.problems.append(
                "lxd-source: snap was asked for but snapd is not installed; install snapd "
                "or set lxd-source=deb"
            )
            return None
        command = (
            [constants.SNAP, "install", "lxd", "--channel", config.lxd_snap_channel]
            if use_snap
            else [constants.APT_GET, "install", "-y", "lxd"]
        )
        origin = f"snap {config.lxd_snap_channel}" if use_snap else "deb"
        log.changes.append(f"installed LXD ({origin})")
        if log.dry_run:
            return None
        if not _run(command, log, "lxd-source", "installing LXD"):
            return None
    log.changes.append("started the LXD daemon")
    if log.dry_run:
        log.notes.append("LXD is not running: the other steps are checked once it is")
        return None
    _start_daemon(log)
    deadline = time.monotonic() + LXD_START_TIMEOUT
    while time.monotonic() < deadline:
        client = _answering_client()
        if client is not None:
            return client
        time.sleep(1.0)
    log.problems.append(
        f"lxd-source: LXD did not answer within {LXD_START_TIMEOUT:.0f}s of starting; "
        f"see {constants.LXD_LOG_FILE} or the lxd service's journal"
    )
    return None


def _start_daemon(log: StepLog) -> None:
    snap = Path(constants.LXD_SNAP_BIN).exists()
    if Path("/run/systemd/system").exists():
        unit = "snap.lxd.daemon" if snap else "lxd"
        _run([constants.SYSTEMCTL, "start", unit], log, "lxd-source", "starting LXD")
        return
    binary = constants.LXD_SNAP_BIN if snap else constants.LXD_DEB_BIN
    command = [binary, "--group", "root", "--logfile", str(constants.LXD_LOG_FILE)]
    subprocess.Popen(  # detached daemon: no shell, its own session, no inherited pipes
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def restart_daemon(log: StepLog) -> None:
    """Restart LXD so that it reads new subuid/subgid ranges (or say how to)."""
    if log.dry_run:
        log.changes.append("restarted LXD to read the new id ranges")
        return
    if not Path("/run/systemd/system").exists():
        log.notes.append(
            "LXD must be restarted to use the new id ranges; there is no systemd here: "
            "stop the daemon and start it again (scripts/setup-host)"
        )
        return
    socket = socket_path()
    snap = socket is not None and str(socket).startswith("/var/snap/")
    command = (
        [constants.SNAP, "restart", "lxd"] if snap else [constants.SYSTEMCTL, "restart", "lxd"]
    )
    if _run(command, log, "max-parallel-workers", "restarting LXD"):
        log.changes.append("restarted LXD to read the new id ranges")


def ensure_https(client: pylxd.Client, config: HostConfig, log: StepLog) -> None:
    """Set core.https_address from lxd-listen-https; unset it only when we had set it."""
    server = client.host_info["config"]
    current = server.get("core.https_address", "")
    owned = server.get(HTTPS_OWNER_KEY, "") != ""
    wanted = config.lxd_listen_https
    updates: dict[str, Any] = {}
    if wanted and (current != wanted or not owned):
        updates = {"core.https_address": wanted, HTTPS_OWNER_KEY: wanted}
        if current != wanted:
            log.changes.append(f"LXD listens on {wanted}")
    elif not wanted and owned:
        updates = {"core.https_address": None, HTTPS_OWNER_KEY: None}
        log.changes.append(f"LXD no longer listens on {current or 'the network'}")
    if not updates or log.dry_run:
        return
    try:
        client.api.patch(json={"config": updates})
    except pylxd.exceptions.LXDAPIException as err:
        log.problems.append(f"lxd-listen-https: LXD refused {wanted or 'the unset'}: {err}")


# --------------------------------------------------------------------------- project


PROJECT_FEATURES = {
    "features.images": "true",
    "features.profiles": "true",
    "features.storage.volumes": "true",
}


def ensure_project(client: pylxd.Client, config: HostConfig, log: StepLog) -> bool:
    """Create the workers' project, or give it our features; return whether it is usable."""
    name = config.lxd_project
    try:
        project = client.api.projects[name].get().json()["metadata"]
    except pylxd.exceptions.NotFound:
        log.changes.append(f"created LXD project {name}")
        if not log.dry_run:
            client.api.projects.post(
                json={
                    "name": name,
                    "description": "container-compute workers",
                    "config": dict(PROJECT_FEATURES),
                }
            )
        return True
    config_now = project.get("config") or {}
    missing = {k: v for k, v in PROJECT_FEATURES.items() if config_now.get(k) != v}
    if not missing:
        return True
    log.changes.append(f"set {', '.join(sorted(missing))} on project {name}")
    if log.dry_run:
        return True
    try:
        client.api.projects[name].patch(json={"config": missing})
    except pylxd.exceptions.LXDAPIException as err:
        log.problems.append(
            f"lxd-project: project {name} cannot get {', '.join(sorted(missing))} ({err}); "
            "choose another lxd-project"
        )
        return False
    return True


# --------------------------------------------------------------------------- storage pool


def driver_problem(client: pylxd.Client, driver: str, paths: HostPaths) -> str | None:
    """Why ``driver`` cannot be used on this host, or None when it can."""
    if driver == "dir":
        return None
    environment = client.host_info["environment"]
    supported = {d["Name"] for d in environment.get("storage_supported_drivers", [])}
    reasons = []
    if driver not in supported:
        reasons.append(f"LXD does not support {driver} here")
    if driver == "btrfs":
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
        "description": "container-compute workers",
        "config": pool_config,
    }


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
        return True
    try:
        client.api.storage_pools.post(json=_pool_request(config))
    except pylxd.exceptions.LXDAPIException as err:
        log.changes.pop()
        log.problems.append(
            f"storage-driver: LXD could not create {driver} pool {name} on {where}: {err}; "
            "check storage-source/storage-size or set storage-driver=dir"
        )
        return False
    return True


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


def _remove_pool(
    client: pylxd.Client, config: HostConfig, pool: dict[str, Any], log: StepLog
) -> bool:
    """Delete a pool of another driver that holds no instance; False (problem) otherwise."""
    name, used_by = pool["name"], pool.get("used_by") or []
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
    log.changes.append(f"deleted {pool['driver']} storage pool {name} (it held no instance)")
    if log.dry_run:
        return True
    scoped = connect(project=config.lxd_project)
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


# --------------------------------------------------------------------------- worker profile


def render_profile(config: HostConfig, kernel_modules: list[str]) -> dict[str, Any]:
    """Return the worker profile (description, config, devices) the config asks for."""
    text = render_template(
        "worker-profile.yaml.j2",
        app=constants.APP_NAME,
        privileged=config.worker_privileged,
        nesting=config.worker_nesting,
        idmap_isolated=config.worker_idmap_isolated,
        cpu=config.worker_cpu,
        memory=config.worker_memory,
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


# --------------------------------------------------------------------------- trust


def pem_to_der(unit: str, pem: str) -> bytes:
    """Return the DER bytes of a PEM certificate; HostError naming ``unit`` when it is not one."""
    try:
        return ssl.PEM_cert_to_DER_cert(pem.strip() + "\n")
    except (ValueError, TypeError) as err:
        raise HostError(f"peer {unit}: its certificate is not a PEM certificate") from err


def trusted_certificates(client: pylxd.Client) -> dict[str, dict[str, Any]]:
    """LXD's trust store: name -> {fingerprint, ...} (names are not unique; last one wins)."""
    entries: dict[str, dict[str, Any]] = {}
    listing = client.api.certificates.get(params={"recursion": "1"}).json()["metadata"]
    for entry in listing:
        entries[entry.get("name", "")] = entry
    return entries


def sync_trust(client: pylxd.Client, peers: dict[str, str]) -> list[str]:
    """Add missing peer certificates, replace changed ones, drop ours no longer listed."""
    wanted = {
        constants.TRUST_NAME_PREFIX + unit: pem_to_der(unit, pem) for unit, pem in peers.items()
    }
    current = trusted_certificates(client)
    fingerprints = {entry["fingerprint"] for entry in current.values()}
    own = client.host_info["environment"].get("certificate_fingerprint", "")
    changes = []
    for name, entry in current.items():
        if not name.startswith(constants.TRUST_NAME_PREFIX):
            continue
        if name not in wanted or hashlib.sha256(wanted[name]).hexdigest() != entry["fingerprint"]:
            client.api.certificates[entry["fingerprint"]].delete()
            fingerprints.discard(entry["fingerprint"])
            changes.append(f"removed {name} from LXD's trust store")
    for name, der in wanted.items():
        fingerprint = hashlib.sha256(der).hexdigest()
        if fingerprint in fingerprints or fingerprint == own:
            continue
        client.api.certificates.post(
            json={
                "type": "client",
                "name": name,
                "certificate": base64.b64encode(der).decode(),
            }
        )
        fingerprints.add(fingerprint)
        changes.append(f"trusted {name} ({fingerprint[:12]})")
    return changes
