"""The ``container-compute`` command: configure a host and run the charm's actions without Juju.

Every action is a subcommand whose flags are generated from the action's params class, so the
command line and actions.yaml cannot disagree, and the result is exactly what the charm's
action returns (``--format json``). Examples::

    container-compute configure-host --storage-driver dir
    container-compute build-worker-image --source busybox --alias busybox
    container-compute launch-job --tasks 16 --image busybox --wait -- sh -c 'echo $TASK_INDEX'
    container-compute job-status --job j0123abcd --format json

Exit status (``launch-job --wait`` and ``wait-job`` answer with the job's outcome, like
``sbatch --wait``)::

    0  done; after waiting: every task of the job succeeded
    1  the command could not be done (the message says why; nothing was changed)
    2  bad parameters or usage
    3  the job finished with failed tasks
    4  the job was cancelled
    5  the wait-timeout passed while the job was still running
"""

import argparse
import dataclasses
import json
import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from . import actions, agent
from .actions import ACTION_PARAMS
from .config import HostConfig, config_options
from .constants import ENV_NAME_RE
from .jobs.params import check_env_entry, is_required, schema_type

EXIT_OK = 0
EXIT_ACTION_FAILED = 1
EXIT_BAD_PARAMS = 2
EXIT_TASKS_FAILED = 3
EXIT_CANCELLED = 4
EXIT_STILL_RUNNING = 5
EXIT_FOR_STATE = {
    "succeeded": EXIT_OK,
    "failed": EXIT_TASKS_FAILED,
    "cancelled": EXIT_CANCELLED,
    "queued": EXIT_STILL_RUNNING,
    "running": EXIT_STILL_RUNNING,
}
_PROGRESS_RE = re.compile(r"(\d+)/(\d+) done")
MAX_ENV_FILE_BYTES = 1024 * 1024


class UsageError(Exception):
    """Bad parameters on the command line (exit status 2)."""


def _integer(flag: str) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag}: {text!r} is not an integer") from None

    return convert


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="state directory (default: $CONTAINER_COMPUTE_STATE_DIR, else "
        "/var/lib/container-compute)",
    )
    parser.add_argument(
        "--format",
        choices=["text", "json"],
        default="text",
        help="output format (json: exactly the action's result)",
    )


# Shorter spellings of some configure-host flags.
FLAG_ALIASES = {
    "lxd-client-cert": ["--client-cert"],
    "lxd-client-key": ["--client-key"],
    "lxd-server-cert": ["--server-cert"],
}


def _add_flag(
    parser: argparse.ArgumentParser, name: str, dest: str, kind: str, help_text: str
) -> None:
    """Add ``--name`` for an option or parameter of JSON-schema type ``kind`` (unset: None)."""
    help_text = help_text.replace("%", "%%")
    flags = [f"--{name}", *FLAG_ALIASES.get(name, [])]
    if kind == "boolean":
        parser.add_argument(
            *flags,
            dest=dest,
            action=argparse.BooleanOptionalAction,
            default=None,
            help=help_text,
        )
    elif kind == "array":
        parser.add_argument(
            *flags,
            dest=dest,
            action="append",
            default=None,
            metavar="KEY=VALUE",
            help=help_text + " Repeatable.",
        )
    else:
        parser.add_argument(
            *flags,
            dest=dest,
            default=None,
            help=help_text,
            type=_integer(f"--{name}") if kind == "integer" else str,
        )


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with one subcommand per action, plus configure-host."""
    parser = argparse.ArgumentParser(
        prog="container-compute",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")
    configure = subparsers.add_parser(
        "configure-host", help="set up LXD on this machine for compute workers"
    )
    _common(configure)
    configure.add_argument("--dry-run", action="store_true", help="report, change nothing")
    configure.add_argument(
        "--lxd-remote",
        metavar="NAME",
        default=None,
        help="use a remote of the lxc client (lxc remote add NAME ...) as lxd-endpoint: its "
        "address, the client's certificate and key, and the server certificate lxc pinned",
    )
    json_kinds = {bool: "boolean", int: "integer", str: "string"}
    for name, kind, default, description in config_options():
        help_text = f"{description} (default: {default!r})"
        _add_flag(configure, name, "opt_" + name.replace("-", "_"), json_kinds[kind], help_text)
    for action, (params_class, description) in ACTION_PARAMS.items():
        sub = subparsers.add_parser(action, help=description, description=description)
        _common(sub)
        for f in dataclasses.fields(params_class):
            help_text = str(f.metadata.get("description", ""))
            if is_required(f):
                help_text += " (required)"
            name = f.name.replace("_", "-")
            _add_flag(sub, name, "param_" + f.name, schema_type(f), help_text)
        if action == "launch-job":
            sub.add_argument(
                "command_argv",
                nargs="*",
                metavar="-- COMMAND ARGS",
                help="the command, as words after '--' (instead of --command)",
            )
            sub.add_argument(
                "--env-file",
                type=Path,
                default=None,
                metavar="PATH",
                help="a file of KEY=VALUE lines (blank lines and lines starting with # are "
                "ignored) added to --env: the values stay out of the process list",
            )
    reap = subparsers.add_parser(
        "reap",
        help="delete this state dir's workers that nothing holds (or another owner's leftovers)",
        description="Delete the workers and templates this state dir made that no job uses. "
        "Nothing is done while its agent runs (the agent reaps its own). With --owner, delete "
        "everything a state dir gone for good left on the shared LXD project (its id is in "
        "<state dir>/owner; 'unowned': workers made before owners were labelled).",
    )
    _common(reap)
    reap.add_argument("--owner", default="", metavar="ID", help="owner id of a state dir gone")
    logs = subparsers.add_parser(
        "logs",
        help="a task's output, live while it runs (like kubectl logs)",
        description="Print a task's stdout (or --stderr): read live from its worker while it "
        "runs on this host's LXD, from its results once it ended. --follow waits for the task "
        "to start, prints as it writes, and ends when the task ends, with its outcome.",
    )
    _common(logs)
    logs.add_argument("--job", required=True, metavar="ID", help="job id (required)")
    logs.add_argument("--task", type=int, default=0, metavar="I", help="task index (default 0)")
    logs.add_argument("-f", "--follow", action="store_true", help="go on until the task ends")
    logs.add_argument(
        "--tail", type=int, default=-1, metavar="N", help="only the last N lines so far first"
    )
    logs.add_argument("--stderr", action="store_true", help="the task's stderr")
    logs.add_argument(
        "--timestamps", action="store_true", help="prefix each line with when it was read"
    )
    return parser


def params_from_args(action: str, args: argparse.Namespace) -> Any:
    """Build the action's params object from parsed arguments.

    Raises:
        UsageError: naming the parameter that is missing or wrong.
    """
    params_class = ACTION_PARAMS[action][0]
    values: dict[str, Any] = {}
    for f in dataclasses.fields(params_class):
        value = getattr(args, "param_" + f.name)
        if value is not None:
            values[f.name] = value
    words = getattr(args, "command_argv", None)
    if words:
        if "command" in values:
            raise UsageError("command: give it either with --command or after '--', not both")
        values["command"] = shlex.join(words)
    env_file = getattr(args, "env_file", None)
    if env_file is not None:
        values["env"] = merge_env(values.get("env", []), read_env_file(env_file))
    for f in dataclasses.fields(params_class):
        if is_required(f) and f.name not in values:
            raise UsageError(
                f"{f.name.replace('_', '-')}: is required (--{f.name.replace('_', '-')})"
            )
    try:
        return params_class(**values)
    except ValueError as err:
        raise UsageError(str(err)) from err


def read_env_file(path: Path) -> list[str]:
    """Return the KEY=VALUE lines of ``path``, skipping blank lines and ``#`` comments.

    Raises:
        UsageError: naming env-file and the line (never a value) when the file cannot be read
            or a line is not a KEY=VALUE entry launch-job takes.
    """
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_ENV_FILE_BYTES + 1)
    except OSError as err:
        raise UsageError(f"env-file: cannot read {path}: {err.strerror or err}") from None
    if len(data) > MAX_ENV_FILE_BYTES:
        raise UsageError(f"env-file: {path} is over {MAX_ENV_FILE_BYTES} bytes")
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise UsageError(f"env-file: {path} is not UTF-8 text") from None
    entries: list[str] = []
    first_lines: dict[str, int] = {}
    for number, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, _value = line.partition("=")
        if not sep or not ENV_NAME_RE.match(key):
            raise UsageError(
                f"env-file: line {number} is not KEY=VALUE with KEY made of A-Z a-z 0-9 _"
            )
        if key in first_lines:
            raise UsageError(
                f"env-file: line {number}: {key} is given twice (first on line {first_lines[key]})"
            )
        try:
            check_env_entry(line)
        except ValueError as err:
            raise UsageError(f"env-file: line {number}: {err}") from None
        entries.append(line)
        first_lines[key] = number
    return entries


def merge_env(given: list[str], from_file: list[str]) -> list[str]:
    """Return the --env entries followed by the env-file's; a key in both is refused."""
    keys = {entry.partition("=")[0] for entry in given}
    for entry in from_file:
        key = entry.partition("=")[0]
        if key in keys:
            raise UsageError(f"env-file: {key} is given with --env too")
    return [*given, *from_file]


def format_text(result: Any, indent: int = 0) -> str:
    """Return an action result as indented ``key: value`` lines."""
    lines: list[str] = []
    pad = "  " * indent
    if isinstance(result, dict):
        for key, value in result.items():
            if isinstance(value, dict | list):
                lines.append(f"{pad}{key}:" + ("" if value else " (none)"))
                if value:
                    lines.append(format_text(value, indent + 1))
            elif isinstance(value, str) and "\n" in value:
                lines.append(f"{pad}{key}: |")
                lines.extend(f"{pad}  {line}" for line in value.splitlines())
            else:
                lines.append(f"{pad}{key}: {_scalar(value)}")
    elif isinstance(result, list):
        lines.extend(f"{pad}- {_scalar(item)}" for item in result)
    else:
        lines.append(f"{pad}{_scalar(result)}")
    return "\n".join(lines)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _emit(result: dict[str, Any], fmt: str, out: TextIO) -> None:
    if fmt == "json":
        out.write(json.dumps(result, indent=2, sort_keys=False) + "\n")
    else:
        out.write(format_text(result) + "\n")


def _progress_printer(stream: TextIO) -> Callable[[str], None] | None:
    if not stream.isatty():
        return None

    def show(message: str) -> None:
        match = _PROGRESS_RE.search(message)
        bar = ""
        if match and int(match.group(2)):
            filled = 30 * int(match.group(1)) // int(match.group(2))
            bar = "[" + "#" * filled + "-" * (30 - filled) + "] "
        stream.write("\r\x1b[K" + bar + message)
        stream.flush()

    return show


def _reap(args: argparse.Namespace, state_dir: Path) -> int:
    """``reap``: this state dir's leftovers, or (``--owner``) a state dir's gone for good."""
    from .owner import owner_id

    config = agent.load_config(state_dir)
    result: dict[str, Any] = {"owner": args.owner or owner_id(state_dir)}
    reaped = actions.try_reap(config, state_dir, owner=args.owner)
    result["reaped"] = reaped or []
    if reaped is None:
        result["note"] = "another engine (the agent) runs this state dir: it reaps its own"
    _emit(result, args.format, sys.stdout)
    return EXIT_OK


def _logs(args: argparse.Namespace, state_dir: Path) -> int:
    """``logs``: a task's output; with --follow, until it ends (exit status: its outcome)."""
    from .actions.logs import follow_logs
    from .jobs.logs import Timestamps
    from .jobs.model import TaskState

    if args.task < 0 or args.tail < -1:
        raise UsageError("task and tail must not be negative")
    out = sys.stdout.buffer

    def write(data: bytes) -> None:
        out.write(data)
        out.flush()

    def say(line: str) -> None:
        sys.stderr.write(line + "\n")

    state = follow_logs(
        agent.load_config(state_dir),
        state_dir,
        args.job,
        args.task,
        "stderr" if args.stderr else "stdout",
        Timestamps(write) if args.timestamps else write,
        say,
        follow=args.follow,
        tail=args.tail,
    )
    return EXIT_TASKS_FAILED if state == TaskState.FAILED else EXIT_OK


def _configure_host(args: argparse.Namespace, state_dir: Path) -> int:
    from . import host
    from .lxdclient import PEM_MARK

    overrides = {
        name.replace("-", "_"): getattr(args, "opt_" + name.replace("-", "_"))
        for name, _kind, _default, _description in config_options()
        if getattr(args, "opt_" + name.replace("-", "_")) is not None
    }
    if overrides.get("lxd_client_key", "").lstrip().startswith(PEM_MARK):
        raise UsageError(
            "lxd-client-key: refusing PEM text on the command line (every local user can read "
            "a command line): pass the path of the key file instead"
        )
    if args.lxd_remote:
        from .lxdclient import LXDAccessError, lxc_remote

        if overrides.get("lxd_endpoint"):
            raise UsageError("lxd-remote: give either --lxd-remote or --lxd-endpoint, not both")
        try:
            remote = lxc_remote(args.lxd_remote)
        except LXDAccessError as err:
            raise UsageError(str(err)) from err
        overrides.update(
            lxd_endpoint=remote.url,
            lxd_client_cert=overrides.get("lxd_client_cert", remote.client_cert),
            lxd_client_key=overrides.get("lxd_client_key", remote.client_key),
            lxd_server_cert=overrides.get("lxd_server_cert", remote.server_cert),
        )
    try:
        config = HostConfig(**overrides)
    except ValueError as err:
        raise UsageError(str(err)) from err
    report = host.configure_host(config, dry_run=args.dry_run)
    _emit(report.to_dict(), args.format, sys.stdout)
    if not report.ok:
        for problem in report.problems:
            sys.stderr.write(f"problem: {problem}\n")
        return EXIT_ACTION_FAILED
    if not args.dry_run and host.save_config(config, state_dir):
        # An agent running on this state dir takes the new config before we return.
        outcome = agent.await_current(state_dir)
        if outcome == "reloaded":
            sys.stderr.write("job agent: now runs with the new config\n")
        elif outcome == "stale":
            sys.stderr.write("job agent: still runs with the previous config; see its log\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``container-compute``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    state_dir = args.state_dir or agent.default_state_dir()
    action = args.subcommand
    try:
        if action == "configure-host":
            return _configure_host(args, state_dir)
        if action == "reap":
            return _reap(args, state_dir)
        if action == "logs":
            return _logs(args, state_dir)
        params = params_from_args(action, args)
        config = agent.load_config(state_dir)
        progress = _progress_printer(sys.stderr)
        result = actions.run_action(action, params, config, state_dir, progress=progress)
        if progress is not None:
            sys.stderr.write("\n")
    except UsageError as err:
        parser.exit(EXIT_BAD_PARAMS, f"container-compute {action}: error: {err}\n")
    except actions.ActionError as err:
        sys.stderr.write(f"container-compute {action}: {err}\n")
        return EXIT_ACTION_FAILED
    _emit(result, args.format, sys.stdout)
    return exit_status(action, params, result)


def exit_status(action: str, params: Any, result: dict[str, Any]) -> int:
    """Return the exit status of a command that succeeded: the job's outcome after a wait."""
    waited = action in ("launch-job", "retry-job") and getattr(params, "wait", False)
    if action == "wait-job" or waited:
        return EXIT_FOR_STATE[result["state"]]
    return EXIT_OK


def console_main() -> None:
    """Console-script wrapper: exit with main()'s status."""
    sys.exit(main())


if __name__ == "__main__":
    console_main()
