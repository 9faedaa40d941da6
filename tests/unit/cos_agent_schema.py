"""Our statement of the ``cos_agent`` v0 provider's unit databag, as pydantic v2 models.

Written from the interface's documentation: canonical/charm-relation-interfaces
``interfaces/cos_agent/v0/schema.py`` (``ProviderUnitData``: one key ``config``, JSON of
``metrics_alert_rules`` dict, ``log_alert_rules`` dict, ``dashboards`` list of base64 LZMA JSON,
``metrics_scrape_jobs`` list of dicts, ``log_slots`` list of str, all required) and the
requirer's model in grafana-agent's ``cos_agent`` library (``CosAgentProviderUnitData``: the same
five required, plus optional ``subordinate: bool`` and ``tracing_protocols: list[str]``).

Stricter than the interface on purpose, to catch our own mistakes: no unknown key inside
``config`` (the requirer would ignore it silently), no type coercion, rule files in Prometheus'
``groups`` layout, scrape jobs in ``static_configs`` form, and every dashboard must decode to a
JSON object. The databag itself may hold other keys (Juju's own addresses).
"""

import base64
import binascii
import json
import lzma
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Json, model_validator


def _decodes_to_a_json_object(encoded: str) -> str:
    try:
        content = json.loads(lzma.decompress(base64.b64decode(encoded, validate=True)))
    except (binascii.Error, lzma.LZMAError, ValueError) as err:
        raise ValueError(f"not base64 of LZMA-compressed JSON: {err}") from None
    if not isinstance(content, dict):
        raise ValueError("the dashboard is not a JSON object")
    return encoded


EncodedDashboard = Annotated[str, AfterValidator(_decodes_to_a_json_object)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Rule(_Strict):
    """One alerting (``alert``) or recording (``record``) rule."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    alert: str | None = None
    record: str | None = None
    expr: str
    for_: str | None = Field(default=None, alias="for")
    keep_firing_for: str | None = None
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}

    @model_validator(mode="after")
    def _alert_or_record(self) -> "Rule":
        if (self.alert is None) == (self.record is None):
            raise ValueError("a rule has exactly one of 'alert' and 'record'")
        return self


class RuleGroup(_Strict):
    """A named group of rules."""

    name: str
    rules: list[Rule]
    interval: str | None = None


class RuleFile(_Strict):
    """Rules in Prometheus' (and Loki's) file layout; ``{}`` when there are none."""

    groups: list[RuleGroup] = []


class StaticConfig(_Strict):
    """Targets of a scrape job; grafana-agent adds the Juju topology labels."""

    targets: list[str] = Field(min_length=1)
    labels: dict[str, str] = {}


class ScrapeJob(BaseModel):
    """A Prometheus ``scrape_config``; any other field of one passes through unchecked."""

    model_config = ConfigDict(extra="allow", strict=True)

    job_name: str | None = None
    metrics_path: str = "/metrics"
    static_configs: list[StaticConfig] = Field(min_length=1)


class CosAgentConfig(_Strict):
    """The JSON under ``config``."""

    metrics_alert_rules: RuleFile
    log_alert_rules: RuleFile
    dashboards: list[EncodedDashboard]
    metrics_scrape_jobs: list[ScrapeJob]
    log_slots: list[str]
    # No longer read by grafana-agent; kept in its model for compatibility.
    subordinate: bool | None = None
    tracing_protocols: list[str] | None = None


class ProviderUnitData(BaseModel):
    """The provider's unit databag: ``config`` is a JSON string."""

    model_config = ConfigDict(extra="allow")

    config: Json[CosAgentConfig]


def validate_unit_databag(databag: dict[str, str]) -> CosAgentConfig:
    """The provider unit databag's ``config``, parsed.

    Raises:
        pydantic.ValidationError: what breaks the schema.
    """
    return ProviderUnitData.model_validate(databag).config
