"""Ready workers between jobs (jobs/ready.py), with a fake backend's ready book."""

import time
from typing import Any

from container_compute.backends import LaunchError, ReadyWorker
from container_compute.config import HostConfig
from container_compute.constants import READY_NAME_PREFIX
from container_compute.jobs.ledger import JobRecord
from container_compute.jobs.model import JobState
from container_compute.jobs.ready import ReadyWorkers, takes_ready
from container_compute.jobs.registry import Role, WorkerRegistry


class FakeBook:
    """A backend's ready workers: name -> (image key, made)."""

    def __init__(self) -> None:
        self.workers: dict[str, tuple[str, bool]] = {}
        self.keys = {"busybox": "k1", "debian": "k2", "other": "k3"}
        self.refuse: set[str] = set()
        self.made: list[str] = []

    def make(self, image: str, name: str) -> None:
        if image in self.refuse:
            raise LaunchError("sandboxes are refused")
        self.workers[name] = (self.keys[image], True)
        self.made.append(name)

    def listed(self) -> list[ReadyWorker]:
        by_key = {key: image for image, key in self.keys.items()}
        return [
            ReadyWorker(name, by_key.get(key, "gone"), made)
            for name, (key, made) in sorted(self.workers.items())
        ]

    def fits(self, name: str, image: str) -> bool:
        return name in self.workers and self.workers[name][0] == self.keys.get(image)


class FakeBackend:
    def __init__(self) -> None:
        self.ready = FakeBook()
        self.deleted: list[str] = []

    def delete(self, name: str) -> bool:
        self.deleted.append(name)
        return self.ready.workers.pop(name, None) is not None


class FakeLedger:
    def __init__(self, jobs: list[JobRecord]) -> None:
        self._jobs = jobs

    def jobs(self) -> list[JobRecord]:
        return sorted(self._jobs, key=lambda job: -job.created)


def job(image: str = "busybox", created: float | None = None, **params: Any) -> JobRecord:
    values = {"isolation": "sandbox", "image": image, **params}
    when = time.time() if created is None else created
    return JobRecord(f"j{image}", "", JobState.RUNNING, values, "lxd", 4, when, None, None, None)


def keeper(
    jobs: list[JobRecord], ready: int = 2, idle: bool = True
) -> tuple[ReadyWorkers, FakeBackend, WorkerRegistry]:
    backend = FakeBackend()
    registry = WorkerRegistry()
    config = HostConfig(ready_workers=ready, max_parallel_workers=8)
    workers = ReadyWorkers(
        lambda _name: backend,  # type: ignore[arg-type,return-value]
        FakeLedger(jobs),  # type: ignore[arg-type]
        config,
        registry,
        idle=lambda: idle,
    )
    return workers, backend, registry


def test_only_sandbox_jobs_on_this_hosts_lxd_take_ready_workers() -> None:
    assert takes_ready(job())
    assert not takes_ready(job(isolation="container"))
    assert not takes_ready(job(disk="1GiB"))  # a root disk size needs a worker made for it
    assert not takes_ready(job(placement="round-robin"))
    nova = job()
    assert not takes_ready(JobRecord(**{**nova.__dict__, "backend": "nova"}))


def test_keep_makes_them_for_recent_images_and_a_job_takes_each_once() -> None:
    old = job("other", created=time.time() - 2 * 86400)  # not of the day: none for it
    workers, backend, registry = keeper([job("busybox"), job("debian"), old])
    workers.keep()
    made = backend.ready.made
    assert len(made) == 4 and all(name.startswith(READY_NAME_PREFIX) for name in made)
    assert {registry.role(name) for name in made} == {Role.READY}
    first, second = workers.take(job("busybox")), workers.take(job("busybox"))
    assert first and second and first != second
    assert backend.ready.workers[first][0] == "k1"
    assert registry.role(first) is None  # the attempt holds it from now on
    assert workers.take(job("busybox")) is None  # none left: the job makes its own
    assert workers.take(job("busybox", isolation="container")) is None
    workers.keep()  # taken ones are never listed again, even while still labelled ready
    assert first not in workers.names() and first not in backend.deleted


def test_keep_deletes_half_made_moved_and_extra_ones() -> None:
    workers, backend, _registry = keeper([job("busybox")], ready=1)
    book = backend.ready
    book.workers = {
        "cc-ready-half": ("k1", False),  # a process died while making it
        "cc-ready-old": ("k0", True),  # the alias moved to another image since
        "cc-ready-a": ("k1", True),
        "cc-ready-b": ("k1", True),  # one more than wanted
        "cc-ready-deb": ("k2", True),  # an image no recent job ran
    }
    workers.keep()
    assert set(book.workers) == {"cc-ready-a"}
    assert sorted(backend.deleted) == [
        "cc-ready-b",
        "cc-ready-deb",
        "cc-ready-half",
        "cc-ready-old",
    ]
    assert book.made == []


def test_an_image_that_moved_after_the_keep_is_not_handed_out() -> None:
    workers, backend, _registry = keeper([job("busybox")], ready=1)
    workers.keep()
    backend.ready.keys["busybox"] = "k9"  # rebuilt: the alias names a new image
    assert workers.take(job("busybox")) is None


def test_none_made_while_a_job_runs_and_a_refusing_image_is_paused() -> None:
    workers, backend, _registry = keeper([job("busybox")], idle=False)
    workers.keep()
    assert backend.ready.made == []
    workers, backend, _registry = keeper([job("busybox")])
    backend.ready.refuse.add("busybox")
    workers.keep()
    backend.ready.refuse.clear()
    workers.keep()  # paused after the failure: not tried again at once
    assert backend.ready.made == []


def test_zero_ready_workers_deletes_every_one() -> None:
    workers, backend, _registry = keeper([job("busybox")], ready=0)
    backend.ready.workers = {"cc-ready-a": ("k1", True)}
    workers.keep()
    assert backend.ready.workers == {}
    assert workers.take(job("busybox")) is None
