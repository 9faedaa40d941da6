"""Ready workers of one owner in one project: made ahead of any job, taken by a sandbox job.

A ready worker is created with the worker profile and no job's limits, started, probed once
for sandboxes (``WarmWorkers.makes_sandboxes``) and its own processes noted; its labels say
so (``LABEL_READY_STATE=made``, ``LABEL_READY_BASELINE``), so any later engine of the same
state dir can hand it out. Its job label is ``READY_JOB`` until a job takes it: ``adopt``
relabels it with the job, task and attempt and applies the job's cpu, memory and input
directory, live. With ids isolated per job it has an id range of its own, which it keeps:
two jobs never share one through a ready worker.

Made only on a local daemon that is not clustered (like templates). The engine decides
how many to keep and when (``jobs/ready.py``); this module only makes, lists and adopts.
"""

import logging
import time
from typing import Any, Protocol

from ...constants import (
    INPUT_DIR_IN_WORKER,
    LABEL_ATTEMPT,
    LABEL_JOB,
    LABEL_OWNER,
    LABEL_READY,
    LABEL_READY_BASELINE,
    LABEL_READY_IMAGE,
    LABEL_READY_STATE,
    LABEL_TASK,
    READY_JOB,
    READY_NAME_PREFIX,
    WORKER_PROFILE,
)
from .. import LaunchError, ReadyWorker, WorkerSpec
from .api import LXDApi, boot_worker
from .members import MemberBook
from .templates import TemplateBook
from .warm import WarmWorkers
from .watch import LABEL_STARTED

logger = logging.getLogger(__name__)

MADE = "made"


class WorkerMaker(Protocol):
    """What ready workers are made with (``LXDBackend``)."""

    api: LXDApi
    templates: TemplateBook
    warm: WarmWorkers
    members: MemberBook
    local: bool

    def delete(self, name: str) -> bool:
        """Force-stop and delete a worker; False when it did not exist."""
        ...


class ReadyBook:
    """Make, list and hand out one owner's ready workers."""

    def __init__(self, backend: WorkerMaker, owner: str) -> None:
        """Make them through ``backend``'s API, templates and warm-worker checks."""
        self.backend = backend
        self.api = backend.api
        self.templates = backend.templates
        self.warm = backend.warm
        self.owner = owner
        self._keys: dict[str, str] = {}  # ready worker -> "<id mode>:<fingerprint>"

    def key(self, image: str) -> str:
        """What a ready worker of ``image`` is labelled with: ``<id mode>:<fingerprint>``.

        Raises:
            LaunchError: when the image does not exist.
        """
        source = self.templates.worker_source(image, "", copy=False)
        return f"{self.templates.mode()}:{self.templates.fingerprint(source)}"

    def _source(self, image: str, name: str) -> tuple[dict[str, Any], dict[str, str]]:
        """The ``source`` of a ready worker's create, and the config it adds.

        With ids isolated per job it gets a range of its own, which the job that takes it
        keeps for it: it starts from the image (its first start shifts the files), not from
        a job's template. Otherwise it is a copy of the image's template.
        """
        source = self.templates.worker_source(image, name, copy=False)
        if not self.templates.isolated:
            return self.templates.source_for(source, name), {}
        fingerprint = self.templates.fingerprint(source)
        base = self.templates.base_for(name)
        config = {"security.idmap.isolated": "true", "security.idmap.base": str(base)}
        return {"type": "image", "fingerprint": fingerprint}, config

    def make(self, image: str, name: str) -> None:
        """Create, start and probe a ready worker of ``image`` called ``name``.

        Raises:
            LaunchError: when the image is missing, the worker cannot be made, sandboxes are
                refused in it (it is deleted: a job would run one task per worker), or the
                daemon is remote or clustered.
        """
        if not self.backend.local or self.backend.members.clustered:
            raise LaunchError("ready workers are kept only on this host's own, unclustered LXD")
        key = self.key(image)
        source, extra = self._source(image, name)
        config = {
            LABEL_JOB: READY_JOB,
            LABEL_STARTED: f"{time.time():.3f}",
            LABEL_READY: key,
            LABEL_READY_IMAGE: image,
            **extra,
        }
        if self.owner:
            config[LABEL_OWNER] = self.owner
        body = {
            "name": name,
            "type": "container",
            "source": source,
            "profiles": [WORKER_PROFILE],
            "config": config,
        }
        began = time.monotonic()
        try:
            self.api.retry(
                f"creating ready worker {name}",
                lambda: self.api.wait_operation(self.api.client.api.instances.post(json=body)),
            )
        finally:
            self.templates.forget_base(name)
        try:
            boot_worker(self.api, name, began)
            if not self.warm.makes_sandboxes(name):
                raise LaunchError(self.warm.refusal_note())
            self.warm.learn(name)
            labels = {LABEL_READY_STATE: MADE, LABEL_READY_BASELINE: self.warm.baseline(name)}
            self._patch(name, {"config": labels})
        except Exception:
            self.backend.delete(name)
            raise
        self._keys[name] = key

    def listed(self) -> list[ReadyWorker]:
        """This owner's ready workers no job has taken (also half-made ones)."""
        records = self.api.retry(
            "listing ready workers",
            lambda: self.api.client.api.instances.get(params={"recursion": 1}).json()["metadata"],
        )
        ready = []
        for record in records:
            config = record.get("config") or {}  # none for an instance of a lost member
            if config.get(LABEL_JOB) != READY_JOB or config.get(LABEL_OWNER, "") != self.owner:
                continue
            made = config.get(LABEL_READY_STATE) == MADE and record.get("status") == "Running"
            self._keys[record["name"]] = config.get(LABEL_READY, "")
            ready.append(ReadyWorker(record["name"], config.get(LABEL_READY_IMAGE, ""), made))
        return sorted(ready, key=lambda worker: worker.name)

    def fits(self, name: str, image: str) -> bool:
        """Whether ``name`` was made from the image ``image`` names now, in today's id mode."""
        try:
            return self._keys.get(name) == self.key(image)
        except LaunchError:  # the image is gone: the attempt will say so
            return False

    def adopt(self, spec: WorkerSpec) -> bool:
        """Hand the ready worker ``spec`` names to its job: relabel it, apply the job's limits.

        False when no such ready worker of this owner is there (the caller makes a fresh
        worker of that name); one that is not fit to be taken (half made, stopped, another
        image) is deleted first.
        """
        name = spec.worker_name
        if not name.startswith(READY_NAME_PREFIX):
            return False
        record = self.api.instance(name)
        config = (record or {}).get("config", {})
        if config.get(LABEL_JOB) != READY_JOB or config.get(LABEL_OWNER, "") != self.owner:
            return False
        fit = (
            config.get(LABEL_READY_STATE) == MADE
            and record is not None
            and record.get("status") == "Running"
            and self.fits(name, spec.image)
        )
        if fit:
            fit = self._relabel(spec)
        if not fit:
            logger.info("ready worker %s cannot be taken: made again", name)
            self.backend.delete(name)
            return False
        self.warm.know(name, config.get(LABEL_READY_BASELINE) or "1")
        self._keys.pop(name, None)
        return True

    def _relabel(self, spec: WorkerSpec) -> bool:
        """Label a ready worker with its job and apply the job's limits; False if refused."""
        config = {
            LABEL_JOB: spec.job_id,
            LABEL_TASK: str(spec.task_index),
            LABEL_ATTEMPT: str(spec.attempt),
            LABEL_STARTED: f"{time.time():.3f}",
        }
        if spec.cpu:
            config["limits.cpu"] = spec.cpu
        if spec.memory:
            config["limits.memory"] = spec.memory
        body: dict[str, Any] = {"config": config}
        if spec.input_dir is not None:
            body["devices"] = {
                "input": {
                    "type": "disk",
                    "source": spec.input_dir,
                    "path": INPUT_DIR_IN_WORKER,
                    "readonly": "true",
                }
            }
        try:
            self._patch(spec.worker_name, body)
        except Exception as err:  # e.g. a memory limit below what it uses: a fresh one
            logger.info("ready worker %s refused its job's settings: %s", spec.worker_name, err)
            return False
        return True

    def _patch(self, name: str, body: dict[str, Any]) -> None:
        self.api.wait_operation(self.api.client.api.instances[name].patch(json=body))
