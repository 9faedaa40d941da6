"""Prepared templates: a worker is a copy-on-write copy of a container started once.

Creating a worker from an image unpacks (or snapshots) the image and, for an unprivileged
worker with a new idmap, rewrites the ownership of every file at its first start. A template
pays that once: it is created from the image, started, stopped; workers are copies of it that
keep its idmap, so their first start rewrites nothing (about 0.2 s, whatever the image size).

Which template a worker copies depends on how the worker profile maps ids:

- privileged, or unprivileged sharing LXD's default map: one template per image (and mode);
- ``worker-idmap-isolated``: one template per job and image, with an id range of its own
  (``security.idmap.base``) that the job's workers share: jobs stay apart from each other
  and from every other isolated container, and no worker pays a remap. (LXD's own isolated
  allocation gives every worker a new range, so every worker paid one.)

A template that is not yet ``ready`` (a crash while it was made) is made again. An image
alias moved to a new image gets a new template; templates of old images and of finished jobs
are removed by ``prune``. Templates are made only on a local daemon that is not clustered:
a copy on a cluster would cross members.
"""

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pylxd
import pylxd.exceptions

from ...config import HostConfig
from ...constants import (
    IDMAP_SIZE,
    LABEL_JOB,
    LABEL_OWNER,
    LABEL_TEMPLATE,
    LABEL_TEMPLATE_JOB,
    LABEL_TEMPLATE_READY,
    SUBGID_FILE,
    SUBUID_FILE,
    TEMPLATE_NAME_PREFIX,
    WORKER_PROFILE,
)
from ...lxdclient import connect
from .. import LaunchError
from .api import LXDApi, OperationFailedError, image_source, remove_log_dir

logger = logging.getLogger(__name__)

FINGERPRINT_TTL_SECONDS = 5.0  # how long an alias -> fingerprint answer is trusted


def root_id_range(subuid: Path = SUBUID_FILE, subgid: Path = SUBGID_FILE) -> tuple[int, int]:
    """Return (first, count) of the ids root owns in both subuid and subgid (largest range).

    Raises:
        LaunchError: when root owns no range in one of them.
    """
    ranges = []
    for path in (subuid, subgid):
        best = (0, 0)
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            lines = []
        for line in lines:
            fields = line.strip().split(":")
            if len(fields) == 3 and fields[0] == "root" and fields[1].isdigit():
                if fields[2].isdigit() and int(fields[2]) > best[1]:
                    best = (int(fields[1]), int(fields[2]))
        if not best[1]:
            raise LaunchError(f"root owns no subordinate ids in {path} (run configure-host)")
        ranges.append(best)
    first = max(start for start, _ in ranges)
    end = min(start + count for start, count in ranges)
    return first, max(0, end - first)


def isolated_ranges(records: Iterable[dict[str, Any]]) -> list[tuple[int, int]]:
    """Return the (first, end) host id ranges isolated instances hold (or will hold)."""
    used = []
    for record in records:
        config = record.get("config") or {}
        if config.get("security.idmap.isolated") != "true":
            continue
        for key in ("volatile.idmap.next", "volatile.last_state.idmap", "volatile.idmap.current"):
            try:
                entries = json.loads(config.get(key) or "[]")
            except ValueError:
                continue
            for entry in entries if isinstance(entries, list) else []:
                if isinstance(entry, dict) and entry.get("Nsid") == 0:
                    first = int(entry.get("Hostid", 0))
                    used.append((first, first + int(entry.get("Maprange", 0))))
        base = config.get("security.idmap.base", "")
        if base.isdigit():
            used.append((int(base), int(base) + IDMAP_SIZE))
    return used


def free_block(
    first: int, count: int, used: Iterable[tuple[int, int]], size: int = IDMAP_SIZE
) -> int | None:
    """Return the highest ``size``-aligned block of [first, first+count) that ``used`` misses.

    From the top: LXD's own isolated allocation starts at the bottom of the range.
    """
    taken = sorted(used)
    base = first + ((count - size) // size) * size
    while base > first:  # the first block stays LXD's (its allocation starts there)
        if not any(start < base + size and base < end for start, end in taken):
            return base
        base -= size
    return None


class TemplateBook:
    """The templates of one project on the local daemon: found, made, and pruned."""

    def __init__(self, api: LXDApi, config: HostConfig, owner: str = "") -> None:
        """Keep ``owner``'s templates of ``api``'s project for workers of ``config``'s profile.

        Other owners' templates (another state dir on the same project) are never touched.
        """
        self.api = api
        self.config = config
        self.owner = owner
        self._lock = threading.Lock()
        self._making: dict[str, threading.Lock] = {}
        self._fingerprints: dict[str, tuple[float, str]] = {}
        self._bases: dict[str, int] = {}  # job -> id base chosen (until its template exists)
        self._images: dict[str, dict[str, str]] = {}

    def worker_source(self, image: str, job_id: str, copy: bool) -> dict[str, Any]:
        """The ``source`` of a worker's create: a copy of its template (``copy``), or the image.

        Raises:
            LaunchError: when the image does not exist, or its template cannot be made.
        """
        source = self._images.get(image)
        if source is None:
            source = self.api.retry(
                f"looking up image {image}", lambda: image_source(self.api.client, image)
            )
            if source is None:
                raise LaunchError(
                    f"image {image!r} not found in LXD project {self.api.project!r} "
                    "(build one with the build-worker-image action)"
                )
            self._images[image] = source
        return self.source_for(source, job_id) if copy else source

    def forget_base(self, name: str) -> None:
        """The range chosen for ``name`` is in LXD's records now (or was never used)."""
        with self._lock:
            self._bases.pop(name, None)

    @property
    def isolated(self) -> bool:
        """Whether workers get a range of ids per job (not privileged, idmap isolated)."""
        return self.config.worker_idmap_isolated and not self.config.worker_privileged

    def mode(self) -> str:
        """How the profile maps ids: "priv", "shared" or "job" (one range per job)."""
        if self.config.worker_privileged:
            return "priv"
        return "job" if self.isolated else "shared"

    def fingerprint(self, source: dict[str, str]) -> str:
        """Return the full fingerprint of the image an instance ``source`` names."""
        if "fingerprint" in source:
            return source["fingerprint"]
        alias = source["alias"]
        with self._lock:
            cached = self._fingerprints.get(alias)
        if cached is not None and time.monotonic() - cached[0] < FINGERPRINT_TTL_SECONDS:
            return cached[1]
        target = self.api.retry(
            f"looking up image {alias}",
            lambda: self.api.client.api.images.aliases[alias].get().json()["metadata"]["target"],
        )
        with self._lock:
            self._fingerprints[alias] = (time.monotonic(), str(target))
        return str(target)

    def name_for(self, fingerprint: str, job_id: str) -> str:
        """The template's name for this image (and job, when ids are isolated per job)."""
        if self.isolated:  # the job's id is unique to its owner already
            return f"{TEMPLATE_NAME_PREFIX}{fingerprint[:12]}-{job_id}"
        mine = f"-{self.owner}" if self.owner else ""
        return f"{TEMPLATE_NAME_PREFIX}{fingerprint[:12]}-{self.mode()}{mine}"

    def source_for(self, image_source: dict[str, str], job_id: str) -> dict[str, Any]:
        """Return the ``source`` of a worker's create: a copy of its (ready) template.

        Raises:
            LaunchError: when the template cannot be made (image broken, no free id range).
        """
        fingerprint = self.fingerprint(image_source)
        name = self.name_for(fingerprint, job_id)
        with self._lock:
            making = self._making.setdefault(name, threading.Lock())
        with making:
            record = self.api.instance(name)
            if record is None or not _ready(record, fingerprint):
                self._make(name, image_source, fingerprint, job_id, record is not None)
        return {"type": "copy", "source": name, "instance_only": True}

    def _make(
        self,
        name: str,
        image_source: dict[str, str],
        fingerprint: str,
        job_id: str,
        exists: bool,
    ) -> None:
        """Create the template from the image, start and stop it, mark it ready."""
        started = time.monotonic()
        if exists:
            self.delete(name)
        config = {LABEL_TEMPLATE: f"{self.mode()}:{fingerprint}"}
        if self.owner:
            config[LABEL_OWNER] = self.owner
        if self.isolated:
            config[LABEL_TEMPLATE_JOB] = job_id
            config["security.idmap.isolated"] = "true"
            config["security.idmap.base"] = str(self.base_for(job_id))
        elif self.mode() == "shared":  # whatever the profile says: copies must share its map
            config["security.idmap.isolated"] = "false"
        body = {
            "name": name,
            "type": "container",
            "source": {"type": "image", "fingerprint": fingerprint},
            "profiles": [WORKER_PROFILE],
            "config": config,
        }
        client = self.api.client
        try:
            self.api.wait_operation(client.api.instances.post(json=body))
            state = client.api.instances[name].state
            self.api.wait_operation(state.put(json={"action": "start"}))
            if not self.api.force_stop(name, known_running=True):
                raise LaunchError(f"template {name} did not stop")
            self.api.wait_operation(
                client.api.instances[name].patch(json={"config": {LABEL_TEMPLATE_READY: "true"}})
            )
        except (pylxd.exceptions.LXDAPIException, OperationFailedError) as err:
            self.delete(name)
            raise LaunchError(
                f"preparing template {name} of image {fingerprint[:12]}: {err}"
            ) from err
        finally:
            with self._lock:
                self._bases.pop(job_id, None)
        logger.info("template %s ready in %.2fs", name, time.monotonic() - started)

    def base_for(self, job_id: str) -> int:
        """Choose a free block of root's ids for a job's template and workers."""
        first, count = root_id_range()
        records = self.api.retry(
            "listing instances of every project",
            lambda: connect()
            .api.instances.get(params={"recursion": "1", "all-projects": "true"})
            .json()["metadata"],
        )
        with self._lock:
            used = isolated_ranges(records)
            used += [(base, base + IDMAP_SIZE) for base in self._bases.values()]
            base = free_block(first, count, used)
            if base is None:
                raise LaunchError(
                    f"no free block of {IDMAP_SIZE} ids left in root's range "
                    f"{first}-{first + count - 1} for job {job_id} (run configure-host with "
                    "a larger max-parallel-workers, or set worker-idmap-isolated=false)"
                )
            self._bases[job_id] = base
            return base

    def delete(self, name: str) -> None:
        """Delete a template (stopped first); nothing when it is gone."""
        try:
            self.api.force_stop(name)
            self.api.wait_operation(self.api.client.api.instances[name].delete())
        except pylxd.exceptions.NotFound:
            pass
        except (pylxd.exceptions.LXDAPIException, OperationFailedError) as err:
            logger.warning("could not delete template %s: %s", name, err)
            return
        remove_log_dir(self.api.project, name)

    def prune_job(self, job_id: str) -> None:
        """Delete the templates of one job (those holding its id range)."""
        for name in self._listed(lambda config: config.get(LABEL_TEMPLATE_JOB) == job_id):
            self.delete(name)

    def _listed(self, wanted: Callable[[dict[str, str]], bool]) -> list[str]:
        """The names of this project's templates whose config ``wanted`` accepts."""
        records = self.api.retry(
            "listing templates",
            lambda: self.api.client.api.instances.get(params={"recursion": "1"}).json()[
                "metadata"
            ],
        )
        names = []
        for record in records:
            config = record.get("config") or {}
            is_template = LABEL_TEMPLATE in config and LABEL_JOB not in config  # not a copy
            mine = config.get(LABEL_OWNER, "") == self.owner
            if (
                is_template
                and mine
                and record["name"].startswith(TEMPLATE_NAME_PREFIX)
                and wanted(config)
            ):
                names.append(record["name"])
        return names

    def count(self) -> int:
        """How many templates this book's owner keeps in the project."""
        return len(self._listed(lambda _config: True))

    def prune_all(self) -> list[str]:
        """Delete every template of this book's owner; return their names."""
        deleted = self._listed(lambda _config: True)
        for name in deleted:
            self.delete(name)
        return deleted

    def prune_unused(self, live_jobs: set[str]) -> list[str]:
        """Delete templates of finished jobs, of another id mode, or of images no alias names.

        A project that does not exist yet (a Nova-only host, a host before configure-host)
        holds no template: nothing to prune.
        """
        try:
            listing = self.api.retry(
                "listing images",
                lambda: self.api.client.api.images.get(params={"recursion": "1"}).json()[
                    "metadata"
                ],
            )
        except pylxd.exceptions.NotFound:
            return []
        current = {image["fingerprint"] for image in listing}

        def stale(config: dict[str, str]) -> bool:
            mode, _, fingerprint = config[LABEL_TEMPLATE].partition(":")
            job = config.get(LABEL_TEMPLATE_JOB, "")
            finished = bool(job) and job not in live_jobs
            return mode != self.mode() or fingerprint not in current or finished

        deleted = self._listed(stale)
        for name in deleted:
            self.delete(name)
        return deleted


def _ready(record: dict[str, Any], fingerprint: str) -> bool:
    """Whether an existing template record is ready and made from ``fingerprint``."""
    config = record.get("config") or {}
    return (
        config.get(LABEL_TEMPLATE_READY) == "true"
        and config.get(LABEL_TEMPLATE, "").endswith(fingerprint)
        and record.get("status") == "Stopped"
    )
