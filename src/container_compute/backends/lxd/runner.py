"""Warm workers' resident launchers: a task's launcher without an LXD exec.

An LXD exec costs the daemon a process set-up and an operation per call: on a busy host it was
most of a trivial task's cost. A warm worker that has the sandbox helper runs it once, in the
background, as its resident launcher (``cc-sandbox --serve /run/cc-runner``, see
``templates/sandbox.c``). The host then hands each launcher script to it through the worker's
own root seen from the host (``/proc/<init>/root``): it writes the request into the
runner's empty ``request-N`` and a byte into the FIFO ``doorbell``; the runner claims it
(renames it to ``taken``, so only one side can still remove it), runs it, makes an empty
``request-<N+1>`` for the next one and writes ``reply``. The host makes no name there: where
the worker's root is an idmapped mount, root on the host can write, rename and remove a file
of the worker's, but a new name is refused (EOVERFLOW), so the runner makes them all. The
next request's file has a name of its own, or a launcher that ends at once would have its
claim missed. Every path below the root is opened without following links. A request not
claimed within ``CLAIM_SECONDS`` is taken back and the launcher goes through exec, as for a
worker without a runner (remote daemons, cluster members, the shell recipe, a runner of an
older helper).
"""

import contextlib
import errno
import logging
import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pylxd.exceptions
import requests

from ...constants import RUNNER_DIR_IN_WORKER, SANDBOX_HELPER_IN_WORKER
from .. import LaunchError
from .api import LXDApi, OperationFailedError
from .hostside import DIR_FLAGS, init_pid_from_cgroup, volume_name
from .launch import LAUNCHER_TIMEOUT_SECONDS, NO_ROOM_EXIT, exec_script

logger = logging.getLogger(__name__)

CLAIM_SECONDS = 2.0  # a request the runner has not claimed by then: it is gone
START_SECONDS = 2.0  # until a runner just started says its pid
FIRST_POLL_SECONDS = 0.0005
MAX_POLL_SECONDS = 0.01
REPLY_LIMIT = 128
_REQUEST_FILE = re.compile(r"request-[0-9]{1,20}")
# Started once per warm worker through exec; 3: the worker has no helper (no runner).
_START = (
    f"[ -x {SANDBOX_HELPER_IN_WORKER} ] || exit 3\n"
    f"{SANDBOX_HELPER_IN_WORKER} --serve {RUNNER_DIR_IN_WORKER} </dev/null >/dev/null 2>&1 &\n"
)
# Files the runner made: a FIFO in their place would not block, a link is not followed.
_WRITE_FLAGS = os.O_WRONLY | os.O_TRUNC | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def encode_request(request_id: str, script: str, environment: dict[str, str]) -> bytes:
    """The request's bytes: its id, the script, then NAME=VALUE entries, each NUL-ended.

    Raises:
        ValueError: when a part holds a NUL byte (it cannot be passed).
    """
    parts = [request_id, script, *(f"{key}={value}" for key, value in environment.items())]
    if any("\0" in part for part in parts):
        raise ValueError("a launcher's script or environment holds a NUL byte")
    return b"".join(part.encode() + b"\0" for part in parts)


def parse_reply(data: bytes, request_id: str) -> int | None:
    """The exit status in a runner's reply to ``request_id``; None for another or a bad one."""
    fields = data.decode(errors="replace").split()
    if len(fields) != 2 or fields[0] != request_id or not fields[1].isdigit():
        return None
    return int(fields[1])


def _start_time(pid: int) -> str | None:
    """The start time of host process ``pid`` (to tell it from a later one with its pid)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


class Runners:
    """The resident launchers of one LXD project's warm workers on the local daemon."""

    def __init__(self, api: LXDApi, host_access: bool) -> None:
        """Hand launchers over through the host's view of workers (``host_access``)."""
        self.api = api
        self.host_access = host_access
        self._inits: dict[str, tuple[int, str]] = {}  # worker -> its init's host pid, start

    def start(self, name: str) -> bool:
        """Start the runner of a new warm worker; False when it has none (exec then)."""
        if not self.host_access or not init_pid_from_cgroup(self._volume(name)):
            return False  # a worker the host does not see (another cluster member): exec
        try:
            code = int(exec_script(self.api, name, _START, {}).get("return", -1))
        except (
            OperationFailedError,
            pylxd.exceptions.LXDAPIException,
            requests.RequestException,
        ) as err:
            logger.info("no resident launcher in worker %s: %s", name, err)
            return False
        deadline = time.monotonic() + START_SECONDS
        while code == 0 and time.monotonic() < deadline:
            if self.adopt(name):
                return True
            time.sleep(0.005)
        logger.info("no resident launcher in worker %s (start exited %s)", name, code)
        return False

    def adopt(self, name: str) -> bool:
        """Use the runner ``name`` already has (a ready worker); False if it has none."""
        if not self.host_access:
            return False
        pid = init_pid_from_cgroup(self._volume(name))
        started = _start_time(pid) if pid else None
        if started is None:
            return False
        self._inits[name] = (pid, started)
        with self._runner_dir(name) as directory:
            if directory is not None and _is_file(directory, "pid"):
                return True
        self._inits.pop(name, None)
        return False

    def _volume(self, name: str) -> str:
        """The worker's name as its cgroup on the host says it."""
        return volume_name(self.api.project, name)

    def has(self, name: str) -> bool:
        """Tell whether ``name``'s launchers go to its runner."""
        return name in self._inits

    def forget(self, name: str) -> None:
        """``name`` is deleted or its runner gone: its launchers go through exec."""
        self._inits.pop(name, None)

    def run(self, name: str, script: str, environment: dict[str, str]) -> int | None:
        """Run ``script`` in ``name`` through its runner; its exit status, None: use exec.

        Raises:
            LaunchError: when the runner took the script but gave no status in time.
        """
        if name not in self._inits:
            return None
        wanted = environment.get("CC_MIN_FREE", "")
        free = self._free_kib(name) if wanted.isdigit() and int(wanted) > 0 else None
        if free is not None:  # the host looks at the worker's room, not a df in it
            if free < int(wanted):
                return NO_ROOM_EXIT
            environment = {**environment, "CC_MIN_FREE": "0"}
        request_id = secrets.token_hex(8)
        body = encode_request(request_id, script, environment)
        with self._runner_dir(name) as directory:
            if directory is None or (sent := _send(directory, body)) is None:
                self.forget(name)
                return None
            if not _claimed(directory, sent):
                logger.info("the resident launcher of %s is gone: exec from now on", name)
                self.forget(name)
                return None
            status = _reply(directory, request_id)
        if status is None:
            self.forget(name)
            raise LaunchError(f"the resident launcher of worker {name} gave no exit status")
        return status

    def _free_kib(self, name: str) -> int | None:
        """KiB left to the worker on its root disk, as a df in it says; None: not seen."""
        pid, started = self._inits.get(name, (0, ""))
        if not pid or _start_time(pid) != started:
            return None
        try:
            seen = os.statvfs(f"/proc/{pid}/root")
        except OSError:
            return None
        return seen.f_bavail * seen.f_frsize // 1024

    @contextlib.contextmanager
    def _runner_dir(self, name: str) -> Iterator[int | None]:
        """Open the runner's directory in the worker's root (no link followed), or None."""
        fds = self._open_runner_dir(name)
        try:
            yield fds[-1] if len(fds) == 1 + RUNNER_DIR_IN_WORKER.count("/") else None
        finally:
            for fd in reversed(fds):
                os.close(fd)

    def _open_runner_dir(self, name: str) -> list[int]:
        """The descriptors from the worker's root to the runner's directory, as far as they open.

        None at all when the worker's init is no longer the one first seen.
        """
        pid, started = self._inits.get(name, (0, ""))
        fds: list[int] = []
        if not pid or _start_time(pid) != started:
            return fds
        try:
            fds.append(os.open(f"/proc/{pid}/root", DIR_FLAGS & ~os.O_NOFOLLOW))
            for part in RUNNER_DIR_IN_WORKER.strip("/").split("/"):
                fds.append(os.open(part, DIR_FLAGS, dir_fd=fds[-1]))
        except OSError:
            pass
        return fds


def _is_file(directory: int, name: str) -> bool:
    with contextlib.suppress(OSError):
        return os.stat(name, dir_fd=directory, follow_symlinks=False).st_size > 0
    return False


def _send(directory: int, body: bytes) -> str | None:
    """Write the request into the runner's request file and ring; its name, None: failed.

    It fails when the runner made no one request file, or no runner reads the doorbell.
    """
    try:
        names = [name for name in os.listdir(directory) if _REQUEST_FILE.fullmatch(name)]
        if len(names) != 1:
            raise OSError(errno.ENOENT, f"no one request file but {names}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink("reply", dir_fd=directory)
        _write_to(directory, names[0], stat.S_ISREG, body)
        with contextlib.suppress(BlockingIOError):  # full of rings the runner has yet to read
            _write_to(directory, "doorbell", stat.S_ISFIFO, b"\n")
    except OSError as err:
        logger.info("could not hand a launcher to a resident launcher: %s", err)
        return None
    return names[0]


def _write_to(directory: int, name: str, kind: Callable[[int], bool], data: bytes) -> None:
    """Write ``data`` to the runner's file ``name`` of that ``kind`` (S_ISREG, S_ISFIFO).

    Raises:
        OSError: when it cannot, or ``name`` is not of that kind.
    """
    fd = os.open(name, _WRITE_FLAGS, dir_fd=directory)
    try:
        if not kind(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, f"{name} in the runner's directory is not the runner's")
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _claimed(directory: int, request: str) -> bool:
    """Wait until the runner claims ``request``; False (and taken back) if it does not."""
    deadline = time.monotonic() + CLAIM_SECONDS
    pause = FIRST_POLL_SECONDS
    while True:
        try:
            os.stat(request, dir_fd=directory, follow_symlinks=False)
        except FileNotFoundError:
            return True
        if time.monotonic() >= deadline:
            try:
                os.unlink(request, dir_fd=directory)
            except OSError as err:  # claimed just now
                return err.errno == errno.ENOENT
            return False
        time.sleep(pause)
        pause = min(pause * 1.25, MAX_POLL_SECONDS)


def _reply(directory: int, request_id: str) -> int | None:
    """Wait for the runner's reply to ``request_id`` (removed once read); None: none came."""
    deadline = time.monotonic() + LAUNCHER_TIMEOUT_SECONDS
    pause = FIRST_POLL_SECONDS
    while time.monotonic() < deadline:
        try:
            fd = os.open("reply", _READ_FLAGS, dir_fd=directory)
        except FileNotFoundError:
            time.sleep(pause)
            pause = min(pause * 1.25, MAX_POLL_SECONDS)
            continue
        except OSError:
            return None
        try:
            data = os.read(fd, REPLY_LIMIT)
        finally:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink("reply", dir_fd=directory)
        return parse_reply(data, request_id)
    return None
