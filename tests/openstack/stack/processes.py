"""Processes of a stack: started in sessions of their own, logged, stopped by pid."""

import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path


class StartupError(RuntimeError):
    """A service did not come up; the message names it and the tail of its log."""


def tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log file (empty if none)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Supervisor:
    """The long-running processes of one stack, stopped in reverse order of start."""

    def __init__(self, log_dir: Path) -> None:
        """Log each process to ``log_dir/<name>.log``."""
        self.log_dir = log_dir
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def log_path(self, name: str) -> Path:
        """Where process ``name`` logs."""
        return self.log_dir / f"{name}.log"

    def start(
        self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` detached from our terminal, its output in its log."""
        with self.log_path(name).open("ab") as log:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        self.processes[name] = process
        return process

    def check_alive(self, name: str) -> None:
        """Raise StartupError (with its log) when process ``name`` has exited."""
        process = self.processes[name]
        if process.poll() is not None:
            raise StartupError(
                f"{name} exited with {process.returncode}:\n{tail(self.log_path(name))}"
            )

    def wait_http(self, name: str, url: str, timeout: float = 90.0) -> None:
        """Wait until ``url`` answers any HTTP status (process ``name`` must stay up)."""
        end = time.monotonic() + timeout
        while True:
            self.check_alive(name)
            try:
                with urllib.request.urlopen(url, timeout=5):
                    return
            except urllib.error.HTTPError:
                return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > end:
                raise StartupError(f"{name} did not answer {url}:\n{tail(self.log_path(name))}")
            time.sleep(0.3)

    def stop(self, name: str, timeout: float = 20.0) -> None:
        """SIGTERM the process group of ``name``, SIGKILL after ``timeout``; reap it."""
        process = self.processes.pop(name, None)
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        # Children that outlived their leader (gunicorn workers, privsep helpers).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)

    def stop_all(self) -> None:
        """Stop every process, newest first."""
        for name in reversed(list(self.processes)):
            self.stop(name)


def run(argv: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 300) -> str:
    """Run a setup command to completion; return its stdout (raise with its output if it fails)."""
    result = subprocess.run(
        list(argv),
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise StartupError(
            f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout[-3000:]}\n"
            f"{result.stderr[-3000:]}"
        )
    return result.stdout
