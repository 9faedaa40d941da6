"""The job agent: the long-running service that drives jobs (``container-compute-agent``).

Its loop: heartbeat, resume what a previous agent left running, launch queued tasks, reap
workers that belong to no live attempt, delete jobs past their retention. SIGTERM stops
launching and exits at once, leaving running workers to be adopted by the next start.
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

import jinja2

from . import actions
from .config import HostConfig
from .constants import (
    AGENT_UNIT_NAME,
    AGENT_UNIT_PATH,
    LEDGER_FILE,
    STATE_DIR,
    STATE_DIR_ENV,
    SYSTEMCTL,
    TEMPLATES_DIR,
    TEMPLATES_DIR_ENV,
)
from .engine import Engine, EngineLock
from .ledger import Ledger

logger = logging.getLogger("container_compute.agent")

HEARTBEAT_FRESH_SECONDS = 60.0
REAP_INTERVAL_SECONDS = 60.0
AGENT_ROLE = "agent"
SYSTEMD_RUN_DIR = Path("/run/systemd/system")


def default_state_dir() -> Path:
    """Return the state directory: $CONTAINER_COMPUTE_STATE_DIR or the package default."""
    return Path(os.environ.get(STATE_DIR_ENV) or STATE_DIR)


def load_config(state_dir: Path) -> HostConfig:
    """Return the host configuration saved by configure-host or the charm (defaults if none)."""
    from . import host

    return host.load_saved_config(state_dir)


def agent_alive(state_dir: Path) -> bool:
    """Return True when the agent's heartbeat in the ledger is younger than 60 s."""
    if not (state_dir / LEDGER_FILE).exists():
        return False
    ledger = Ledger(state_dir)
    try:
        beat = ledger.last_heartbeat()
    finally:
        ledger.close()
    return (
        beat is not None
        and beat[1] == AGENT_ROLE
        and time.time() - beat[2] < HEARTBEAT_FRESH_SECONDS
    )


def render_service(state_dir: Path) -> str:
    """Return the text of the agent's systemd unit."""
    templates = Path(os.environ.get(TEMPLATES_DIR_ENV) or TEMPLATES_DIR)
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 - a systemd unit, not HTML
    )
    return environment.get_template("agent.service.j2").render(
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


def run_agent(
    state_dir: Path,
    config: HostConfig,
    *,
    once: bool = False,
    poll: float = 2.0,
    stop: threading.Event | None = None,
) -> Engine:
    """Run the agent loop until ``stop`` is set (or, with ``once``, no job is active)."""
    stop = stop or threading.Event()
    lock = EngineLock(state_dir)
    while not lock.acquire():
        logger.info("another engine runs jobs in %s; waiting for it", state_dir)
        if stop.wait(1.0):
            return Engine(state_dir, config, actions.backend_factory_for(config))
    engine = Engine(
        state_dir, config, actions.backend_factory_for(config), **actions.engine_options
    )
    last_reap = 0.0
    try:
        while not stop.is_set():
            engine.ledger.heartbeat(os.getpid(), AGENT_ROLE)
            active = engine.step()
            if time.monotonic() - last_reap >= REAP_INTERVAL_SECONDS or (once and not active):
                last_reap = time.monotonic()
                _housekeeping(engine)
            if once and not active:
                engine.wait_deletions()
                break
            stop.wait(poll)
    finally:
        engine.launching = False
        left = engine.inflight_count()
        if left:
            logger.info("stopping: %d running workers are left for the next start", left)
        engine.ledger.clear_heartbeat(os.getpid())
        if not left:
            lock.release()
    return engine


def _housekeeping(engine: Engine) -> None:
    try:
        for name in engine.reap():
            logger.info("reaped worker %s", name)
        for job_id in engine.apply_retention():
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
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    args = parser.parse_args(argv)
    if args.poll <= 0:
        parser.error("--poll must be above 0")
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
    run_agent(args.state_dir, config, once=args.once, poll=args.poll, stop=stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
