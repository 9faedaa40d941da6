"""Delete everything a test run created on the shared LXD daemon, found by its name prefix."""

import contextlib
import time

import pylxd
import pylxd.exceptions

from container_compute.lxdclient import connect


def purge_project(client: pylxd.Client, project: str) -> None:
    """Force-delete the project's instances, images, profiles and volumes, then the project."""
    scoped = connect(project=project)
    for instance in scoped.instances.all():
        with contextlib.suppress(pylxd.exceptions.LXDAPIException):
            if instance.status != "Stopped":
                instance.stop(force=True, wait=True)
        with contextlib.suppress(pylxd.exceptions.LXDAPIException):
            instance.delete(wait=True)
    for image in scoped.images.all():
        with contextlib.suppress(pylxd.exceptions.LXDAPIException):
            image.delete(wait=True)
    for profile in scoped.profiles.all():
        if profile.name != "default":
            with contextlib.suppress(pylxd.exceptions.LXDAPIException):
                profile.delete()
    with contextlib.suppress(pylxd.exceptions.LXDAPIException):
        default = scoped.profiles.get("default")
        default.devices = {}
        default.save()
    for _ in range(20):  # an agent that just stopped may still have a deletion in flight
        try:
            client.projects.get(project).delete()
            return
        except pylxd.exceptions.NotFound:
            return
        except pylxd.exceptions.LXDAPIException:
            time.sleep(0.5)
            for record in scoped.api.instances.get(params={"recursion": 1}).json()["metadata"]:
                with contextlib.suppress(pylxd.exceptions.LXDAPIException):
                    scoped.api.instances[record["name"]].state.put(
                        json={"action": "stop", "force": True}
                    )
                    time.sleep(0.2)
                with contextlib.suppress(pylxd.exceptions.LXDAPIException):
                    scoped.api.instances[record["name"]].delete()
    client.projects.get(project).delete()


def purge_run(prefix: str) -> list[str]:
    """Delete every project and storage pool whose name starts with ``prefix``; return names."""
    client = connect()
    removed: list[str] = []
    for project in client.projects.all():
        if project.name.startswith(prefix):
            purge_project(client, project.name)
            removed.append(f"project {project.name}")
    for pool in client.storage_pools.all():
        if pool.name.startswith(prefix):
            for volume in pool.volumes.all():
                with contextlib.suppress(pylxd.exceptions.LXDAPIException):
                    if volume.type == "image":
                        client.api.storage_pools[pool.name].volumes.image[volume.name].delete()
            try:
                pool.delete()
                removed.append(f"pool {pool.name}")
            except pylxd.exceptions.LXDAPIException as err:
                removed.append(f"pool {pool.name} NOT deleted: {err}")
    return removed
