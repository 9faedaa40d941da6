"""identity-credentials beyond parsing: clouds.yaml, the token check, status, forgetting."""

import logging
import stat
from pathlib import Path

import ops
import pytest
import yaml
from ops import testing

import charm
from container_compute import identity

from .conftest import Library
from .test_charm import KEYSTONE_DATA, PASSWORD

V2_DATA = {
    "auth_host": "10.0.0.10",
    "auth_port": "35357",
    "auth_protocol": "http",
    "credentials_host": "10.0.0.10",
    "credentials_port": "5000",
    "credentials_protocol": "http",
    "credentials_username": "container-compute",
    "credentials_password": PASSWORD,
    "credentials_project": "services",
    "credentials_project_id": "",
    "api_version": "2",
    "region": "RegionOne",
}


def keystone_relation(data: dict[str, str]) -> testing.Relation:
    return testing.Relation(
        "identity-credentials", remote_app_name="keystone", remote_units_data={0: data}
    )


def test_clouds_yaml_is_private_and_standard(ctx: testing.Context, library: Library) -> None:
    relation = keystone_relation(KEYSTONE_DATA)

    out = ctx.run(
        ctx.on.relation_changed(relation, remote_unit=0), testing.State(relations=[relation])
    )

    path = library.state_dir / "clouds.yaml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    cloud = yaml.safe_load(path.read_text())["clouds"]["container-compute"]
    assert cloud["auth_type"] == "password"
    assert cloud["region_name"] == "RegionOne"
    assert cloud["auth"] == {
        "auth_url": "http://10.0.0.10:5000/v3",
        "username": "container-compute",
        "password": PASSWORD,
        "user_domain_id": "9a8b7c",
        "project_id": "5f1b2c",
    }
    assert out.unit_status.name == "active"


def test_v2_shaped_answer_authenticates_in_the_default_domain() -> None:
    credentials = identity.from_relation_data(V2_DATA)

    assert credentials is not None
    assert credentials.auth_arguments() == {
        "auth_url": "http://10.0.0.10:5000/v3",
        "username": "container-compute",
        "password": PASSWORD,
        "user_domain_id": "default",
        "project_name": "services",
        "project_domain_id": "default",
    }


def test_incomplete_answer_waits(ctx: testing.Context, library: Library) -> None:
    relation = keystone_relation(
        {k: v for k, v in KEYSTONE_DATA.items() if k != "credentials_host"}
    )

    out = ctx.run(
        ctx.on.relation_changed(relation, remote_unit=0), testing.State(relations=[relation])
    )

    assert out.unit_status == testing.WaitingStatus(charm.IDENTITY_WAITING_MESSAGE)
    assert not (library.state_dir / "clouds.yaml").exists()


def test_refused_credentials_block_without_the_password(
    ctx: testing.Context,
    library: Library,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def refuse(credentials: identity.KeystoneCredentials) -> str:
        raise identity.IdentityError(f"keystone refused {credentials.describe()}: wrong password")

    monkeypatch.setattr(charm, "check_identity", refuse)
    caplog.set_level(logging.DEBUG)
    relation = keystone_relation(KEYSTONE_DATA)

    out = ctx.run(
        ctx.on.relation_changed(relation, remote_unit=0), testing.State(relations=[relation])
    )

    assert out.unit_status.name == "blocked"
    assert "keystone refused user container-compute" in out.unit_status.message
    assert PASSWORD not in out.unit_status.message
    assert all(PASSWORD not in line.message for line in ctx.juju_log)
    assert PASSWORD not in caplog.text


def test_broken_relation_removes_every_file(ctx: testing.Context, library: Library) -> None:
    relation = keystone_relation(KEYSTONE_DATA)
    state = testing.State(relations=[relation])
    ctx.run(ctx.on.relation_changed(relation, remote_unit=0), state)
    assert (library.state_dir / "clouds.yaml").exists()

    out = ctx.run(ctx.on.relation_broken(relation), state)

    left = sorted(p.name for p in library.state_dir.iterdir())
    assert not {"identity.json", "clouds.yaml", "identity-check.json"} & set(left)
    assert out.unit_status.name == "active"


def test_verify_scrubs_the_password_from_messages() -> None:
    class Refusing:
        def get_token(self) -> str:
            from keystoneauth1 import exceptions

            raise exceptions.BadRequest(f"echo {PASSWORD}")

    with pytest.raises(identity.IdentityError) as caught:
        identity.verify(Refusing(), "user x", PASSWORD)
    assert PASSWORD not in str(caught.value)


def test_load_cloud_explains_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(identity.IdentityError, match="relate the charm to keystone"):
        identity.load_cloud(tmp_path / "clouds.yaml")


def test_status_priority_keeps_config_first(ctx: testing.Context, library: Library) -> None:
    relation = keystone_relation({})

    out = ctx.run(
        ctx.on.update_status(),
        testing.State(relations=[relation], config={"worker-memory": "lots"}),
    )

    assert isinstance(out.unit_status, ops.BlockedStatus | testing.BlockedStatus)
    assert out.unit_status.message.startswith("invalid config")
