"""The workers' LXD project."""

import pylxd
import pylxd.exceptions

from .. import constants
from ..config import HostConfig
from .system import StepLog

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
                    "description": constants.PROJECT_DESCRIPTION,
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
