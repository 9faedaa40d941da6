"""Fixtures for tests against the REAL LXD daemon of this machine.

Every run works in LXD objects named ``cct<run id>-...`` (its own project and pools), and
deletes them at the end of the session, also when tests fail. The daemon must be running
(``scripts/setup-host`` starts it); a missing daemon is an error, not a skip.
"""

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pylxd
import pytest

from container_compute import constants, host
from container_compute.actions import job_actions
from container_compute.backends.lxd import helper, warm
from container_compute.config import HostConfig
from container_compute.host import HostPaths, configure_host
from container_compute.host.images import build_busybox_image
from container_compute.jobs import runner
from container_compute.jobs.ledger import Ledger
from container_compute.lxdclient import LXDUnavailableError, connect

from .lxd_cleanup import purge_run


@pytest.fixture(scope="session")
def run_prefix() -> Iterator[str]:
    """Name prefix of everything this run creates in LXD; all of it is purged at the end."""
    prefix = f"cct{secrets.token_hex(3)}"
    yield prefix
    leftovers = purge_run(prefix)
    print(f"\npurged after the run: {', '.join(leftovers) or 'nothing'}")


@pytest.fixture(scope="session")
def lxd_client() -> pylxd.Client:
    """A client of the local daemon's default project."""
    try:
        client = connect()
        client.host_info  # noqa: B018 - force a round trip
    except LXDUnavailableError as err:
        pytest.fail(f"functional tests need a running LXD daemon (scripts/setup-host): {err}")
    return client


def host_paths_in(directory: Path) -> HostPaths:
    """HostPaths whose /etc files are copies in ``directory`` (the real /etc is never written)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("subuid", "subgid"):
        source = Path("/etc") / name
        (directory / name).write_text(source.read_text() if source.exists() else "")
    return HostPaths(
        sysctl_dir=directory / "sysctl.d",
        modules_load_dir=directory / "modules-load.d",
        subuid=directory / "subuid",
        subgid=directory / "subgid",
    )


@pytest.fixture(scope="session")
def configured_host(
    run_prefix: str, lxd_client: pylxd.Client, tmp_path_factory: pytest.TempPathFactory
) -> HostConfig:
    """Configure a jobs host: project and dir pool ``<run_prefix>-jobs``, busybox image.

    The worker profile has no CPU limit and 256MiB of memory; the image alias is "busybox".
    No ready workers are kept between jobs (``ready_workers=0``) and agents serve no metrics
    (``metrics_listen=""``) unless a test asks.
    """
    config = HostConfig(
        lxd_project=f"{run_prefix}-jobs",
        storage_pool=f"{run_prefix}-jobs",
        storage_driver="dir",
        worker_cpu="",
        worker_memory="256MiB",
        default_image="busybox",
        sysctl_tuning=False,
        ready_workers=0,  # tests count their workers; ready ones: test_ready_workers.py
        metrics_listen="",  # no fixed port shared by every agent; test_metrics.py picks its own
    )
    report = configure_host(config, paths=host_paths_in(tmp_path_factory.mktemp("jobs-host")))
    if not report.ok:
        pytest.fail(f"configure_host failed for the jobs project: {report.problems}")
    build_busybox_image(connect(project=config.lxd_project), "busybox")
    return config


LXD_BIN = "/usr/bin/lxd"
SETSID_BIN = "/usr/bin/setsid"


def lxd_daemon_process() -> tuple[int, list[str]] | None:
    """Return the pid and argv of the live LXD daemon (zombies do not count), or None."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")[:-1]
            exe = os.readlink(entry / "exe")
        except OSError:
            continue
        # LXC's "[lxc monitor] ..." processes run /usr/bin/lxd too, with a rewritten argv.
        is_daemon = argv and os.path.basename(argv[0]) == b"lxd"
        if exe == LXD_BIN and is_daemon and (len(argv) == 1 or argv[1].startswith(b"--")):
            return int(entry.name), [a.decode() for a in argv]
    return None


def _gone(pid: int) -> bool:
    """True when ``pid`` has exited (a zombie has exited too; reap it if it is our child)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    if state == "Z":
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return True
    return False


@contextlib.contextmanager
def lxd_daemon_down(pause: float = 2.0) -> Iterator[int]:
    """Stop the LXD daemon with SIGTERM, yield its old pid, then start it again.

    Its instances keep running while it is away. It is started detached from this process and
    waited for until it answers, whatever happens inside the block, so a failing test never
    leaves the machine without LXD.
    """
    found = lxd_daemon_process()
    if found is None:
        pytest.fail("no LXD daemon process (/usr/bin/lxd) found")
    pid, argv = found
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while not _gone(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not _gone(pid):
            os.kill(pid, signal.SIGKILL)
        yield pid
        time.sleep(pause)
    finally:
        if lxd_daemon_process() is None:
            # setsid -f forks: the daemon is not our child, so it never lingers as our zombie.
            # It runs from /: a working directory removed later (this checkout) would break
            # every command it runs (rsync's getcwd fails, and with it every copy).
            subprocess.run(
                [SETSID_BIN, "-f", LXD_BIN, *argv[1:]],
                cwd="/",
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=True,
            )
        subprocess.run([LXD_BIN, "waitready", "--timeout=120"], check=True, capture_output=True)


def worker_names(config: HostConfig, templates: bool = False) -> list[str]:
    """The workers of the test project (and its worker templates with ``templates``).

    A template made for the image (not for one job) stays between jobs, by design.
    """
    client = connect(project=config.lxd_project)
    listing = client.api.instances.get(params={"recursion": "1"}).json()["metadata"]
    names = sorted(record["name"] for record in listing)
    return [n for n in names if templates or not n.startswith(constants.TEMPLATE_NAME_PREFIX)]


def no_workers_left(config: HostConfig, timeout: float = 30.0) -> bool:
    """Wait (bounded) until the test project has no worker (a daemon away counts as some)."""
    end = time.monotonic() + timeout
    while True:
        try:
            if not worker_names(config):
                return True
        except pylxd.exceptions.LXDAPIException:
            pass
        if time.monotonic() > end:
            with contextlib.suppress(pylxd.exceptions.LXDAPIException):
                print(f"workers left in {config.lxd_project}: {worker_names(config)}")
            return False
        time.sleep(0.5)


@pytest.fixture
def fast_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries wait 0.5 s, 1 s, ... instead of 10 s, 20 s, ...; in-process engines poll 0.2 s."""
    monkeypatch.setattr(runner, "engine_options", {"backoff_base": 0.5, "backoff_cap": 2.0})
    monkeypatch.setattr(job_actions, "IN_PROCESS_POLL_SECONDS", 0.2)


@contextlib.contextmanager
def state_dirs(config: HostConfig, prefix: str, count: int = 2) -> Iterator[list[Path]]:
    """``count`` fresh state directories with ``config`` saved (owners beside each other)."""
    made = [Path(tempfile.mkdtemp(prefix=f"{prefix}{n}-state-")) for n in range(count)]
    try:
        for path in made:
            host.save_config(config, path)
        yield made
    finally:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def state_dir(configured_host: HostConfig, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh state directory with the host config saved in it (as configure-host does)."""
    module = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    path = Path(tempfile.mkdtemp(prefix=f"cc-{module}-state-"))
    host.save_config(configured_host, path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def workers_of(state_dir: Path, job_id: str) -> list[str]:
    """The worker each attempt of the job ran in, in the order of tasks and attempts."""
    ledger = Ledger(state_dir)
    try:
        return [a.worker for a in ledger.attempts(job_id)]
    finally:
        ledger.close()


class Incarnations:
    """Every worker seen while a job runs, as (name, created_at).

    A warm worker replaced under the same name shows twice.
    """

    def __init__(self, config: HostConfig) -> None:
        self.seen: set[tuple[str, str]] = set()
        self._client = connect(project=config.lxd_project)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            for record in self._client.api.instances.get(params={"recursion": 1}).json()[
                "metadata"
            ]:
                self.seen.add((record["name"], record["created_at"]))

    def of(self, workers: list[str]) -> set[tuple[str, str]]:
        """Stop watching; the incarnations seen of these workers."""
        self._stop.set()
        self._thread.join(10)
        return {seen for seen in self.seen if seen[0] in workers}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture
def incarnations(configured_host: HostConfig) -> Iterator[Incarnations]:
    watch = Incarnations(configured_host)
    yield watch
    watch.stop()


@pytest.fixture(params=["helper", "shell"])
def recipe(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Sandboxes made by the helper program (where the host builds it) or the shell recipe."""
    if request.param == "shell":
        monkeypatch.setattr(warm, "sandbox_helper", lambda: None)
    elif helper.sandbox_helper() is None:
        pytest.skip(f"the sandbox helper cannot be built here (no {helper.GCC}?)")
    return str(request.param)


UNIFIED_CONTROLLERS = Path("/sys/fs/cgroup/cgroup.controllers")


def no_task_limits() -> str:
    """Why this host gives workers no memory and pids controllers of their own ("" if it does)."""
    try:
        missing = {"memory", "pids"} - set(UNIFIED_CONTROLLERS.read_text().split())
    except OSError:  # hybrid or v1: /sys/fs/cgroup is a tmpfs of v1 hierarchies
        missing = {"memory", "pids"}
    if not missing:
        return ""
    return (
        f"per-task limits need a cgroup v2 host; this one has no {' and '.join(sorted(missing))}"
        " controller in a cgroup2 hierarchy at /sys/fs/cgroup (cgroup v1 or hybrid): "
        "scripts/cgroup2-lab runs these tests in a cgroup v2 guest"
    )
