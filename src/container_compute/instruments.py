"""The agent's metrics that code updates as things happen (a registry of its own).

Other modules count here: the LXD and Nova API wrappers their errors, the LXD backend how
long a worker took to start, the agent its passes. The agent's sampler
(``metrics/sampler.py``) adds what it reads from the ledger. Nothing here reads the engine: a
scrape only reads these values.
"""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.process_collector import ProcessCollector

from . import __version__

PREFIX = "container_compute"
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)

# Seconds, from a trivial task (tens of ms) to a day-long one.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400)
START_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120)
PASS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
MEMORY_BUCKETS = tuple(float(2**power) for power in range(20, 38, 2))  # 1 MiB .. 64 GiB

AGENT_INFO = Gauge(
    f"{PREFIX}_agent_info",
    "The job agent that serves these metrics",
    ["version"],
    registry=REGISTRY,
)
AGENT_INFO.labels(version=__version__).set(1)
HEARTBEAT = Gauge(
    f"{PREFIX}_agent_heartbeat_timestamp_seconds",
    "Unix time of the agent's last scheduling pass",
    registry=REGISTRY,
)
ENGINE_PASS = Histogram(
    f"{PREFIX}_engine_pass_seconds",
    "Duration of one scheduling pass of the agent",
    buckets=PASS_BUCKETS,
    registry=REGISTRY,
)
API_ERRORS = Counter(
    f"{PREFIX}_api_errors",
    "Errors answered by the LXD API (each try) and by Nova or Keystone",
    ["api"],
    registry=REGISTRY,
)
for _api in ("lxd", "nova"):
    API_ERRORS.labels(api=_api)
WORKER_START = Histogram(
    f"{PREFIX}_worker_start_seconds",
    "Creating and booting an LXD worker, until it can take a command",
    buckets=START_BUCKETS,
    registry=REGISTRY,
)
TASKS_SUBMITTED = Counter(
    f"{PREFIX}_tasks_submitted",
    "Tasks of the jobs submitted since the agent started",
    registry=REGISTRY,
)
TASKS_FINISHED = Counter(
    f"{PREFIX}_tasks_finished",
    "Tasks that reached their final state, by outcome",
    ["outcome"],
    registry=REGISTRY,
)
RETRIES = Counter(
    f"{PREFIX}_task_retries", "Attempts started after a task's first", registry=REGISTRY
)
OOM_KILLS = Counter(
    f"{PREFIX}_oom_kills", "OOM kills in tasks, from the per-task usage", registry=REGISTRY
)
CPU_SECONDS = Counter(
    f"{PREFIX}_task_cpu_seconds",
    "CPU time of ended attempts, where their usage is known",
    ["mode"],
    registry=REGISTRY,
)
TASK_DURATION = Histogram(
    f"{PREFIX}_task_duration_seconds",
    "Wall time of every ended attempt",
    buckets=DURATION_BUCKETS,
    registry=REGISTRY,
)
QUEUE_WAIT = Histogram(
    f"{PREFIX}_task_queue_wait_seconds",
    "From a job's submission to the start of each task's first attempt",
    buckets=DURATION_BUCKETS,
    registry=REGISTRY,
)
MEMORY_PEAK = Histogram(
    f"{PREFIX}_task_memory_peak_bytes",
    "Peak memory of ended attempts, where it is known",
    buckets=MEMORY_BUCKETS,
    registry=REGISTRY,
)


def count_api_error(api: str) -> None:
    """Count one error answered by ``api`` ("lxd" or "nova")."""
    API_ERRORS.labels(api=api).inc()
