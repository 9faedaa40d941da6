"""The agent's metrics endpoint: ``metrics-listen``, its HTTP server, and what it says of itself.

The agent writes ``metrics-status.json`` in its state dir: where it was asked to listen and,
when it could not, why. The charm reads it (``endpoint_problem``) to block the unit with a
message naming the option, while the agent goes on running jobs without metrics.
"""

import json
import logging
import threading
from pathlib import Path

from prometheus_client import start_http_server

from ..config import METRICS_OPTION, parse_metrics_listen
from ..instruments import ENGINE_PASS, HEARTBEAT, REGISTRY
from ..jobs.scheduler import Engine
from ..privatefiles import write_private
from .sampler import Sampler, SnapshotCollector

logger = logging.getLogger(__name__)

STATUS_FILE = "metrics-status.json"
# A port another program holds may be freed: the agent tries again this often.
RETRY_SECONDS = 30.0


def endpoint_problem(state_dir: Path, text: str) -> str | None:
    """Why the agent serves no metrics on ``text`` (``metrics-listen``); None: nothing wrong.

    Only what the agent reported for that very value counts: the report of an agent that
    still runs an older value says nothing of this one. (A value that does not parse never
    reaches the agent: the config refuses it.)
    """
    try:
        status = json.loads((state_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(status, dict) or status.get("listen") != text.strip():
        return None
    error = status.get("error")
    return f"{METRICS_OPTION} {text.strip()}: {error}" if error else None


class AgentMetrics:
    """The agent's endpoint and sampler: started with the agent, never in its way."""

    def __init__(self, state_dir: Path, listen: str) -> None:
        """Serve on ``listen`` (``metrics-listen``; "" serves nothing) once started."""
        self.state_dir = state_dir
        self.listen = listen.strip()
        self.collector = SnapshotCollector()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._server = None
        self._error: str | None = None
        self.retry_seconds = RETRY_SECONDS

    def serve(self) -> str | None:
        """Try once to start the HTTP endpoint; return why it does not run (None: it runs).

        What happened is written to ``metrics-status.json``, for the charm's status.
        """
        error = None
        try:
            where = parse_metrics_listen(self.listen)
            if where is not None:
                self._server, _thread = start_http_server(where.port, where.host, REGISTRY)
                REGISTRY.register(self.collector)
                logger.info("serving metrics on http://%s/metrics", where)
        except ValueError as err:
            error = str(err)
        except OSError as err:
            error = f"cannot listen: {err.strerror or err}"
        if error is not None and error != self._error:
            logger.error(
                "%s %s: %s; running jobs without metrics (trying again every %.0fs)",
                METRICS_OPTION,
                self.listen,
                error,
                RETRY_SECONDS,
            )
        self._error = error
        write_private(
            self.state_dir / STATUS_FILE,
            json.dumps({"listen": self.listen, "error": error or ""}) + "\n",
        )
        return error

    @property
    def serving(self) -> bool:
        """Whether the endpoint listens."""
        return self._server is not None

    def start(self, engine: Engine) -> None:
        """In a thread of its own: serve (a port in use is tried again), then sample ``engine``.

        Never in the engine's way: the agent runs its jobs whether or not this ever listens.
        """
        if self._thread is None and self.listen:
            self._thread = threading.Thread(
                target=self._run, args=(engine,), name="metrics", daemon=True
            )
            self._thread.start()

    def _run(self, engine: Engine) -> None:
        while self.serve() is not None:
            if self._stop.wait(self.retry_seconds):
                return
        Sampler(engine, self.collector).run(self._stop)

    @staticmethod
    def passed(seconds: float) -> None:
        """Record one scheduling pass: its duration and the heartbeat."""
        ENGINE_PASS.observe(seconds)
        HEARTBEAT.set_to_current_time()

    def close(self) -> None:
        """Stop sampling and serving."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
            REGISTRY.unregister(self.collector)
