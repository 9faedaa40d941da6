"""A fake backend for the engine's unit tests: workers are dict entries, tasks are plans."""

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from container_compute.backends import (
    FailureReason,
    LaunchError,
    TaskOutcome,
    WorkerInfo,
    WorkerSpec,
)

if TYPE_CHECKING:
    from container_compute.config import HostConfig
    from container_compute.jobs.scheduler import Engine


class Crash(SystemExit):
    """Raised inside an engine thread to simulate the agent dying at that point.

    A SystemExit: the engine does not catch it, and a thread ending with it is silent.
    """


@dataclass
class Plan:
    """What one attempt does: exit code, output, how long it runs, or an injected failure."""

    exit_code: int = 0
    stdout: str = ""
    stderr: str = ""
    files: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    reason: FailureReason | None = None
    hang: bool = False
    launch_error: str = ""
    crash_in_start: bool = False
    crash_in_wait: bool = False
    never_ran: bool = False


def square_plan(spec: WorkerSpec) -> Plan:
    """The design's example: write TASK_INDEX squared to /results/square."""
    index = int(spec.env["TASK_INDEX"])
    return Plan(stdout=f"task {index}\n", files={"square": f"{index * index}\n"})


class FakeBackend:
    """In-memory workers; ``plan(spec)`` decides each attempt's fate."""

    def __init__(
        self,
        plan: Callable[[WorkerSpec], Plan] = square_plan,
        images: tuple[str, ...] = ("busybox",),
    ) -> None:
        self.plan = plan
        self.images = set(images)
        self.workers: dict[str, WorkerInfo] = {}
        self.started: list[str] = []
        self.deleted: list[str] = []
        self.waited: list[str] = []
        self.running = 0
        self.max_running = 0
        self.release = threading.Event()
        self._lock = threading.Lock()
        self.owner = ""  # labels its workers as a real backend does (make_engine sets it)

    def image_exists(self, image: str) -> bool:
        return image in self.images

    def start(self, spec: WorkerSpec) -> str:
        plan = self.plan(spec)
        if plan.crash_in_start:
            raise Crash(spec.worker_name)
        if plan.launch_error or spec.image not in self.images:
            raise LaunchError(plan.launch_error or f"image {spec.image} not found")
        with self._lock:
            if spec.worker_name in self.workers:
                raise LaunchError(f"{spec.worker_name} already exists")
            self.workers[spec.worker_name] = WorkerInfo(
                spec.worker_name, spec.job_id, spec.task_index, spec.attempt, True, self.owner
            )
            self.started.append(spec.worker_name)
        return spec.worker_name

    def wait(
        self, spec: WorkerSpec, task_dir: Path, should_stop: Callable[[], FailureReason | None]
    ) -> TaskOutcome:
        plan = self.plan(spec)
        with self._lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            self.waited.append(spec.worker_name)
        started = time.time()
        try:
            if plan.crash_in_wait:
                raise Crash(spec.worker_name)
            if plan.never_ran:
                return TaskOutcome(
                    None,
                    FailureReason.EXIT_CODE,
                    started,
                    time.time(),
                    detail="stopped before its command finished",
                )
            while plan.hang or time.time() - started < plan.seconds:
                reason = should_stop()
                if reason is not None:
                    return TaskOutcome(None, reason, started, time.time(), detail="stopped")
                if plan.hang and self.release.is_set():
                    break
                time.sleep(0.005)
        finally:
            with self._lock:
                self.running -= 1
        (task_dir / "stdout").write_text(plan.stdout)
        (task_dir / "stderr").write_text(plan.stderr)
        (task_dir / "exit_code").write_text(f"{plan.exit_code}\n")
        (task_dir / "files").mkdir()
        for name, text in plan.files.items():
            (task_dir / "files" / name).write_text(text)
        return TaskOutcome(
            exit_code=plan.exit_code,
            reason=plan.reason
            if plan.reason
            else (FailureReason.EXIT_CODE if plan.exit_code else None),
            started_at=started,
            finished_at=time.time(),
            stdout_bytes=len(plan.stdout),
            stderr_bytes=len(plan.stderr),
            files_bytes=sum(len(t) for t in plan.files.values()),
        )

    def delete(self, name: str) -> bool:
        with self._lock:
            if self.workers.pop(name, None) is None:
                return False
            self.deleted.append(name)
            return True

    def list_workers(self) -> list[WorkerInfo]:
        with self._lock:
            return list(self.workers.values())


def make_config(**options: object) -> "HostConfig":
    """A host config for tests: busybox image, 4 parallel workers, unless overridden."""
    from container_compute.config import HostConfig

    values: dict[str, object] = {"default_image": "busybox", "max_parallel_workers": 4}
    values.update(options)
    return HostConfig(**values)  # type: ignore[arg-type]


def make_engine(state_dir: Path, backend: FakeBackend, **options: object) -> "Engine":
    """An engine on the fake backend with a fast back-off (10 ms doubling, 80 ms cap)."""
    from container_compute.jobs.scheduler import Engine

    engine = Engine(
        state_dir,
        make_config(**options),
        lambda _name: backend,
        backoff_base=0.01,
        backoff_cap=0.08,
    )
    backend.owner = engine.owner
    return engine


def run_until_done(engine: "Engine", timeout: float = 30.0) -> None:
    """Drive the engine until no job is active (fails the test after ``timeout``)."""
    end = time.time() + timeout
    while engine.step():
        if time.time() > end:
            raise AssertionError("jobs did not finish in time")
        time.sleep(0.01)
    assert engine.wait_deletions(timeout)
