"""Gathering a task's output from an untrusted tree: links, specials, caps, names."""

import os
import socket
from pathlib import Path

import pytest

from container_compute.backends.gather import gather_task, split_relative


def _worker_tree(root: Path, stdout: bytes = b"out\n", stderr: bytes = b"err\n") -> Path:
    (root / "run" / "cc").mkdir(parents=True)
    (root / "run" / "cc" / "stdout").write_bytes(stdout)
    (root / "run" / "cc" / "stderr").write_bytes(stderr)
    (root / "results").mkdir()
    return root / "results"


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    source = tmp_path / "rootfs"
    source.mkdir()
    task = tmp_path / "task"
    task.mkdir()
    return source, task


def test_copies_streams_exit_code_and_tree(dirs: tuple[Path, Path]) -> None:
    source, task = dirs
    results = _worker_tree(source)
    (results / "a.txt").write_text("alpha")
    (results / "sub" / "deep").mkdir(parents=True)
    (results / "sub" / "deep" / "b.bin").write_bytes(b"\0" * 10)
    report = gather_task(source, task, 1 << 20, 3)
    assert (task / "stdout").read_bytes() == b"out\n"
    assert (task / "stderr").read_bytes() == b"err\n"
    assert (task / "exit_code").read_text() == "3\n"
    assert (task / "files" / "a.txt").read_text() == "alpha"
    assert (task / "files" / "sub" / "deep" / "b.bin").read_bytes() == b"\0" * 10
    assert (report.stdout_bytes, report.stderr_bytes, report.files_bytes) == (4, 4, 15)
    assert report.files == 2
    assert not report.truncated
    assert report.skipped == []


def test_no_exit_code_file_when_unknown(dirs: tuple[Path, Path]) -> None:
    source, task = dirs
    _worker_tree(source)
    gather_task(source, task, 1024, None)
    assert not (task / "exit_code").exists()


def test_symlinks_are_listed_not_followed(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    source, task = dirs
    results = _worker_tree(source)
    secret = tmp_path / "secret"
    secret.write_text("host secret")
    (secret.parent / "secretdir").mkdir()
    (secret.parent / "secretdir" / "key").write_text("k")
    (results / "shadow").symlink_to(secret)
    (results / "dirlink").symlink_to(secret.parent / "secretdir")
    (results / "rel").symlink_to("../../../secret")
    report = gather_task(source, task, 1 << 20, 0)
    assert sorted(os.listdir(task / "files")) == []
    assert "files/shadow (symlink)" in report.skipped
    assert "files/dirlink (symlink)" in report.skipped
    assert "files/rel (symlink)" in report.skipped
    for path in task.rglob("*"):
        assert not path.is_symlink()
        if path.is_file():
            assert b"secret" not in path.read_bytes()


def test_symlinked_results_dir_and_stdout_not_followed(
    dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    source, task = dirs
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "loot").write_text("host data")
    (source / "run").mkdir()
    (source / "run" / "cc").symlink_to(outside)
    (source / "results").symlink_to(outside)
    report = gather_task(source, task, 1 << 20, 0)
    assert not (task / "stdout").exists()
    assert os.listdir(task / "files") == []
    assert "stdout (missing)" in report.skipped
    assert any(s.startswith("/results") for s in report.skipped)


def test_specials_skipped(dirs: tuple[Path, Path]) -> None:
    source, task = dirs
    results = _worker_tree(source)
    os.mkfifo(results / "pipe")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(results / "sock"))
    try:
        report = gather_task(source, task, 1 << 20, 0)
    finally:
        listener.close()
    assert "files/pipe (fifo)" in report.skipped
    assert "files/sock (socket)" in report.skipped
    assert os.listdir(task / "files") == []


def test_fifo_as_stdout_does_not_block(dirs: tuple[Path, Path]) -> None:
    source, task = dirs
    (source / "run" / "cc").mkdir(parents=True)
    os.mkfifo(source / "run" / "cc" / "stdout")
    report = gather_task(source, task, 100, 0)
    assert "stdout (fifo)" in report.skipped


def test_cap_cuts_streams_first_then_files_in_order(dirs: tuple[Path, Path]) -> None:
    source, task = dirs
    results = _worker_tree(source, stdout=b"o" * 60, stderr=b"e" * 30)
    (results / "a").write_bytes(b"a" * 20)
    (results / "b").write_bytes(b"b" * 20)
    report = gather_task(source, task, 100, 0)
    assert (task / "stdout").read_bytes() == b"o" * 60
    assert (task / "stderr").read_bytes() == b"e" * 30
    assert (task / "files" / "a").read_bytes() == b"a" * 10
    assert not (task / "files" / "b").exists()
    assert report.truncated
    assert report.cut == ["files/a", "files/b"]
    assert report.total_bytes == 100


def test_cap_cuts_stdout(dirs: tuple[Path, Path]) -> None:
    source, task = dirs
    _worker_tree(source, stdout=b"x" * 5000)
    report = gather_task(source, task, 1024, 0)
    assert (task / "stdout").stat().st_size == 1024
    assert (task / "stderr").read_bytes() == b""
    assert report.truncated and report.cut == ["stdout", "stderr"]


def test_exact_cap_is_not_truncated(dirs: tuple[Path, Path]) -> None:
    source, task = dirs
    _worker_tree(source, stdout=b"x" * 8, stderr=b"")
    report = gather_task(source, task, 8, 0)
    assert not report.truncated


def test_missing_results_is_reported(dirs: tuple[Path, Path]) -> None:
    source, task = dirs
    (source / "run" / "cc").mkdir(parents=True)
    report = gather_task(source, task, 10, 1)
    assert "stdout (missing)" in report.skipped
    assert "/results (missing or not a directory)" in report.skipped
    assert (task / "exit_code").read_text() == "1\n"


def test_bad_arguments_change_nothing(dirs: tuple[Path, Path]) -> None:
    source, task = dirs
    _worker_tree(source)
    with pytest.raises(ValueError, match="must not be negative"):
        gather_task(source, task, -1, 0)
    with pytest.raises(ValueError, match="unsafe component"):
        gather_task(source, task, 10, 0, results="../etc")
    assert os.listdir(task) == []


@pytest.mark.parametrize("path", ["/abs", "a/../b", "a//b", "."])
def test_split_relative_rejects(path: str) -> None:
    with pytest.raises(ValueError):
        split_relative(path)
