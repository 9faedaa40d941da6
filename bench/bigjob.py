"""A 10,000-task job: time to record it, job-status latency, the agent's resident memory."""

import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from container_compute import actions, host
from container_compute.backends.lxd import LXDBackend
from container_compute.config import HostConfig
from container_compute.jobs.params import JobParams, LaunchJobParams

ROOT = Path(__file__).resolve().parents[1]


def timed(action: Callable[[], object]) -> float:
    """Return the seconds ``action`` took."""
    begin = time.perf_counter()
    action()
    return time.perf_counter() - begin


def rss_kib(pid: int) -> tuple[int, int]:
    """Return (VmRSS, VmHWM) of a process in KiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(value.split()[0])
    return values.get("VmRSS", 0), values.get("VmHWM", 0)


def run_big_job(
    config: HostConfig, scratch: Path, image: str, tasks: int, agent_seconds: float
) -> None:
    """Record a big job, time job-status, run the agent a while and read its memory."""
    state = scratch / "state-bigjob"
    state.mkdir()
    host.save_config(config, state)
    params = LaunchJobParams(command="true", tasks=tasks, parallelism=8, image=image)
    result: dict[str, object] = {}
    recorded = timed(
        lambda: result.update(actions.run_action("launch-job", params, config, state))
    )
    job = str(result["job"])
    print(f"  recording a {tasks}-task job: {recorded * 1000:.0f} ms")

    def status() -> dict[str, object]:
        return actions.run_action("job-status", JobParams(job=job), config, state)

    latencies = [timed(status) for _ in range(20)]
    print(
        f"  job-status latency: median {statistics.median(latencies) * 1000:.1f} ms, "
        f"max {max(latencies) * 1000:.1f} ms (20 calls, job queued)"
    )
    agent = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "container_compute.agent",
            "--state-dir",
            str(state),
            "--poll",
            "0.5",
            "--log-level",
            "WARNING",
        ],
        env={"PYTHONPATH": f"{ROOT / 'src'}:{ROOT / 'lib'}", "PATH": "/usr/bin:/bin"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    samples = []
    try:
        end = time.time() + agent_seconds
        while time.time() < end and agent.poll() is None:
            time.sleep(2)
            samples.append(rss_kib(agent.pid))
        busy = [timed(status) for _ in range(10)]
        print(
            f"  job-status latency while the agent runs: median "
            f"{statistics.median(busy) * 1000:.1f} ms"
        )
        print(f"  agent after {agent_seconds:.0f}s: counts {status().get('counts')}")
        if samples:
            print(
                f"  agent resident memory: {samples[-1][0] / 1024:.1f} MiB "
                f"(peak {max(s[1] for s in samples) / 1024:.1f} MiB)"
            )
        actions.run_action("cancel-job", JobParams(job=job), config, state)
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            _, err = agent.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            agent.kill()
            _, err = agent.communicate()
        if agent.returncode not in (0, -signal.SIGTERM):
            print(f"  agent exited {agent.returncode}: {err[-2000:]}")
        backend = LXDBackend(config)
        for worker in backend.list_workers():
            backend.delete(worker.name)
