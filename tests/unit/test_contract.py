"""The charm's contract with Juju: committed YAML equals what the code renders, endpoints agree."""

from pathlib import Path
from typing import Any

import pytest
import yaml

from container_compute import constants
from container_compute.actions import ACTION_PARAMS
from container_compute.config import config_options
from container_compute.contract import render_actions, render_config, with_options_table

ROOT = Path(__file__).resolve().parents[2]

# Endpoints as DESIGN.md describes them: role, interface, scope (None: global), limit.
EXPECTED_ENDPOINTS: dict[str, tuple[str, str, str | None]] = {
    "juju-info": ("requires", "juju-info", "container"),
    "identity-credentials": ("requires", "keystone-credentials", None),
    "lxd": ("provides", "containers", "container"),
    "compute-jobs": ("provides", "compute-jobs", None),
    "cos-agent": ("provides", "cos_agent", None),
    "cluster": ("peers", "container-compute-cluster", None),
}


@pytest.fixture(scope="module")
def metadata() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "metadata.yaml").read_text())


def endpoints(metadata: dict[str, Any]) -> dict[str, tuple[str, str, str | None]]:
    return {
        name: (role, spec["interface"], spec.get("scope"))
        for role in ("requires", "provides", "peers")
        for name, spec in (metadata.get(role) or {}).items()
    }


def test_committed_config_yaml_is_rendered_from_host_config() -> None:
    assert (ROOT / "config.yaml").read_text() == render_config()


def test_committed_actions_yaml_is_rendered_from_params() -> None:
    assert (ROOT / "actions.yaml").read_text() == render_actions()


def test_every_action_refuses_unknown_params_and_has_a_params_class() -> None:
    actions = yaml.safe_load((ROOT / "actions.yaml").read_text())

    assert set(actions) == set(ACTION_PARAMS)
    for name, spec in actions.items():
        assert spec["additionalProperties"] is False, name
        assert spec["description"], name


def test_metadata_endpoints_are_as_designed(metadata: dict[str, Any]) -> None:
    assert metadata["subordinate"] is True
    assert endpoints(metadata) == EXPECTED_ENDPOINTS
    assert metadata["requires"]["identity-credentials"].get("limit") == 1
    assert metadata["provides"]["cos-agent"].get("limit") == 1


def test_every_endpoint_is_a_constant(metadata: dict[str, Any]) -> None:
    endpoint_constants = {
        value for name, value in vars(constants).items() if name.endswith("_ENDPOINT")
    }

    assert set(endpoints(metadata)) == endpoint_constants


def test_readme_option_table_is_the_rendered_one() -> None:
    readme = (ROOT / "README.md").read_text()
    assert with_options_table(readme) == readme, "run python -m container_compute.contract"
    for name, *_ in config_options():
        assert f"| `{name}` |" in readme
