"""Drive the UNPACKED charm's handlers with ops.testing, inside the charm's own venv.

Run by test_packed_charm.py as ``<unpacked>/venv/bin/python drive_charm.py ARGS`` with
PYTHONPATH=<unpacked>/lib:<unpacked>/src, exactly as the charm's dispatch runs. Only
``ops.testing``'s own package comes from the test environment, appended AFTER the charm's venv,
so every module the charm imports is the artifact's. The host's /etc and /var/lib are left
alone: the state dir and the host file paths point into temporary directories (the agent's
log file is the real one under /var/log, as its unit file says). Prints one JSON
object with what the handlers did.
"""

import dataclasses
import json
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any


def main() -> None:
    """Run install, config-changed and two actions; print the outcome as JSON."""
    state_dir, paths_dir, project, scenario_dir = sys.argv[2:6]
    sys.path.append(scenario_dir)  # ops.testing's scenario package, after the charm's venv

    import ops
    from ops import testing

    import charm
    import container_compute
    from container_compute import host
    from container_compute.config import HostConfig
    from container_compute.host import HostPaths, HostReport

    locations = {
        "charm": charm.__file__,
        "container_compute": container_compute.__file__,
        "ops": ops.__file__,
    }
    real_configure = host.configure_host
    paths = host.HostPaths(
        sysctl_dir=Path(paths_dir) / "sysctl.d",
        modules_load_dir=Path(paths_dir) / "modules-load.d",
        subuid=Path(paths_dir) / "subuid",
        subgid=Path(paths_dir) / "subgid",
    )

    def configure(
        config: HostConfig, *, paths: HostPaths = paths, dry_run: bool = False
    ) -> HostReport:
        """Configure the host with its /etc files in the temporary directory."""
        return real_configure(config, paths=paths, dry_run=dry_run)

    host.configure_host = configure
    charm.STATE_DIR = Path(state_dir)
    config = {
        "lxd-project": project,
        "storage-pool": project,
        "storage-driver": "dir",
        "worker-cpu": "",
        "worker-memory": "256MiB",
        "sysctl-tuning": False,
        "default-image": "busybox",
        "metrics-listen": f"127.0.0.1:{free_port()}",
    }
    context = testing.Context(charm.ContainerComputeCharm)
    state = context.run(context.on.install(), testing.State(config=config))
    state = context.run(context.on.config_changed(), state)
    status = {"name": state.unit_status.name, "message": state.unit_status.message}
    context.run(context.on.action("build-worker-image", params={"alias": "busybox"}), state)
    image = dict(context.action_results or {})
    command = "echo $((TASK_INDEX * TASK_INDEX)) > /results/square"
    params = {"command": command, "tasks": 2, "wait": True}
    context.run(context.on.action("launch-job", params=params), state)
    job = dict(context.action_results or {})
    from container_compute import agent

    unit = agent.render_service(Path(state_dir))
    reload = config_reaches_the_agent(context, state, config, unit, Path(state_dir))
    cos_agent = what_cos_agent_publishes(config, Path(state_dir))
    print(
        json.dumps(
            {
                "locations": locations,
                "status": status,
                "image": image,
                "job": job,
                "unit": unit,
                "reload": reload,
                "cos_agent": cos_agent,
                "metrics_listen": config["metrics-listen"],
                "executable": sys.executable,
            },
            default=str,
        )
    )


def what_cos_agent_publishes(config: dict[str, Any], state_dir: Path) -> dict[str, Any]:
    """The databag cos-agent's joined hook writes, with the artifact's rules and dashboards.

    Scenario writes the charm's metadata into its charm root: the root is a copy of the
    artifact's rule and dashboard directories, not the unpacked tree itself.
    """
    from ops import testing

    import charm

    root = state_dir / "cos-charm-root"
    for directory in ("prometheus_alert_rules", "grafana_dashboards"):
        shutil.copytree(Path(charm.__file__).parent / directory, root / "src" / directory)
    context = testing.Context(charm.ContainerComputeCharm, charm_root=root)
    cos = testing.Relation("cos-agent", remote_app_name="grafana-agent")
    published = context.run(
        context.on.relation_joined(cos), testing.State(config=config, relations=[cos])
    )
    return json.loads(published.get_relation(cos.id).local_unit_data["config"])


def free_port() -> int:
    """A port of 127.0.0.1 nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def scrape(listen: str, timeout: float = 30.0) -> str:
    """The agent's metrics, once its endpoint answers with the jobs gauge ("" if never)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            url = f"http://{listen}/metrics"
            with urllib.request.urlopen(url, timeout=5) as answer:
                text = answer.read().decode()
            if "container_compute_jobs{" in text:
                return text
        except OSError:
            pass
        time.sleep(0.5)
    return ""


def config_reaches_the_agent(
    context: Any, state: Any, config: dict[str, Any], unit: str, state_dir: Path
) -> dict[str, Any]:
    """Start the agent as its unit file says; change a config option; what the agent runs then.

    juju config runs config-changed; the hook returns once the running agent (the same process,
    executed again) runs the new config.
    """
    from ops import testing

    from container_compute import agent

    lines = unit.splitlines()
    exec_start = next(line.split("=", 1)[1] for line in lines if line.startswith("ExecStart="))
    environment = [line.split("=", 1)[1] for line in lines if line.startswith("Environment=")]
    log = state_dir / "agent-reload.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["/usr/bin/env", "-i", *environment, *shlex.split(exec_start)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 30
        while not agent.agent_alive(state_dir) and time.monotonic() < deadline:
            time.sleep(0.2)
        before = agent.running_version(state_dir)
        metrics_before = scrape(config["metrics-listen"])
        started = time.monotonic()
        changed = testing.State(
            config={**config, "max-parallel-workers": 7},
            relations=state.relations,
        )
        context.run(context.on.config_changed(), changed)
        hook_seconds = time.monotonic() - started
        after = agent.running_version(state_dir)
        return {
            "before": dataclasses.asdict(before) if before else None,
            "after": dataclasses.asdict(after) if after else None,
            "on_disk": dataclasses.asdict(agent.AgentVersion.on_disk(state_dir)),
            "saved_limit": agent.load_config(state_dir).max_parallel_workers,
            "alive_after": process.poll() is None and agent.agent_alive(state_dir),
            "hook_seconds": round(hook_seconds, 1),
            "metrics_before": metrics_before,
            "metrics_after": scrape(config["metrics-listen"]),
        }
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)


if __name__ == "__main__":
    main()
