"""The cos-agent provider: a small subordinate charm with its own rule and dashboard files."""

import json
import shutil
from pathlib import Path
from typing import Any

import ops
import pytest
import yaml
from cosl import LZMABase64
from ops import testing
from pydantic import ValidationError

from cos_agent import DATABAG_KEY, CosAgentProvider, scrape_target

from .cos_agent_schema import CosAgentConfig, validate_unit_databag

ROOT = Path(__file__).resolve().parents[2]
APP = "container-compute"
ENDPOINT = "cos-agent"
META = {
    "name": APP,
    "subordinate": True,
    "requires": {"juju-info": {"interface": "juju-info", "scope": "container"}},
    "provides": {ENDPOINT: {"interface": "cos_agent", "limit": 1}},
}
CONFIG = {"options": {"metrics-listen": {"type": "string", "default": "127.0.0.1:9790"}}}
AGENT_RULES = {
    "groups": [
        {
            "name": "agent",
            "rules": [
                {
                    "alert": "ContainerComputeAgentDown",
                    "expr": "up == 0",
                    "for": "5m",
                    "labels": {"severity": "critical"},
                    "annotations": {"summary": "the job agent of {{ $labels.juju_unit }} is down"},
                }
            ],
        }
    ]
}
# The single-rule format cosl also reads: one rule per file, grouped under the file's name.
TASK_RULE = {"alert": "ContainerComputeTaskFailures", "expr": "rate(failed[5m]) > 1"}
LOG_RULES = {
    "groups": [
        {"name": "logs", "rules": [{"alert": "AgentPanics", "expr": '{job=~".+"} |= "panic"'}]}
    ]
}
JOBS_DASHBOARD = {"title": "Container Compute jobs", "uid": "cc-jobs", "panels": [{"id": 1}]}
WORKERS_DASHBOARD = {"title": "Container Compute workers", "uid": "cc-workers", "panels": []}


class ProviderCharm(ops.CharmBase):
    """Publishes through CosAgentProvider; refreshes it from its own update-status handler."""

    def __init__(self, framework: ops.Framework) -> None:
        super().__init__(framework)
        self.cos_agent = CosAgentProvider(
            self, metrics_listen=lambda: str(self.config["metrics-listen"])
        )
        framework.observe(self.on.update_status, self._on_update_status)

    def _on_update_status(self, _: ops.UpdateStatusEvent) -> None:
        self.cos_agent.update()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def charm_root(tmp_path: Path) -> Path:
    """A charm directory with two rule files, one log rule file and two dashboards."""
    write(tmp_path / "src/prometheus_alert_rules/agent.rules", yaml.safe_dump(AGENT_RULES))
    write(tmp_path / "src/prometheus_alert_rules/tasks.rule", yaml.safe_dump(TASK_RULE))
    write(tmp_path / "src/prometheus_alert_rules/README.md", "not a rule file")
    write(tmp_path / "src/loki_alert_rules/agent.rules", yaml.safe_dump(LOG_RULES))
    write(tmp_path / "src/grafana_dashboards/jobs.json", json.dumps(JOBS_DASHBOARD))
    write(tmp_path / "src/grafana_dashboards/workers.json", json.dumps(WORKERS_DASHBOARD))
    return tmp_path


def context(charm_root: Path) -> testing.Context[ProviderCharm]:
    return testing.Context(ProviderCharm, meta=META, config=CONFIG, charm_root=charm_root)


def relation() -> testing.Relation:
    return testing.Relation(ENDPOINT, interface="cos_agent", remote_app_name="grafana-agent")


def published(
    charm_root: Path,
    *,
    listen: str | None = None,
    leader: bool = True,
    event: str = "relation_changed",
) -> tuple[CosAgentConfig, dict[str, Any], testing.Context[ProviderCharm]]:
    """Run one event with a cos-agent relation; the databag's config, checked and raw."""
    ctx = context(charm_root)
    rel = relation()
    config = {} if listen is None else {"metrics-listen": listen}
    state = testing.State(leader=leader, config=config, relations={rel})
    trigger = (
        getattr(ctx.on, event)(rel, remote_unit=0)
        if event.startswith("relation_")
        else getattr(ctx.on, event)()
    )
    out = ctx.run(trigger, state)
    databag = dict(out.get_relation(rel.id).local_unit_data)
    return validate_unit_databag(databag), json.loads(databag[DATABAG_KEY]), ctx


def errors(ctx: testing.Context[ProviderCharm]) -> list[str]:
    return [line.message for line in ctx.juju_log if line.level == "ERROR"]


@pytest.mark.parametrize("leader", [True, False])
@pytest.mark.parametrize(
    "event", ["relation_joined", "relation_changed", "config_changed", "upgrade_charm"]
)
def test_every_unit_publishes_a_databag_the_schema_accepts(
    charm_root: Path, event: str, leader: bool
) -> None:
    data, raw, ctx = published(charm_root, event=event, leader=leader)
    assert len(data.metrics_scrape_jobs) == 1
    assert len(data.metrics_alert_rules.groups) == 2
    assert len(data.log_alert_rules.groups) == 1
    assert len(data.dashboards) == 2
    assert raw["log_slots"] == []
    assert raw["subordinate"] is True
    assert errors(ctx) == []


def test_the_charm_can_refresh_from_its_own_handler(charm_root: Path) -> None:
    data, _, _ = published(charm_root, event="update_status", leader=False)
    assert len(data.dashboards) == 2


def test_nothing_is_published_on_relation_created(charm_root: Path) -> None:
    rel = relation()
    out = context(charm_root).run(
        context(charm_root).on.relation_created(rel), testing.State(relations={rel})
    )
    assert DATABAG_KEY not in out.get_relation(rel.id).local_unit_data


@pytest.mark.parametrize(
    "listen, target",
    [
        ("127.0.0.1:9790", "127.0.0.1:9790"),
        ("10.1.2.3:9100", "10.1.2.3:9100"),
        ("[::1]:9790", "[::1]:9790"),
        ("metrics.internal:9000", "metrics.internal:9000"),
    ],
)
def test_the_scrape_job_targets_the_configured_endpoint(
    charm_root: Path, listen: str, target: str
) -> None:
    _, raw, _ = published(charm_root, listen=listen)
    assert raw["metrics_scrape_jobs"] == [
        {
            "job_name": f"{APP}_agent",
            "metrics_path": "/metrics",
            "static_configs": [{"targets": [target]}],
        }
    ]


@pytest.mark.parametrize("listen", ["0.0.0.0:9790", "[::]:9790"])
def test_an_endpoint_on_every_address_is_scraped_on_localhost(
    charm_root: Path, listen: str
) -> None:
    _, raw, _ = published(charm_root, listen=listen)
    assert raw["metrics_scrape_jobs"][0]["static_configs"] == [{"targets": ["localhost:9790"]}]


@pytest.mark.parametrize("listen", ["", "  "])
def test_metrics_off_sends_no_scrape_job_but_rules_and_dashboards(
    charm_root: Path, listen: str
) -> None:
    data, raw, ctx = published(charm_root, listen=listen)
    assert raw["metrics_scrape_jobs"] == []
    assert len(data.metrics_alert_rules.groups) == 2
    assert len(data.dashboards) == 2
    assert errors(ctx) == []


def test_an_unusable_endpoint_sends_no_scrape_job_and_says_why(charm_root: Path) -> None:
    data, _, ctx = published(charm_root, listen="nowhere")
    assert data.metrics_scrape_jobs == []
    assert len(data.dashboards) == 2
    assert any("metrics endpoint is unusable" in message for message in errors(ctx))


def test_scrape_target_maps_the_option() -> None:
    assert scrape_target("") == ""
    assert scrape_target("0.0.0.0:1") == "localhost:1"
    with pytest.raises(ValueError):
        scrape_target("9790")


def test_alert_rules_carry_the_juju_topology(charm_root: Path) -> None:
    ctx = context(charm_root)
    rel = relation()
    state = testing.State(relations={rel})
    out = ctx.run(ctx.on.relation_joined(rel, remote_unit=0), state)
    raw = json.loads(out.get_relation(rel.id).local_unit_data[DATABAG_KEY])
    model = state.model
    # cosl's topology identifier, sanitized as a Prometheus name ("-" becomes "_").
    identifier = f"{model.name}_{model.uuid.split('-')[0]}_{APP}".replace("-", "_")
    groups = raw["metrics_alert_rules"]["groups"] + raw["log_alert_rules"]["groups"]
    assert {g["name"] for g in groups} == {
        f"{identifier}_agent_rules",
        f"{identifier}_tasks_rules",
        f"{identifier}_logs_rules",
    }
    for group in groups:
        for rule in group["rules"]:
            labels = rule["labels"]
            assert labels["juju_model"] == model.name
            assert labels["juju_model_uuid"] == model.uuid
            assert labels["juju_application"] == APP
            assert labels["juju_charm"] == APP
            # A rule covers every unit of the application, never only the one that sent it.
            assert "juju_unit" not in labels
    agent = next(g for g in groups if g["name"].endswith("_agent_rules"))
    assert agent["rules"][0]["labels"]["severity"] == "critical"
    assert agent["rules"][0]["for"] == "5m"


def test_without_log_rules_the_log_rules_are_empty(charm_root: Path) -> None:
    shutil.rmtree(charm_root / "src/loki_alert_rules")
    _, raw, _ = published(charm_root)
    assert raw["log_alert_rules"] == {}


def test_without_any_files_the_lists_are_empty(tmp_path: Path) -> None:
    _, raw, ctx = published(tmp_path)
    assert raw["metrics_alert_rules"] == {}
    assert raw["log_alert_rules"] == {}
    assert raw["dashboards"] == []
    assert len(raw["metrics_scrape_jobs"]) == 1
    assert errors(ctx) == []


def test_dashboards_decode_back_to_their_files(charm_root: Path) -> None:
    _, raw, _ = published(charm_root)
    decoded = [json.loads(LZMABase64.decompress(d)) for d in raw["dashboards"]]
    assert decoded == [JOBS_DASHBOARD, WORKERS_DASHBOARD]


@pytest.mark.parametrize(
    "name, text",
    [("broken.json", '{"title": "cut short'), ("list.json", "[1, 2]"), ("empty.json", "")],
)
def test_a_broken_dashboard_is_skipped_and_named(charm_root: Path, name: str, text: str) -> None:
    write(charm_root / "src/grafana_dashboards" / name, text)
    data, raw, ctx = published(charm_root)
    decoded = [json.loads(LZMABase64.decompress(d)) for d in raw["dashboards"]]
    assert decoded == [JOBS_DASHBOARD, WORKERS_DASHBOARD]
    assert len(data.metrics_alert_rules.groups) == 2
    assert [m for m in errors(ctx) if "skipping the dashboard file" in m and name in m]


@pytest.mark.parametrize(
    "name, text",
    [
        ("bad-yaml.rules", "groups: [unclosed"),
        ("scalar.rules", "42"),
        ("list.yaml", "- alert: X\n  expr: up == 0\n"),
        ("no-rules.rules", "groups:\n  - name: g\n"),
        ("no-expr.rules", "groups:\n  - name: g\n    rules:\n      - alert: X\n"),
        ("neither.rules", "something: else\n"),
    ],
)
def test_a_broken_rule_file_is_skipped_and_named(charm_root: Path, name: str, text: str) -> None:
    write(charm_root / "src/prometheus_alert_rules" / name, text)
    data, _, ctx = published(charm_root)
    assert len(data.metrics_alert_rules.groups) == 2
    assert len(data.dashboards) == 2
    assert [m for m in errors(ctx) if "skipping the alert rule file" in m and name in m]


@pytest.mark.parametrize(
    "event", ["config_changed", "upgrade_charm", "update_status", "start", "leader_elected"]
)
def test_without_a_relation_nothing_happens(charm_root: Path, event: str) -> None:
    ctx = context(charm_root)
    out = ctx.run(getattr(ctx.on, event)(), testing.State())
    assert out.relations == frozenset()
    assert errors(ctx) == []


def test_a_follower_writes_its_own_unit_databag_and_no_app_data(charm_root: Path) -> None:
    ctx = context(charm_root)
    rel = relation()
    out = ctx.run(
        ctx.on.relation_joined(rel, remote_unit=0), testing.State(leader=False, relations={rel})
    )
    written = out.get_relation(rel.id)
    assert DATABAG_KEY in written.local_unit_data
    assert written.local_app_data == {}


def test_a_changed_endpoint_rewrites_the_databag(charm_root: Path) -> None:
    ctx = context(charm_root)
    rel = relation()
    first = ctx.run(ctx.on.relation_joined(rel, remote_unit=0), testing.State(relations={rel}))
    state = testing.State(config={"metrics-listen": "127.0.0.1:9999"}, relations=first.relations)
    out = ctx.run(ctx.on.config_changed(), state)
    raw = json.loads(out.get_relation(rel.id).local_unit_data[DATABAG_KEY])
    assert raw["metrics_scrape_jobs"][0]["static_configs"] == [{"targets": ["127.0.0.1:9999"]}]


def test_the_repository_rules_and_dashboards_are_published(tmp_path: Path) -> None:
    # Copies, not the repository itself as charm root: Scenario writes metadata.yaml there.
    sources = {
        name: ROOT / "src" / name
        for name in ("prometheus_alert_rules", "loki_alert_rules", "grafana_dashboards")
    }
    for name, source in sources.items():
        if source.is_dir():
            shutil.copytree(source, tmp_path / "src" / name)
    data, raw, ctx = published(tmp_path)
    assert errors(ctx) == []
    rule_files = [
        p
        for p in sources["prometheus_alert_rules"].iterdir()
        if p.suffix in (".rule", ".rules", ".yml", ".yaml")
    ]
    assert rule_files and data.metrics_alert_rules.groups
    # The agent-down alert selects the scrape job by the name this provider gives it.
    agent_down = next(
        rule
        for group in raw["metrics_alert_rules"]["groups"]
        for rule in group["rules"]
        if rule["alert"] == "ContainerComputeAgentDown"
    )
    assert 'job=~".+_agent"' in agent_down["expr"]
    assert raw["metrics_scrape_jobs"][0]["job_name"].endswith("_agent")
    dashboards = sorted(sources["grafana_dashboards"].glob("*.json"))
    assert [json.loads(LZMABase64.decompress(d)) for d in raw["dashboards"]] == [
        json.loads(p.read_text()) for p in dashboards
    ]


def good_config() -> dict[str, Any]:
    return {
        "metrics_alert_rules": AGENT_RULES,
        "log_alert_rules": {},
        "dashboards": [LZMABase64.compress(json.dumps(JOBS_DASHBOARD))],
        "metrics_scrape_jobs": [
            {"job_name": "j", "metrics_path": "/metrics", "static_configs": [{"targets": ["a:1"]}]}
        ],
        "log_slots": ["snap:logs"],
    }


def test_the_schema_accepts_the_documented_layout() -> None:
    data = validate_unit_databag({"config": json.dumps(good_config()), "egress-subnets": "x"})
    assert data.log_slots == ["snap:logs"]
    assert data.subordinate is None


@pytest.mark.parametrize(
    "change",
    [
        {"log_slots": None},  # a required key missing (None: dropped below)
        {"dashboards": None},
        {"metrics_scrape_jobs": None},
        {"subordinate": "true"},  # a string, not a bool
        {"log_slots": "snap:logs"},
        {"dashboards": ["not base64 of LZMA"]},
        {"dashboards": [LZMABase64.compress("[1]")]},  # decodes, but not to a dashboard
        {"metrics_alert_rules": {"groups": [{"name": "g", "rules": [{"alert": "A"}]}]}},
        {"metrics_scrape_jobs": [{"job_name": "j", "static_configs": []}]},
        {"scrape_jobs": []},  # an unknown key: grafana-agent would ignore it silently
    ],
)
def test_the_schema_rejects_what_breaks_the_interface(change: dict[str, Any]) -> None:
    config = good_config() | change
    config = {key: value for key, value in config.items() if value is not None}
    with pytest.raises(ValidationError):
        validate_unit_databag({"config": json.dumps(config)})


def test_the_schema_rejects_a_config_that_is_not_json() -> None:
    with pytest.raises(ValidationError):
        validate_unit_databag({"config": "not json"})
