"""Every command the operator's guide shows, run on the REAL LXD and compared with what it shows.

Each guide page (README.md, docs/*.md) is one session: its own state directory, LXD project and
dir pool ``<run prefix>-g<n>``, and a map of the job ids it shows to the real ones. A page
marked ``<!-- guide-session: fresh -->`` starts from nothing (its first command configures the
host); any other page starts on a prepared host, as a deployed unit is: configured as the
charm's install hook does (dir pool, 256MiB workers, no per-worker idmap isolation: on this
LXD, isolated workers started at once sometimes fail and are retried, which would change
attempt counts from run to run), the busybox worker image built, the job agent running.

How a command runs (conventions and normalisations: tests/guide_doc.py):

- ``container-compute ...``: ``python -m container_compute.cli`` in a subprocess, with
  ``CONTAINER_COMPUTE_STATE_DIR`` set to the session's state directory; stdout then stderr is
  the output. ``configure-host`` runs in this process instead, with the session's project and
  pool added (``--lxd-project``, ``--storage-pool``) and /etc/{subuid,subgid,sysctl.d,
  modules-load.d} and /proc/sys pointed at copies, so this machine's files are never changed.
- ``juju run worker/0 ACTION k=v ...``: the REAL charm (src/charm.py) through
  ``ops.testing.Context``, configured with the session's project and pool and its state
  directory, with the real library behind it; the results are printed as ``juju run`` prints
  them (ops' flattening, every value a string, YAML with sorted keys).
- ``ls``, ``cat``, ``head``, ``tail`` of ``/var/lib/container-compute/...``: run on the
  session's state directory.
- console-static commands: checked against the repository (tests/guide_doc.py).

``CC_GUIDE_REFRESH=1`` (scripts/refresh-guide-output) writes the real outputs into the pages
instead of comparing; exit codes must still match.
"""

import contextlib
import dataclasses
import io
import os
import shutil
import subprocess
import sys
import tempfile
import unittest.mock
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ops import testing

import charm
from container_compute import cli, host
from container_compute.config import HostConfig, option_name
from container_compute.constants import STATE_DIR, STATE_DIR_ENV
from container_compute.host.images import build_busybox_image
from container_compute.host.sysctl import SYSCTL_SETTINGS
from container_compute.lxdclient import connect

from .. import guide_doc
from ..guide_doc import Command, GuideError
from .conftest import host_paths_in

pytestmark = pytest.mark.functional

REFRESH = os.environ.get("CC_GUIDE_REFRESH") == "1"
SHELL_TOOLS = {name: f"/usr/bin/{name}" for name in guide_doc.SHELL_TOOLS}
SRC = guide_doc.REPO / "src"
LIB = guide_doc.REPO / "lib"
DEFAULT_PROJECT = HostConfig().lxd_project
DEFAULT_IMAGE = HostConfig().default_image
RUNNABLE_PAGES = [
    page
    for page in guide_doc.guide_pages()
    if any(b.lang == guide_doc.RUNNABLE for b in guide_doc.console_blocks(page))
]


@dataclasses.dataclass
class Session:
    """One page's world: state directory, project, host file copies, job ids, the agent."""

    name: str
    root: Path
    ids: dict[str, str] = dataclasses.field(default_factory=dict)
    apps: dict[str, str] = dataclasses.field(default_factory=guide_doc.static_apps)
    agent: subprocess.Popen[bytes] | None = None

    @property
    def state_dir(self) -> Path:
        """The session's state directory (shown as /var/lib/container-compute)."""
        return self.root / "state"

    @property
    def etc(self) -> Path:
        """Copies of the /etc files configure-host writes."""
        return self.root / "etc"

    @property
    def proc_sys(self) -> Path:
        """Copies of the /proc/sys values configure-host raises."""
        return self.root / "proc-sys"

    def paths(self) -> host.HostPaths:
        """HostPaths pointing at the copies."""
        return dataclasses.replace(host_paths_in(self.etc), proc_sys=self.proc_sys)

    def config(self) -> HostConfig:
        """The host config a prepared session runs with (charm config of the same values)."""
        return HostConfig(
            lxd_project=self.name,
            storage_pool=self.name,
            storage_driver="dir",
            worker_memory="256MiB",
            worker_idmap_isolated=False,  # see docs/troubleshooting.md#idmap-isolation
        )

    def charm_config(self) -> dict[str, Any]:
        """The config options of the session's config that differ from the defaults."""
        config, defaults = self.config(), HostConfig()
        return {
            option_name(f.name): getattr(config, f.name)
            for f in dataclasses.fields(HostConfig)
            if getattr(config, f.name) != getattr(defaults, f.name)
        }

    def as_shown(self, text: str) -> str:
        """Real output with the session's own names written as on a real host."""
        text = text.replace(str(self.state_dir), str(STATE_DIR))
        text = text.replace(str(self.etc), "/etc").replace(str(self.proc_sys), "/proc/sys")
        return text.replace(self.name, DEFAULT_PROJECT)

    def as_real(self, word: str) -> str:
        """A word of a shown command, with the session's names and the real job ids."""
        word = guide_doc.with_real_ids(word, self.ids)
        return word.replace(str(STATE_DIR), str(self.state_dir))


def copy_proc_sys(target: Path) -> None:
    """Copy the current values of the sysctls configure-host may raise."""
    for key in SYSCTL_SETTINGS:
        source = Path("/proc/sys") / key.replace(".", "/")
        if source.exists():
            copy = target / key.replace(".", "/")
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_text(source.read_text())


@pytest.fixture(scope="module")
def sessions(run_prefix: str, lxd_client: object) -> Iterator[dict[Path, Session]]:
    """A session per page with runnable commands; agents stopped and files removed at the end."""
    root = Path(tempfile.mkdtemp(prefix="cc-guide-"))
    made = {
        page: Session(f"{run_prefix}-g{n}", root / str(n)) for n, page in enumerate(RUNNABLE_PAGES)
    }
    yield made
    for session in made.values():
        if session.agent is not None:
            session.agent.terminate()
            session.agent.wait(60)
    shutil.rmtree(root, ignore_errors=True)


def prepare(session: Session, fresh: bool) -> None:
    """Make the session's directories; unless fresh, configure the host and start the agent."""
    session.state_dir.mkdir(parents=True)
    copy_proc_sys(session.proc_sys)
    session.paths()
    if fresh:
        return
    config = session.config()
    report = host.configure_host(config, paths=session.paths())
    if not report.ok:
        pytest.fail(f"configure_host failed: {report.problems}")
    host.save_config(config, session.state_dir)
    build_busybox_image(connect(project=config.lxd_project), DEFAULT_IMAGE)
    log = (session.root / "agent.log").open("ab")
    session.agent = subprocess.Popen(
        [sys.executable, "-m", "container_compute.agent", "--state-dir", str(session.state_dir)],
        env={**os.environ, "PYTHONPATH": f"{SRC}:{LIB}"},
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )


def run_container_compute(
    session: Session, env: dict[str, str], argv: list[str]
) -> tuple[int, str]:
    """Run the CLI as the guide shows it; return exit status and output (stdout, stderr)."""
    args = [session.as_real(word) for word in argv[1:]]
    if args and args[0] == "configure-host":
        args += ["--lxd-project", session.name, "--storage-pool", session.name]
        out, err = io.StringIO(), io.StringIO()
        paths = session.paths()
        with (
            unittest.mock.patch.object(host, "HostPaths", lambda: paths),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            os.environ[STATE_DIR_ENV] = str(session.state_dir)
            try:
                code = cli.main(args)
            except SystemExit as exit_:
                code = int(exit_.code or 0)
            finally:
                del os.environ[STATE_DIR_ENV]
        return code, out.getvalue() + err.getvalue()
    done = subprocess.run(
        [sys.executable, "-m", "container_compute.cli", *args],
        env={
            **os.environ,
            **env,
            STATE_DIR_ENV: str(session.state_dir),
            "PYTHONPATH": f"{SRC}:{LIB}",
        },
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def run_juju(
    session: Session, argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> tuple[int, str]:
    """Run ``juju run worker/0 ACTION k=v ...`` through the real charm; print as Juju does."""
    action = argv[3]
    params = guide_doc.juju_action_params([session.as_real(w) for w in argv[4:]])
    monkeypatch.setattr(charm, "STATE_DIR", session.state_dir)
    context = testing.Context(charm.ContainerComputeCharm)
    state = testing.State(leader=True, config=session.charm_config())
    try:
        context.run(context.on.action(action, params=params), state)
    except testing.ActionFailed as failed:
        # How Juju prints a failed action is not something this harness can show truly.
        raise GuideError(f"juju run {action} failed: {failed.message}") from failed
    return 0, "\n".join(guide_doc.juju_yaml(context.action_results or {})) + "\n"


def run_shell(session: Session, argv: list[str]) -> tuple[int, str]:
    """``ls``/``cat``/``head``/``tail`` of the state directory."""
    args = [session.as_real(word) for word in argv[1:]]
    if any("*" in word or "?" in word for word in args):
        raise GuideError("no globs: the harness runs commands without a shell")
    done = subprocess.run(
        [SHELL_TOOLS[argv[0]], *args],
        env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def run_command(
    session: Session, command: Command, monkeypatch: pytest.MonkeyPatch
) -> tuple[int, list[str]]:
    """Run one runnable command; return its exit status and output lines as shown."""
    env, argv = guide_doc.program(command.argv())
    kind = guide_doc.runnable_kind(argv)
    if kind == "cli":
        code, output = run_container_compute(session, env, argv)
    elif kind == "juju":
        code, output = run_juju(session, argv, monkeypatch)
    else:
        code, output = run_shell(session, argv)
    return code, [line.rstrip() for line in session.as_shown(output).rstrip("\n").splitlines()]


def rewrite(
    page: Path,
    blocks: list[guide_doc.Block],
    replacements: list[tuple[Command, list[str]]],
    ids: dict[str, str],
) -> None:
    """Write real outputs over the shown ones, with as few job ids changed as can be.

    A shown id still in an output that stays keeps standing for its real id (the new outputs
    are written with it); any other shown id is replaced by its real id everywhere.
    """
    replaced = {id(command) for command, _ in replacements}
    kept = {
        shown_id
        for block in blocks
        for command in block.commands
        if id(command) not in replaced
        for shown_id in guide_doc.unique_ids(command.shown)
    }
    back = {real: shown for shown, real in ids.items() if shown in kept}
    lines = page.read_text().splitlines()
    for command, real in sorted(replacements, key=lambda item: -item[0].line):
        start = command.end_line
        lines[start : start + len(command.shown)] = [
            guide_doc.JOB_ID_RE.sub(lambda m: back.get(m.group(0), m.group(0)), line)
            for line in real
        ]
    changed = {shown: real for shown, real in ids.items() if shown not in kept}
    page.write_text(guide_doc.with_real_ids("\n".join(lines) + "\n", changed))


def run_and_compare(
    session: Session, command: Command, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[str], list[str] | None]:
    """Run a command; return what is wrong, and (refreshing) the output to write instead."""
    problems = []
    code, real = run_command(session, command, monkeypatch)
    if code != command.expected_exit:
        problems.append(
            f"{command.where}: {command.text}\n"
            f"exit {code}, the guide says {command.expected_exit}\n" + "\n".join(real)
        )
    mismatch = guide_doc.compare(command.shown, real, session.ids)
    if mismatch is None:
        return problems, None
    if not REFRESH:
        return [*problems, f"{command.where}: {command.text}\n{mismatch}"], None
    shown_ids = guide_doc.unique_ids(command.shown)
    for old, new in zip(shown_ids, guide_doc.unique_ids(real), strict=False):
        session.ids.setdefault(old, new)
    return problems, real


@pytest.mark.parametrize(
    "page", guide_doc.guide_pages(), ids=lambda p: str(p.relative_to(guide_doc.REPO))
)
def test_every_command_of_the_page_runs_as_shown(
    page: Path,
    sessions: dict[Path, Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Run the page's console commands in order; check its console-static ones."""
    blocks = guide_doc.console_blocks(page)
    apps = guide_doc.static_apps()
    for block in blocks:
        if block.lang == guide_doc.STATIC:
            for command in block.commands:
                guide_doc.check_static(command, apps)
    if page not in sessions:
        assert all(b.lang == guide_doc.STATIC for b in blocks)
        return
    session = sessions[page]
    prepare(session, fresh=guide_doc.SESSION_FRESH in page.read_text())
    problems: list[str] = []
    replacements: list[tuple[Command, list[str]]] = []
    for block in blocks:
        for command in block.commands if block.lang == guide_doc.RUNNABLE else []:
            found, real = run_and_compare(session, command, monkeypatch)
            problems.extend(found)
            if real is not None:
                replacements.append((command, real))
    if replacements:
        rewrite(page, blocks, replacements, session.ids)
    assert not problems, "\n\n".join(problems)
