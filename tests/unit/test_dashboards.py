"""The Grafana dashboards of ``src/grafana_dashboards/`` against docs/observability.md.

Every query may name only the metrics of the doc's "Metrics" table (with the ``_bucket``,
``_sum`` and ``_count`` series of its histograms) and Prometheus' own ``up``, and selects them
through the dashboard's Juju topology variables. promtool is not needed here: the queries are
parsed only far enough to find their metric names and brackets.
"""

import json
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "src" / "grafana_dashboards").glob("*.json"))
DOC = ROOT / "docs" / "observability.md"
PREFIX = "container_compute_"
BUILTIN = {"up"}
DATASOURCE = "${prometheusds}"
TOPOLOGY_VARIABLES = ("juju_model", "juju_application", "juju_unit")
PANEL_TYPES = {"timeseries", "stat"}
# PromQL words that are not metric names where they stand outside parentheses.
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.*),\s*(?P<label>\w+)\s*\)$", re.DOTALL)
PAIRS = {")": "(", "]": "[", "}": "{"}


def doc_section(title: str) -> str:
    """The text of the doc's ``## title`` section."""
    return DOC.read_text().split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def documented_metrics() -> dict[str, str]:
    """Every metric name of the doc's "Metrics" table, prefixed, with its type."""
    metrics = {}
    for line in doc_section("Metrics").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not cells[0].startswith("`"):
            continue
        for name in re.findall(r"`(\w+)`", cells[0]):
            metrics[PREFIX + name] = cells[1].split()[0]
    return metrics


def known_series() -> set[str]:
    """The series names a query may use: the documented ones, histograms expanded, and up."""
    names = set(BUILTIN)
    for name, kind in documented_metrics().items():
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` selects: identifiers that are no function, keyword or label."""
    text = STRING.sub('""', expr)
    text = re.sub(r"\{[^{}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\[\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w$.])([A-Za-z_:][\w:]*)(\s*\()?", text):
        if not match.group(2) and match.group(1).lower() not in KEYWORDS:
            names.add(match.group(1))
    return names


def unbalanced(expr: str) -> str | None:
    """Why ``expr``'s brackets do not pair up (strings aside), or None."""
    stack = []
    for char in STRING.sub('""', expr):
        if char in "([{":
            stack.append(char)
        elif char in PAIRS:
            if not stack or stack.pop() != PAIRS[char]:
                return f"unexpected {char!r}"
    return f"unclosed {''.join(stack)!r}" if stack else None


def load(path: Path) -> dict[str, Any]:
    """The dashboard at ``path``."""
    return json.loads(path.read_text())


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, also those nested in rows."""
    found = []
    for panel in dashboard.get("panels", []):
        found.append(panel)
        found += panel.get("panels", [])
    return found


def queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL query: panel targets and the selectors of variables' label_values."""
    exprs = [t["expr"] for p in panels(dashboard) for t in p.get("targets", []) if "expr" in t]
    for variable in dashboard["templating"]["list"]:
        if variable.get("type") != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        match = LABEL_VALUES.match(text.strip())
        assert match, f"variable {variable['name']}: not label_values(SELECTOR, LABEL): {text}"
        exprs.append(match["selector"])
    return exprs


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The dashboard's template variables by name."""
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def datasource_uid(holder: dict[str, Any]) -> str | None:
    """The datasource a panel or target names, in either of Grafana's forms."""
    source = holder.get("datasource")
    return source.get("uid") if isinstance(source, dict) else source


@pytest.fixture(params=DASHBOARDS, ids=lambda p: p.name)
def dashboard(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Each dashboard in turn."""
    return load(request.param)


def test_the_three_dashboards_exist() -> None:
    """Jobs and tasks, workers, host: the ones docs/observability.md announces."""
    assert [p.name for p in DASHBOARDS] == [
        "container-compute-host.json",
        "container-compute-jobs.json",
        "container-compute-workers.json",
    ]


def test_the_doc_table_parses() -> None:
    """The metric table is read, so the name checks below check something."""
    metrics = documented_metrics()
    assert len(metrics) >= 19
    assert metrics[f"{PREFIX}storage_pool_size_bytes"] == "gauge"
    assert metrics[f"{PREFIX}task_duration_seconds"] == "histogram"
    assert all(name.endswith("_total") for name, t in metrics.items() if t == "counter")


def test_titles_and_uids_are_there_and_unique() -> None:
    """Grafana keys dashboards by uid; two with one uid overwrite each other."""
    boards = [load(path) for path in DASHBOARDS]
    for board in boards:
        assert board.get("title") and board.get("uid"), board.get("title")
        assert len(board["uid"]) <= 40, board["uid"]
        assert board.get("schemaVersion", 0) >= 36, board["title"]
    assert len({b["uid"] for b in boards}) == len(boards)
    assert len({b["title"] for b in boards}) == len(boards)


def test_the_variables_are_the_datasource_and_the_topology(dashboard: dict[str, Any]) -> None:
    """``prometheusds`` picks the Prometheus; the Juju variables are queries on it."""
    found = variables(dashboard)
    assert found["prometheusds"]["type"] == "datasource"
    assert found["prometheusds"]["query"] == "prometheus"
    for name in TOPOLOGY_VARIABLES:
        assert found[name]["type"] == "query", name
        assert datasource_uid(found[name]) == DATASOURCE, name


def test_every_panel_queries_prometheusds(dashboard: dict[str, Any]) -> None:
    """Panels are timeseries or stat, read ``${prometheusds}`` and have queries."""
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)), ids
    for panel in panels(dashboard):
        assert panel["type"] in PANEL_TYPES, panel["title"]
        assert datasource_uid(panel) == DATASOURCE, panel["title"]
        assert panel.get("targets"), panel["title"]
        for target in panel["targets"]:
            assert target.get("expr"), panel["title"]
            assert datasource_uid(target) in (None, DATASOURCE), panel["title"]


def test_queries_name_only_documented_metrics(dashboard: dict[str, Any]) -> None:
    """A metric the doc does not list is a typo or an undocumented metric."""
    known = known_series()
    for expr in queries(dashboard):
        names = metric_names(expr)
        assert names, f"no metric in {expr}"
        assert names <= known, f"unknown {sorted(names - known)} in {expr}"


def test_queries_have_balanced_brackets(dashboard: dict[str, Any]) -> None:
    """Every (, [ and { is closed, in order."""
    for expr in queries(dashboard):
        assert unbalanced(expr) is None, f"{unbalanced(expr)} in {expr}"


def test_panel_queries_select_by_the_topology_variables(dashboard: dict[str, Any]) -> None:
    """Every series a panel selects is narrowed by the model, application and unit chosen."""
    matchers = [f'{name}=~"${name}"' for name in TOPOLOGY_VARIABLES]
    known = known_series()
    for panel in panels(dashboard):
        for target in panel["targets"]:
            expr = target["expr"]
            for match in re.finditer(r"(?<![\w$.\"])([A-Za-z_:][\w:]*)(\{[^{}]*\})?", expr):
                if match.group(1) not in known:
                    continue
                selector = match.group(2) or ""
                missing = [m for m in matchers if m not in selector]
                assert not missing, f"{match.group(1)} without {missing} in {panel['title']}"


def test_every_documented_metric_is_on_a_dashboard() -> None:
    """Each metric of the doc is shown somewhere (a histogram through any of its series)."""
    used = set()
    for path in DASHBOARDS:
        for expr in queries(load(path)):
            used |= metric_names(expr)
    used |= {re.sub(r"_(bucket|sum|count)$", "", name) for name in used}
    assert set(documented_metrics()) - used == set()


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (le) (rate(a_bucket{x=~"$y"}[$__rate_interval]))', {"a_bucket"}),
        ("time() - b > 120 or up{job=~'.+_agent'} == 0", {"b", "up"}),
        ("60 * sum without (outcome) (increase(c_total[30m])) / 1e9", {"c_total"}),
        ("histogram_quantile(0.9, sum(rate(d[5m])) by (le))", {"d"}),
    ],
)
def test_metric_names_finds_the_selected_series(expr: str, names: set[str]) -> None:
    """The parser of the checks above: functions, labels, ranges and numbers are no metric."""
    assert metric_names(expr) == names


@pytest.mark.parametrize("expr", ["sum(rate(a[5m])", 'a{b="("}[5m])', "(a]"])
def test_unbalanced_brackets_are_caught(expr: str) -> None:
    """The bracket check itself fails on a broken query."""
    assert unbalanced(expr) is not None
