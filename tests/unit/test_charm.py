"""State-transition tests of the charm, with the library replaced by the fakes in conftest."""

import importlib
import inspect
import json
import logging
import re
import shutil
import stat
from pathlib import Path

import ops
import pytest
from ops import testing

import charm
from container_compute import identity
from container_compute.actions import ACTION_PARAMS
from container_compute.config import HostConfig

from .conftest import PEM, FakeActions, FakeAgent, FakeHost, Library

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
PASSWORD = "s3cr3t-Pa55word-never-logged"
KEYSTONE_DATA = {
    "auth_host": "10.0.0.10",
    "auth_port": "35357",
    "auth_protocol": "http",
    "credentials_host": "10.0.0.10",
    "credentials_port": "5000",
    "credentials_protocol": "http",
    "credentials_username": "container-compute",
    "credentials_password": PASSWORD,
    "credentials_project": "services",
    "credentials_project_id": "5f1b2c",
    "credentials_user_domain_name": "service_domain",
    "credentials_user_domain_id": "9a8b7c",
    "credentials_project_domain_name": "service_domain",
    "credentials_project_domain_id": "9a8b7c",
    "domain": "service_domain",
    "api_version": "3",
    "region": "RegionOne",
}


def lxd_relation(**local_unit_data: str) -> testing.SubordinateRelation:
    """nova-compute's side of the lxd relation, asking for user nova."""
    return testing.SubordinateRelation(
        "lxd",
        remote_app_name="nova-compute",
        remote_unit_data={"user": "nova"},
        local_unit_data=local_unit_data,
    )


def our_data(state: testing.State, relation: testing.RelationBase) -> dict[str, str]:
    return dict(state.get_relation(relation.id).local_unit_data)


@pytest.mark.parametrize(
    ("module", "fake", "names"),
    [
        (
            "host",
            FakeHost,
            [
                "configure_host",
                "ensure_group_member",
                "user_exists",
                "server_identity",
                "trust_peers",
                "save_config",
            ],
        ),
        ("actions", FakeActions, ["run_action", "reap"]),
        (
            "agent",
            FakeAgent,
            ["install_service", "await_current", "agent_alive", "metrics_problem"],
        ),
    ],
)
def test_fakes_have_the_real_library_signatures(module: str, fake: type, names: list[str]) -> None:
    real = importlib.import_module(f"container_compute.{module}")

    for name in names:
        real_params = list(inspect.signature(getattr(real, name)).parameters)
        fake_params = list(inspect.signature(getattr(fake, name)).parameters)[1:]  # self
        assert fake_params == real_params[: len(fake_params)], name
        assert all(
            inspect.signature(getattr(real, name)).parameters[extra].default
            is not inspect.Parameter.empty
            for extra in real_params[len(fake_params) :]
        ), name


def test_real_library_has_the_errors_the_charm_catches() -> None:
    host = importlib.import_module("container_compute.host")
    actions = importlib.import_module("container_compute.actions")

    assert issubclass(host.HostError, Exception)
    assert issubclass(actions.ActionError, Exception)


# Host events.


@pytest.mark.parametrize("event", ["install", "start", "config_changed", "upgrade_charm"])
def test_host_event_configures_host_saves_config_and_installs_agent(
    ctx: testing.Context, library: Library, event: str
) -> None:
    out = ctx.run(getattr(ctx.on, event)(), testing.State(config={"storage-driver": "dir"}))

    applied = [args for args in library.host.named("configure_host") if not args[1]]
    assert len(applied) == 1
    assert applied[0][0].storage_driver == "dir"
    assert library.host.named("save_config") == [(applied[0][0], library.state_dir)]
    # The running agent takes the new config and code within the hook (restarted if needed).
    assert library.agent.calls == [
        ("install_service", library.state_dir),
        ("await_current", (library.state_dir, True)),
    ]
    assert out.unit_status == testing.ActiveStatus(library.host.summary)


def test_invalid_config_blocks_and_changes_nothing(ctx: testing.Context, library: Library) -> None:
    out = ctx.run(ctx.on.config_changed(), testing.State(config={"worker-memory": "lots"}))

    assert out.unit_status.name == "blocked"
    assert out.unit_status.message.startswith("invalid config: worker-memory: ")
    assert library.host.calls == []
    assert library.agent.calls == []


def test_host_problems_are_logged_and_block(ctx: testing.Context, library: Library) -> None:
    library.host.problems = ["storage-driver: btrfs is not usable: install btrfs-progs"]

    out = ctx.run(ctx.on.config_changed(), testing.State())

    assert out.unit_status == testing.BlockedStatus(library.host.problems[0])
    assert any(
        line.level == "ERROR" and "btrfs is not usable" in line.message for line in ctx.juju_log
    )


def test_update_status_reaps_orphaned_workers(ctx: testing.Context, library: Library) -> None:
    library.actions.reaped = ["cc-old-0-1", "cc-old-1-1"]

    ctx.run(ctx.on.update_status(), testing.State())

    assert library.actions.calls == [("reap", (HostConfig(), library.state_dir))]
    assert any("cc-old-0-1, cc-old-1-1" in line.message for line in ctx.juju_log)


def test_update_status_survives_a_reaper_error(ctx: testing.Context, library: Library) -> None:
    library.actions.error = library.actions.ActionError("LXD is not answering")

    out = ctx.run(ctx.on.update_status(), testing.State())

    assert any("LXD is not answering" in line.message for line in ctx.juju_log)
    assert out.unit_status.name == "active"


# lxd relation (nova-compute).


@pytest.mark.parametrize("event", ["relation_joined", "relation_changed"])
def test_lxd_relation_adds_user_to_group_and_answers_nonce_and_pool(
    ctx: testing.Context, library: Library, event: str
) -> None:
    relation = lxd_relation()
    state = testing.State(relations=[relation], config={"storage-pool": "fastpool"})

    out = ctx.run(getattr(ctx.on, event)(relation), state)

    assert library.host.named("ensure_group_member") == [("nova", "lxd")]
    data = our_data(out, relation)
    assert UUID_RE.match(data["nonce"])
    assert data["pool"] == "fastpool"
    assert out.unit_status.name == "active"


def test_lxd_nonce_is_stable_when_nothing_changed(ctx: testing.Context, library: Library) -> None:
    library.host.group_members.add(("nova", "lxd"))
    relation = lxd_relation(nonce="0b6d1e1c-5a2e-4b5e-9a51-3f0f2f0f0f0f", pool="container-compute")

    out = ctx.run(ctx.on.relation_changed(relation), testing.State(relations=[relation]))

    assert library.host.named("ensure_group_member") == [("nova", "lxd")]
    assert our_data(out, relation)["nonce"] == "0b6d1e1c-5a2e-4b5e-9a51-3f0f2f0f0f0f"


def test_lxd_nonce_changes_when_user_joins_group(ctx: testing.Context, library: Library) -> None:
    relation = lxd_relation(nonce="0b6d1e1c-5a2e-4b5e-9a51-3f0f2f0f0f0f")

    out = ctx.run(ctx.on.relation_changed(relation), testing.State(relations=[relation]))

    nonce = our_data(out, relation)["nonce"]
    assert UUID_RE.match(nonce) and nonce != "0b6d1e1c-5a2e-4b5e-9a51-3f0f2f0f0f0f"


@pytest.mark.parametrize("host_changed", [True, False])
def test_lxd_nonce_follows_host_changes_on_config_changed(
    ctx: testing.Context, library: Library, host_changed: bool
) -> None:
    library.host.group_members.add(("nova", "lxd"))
    library.host.changes = ["worker profile: limits.cpu 1 -> 2"] if host_changed else []
    relation = lxd_relation(nonce="0b6d1e1c-5a2e-4b5e-9a51-3f0f2f0f0f0f")

    out = ctx.run(ctx.on.config_changed(), testing.State(relations=[relation]))

    nonce = our_data(out, relation)["nonce"]
    assert (nonce != "0b6d1e1c-5a2e-4b5e-9a51-3f0f2f0f0f0f") is host_changed
    assert UUID_RE.match(nonce)


def test_lxd_user_missing_waits_without_nonce(ctx: testing.Context, library: Library) -> None:
    library.host.users = {"root"}
    relation = lxd_relation()

    out = ctx.run(ctx.on.relation_changed(relation), testing.State(relations=[relation]))

    assert library.host.named("ensure_group_member") == []
    data = our_data(out, relation)
    assert "nonce" not in data
    assert data["pool"] == "container-compute"
    assert out.unit_status == testing.WaitingStatus(
        "waiting for user nova to exist (from nova-compute)"
    )


def test_lxd_invalid_user_name_is_never_passed_to_the_host(
    ctx: testing.Context, library: Library
) -> None:
    library.host.users.add("-G root")
    relation = testing.SubordinateRelation(
        "lxd", remote_app_name="nova-compute", remote_unit_data={"user": "-G root"}
    )

    out = ctx.run(ctx.on.relation_changed(relation), testing.State(relations=[relation]))

    assert library.host.named("ensure_group_member") == []
    assert "nonce" not in our_data(out, relation)
    assert any("invalid user name '-G root'" in line.message for line in ctx.juju_log)


# cluster peers.


def test_cluster_publishes_certificate_and_trusts_peers(
    ctx: testing.Context, library: Library
) -> None:
    relation = testing.PeerRelation(
        "cluster",
        peers_data={
            1: {"certificate": PEM.format("ONE")},
            2: {"certificate": PEM.format("TWO")},
            3: {},
        },
    )
    state = testing.State(relations=[relation], config={"lxd-listen-https": ":8443"})

    out = ctx.run(ctx.on.relation_changed(relation, remote_unit=1), state)

    data = our_data(out, relation)
    assert data["certificate"] == library.host.certificate
    assert data["fingerprint"] == "f1ng3rpr1nt"
    assert data["address"] == "192.0.2.0:8443"
    assert library.host.named("server_identity") == ["192.0.2.0"]
    assert library.host.named("trust_peers") == [
        {"container-compute/1": PEM.format("ONE"), "container-compute/2": PEM.format("TWO")}
    ]


def test_cluster_departed_unit_is_no_longer_trusted(
    ctx: testing.Context, library: Library
) -> None:
    relation = testing.PeerRelation(
        "cluster",
        peers_data={1: {"certificate": PEM.format("ONE")}, 2: {"certificate": PEM.format("TWO")}},
    )
    state = testing.State(relations=[relation], config={"lxd-listen-https": ":8443"})

    ctx.run(ctx.on.relation_departed(relation, remote_unit=2, departing_unit=2), state)

    assert library.host.named("trust_peers") == [{"container-compute/1": PEM.format("ONE")}]


def test_cluster_host_errors_are_logged_not_fatal(
    ctx: testing.Context, library: Library, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_args: object) -> None:
        raise library.host.HostError("LXD does not answer on this host")

    monkeypatch.setattr(library.host, "server_identity", refuse)
    monkeypatch.setattr(library.host, "trust_peers", refuse)
    relation = testing.PeerRelation("cluster", peers_data={1: {"certificate": PEM.format("ONE")}})
    state = testing.State(relations=[relation], config={"lxd-listen-https": ":8443"})

    out = ctx.run(ctx.on.relation_changed(relation, remote_unit=1), state)

    assert "certificate" not in our_data(out, relation)
    errors = [line.message for line in ctx.juju_log if line.level == "ERROR"]
    assert len([m for m in errors if "LXD does not answer" in m]) == 2


def test_cluster_without_listener_publishes_and_trusts_nothing(
    ctx: testing.Context, library: Library
) -> None:
    relation = testing.PeerRelation(
        "cluster",
        peers_data={1: {"certificate": PEM.format("ONE")}},
        local_unit_data={"certificate": PEM.format("OLD"), "fingerprint": "old", "address": "x"},
    )

    out = ctx.run(
        ctx.on.relation_changed(relation, remote_unit=1), testing.State(relations=[relation])
    )

    data = our_data(out, relation)
    assert not {"certificate", "fingerprint", "address"} & data.keys()
    assert library.host.named("trust_peers") == []
    assert library.host.named("server_identity") == []


# identity-credentials (keystone).


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({}, {"username": "container-compute"}),
        (
            {"keystone-username": "hpc", "keystone-project": "batch"},
            {"username": "hpc", "project": "batch"},
        ),
    ],
)
def test_identity_joined_requests_service_user(
    ctx: testing.Context, library: Library, config: dict[str, str], expected: dict[str, str]
) -> None:
    relation = testing.Relation("identity-credentials", remote_app_name="keystone")

    out = ctx.run(
        ctx.on.relation_joined(relation), testing.State(relations=[relation], config=config)
    )

    data = our_data(out, relation)
    assert {key: data[key] for key in ("username", "project") if key in data} == expected
    assert not (library.state_dir / "identity.json").exists()


def test_identity_credentials_are_saved_and_password_never_logged(
    ctx: testing.Context, library: Library, caplog: pytest.LogCaptureFixture
) -> None:
    relation = testing.Relation(
        "identity-credentials",
        remote_app_name="keystone",
        remote_units_data={0: {}, 1: KEYSTONE_DATA},
    )
    caplog.set_level(logging.DEBUG)

    ctx.run(ctx.on.relation_changed(relation, remote_unit=1), testing.State(relations=[relation]))

    path = library.state_dir / "identity.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    saved = identity.KeystoneCredentials.load(path)
    assert saved.password == PASSWORD
    assert saved.auth_url == "http://10.0.0.10:5000/v3"
    assert saved.project_domain_name == "service_domain"
    assert json.loads(path.read_text())["username"] == "container-compute"
    assert any("keystone credentials saved" in line.message for line in ctx.juju_log)
    assert all(PASSWORD not in line.message for line in ctx.juju_log)
    assert PASSWORD not in caplog.text


def test_identity_incomplete_or_bad_credentials_are_not_saved(
    ctx: testing.Context, library: Library
) -> None:
    relation = testing.Relation(
        "identity-credentials",
        remote_units_data={
            0: {k: v for k, v in KEYSTONE_DATA.items() if k != "credentials_password"},
            1: {**KEYSTONE_DATA, "credentials_port": "five thousand"},
        },
    )

    ctx.run(ctx.on.relation_changed(relation, remote_unit=1), testing.State(relations=[relation]))

    assert not (library.state_dir / "identity.json").exists()
    assert any("credentials_port" in line.message for line in ctx.juju_log)
    assert all(PASSWORD not in line.message for line in ctx.juju_log)


def test_identity_broken_forgets_credentials(ctx: testing.Context, library: Library) -> None:
    path = library.state_dir / "identity.json"
    identity.from_relation_data(KEYSTONE_DATA).save(path)  # type: ignore[union-attr]
    relation = testing.Relation("identity-credentials", remote_units_data={0: KEYSTONE_DATA})

    ctx.run(ctx.on.relation_broken(relation), testing.State(relations=[relation]))

    assert not path.exists()


def test_keystone_credentials_parse_and_hide_the_password(tmp_path: Path) -> None:
    assert identity.from_relation_data({**KEYSTONE_DATA, "credentials_password": ""}) is None

    credentials = identity.from_relation_data(KEYSTONE_DATA)

    assert credentials is not None
    assert (credentials.credentials_port, credentials.auth_port) == (5000, 35357)
    assert credentials.auth_url == "http://10.0.0.10:5000/v3"
    assert PASSWORD not in repr(credentials) and PASSWORD not in str(credentials)
    path = tmp_path / "identity.json"
    assert credentials.save(path) is True
    assert credentials.save(path) is False
    assert identity.KeystoneCredentials.load(path) == credentials


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("credentials_protocol", "ftp"),
        ("credentials_port", "70000"),
        ("auth_port", "x"),
        ("credentials_host", "a host"),
        ("region", "Region\nOne"),
    ],
)
def test_keystone_malformed_value_is_refused_naming_the_key(key: str, value: str) -> None:
    with pytest.raises(ValueError, match=f"^{key}: "):
        identity.from_relation_data({**KEYSTONE_DATA, key: value})


# Actions.

VALID_PARAMS = {
    "launch-job": {"command": "echo $TASK_INDEX", "tasks": 4, "env": ["A=1"]},
    "job-status": {"job": "j-1"},
    "wait-job": {"job": "j-1", "wait-timeout": "10m"},
    "gather-results": {"job": "j-1", "indexes": "0-3,7"},
    "cancel-job": {"job": "j-1"},
    "retry-job": {"job": "j-1", "indexes": "2,5", "env": ["A=1"]},
    "task-logs": {"job": "j-1", "task": 3, "tail": 20, "stderr": True},
    "list-jobs": {"limit": 5},
    "delete-job": {"job": "j-1"},
    "build-worker-image": {"alias": "worker-2"},
}
INVALID_PARAMS = {
    "launch-job": ({"command": "true", "timeout": "soon"}, "timeout"),
    "job-status": ({"job": "Not An Id"}, "job"),
    "wait-job": ({"job": "j-1", "wait-timeout": "25h"}, "wait-timeout"),
    "gather-results": ({"job": "j-1", "indexes": "7-3"}, "indexes"),
    "cancel-job": ({"job": "../etc"}, "job"),
    "retry-job": ({"job": "j-1", "env": ["CC_COMMAND=x"]}, "env"),
    "task-logs": ({"job": "j-1", "task": -1}, "task"),
    "list-jobs": ({"state": "sleeping"}, "state"),
    "delete-job": ({"job": ""}, "job"),
    "build-worker-image": ({"suite": "Bookworm 12"}, "suite"),
}


def test_action_tables_cover_every_action() -> None:
    assert set(VALID_PARAMS) == set(INVALID_PARAMS) == set(ACTION_PARAMS)


@pytest.mark.parametrize("action", sorted(ACTION_PARAMS))
def test_action_success_passes_params_and_results_through(
    ctx: testing.Context, library: Library, action: str
) -> None:
    library.actions.result = {"job": "j-1", "state": "running", "tasks": {"done": "3"}}

    ctx.run(ctx.on.action(action, params=VALID_PARAMS[action]), testing.State())

    [(name, (called, params, config, state_dir))] = library.actions.calls
    assert (name, called, state_dir) == ("run_action", action, library.state_dir)
    assert isinstance(params, ACTION_PARAMS[action][0])
    assert isinstance(config, HostConfig)
    assert ctx.action_results == library.actions.result
    assert ctx.action_logs == [f"running {action}"]


@pytest.mark.parametrize(
    ("action", "params"),
    [
        ("wait-job", {"job": "j-1"}),
        ("wait-job", {"job": "j-1", "wait-timeout": "600s"}),
        ("launch-job", {"command": "true", "wait": True}),
        ("launch-job", {"command": "true", "wait-timeout": "2h"}),
    ],
)
def test_action_waits_within_the_bound_run(
    ctx: testing.Context, library: Library, action: str, params: dict[str, object]
) -> None:
    ctx.run(ctx.on.action(action, params=params), testing.State())

    assert [name for name, _args in library.actions.calls] == ["run_action"]


@pytest.mark.parametrize(
    ("action", "params"),
    [
        ("wait-job", {"job": "j-1", "wait-timeout": "30m"}),
        ("wait-job", {"job": "j-1", "wait-timeout": "601s"}),
        ("launch-job", {"command": "true", "wait": True, "wait-timeout": "2h"}),
    ],
)
def test_action_longer_wait_is_refused_naming_the_bound(
    ctx: testing.Context, library: Library, action: str, params: dict[str, object]
) -> None:
    """A waiting action holds Juju's machine lock: never more than 10 minutes."""
    with pytest.raises(testing.ActionFailed) as failure:
        ctx.run(ctx.on.action(action, params=params), testing.State())

    message = failure.value.message
    assert message.startswith("wait-timeout: ")
    assert "over the 10m a Juju action may wait" in message
    assert "container-compute wait-job" in message
    assert library.actions.calls == []


@pytest.mark.parametrize("action", sorted(ACTION_PARAMS))
def test_action_invalid_params_fail_naming_the_param(
    ctx: testing.Context, library: Library, action: str
) -> None:
    params, bad_param = INVALID_PARAMS[action]

    with pytest.raises(testing.ActionFailed) as failure:
        ctx.run(ctx.on.action(action, params=params), testing.State())

    assert f"{bad_param}: " in failure.value.message
    assert library.actions.calls == []


@pytest.mark.parametrize("action", sorted(ACTION_PARAMS))
def test_action_error_fails_with_its_message(
    ctx: testing.Context, library: Library, action: str
) -> None:
    library.actions.error = library.actions.ActionError("job j-1 is still running: wait")

    with pytest.raises(testing.ActionFailed) as failure:
        ctx.run(ctx.on.action(action, params=VALID_PARAMS[action]), testing.State())

    assert failure.value.message == "job j-1 is still running: wait"
    assert ctx.action_results is None


def test_action_with_invalid_config_fails_and_runs_nothing(
    ctx: testing.Context, library: Library
) -> None:
    state = testing.State(config={"max-parallel-workers": 0})

    with pytest.raises(testing.ActionFailed) as failure:
        ctx.run(ctx.on.action("list-jobs"), state)

    assert failure.value.message.startswith("invalid config: max-parallel-workers: ")
    assert library.actions.calls == []


# Status.


@pytest.mark.parametrize(
    ("config", "problems", "users", "alive", "expected"),
    [
        (
            {"worker-cpu": "many"},
            ["a problem"],
            set(),
            False,
            testing.BlockedStatus(
                "invalid config: worker-cpu: 'many' is not a CPU count (e.g. 2) or a CPU set "
                "(e.g. 0-3,6)"
            ),
        ),
        ({}, ["pool: a problem"], set(), False, testing.BlockedStatus("pool: a problem")),
        (
            {},
            [],
            set(),
            True,
            testing.WaitingStatus("waiting for user nova to exist (from nova-compute)"),
        ),
        # A waiting status never hides a dead agent: ops shows the most severe status.
        ({}, [], set(), False, testing.BlockedStatus(charm.AGENT_DOWN_MESSAGE)),
        ({}, [], {"nova"}, False, testing.BlockedStatus(charm.AGENT_DOWN_MESSAGE)),
        ({}, [], {"nova"}, True, testing.ActiveStatus("btrfs pool x; workers unprivileged")),
    ],
    ids=["config", "host-problems", "lxd-user", "lxd-user-and-agent", "agent", "active"],
)
def test_status_priorities(
    ctx: testing.Context,
    library: Library,
    config: dict[str, str],
    problems: list[str],
    users: set[str],
    alive: bool,
    expected: ops.StatusBase,
) -> None:
    library.host.problems = problems
    library.host.users = users
    library.host.summary = "btrfs pool x; workers unprivileged"
    library.agent.alive = alive
    relation = lxd_relation()

    out = ctx.run(ctx.on.update_status(), testing.State(relations=[relation], config=config))

    assert out.unit_status == expected
    assert all(dry_run for _config, dry_run in library.host.named("configure_host"))


def test_metrics_the_agent_cannot_serve_block_naming_the_option(
    ctx: testing.Context, library: Library
) -> None:
    problem = "metrics-listen 127.0.0.1:9790: cannot listen: Address already in use"
    library.agent.metrics_problems["127.0.0.1:9790"] = problem

    out = ctx.run(ctx.on.update_status(), testing.State())
    assert out.unit_status == testing.BlockedStatus(problem)

    # Another value is not blocked by what the agent said of the old one.
    out = ctx.run(ctx.on.update_status(), testing.State(config={"metrics-listen": "[::1]:9791"}))
    assert out.unit_status == testing.ActiveStatus(out.unit_status.message)


def test_a_malformed_metrics_listen_blocks_and_changes_nothing(
    ctx: testing.Context, library: Library
) -> None:
    out = ctx.run(ctx.on.config_changed(), testing.State(config={"metrics-listen": "9790"}))

    assert out.unit_status == testing.BlockedStatus(
        "invalid config: metrics-listen: '9790' is not HOST:PORT (e.g. 127.0.0.1:9790 or "
        "[::1]:9790)"
    )
    assert library.host.named("save_config") == []
    assert library.agent.calls == []


def test_cos_agent_publishes_the_agents_endpoint_rules_and_dashboards(
    library: Library, tmp_path: Path
) -> None:
    # The charm's own files, copied: Scenario writes the charm's metadata into its root.
    for directory in ("prometheus_alert_rules", "grafana_dashboards"):
        shutil.copytree(Path(charm.__file__).parent / directory, tmp_path / "src" / directory)
    ctx = testing.Context(charm.ContainerComputeCharm, charm_root=tmp_path)
    relation = testing.Relation("cos-agent", remote_app_name="grafana-agent")

    out = ctx.run(ctx.on.relation_joined(relation), testing.State(relations=[relation]))

    data = json.loads(out.get_relation(relation.id).local_unit_data["config"])
    assert data["metrics_scrape_jobs"][0]["static_configs"] == [{"targets": ["127.0.0.1:9790"]}]
    assert data["subordinate"] is True and data["log_slots"] == []
    alerts = {r["alert"] for g in data["metrics_alert_rules"]["groups"] for r in g["rules"]}
    assert "ContainerComputeAgentDown" in alerts
    assert len(data["dashboards"]) == 3

    state = testing.State(relations=[relation], config={"metrics-listen": ""})
    out = ctx.run(ctx.on.config_changed(), state)
    data = json.loads(out.get_relation(relation.id).local_unit_data["config"])
    assert data["metrics_scrape_jobs"] == [] and data["metrics_alert_rules"]["groups"]


def test_status_checks_host_with_dry_run_only(ctx: testing.Context, library: Library) -> None:
    ctx.run(ctx.on.update_status(), testing.State())

    assert [dry_run for _config, dry_run in library.host.named("configure_host")] == [True]


def test_status_message_keeps_whole_problems_and_counts_the_rest() -> None:
    problems = [f"storage-driver: problem number {i} " + "x" * 60 for i in range(6)]

    message = charm._join_problems(problems)

    assert len(message) <= charm.MAX_STATUS_LENGTH
    assert message.startswith(problems[0] + "; " + problems[1])
    assert message.endswith(" more: see juju debug-log)")
    shown = message.count("storage-driver:")
    assert f"(+{6 - shown} more" in message


def test_status_message_cuts_one_overlong_problem() -> None:
    message = charm._join_problems(["y" * 500, "second"])

    assert len(message) <= charm.MAX_STATUS_LENGTH
    assert message.startswith("yyy")
    assert message.endswith("… (+1 more: see juju debug-log)")


def test_workload_version_is_lxds(ctx: testing.Context, library: Library) -> None:
    out = ctx.run(ctx.on.install(), testing.State())
    assert out.workload_version == "5.0.2"


def test_stop_removes_the_agent_service(ctx: testing.Context, library: Library) -> None:
    ctx.run(ctx.on.stop(), testing.State())
    assert ("remove_service", None) in library.agent.calls
    assert library.host.named("teardown_host") == []


def test_remove_tears_the_host_down_and_logs_what_is_left(
    ctx: testing.Context, library: Library
) -> None:
    ctx.run(ctx.on.remove(), testing.State())
    (call,) = library.host.named("teardown_host")
    assert call[1] is False  # a real teardown, not a dry run
    logged = [record.message for record in ctx.juju_log]
    assert any("teardown: deleted profile x" in line for line in logged)
    assert any("teardown left project p: it still holds y" in line for line in logged)
