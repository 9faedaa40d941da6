"""Ready workers between jobs: a sandbox job's first workers are there before it starts.

Jobs never share a worker, so a sandbox job used to pay for making its warm workers (a
template per job and its copies, about 1.5 s here) before its first task ran. The engine now
keeps up to ``ready-workers`` started, probed, idle workers per image (``KeepsReadyWorkers``:
LXD on this host) for the images of this state dir's recent sandbox jobs
(``READY_MAX_IMAGES`` images, jobs submitted within ``READY_KEEP_SECONDS``). A sandbox job's
attempt that needs a new warm worker takes a ready one of its image instead (``take``): the
backend relabels it with the job and applies the job's limits, and from then on it is the
job's worker, deleted with the job like any other. Each has its own id map.

``keep`` lists them (they are LXD instances labelled with this state dir's owner, so any
later engine of the state dir finds them), deletes those no longer wanted (another image,
the alias moved, fewer wanted, half made by a process that died) and makes the missing ones
one after another, only while no job is active. It runs in a thread of its own when the
engine is idle (``keep_soon``) and, in a client's in-process engine, before it hands over
the state dir (``keep``). The reaper leaves ready workers to it.
"""

import itertools
import logging
import secrets
import threading
import time
from collections.abc import Callable

from ..backends import Backend, KeepsReadyWorkers, ReadyWorkerBook
from ..config import HostConfig
from ..constants import READY_JOB, READY_KEEP_SECONDS, READY_MAX_IMAGES, READY_NAME_PREFIX
from .ledger import JobRecord, Ledger
from .model import reuses_workers
from .registry import Role, WorkerRegistry

logger = logging.getLogger(__name__)

CHECK_EVERY_SECONDS = 60.0  # an idle engine looks at its ready workers this often
PAUSE_AFTER_FAILURE_SECONDS = 300.0  # an image whose ready worker could not be made


def takes_ready(job: JobRecord) -> bool:
    """Whether the job's warm workers may be ready ones (a sandbox job on this host's LXD).

    A job with its own root disk size gets workers made for it (a disk size is not applied
    to a running worker); one placed on cluster members runs where it is told.
    """
    params = job.params
    return (
        job.backend == "lxd"
        and reuses_workers(params)
        and not params.get("disk")
        and not params.get("placement")
    )


class ReadyWorkers:
    """The ready workers of one engine's state dir: kept, made and handed to jobs."""

    def __init__(
        self,
        backend_of: Callable[[str], Backend],
        ledger: Ledger,
        config: HostConfig,
        registry: WorkerRegistry | None = None,
        idle: Callable[[], bool] = lambda: True,
    ) -> None:
        """Keep them on the ``lxd`` backend; ``idle()`` tells whether more may be made now."""
        self.backend_of = backend_of
        self.ledger = ledger
        self.config = config
        self.registry = registry or WorkerRegistry()
        self.idle = idle
        self._lock = threading.Lock()
        self._ready: dict[str, list[str]] = {}  # image -> ready workers (made), oldest first
        self._loaded = False
        self._taken: set[str] = set()  # handed to a job by this engine: never listed again
        self._thread: threading.Thread | None = None
        self._paused: dict[str, float] = {}  # image -> no new ready worker before this time
        self._checked = 0.0
        self._numbers = itertools.count(1)
        self._tag = secrets.token_hex(3)

    def _book(self) -> ReadyWorkerBook | None:
        try:
            backend = self.backend_of("lxd")
        except Exception:  # no LXD here (a Nova-only host): nothing to keep
            return None
        return backend.ready if isinstance(backend, KeepsReadyWorkers) else None

    def take(self, job: JobRecord) -> str | None:
        """A ready worker of the job's image for its next warm worker, or None."""
        if not takes_ready(job) or not self.config.ready_workers:
            return None
        book = self._book()
        if book is None:
            return None
        if not self._loaded:
            self.keep_soon(force=True, wait=True)  # the first job of this engine: look first
        image = str(job.params.get("image", ""))
        while True:
            with self._lock:
                waiting = self._ready.get(image)
                name = waiting.pop(0) if waiting else None
            if name is None:
                return None
            self.registry.release(name, Role.READY)
            with self._lock:
                self._taken.add(name)
            if book.fits(name, image):
                logger.info("job %s takes ready worker %s", job.id, name)
                return name
            # The image's alias moved since: the next keep deletes it.

    def names(self) -> set[str]:
        """The ready workers this engine knows (no job has taken them)."""
        with self._lock:
            return {name for names in self._ready.values() for name in names}

    def keep_soon(self, force: bool = False, wait: bool = False) -> None:
        """Look at the ready workers (in a thread; ``wait``: here) unless done lately.

        ``force``: look now, e.g. a job just finished.
        """
        with self._lock:
            now = time.monotonic()
            if self._thread is not None and self._thread.is_alive():
                thread = self._thread
            elif not force and now - self._checked < CHECK_EVERY_SECONDS:
                return
            else:
                self._checked = now
                thread = threading.Thread(target=self.keep, daemon=True, name="ready-workers")
                self._thread = thread
                thread.start()
        if wait:
            thread.join()

    def keep(self) -> None:
        """Delete the ready workers no longer wanted, make the missing ones (while idle)."""
        try:
            self._keep()
        except Exception:  # the next look tries again
            logger.exception("could not keep the ready workers")

    def wanted_images(self) -> list[str]:
        """The images ready workers are kept for: those of the latest sandbox jobs."""
        images: list[str] = []
        since = time.time() - READY_KEEP_SECONDS
        for job in self.ledger.jobs():  # newest first
            image = str(job.params.get("image", ""))
            if job.created >= since and takes_ready(job) and image and image not in images:
                images.append(image)
            if len(images) >= READY_MAX_IMAGES:
                break
        return images

    def _keep(self) -> None:
        book = self._book()
        if book is None:
            return
        per_image = self.config.ready_workers
        room = self.config.max_parallel_workers  # ready workers in all, at most
        wanted = self.wanted_images() if per_image else []
        kept: dict[str, list[str]] = {image: [] for image in wanted}
        stale = []
        for worker in book.listed():
            with self._lock:
                if worker.name in self._taken:
                    continue  # a job took it after the listing was read
            fits = worker.made and worker.image in kept and book.fits(worker.name, worker.image)
            if fits and len(kept[worker.image]) < per_image and room > 0:
                kept[worker.image].append(worker.name)
                room -= 1
                self.registry.hold(worker.name, READY_JOB, Role.READY)
            else:
                stale.append(worker.name)
        with self._lock:
            self._ready = {
                image: [name for name in names if name not in self._taken]
                for image, names in kept.items()
            }
            self._loaded = True
        for name in stale:
            self._delete(name)
        for image in wanted:
            while len(kept[image]) < per_image and room > 0 and self._may_make(image):
                name = self._make(book, image)
                if name is None:
                    break
                kept[image].append(name)
                room -= 1

    def _may_make(self, image: str) -> bool:
        return self.idle() and time.monotonic() >= self._paused.get(image, 0.0)

    def _make(self, book: ReadyWorkerBook, image: str) -> str | None:
        """Make one ready worker of ``image``; None (and a pause for the image) if it failed."""
        name = f"{READY_NAME_PREFIX}{self._tag}{next(self._numbers)}"
        self.registry.hold(name, READY_JOB, Role.READY)
        started = time.monotonic()
        try:
            book.make(image, name)
        except Exception as err:  # any failure (LaunchError or the API's): pause, say why
            self.registry.release(name, Role.READY)
            self._paused[image] = time.monotonic() + PAUSE_AFTER_FAILURE_SECONDS
            logger.warning("no ready worker of image %s for now: %s", image, err)
            return None
        logger.info("ready worker %s of %s made in %.2fs", name, image, time.monotonic() - started)
        with self._lock:
            self._ready.setdefault(image, []).append(name)
        return name

    def _delete(self, name: str) -> None:
        self.registry.release(name, Role.READY)
        try:
            self.backend_of("lxd").delete(name)
            logger.info("deleted ready worker %s (no longer wanted)", name)
        except Exception as err:  # the next look tries again
            logger.warning("could not delete ready worker %s: %s", name, err)
