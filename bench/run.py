"""Speed and memory of container-compute against LXD's own yardsticks (prints, never asserts).

1. 32 trivial tasks (launch, gather every result, delete the workers) through the LXD backend,
   against ``lxd-benchmark launch`` + ``lxd-benchmark delete`` of as many containers of the same
   image on the same pool (best parallelism of 2/4/8 for each): target ratio <= 1.0.
2. The same tasks as a sequential ``lxc launch / exec / file pull / delete`` loop: target >= 3x.
3. A 10,000-task job: time to record it, job-status latency, the agent's resident memory.

Everything lives in a run-prefixed LXD project and pool (``ccb<hex>``), deleted at the end.
Usage: ``python bench/run.py [--driver dir|btrfs] [--image busybox|debootstrap]``.
"""

import argparse
import dataclasses
import os
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "lib"), str(ROOT)]

from container_compute import (
    actions,
    host,
)
from container_compute.backends.lxd import LXDBackend
from container_compute.config import HostConfig
from container_compute.constants import WORKER_PROFILE
from container_compute.host import HostPaths, configure_host
from container_compute.host.images import build_busybox_image, build_debootstrap_image
from container_compute.jobs.params import JobParams, LaunchJobParams
from container_compute.lxdclient import connect
from tests.functional.lxd_cleanup import purge_run

LXC = "/usr/bin/lxc"
LXD_BENCHMARK = "/usr/bin/lxd-benchmark"
IMAGE_ALIAS = "worker"
TASK_COMMAND = 'echo $((TASK_INDEX * TASK_INDEX)) > "$RESULTS_DIR/square"; echo done'


def timed(action: Callable[[], object]) -> float:
    """Return the seconds ``action`` took."""
    begin = time.perf_counter()
    action()
    return time.perf_counter() - begin


def cpu_seconds() -> dict[str, float]:
    """CPU seconds used so far by this process (with children) and by the LXD daemon."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    figures = {"bench": usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime}
    ticks = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                if os.readlink(entry / "exe") == "/usr/bin/lxd" and argv[1:2] == [b"--group"]:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                    figures["lxd"] = sum(int(f) for f in fields[11:15]) / ticks
            except (OSError, IndexError):
                continue
    return figures


def cpu_used(action: Callable[[], object]) -> tuple[float, str]:
    """Run ``action``; return its seconds and the CPU seconds it and LXD used."""
    before = cpu_seconds()
    seconds = timed(action)
    after = cpu_seconds()
    used = ", ".join(f"{k} {after[k] - before.get(k, 0):.1f}s" for k in sorted(after))
    return seconds, f"CPU: {used}"


def host_paths(directory: Path) -> HostPaths:
    """HostPaths with copies of /etc/subuid and /etc/subgid (the real /etc is not written)."""
    for name in ("subuid", "subgid"):
        (directory / name).write_text(Path("/etc", name).read_text())
    return HostPaths(
        sysctl_dir=directory / "sysctl.d",
        modules_load_dir=directory / "modules-load.d",
        subuid=directory / "subuid",
        subgid=directory / "subgid",
    )


def set_up(prefix: str, driver: str, image: str, scratch: Path) -> HostConfig:
    """Configure a run-prefixed project and pool, build the image, mirror the worker profile."""
    config = HostConfig(
        lxd_project=prefix,
        storage_pool=prefix,
        storage_driver=driver,
        storage_size="8GiB",
        worker_cpu="",
        worker_memory="256MiB",
        default_image=IMAGE_ALIAS,
        sysctl_tuning=False,
        max_parallel_workers=8,
    )
    report = configure_host(config, paths=host_paths(scratch))
    if not report.ok:
        raise SystemExit(f"configure_host failed: {report.problems}")
    client = connect(project=prefix)
    begin = time.perf_counter()
    if image == "busybox":
        built = build_busybox_image(client, IMAGE_ALIAS)
    else:
        built = build_debootstrap_image(client, IMAGE_ALIAS)
    print(
        f"image {image}: {built.size_bytes / 2**20:.1f} MiB packed, "
        f"built in {time.perf_counter() - begin:.1f}s"
    )
    # lxd-benchmark uses the project's default profile: give it the worker profile's settings.
    worker = client.profiles.get(WORKER_PROFILE)
    default = client.profiles.get("default")
    default.config = dict(worker.config)
    default.devices = dict(worker.devices)
    default.save()
    return config


def run_ours(config: HostConfig, tasks: int, parallel: int, scratch: Path) -> dict[str, float]:
    """Run ``tasks`` trivial tasks as one job, as a user would: ``launch-job`` with wait=true.

    The engine runs in this process (no agent), launching, gathering every result into the
    results tree and deleting every worker; the time ends when the last worker is deleted.
    """
    state = scratch / f"state-p{parallel}"
    state.mkdir()
    config = dataclasses.replace(config, max_parallel_workers=max(parallel, 1))
    params = LaunchJobParams(
        command=TASK_COMMAND, tasks=tasks, parallelism=parallel, image=IMAGE_ALIAS, wait=True
    )
    result: dict[str, Any] = {}
    total, cpu = cpu_used(
        lambda: result.update(actions.run_action("launch-job", params, config, state))
    )
    if result.get("state") != "succeeded":
        raise RuntimeError(f"the job did not succeed: {result}")
    job_dir = state / "results" / result["job"]
    for index in range(tasks):
        if (job_dir / str(index) / "files" / "square").read_text() != f"{index * index}\n":
            raise RuntimeError(f"task {index}: wrong result")
    if LXDBackend(config).list_workers():
        raise RuntimeError("workers left behind")
    print(f"    ({cpu})")
    return {"total": total}


def run_lxd_benchmark(project: str, tasks: int, parallel: int) -> float:
    """Launch then delete ``tasks`` containers with lxd-benchmark; return the seconds."""

    def both() -> None:
        for args in (
            ["launch", "--count", str(tasks), IMAGE_ALIAS],
            ["delete"],
        ):
            subprocess.run(
                [
                    LXD_BENCHMARK,
                    args[0],
                    "--parallel",
                    str(parallel),
                    "--project",
                    project,
                    *args[1:],
                ],
                check=True,
                capture_output=True,
                text=True,
            )

    seconds, cpu = cpu_used(both)
    print(f"    ({cpu})")
    return seconds


def lxc(*args: str) -> None:
    """Run an lxc command; on failure raise with its stderr."""
    done = subprocess.run([LXC, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"lxc {' '.join(args)}: {done.stderr.strip()}")


def run_lxc_loop(project: str, tasks: int, scratch: Path) -> float:
    """The naive way: one task after the other with lxc launch / exec / file pull / delete."""

    def loop() -> None:
        for index in range(tasks):
            name = f"loop-{index}"
            target = scratch / name
            target.mkdir()
            lxc("--project", project, "launch", IMAGE_ALIAS, name, "-p", WORKER_PROFILE)
            lxc(
                "--project",
                project,
                "exec",
                name,
                "--env",
                f"TASK_INDEX={index}",
                "--env",
                "RESULTS_DIR=/results",
                "--",
                "/bin/sh",
                "-c",
                TASK_COMMAND,
            )
            lxc("--project", project, "file", "pull", "-r", f"{name}/results", str(target))
            lxc("--project", project, "delete", "-f", name)

    return timed(loop)


def rss_kib(pid: int) -> tuple[int, int]:
    """Return (VmRSS, VmHWM) of a process in KiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(value.split()[0])
    return values.get("VmRSS", 0), values.get("VmHWM", 0)


def run_big_job(config: HostConfig, scratch: Path, tasks: int, agent_seconds: float) -> None:
    """Record a big job, time job-status, run the agent a while and read its memory."""
    state = scratch / "state"
    state.mkdir()
    host.save_config(config, state)
    params = LaunchJobParams(command="true", tasks=tasks, parallelism=8)
    result: dict[str, object] = {}
    recorded = timed(
        lambda: result.update(actions.run_action("launch-job", params, config, state))
    )
    job = str(result["job"])
    print(f"(3) recording a {tasks}-task job: {recorded * 1000:.0f} ms")
    latencies = []
    for _ in range(20):
        latencies.append(
            timed(lambda: actions.run_action("job-status", JobParams(job=job), config, state))
        )
    print(
        f"    job-status latency: median {statistics.median(latencies) * 1000:.1f} ms, "
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
        busy = []
        for _ in range(10):
            busy.append(
                timed(lambda: actions.run_action("job-status", JobParams(job=job), config, state))
            )
        status = actions.run_action("job-status", JobParams(job=job), config, state)
        print(
            f"    job-status latency while the agent runs: median "
            f"{statistics.median(busy) * 1000:.1f} ms"
        )
        print(f"    agent after {agent_seconds:.0f}s: counts {status.get('counts')}")
        if samples:
            print(
                f"    agent resident memory: {samples[-1][0] / 1024:.1f} MiB "
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
            print(f"    agent exited {agent.returncode}: {err[-2000:]}")
        backend = LXDBackend(config)
        for worker in backend.list_workers():
            backend.delete(worker.name)


def purge_with_retries(prefix: str) -> None:
    """Delete the run's project and pool; retry while the daemon restarts (bounded)."""
    for attempt in range(12):
        try:
            removed = purge_run(prefix)
        except Exception as err:  # the shared daemon may be restarting
            print(f"cleanup attempt {attempt + 1} failed: {err}")
            time.sleep(10)
            continue
        print(f"cleaned up: {', '.join(removed) or 'nothing'}")
        return
    print(f"CLEANUP FAILED: delete project and pool {prefix} by hand")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--driver", choices=("dir", "btrfs"), default="dir")
    parser.add_argument("--image", choices=("busybox", "debootstrap"), default="busybox")
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--parallel", default="2,4,8", help="parallelisms to try, best is kept")
    parser.add_argument("--big-job-tasks", type=int, default=10_000)
    parser.add_argument("--agent-seconds", type=float, default=30.0)
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: 1,2,3")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmarks and print figures and ratios."""
    args = parse_args(argv)
    skip = set(args.skip.split(",")) - {""}
    parallels = [int(p) for p in args.parallel.split(",")]
    prefix = f"ccb{secrets.token_hex(3)}"
    scratch = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    print(f"bench {prefix}: driver {args.driver}, image {args.image}, {args.tasks} tasks")
    try:
        config = set_up(prefix, args.driver, args.image, scratch)
        ours_best = None
        if "1" not in skip or "2" not in skip:
            for parallel in parallels:
                figures = run_ours(config, args.tasks, parallel, scratch)
                print(f"(1) container-compute launch-job P={parallel}: {figures['total']:.2f}s")
                ours_best = min(ours_best or figures["total"], figures["total"])
        if "1" not in skip and ours_best is not None:
            bench_best = None
            for parallel in parallels:
                seconds = run_lxd_benchmark(prefix, args.tasks, parallel)
                print(f"    lxd-benchmark launch+delete P={parallel}: {seconds:.2f}s")
                bench_best = min(bench_best or seconds, seconds)
            assert bench_best is not None
            print(
                f"(1) best: container-compute {ours_best:.2f}s vs lxd-benchmark "
                f"{bench_best:.2f}s -> ratio {ours_best / bench_best:.2f} (target <= 1.0)"
            )
        if "2" not in skip and ours_best is not None:
            loop = run_lxc_loop(prefix, args.tasks, scratch)
            print(
                f"(2) sequential lxc loop: {loop:.2f}s -> container-compute is "
                f"{loop / ours_best:.1f}x faster (target >= 3x)"
            )
        if "3" not in skip:
            run_big_job(config, scratch, args.big_job_tasks, args.agent_seconds)
    finally:
        purge_with_retries(prefix)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
