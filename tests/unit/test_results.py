"""Results tree: atomic install, joblog, bounded reads that never follow symlinks."""

import os
import time
from pathlib import Path

from container_compute.jobs import results, status
from container_compute.jobs.ledger import Ledger
from container_compute.jobs.model import TaskState


def test_install_task_dir_replaces_a_half_written_one(tmp_path: Path) -> None:
    final = results.task_dir(tmp_path, "jx", 0)
    final.mkdir(parents=True)
    (final / "stale").write_text("old")
    temp = results.temp_task_dir(tmp_path, "jx", 0, 2)
    (temp / "stdout").write_text("new")
    results.install_task_dir(temp, final)
    assert sorted(p.name for p in final.iterdir()) == ["stdout"]
    assert not temp.exists()
    assert [p.name for p in final.parent.iterdir()] == ["0"]


def test_temp_dirs_are_removed_after_a_crash(tmp_path: Path) -> None:
    temp = results.temp_task_dir(tmp_path, "jx", 3, 1)
    (temp / "stdout").write_text("half")
    results.task_dir(tmp_path, "jx", 1).mkdir()
    results.remove_temp_dirs(tmp_path)
    assert [p.name for p in results.job_dir(tmp_path, "jx").iterdir()] == ["1"]


def test_joblog_has_one_line_per_finished_task(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    job_id = ledger.create_job(
        {"command": "echo\ta"}, name="", backend="lxd", task_count=3, inputs=(), deadline_seconds=0
    )
    now = time.time()
    for index, code in ((0, 0), (2, 5)):
        ledger.start_attempt(job_id, index, lambda n, i=index: f"cc-{job_id}-{i}-{n}", now)
        ledger.finish_attempt(
            job_id,
            index,
            1,
            {
                "succeeded": code == 0,
                "exit-code": code,
                "started-at": now,
                "finished-at": now + 1.5,
                "bytes": 12,
            },
            task_state=TaskState.SUCCEEDED if code == 0 else TaskState.FAILED,
            charge=code != 0,
            not_before=now,
            now=now + 2,
        )
    text = results.render_joblog(ledger, job_id)
    lines = [line.split("\t") for line in text.splitlines()]
    assert lines[0] == list(results.JOBLOG_COLUMNS)
    assert [line[0] for line in lines[1:]] == ["1", "3"]
    assert lines[1][1] == f"cc-{job_id}-0-1"
    assert lines[1][3] == "1.500" and lines[1][5] == "12" and lines[1][6] == "0"
    assert lines[2][6] == "5" and lines[2][8] == "echo a"
    path = results.write_joblog(tmp_path, ledger, job_id)
    results.write_joblog(tmp_path, ledger, job_id)
    assert path.read_text() == text


def test_read_bounded_cuts_and_never_follows_symlinks(tmp_path: Path) -> None:
    (tmp_path / "big").write_text("x" * 100)
    assert results.read_bounded(tmp_path / "big", 10) == ("x" * 10, True)
    assert results.read_bounded(tmp_path / "big", 100) == ("x" * 100, False)
    secret = tmp_path / "secret"
    secret.write_text("do not read")
    os.symlink(secret, tmp_path / "link")
    assert results.read_bounded(tmp_path / "link", 100) == ("", False)
    assert results.read_bounded(tmp_path / "missing", 100) == ("", False)


def test_read_inline_respects_both_bounds(tmp_path: Path) -> None:
    (tmp_path / "stdout").write_text("o" * 5000)
    (tmp_path / "stderr").write_text("e" * 10)
    entry, used = results.read_inline(tmp_path, budget=65536)
    assert len(entry["stdout"]) == results.INLINE_STREAM_BYTES and entry["truncated"]
    assert entry["stderr"] == "e" * 10 and used == results.INLINE_STREAM_BYTES + 10
    entry, used = results.read_inline(tmp_path, budget=100)
    assert (len(entry["stdout"]), entry["stderr"], used) == (100, "", 100)


def test_usage_is_listed_per_attempt_and_summed_in_the_status(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    job_id = ledger.create_job(
        {"command": "burn", "cpu": "0-1"},
        name="",
        backend="lxd",
        task_count=2,
        inputs=(),
        deadline_seconds=0,
    )
    now = time.time()
    usages = {
        0: {"cpu-user-seconds": 3.0, "cpu-system-seconds": 1.0, "memory-peak-bytes": 5 << 20},
        1: {"cpu-user-seconds": None, "cpu-system-seconds": None, "memory-peak-bytes": None},
    }
    for index, usage in usages.items():
        ledger.start_attempt(job_id, index, lambda n, i=index: f"cc-{job_id}-{i}-{n}", now)
        record = {
            "succeeded": True,
            "exit-code": 0,
            "wall-seconds": 4.0,
            "oom-kills": 0 if index == 0 else None,
            "usage-source": {"cpu": "task-cgroup" if index == 0 else None, "memory": None},
            **usage,
        }
        ledger.finish_attempt(
            job_id,
            index,
            1,
            record,
            task_state=TaskState.SUCCEEDED,
            charge=False,
            not_before=now,
            now=now + 4,
        )
    lines = [line.split("\t") for line in results.render_usage(ledger, job_id).splitlines()]
    assert lines[0] == list(results.USAGE_COLUMNS)
    first = ["1", "1", f"cc-{job_id}-0-1", "0", "", "4.0", "3.0", "1.0", str(5 << 20), "0"]
    assert lines[1] == [*first, "task-cgroup", ""]
    assert lines[2][5:10] == ["4.0", "", "", "", ""]  # nothing known is left empty
    results.write_joblog(tmp_path, ledger, job_id)
    assert (results.joblog_path(tmp_path, job_id).parent / "usage.tsv").is_file()

    usage = status.job_status(ledger, ledger.job(job_id))["usage"]  # type: ignore[arg-type]
    assert usage["attempts"] == 2 and usage["wall-seconds"] == 8.0
    assert usage["cpu-user-seconds"] == 3.0 and usage["memory-peak-bytes"] == 5 << 20
    assert usage["cpus-per-task"] == 2  # the job's CPU set 0-1
    assert usage["cpu-efficiency"] == "50.0%"  # 4 CPU-s over 4 s on 2 CPUs (task 1: unknown)


def test_cpu_limits_count_cpus() -> None:
    assert [status.cpu_count(limit) for limit in ("2", "0-3,6", "", "0", "1-x")] == [
        2,
        5,
        None,
        None,
        None,
    ]
