"""The same 32-task job on one LXD host and on a 3-member LXD cluster (prints, never asserts).

A real 3-member cluster is built on this machine (``tests/cluster/lab.py``: nested members
on a private bridge, the members' image cached by content) and driven over HTTPS like a
laptop would. The job runs three ways, each from a fresh state directory:

1. on one member only (``placement=member1``): one host's worth of LXD;
2. spread by LXD's scheduler over the three members;
3. round-robin over the three members.

On a single machine the members share its CPUs, so the cluster cannot be faster by the
machine's cores: the ratio printed shows that nothing serialises on one member (the API
endpoint, member1, only forwards the other members' work). Everything is removed at the end.
Usage: ``python bench/cluster.py [--tasks 32] [--parallelism 16]``.
"""

import argparse
import collections
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "lib"), str(ROOT)]

from container_compute import actions, host
from container_compute.config import HostConfig
from container_compute.host.images import build_busybox_image
from container_compute.jobs import runner
from container_compute.jobs.params import LaunchJobParams
from container_compute.lxdclient import connect, endpoint_of
from tests.cluster.lab import ClusterLab

TASK_COMMAND = 'echo $((TASK_INDEX * TASK_INDEX)) > "$RESULTS_DIR/square"; echo done'


def configure(lab: ClusterLab, prefix: str, parallel: int) -> HostConfig:
    """Configure the cluster as a jobs host over HTTPS; import the busybox image."""
    endpoint = lab.endpoint()
    config = HostConfig(
        lxd_endpoint=endpoint.url,
        lxd_client_cert=endpoint.client_cert,
        lxd_client_key=endpoint.client_key,
        lxd_server_cert=endpoint.server_cert,
        lxd_project=f"{prefix}-jobs",
        storage_pool=f"{prefix}-jobs",
        storage_driver="dir",
        worker_cpu="",
        worker_memory="128MiB",
        worker_disk="",
        default_image="busybox",
        sysctl_tuning=False,
        max_parallel_workers=parallel,
    )
    report = host.configure_host(config)
    if not report.ok:
        raise SystemExit(f"configure-host failed: {report.problems}")
    build_busybox_image(
        connect(project=config.lxd_project, endpoint=endpoint_of(config)), "busybox"
    )
    return config


def run_job(config: HostConfig, tasks: int, parallelism: int, placement: str) -> dict[str, Any]:
    """Run the job to its end in-process; return seconds, state and tasks per member."""
    state_dir = Path(tempfile.mkdtemp(prefix="cc-bench-cluster-"))
    try:
        host.save_config(config, state_dir)
        params = LaunchJobParams(
            command=TASK_COMMAND,
            tasks=tasks,
            parallelism=parallelism,
            placement=placement,
            wait=True,
        )
        begin = time.perf_counter()
        result = actions.run_action("launch-job", params, config, state_dir)
        seconds = time.perf_counter() - begin
        joblog = (state_dir / "results" / result["job"] / "joblog.tsv").read_text()
        hosts = collections.Counter(line.split("\t")[1] for line in joblog.splitlines()[1:])
        return {"seconds": seconds, "state": result["state"], "hosts": dict(sorted(hosts.items()))}
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


def main() -> None:
    """Build the cluster, run the job three ways, print the figures, remove everything."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--parallelism", type=int, default=16)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the bench builds LXD containers, a bridge and rules")
    runner.engine_options = {"backoff_base": 0.5, "backoff_cap": 2.0}
    prefix = f"ccb{secrets.token_hex(3)}"
    workdir = Path(tempfile.mkdtemp(prefix=f"{prefix}-lab-"))
    lab = ClusterLab(prefix, workdir)
    try:
        lab.up()
        print(f"cluster up: {lab.timings}")
        config = configure(lab, prefix, args.parallelism)
        runs = {
            "1 host (placement=member1)": run_job(config, args.tasks, args.parallelism, "member1"),
            "3 members (LXD scheduler)": run_job(config, args.tasks, args.parallelism, ""),
            "3 members (round-robin)": run_job(
                config, args.tasks, args.parallelism, "round-robin"
            ),
        }
    finally:
        lab.down()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n{args.tasks} tasks, parallelism {args.parallelism}, {os.cpu_count()} CPUs shared")
    for label, run in runs.items():
        print(f"  {label:30s} {run['seconds']:7.1f}s  {run['state']:9s}  {run['hosts']}")
    one = runs["1 host (placement=member1)"]["seconds"]
    for label in ("3 members (LXD scheduler)", "3 members (round-robin)"):
        print(f"  ratio 1 host / {label}: {one / runs[label]['seconds']:.2f}")
    print(
        "  (all members share this machine's CPUs: a ratio near 1 means the cluster adds no "
        "serialisation; on separate hosts the work would spread over their CPUs)"
    )


if __name__ == "__main__":
    main()
