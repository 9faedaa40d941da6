"""The agent's metrics, scraped by Debian's real Prometheus while a job runs on the real LXD.

Prometheus runs as a process of the test on 127.0.0.1, with its own storage in tmp_path, and
scrapes the real agent process every second. A port another program holds leaves the agent
running jobs without metrics, and says so where the charm reads it.
"""

import dataclasses
import json
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from container_compute import actions, agent, host
from container_compute.config import HostConfig
from container_compute.jobs.params import JobParams
from container_compute.metrics.server import endpoint_problem

from .test_jobs_e2e import Agent, agents, launch, status, wait_for  # noqa: F401 (fixture)

pytestmark = [pytest.mark.functional, pytest.mark.usefixtures("fast_engine")]

PROMETHEUS = Path("/usr/bin/prometheus")
SECRET = "s3cret-value-never-scraped"
TASKS = 3


def free_port() -> int:
    """A port of 127.0.0.1 nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


class Prometheus:
    """Debian's Prometheus server, scraping one target every second."""

    def __init__(self, tmp_path: Path, target: str) -> None:
        if not PROMETHEUS.exists():
            pytest.fail("no /usr/bin/prometheus: run scripts/setup-functional-tests")
        self.port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            json.dumps(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "scrape_configs": [
                        {
                            "job_name": "container-compute",
                            "static_configs": [{"targets": [target]}],
                        }
                    ],
                }
            )
        )
        self.log = tmp_path / "prometheus.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    str(PROMETHEUS),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )

    def query(self, expression: str) -> list[dict]:
        """The instant vector of a PromQL query; [] while Prometheus is not ready."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": expression}
        )
        try:
            answer = json.loads(http_text(url))
        except OSError:
            return []
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def value(self, expression: str) -> float | None:
        """The single value of a query; None when it has none yet."""
        result = self.query(expression)
        return float(result[0]["value"][1]) if len(result) == 1 else None

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


@pytest.fixture
def prometheus_box() -> Iterator[list[Prometheus]]:
    box: list[Prometheus] = []
    yield box
    for server in box:
        server.stop()


@pytest.fixture
def jobs_to_cancel(
    agents: list[Agent],  # noqa: F811 (the fixture: stopped after this one's teardown)
) -> Iterator[list[tuple[HostConfig, Path, str]]]:
    """Jobs cancelled at the end when still running, so a failed test leaves no worker."""
    jobs: list[tuple[HostConfig, Path, str]] = []
    yield jobs
    for process in agents:
        process.stop()
    for config, state_dir, job in jobs:
        if status(config, state_dir, job)["state"] in ("queued", "running"):
            actions.run_action("cancel-job", JobParams(job=job), config, state_dir)


def start_agent(config: HostConfig, state_dir: Path, agents: list[Agent]) -> None:  # noqa: F811
    host.save_config(config, state_dir)
    agents.append(Agent(state_dir))
    wait_for(lambda: agent.agent_alive(state_dir), 30, "the agent's first heartbeat")


def test_prometheus_scrapes_a_running_jobs_tasks(
    configured_host: HostConfig,
    state_dir: Path,
    tmp_path: Path,
    agents: list[Agent],  # noqa: F811 (the fixture)
    prometheus_box: list[Prometheus],
    jobs_to_cancel: list[tuple[HostConfig, Path, str]],
) -> None:
    listen = f"127.0.0.1:{free_port()}"
    config = dataclasses.replace(configured_host, metrics_listen=listen)
    start_agent(config, state_dir, agents)
    prometheus = Prometheus(tmp_path, listen)
    prometheus_box.append(prometheus)

    job = launch(
        config,
        state_dir,
        command="sleep 12",
        tasks=TASKS,
        env=[f"API_TOKEN={SECRET}"],
        isolation="container",
    )["job"]
    jobs_to_cancel.append((config, state_dir, job))

    # Prometheus' query API returns the running tasks, as the agent counts them.
    wait_for(
        lambda: prometheus.value('container_compute_tasks{state="running"}') == TASKS,
        90,
        f"Prometheus to see {TASKS} running tasks (log: {prometheus.log})",
    )
    assert prometheus.value('up{job="container-compute"}') == 1
    running_workers = prometheus.value('container_compute_workers{kind="running"}')
    assert running_workers == TASKS
    assert prometheus.value("container_compute_tasks_submitted_total") == TASKS

    # A scrape holds no secret: neither the job's environment nor its command.
    scraped = http_text(f"http://{listen}/metrics")
    assert SECRET not in scraped and "API_TOKEN" not in scraped and "sleep 12" not in scraped
    assert 'container_compute_jobs{state="running"} 1.0' in scraped

    wait_for(lambda: status(config, state_dir, job)["state"] == "succeeded", 120, "the job's end")
    wait_for(
        lambda: prometheus.value('container_compute_tasks_finished_total{outcome="succeeded"}')
        == TASKS,
        30,
        "Prometheus to count the finished tasks",
    )
    assert prometheus.value('container_compute_tasks{state="running"}') == 0
    assert prometheus.value('container_compute_tasks_finished_total{outcome="failed"}') == 0
    assert prometheus.value("container_compute_task_duration_seconds_count") == TASKS
    assert prometheus.value("container_compute_task_queue_wait_seconds_count") == TASKS
    # Each worker's cgroup gave its task's usage (a fresh worker per task).
    assert prometheus.value("container_compute_task_memory_peak_bytes_count") == TASKS
    assert len(prometheus.query("container_compute_task_cpu_seconds_total")) == 2
    assert prometheus.value("container_compute_oom_kills_total") == 0
    assert (prometheus.value("container_compute_worker_start_seconds_count") or 0) >= TASKS
    assert (prometheus.value("container_compute_engine_pass_seconds_count") or 0) > 10
    heartbeat = prometheus.value("container_compute_agent_heartbeat_timestamp_seconds")
    assert heartbeat is not None and time.time() - heartbeat < 30
    pool = config.storage_pool
    size = prometheus.value(f'container_compute_storage_pool_size_bytes{{pool="{pool}"}}')
    used = prometheus.value(f'container_compute_storage_pool_used_bytes{{pool="{pool}"}}')
    assert size is not None and used is not None and 0 < used <= size
    assert endpoint_problem(state_dir, listen) is None


def test_a_port_in_use_leaves_the_agent_running_jobs_without_metrics(
    configured_host: HostConfig,
    state_dir: Path,
    agents: list[Agent],  # noqa: F811 (the fixture)
    jobs_to_cancel: list[tuple[HostConfig, Path, str]],
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        listen = f"127.0.0.1:{holder.getsockname()[1]}"
        config = dataclasses.replace(configured_host, metrics_listen=listen)
        start_agent(config, state_dir, agents)

        wait_for(lambda: endpoint_problem(state_dir, listen) is not None, 30, "the agent's report")
        problem = endpoint_problem(state_dir, listen)
        assert problem is not None and problem.startswith(f"metrics-listen {listen}: ")
        assert "in use" in problem
        # What another value of the option would say is not this value's problem.
        assert endpoint_problem(state_dir, "127.0.0.1:1") is None

        job = launch(config, state_dir, command="echo ran", tasks=2)["job"]
        jobs_to_cancel.append((config, state_dir, job))
        wait_for(
            lambda: status(config, state_dir, job)["state"] == "succeeded", 120, "the job's end"
        )
    log = agents[0].log.read_text()
    assert f"metrics-listen {listen}: cannot listen" in log
    assert "running jobs without metrics" in log
