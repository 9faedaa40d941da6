"""The charm's Prometheus alert rules, checked and unit-tested with Debian's real promtool.

Every rule file of ``src/prometheus_alert_rules/`` must pass ``promtool check rules``, as it is
and as cosl renders it for the cos-agent relation (Juju topology added). The alerts' unit tests
are promtool's own (``tests/functional/promtool/*.yaml``, run with ``promtool test rules``): the
series, evaluation times and expected alerts live there. A missing promtool is a failure, not a
skip: ``scripts/setup-functional-tests`` installs it.
"""

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from cosl import JujuTopology
from cosl.rules import AlertRules

pytestmark = pytest.mark.functional

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "src" / "prometheus_alert_rules"
PROMTOOL_TESTS = Path(__file__).resolve().parent / "promtool"
DOC = ROOT / "docs" / "observability.md"
PROMTOOL = Path("/usr/bin/promtool")
# The suffixes cosl's Rules.add_path reads; a rule file with another one would never be sent.
RULE_SUFFIXES = (".rule", ".rules", ".yml", ".yaml")
SEVERITIES = ("warning", "critical")
TOPOLOGY = JujuTopology(
    model="m",
    model_uuid="00000000-0000-4000-8000-000000000000",
    application="container-compute",
    unit="container-compute/0",
    charm_name="container-compute",
)


def rule_files() -> list[Path]:
    """The rule files cosl sends, sorted."""
    return sorted(p for p in RULES_DIR.iterdir() if p.is_file() and p.suffix in RULE_SUFFIXES)


def promtool_tests() -> list[Path]:
    """The unit test files of promtool, sorted."""
    return sorted(PROMTOOL_TESTS.glob("*.yaml"))


def alert_rules(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every alerting rule of ``groups``, in order."""
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def file_alerts() -> list[dict[str, Any]]:
    """Every alerting rule of every rule file."""
    rules = []
    for path in rule_files():
        rules += alert_rules(yaml.safe_load(path.read_text())["groups"])
    return rules


def documented_alerts() -> list[str]:
    """The alert names of the "Alerts" table in docs/observability.md."""
    section = DOC.read_text().split("\n## Alerts\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `(\w+)` \|", section, flags=re.MULTILINE)


def require_promtool() -> Path:
    """Debian's promtool; without it the test fails (a fixture would only report an error)."""
    if not PROMTOOL.exists():
        pytest.fail(f"no {PROMTOOL}: run scripts/setup-functional-tests")
    return PROMTOOL


def run_promtool(*args: str | Path) -> str:
    """Run promtool with ``args``; fail the test, with its output, unless it exits 0."""
    result = subprocess.run(
        [str(require_promtool()), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool {' '.join(map(str, args))}:\n{output}"
    return output


def test_there_are_rule_files_and_promtool_tests() -> None:
    """An empty directory would let every parametrized test below pass by running none."""
    assert rule_files(), f"no rule file in {RULES_DIR}"
    assert promtool_tests(), f"no promtool test in {PROMTOOL_TESTS}"


@pytest.mark.parametrize("path", rule_files(), ids=lambda p: p.name)
def test_promtool_accepts_the_rule_file(path: Path) -> None:
    """``promtool check rules`` accepts the file as it is in the repository."""
    run_promtool("check", "rules", path)


@pytest.mark.parametrize("path", promtool_tests(), ids=lambda p: p.name)
def test_the_alerts_pass_their_promtool_unit_tests(path: Path) -> None:
    """``promtool test rules`` passes: each alert fires where it should and not before."""
    run_promtool("test", "rules", path)


def test_the_rules_as_cosl_sends_them_pass_promtool(tmp_path: Path) -> None:
    """The rules with the unit's topology, as the cos-agent relation carries them, are valid.

    cosl puts the topology into every rule's labels. It adds matchers to the expressions only
    where cos-tool is installed (COS has it; this machine need not), so the expressions must
    also stand without them. None may hold a ``%%juju_topology%%`` placeholder: cosl would
    fill it in, but promtool rejects it in the repository's file.
    """
    rules = AlertRules(query_type="promql", topology=TOPOLOGY)
    rules.add_path(RULES_DIR)
    rendered = rules.as_dict()
    sent = alert_rules(rendered.get("groups", []))
    assert [r["alert"] for r in sent] == [r["alert"] for r in file_alerts()]
    for rule in sent:
        assert TOPOLOGY.label_matcher_dict.items() <= rule["labels"].items(), rule["alert"]
        assert "%%" not in rule["expr"], rule["alert"]
    path = tmp_path / "rendered.rules"
    path.write_text(yaml.safe_dump(rendered, sort_keys=False))
    output = run_promtool("check", "rules", path)
    assert f"SUCCESS: {len(sent)} rules found" in output


def test_the_rules_are_the_documented_alerts() -> None:
    """The rule files hold exactly the alerts of docs/observability.md, each once."""
    names = [rule["alert"] for rule in file_alerts()]
    assert len(names) == len(set(names)), names
    assert sorted(names) == sorted(documented_alerts())


def test_every_alert_waits_names_a_severity_and_explains_itself() -> None:
    """Each alert has ``for``, a known severity, a summary and a description."""
    for rule in file_alerts():
        assert "for" in rule, rule["alert"]
        assert rule.get("labels", {}).get("severity") in SEVERITIES, rule["alert"]
        annotations = rule.get("annotations", {})
        assert annotations.get("summary") and annotations.get("description"), rule["alert"]


def test_every_alert_has_a_firing_and_a_quiet_promtool_case() -> None:
    """The promtool tests show each alert both firing and not firing."""
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in promtool_tests():
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in file_alerts()}
    assert names - firing == set(), "never shown firing"
    assert names - quiet == set(), "never shown quiet"
