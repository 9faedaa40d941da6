"""Drive the UNPACKED charm's handlers with ops.testing, inside the charm's own venv.

Run by test_packed_charm.py as ``<unpacked>/venv/bin/python drive_charm.py ARGS`` with
PYTHONPATH=<unpacked>/lib:<unpacked>/src, exactly as the charm's dispatch runs. Only
``ops.testing``'s own package comes from the test environment, appended AFTER the charm's venv,
so every module the charm imports is the artifact's. The host's /etc and /var/lib are left
alone: the state dir and the host file paths point into temporary directories. Prints one JSON
object with what the handlers did.
"""

import json
import sys
from pathlib import Path


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
    print(
        json.dumps(
            {
                "locations": locations,
                "status": status,
                "image": image,
                "job": job,
                "unit": unit,
                "executable": sys.executable,
            },
            default=str,
        )
    )


if __name__ == "__main__":
    main()
