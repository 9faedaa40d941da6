"""The job agent: the long-running service that drives jobs (``container-compute-agent``).

Its loop: heartbeat, resume what a previous agent left running, launch queued tasks, reap
workers that belong to no live attempt, delete jobs past their retention. SIGTERM stops
launching and exits as soon as no thread is starting, committing or deleting a worker,
leaving running workers to be adopted by the next engine (the next start, or a waiting
``launch-job --wait``).

The agent runs one version: the saved host config and the library's code, each as a digest in
``agent-version.json``. When either changes on disk (``juju config``, ``juju refresh``,
``container-compute configure-host``, a new wheel), the agent stops the same way and executes
itself again, so the new config and code apply to the jobs already running, which the new
process adopts. A saved config that does not load is refused (logged) and the agent goes on.
"""

import argparse
import dataclasses
import hashlib
import json
import logging
import logging.handlers
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .config import HostConfig
from .constants import (
    AGENT_LOG_FILE,
    AGENT_UNIT_NAME,
    AGENT_UNIT_PATH,
    LOGROTATE_FILE,
    STATE_DIR_ENV,
    SYSTEMCTL,
)
from .host import SAVED_CONFIG_FILE, HostError, load_saved_config
from .jobs import housekeeping
from .jobs.runner import AGENT_ROLE, agent_alive, open_engine
from .jobs.scheduler import Engine, EngineLock
from .metrics.server import AgentMetrics, endpoint_problem
from .privatefiles import default_state_dir, write_private
from .rendering import render

__all__ = [
    "AgentVersion",
    "agent_alive",
    "await_current",
    "install_service",
    "main",
    "metrics_problem",
    "remove_service",
    "run_agent",
]

logger = logging.getLogger("container_compute.agent")

REAP_INTERVAL_SECONDS = 60.0
DELETIONS_ON_STOP_SECONDS = 20.0
PARK_SECONDS = 30.0
SYSTEMD_RUN_DIR = Path("/run/systemd/system")
VERSION_FILE = "agent-version.json"
PACKAGE_DIR = Path(__file__).resolve().parent
CODE_SUFFIXES = (".py", ".j2")
# How long a hook or configure-host waits for a running agent to take a new version: parking
# its threads takes up to PARK_SECONDS, then the new process starts and beats.
AWAIT_CURRENT_SECONDS = PARK_SECONDS + 45.0
# How long a running agent has to take a new version by itself before systemd restarts it.
SELF_RELOAD_SECONDS = 10.0


@dataclasses.dataclass(frozen=True)
class AgentVersion:
    """What an agent runs: digests of the saved host config and of the library's code."""

    config: str
    code: str

    @classmethod
    def on_disk(cls, state_dir: Path) -> "AgentVersion":
        """The version a new agent of ``state_dir`` would run now."""
        return cls(config=_config_digest(state_dir), code=_code_digest())


def _config_digest(state_dir: Path) -> str:
    try:
        text = (state_dir / SAVED_CONFIG_FILE).read_bytes()
    except FileNotFoundError:
        return "none"
    return hashlib.sha256(text).hexdigest()[:16]


def _code_files() -> list[Path]:
    return sorted(p for p in PACKAGE_DIR.rglob("*") if p.suffix in CODE_SUFFIXES)


def _code_digest() -> str:
    digest = hashlib.sha256()
    for path in _code_files():
        digest.update(str(path.relative_to(PACKAGE_DIR)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _disk_signature(state_dir: Path) -> tuple[tuple[str, int, int], ...]:
    """Cheap to compute every pass: names, sizes and mtimes of the config and code files."""
    paths = [state_dir / SAVED_CONFIG_FILE, *_code_files()]
    found = []
    for path in paths:
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        found.append((str(path), stat.st_size, stat.st_mtime_ns))
    return tuple(found)


def running_version(state_dir: Path) -> AgentVersion | None:
    """The version the agent of ``state_dir`` said it runs, or None (none said, or unreadable)."""
    try:
        data = json.loads((state_dir / VERSION_FILE).read_text())
        return AgentVersion(config=str(data["config"]), code=str(data["code"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


class VersionWatch:
    """Tell the agent when the config or code on disk is no longer what it runs."""

    def __init__(self, state_dir: Path) -> None:
        """Note the version on disk as this process loads its config (before the lock)."""
        self.state_dir = state_dir
        self._signature = _disk_signature(state_dir)
        self.running = AgentVersion.on_disk(state_dir)
        self.new_version: AgentVersion | None = None
        self._refused: AgentVersion | None = None

    def start(self) -> None:
        """Say in ``agent-version.json`` what this agent runs (it holds the engine lock now)."""
        write_private(
            self.state_dir / VERSION_FILE,
            json.dumps({"pid": os.getpid(), **dataclasses.asdict(self.running)}) + "\n",
        )

    def check(self) -> bool:
        """True (``new_version`` set) when config or code changed and the new config loads."""
        signature = _disk_signature(self.state_dir)
        if signature == self._signature:
            return False
        self._signature = signature
        found = AgentVersion.on_disk(self.state_dir)
        if found in (self.running, self._refused):
            return False
        try:
            load_saved_config(self.state_dir)
        except HostError as err:
            logger.error("the saved config changed but does not load; running on: %s", err)
            self._refused = found
            return False
        self.new_version = found
        return True


def await_current(
    state_dir: Path, timeout: float = AWAIT_CURRENT_SECONDS, *, restart: bool = False
) -> str:
    """Wait (bounded) until a running agent of ``state_dir`` runs the saved config on disk.

    The agent takes a new version by itself within a pass or two. With ``restart`` (the charm:
    its agent runs this very code, as the unit file it rendered says) the agent must run this
    code too, and one that does not take the new version by itself (an agent older than this)
    is restarted by systemd. Returns what happened, for the log: "no agent runs", "current",
    "reloaded" or "stale".
    """
    if not agent_alive(state_dir):
        return "no agent runs"
    wanted = AgentVersion.on_disk(state_dir)

    def current() -> bool:
        running = running_version(state_dir)
        return running is not None and (
            running == wanted if restart else running.config == wanted.config
        )

    if current():
        return "current"
    end = time.monotonic() + timeout
    deadline_alone = time.monotonic() + SELF_RELOAD_SECONDS
    restarted = not (restart and SYSTEMD_RUN_DIR.is_dir())
    while time.monotonic() < end:
        if current() and agent_alive(state_dir):
            return "reloaded"
        if not restarted and time.monotonic() >= deadline_alone:
            subprocess.run(
                [SYSTEMCTL, "restart", AGENT_UNIT_NAME], check=True, capture_output=True
            )
            restarted = True
        time.sleep(0.5)
    return "stale"


def metrics_problem(state_dir: Path, listen: str) -> str | None:
    """Why the agent serves no metrics on ``listen`` (``metrics-listen``); None: it does.

    Says only what the agent reported for that very value (a port in use, an address that
    is not this machine's).
    """
    return endpoint_problem(state_dir, listen)


def load_config(state_dir: Path) -> HostConfig:
    """Return the host configuration saved by configure-host or the charm (defaults if none)."""
    return load_saved_config(state_dir)


def render_service(state_dir: Path) -> str:
    """Return the text of the agent's systemd unit."""
    return render(
        "agent.service.j2",
        python=sys.executable,
        pythonpath=str(Path(__file__).resolve().parents[1]),
        state_dir=str(state_dir),
        state_dir_env=STATE_DIR_ENV,
        log_file=str(AGENT_LOG_FILE),
    )


def install_service(state_dir: Path, unit_path: Path = AGENT_UNIT_PATH) -> bool:
    """Install, enable and start the agent's systemd unit; return True when it changed.

    Does nothing and returns False where systemd is not running (no /run/systemd/system).
    """
    if not SYSTEMD_RUN_DIR.is_dir():
        logger.info("no systemd here: run container-compute-agent yourself")
        return False
    _install_logrotate()
    text = render_service(state_dir)
    changed = not unit_path.exists() or unit_path.read_text() != text
    if changed:
        unit_path.parent.mkdir(parents=True, exist_ok=True)
        unit_path.write_text(text)
        subprocess.run([SYSTEMCTL, "daemon-reload"], check=True, capture_output=True)
    subprocess.run(
        [SYSTEMCTL, "enable", "--now", AGENT_UNIT_NAME], check=True, capture_output=True
    )
    if changed:
        subprocess.run([SYSTEMCTL, "restart", AGENT_UNIT_NAME], check=True, capture_output=True)
    return changed


def _install_logrotate(path: Path = LOGROTATE_FILE) -> bool:
    """Have logrotate rotate the agent's log file (where logrotate is); True when changed."""
    if not path.parent.is_dir():
        return False
    text = render("logrotate.j2", log_file=str(AGENT_LOG_FILE))
    if path.exists() and path.read_text() == text:
        return False
    path.write_text(text)
    return True


def remove_service(unit_path: Path = AGENT_UNIT_PATH) -> bool:
    """Stop, disable and remove the agent's systemd unit; return True when there was one.

    Running workers are left to the reaper of whoever runs jobs next (or to teardown_host).
    """
    if not unit_path.exists():
        return False
    if SYSTEMD_RUN_DIR.is_dir():
        subprocess.run(
            [SYSTEMCTL, "disable", "--now", AGENT_UNIT_NAME], check=False, capture_output=True
        )
    unit_path.unlink()
    LOGROTATE_FILE.unlink(missing_ok=True)
    if SYSTEMD_RUN_DIR.is_dir():
        subprocess.run([SYSTEMCTL, "daemon-reload"], check=True, capture_output=True)
    return True


def run_agent(
    state_dir: Path,
    config: HostConfig,
    *,
    once: bool = False,
    poll: float = 2.0,
    stop: threading.Event | None = None,
    reap_interval: float = REAP_INTERVAL_SECONDS,
    watch: VersionWatch | None = None,
    metrics: AgentMetrics | None = None,
) -> Engine:
    """Run the agent loop until ``stop`` is set (or, with ``once``, no job is active).

    With ``metrics``, a thread of theirs serves and samples the engine (once the agent holds it:
    one agent of a state dir listens); every pass is recorded.
    With a ``watch``, the loop also ends when the saved config or the code changed on disk
    (``watch.new_version`` says to what): the caller executes the agent again.

    A pass that fails (the ledger's disk full, a backend error the engine did not expect)
    is logged and tried again at the next pass: it never ends the agent.
    """
    stop = stop or threading.Event()
    lock = EngineLock(state_dir)
    while not lock.acquire():
        logger.info("another engine runs jobs in %s; waiting for it", state_dir)
        if stop.wait(1.0):
            return open_engine(config, state_dir)
    engine = open_engine(config, state_dir)
    _announce(engine, watch, metrics)
    last_reap = 0.0
    try:
        while not stop.is_set():
            if watch is not None and watch.check():
                logger.info("config or code changed: handing running jobs to a new agent")
                break
            began = time.monotonic()
            try:
                engine.ledger.heartbeat(os.getpid(), AGENT_ROLE)
                active = engine.step()
                AgentMetrics.passed(time.monotonic() - began)
            except Exception:  # the next pass tries again: the agent must not end here
                logger.exception("a scheduling pass failed; trying again in %.1fs", poll)
                stop.wait(poll)
                continue
            if time.monotonic() - last_reap >= reap_interval or (once and not active):
                last_reap = time.monotonic()
                _housekeeping(engine)
            if once and not active:
                engine.wait_deletions()
                break
            stop.wait(poll)
    finally:
        engine.stop_launching()
        left = engine.inflight_count()
        if not left:
            # A finished job's idle warm workers and template may still be being deleted in
            # the background: give that a moment (the reaper of the next start does the rest).
            engine.wait_deletions(timeout=DELETIONS_ON_STOP_SECONDS)
        if left:
            logger.info("stopping: %d running workers are left for the next start", left)
            # No thread starts, commits or deletes a worker from now on: whatever the exit
            # interrupts is a running attempt the next engine adopts, never an orphan.
            engine.park(timeout=PARK_SECONDS)
        engine.ledger.clear_heartbeat(os.getpid())
        if not left:
            lock.release()
    return engine


def _announce(engine: Engine, watch: VersionWatch | None, metrics: AgentMetrics | None) -> None:
    """The agent holds the engine now: say what it runs, and sample it for the metrics."""
    if watch is not None:
        watch.start()
    if metrics is not None:
        metrics.start(engine)


def _housekeeping(engine: Engine) -> None:
    try:
        for name in housekeeping.reap(engine):
            logger.info("reaped worker %s", name)
        for job_id in housekeeping.apply_retention(engine):
            logger.info("deleted job %s (retention)", job_id)
    except Exception:
        logger.exception("reaping failed; trying again later")


def _set_up_logging(level: str, log_file: Path | None) -> None:
    """Log to stderr (the journal) and, with ``log_file``, to that file too."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        try:
            log_file.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
            handlers.append(logging.handlers.WatchedFileHandler(log_file))
        except OSError as err:
            print(f"cannot write the log to {log_file}: {err}", file=sys.stderr)
    logging.basicConfig(
        level=level, handlers=handlers, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``container-compute-agent``."""
    parser = argparse.ArgumentParser(prog="container-compute-agent", description=__doc__)
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=default_state_dir(),
        help="state directory (ledger, results, saved host config)",
    )
    parser.add_argument(
        "--once", action="store_true", help="run until no job is active, then exit"
    )
    parser.add_argument("--poll", type=float, default=2.0, help="seconds between passes")
    parser.add_argument(
        "--reap-interval",
        type=float,
        default=REAP_INTERVAL_SECONDS,
        help="seconds between two reaps of this state dir's leftover workers",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    parser.add_argument(
        "--log-file",
        type=Path,
        help="also write the log to this file (reopened when logrotate moves it)",
    )
    args = parser.parse_args(argv)
    if args.poll <= 0:
        parser.error("--poll must be above 0")
    if args.reap_interval <= 0:
        parser.error("--reap-interval must be above 0")
    _set_up_logging(args.log_level, args.log_file)
    watch = None if args.once else VersionWatch(args.state_dir)
    config = load_config(args.state_dir)
    metrics = None if args.once else AgentMetrics(args.state_dir, config.metrics_listen)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        logger.info("signal %d: stop launching and exit", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    run_agent(
        args.state_dir,
        config,
        once=args.once,
        poll=args.poll,
        stop=stop,
        reap_interval=args.reap_interval,
        watch=watch,
        metrics=metrics,
    )
    if metrics is not None:
        metrics.close()
    if watch is not None and watch.new_version is not None and not stop.is_set():
        again = [sys.executable, "-m", "container_compute.agent"]
        again += sys.argv[1:] if argv is None else argv
        logger.info("executing the agent again: %s", " ".join(again))
        logging.shutdown()
        os.execv(sys.executable, again)  # noqa: S606 (this interpreter, an argument list)
    return 0


if __name__ == "__main__":
    sys.exit(main())
