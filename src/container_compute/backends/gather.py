"""Copy a finished task's output out of an untrusted tree (a worker's rootfs) into its task dir.

The source tree belongs to the task, which may have planted symlinks, devices, fifos or
sockets anywhere, including in place of ``/results`` or ``/run``. Every path is therefore
opened one component at a time relative to a directory descriptor, with ``O_NOFOLLOW``: no
link is ever followed, nothing outside ``source_root`` is read, and nothing outside
``task_dir`` is written. Only regular files and directories are copied; everything else is
listed as skipped. Bytes are capped: stdout first, then stderr, then the files of
``/results`` in sorted depth-first order; what is over the cap is cut and the report says so.

Layout written::

    task_dir/stdout  task_dir/stderr  task_dir/exit_code  task_dir/files/...
"""

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_DEPTH = 64
MAX_ENTRIES = 100_000

STDOUT_IN_WORKER = "run/cc/stdout"
STDERR_IN_WORKER = "run/cc/stderr"
RESULTS_IN_WORKER = "results"


@dataclass
class GatherReport:
    """What was gathered: bytes per stream, whether the cap cut anything, what was skipped."""

    stdout_bytes: int = 0
    stderr_bytes: int = 0
    files_bytes: int = 0
    files: int = 0
    truncated: bool = False
    skipped: list[str] = field(default_factory=list)
    cut: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        """Every byte written into the task dir."""
        return self.stdout_bytes + self.stderr_bytes + self.files_bytes


def safe_name(name: str) -> bool:
    """Tell whether ``name`` is one plain path component (no '/', NUL, '.' or '..')."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\0" not in name


def split_relative(path: str) -> list[str]:
    """Split a relative path into safe components.

    Raises:
        ValueError: when the path is absolute or a component is empty, '.', '..' or has NUL.

    """
    if path.startswith("/"):
        raise ValueError(f"{path!r} must be relative")
    parts = path.split("/")
    for part in parts:
        if not safe_name(part):
            raise ValueError(f"{path!r} has an unsafe component {part!r}")
    return parts


def kind_of(mode: int) -> str:
    """Name the kind of file of an ``st_mode``: "file", "directory", "symlink", "fifo", ..."""
    for test, word in (
        (stat.S_ISREG, "file"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return word
    return "special file"


@contextlib.contextmanager
def _open_dir(parent_fd: int | None, parts: list[str]) -> Iterator[int | None]:
    """Yield a descriptor of ``parts`` under ``parent_fd`` (never following links), or None."""
    fds: list[int] = []
    try:
        current = parent_fd
        for part in parts:
            try:
                current = os.open(part, _DIR_FLAGS, dir_fd=current)
            except OSError as err:
                if err.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EACCES):
                    yield None
                    return
                raise
            fds.append(current)
        yield current
    finally:
        for fd in reversed(fds):
            os.close(fd)


def _open_regular(dir_fd: int, name: str) -> tuple[int | None, str]:
    """Open ``name`` in ``dir_fd`` for reading if it is a regular file; else (None, its kind)."""
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None, "missing"
    if not stat.S_ISREG(info.st_mode):
        return None, kind_of(info.st_mode)
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return None, "symlink"
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped between stat and open
        kind = kind_of(os.fstat(fd).st_mode)
        os.close(fd)
        return None, kind
    return fd, "file"


def _copy_fd(source_fd: int, target_dir_fd: int, name: str, limit: int) -> tuple[int, bool]:
    """Copy at most ``limit`` bytes of ``source_fd`` into a new file; return (bytes, cut)."""
    target_fd = os.open(name, _WRITE_FLAGS, 0o644, dir_fd=target_dir_fd)
    copied = 0
    try:
        while copied < limit:
            chunk = os.read(source_fd, min(_CHUNK, limit - copied))
            if not chunk:
                return copied, False
            os.write(target_fd, chunk)
            copied += len(chunk)
        return copied, bool(os.read(source_fd, 1))
    finally:
        os.close(target_fd)


class _Gatherer:
    """One gathering run: the remaining byte budget and the report."""

    def __init__(self, cap_bytes: int) -> None:
        self.budget = cap_bytes
        self.entries = 0
        self.report = GatherReport()

    def copy_stream(self, root_fd: int, relative: str, target_fd: int, name: str) -> int:
        """Copy stdout or stderr (a file at ``relative`` under the root); return bytes copied."""
        *dirs, leaf = split_relative(relative)
        with _open_dir(root_fd, dirs) as dir_fd:
            if dir_fd is None:
                self.report.skipped.append(f"{name} (missing)")
                return 0
            source_fd, kind = _open_regular(dir_fd, leaf)
            if source_fd is None:
                self.report.skipped.append(f"{name} ({kind})")
                return 0
            try:
                copied, cut = _copy_fd(source_fd, target_fd, name, self.budget)
            finally:
                os.close(source_fd)
        self.budget -= copied
        if cut:
            self.report.truncated = True
            self.report.cut.append(name)
        return copied

    def copy_tree(self, source_fd: int, target_fd: int, prefix: str, depth: int) -> None:
        """Copy the regular files and directories under ``source_fd`` in sorted order."""
        with os.scandir(source_fd) as scan:
            names = sorted(entry.name for entry in scan)
        for name in names:
            shown = f"{prefix}/{name}"
            if not safe_name(name):
                self.report.skipped.append(f"{shown} (unsafe name)")
                continue
            self.entries += 1
            if self.entries > MAX_ENTRIES or depth > MAX_DEPTH:
                self.report.truncated = True
                self.report.cut.append(
                    f"{shown} (over {MAX_ENTRIES} entries or {MAX_DEPTH} levels)"
                )
                return
            try:
                info = os.stat(name, dir_fd=source_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(info.st_mode):
                self._copy_dir(source_fd, target_fd, name, shown, depth)
            elif stat.S_ISREG(info.st_mode):
                self._copy_file(source_fd, target_fd, name, shown)
            else:
                self.report.skipped.append(f"{shown} ({kind_of(info.st_mode)})")

    def _copy_dir(self, source_fd: int, target_fd: int, name: str, shown: str, depth: int) -> None:
        with _open_dir(source_fd, [name]) as child_fd:
            if child_fd is None:
                self.report.skipped.append(f"{shown} (not a directory when opened)")
                return
            os.mkdir(name, 0o755, dir_fd=target_fd)
            with _open_dir(target_fd, [name]) as child_target:
                assert child_target is not None  # we just made it
                self.copy_tree(child_fd, child_target, shown, depth + 1)

    def _copy_file(self, source_fd: int, target_fd: int, name: str, shown: str) -> None:
        if self.budget <= 0:
            self.report.truncated = True
            self.report.cut.append(shown)
            return
        file_fd, kind = _open_regular(source_fd, name)
        if file_fd is None:
            self.report.skipped.append(f"{shown} ({kind})")
            return
        try:
            copied, cut = _copy_fd(file_fd, target_fd, name, self.budget)
        finally:
            os.close(file_fd)
        self.budget -= copied
        self.report.files_bytes += copied
        self.report.files += 1
        if cut:
            self.report.truncated = True
            self.report.cut.append(shown)


def gather_task(
    source_root: Path,
    task_dir: Path,
    cap_bytes: int,
    exit_code: int | None,
    *,
    stdout: str = STDOUT_IN_WORKER,
    stderr: str = STDERR_IN_WORKER,
    results: str = RESULTS_IN_WORKER,
) -> GatherReport:
    """Copy stdout, stderr, the exit code and the ``results`` tree into ``task_dir``.

    Args:
        source_root: trusted top of the untrusted tree (e.g. a worker's rootfs on the host);
            ``stdout``, ``stderr`` and ``results`` are relative to it and no link is followed.
        task_dir: an existing, empty directory of ours (the caller renames it into place).
        cap_bytes: most bytes written in all (stdout, then stderr, then files in sorted order).
        exit_code: written to ``task_dir/exit_code`` unless None.
        stdout: relative path of the task's stdout file.
        stderr: relative path of the task's stderr file.
        results: relative path of the task's results directory (copied to ``files/``).

    Raises:
        ValueError: when cap_bytes is negative or a relative path is unsafe.

    """
    if cap_bytes < 0:
        raise ValueError(f"cap_bytes must not be negative, not {cap_bytes}")
    results_parts = split_relative(results)
    gatherer = _Gatherer(cap_bytes)
    # source_root itself is trusted (it may be the magic link /proc/<pid>/root); below it,
    # nothing is followed.
    root_fd = os.open(source_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    target_fd = os.open(task_dir, _DIR_FLAGS)
    try:
        report = gatherer.report
        report.stdout_bytes = gatherer.copy_stream(root_fd, stdout, target_fd, "stdout")
        report.stderr_bytes = gatherer.copy_stream(root_fd, stderr, target_fd, "stderr")
        if exit_code is not None:
            exit_fd = os.open("exit_code", _WRITE_FLAGS, 0o644, dir_fd=target_fd)
            try:
                os.write(exit_fd, f"{exit_code}\n".encode())
            finally:
                os.close(exit_fd)
        os.mkdir("files", 0o755, dir_fd=target_fd)
        with (
            _open_dir(root_fd, results_parts) as results_fd,
            _open_dir(target_fd, ["files"]) as files_fd,
        ):
            assert files_fd is not None  # we just made it
            if results_fd is None:
                report.skipped.append(f"/{results} (missing or not a directory)")
            else:
                gatherer.copy_tree(results_fd, files_fd, "files", 0)
    finally:
        os.close(root_fd)
        os.close(target_fd)
    return gatherer.report
