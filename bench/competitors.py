"""What users would pick instead: podman, docker, ``lxd-benchmark`` and a plain lxc loop.

Podman and docker come from Debian (installed by the bench when absent), run without
systemd and without network, keep their storage in run-prefixed directories under /var/lib
(removed afterwards) and import the same rootfs tarball LXD got. Each task is one
``run --rm --network none`` with a bind-mounted results directory, driven by a thread pool.
They run rootful without user namespaces, so compare them with privileged LXD on uids.

This machine's root lacks CAP_SYS_RESOURCE, so the runtimes' default rlimits (raised above
the hard limits) are refused: every container gets nofile=1024 and nproc=4096 explicitly.
crun refuses the hybrid cgroup layout, so runc is used (as in the issue's table).
"""

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .common import TASK_COMMAND, BenchError, check_square

APT_GET = "/usr/bin/apt-get"
PODMAN = "/usr/bin/podman"
DOCKER = "/usr/bin/docker"
DOCKERD = "/usr/sbin/dockerd"
RUNC = "/usr/sbin/runc"
LXC = "/usr/bin/lxc"
LXD_BENCHMARK = "/usr/bin/lxd-benchmark"
ULIMITS = ("nofile=1024:1024", "nproc=4096:4096")
DAEMON_WAIT_SECONDS = 60.0


# what each competitor needs: (Debian package, binary) pairs
NEEDS = {
    "podman": (("podman", PODMAN), ("runc", RUNC)),
    "docker": (("docker.io", DOCKER), ("docker.io", DOCKERD), ("runc", RUNC)),
}


def missing_binaries(kind: str) -> list[str]:
    """The binaries ``kind`` (podman or docker) needs that are absent."""
    return [binary for _package, binary in NEEDS[kind] if not Path(binary).exists()]


def ensure_installed(kinds: Iterable[str] = ("podman", "docker")) -> list[str]:
    """Install Debian's packages of ``kinds`` when absent; return what was installed.

    Raises:
        BenchError: when apt-get fails.
    """
    missing = list(
        dict.fromkeys(
            package
            for kind in kinds
            for package, binary in NEEDS[kind]
            if not Path(binary).exists()
        )
    )
    if not missing:
        return []
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive"}
    for args in (["update", "-q"], ["install", "-y", "-q", *missing]):
        done = subprocess.run(
            [APT_GET, *args], capture_output=True, text=True, env=env, check=False
        )
        if done.returncode != 0:
            raise BenchError(f"apt-get {' '.join(args)} failed: {done.stderr.strip()[-800:]}")
    return missing


def _unmount_under(directory: Path) -> None:
    """Lazily unmount whatever is still mounted under ``directory`` (deepest first)."""
    mounts = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        target = line.split()[1].replace("\\040", " ")
        if target == str(directory) or target.startswith(f"{directory}/"):
            mounts.append(target)
    for target in sorted(mounts, key=len, reverse=True):
        subprocess.run(["/usr/bin/umount", "-l", target], capture_output=True, check=False)


def remove_tree(directory: Path) -> None:
    """Unmount anything under ``directory`` and remove it."""
    if directory.exists():
        _unmount_under(directory)
        shutil.rmtree(directory, ignore_errors=True)


def run_batch(
    run_one: Callable[[int, Path], None], tasks: int, parallel: int, scratch: Path, where: str
) -> None:
    """Run ``tasks`` tasks ``parallel`` at a time; check every task's result."""
    results = [scratch / str(index) for index in range(tasks)]
    for directory in results:
        directory.mkdir(parents=True)

    def one(index: int) -> None:
        run_one(index, results[index])
        check_square(results[index], index, where)

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        for future in [pool.submit(one, index) for index in range(tasks)]:
            future.result()


class ContainerRunner:
    """What podman and docker share: a command line, ``import`` and ``run --rm``."""

    kind = ""
    namespace = ""  # podman names local images localhost/<name>

    def __init__(self, base: list[str]) -> None:
        """``base``: the client's command and its global options."""
        self.base = base

    def import_image(self, rootfs: Path, name: str) -> str:
        """Import a rootfs tarball as ``<name>:latest``; return the reference."""
        reference = f"{self.namespace}{name}:latest"
        subprocess.run(
            [*self.base, "import", str(rootfs), reference], check=True, capture_output=True
        )
        return reference

    def run_one(self, image: str, index: int, results: Path) -> None:
        """``run --rm --network none`` of one task, its results directory bind-mounted.

        Raises:
            BenchError: when the container fails or does not echo.
        """
        limits = [arg for limit in ULIMITS for arg in ("--ulimit", limit)]
        done = subprocess.run(
            [
                *self.base,
                "run",
                "--rm",
                "--network",
                "none",
                *limits,
                "--volume",
                f"{results}:/results",
                "--env",
                f"TASK_INDEX={index}",
                "--env",
                "RESULTS_DIR=/results",
                image,
                "/bin/sh",
                "-c",
                TASK_COMMAND,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0 or done.stdout.strip() != "done":
            raise BenchError(
                f"{self.kind} run of task {index}: exit {done.returncode}, stdout "
                f"{done.stdout[-200:]!r} (expected 'done'), stderr {done.stderr[-500:]!r}"
            )

    def close(self) -> None:
        """Remove what the runner stored."""


class Podman(ContainerRunner):
    """Rootful podman with its own storage, cgroupfs and file events: no daemon, no systemd."""

    kind = "podman"
    namespace = "localhost/"

    def __init__(self, prefix: str) -> None:
        """Storage under /var/lib/<prefix>-podman, runtime state under /run/<prefix>-podman."""
        self.root = Path(f"/var/lib/{prefix}-podman")
        self.runroot = Path(f"/run/{prefix}-podman")
        super().__init__(
            [
                PODMAN,
                "--root",
                str(self.root),
                "--runroot",
                str(self.runroot),
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
                "--runtime",
                RUNC,
            ]
        )

    def version(self) -> str:
        """Podman's version line."""
        return subprocess.run(
            [PODMAN, "--version"], check=True, capture_output=True, text=True
        ).stdout.strip()

    def close(self) -> None:
        """Remove every container and image, then the storage directories."""
        if self.root.exists():
            subprocess.run([*self.base, "system", "reset", "--force"], capture_output=True)
        remove_tree(self.root)
        remove_tree(self.runroot)


class Docker(ContainerRunner):
    """dockerd started in the background (no systemd, no bridge, no iptables), stopped after."""

    kind = "docker"

    def __init__(self, prefix: str, log: Path) -> None:
        """Data under /var/lib/<prefix>-docker, sockets and pid file under /run/<prefix>-docker."""
        self.data_root = Path(f"/var/lib/{prefix}-docker")
        self.run_dir = Path(f"/run/{prefix}-docker")
        self.socket = self.run_dir / "docker.sock"
        self.pid_file = self.run_dir / "dockerd.pid"
        self.log = log
        self.daemon: subprocess.Popen[bytes] | None = None
        super().__init__([DOCKER, "--host", f"unix://{self.socket}"])

    def start(self) -> str:
        """Start dockerd and wait until it answers; return its version.

        Raises:
            BenchError: when it does not answer within a minute (its log's tail attached).
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        args = [
            DOCKERD,
            "--data-root",
            str(self.data_root),
            "--exec-root",
            str(self.run_dir / "exec"),
            "--pidfile",
            str(self.pid_file),
            "--host",
            f"unix://{self.socket}",
            "--bridge",
            "none",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-masq=false",
            "--storage-driver",
            "overlay2",
            *[arg for limit in ULIMITS for arg in ("--default-ulimit", limit)],
        ]
        with self.log.open("ab") as log:
            self.daemon = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + DAEMON_WAIT_SECONDS
        while time.monotonic() < deadline:
            if self.daemon.poll() is not None:
                break
            done = subprocess.run(
                [*self.base, "version", "--format", "{{.Server.Version}}"],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode == 0:
                return f"docker {done.stdout.strip()}"
            time.sleep(0.5)
        tail = self.log.read_text(errors="replace")[-1500:]
        raise BenchError(f"dockerd did not start: {tail}")

    def close(self) -> None:
        """Stop dockerd (and the containerd it started) and remove its directories."""
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.daemon.pid, signal.SIGKILL)
                self.daemon.wait(timeout=30)
        remove_tree(self.data_root)
        remove_tree(self.run_dir)


def lxd_benchmark(project: str, alias: str, tasks: int, parallel: int, phase: str) -> str:
    """Run ``lxd-benchmark launch`` (count ``tasks`` of ``alias``) or ``delete``; its output."""
    extra = ["--count", str(tasks), alias] if phase == "launch" else []
    done = subprocess.run(
        [LXD_BENCHMARK, phase, "--parallel", str(parallel), "--project", project, *extra],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"lxd-benchmark {phase}: {done.stderr.strip()[-800:]}")
    return done.stdout + done.stderr


def lxc(*args: str) -> None:
    """Run an lxc command.

    Raises:
        BenchError: with its stderr when it fails.
    """
    done = subprocess.run([LXC, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"lxc {' '.join(args)}: {done.stderr.strip()}")


def lxc_loop(project: str, alias: str, profile: str, tasks: int, scratch: Path) -> None:
    """The naive way: one task after the other with lxc launch / exec / file pull / delete."""
    for index in range(tasks):
        name = f"loop-{index}"
        target = scratch / name
        target.mkdir(parents=True)
        lxc("--project", project, "launch", alias, name, "--profile", profile)
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
        lxc("--project", project, "delete", "--force", name)
        check_square(target / "results", index, "lxc loop")
