"""The Nova backend's speed against a hand-run loop (prints figures, never asserts).

Starts a private OpenStack (tests/openstack/stack: real Keystone, Glance, Placement, Nova
with libvirt LXC), then runs:

1. a 32-task job (the squares) through ``launch-job backend=nova`` with parallelism P;
2. the same 32 tasks by hand: P threads each ``nova boot`` a server with a user-data script
   printing the square between markers, poll ``console-log`` until it is there, delete the
   server and wait until it is gone; same image, same flavor;

and prints both times, their ratio and per-server boot/console/delete timings of the loop.
Usage: ``CC_OPENSTACK_VENV=<venv from scripts/openstack-services-venv> python bench/nova.py
[--tasks 32] [--parallelism 8]``.
"""

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "lib"), str(ROOT)]

from novaclient import client as nova_client
from novaclient import exceptions as nova_exceptions

from container_compute import actions, host, identity
from container_compute.actions.images import BuildWorkerImageParams
from container_compute.config import HostConfig
from container_compute.jobs.params import LaunchJobParams
from tests.openstack.conftest import keystone_charm_credentials
from tests.openstack.stack import Layout, OpenStackStack

FLAVOR = "bench.tiny"
IMAGE = "bench-worker"
SQUARE = "echo $((TASK_INDEX * TASK_INDEX)) > /results/square"


def hand_task(nova: object, image: str, flavor: object, index: int) -> dict[str, float]:
    """Boot one server whose user-data prints a square, read it back, delete it."""
    marker = secrets.token_hex(4)
    script = f"#!/bin/sh\necho BEGIN-{marker}\necho $(({index} * {index}))\necho END-{marker}\n"
    begin = time.monotonic()
    server = nova.servers.create(f"hand-{index}", image, flavor, nics="none", userdata=script)  # type: ignore[attr-defined]
    while nova.servers.get(server.id).status != "ACTIVE":  # type: ignore[attr-defined]
        time.sleep(0.3)
    active = time.monotonic()
    while f"END-{marker}" not in (nova.servers.get_console_output(server.id) or ""):  # type: ignore[attr-defined]
        time.sleep(0.3)
    output = time.monotonic()
    nova.servers.delete(server.id)  # type: ignore[attr-defined]
    while True:
        try:
            nova.servers.get(server.id)  # type: ignore[attr-defined]
        except nova_exceptions.NotFound:
            break
        time.sleep(0.3)
    gone = time.monotonic()
    return {"boot": active - begin, "console": output - active, "delete": gone - output}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--parallelism", type=int, default=8)
    args = parser.parse_args()
    venv = Path(os.environ.get("CC_OPENSTACK_VENV", ROOT / ".tox" / "openstack-services"))
    stack = OpenStackStack(Layout.fresh(venv))
    started = time.monotonic()
    stack.start()
    print(f"stack up in {time.monotonic() - started:.1f}s {stack.timings}")
    try:
        password = secrets.token_urlsafe(16)
        data = keystone_charm_credentials(stack, "bench", password)
        credentials = identity.from_relation_data(data)
        assert credentials is not None
        state_dir = Path(tempfile.mkdtemp(prefix="cc-bench-nova-"))
        identity.save_clouds_yaml(credentials, state_dir / identity.CLOUDS_FILE_NAME)
        admin = stack.nova_admin()
        admin.flavors.create(FLAVOR, ram=64, vcpus=1, disk=1, flavorid="bench", is_public=True)
        admin.quotas.update(credentials.project_id, instances=200, cores=400, ram=512000)
        config = HostConfig(
            default_backend="nova",
            nova_flavor=FLAVOR,
            nova_image=IMAGE,
            max_parallel_workers=args.parallelism,
            sysctl_tuning=False,
        )
        host.save_config(config, state_dir)
        params = BuildWorkerImageParams(
            target="nova", alias=IMAGE, metadata_url=stack.metadata_url
        )
        actions.run_action("build-worker-image", params, config, state_dir)

        begin = time.monotonic()
        result = actions.run_action(
            "launch-job",
            LaunchJobParams(
                command=SQUARE,
                tasks=args.tasks,
                parallelism=args.parallelism,
                wait=True,
                wait_timeout="30m",
            ),
            config,
            state_dir,
        )
        ours = time.monotonic() - begin
        print(f"container-compute: {args.tasks} tasks, {result['state']}, {ours:.1f}s")

        local = threading.local()

        def nova() -> object:  # one client per thread, as a careful script would
            if not hasattr(local, "client"):
                local.client = nova_client.Client(
                    "2.87", session=identity.keystone_session(credentials), connect_retries=3
                )
            return local.client

        image = nova().glance.find_image(IMAGE)  # type: ignore[attr-defined]
        flavor = nova().flavors.find(name=FLAVOR)  # type: ignore[attr-defined]
        begin = time.monotonic()
        with ThreadPoolExecutor(args.parallelism) as pool:
            timings = list(
                pool.map(lambda i: hand_task(nova(), image, flavor, i), range(args.tasks))
            )
        hand = time.monotonic() - begin
        print(f"hand-run nova boot/console-log/delete loop: {hand:.1f}s")
        for phase in ("boot", "console", "delete"):
            values = [t[phase] for t in timings]
            print(f"  {phase:8s} median {statistics.median(values):.1f}s max {max(values):.1f}s")
        print(f"ratio container-compute / hand loop: {ours / hand:.2f}")
    finally:
        stack.stop()
        stack.remove()


if __name__ == "__main__":
    main()
