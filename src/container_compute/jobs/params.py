"""Typed action parameters: the base class, and the parameters of the job actions.

One frozen dataclass per action. Each field is an action parameter (dashes turned into
underscores) and carries its schema in ``metadata``: description, bounds, allowed values.
``actions.yaml`` is generated from these classes (``python -m container_compute.contract``),
and the CLI builds its flags from them, so the two cannot disagree. Construction checks the
shape of every value and raises ``ValueError`` naming the parameter; checks that need the
host (does the image exist? the input directory?) happen in the engine, before anything is
recorded or launched.
"""

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from ..config import BACKENDS, check_limits
from ..constants import ENV_NAME_RE, RESERVED_ENV
from ..units import parse_duration
from .model import (
    CONTAINER,
    ISOLATIONS,
    JOB_STATES,
    MAX_TASKS,
    SANDBOX,
    check_ranges,
    exit_codes,
    format_ranges,
)

MAX_PARALLELISM = 1024
MAX_RETRIES = 20
MAX_COMMAND_BYTES = 64 * 1024
MAX_INPUT_BYTES = 64 * 1024
MAX_WAIT_SECONDS = 24 * 3600
# A Juju action that waits holds the machine lock (the principal's hooks wait for it): at most
# this long. The CLI, which holds no lock, may wait up to MAX_WAIT_SECONDS.
ACTION_MAX_WAIT_SECONDS = 600
DEFAULT_WAIT = "10m"
WAIT_DOC = "Return only when the job has finished, or wait-timeout has passed."
WAIT_TIMEOUT_DOC = (
    "Longest wait with wait=true (e.g. 5m; at most 10m in a Juju action, 24h with the CLI); "
    "the job goes on after it, and the result says its state then."
)

ROUND_ROBIN = "round-robin"
JOB_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_IMAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$")
_NOVA_NAME_RE = re.compile(r"^[^\x00-\x1f\x7f]{1,255}$")


def param(default: Any = dataclasses.MISSING, description: str = "", **schema: Any) -> Any:
    """Declare an action parameter: default (none means required), description, JSON schema."""
    metadata = {"description": description, **schema}
    return field(default=default, metadata=metadata)


def fail(param: str, message: str) -> None:
    """Raise ValueError naming the parameter."""
    raise ValueError(f"{param}: {message}")


def _check_job_id(value: Any) -> None:
    if not isinstance(value, str) or not JOB_ID_RE.match(value):
        fail("job", f"{value!r} is not a job id (as launch-job or list-jobs print it)")


def _check_duration(param: str, value: str, maximum: int | None = None) -> int:
    try:
        seconds = parse_duration(value)
    except ValueError as err:
        fail(param, str(err))
        raise
    if maximum is not None and seconds > maximum:
        fail(param, f"{value!r} is over the maximum of {maximum}s")
    return seconds


@dataclass(frozen=True)
class ActionParams:
    """Shared checks: types and bounds from each field's metadata."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            name = f.name.replace("_", "-")
            kind = schema_type(f)
            if kind == "array":
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    fail(name, f"{value!r} is not a list of strings")
                continue
            expected = {"string": str, "integer": int, "boolean": bool}[kind]
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                fail(name, f"{value!r} is not {'an' if kind == 'integer' else 'a'} {kind}")
            low, high = f.metadata.get("minimum"), f.metadata.get("maximum")
            if (low is not None and value < low) or (high is not None and value > high):
                fail(name, f"{value} is not between {low} and {high}")
            allowed = f.metadata.get("enum")
            if allowed and value not in allowed:
                fail(name, f"{value!r} is not one of {', '.join(repr(a) for a in allowed)}")
            if isinstance(value, str) and "\x00" in value:
                fail(name, "contains a NUL byte")


def _check_indexes(indexes: str) -> None:
    """Check task indexes and ranges such as ``0-3,7`` (empty: all), naming ``indexes``."""
    if indexes:
        try:
            check_ranges(indexes)
        except ValueError as err:
            fail("indexes", str(err))


def _check_placement(placement: str) -> None:
    if not placement or placement == ROUND_ROBIN:
        return
    members = [m.strip() for m in placement.split(",")]
    if not all(_NAME_RE.match(m) for m in members):
        fail(
            "placement",
            f"{placement!r} is not 'round-robin' or a comma-separated list of cluster members",
        )


def _exit_codes(name: str, text: str) -> frozenset[int]:
    """The exit codes ``text`` lists (``3,64-78``), checked: 1..255, as ranges."""
    try:
        codes = exit_codes(text)
    except ValueError as err:
        fail(name, f"{text!r} is not exit codes 1-255 such as 3,64-78 ({err})")
        raise
    if 0 in codes:
        fail(name, "0 is success, not a failure")
    return codes


def check_env_entries(entries: list[str]) -> None:
    """Check a job's ``env`` entries; ValueError naming ``env`` at the first bad one."""
    for entry in entries:
        try:
            check_env_entry(entry)
        except ValueError as err:
            fail("env", str(err))


def check_env_entry(entry: str) -> None:
    """Check one ``KEY=VALUE`` entry of a job's environment (the message never shows a value).

    Raises:
        ValueError: the entry is not KEY=VALUE, KEY is reserved, or VALUE holds a NUL byte.
    """
    key, sep, value = entry.partition("=")
    if not sep or not ENV_NAME_RE.match(key):
        # Only the part before '=' is shown: a value may be a secret.
        raise ValueError(f"{key[:64]!r} is not KEY=VALUE with KEY made of A-Z a-z 0-9 _")
    if key in RESERVED_ENV:
        raise ValueError(f"{key} is set by container-compute for every task")
    if "\x00" in value:
        raise ValueError(f"the value of {key} contains a NUL byte")


@dataclass(frozen=True)
class LaunchJobParams(ActionParams):
    """launch-job: run ``command`` once per task, each in its own worker."""

    command: str = param(
        description="Command run with /bin/sh -c in every worker. It sees TASK_INDEX (0..N-1), "
        "TASK_COUNT, JOB_ID, RESULTS_DIR=/results and, with inputs, TASK_INPUT.",
    )
    tasks: int = param(
        0,
        "Number of tasks. 0: one per line of inputs, or 1 without inputs.",
        minimum=0,
        maximum=MAX_TASKS,
    )
    inputs: str = param(
        "",
        "One task per line; the line is the task's TASK_INPUT. "
        "With tasks too, the counts must agree.",
    )
    parallelism: int = param(
        0,
        "Most tasks running at once. 0: twice the host's CPUs on its own LXD (at most "
        "max-parallel-workers), max-parallel-workers with Nova or a remote LXD.",
        minimum=0,
        maximum=MAX_PARALLELISM,
    )
    image: str = param("", "Worker image alias or fingerprint. Empty: the default-image option.")
    env: list[str] = field(
        default_factory=list,
        metadata={
            "description": "Extra environment, as KEY=VALUE entries.",
            "items": {"type": "string"},
        },
    )
    input_dir: str = param(
        "", "Absolute path of a host directory mounted read-only at /input in every worker."
    )
    timeout: str = param("0", "Time limit of one attempt of a task (e.g. 90s, 15m). 0: none.")
    deadline: str = param("0", "Time limit of the whole job from its launch (e.g. 2h). 0: none.")
    retries: int = param(
        0,
        "Extra attempts for a failed task, with exponential back-off.",
        minimum=0,
        maximum=MAX_RETRIES,
    )
    retry_exit_codes: str = param(
        "",
        "Exit codes a task is retried for (within retries), e.g. 75,100-110: a command that "
        "exits with any other code fails its task at once (timeouts, OOM kills and lost "
        "workers are retried as before). Empty: every failure is retried.",
    )
    fail_job_exit_codes: str = param(
        "",
        "Exit codes that end the whole job, e.g. 3,64-78: the first task that exits with one "
        "fails the job at once (its pending tasks never start, its running ones are stopped) "
        "and job-status names the task and code. Empty: none.",
    )
    cpu: str = param(
        "", "CPU limit of each worker (count like 2, or set like 0-3). Empty: the host's."
    )
    memory: str = param("", "Memory limit of each worker (e.g. 512MiB). Empty: the host's.")
    disk: str = param(
        "",
        "Root disk size of each worker (e.g. 2GiB), at most the host's worker-disk. "
        "Empty: the host's.",
    )
    name: str = param("", "A name for the job, shown by job-status and list-jobs.")
    placement: str = param(
        "",
        "On an LXD cluster, where workers go: empty (LXD's scheduler places each one), "
        "'round-robin' (over the members that are online, in turn), or a comma-separated list "
        "of members (in turn over those). A task retried after its member was lost goes to "
        "another one. Ignored where LXD is not clustered.",
    )
    isolation: str = param(
        SANDBOX,
        "How tasks are kept apart. sandbox: warm workers (up to parallelism, lxd only) run the "
        "job's tasks one after another, each in a fresh sandbox (its own namespaces and a "
        "throwaway overlay of the worker's root: nothing a task writes outside /results "
        "survives it; a timeout, cancel, OOM or process limit ends only the sandbox). "
        "container: a fresh worker per task. Where sandboxes cannot be made (Nova, a kernel "
        "or AppArmor that refuses them), tasks get a fresh worker each and job-status says why.",
        enum=list(ISOLATIONS),
    )
    reuse_workers: bool = param(
        False, "Deprecated: isolation=sandbox, the default, keeps workers for the job's tasks."
    )
    backend: str = param(
        "",
        "Where tasks run: lxd or nova. Empty: the default-backend option.",
        enum=["", *BACKENDS],
    )
    wait: bool = param(False, WAIT_DOC)
    wait_timeout: str = param(DEFAULT_WAIT, WAIT_TIMEOUT_DOC)
    flavor: str = param(
        "", "backend=nova: Nova flavor (name or id). Empty: the nova-flavor option."
    )
    network: str = param(
        "",
        "backend=nova: Neutron network (name or id), or 'none'. Empty: the nova-network option.",
    )
    availability_zone: str = param(
        "", "backend=nova: availability zone. Empty: the nova-availability-zone option."
    )
    spread: bool = param(
        False, "backend=nova: spread the job's servers over hosts (soft-anti-affinity group)."
    )

    def __post_init__(self) -> None:
        """Check every parameter's shape; the first bad one raises ValueError naming it."""
        super().__post_init__()
        if not self.command.strip():
            fail("command", "is empty")
        if len(self.command.encode()) > MAX_COMMAND_BYTES:
            fail("command", f"is over {MAX_COMMAND_BYTES} bytes")
        self._check_inputs()
        self._check_env()
        if self.image and not _IMAGE_RE.match(self.image):
            fail("image", f"{self.image!r} is not an image alias or fingerprint")
        if self.input_dir and (not self.input_dir.startswith("/") or "\n" in self.input_dir):
            fail("input-dir", f"{self.input_dir!r} is not an absolute path")
        _check_duration("timeout", self.timeout)
        _check_duration("deadline", self.deadline)
        _check_duration("wait-timeout", self.wait_timeout, MAX_WAIT_SECONDS)
        check_limits(
            ("cpu", self.cpu or ""), ("memory", self.memory or ""), ("disk", self.disk or "")
        )
        if self.name and not _NAME_RE.match(self.name):
            fail("name", f"{self.name!r} is not 1-63 letters, digits, '_', '.', '-'")
        _check_placement(self.placement)
        self._check_exit_codes()
        if self.reuse_workers and self.isolation == CONTAINER:
            fail("reuse-workers", "contradicts isolation=container (it means isolation=sandbox)")
        for name in ("flavor", "network", "availability_zone"):
            value = getattr(self, name)
            if value and not _NOVA_NAME_RE.match(value):
                fail(name.replace("_", "-"), f"{value!r} is not a Nova name or id")

    def _check_exit_codes(self) -> None:
        retried = _exit_codes("retry-exit-codes", self.retry_exit_codes)
        fatal = _exit_codes("fail-job-exit-codes", self.fail_job_exit_codes)
        if retried & fatal:
            fail(
                "fail-job-exit-codes",
                f"{format_ranges(retried & fatal)} also in retry-exit-codes: a code either "
                "retries its task or ends the job",
            )

    def _check_inputs(self) -> None:
        lines = self.input_lines
        if self.inputs and not lines:
            fail("inputs", "has no non-empty line")
        if lines and self.tasks and self.tasks != len(lines):
            fail("tasks", f"{self.tasks} does not match the {len(lines)} lines of inputs")
        if len(lines) > MAX_TASKS:
            fail("inputs", f"has {len(lines)} lines; at most {MAX_TASKS} tasks")
        for line_number, line in enumerate(lines, 1):
            if len(line.encode()) > MAX_INPUT_BYTES:
                fail("inputs", f"line {line_number} is over {MAX_INPUT_BYTES} bytes")

    def _check_env(self) -> None:
        check_env_entries(self.env)

    @property
    def backend_options(self) -> dict[str, str]:
        """The backend-specific choices given (nova: flavor, network, zone, spread)."""
        options = {
            "flavor": self.flavor,
            "network": self.network,
            "availability_zone": self.availability_zone,
            "spread": "true" if self.spread else "",
        }
        return {key: value for key, value in options.items() if value}

    @property
    def input_lines(self) -> list[str]:
        """The per-task inputs: the non-empty lines of ``inputs``."""
        return [line for line in self.inputs.splitlines() if line.strip()]

    @property
    def task_count(self) -> int:
        """How many tasks the job has."""
        return len(self.input_lines) or self.tasks or 1

    @property
    def env_map(self) -> dict[str, str]:
        """The extra environment as a dict."""
        return dict(entry.split("=", 1) for entry in self.env)

    @property
    def timeout_seconds(self) -> int:
        """Per-attempt time limit in seconds (0: none)."""
        return parse_duration(self.timeout)

    @property
    def deadline_seconds(self) -> int:
        """Whole-job time limit in seconds (0: none)."""
        return parse_duration(self.deadline)

    @property
    def wait_timeout_seconds(self) -> int:
        """Longest wait in seconds."""
        return parse_duration(self.wait_timeout)


@dataclass(frozen=True)
class JobParams(ActionParams):
    """job-status, cancel-job and delete-job: one job by id."""

    job: str = param(description="Job id, as launch-job returned it.")

    def __post_init__(self) -> None:
        """Check the job id."""
        super().__post_init__()
        _check_job_id(self.job)


@dataclass(frozen=True)
class WaitJobParams(ActionParams):
    """wait-job: follow a job until it ends (running it when no agent does)."""

    job: str = param(description="Job id, as launch-job returned it.")
    wait_timeout: str = param(
        DEFAULT_WAIT,
        "Longest wait (e.g. 5m; at most 10m in a Juju action, 24h with the CLI); the job goes "
        "on after it, and the result says its state then.",
    )

    def __post_init__(self) -> None:
        """Check the job id and the wait."""
        super().__post_init__()
        _check_job_id(self.job)
        _check_duration("wait-timeout", self.wait_timeout, MAX_WAIT_SECONDS)

    @property
    def wait_timeout_seconds(self) -> int:
        """Longest wait in seconds."""
        return parse_duration(self.wait_timeout)


@dataclass(frozen=True)
class RetryJobParams(ActionParams):
    """retry-job: run a finished job's failed tasks (or the given ones) again, in the job."""

    job: str = param(description="Job id, as launch-job returned it.")
    indexes: str = param(
        "",
        "Tasks to run again, as indexes and ranges (e.g. 0-3,7), whatever their state. "
        "Empty: every failed task (an exit code, a timeout, a cancel...).",
    )
    env: list[str] = field(
        default_factory=list,
        metadata={
            "description": "The job's environment again, as KEY=VALUE entries with the same "
            "keys: a job's env values are not kept once it ends. Needed when the job had env.",
            "items": {"type": "string"},
        },
    )
    wait: bool = param(False, WAIT_DOC)
    wait_timeout: str = param(DEFAULT_WAIT, WAIT_TIMEOUT_DOC)

    def __post_init__(self) -> None:
        """Check the job id, the ranges, the environment and the wait."""
        super().__post_init__()
        _check_job_id(self.job)
        _check_indexes(self.indexes)
        check_env_entries(self.env)
        _check_duration("wait-timeout", self.wait_timeout, MAX_WAIT_SECONDS)

    @property
    def wait_timeout_seconds(self) -> int:
        """Longest wait in seconds."""
        return parse_duration(self.wait_timeout)


@dataclass(frozen=True)
class TaskLogsParams(ActionParams):
    """task-logs: the last lines of a task's output, read live while it runs."""

    job: str = param(description="Job id, as launch-job returned it.")
    task: int = param(description="The task's index (0..N-1).", minimum=0, maximum=MAX_TASKS - 1)
    tail: int = param(
        100,
        "Lines from the end of what the task printed so far (within the last 1 MiB; the "
        "result holds at most 64 KiB). 0: none, only the task's state.",
        minimum=0,
        maximum=MAX_TASKS,
    )
    stderr: bool = param(False, "The task's stderr instead of its stdout.")

    def __post_init__(self) -> None:
        """Check the job id."""
        super().__post_init__()
        _check_job_id(self.job)


def check_action_wait(params: Any) -> None:
    """Refuse a Juju action's wait over ACTION_MAX_WAIT_SECONDS (it holds the machine lock).

    Raises:
        ValueError: naming wait-timeout, the bound, and how to follow a longer job.
    """
    if isinstance(params, (LaunchJobParams, RetryJobParams)) and not params.wait:
        return
    if not isinstance(params, (LaunchJobParams, RetryJobParams, WaitJobParams)):
        return
    if params.wait_timeout_seconds > ACTION_MAX_WAIT_SECONDS:
        fail(
            "wait-timeout",
            f"{params.wait_timeout!r} is over the {ACTION_MAX_WAIT_SECONDS // 60}m a Juju action "
            "may wait (a waiting action holds the machine lock, so the principal's hooks wait "
            "too); run wait-job again, or on the machine: container-compute wait-job --job ID "
            "--wait-timeout 24h",
        )


@dataclass(frozen=True)
class GatherResultsParams(ActionParams):
    """gather-results: where a finished job's results are, and small outputs inline."""

    job: str = param(description="Job id, as launch-job returned it.")
    inline: bool = param(False, "Also return each selected task's stdout, stderr (bounded).")
    indexes: str = param("", "Tasks to report, as indexes and ranges (e.g. 0-3,7). Empty: all.")

    def __post_init__(self) -> None:
        """Check the job id and the ranges."""
        super().__post_init__()
        _check_job_id(self.job)
        _check_indexes(self.indexes)


@dataclass(frozen=True)
class ListJobsParams(ActionParams):
    """list-jobs: the newest jobs first."""

    state: str = param("", "Only jobs in this state. Empty: all.", enum=["", *JOB_STATES])
    limit: int = param(50, "Most jobs listed.", minimum=1, maximum=10_000)


def schema_type(f: "dataclasses.Field[Any]") -> str:
    """Return the JSON-schema type of a params field."""
    text = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if text.startswith("list"):
        return "array"
    return {"str": "string", "int": "integer", "bool": "boolean"}[text]


def is_required(f: "dataclasses.Field[Any]") -> bool:
    """True for a parameter with no default."""
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
