"""The resident launcher's protocol: the real helper program serving a directory here.

The host side (runner.py's request, claim and reply) against ``cc-sandbox --serve`` built from
the package's source; in a worker the directory is /run/cc-runner under its root.
"""

import errno
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from container_compute.backends.lxd import helper, runner

pytestmark = pytest.mark.skipif(
    not Path(helper.GCC).is_file(), reason=f"no C compiler at {helper.GCC}"
)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A runner serving ``tmp_path/serve``: (an open descriptor of that directory, the dir)."""
    program = helper.sandbox_helper(tmp_path / "cache")
    assert program is not None
    binary = tmp_path / "cc-sandbox"
    binary.write_bytes(program)
    binary.chmod(0o755)
    directory = tmp_path / "serve"
    process = subprocess.Popen(
        [str(binary), "--serve", str(directory)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={"PATH": "/usr/bin:/bin", "KEPT": "from the runner"},
    )
    try:
        for _ in range(400):
            if (directory / "pid").is_file():
                break
            time.sleep(0.005)
        assert (directory / "pid").read_text() == f"{process.pid}\n"
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            yield fd, directory
        finally:
            os.close(fd)
    finally:
        process.kill()
        process.wait(10)


def run(fd: int, script: str, environment: dict[str, str], request_id: str = "r1") -> int | None:
    sent = runner._send(fd, runner.encode_request(request_id, script, environment))
    assert sent is not None
    assert runner._claimed(fd, sent)
    return runner._reply(fd, request_id)


def test_a_script_runs_with_the_runners_environment_and_the_requests(
    served: tuple[int, Path], tmp_path: Path
) -> None:
    fd, directory = served
    out = tmp_path / "out"
    script = f'echo "$KEPT|$GIVEN|$SPACED" > {out}; exit 3'
    assert run(fd, script, {"GIVEN": "yes", "SPACED": "a b\nc"}) == 3
    assert out.read_text() == "from the runner|yes|a b\nc\n"
    # The request was taken, the reply read; the next one's file waits, of the runner's making.
    assert sorted(os.listdir(directory)) == ["doorbell", "pid", "request-2"]
    assert (directory / "request-2").read_bytes() == b""
    # The next request starts from the runner's environment again, not the last request's.
    assert run(fd, f'echo "${{GIVEN:-unset}}" > {out}', {}, "r2") == 0
    assert out.read_text() == "unset\n"


def test_a_script_killed_by_a_signal_says_so(served: tuple[int, Path]) -> None:
    fd, _ = served
    assert run(fd, "kill -TERM $$", {}) == 128 + signal.SIGTERM


def test_a_reply_to_another_request_is_not_taken(served: tuple[int, Path]) -> None:
    fd, _ = served
    sent = runner._send(fd, runner.encode_request("mine", "exit 0", {}))
    assert sent is not None and runner._claimed(fd, sent)
    assert runner._reply(fd, "someone-else") is None


def test_a_request_nobody_claims_is_taken_back(
    served: tuple[int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    fd, directory = served
    pid = int((directory / "pid").read_text())
    os.kill(pid, signal.SIGSTOP)  # alive but deaf: the request must not stay behind
    try:
        monkeypatch.setattr(runner, "CLAIM_SECONDS", 0.2)
        assert runner._send(fd, runner.encode_request("r1", "exit 0", {})) == "request-1"
        assert runner._claimed(fd, "request-1") is False
        assert sorted(os.listdir(directory)) == ["doorbell", "pid"]
    finally:
        os.kill(pid, signal.SIGCONT)


def test_a_claim_is_seen_when_the_next_request_file_is_already_made(
    served: tuple[int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A launcher that ends at once is claimed though the next request's file is made.

    The runner claims, runs and makes the next file between two looks of the host, which must
    still take its request as claimed (and not take the next file back).
    """
    fd, directory = served
    monkeypatch.setattr(runner, "FIRST_POLL_SECONDS", 0.3)
    for number in range(1, 4):
        assert run(fd, "exit 0", {}, f"r{number}") == 0
    assert sorted(os.listdir(directory)) == ["doorbell", "pid", "request-4"]


def test_the_host_makes_no_name_in_the_runners_directory(
    served: tuple[int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The protocol works where the worker's root is an idmapped mount.

    Where that mount does not map the host's root, opening a file that is not there with
    O_CREAT, or renaming to a new name, is EOVERFLOW.
    """
    fd, _ = served
    real_open, real_rename = os.open, os.rename

    def exists(name: str, dir_fd: int | None) -> bool:
        return os.path.lexists(name if dir_fd is None else f"/proc/self/fd/{dir_fd}/{name}")

    def open_as_on_idmapped(name: str, flags: int, *args: object, dir_fd: int | None = None):
        if flags & os.O_CREAT and not exists(name, dir_fd):
            raise OSError(errno.EOVERFLOW, "Value too large for defined data type", name)
        return real_open(name, flags, *args, dir_fd=dir_fd)  # type: ignore[arg-type]

    def rename_as_on_idmapped(source: str, target: str, **dirs: int) -> None:
        if not exists(target, dirs.get("dst_dir_fd")):
            raise OSError(errno.EOVERFLOW, "Value too large for defined data type", target)
        real_rename(source, target, **dirs)

    monkeypatch.setattr(os, "open", open_as_on_idmapped)
    monkeypatch.setattr(os, "rename", rename_as_on_idmapped)
    for number in range(1, 4):
        assert run(fd, f"exit {number}", {}, f"r{number}") == number


def test_what_cannot_be_passed_is_refused() -> None:
    with pytest.raises(ValueError, match="NUL"):
        runner.encode_request("r1", "true", {"BAD": "a\0b"})
    assert runner.parse_reply(b"r1 7\n", "r1") == 7
    assert runner.parse_reply(b"r1 x\n", "r1") is None
    assert runner.parse_reply(b"", "r1") is None


def test_a_worker_without_room_is_told_by_the_host_before_any_request() -> None:
    runners = runner.Runners(api=None, host_access=True)  # type: ignore[arg-type]
    pid = os.getpid()  # stands for the worker's init: its root is this host's /
    runners._inits["w"] = (pid, runner._start_time(pid) or "")
    free = runners._free_kib("w")
    assert free is not None and free > 0
    too_much = {"CC_MIN_FREE": str(free + 10**9)}
    assert runners.run("w", "exit 0", too_much) == runner.NO_ROOM_EXIT
    runners._inits["w"] = (pid, "another process")  # its pid reused: nothing is looked at
    assert runners._free_kib("w") is None
