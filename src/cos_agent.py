"""The ``cos-agent`` endpoint (interface ``cos_agent`` v0): our provider side, built on ``cosl``.

grafana-agent, a subordinate on the same machine, reads one key of our unit databag, ``config``:
JSON with the agent's scrape job (``metrics_scrape_jobs``), the alert rules of
``src/prometheus_alert_rules/`` and ``src/loki_alert_rules/`` with the unit's Juju topology
(``metrics_alert_rules``, ``log_alert_rules``), the dashboards of ``src/grafana_dashboards/``
LZMA-compressed and base64-encoded (``dashboards``), ``log_slots`` (none: the agent logs to a
file) and ``subordinate``. Every unit writes its own databag; a rule or dashboard file that
cannot be read is logged and left out, never a failed hook.
"""

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import ops
import yaml
from cosl import JujuTopology, LZMABase64
from cosl.rules import Rules

from container_compute.config import MetricsListen, parse_metrics_listen

logger = logging.getLogger(__name__)

DATABAG_KEY = "config"
METRICS_PATH = "/metrics"
PROMETHEUS_RULES_DIR = "src/prometheus_alert_rules"
LOKI_RULES_DIR = "src/loki_alert_rules"
DASHBOARDS_DIR = "src/grafana_dashboards"
# The suffixes cosl reads rule files from.
RULE_SUFFIXES = (".rule", ".rules", ".yml", ".yaml")
# An endpoint listening on every address is scraped through the loopback: grafana-agent runs on
# this machine.
WILDCARD_HOSTS = ("0.0.0.0", "::")  # noqa: S104 (compared with, never bound)
# What a malformed rule or dashboard file raises in yaml, json or cosl: logged, file skipped.
_BAD_FILE = (OSError, ValueError, TypeError, KeyError, AttributeError, yaml.YAMLError)


def scrape_target(listen: str) -> str:
    """The ``HOST:PORT`` grafana-agent scrapes for ``metrics-listen``; "" when metrics are off.

    Raises:
        ValueError: ``listen`` is not ``HOST:PORT`` or ``[IPV6]:PORT``.
    """
    where = parse_metrics_listen(listen)
    if where is None:
        return ""
    host = "localhost" if where.host in WILDCARD_HOSTS else where.host
    return str(MetricsListen(host, where.port))


class CosAgentProvider(ops.Object):
    """Publish the agent's scrape job, alert rules and dashboards to grafana-agent."""

    def __init__(
        self,
        charm: ops.CharmBase,
        metrics_listen: Callable[[], str],
        relation_name: str = "cos-agent",
    ) -> None:
        """Observe the endpoint and the events after which what we publish may differ.

        Args:
            charm: the charm; its unit writes the databag.
            metrics_listen: returns the agent's metrics ``HOST:PORT`` now, "" when off.
            relation_name: the endpoint, of interface ``cos_agent``.
        """
        super().__init__(charm, relation_name)
        self._charm = charm
        self._metrics_listen = metrics_listen
        self._relation_name = relation_name
        events = charm.on[relation_name]
        for event in (
            events.relation_joined,
            events.relation_changed,
            charm.on.upgrade_charm,
            charm.on.config_changed,
        ):
            self.framework.observe(event, self._on_refresh)

    def _on_refresh(self, _: ops.EventBase) -> None:
        self.update()

    def update(self) -> None:
        """(Re)write ``config`` in this unit's databag of every cos-agent relation."""
        relations = self.model.relations[self._relation_name]
        if not relations:
            return
        text = json.dumps(self.data(), sort_keys=True)
        for relation in relations:
            try:
                databag = relation.data[self._charm.unit]
                if databag.get(DATABAG_KEY) != text:
                    databag[DATABAG_KEY] = text
            except ops.ModelError as err:
                logger.error("cos-agent: cannot write relation %d's data: %s", relation.id, err)

    def data(self) -> dict[str, Any]:
        """What ``config`` holds, as a dict."""
        return {
            "metrics_scrape_jobs": self._scrape_jobs(),
            "metrics_alert_rules": self._alert_rules(PROMETHEUS_RULES_DIR, "promql"),
            "log_alert_rules": self._alert_rules(LOKI_RULES_DIR, "logql"),
            "dashboards": self._dashboards(),
            "log_slots": [],
            "subordinate": bool(self._charm.meta.subordinate),
        }

    def _scrape_jobs(self) -> list[dict[str, Any]]:
        try:
            target = scrape_target(self._metrics_listen())
        except ValueError as err:
            logger.error("cos-agent: no scrape job, the metrics endpoint is unusable: %s", err)
            return []
        if not target:
            return []
        return [
            {
                "job_name": f"{self._charm.app.name}_agent",
                "metrics_path": METRICS_PATH,
                "static_configs": [{"targets": [target]}],
            }
        ]

    def _alert_rules(self, directory: str, query_type: Literal["promql", "logql"]) -> dict:
        """The rule files of ``directory`` as one rules dict, Juju topology injected."""
        topology = JujuTopology.from_charm(self._charm)
        rules = Rules(query_type=query_type, topology=topology)
        for path in self._files(directory, RULE_SUFFIXES):
            try:
                content = yaml.safe_load(path.read_text())
                if not isinstance(content, dict):
                    raise ValueError("not a YAML mapping of rules")
                # What cosl's add_path does for one file, but a bad file raises here.
                rules.add(content, group_name=path.stem, group_name_prefix=topology.identifier)
            except _BAD_FILE as err:
                logger.error("cos-agent: skipping the alert rule file %s: %s", path, err)
        return rules.as_dict()

    def _dashboards(self) -> list[str]:
        """Every dashboard, LZMA-compressed and base64-encoded."""
        dashboards = []
        for path in self._files(DASHBOARDS_DIR, (".json",)):
            try:
                dashboard = json.loads(path.read_text())
                if not isinstance(dashboard, dict):
                    raise ValueError("not a JSON object")
            except _BAD_FILE as err:
                logger.error("cos-agent: skipping the dashboard file %s: %s", path, err)
                continue
            dashboards.append(LZMABase64.compress(json.dumps(dashboard)))
        return dashboards

    def _files(self, directory: str, suffixes: tuple[str, ...]) -> list[Path]:
        """The files of ``<charm_dir>/directory`` (not below) with one of ``suffixes``, sorted."""
        root = self._charm.charm_dir / directory
        if not root.is_dir():
            return []
        return sorted(p for p in root.iterdir() if p.is_file() and p.suffix in suffixes)
