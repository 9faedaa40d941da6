"""Where tasks run. The engine drives any backend through the ``Backend`` protocol.

A task attempt's life on a backend: ``start`` creates and starts a labelled worker and sets
the command running detached inside it (its stdout, stderr and exit code go to files in the
worker, so nothing depends on a connection staying open); ``wait`` follows a started worker
until the command ends, the attempt's timeout passes, or ``should_stop`` says so, then gathers
the results into ``task_dir`` and returns the outcome; ``delete`` removes the worker. ``wait``
works on a worker started by an earlier process too: that is how a restarted agent resumes.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..owner import owner_id
from ..privatefiles import default_state_dir
from .usage import Usage

if TYPE_CHECKING:
    from ..config import HostConfig

# The task index of a worker made ahead of its task (``prepare``): it has no task yet.
SPARE_TASK = -1


class FailureReason(str, Enum):
    """Why an attempt of a task failed."""

    EXIT_CODE = "exit-code"
    TIMEOUT = "timeout"
    OOM = "oom"
    LAUNCH_ERROR = "launch-error"
    DEADLINE = "deadline"
    CANCELLED = "cancelled"
    DISK_FULL = "disk-full"
    PROCESS_LIMIT = "process-limit"
    MEMBER_LOST = "member-lost"
    JOB_ENDED = "job-ended"  # another task exited with one of fail-job-exit-codes


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a backend needs to run one attempt of one task."""

    job_id: str
    task_index: int
    attempt: int
    image: str
    command: str
    env: dict[str, str]
    input_dir: str | None = None
    cpu: str | None = None
    memory: str | None = None
    disk: str | None = None
    placement: str = ""
    timeout_seconds: int = 0
    results_cap_bytes: int = 256 << 20
    # Backend-specific choices of the job (nova: flavor, network, availability_zone, spread).
    options: Mapping[str, str] = field(default_factory=dict)
    # The worker this attempt runs in when it was made before the attempt: the job's warm
    # worker (reuse-workers, kept between tasks) or one prepared ahead; "": its own new one.
    worker: str = ""
    reuse: bool = False
    # A warm worker runs each task in a sandbox of its own (a fresh root; see lxd/launch.py).
    sandbox: bool = False
    # When the attempt started (the ledger's record); 0: when its worker was created.
    started_at: float = 0.0

    @property
    def worker_name(self) -> str:
        """The worker's name: unique per job, task and attempt, or the one made before."""
        return self.worker or f"cc-{self.job_id}-{self.task_index}-{self.attempt}"


@dataclass
class TaskOutcome:
    """How an attempt ended, and what was gathered from it."""

    exit_code: int | None
    reason: FailureReason | None = None
    started_at: float = 0.0
    finished_at: float = 0.0
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    files_bytes: int = 0
    truncated: bool = False
    detail: str = ""
    skipped: list[str] = field(default_factory=list)
    host: str = ""
    # The task's sandbox ended and its worker is intact: it may take the job's next task,
    # whatever ended this one (timeout, cancel, OOM or process limit of the task).
    sandbox_ended: bool = False
    # What the attempt used (CPU, peak memory, OOM kills), where its worker showed it.
    usage: Usage = field(default_factory=Usage)

    def __post_init__(self) -> None:
        """Refuse what is not an exit status (0..255): the attempt failed, the detail says why."""
        if self.exit_code is not None and not 0 <= self.exit_code <= 255:
            code = self.exit_code
            shown = str(code) if abs(code) < 10**40 else "a huge number"
            self.detail = f"not an exit status (0..255): {shown}; {self.detail}"
            self.exit_code, self.reason = None, FailureReason.EXIT_CODE

    @property
    def succeeded(self) -> bool:
        """True when the command exited 0 and nothing else went wrong."""
        return self.reason is None and self.exit_code == 0


@dataclass(frozen=True)
class WorkerInfo:
    """A worker found on the backend, with the labels that say whose it is."""

    name: str
    job_id: str | None
    task_index: int | None
    attempt: int | None
    running: bool
    owner: str = ""  # the owner id of the state dir that made it ("": made before owners)


class WorkerUnreachableError(RuntimeError):
    """A worker cannot be reached now (its LXD cluster member is offline); try again later."""


class LaunchError(RuntimeError):
    """The worker could not be created or started (image missing, pool full, ...)."""


class MemberLostError(LaunchError):
    """The worker's host (an LXD cluster member) could not take it: gone, or none online.

    Not the task's fault: the engine runs it again, elsewhere or a little later, without
    spending one of its retries (``FailureReason.MEMBER_LOST``).
    """

    def __init__(self, member: str, message: str) -> None:
        """``member``: the member that was lost ("" when no member was online at all)."""
        super().__init__(message)
        self.member = member


class Backend(Protocol):
    """What the engine needs of a place to run tasks."""

    def start(self, spec: WorkerSpec) -> str:
        """Create, label and start the worker and start the command; return the worker's name.

        Raises:
            LaunchError: when the worker cannot be created or started.
        """
        ...

    def wait(
        self, spec: WorkerSpec, task_dir: Path, should_stop: Callable[[], FailureReason | None]
    ) -> TaskOutcome:
        """Follow the worker until its command ends or it must stop; gather results to task_dir."""
        ...

    def delete(self, name: str) -> bool:
        """Stop and delete a worker; return False when it did not exist."""
        ...

    def list_workers(self) -> list[WorkerInfo]:
        """Every worker of this backend that carries container-compute labels."""
        ...


# What a backend may do besides (the engine asks ``isinstance(backend, ...)``).


@runtime_checkable
class MakesWorkersAhead(Protocol):
    """Makes a worker before its task (spare workers, ``jobs/spares.py``)."""

    def prepare(self, spec: WorkerSpec) -> None:
        """Create and start the worker of ``spec`` (task index SPARE_TASK), no command yet."""
        ...


@runtime_checkable
class ReusesWorkers(Protocol):
    """Runs a job's tasks one after another in its warm workers (``jobs/warm.py``)."""

    def recycle(self, spec: WorkerSpec) -> str:
        """Whether the worker may take the job's next task: "" when it may, else why not."""
        ...


@dataclass(frozen=True)
class ReadyWorker:
    """A worker made ahead of any job (``KeepsReadyWorkers``), as its labels say."""

    name: str
    image: str  # the alias (or fingerprint) it was made for
    made: bool  # started and probed; False: half made (a crash) or being made


class ReadyWorkerBook(Protocol):
    """A backend's ready workers: made ahead of any job, taken by one (``jobs/ready.py``)."""

    def make(self, image: str, name: str) -> None:
        """Create, start and probe a ready worker of ``image``; LaunchError when it cannot."""
        ...

    def listed(self) -> list[ReadyWorker]:
        """This owner's ready workers that no job has taken."""
        ...

    def fits(self, name: str, image: str) -> bool:
        """Whether ``name`` was made from the image ``image`` names now, in today's id mode."""
        ...


@runtime_checkable
class KeepsReadyWorkers(Protocol):
    """Keeps ready workers between jobs; the engine takes them for a job's warm workers."""

    @property
    def ready(self) -> ReadyWorkerBook:
        """Its ready workers."""
        ...


@runtime_checkable
class KeepsPerJob(Protocol):
    """Keeps things per job besides workers (LXD templates, Nova server groups)."""

    def job_finished(self, job_id: str) -> None:
        """Drop what was kept for a job that is over."""
        ...

    def reap_extras(self, live_jobs: set[str], known_jobs: set[str]) -> list[str]:
        """Delete this owner's kept things of jobs not live; return their names."""
        ...

    def reap_owner(self, owner: str) -> list[str]:
        """Delete what another owner (a state dir gone for good) kept; return their names."""
        ...


def open_backend(name: str, config: "HostConfig", state_dir: Path | None = None) -> Backend:
    """Return the backend called ``name`` for this host's config (imported on first use).

    ``state_dir`` holds the Nova backend's credentials (``clouds.yaml``) and the LXD
    backend's PEM files; default: the ``CONTAINER_COMPUTE_STATE_DIR`` environment variable,
    else the package's state dir.

    Raises:
        ValueError: for a backend this version cannot run.
        identity.IdentityError: nova without keystone credentials.
    """
    directory = state_dir or default_state_dir()
    if name == "lxd":
        from .lxd import LXDBackend

        return LXDBackend(config, owner=owner_id(directory), state_dir=directory)
    if name == "nova":
        from .nova import open_nova_backend

        return open_nova_backend(config, directory)
    raise ValueError(f"backend: {name} is not available; use backend=lxd or backend=nova")
