"""What a task leaves in /run/cc is parsed without ever raising (seeded random bytes)."""

import os
import random
from pathlib import Path
from typing import Any

import pytest

from container_compute.backends import FailureReason, TaskOutcome
from container_compute.backends.lxd.hostside import (
    WorkerView,
    _worker_cgroup,
    read_cc_file,
    tree_pids,
    worker_level_pid,
)
from container_compute.backends.lxd.parsing import (
    event_count,
    parse_exit_status,
    parse_pid,
    shown,
)
from container_compute.backends.lxd.watch import AttemptWatcher
from container_compute.backends.usage import (
    TaskLimits,
    Usage,
    keyed_numbers,
    sandbox_usage,
    task_limits,
)

ITERATIONS = 5000
INTERESTING = [
    b"",
    b"\n",
    b"0",
    b"0\n",
    b"255\n",
    b"256\n",
    b"-1\n",
    b"+5\n",
    b"1_0\n",
    b" 7 \n",
    b"007",
    b"99999999999999999999999\n",
    "\u0663\n".encode(),  # an Arabic-Indic digit: int() takes it, an exit status is not that
    b"1e3",
    b"0x10",
    b"\x00",
    b"12\x0034",
    b"\xff\xfe",
    b"4194304",
    b"4194305",
    b"nan",
]


def _samples(seed: int) -> list[bytes]:
    rng = random.Random(seed)
    alphabet = b"0123456789 \t\r\n-+_x.e\x00\xff"
    samples = list(INTERESTING)
    for _ in range(ITERATIONS):
        size = rng.choice([0, 1, 2, 3, 4, 8, 16, 63, 64, 65, 200])
        if rng.random() < 0.5:
            samples.append(bytes(rng.choice(alphabet) for _ in range(size)))
        else:
            samples.append(rng.randbytes(size))
    return samples


def test_exit_status_parser_never_raises_and_only_returns_exit_statuses() -> None:
    for data in [None, *_samples(1)]:
        code, problem = parse_exit_status(data)
        if code is not None:
            assert 0 <= code <= 255 and problem is None, data
            assert data is not None and int(data.strip().decode("ascii")) == code
        elif problem is not None:
            assert problem.isprintable() and len(problem) < 120, (data, problem)
        else:
            assert data is None or not data.strip(b" \t\r\n")


def test_exit_status_examples() -> None:
    assert parse_exit_status(b"0\n") == (0, None)
    assert parse_exit_status(b" 7 \n") == (7, None)
    assert parse_exit_status(b"255") == (255, None)
    for forged in (b"256", b"-1", b"+5", b"1_0", "\u0663".encode(), b"x", b"\x00"):
        code, problem = parse_exit_status(forged)
        assert code is None and problem is not None and "not an exit status" in problem
    _, problem = parse_exit_status(b"99999999999999999999999\n")
    assert problem is not None and "99999999999999999999999" in problem


def test_pid_parser_never_raises() -> None:
    for data in [None, *_samples(2)]:
        pid, problem = parse_pid(data)
        if pid is not None:
            assert 0 < pid <= 1 << 22 and problem is None
        elif problem is not None:
            assert problem.isprintable() and len(problem) < 120


def test_cgroup_counts_never_raise() -> None:
    rng = random.Random(3)
    texts = [None, "", "max 12\n", "max -1", "max 1" + "0" * 40, "oom_kill x", "max"]
    texts += [rng.randbytes(rng.randrange(64)).decode(errors="replace") for _ in range(2000)]
    texts += [f"max {rng.randrange(10**6)}\noom_kill {rng.randrange(9)}" for _ in range(200)]
    for text in texts:
        for key in ("max", "oom_kill"):
            count = event_count(text, key)
            assert isinstance(count, int) and count >= 0
    assert event_count("low 0\nmax 6666\n", "max") == 6666


def test_shown_is_printable_and_short() -> None:
    for data in _samples(4)[:1000]:
        text = shown(data)
        assert text.isprintable() and len(text) <= 4 * 24 + 8


class _NoApi:
    """An API that must not be asked: the parser alone decides these cases."""

    project = "p"
    poll_seconds = 0.01

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the API was asked for {name}")


def _view(root: Path) -> WorkerView:
    view = WorkerView("cc-j-0-1", "p_cc-j-0-1", 0, None, None)
    view.rootfs = root
    return view


@pytest.fixture
def worker_root(tmp_path: Path) -> Path:
    """A fake worker root with /run/cc."""
    (tmp_path / "run" / "cc").mkdir(parents=True)
    return tmp_path


def _check(outcome: TaskOutcome | None) -> None:
    if outcome is None:
        return
    assert outcome.exit_code is None or 0 <= outcome.exit_code <= 255
    if not outcome.succeeded:
        assert outcome.reason is not None
    assert outcome.detail.isprintable() and len(outcome.detail) < 200


def test_watcher_turns_any_exit_code_file_into_an_outcome_or_nothing(worker_root: Path) -> None:
    judge = AttemptWatcher(_NoApi()).judge  # type: ignore[arg-type]
    target = worker_root / "run" / "cc" / "exit_code"
    for data in _samples(5)[:2000]:
        target.write_bytes(data)
        _check(judge.exit_status(_view(worker_root)))


def test_watcher_turns_any_pid_file_into_a_wrapper_or_a_reason(worker_root: Path) -> None:
    judge = AttemptWatcher(_NoApi()).judge  # type: ignore[arg-type]
    target = worker_root / "run" / "cc" / "pid"
    for data in _samples(6)[:2000]:
        target.write_bytes(data)
        view = _view(worker_root)
        outcome = judge._find_wrapper(view)
        _check(outcome)
        if outcome is None and view.wrapper_pid is not None:
            assert 0 < view.wrapper_pid <= 1 << 22


@pytest.mark.parametrize("kind", ["directory", "fifo", "symlink", "missing"])
def test_special_exit_code_files_are_never_opened(worker_root: Path, kind: str) -> None:
    target = worker_root / "run" / "cc" / "exit_code"
    if kind == "directory":
        target.mkdir()
    elif kind == "fifo":
        os.mkfifo(target)
    elif kind == "symlink":
        target.symlink_to("/etc/hostname")
    found = read_cc_file(worker_root, "exit_code")
    assert found is not None and found.kind == kind and found.data == b""
    outcome = AttemptWatcher(_NoApi()).judge.exit_status(_view(worker_root))  # type: ignore[arg-type]
    if kind == "missing":
        assert outcome is None
    else:
        assert outcome is not None and outcome.reason is FailureReason.EXIT_CODE
        assert f"a {kind} at /run/cc/exit_code" in outcome.detail


def test_outcome_refuses_what_is_not_an_exit_status() -> None:
    outcome = TaskOutcome(10**30)
    assert outcome.exit_code is None and outcome.reason is FailureReason.EXIT_CODE
    assert "not an exit status" in outcome.detail
    assert TaskOutcome(-1).exit_code is None
    assert TaskOutcome(255).exit_code == 255


def test_a_sandboxed_tasks_usage_is_read_from_its_cgroup_then_its_rusage() -> None:
    report = b"ready\npeak-rss-kib 102400\ncpu-user-usec 1500000\ncpu-system-usec 250000\n"
    cpu_stat = b"usage_usec 2000000\nuser_usec 1700000\nsystem_usec 300000\n"
    usage = sandbox_usage(cpu_stat, report)
    assert (usage.cpu_user_seconds, usage.cpu_system_seconds) == (1.7, 0.3)  # the cgroup's
    assert usage.cpu_source == "task-cgroup"
    assert (usage.memory_peak_bytes, usage.memory_source) == (100 << 20, "sandbox-rusage")
    usage = sandbox_usage(b"", report)  # no cgroup of its own: the rusage
    assert (usage.cpu_seconds, usage.cpu_source) == (1.75, "sandbox-rusage")
    usage = sandbox_usage(b"", b"ready\n")  # the shell recipe says nothing
    assert usage == Usage()
    assert usage.record()["usage-source"] == {"cpu": None, "memory": None}


def test_forged_usage_figures_are_left_out() -> None:
    report = b"peak-rss-kib lots\ncpu-user-usec -5\ncpu-system-usec 1e9\n"
    usage = sandbox_usage(b"user_usec 99999999999999999999999\nsystem_usec 1\n", report)
    assert usage == Usage()
    assert keyed_numbers(b"\xff\x00 junk\nkey 12\nkey2  34 \n") == {"key": 12, "key2": 34}


_LIMITED = b"task-memory-max 100663296\ntask-pids-max 1968\nmemory-peak-bytes 100663296\n"


@pytest.mark.parametrize(
    ("code", "events", "reason", "detail"),
    [
        pytest.param(
            137,
            b"oom-kills 2\nforks-refused 0\n",
            FailureReason.OOM,
            "killed: out of memory (the task's own memory cgroup, memory.max 96 MiB, "
            "counted an OOM kill)",
            id="oom",
        ),
        pytest.param(
            0,
            b"oom-kills 0\nforks-refused 12\n",
            FailureReason.PROCESS_LIMIT,
            "the task hit its process limit: its own pids cgroup, pids.max 1968, refused 12 "
            "forks (pids.events max)",
            id="fork-bomb-exiting-0",
        ),
        pytest.param(0, b"oom-kills 0\nforks-refused 0\n", None, "", id="within-its-limits"),
    ],
)
def test_a_sandboxed_task_that_met_its_own_limits_says_so(
    worker_root: Path, code: int, events: bytes, reason: FailureReason | None, detail: str
) -> None:
    """Where the task cgroup had limits (cgroup v2), its own events decide, even after exit 0."""
    cc = worker_root / "run" / "cc"
    (cc / "exit_code").write_text(f"{code}\n")
    (cc / "sandbox").write_bytes(b"ready\npeak-rss-kib 2048\n" + _LIMITED + events)
    view = _view(worker_root)
    view.sandboxed = True
    outcome = AttemptWatcher(_NoApi()).judge.exit_status(view)  # type: ignore[arg-type]

    assert outcome is not None and outcome.reason is reason and outcome.detail == detail
    assert outcome.sandbox_ended  # the worker goes on
    assert outcome.usage is not None
    assert (outcome.usage.memory_peak_bytes, outcome.usage.memory_source) == (
        96 << 20,
        "task-cgroup",
    )
    assert outcome.usage.oom_kills == (2 if reason is FailureReason.OOM else 0)


def test_task_limits_come_only_from_a_report_that_names_them() -> None:
    assert task_limits(b"ready\npeak-rss-kib 2048\noom-kills 3\n") is None  # no task limits
    limits = task_limits(b"task-pids-max 50\nforks-refused 7\n")
    assert limits == TaskLimits(None, 50, 0, 7)
    assert "pids.max 50," in TaskLimits(None, 50, 0, 7).process_detail()
    assert task_limits(b"task-memory-max max\ntask-pids-max lots\n") is None  # forged: none
    usage = sandbox_usage(b"", b"peak-rss-kib 2048\nmemory-peak-bytes 5000000\n")
    assert (usage.memory_peak_bytes, usage.memory_source) == (2 << 20, "sandbox-rusage")


def test_a_workers_processes_are_read_from_its_whole_cgroup_tree(tmp_path: Path) -> None:
    """Cgroup v2: LXD's exec in ``.lxc``, the init in ``worker``, a sandbox in ``task``."""
    worker = tmp_path / "lxc.payload.p_cc-w"
    for child, pids in (("", "1\n"), (".lxc", "20\n21\n"), ("worker", "5\n"), ("task", "")):
        (worker / child).mkdir(parents=True, exist_ok=True)
        (worker / child / "cgroup.procs").write_text(pids)
    (worker / "task" / "inner").mkdir()
    (worker / "task" / "inner" / "cgroup.procs").write_text("30\n")
    assert sorted(tree_pids(worker) or [], key=int) == ["1", "5", "20", "21", "30"]
    assert tree_pids(tmp_path / "gone") is None


@pytest.mark.parametrize(
    ("path", "worker"),
    [
        ("/lxc.payload.p_cc-w/worker", "/lxc.payload.p_cc-w"),
        ("/lxc.payload.p_cc-w", "/lxc.payload.p_cc-w"),
        ("/lxc.payload.m/lxc.payload.p_cc-w/worker", "/lxc.payload.m/lxc.payload.p_cc-w"),
        ("/user.slice", "/user.slice"),
    ],
)
def test_a_workers_own_cgroup_is_found_from_its_inits(path: str, worker: str) -> None:
    assert _worker_cgroup(path) == worker


@pytest.mark.parametrize(
    ("nspid", "in_worker"),
    [
        (["4242", "1"], "1"),  # the worker's init
        (["4300", "57"], "57"),  # a wrapper LXD's exec started
        (["4301", "58", "1"], "58"),  # a sandbox's init: pid 1 only of its own namespace
        (["4302", "59", "2"], "59"),  # the task in it
        (["77"], None),  # a process of the host
        ([], None),
    ],
)
def test_a_workers_process_is_known_by_its_pid_in_the_worker(
    nspid: list[str], in_worker: str | None
) -> None:
    assert worker_level_pid(nspid) == in_worker
