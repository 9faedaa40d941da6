"""The job agent: the long-running service that drives jobs (``container-compute-agent``).

Its loop: heartbeat, resume what a previous agent left running, launch queued tasks, reap
workers that belong to no live attempt, delete jobs past their retention. SIGTERM stops
launching and exits as soon as no thread is starting, committing or deleting a worker,
leaving running workers to be adopted by the next engine (the next start, or a waiting
``launch-job --wait``).
"""

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .config import HostConfig
from .constants import AGENT_UNIT_NAME, AGENT_UNIT_PATH, STATE_DIR_ENV, SYSTEMCTL
from .host import load_saved_config
from .jobs import housekeeping
from .jobs.runner import AGENT_ROLE, agent_alive, open_engine
from .jobs.scheduler import Engine, EngineLock
from .privatefiles import default_state_dir
from .rendering import render

__all__ = ["agent_alive", "install_service", "main", "remove_service", "run_agent"]

logger = logging.getLogger("container_compute.agent")

REAP_INTERVAL_SECONDS = 60.0
DELETIONS_ON_STOP_SECONDS = 20.0
PARK_SECONDS = 30.0
SYSTEMD_RUN_DIR = Path("/run/systemd/system")


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
    )


def install_service(state_dir: Path, unit_path: Path = AGENT_UNIT_PATH) -> bool:
    """Install, enable and start the agent's systemd unit; return True when it changed.

    Does nothing and returns False where systemd is not running (no /run/systemd/system).
    """
    if not SYSTEMD_RUN_DIR.is_dir():
        logger.info("no systemd here: run container-compute-agent yourself")
        return False
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
) -> Engine:
    """Run the agent loop until ``stop`` is set (or, with ``once``, no job is active).

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
    last_reap = 0.0
    try:
        while not stop.is_set():
            try:
                engine.ledger.heartbeat(os.getpid(), AGENT_ROLE)
                active = engine.step()
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


def _housekeeping(engine: Engine) -> None:
    try:
        for name in housekeeping.reap(engine):
            logger.info("reaped worker %s", name)
        for job_id in housekeeping.apply_retention(engine):
            logger.info("deleted job %s (retention)", job_id)
    except Exception:
        logger.exception("reaping failed; trying again later")


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
    args = parser.parse_args(argv)
    if args.poll <= 0:
        parser.error("--poll must be above 0")
    if args.reap_interval <= 0:
        parser.error("--reap-interval must be above 0")
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = load_config(args.state_dir)
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
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
