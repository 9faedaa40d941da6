r"""The operator's guide as data: its console blocks, how shown output is compared, static checks.

Conventions of the guide (README.md and docs/*.md), read by tests/unit/test_guide_static.py
(no LXD) and tests/functional/test_guide.py (runs every command on the real LXD):

- A fenced block marked ``console`` holds commands that a test RUNS. Lines starting with ``$ ``
  are commands (a line ending with `` \\`` continues on the next one); the lines after a
  command, up to the next ``$ `` or the fence, are its shown output. A command ending with
  ``# exit N`` is expected to exit with N; otherwise with 0.
- A fenced block marked ``console-static`` holds commands that cannot run here (``juju
  deploy``, ``juju config``, ``conjure-up``, ``openstack``, ...). They show no output, and a
  test checks every charm, endpoint, option, value, action, parameter, path and unit name they
  mention against metadata.yaml, config.yaml, actions.yaml, the spell and the code.
- A command the harness does not know how to run or check fails the tests.

Shown output is compared with the real output after these normalisations, and only these:

- job ids: the first time a shown job id meets a real one (same position in the output) they
  are paired; from then on the shown id stands for the real one, in later commands too;
- the test's own state directory, LXD project/pool and copies of /etc and /proc/sys are
  written as ``/var/lib/container-compute``, ``container-compute``, ``/etc`` and ``/proc/sys``;
- timestamps (ISO 8601 and the joblog's epoch seconds), the joblog's JobRuntime, durations
  in seconds (``5s``, any ``...-seconds`` key), SHA-256 fingerprints, an image's
  ``size-bytes`` and ``lxd-version`` are compared as ``<time>``, ``<seconds>``,
  ``<sha256>``, ``<bytes>`` and ``<version>``;
- ``(kernel <release>)`` stands for this machine's kernel release;
- a warm worker's name (``cc-<job id>-w<random>``) is compared as ``cc-<job id>-w<worker>``;
- a shown line ``...`` stands for any number of lines (to leave out what does not matter);
- trailing blanks and trailing empty lines are ignored.
"""

import dataclasses
import re
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
RUNNABLE = "console"
STATIC = "console-static"
OUR_APP = "worker"
OUR_CHARM_FILE_RE = re.compile(r"^\./container-compute_[a-z0-9]+\.charm$")
LOCAL_CHARM_RE = re.compile(r"^\./[a-z0-9-]+_[a-z0-9]+\.charm$")
EXIT_RE = re.compile(r"\s+# exit (\d+)$")
FENCE_RE = re.compile(r"^(\s*)```(\S*)\s*$")
JOB_ID_RE = re.compile(r"\bj[0-9a-f]{8}\b")
SESSION_FRESH = "<!-- guide-session: fresh -->"
PLACEHOLDER = "<!-- idmap-figures -->"
ELLIPSIS = "..."

# (pattern, replacement) applied to shown and real output alike, in this order.
NORMALISATIONS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\b[0-9a-f]{64}\b"), "<sha256>"),
    (
        re.compile(r"\b\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:?\d\d)?"),
        "<time>",
    ),
    (re.compile(r"\b1\d{9}\.\d+\b"), "<time>"),
    (re.compile(r"^(\d+\t[^\t]*\t<time>\t)[0-9.]+\t"), r"\1<seconds>\t"),
    (re.compile(r"\b\d+(\.\d+)?s\b"), "<seconds>"),
    (re.compile(r"(seconds\"?:\s*\"?)\d+(\.\d+)?"), r"\1<seconds>"),
    (re.compile(r"(size-bytes\"?:\s*\"?)\d+"), r"\1<bytes>"),
    (re.compile(r"(peak-bytes\"?:\s*\"?)\d+"), r"\1<bytes>"),
    (re.compile(r"(cpu-efficiency\"?:\s*\"?)[0-9.]+%"), r"\1<percent>"),
    (re.compile(r"(cpus-per-task\"?:\s*\"?)\d+"), r"\1<cpus>"),
    (re.compile(r"\(kernel [^)]+\)"), "(kernel <release>)"),
    (re.compile(r"(lxd-version\"?:\s*\"?)[0-9][0-9.]*"), r"\1<version>"),
    (re.compile(r"\b(cc-j[0-9a-f]{8})-w[0-9a-f]+\b"), r"\1-w<worker>"),
]


class GuideError(Exception):
    """A guide page that does not follow the conventions above, or states something false."""


@dataclasses.dataclass
class Command:
    """One ``$ `` line of a console block, with what the guide shows after it."""

    page: Path
    line: int
    text: str
    static: bool
    expected_exit: int = 0
    shown: list[str] = dataclasses.field(default_factory=list)
    end_line: int = 0

    @property
    def where(self) -> str:
        """``page:line`` for messages."""
        return f"{self.page.relative_to(REPO)}:{self.line}"

    def argv(self) -> list[str]:
        """The command's words, as the shell splits them."""
        return shlex.split(self.text)


@dataclasses.dataclass
class Block:
    """A fenced block of a guide page: its language, first line and commands."""

    page: Path
    line: int
    lang: str
    body: list[str]
    commands: list[Command] = dataclasses.field(default_factory=list)


def guide_pages(repo: Path = REPO) -> list[Path]:
    """README.md, then docs/*.md in name order."""
    return [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]


def fenced_blocks(page: Path) -> list[Block]:
    """Every fenced block of a page, with its language (empty when unmarked).

    Raises:
        GuideError: a fence that is never closed.
    """
    blocks: list[Block] = []
    current: Block | None = None
    for number, line in enumerate(page.read_text().splitlines(), start=1):
        match = FENCE_RE.match(line)
        if current is None:
            if match:
                current = Block(page, number, match.group(2), [])
        elif match and not match.group(2):
            blocks.append(current)
            current = None
        else:
            current.body.append(line)
    if current is not None:
        raise GuideError(f"{page.relative_to(REPO)}:{current.line}: fence never closed")
    return blocks


def parse_block(block: Block) -> Block:
    """Fill ``block.commands`` from a console or console-static block.

    Raises:
        GuideError: text before the first command, a dangling continuation, or output
            shown after a static command.
    """
    static = block.lang == STATIC
    commands: list[Command] = []
    pending: Command | None = None
    for offset, line in enumerate(block.body, start=1):
        number = block.line + offset
        if pending is not None:
            pending.text = pending.text[:-1].rstrip() + " " + line.strip()
            pending.end_line = number
            pending = _finish(pending)
        elif line.startswith("$ "):
            command = Command(block.page, number, line[2:].rstrip(), static, end_line=number)
            commands.append(command)
            pending = _finish(command)
        elif commands:
            commands[-1].shown.append(line.rstrip())
        elif line.strip():
            raise GuideError(f"{block.page.relative_to(REPO)}:{number}: not a '$ ' line")
    if pending is not None:
        raise GuideError(f"{pending.where}: the continued command never ends")
    if not commands:
        raise GuideError(f"{block.page.relative_to(REPO)}:{block.line}: a block without '$ '")
    for command in commands:
        while command.shown and not command.shown[-1]:
            command.shown.pop()
        if static and command.shown:
            raise GuideError(f"{command.where}: a console-static command shows no output")
    block.commands = commands
    return block


def _finish(command: Command) -> Command | None:
    """Read ``# exit N`` of a complete command; return the command while it continues."""
    if command.text.endswith("\\"):
        return command
    match = EXIT_RE.search(command.text)
    if match:
        command.expected_exit = int(match.group(1))
        command.text = command.text[: match.start()].rstrip()
    try:
        command.argv()
    except ValueError as err:
        raise GuideError(f"{command.where}: cannot be split like a shell would: {err}") from err
    return None


def console_blocks(page: Path) -> list[Block]:
    """The parsed console and console-static blocks of a page."""
    return [parse_block(b) for b in fenced_blocks(page) if b.lang in (RUNNABLE, STATIC)]


def program(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """Split leading ``NAME=value`` environment assignments from the command itself."""
    env: dict[str, str] = {}
    while argv and re.match(r"^[A-Z_][A-Z0-9_]*=", argv[0]):
        name, _, value = argv[0].partition("=")
        env[name] = value
        argv = argv[1:]
    return env, argv


# Comparison of shown and real output.


def normalise(lines: list[str]) -> list[str]:
    """Apply NORMALISATIONS to every line; drop trailing blanks and empty lines."""
    result = []
    for line in lines:
        for pattern, replacement in NORMALISATIONS:
            line = pattern.sub(replacement, line)
        result.append(line.rstrip())
    while result and not result[-1]:
        result.pop()
    return result


def lines_match(shown: list[str], real: list[str]) -> bool:
    """Equal line by line, where a shown line ``...`` stands for any number of real lines."""
    if not shown:
        return not real
    if shown[0] == ELLIPSIS:
        return any(lines_match(shown[1:], real[skip:]) for skip in range(len(real) + 1))
    return bool(real) and shown[0] == real[0] and lines_match(shown[1:], real[1:])


def unique_ids(lines: list[str]) -> list[str]:
    """Job ids in order of first appearance."""
    seen: list[str] = []
    for line in lines:
        for found in JOB_ID_RE.findall(line):
            if found not in seen:
                seen.append(found)
    return seen


def compare(shown: list[str], real: list[str], ids: dict[str, str]) -> str | None:
    """Compare shown and real output; learn job ids into ``ids`` (shown -> real).

    Returns None when they agree, else a message with both texts.
    """
    shown_ids, real_ids = unique_ids(shown), unique_ids(real)
    problem = None
    if len(shown_ids) != len(real_ids):
        problem = f"shows {len(shown_ids)} job ids, the real output has {len(real_ids)}"
    learned = dict(ids)
    for shown_id, real_id in zip(shown_ids, real_ids, strict=False):
        if learned.get(shown_id, real_id) != real_id:
            problem = f"{shown_id} stands for {learned[shown_id]}, here it is {real_id}"
        learned[shown_id] = real_id
    back = {real_id: shown_id for shown_id, real_id in learned.items()}
    real_as_shown = [JOB_ID_RE.sub(lambda m: back.get(m.group(0), m.group(0)), x) for x in real]
    if problem is None and not lines_match(normalise(shown), normalise(real_as_shown)):
        problem = "the output differs"
    if problem is not None:
        return "\n".join(
            [problem, "--- shown:", *shown, "--- real (ids as shown):", *real_as_shown]
        )
    ids.update(learned)
    return None


def with_real_ids(text: str, ids: dict[str, str]) -> str:
    """Replace every job id the guide shows by the real one it stands for."""
    return JOB_ID_RE.sub(lambda m: ids.get(m.group(0), m.group(0)), text)


# Juju's view of action results.


def juju_results(results: dict[str, Any]) -> dict[str, Any]:
    """Results as Juju keeps them: flattened by ops to dotted keys, every value a string."""
    from ops.model import _format_action_result_dict  # the flattening ops does for action-set

    nested: dict[str, Any] = {}
    for key, value in _format_action_result_dict(results).items():
        *parents, leaf = key.split(".")
        node = nested
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = str(value)
    return nested


class _JujuDumper(yaml.SafeDumper):
    """Quote as Go's YAML does: strings that would read as another type get double quotes."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = None
    if "\n" in value:
        style = "|"
    elif value and not isinstance(yaml.safe_load(value), str):
        style = '"'
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_JujuDumper.add_representer(str, _represent_str)


def juju_yaml(results: dict[str, Any]) -> list[str]:
    """The lines ``juju run`` prints for an action's results (keys sorted)."""
    text = yaml.dump(
        juju_results(results),
        Dumper=_JujuDumper,
        sort_keys=True,
        default_flow_style=False,
        width=1 << 20,
    )
    return text.rstrip("\n").splitlines()


def juju_action_params(words: list[str]) -> dict[str, Any]:
    """``k=v`` words of ``juju run`` as Juju reads them (each value as YAML).

    Raises:
        GuideError: a word that is not ``key=value``.
    """
    params: dict[str, Any] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep:
            raise GuideError(f"juju run: {word!r} is not key=value")
        params[key] = yaml.safe_load(value) if value else ""
    return params


# Static checks of commands that cannot run here.


def load_yaml(name: str) -> Any:
    """A YAML file of the repository."""
    return yaml.safe_load((REPO / name).read_text())


SPELL_DIR = REPO / "spell" / "container-compute-novalxd"


def bundle() -> dict[str, Any]:
    """The spell's bundle.yaml."""
    return yaml.safe_load((SPELL_DIR / "bundle.yaml").read_text())


def check_action(action: str, words: list[str]) -> None:
    """An action and its ``k=v`` params exist in actions.yaml with the right types.

    Raises:
        GuideError: naming what is wrong.
    """
    spec = load_yaml("actions.yaml").get(action)
    if spec is None:
        raise GuideError(f"no action {action!r} in actions.yaml")
    params = juju_action_params(words)
    schema = spec.get("params", {})
    kinds = {"string": str, "integer": int, "boolean": bool, "array": list}
    for key, value in params.items():
        if key not in schema:
            raise GuideError(f"{action}: no parameter {key!r}")
        kind = kinds[schema[key]["type"]]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise GuideError(f"{action}: {key}={value!r} is not a {schema[key]['type']}")
        if "enum" in schema[key] and value not in schema[key]["enum"]:
            raise GuideError(f"{action}: {key}={value!r} is not one of {schema[key]['enum']}")
    for key in spec.get("required", []):
        if key not in params:
            raise GuideError(f"{action}: {key} is required")
    from container_compute.actions import ACTION_PARAMS

    try:
        ACTION_PARAMS[action][0](**{k.replace("-", "_"): v for k, v in params.items()})
    except (TypeError, ValueError) as err:
        raise GuideError(f"{action}: {err}") from err


def check_config(pairs: list[str]) -> None:
    """``key=value`` words of ``juju config``: the keys exist, HostConfig takes the values.

    Raises:
        GuideError: naming the option.
    """
    from container_compute.config import HostConfig

    options = load_yaml("config.yaml")["options"]
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if key not in options:
            raise GuideError(f"no config option {key!r} in config.yaml")
        if not sep:
            continue
        kind = options[key]["type"]
        if kind == "int":
            values[key] = int(text)
        elif kind == "boolean":
            if text not in ("true", "false"):
                raise GuideError(f"{key}: {text!r} is not true or false")
            values[key] = text == "true"
        elif text.startswith("secret:") and key == "lxd-client-key":
            values[key] = "/var/lib/container-compute/lxd-client.key"  # the charm writes it
        else:
            values[key] = text
    try:
        HostConfig(**{k.replace("-", "_"): v for k, v in values.items()})
    except ValueError as err:
        raise GuideError(str(err)) from err


def _endpoint(word: str, apps: dict[str, str]) -> tuple[str, str]:
    app, sep, endpoint = word.partition(":")
    if app not in apps:
        raise GuideError(f"juju integrate: no application {app!r} was deployed")
    return app, endpoint if sep else ""


def _our_endpoints() -> dict[str, str]:
    meta = load_yaml("metadata.yaml")
    return {
        name: spec["interface"]
        for section in ("requires", "provides", "peers")
        for name, spec in meta.get(section, {}).items()
    }


# Observability charms the guide relates to: their interface and endpoint towards us.
COS_CHARMS = {"grafana-agent": ("cos_agent", "cos-agent")}


def _check_deploy(rest: list[str], apps: dict[str, str]) -> None:
    charm, app = rest[0], rest[1] if len(rest) > 1 and not rest[1].startswith("-") else ""
    known = {spec["charm"] for spec in bundle()["applications"].values()} | {"ubuntu"}
    known |= set(COS_CHARMS)
    if OUR_CHARM_FILE_RE.match(charm) or charm == "container-compute":
        charm = "container-compute"
    elif LOCAL_CHARM_RE.match(charm):
        charm = "local"  # the reader's own charm: only our side of its relations is checked
    elif charm not in known:
        raise GuideError(f"juju deploy: unknown charm {charm!r}")
    apps[app or charm] = charm


def _check_integrate(rest: list[str], apps: dict[str, str]) -> None:
    ends = [_endpoint(word, apps) for word in rest]
    if len(ends) != 2:
        raise GuideError("juju integrate takes two endpoints")
    ours = _our_endpoints()
    relations = {frozenset(pair) for pair in bundle().get("relations", [])}
    for (app, endpoint), (other, other_endpoint) in (ends, ends[::-1]):
        if apps[app] != "container-compute":
            continue
        endpoint = endpoint or other_endpoint  # juju picks the endpoint of the same name
        if endpoint not in ours:
            raise GuideError(f"juju integrate: {app} has no endpoint {endpoint!r}")
        if apps[other] in COS_CHARMS:
            interface, their_endpoint = COS_CHARMS[apps[other]]
            if ours[endpoint] != interface or other_endpoint not in ("", their_endpoint):
                raise GuideError(f"juju integrate: {other} takes {interface} on {their_endpoint}")
            continue
        pair = frozenset((f"{app}:{endpoint}", f"{other}:{other_endpoint}"))
        if other_endpoint != "juju-info" and apps[other] != "local" and pair not in relations:
            raise GuideError(f"juju integrate: {sorted(pair)} is not in the bundle")


def _check_config(rest: list[str], _apps: dict[str, str]) -> None:
    if rest[0] != OUR_APP:
        raise GuideError(f"juju config: {rest[0]!r} is not container-compute")
    check_config(rest[1:])


def _check_run(rest: list[str], _apps: dict[str, str]) -> None:
    if not rest[0].startswith(f"{OUR_APP}/"):
        raise GuideError(f"juju run: {rest[0]!r} is not a unit of {OUR_APP}")
    check_action(rest[1], rest[2:])


def _check_add_secret(rest: list[str], _apps: dict[str, str]) -> None:
    if not all(word.split("#")[0].split("=")[0] == "key" for word in rest[1:]):
        raise GuideError("juju add-secret: the charm reads the secret's 'key' field")


def _check_grant_secret(rest: list[str], _apps: dict[str, str]) -> None:
    if rest[1] != OUR_APP:
        raise GuideError(f"juju grant-secret: {rest[1]!r} is not {OUR_APP}")


JUJU_CHECKS: dict[str, Callable[[list[str], dict[str, str]], None]] = {
    "deploy": _check_deploy,
    "integrate": _check_integrate,
    "config": _check_config,
    "run": _check_run,
    "add-secret": _check_add_secret,
    "grant-secret": _check_grant_secret,
}


def check_juju(argv: list[str], apps: dict[str, str]) -> None:
    """``juju deploy|integrate|config|run|add-secret|grant-secret``.

    ``apps`` maps application names to charms; deploy adds to it.

    Raises:
        GuideError: naming what is wrong.
    """
    check = JUJU_CHECKS.get(argv[1])
    if check is None:
        raise GuideError(f"juju {argv[1]}: the guide harness cannot check it")
    check(argv[2:], apps)


def check_conjure_up(argv: list[str]) -> None:
    """``conjure-up <spell dir> [cloud]``: the spell exists and allows the cloud."""
    spell = REPO / argv[1]
    if not (spell / "metadata.yaml").is_file():
        raise GuideError(f"conjure-up: {argv[1]} is not a spell directory")
    clouds = yaml.safe_load((spell / "metadata.yaml").read_text()).get("cloud-whitelist", [])
    if len(argv) > 2 and argv[2] not in clouds:
        raise GuideError(f"conjure-up: cloud {argv[2]!r} is not in the spell's {clouds}")


OPENSTACK_SUBCOMMANDS = {
    ("server", "list"),
    ("server", "show"),
    ("console", "log", "show"),
    ("flavor", "show"),
    ("image", "list"),
}


def check_openstack(env: dict[str, str], argv: list[str]) -> None:
    """``openstack`` with the clouds.yaml the charm writes and its cloud name."""
    from container_compute.constants import STATE_DIR
    from container_compute.identity import CLOUD_NAME, CLOUDS_FILE_NAME

    clouds = env.get("OS_CLIENT_CONFIG_FILE")
    if clouds is not None and clouds != str(STATE_DIR / CLOUDS_FILE_NAME):
        raise GuideError(f"openstack: the charm writes {STATE_DIR / CLOUDS_FILE_NAME}")
    words = list(argv[1:])
    if "--os-cloud" in words:
        at = words.index("--os-cloud")
        if words[at + 1] != CLOUD_NAME:
            raise GuideError(f"openstack: the cloud is named {CLOUD_NAME}")
        del words[at : at + 2]
    if not any(tuple(words[: len(s)]) == s for s in OPENSTACK_SUBCOMMANDS):
        raise GuideError(f"openstack {' '.join(words)}: not a command the guide may show")


def check_service(argv: list[str]) -> None:
    """``journalctl -u NAME`` / ``systemctl status|restart NAME``: the agent's unit."""
    from container_compute.constants import AGENT_UNIT_NAME

    name = argv[argv.index("-u") + 1] if argv[0] == "journalctl" else argv[-1]
    if name not in (AGENT_UNIT_NAME, AGENT_UNIT_NAME.removesuffix(".service")):
        raise GuideError(f"{argv[0]}: the agent's unit is {AGENT_UNIT_NAME}")
    if argv[0] == "systemctl" and argv[1] not in ("status", "restart", "start"):
        raise GuideError(f"systemctl {argv[1]}: not a command the guide may show")


def check_lxc(argv: list[str]) -> None:
    """``lxc ... --project container-compute`` naming our profile, pool or project."""
    from container_compute.config import HostConfig
    from container_compute.constants import WORKER_PROFILE

    defaults = HostConfig()
    allowed = {
        ("list",): None,
        ("profile", "show"): WORKER_PROFILE,
        ("storage", "show"): defaults.storage_pool,
        ("storage", "info"): defaults.storage_pool,
        ("project", "show"): defaults.lxd_project,
        ("image", "list"): None,
        ("config", "trust", "add"): None,
        ("remote", "add"): None,
    }
    words = [w for w in argv[1:] if not w.startswith("--")]
    for prefix, name in allowed.items():
        if tuple(words[: len(prefix)]) == prefix:
            if name is not None and words[len(prefix)] != name:
                raise GuideError(f"lxc {' '.join(prefix)}: ours is named {name}")
            if "--project" in argv and argv[argv.index("--project") + 1] != defaults.lxd_project:
                raise GuideError(f"lxc: the project is {defaults.lxd_project}")
            return
    raise GuideError(f"lxc {' '.join(words)}: not a command the guide may show")


def check_charmcraft(argv: list[str]) -> None:
    """``charmcraft fetch-lib charms.container_compute.v0.compute_jobs`` (a file we ship)."""
    if argv[1] != "fetch-lib":
        raise GuideError(f"charmcraft {argv[1]}: not a command the guide may show")
    path = REPO / "lib" / Path(*argv[2].split(".")).with_suffix(".py")
    if not path.is_file():
        raise GuideError(f"charmcraft fetch-lib: no {path.relative_to(REPO)}")


def check_skopeo(argv: list[str]) -> None:
    """``skopeo copy SOURCE DEST``, DEST a source build-worker-image takes (a file or layout)."""
    from container_compute.host.oci import parse_source

    if argv[1] != "copy" or len(argv) != 4:
        raise GuideError("skopeo: only `skopeo copy SOURCE DEST` may be shown")
    destination = parse_source(argv[3])
    if destination is None or destination.transport == "docker":
        raise GuideError(f"skopeo copy: {argv[3]} is not a local source build-worker-image takes")


def check_repo_tool(argv: list[str]) -> None:
    """``tox -e ENVS``, ``scripts/NAME``, ``python -m MODULE`` of this repository."""
    if argv[0] == "tox":
        envs = argv[argv.index("-e") + 1].split(",")
        known = set(re.findall(r"^\[testenv:([a-z-]+)\]", (REPO / "tox.ini").read_text(), re.M))
        missing = set(envs) - known
        if missing:
            raise GuideError(f"tox: no env {sorted(missing)} in tox.ini")
    elif argv[0].startswith("scripts/"):
        script = REPO / argv[0]
        if not script.is_file() or not script.stat().st_mode & 0o111:
            raise GuideError(f"{argv[0]}: no such executable script")
    elif argv[:2] == ["python", "-m"]:
        module = REPO / "src" / Path(*argv[2].split(".")).with_suffix(".py")
        if not module.is_file():
            raise GuideError(f"python -m {argv[2]}: no such module in src/")
    else:
        raise GuideError(f"{argv[0]}: not a command of this repository")


def check_cli(argv: list[str]) -> None:
    """``container-compute ...``: the real argument parser takes it, the params class too.

    Raises:
        GuideError: with argparse's or the params class's message.
    """
    import contextlib
    import io

    from container_compute import cli

    parser = cli.build_parser()
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            args = parser.parse_args(argv[1:])
    except SystemExit as err:
        raise GuideError(errors.getvalue().strip().splitlines()[-1]) from err
    if args.subcommand not in ("configure-host", "reap", "logs"):
        try:
            cli.params_from_args(args.subcommand, args)
        except cli.UsageError as err:
            raise GuideError(str(err)) from err


SHELL_TOOLS = ("ls", "cat", "head", "tail")


def runnable_kind(argv: list[str]) -> str:
    """How the functional harness runs a console command: ``cli``, ``juju`` or ``shell``.

    Raises:
        GuideError: for a command it cannot run (it belongs in a console-static block).
    """
    if argv[0] == "container-compute":
        return "cli"
    if argv[:3] == ["juju", "run", f"{OUR_APP}/0"] and len(argv) > 3:
        return "juju"
    if argv[0] in SHELL_TOOLS:
        return "shell"
    raise GuideError(f"the harness cannot run {' '.join(argv[:3])!r}: use console-static")


def check_static(command: Command, apps: dict[str, str]) -> None:
    """Check a console-static command against the repository.

    Raises:
        GuideError: with the page and line.
    """
    env, argv = program(command.argv())
    checks: dict[str, Callable[[], None]] = {
        "juju": lambda: check_juju(argv, apps),
        "container-compute": lambda: check_cli(argv),
        "conjure-up": lambda: check_conjure_up(argv),
        "openstack": lambda: check_openstack(env, argv),
        "journalctl": lambda: check_service(argv),
        "systemctl": lambda: check_service(argv),
        "lxc": lambda: check_lxc(argv),
        "charmcraft": lambda: check_charmcraft(argv),
        "tox": lambda: check_repo_tool(argv),
        "python": lambda: check_repo_tool(argv),
        "skopeo": lambda: check_skopeo(argv),
    }
    name = "scripts/" if argv[0].startswith("scripts/") else argv[0]
    check = checks.get(name, lambda: check_repo_tool(argv))
    try:
        check()
    except (GuideError, IndexError, ValueError) as err:
        raise GuideError(f"{command.where}: {command.text}: {err}") from err


def static_apps() -> dict[str, str]:
    """Applications a static block may name before deploying them: the bundle's."""
    apps = {name: spec["charm"] for name, spec in bundle()["applications"].items()}
    apps[OUR_APP] = "container-compute"
    return apps


def all_commands(pages: list[Path] | None = None) -> Iterator[Command]:
    """Every command of every console block of the guide."""
    for page in pages or guide_pages():
        for block in console_blocks(page):
            yield from block.commands
