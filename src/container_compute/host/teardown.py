"""Undo what configure_host did, when the charm is removed — and nothing that is not ours.

Removed: the sysctl and modules-load files we wrote; our labelled workers; the worker
profile. The project and the pool are deleted only when they were created by container-compute
(their description says so) and hold nothing else; our worker images (``os: container-compute``)
go with the project. Whatever is kept is listed in ``left`` with the reason, for the operator.
Values already applied (sysctl, loaded modules, subuid ranges) stay until the next reboot.
"""

import contextlib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlparse

import pylxd
import pylxd.exceptions

from .. import constants
from ..config import HostConfig
from ..lxdclient import LXDUnavailableError, connect
from .sysctl import ensure_sysctl
from .system import HostPaths, remove_if_present

OUR_IMAGE_OS = "container-compute"


@dataclass
class TeardownReport:
    """What teardown_host removed (or would), and what it kept and why."""

    changes: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)


def teardown_host(
    config: HostConfig, *, paths: HostPaths | None = None, dry_run: bool = False
) -> TeardownReport:
    """Remove what configure_host made for ``config``; report what was kept and why."""
    paths = paths or HostPaths()
    report = TeardownReport()
    sysctl_changes, _notes = ensure_sysctl(paths, False, dry_run=dry_run)
    report.changes.extend(sysctl_changes)
    modules_file = paths.modules_load_dir / constants.MODULES_LOAD_FILE_NAME
    if remove_if_present(modules_file, dry_run=dry_run):
        report.changes.append(f"removed {modules_file}")
    try:
        client = connect()
        client.host_info  # noqa: B018 - a round trip proves the daemon answers
    except (LXDUnavailableError, pylxd.exceptions.LXDAPIException, OSError) as err:
        report.left.append(
            f"LXD objects (project {config.lxd_project}): LXD does not answer: {err}"
        )
        return report
    _teardown_lxd(client, config, report, dry_run)
    return report


def _teardown_lxd(
    client: pylxd.Client, config: HostConfig, report: TeardownReport, dry_run: bool
) -> None:
    project = config.lxd_project
    if client.projects.exists(project):
        scoped = connect(project=project)
        foreign = _delete_workers(scoped, report, dry_run)
        profile_kept = _delete_profile(scoped, report, dry_run)
        _delete_project(client, scoped, config, bool(foreign) or profile_kept, report, dry_run)
    _delete_pool(client, config, report, dry_run)


def _delete_workers(scoped: pylxd.Client, report: TeardownReport, dry_run: bool) -> list[str]:
    """Delete our labelled workers; return the names of the instances that are not ours."""
    foreign = []
    for record in scoped.api.instances.get(params={"recursion": 1}).json()["metadata"]:
        name = record["name"]
        config = record.get("config") or {}
        if constants.LABEL_JOB not in config and constants.LABEL_TEMPLATE not in config:
            foreign.append(name)
            continue
        kind = "worker" if constants.LABEL_JOB in config else "worker template"
        report.changes.append(f"deleted {kind} {name}")
        if dry_run:
            continue
        with contextlib.suppress(pylxd.exceptions.NotFound):
            instance = scoped.instances.get(name)
            if instance.status != "Stopped":
                instance.stop(force=True, wait=True)
            instance.delete(wait=True)
    if foreign:
        report.left.append(
            f"instances {', '.join(sorted(foreign))} in project {scoped.project}: "
            "not container-compute workers"
        )
    return foreign


def _delete_profile(scoped: pylxd.Client, report: TeardownReport, dry_run: bool) -> bool:
    """Delete the worker profile; return True when it had to be kept (still in use)."""
    try:
        profile = scoped.api.profiles[constants.WORKER_PROFILE].get().json()["metadata"]
    except pylxd.exceptions.NotFound:
        return False
    users = [u for u in profile.get("used_by") or [] if not dry_run or "/instances/" not in u]
    if users and not dry_run:
        report.left.append(f"profile {constants.WORKER_PROFILE}: still used by {', '.join(users)}")
        return True
    report.changes.append(f"deleted profile {constants.WORKER_PROFILE}")
    if not dry_run:
        scoped.api.profiles[constants.WORKER_PROFILE].delete()
    return False


def _delete_project(
    client: pylxd.Client,
    scoped: pylxd.Client,
    config: HostConfig,
    blocked: bool,
    report: TeardownReport,
    dry_run: bool,
) -> None:
    project = config.lxd_project
    record = client.api.projects[project].get().json()["metadata"]
    if project == "default" or record.get("description") != constants.PROJECT_DESCRIPTION:
        report.left.append(f"project {project}: not created by container-compute")
        return
    images = scoped.api.images.get(params={"recursion": 1}).json()["metadata"]
    foreign_images = [
        i["fingerprint"][:12]
        for i in images
        if (i.get("properties") or {}).get("os") != OUR_IMAGE_OS
    ]
    others = [u for u in record.get("used_by") or [] if not _ours_in_project(u, images)]
    if blocked or foreign_images or others:
        why = ", ".join(
            [
                *(["instances or profiles remain"] if blocked else []),
                *(f"image {f}" for f in foreign_images),
                *others[:5],
            ]
        )
        report.left.append(f"project {project}: it still holds {why}")
        return
    for image in images:
        report.changes.append(f"deleted worker image {image['fingerprint'][:12]}")
        if not dry_run:
            scoped.api.images[image["fingerprint"]].delete()
    report.changes.append(f"deleted project {project}")
    if not dry_run:
        with contextlib.suppress(pylxd.exceptions.LXDAPIException):
            scoped.api.profiles["default"].put(
                json={"config": {}, "devices": {}, "description": ""}
            )
        client.api.projects[project].delete()


def _ours_in_project(url: str, images: list[dict[str, Any]]) -> bool:
    """Tell whether a project's used_by entry is something teardown deletes with it."""
    path = urlparse(url).path
    if path.startswith("/1.0/images/"):
        return any(path.endswith(i["fingerprint"]) for i in images)
    return path in ("/1.0/profiles/default", f"/1.0/profiles/{constants.WORKER_PROFILE}")


def _delete_pool(
    client: pylxd.Client, config: HostConfig, report: TeardownReport, dry_run: bool
) -> None:
    name = config.storage_pool
    try:
        pool = client.api.storage_pools[name].get().json()["metadata"]
    except pylxd.exceptions.NotFound:
        return
    if pool.get("description") != constants.POOL_DESCRIPTION:
        report.left.append(f"storage pool {name}: not created by container-compute")
        return
    users = []
    for url in pool.get("used_by") or []:
        parsed = urlparse(url)
        project = parse_qs(parsed.query).get("project", ["default"])[0]
        if dry_run and project == config.lxd_project:
            continue  # would be gone with our project
        users.append(url)
    if users:
        shown = ", ".join(users[:5]) + (", ..." if len(users) > 5 else "")
        report.left.append(f"storage pool {name}: still used by {shown}")
        return
    report.changes.append(f"deleted storage pool {name}")
    if not dry_run:
        client.api.storage_pools[name].delete()
