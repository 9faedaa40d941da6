"""The charm's identity-credentials handler against the REAL Keystone of the stack."""

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from ops import testing

import charm
from container_compute import identity

from ..unit.conftest import FakeActions, FakeAgent, FakeHost
from .conftest import keystone_charm_credentials
from .stack import OpenStackStack


@pytest.fixture
def charm_state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """The charm with its host, actions and agent faked; identity is the real library."""
    state_dir = tmp_path / "state"
    monkeypatch.setattr(charm, "host", FakeHost())
    monkeypatch.setattr(charm, "actions", FakeActions())
    monkeypatch.setattr(charm, "agent", FakeAgent())
    monkeypatch.setattr(charm, "STATE_DIR", state_dir)
    yield state_dir


def run_changed(data: dict[str, str]) -> testing.State:
    ctx = testing.Context(charm.ContainerComputeCharm)
    relation = testing.Relation(
        "identity-credentials", remote_app_name="keystone", remote_units_data={0: data}
    )
    return ctx.run(
        ctx.on.relation_changed(relation, remote_unit=0), testing.State(relations=[relation])
    )


def test_keystone_charm_credentials_give_a_working_session(
    stack: OpenStackStack, charm_state: Path
) -> None:
    password = secrets.token_urlsafe(16)
    data = keystone_charm_credentials(stack, "cc-charm-test", password)

    out = run_changed(data)

    assert out.unit_status.name == "active", out.unit_status
    session, region = identity.session_from_clouds_yaml(charm_state / "clouds.yaml")
    assert session.get_token()
    assert region == "RegionOne"
    assert identity.last_check(charm_state) == (True, identity.from_relation_data(data).describe())  # type: ignore[union-attr]


def test_wrong_password_blocks_with_a_clear_message(
    stack: OpenStackStack, charm_state: Path
) -> None:
    data = keystone_charm_credentials(stack, "cc-charm-test", secrets.token_urlsafe(16))
    wrong = secrets.token_urlsafe(16)

    out = run_changed({**data, "credentials_password": wrong})

    assert out.unit_status.name == "blocked"
    assert "keystone refused user cc-charm-test (domain" in out.unit_status.message
    assert "wrong password" in out.unit_status.message
    assert wrong not in out.unit_status.message
    for path in charm_state.iterdir():
        if path.name not in (identity.CREDENTIALS_FILE_NAME, identity.CLOUDS_FILE_NAME):
            assert wrong not in path.read_text()
