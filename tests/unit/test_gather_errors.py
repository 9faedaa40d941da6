"""A gathering error is the worker's (read it another way) or the host's (an error of its own)."""

import errno
from pathlib import Path

import pytest

from container_compute.backends.lxd.watch import host_side


@pytest.mark.parametrize("number", [errno.ENOSPC, errno.EDQUOT, errno.EROFS])
def test_a_full_or_read_only_host_disk_is_the_hosts(tmp_path: Path, number: int) -> None:
    assert host_side(OSError(number, "no room"), tmp_path / "task")


def test_an_io_error_writing_the_task_dir_is_the_hosts(tmp_path: Path) -> None:
    task_dir = tmp_path / "task"
    err = OSError(errno.EIO, "I/O error", str(task_dir / "files" / "out"))
    assert host_side(err, task_dir)


@pytest.mark.parametrize("number", [errno.ENOENT, errno.EIO, errno.ESRCH])
def test_the_worker_root_going_away_is_the_workers(tmp_path: Path, number: int) -> None:
    err = OSError(number, "gone", "/proc/4242/root/results/out")
    assert not host_side(err, tmp_path / "task")
