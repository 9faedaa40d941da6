"""Who runs the jobs of a state directory: the engine the front ends open, and the agent's pulse.

The agent (``container-compute-agent``) and in-process engines (``launch-job --wait``, an
action) all open their engine here, so tests can swap the backends of every front end at once
(``backend_factory_for``) and speed up back-off (``engine_options``).
"""

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import HostConfig
from ..constants import LEDGER_FILE
from .ledger import Ledger
from .scheduler import BackendFactory, Engine, default_backend_factory

AGENT_ROLE = "agent"
HEARTBEAT_FRESH_SECONDS = 60.0

# Tests replace these to run jobs on a fake backend, with short back-off.
backend_factory_for: Callable[[HostConfig], BackendFactory] = default_backend_factory
engine_options: dict[str, Any] = {}


def open_engine(config: HostConfig, state_dir: Path, ledger: Ledger | None = None) -> Engine:
    """Return an engine of ``state_dir`` with this host's backends."""
    # The default factory is left to the engine, which gives it the state dir (Nova's cloud).
    factory = (
        None if backend_factory_for is default_backend_factory else backend_factory_for(config)
    )
    return Engine(state_dir, config, factory, ledger=ledger, **engine_options)


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
