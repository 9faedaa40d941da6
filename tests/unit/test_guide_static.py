"""The operator's guide, checked without LXD (tests/functional/test_guide.py runs it).

Its blocks parse; it covers every action, option and exit code; its static commands are true
of the charm; its links resolve; its example requirer charm runs; the harness can fail.
"""

import dataclasses
import json
import re
import types
from pathlib import Path

import pytest
import yaml
from ops import testing

from container_compute import cli
from container_compute.actions import ACTION_PARAMS

from .. import guide_doc
from ..guide_doc import REPO, Command, GuideError

PAGES = guide_doc.guide_pages()
DOCS = REPO / "docs"
PAGE_IDS = [str(p.relative_to(REPO)) for p in PAGES]
EXPECTED_PAGES = {
    "deploying.md",
    "actions.md",
    "cli.md",
    "results.md",
    "compute-jobs-library.md",
    "spell.md",
    "troubleshooting.md",
    "observability.md",
}
QUICK_START = ["scripts/quickstart", "scripts/test"]
# Programs whose lines must be in a console or console-static block, never in a plain one.
COMMAND_WORDS = re.compile(
    r"^\s*(\$ )?(container-compute|juju|tox|scripts/|lxc|openstack|conjure-up|charmcraft)\b"
)


def commands_of(page: Path) -> list[Command]:
    return [c for b in guide_doc.console_blocks(page) for c in b.commands]


def test_the_guide_has_its_pages() -> None:
    assert {p.name for p in DOCS.glob("*.md")} >= EXPECTED_PAGES


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_every_console_block_parses_and_has_commands(page: Path) -> None:
    for block in guide_doc.console_blocks(page):
        assert block.commands, block.line


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_no_command_hides_in_an_unchecked_block(page: Path) -> None:
    for block in guide_doc.fenced_blocks(page):
        if block.lang in (guide_doc.RUNNABLE, guide_doc.STATIC) or block.body == QUICK_START:
            continue
        if block.lang in ("yaml", "python"):
            continue  # checked below (compute-jobs library page)
        hidden = [line for line in block.body if COMMAND_WORDS.match(line)]
        assert not hidden, f"{page.name}:{block.line}: commands outside console blocks: {hidden}"


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_every_static_command_is_true_of_the_charm(page: Path) -> None:
    apps = guide_doc.static_apps()
    for block in guide_doc.console_blocks(page):
        for command in block.commands:
            if command.static:
                guide_doc.check_static(command, apps)


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_every_runnable_command_is_one_the_harness_runs(page: Path) -> None:
    for command in commands_of(page):
        if command.static:
            continue
        _env, argv = guide_doc.program(command.argv())
        kind = guide_doc.runnable_kind(argv)
        if kind == "juju":
            guide_doc.check_action(argv[3], argv[4:])
        elif kind == "cli" and command.expected_exit != 2:
            guide_doc.check_cli(argv)


def test_the_quick_start_block_is_kept_and_true() -> None:
    blocks = [b for b in guide_doc.fenced_blocks(REPO / "README.md") if b.body == QUICK_START]
    assert len(blocks) == 1
    quickstart = REPO / "scripts" / "quickstart"
    assert quickstart.is_file() and quickstart.stat().st_mode & 0o111
    guide_doc.check_repo_tool(QUICK_START[1].split("#")[0].split())


def test_ci_runs_exactly_the_readme_test_command() -> None:
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    commands = [line for line in ci if line.strip() and not line.lstrip().startswith("#")]
    test_command = QUICK_START[1].split("#")[0].strip()
    assert commands[-1] == test_command, commands
    assert all(c.startswith(("set ", "cd ")) for c in commands[:-1]), commands


def test_the_test_script_knows_every_test_environment_of_tox() -> None:
    script = (REPO / "scripts" / "test").read_text()
    listed = set(re.search(r"^all=\(([^)]*)\)", script, re.M).group(1).split())  # type: ignore[union-attr]
    tox = set(re.findall(r"^\[testenv:([a-z-]+)\]", (REPO / "tox.ini").read_text(), re.M))
    assert listed == tox - {"format", "bench"}


def test_the_options_table_is_untouched() -> None:
    from container_compute import contract

    readme = (REPO / "README.md").read_text()
    begin = readme.index("<!-- options:begin")
    table = readme[readme.index("\n", begin) + 1 : readme.index("<!-- options:end -->")]
    assert table.strip() == contract.render_options_table().strip()


def test_every_action_has_an_example_that_runs_and_a_section() -> None:
    page = DOCS / "actions.md"
    text = page.read_text()
    ran = {
        c.argv()[3]
        for c in commands_of(page)
        if not c.static and c.argv()[:3] == ["juju", "run", "worker/0"]
    }
    actions = set(guide_doc.load_yaml("actions.yaml"))
    assert actions == set(ACTION_PARAMS)
    assert ran == actions
    for action in actions:
        assert f"\n## {action}\n" in text


def test_every_action_is_also_run_as_a_subcommand() -> None:
    ran = {
        c.argv()[1]
        for page in PAGES
        for c in commands_of(page)
        if not c.static and c.argv()[0] == "container-compute"
    }
    assert ran >= set(ACTION_PARAMS) | {"configure-host"}


def test_every_config_option_is_in_the_guide_and_linked() -> None:
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("<!-- options:begin") : readme.index("<!-- options:end -->")]
    for option in guide_doc.load_yaml("config.yaml")["options"]:
        assert f"| `{option}` |" in table, option
    for page in DOCS.glob("*.md"):
        if page.name in ("compute-jobs-library.md",):
            continue
        assert "../README.md#configuration" in page.read_text(), page.name


def test_every_exit_status_is_documented_and_shown() -> None:
    codes = {
        value
        for name, value in vars(cli).items()
        if name.startswith("EXIT_") and isinstance(value, int)
    }
    assert codes == set(range(6))
    text = (DOCS / "cli.md").read_text()
    rows = {int(n) for n in re.findall(r"^\| (\d+) \| ", text, re.M)}
    assert rows == codes
    shown = {c.expected_exit for page in PAGES for c in commands_of(page) if not c.static}
    assert shown >= codes
    assert set(cli.EXIT_FOR_STATE.values()) <= codes


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = page.read_text()
    in_fence = False
    anchors = set()
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        elif not in_fence and line.startswith("#"):
            anchors.add(_slug(line.lstrip("#")))
    return anchors


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_links_between_guide_files_resolve(page: Path) -> None:
    for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]+))?\)", page.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path = (page.parent / target).resolve() if target else page
        assert path.exists(), f"{page.name}: link to {target} does not resolve"
        if anchor:
            assert path.suffix == ".md" and anchor in _anchors(path), (
                f"{page.name}: no heading #{anchor} in {path.name}"
            )


def test_troubleshooting_covers_its_topics_and_keeps_the_idmap_placeholder() -> None:
    anchors = _anchors(DOCS / "troubleshooting.md")
    for topic in (
        "kernel-modules",
        "changing-the-storage-driver",
        "no-image-server",
        "the-agent-is-down",
        "nova-console-log-limits",
        "idmap-isolation",
    ):
        assert topic in anchors
    assert (DOCS / "troubleshooting.md").read_text().count(guide_doc.PLACEHOLDER) == 1


def test_the_spell_page_names_real_steps_and_phases() -> None:
    text = (DOCS / "spell.md").read_text()
    rows = re.findall(r"^\| `(\d\d_[a-z-]+)` \| ([a-z-]+) \|", text, re.M)
    steps = sorted(p.name for p in (guide_doc.SPELL_DIR / "steps").iterdir())
    assert [name for name, _ in rows] == steps
    for name, phase in rows:
        assert (guide_doc.SPELL_DIR / "steps" / name / phase).is_file(), (name, phase)
    whitelist = yaml.safe_load((guide_doc.SPELL_DIR / "metadata.yaml").read_text())
    for option in whitelist["options-whitelist"]["worker"]:
        assert f"`{option}`" in text


def _library_page_blocks() -> tuple[dict, dict, str]:
    blocks = guide_doc.fenced_blocks(DOCS / "compute-jobs-library.md")
    yamls = [yaml.safe_load("\n".join(b.body)) for b in blocks if b.lang == "yaml"]
    (python,) = ["\n".join(b.body) for b in blocks if b.lang == "python"]
    (requires,) = [y for y in yamls if "requires" in y]
    (actions,) = [y for y in yamls if "requires" not in y]
    return requires, actions, python


def test_the_requirer_charm_of_the_library_page_runs() -> None:
    requires, actions, source = _library_page_blocks()
    module = types.ModuleType("portal_charm")
    exec(compile(source, "docs/compute-jobs-library.md", "exec"), module.__dict__)
    assert requires["requires"]["compute-jobs"]["interface"] == "compute-jobs"
    meta = {"name": "portal", **requires}
    context = testing.Context(module.PortalCharm, meta=meta, actions=actions)
    relation = testing.Relation("compute-jobs", remote_app_name="worker")
    state = testing.State(leader=True, relations={relation})
    state = context.run(context.on.action("sweep", params={"id": "sweep-1"}), state)
    assert context.action_results == {"submitted": "sweep-1"}
    request = json.loads(state.get_relation(relation.id).local_app_data["requests"])
    assert request["sweep-1"]["tasks"] == 64

    local = state.get_relation(relation.id).local_app_data
    failed = {"job": "j1", "state": "failed", "failed-indexes": "3"}
    rejected = {"error": "tasks: -1 is not between 0 and 100000"}
    for jobs, status in (
        ({"sweep-1": failed}, testing.ActiveStatus("sweep-1: failed (3 failed)")),
        (
            {"sweep-1": failed, "sweep-2": rejected},  # heard in id order: rejected last
            testing.BlockedStatus("sweep-2: tasks: -1 is not between 0 and 100000"),
        ),
    ):
        published = dataclasses.replace(
            relation, local_app_data=local, remote_app_data={"jobs": json.dumps(jobs)}
        )
        out = context.run(
            context.on.relation_changed(published), testing.State(relations={published})
        )
        assert out.unit_status == status


# The harness itself can fail: each of these must be caught.


def _block(tmp_path: Path, body: str, lang: str = "console") -> guide_doc.Block:
    page = REPO / "docs" / "_never_written.md"
    return guide_doc.Block(page, 1, lang, body.splitlines())


@pytest.mark.parametrize(
    "body",
    [
        "text before a command\n$ container-compute list-jobs",
        "$ container-compute launch-job -- sh -c 'unterminated",
        "$ container-compute list-jobs \\",
        "",
    ],
)
def test_a_malformed_console_block_is_refused(tmp_path: Path, body: str) -> None:
    with pytest.raises(GuideError):
        guide_doc.parse_block(_block(tmp_path, body))


def test_output_after_a_static_command_is_refused(tmp_path: Path) -> None:
    with pytest.raises(GuideError):
        guide_doc.parse_block(
            _block(tmp_path, "$ juju config worker\nsome output", "console-static")
        )


def test_exit_codes_and_continuations_are_read(tmp_path: Path) -> None:
    block = guide_doc.parse_block(
        _block(tmp_path, "$ container-compute wait-job \\\n    --job j1  # exit 4\nstate: x\n")
    )
    (command,) = block.commands
    assert command.argv() == ["container-compute", "wait-job", "--job", "j1"]
    assert command.expected_exit == 4 and command.shown == ["state: x"]


@pytest.mark.parametrize(
    "text",
    [
        "juju config worker no-such-option=1",
        "juju config worker max-parallel-workers=many",
        "juju config worker max-parallel-workers=5000",
        "juju config worker worker-privileged=yes",
        "juju run worker/0 no-such-action",
        "juju run worker/0 launch-job tasks=4",
        "juju run worker/0 launch-job command=x tasks=four",
        "juju run worker/0 list-jobs state=sleeping",
        "juju integrate worker:no-such-endpoint nova-compute:lxd",
        "juju integrate worker:lxd keystone:identity-credentials",
        "juju deploy no-such-charm",
        "conjure-up ./spell/no-such-spell localhost",
        "conjure-up ./spell/container-compute-novalxd aws",
        "openstack --os-cloud other server list",
        "journalctl -u container-compute",
        "lxc profile show default --project container-compute",
        "charmcraft fetch-lib charms.container_compute.v0.no_such_lib",
        "tox -e no-such-env",
        "container-compute launch-job --no-such-flag",
        "container-compute launch-job --tasks 2",
        "rm -rf /",
    ],
)
def test_a_false_static_command_is_refused(text: str) -> None:
    command = Command(REPO / "README.md", 1, text, True)
    with pytest.raises(GuideError):
        guide_doc.check_static(command, guide_doc.static_apps())


def test_a_command_the_harness_cannot_run_is_refused() -> None:
    for argv in (["juju", "deploy", "x"], ["rm", "-rf", "/"], ["lxc", "list"]):
        with pytest.raises(GuideError):
            guide_doc.runnable_kind(argv)


def test_output_comparison_catches_differences_and_maps_ids() -> None:
    ids: dict[str, str] = {}
    shown = ["job: j00000001", "state: succeeded", "created: 2026-01-01T00:00:00+00:00"]
    real = ["job: jabcdef12", "state: succeeded", "created: 2027-02-03T04:05:06+00:00"]
    assert guide_doc.compare(shown, real, ids) is None
    assert ids == {"j00000001": "jabcdef12"}
    assert guide_doc.compare(["job: j00000001", "state: failed"], real[:2], ids)
    assert guide_doc.compare(["job: j00000001"], ["job: j99999999"], ids)  # id already taken
    assert guide_doc.compare(['elapsed-seconds: "1.4"'], ['elapsed-seconds: "22.5"'], ids) is None
    assert guide_doc.compare(["elapsed-seconds: 1.4"], ["elapsed-seconds: 22"], ids) is None
    assert guide_doc.compare(["tasks: 4"], ["tasks: 5"], ids)
    assert guide_doc.compare(["a", "...", "z"], ["a", "b", "c", "z"], ids) is None
    assert guide_doc.compare(["a", "...", "z"], ["a", "b", "c"], ids)
    assert guide_doc.compare(["a"], ["a", "b"], ids)
    assert guide_doc.with_real_ids("--job j00000001", ids) == "--job jabcdef12"


def test_juju_results_are_printed_as_juju_does() -> None:
    results = {"job": "j1", "tasks": 4, "ok": True, "counts": {"failed": 0}, "out": "a\nb\n"}
    assert guide_doc.juju_yaml(results) == [
        "counts:",
        '  failed: "0"',
        "job: j1",
        'ok: "True"',
        "out: |",
        "  a",
        "  b",
        'tasks: "4"',
    ]


def test_the_test_script_refuses_an_unknown_environment_before_installing_anything() -> None:
    import subprocess

    done = subprocess.run(
        ["/bin/bash", str(REPO / "scripts" / "test"), "unit", "bogus"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "unknown test environment 'bogus'" in done.stderr
