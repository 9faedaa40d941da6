"""The lxd-cluster option through ops.testing.

Bootstrap, join tickets in secrets, joining, the cluster in the status, and turning it off
refused while instances exist; a Juju secret holding lxd-endpoint's client key.
"""

from ops import testing

from container_compute.host import ClusterState
from container_compute.host.cluster import ClusterMember

from .conftest import PEM, Library

ON = {"lxd-cluster": True, "lxd-listen-https": ":8443"}
PEER = {"certificate": PEM.format("ONE"), "fingerprint": "f1", "address": "10.0.0.2:8443"}


def members(*states: str) -> ClusterState:
    return ClusterState(
        True,
        "container-compute-0",
        tuple(
            ClusterMember(f"container-compute-{n}", f"https://10.0.0.{n + 1}:8443", state)
            for n, state in enumerate(states)
        ),
    )


def test_leader_bootstraps_and_hands_a_ticket_in_a_secret(
    ctx: testing.Context, library: Library
) -> None:
    relation = testing.PeerRelation("cluster", peers_data={1: PEER})
    state = testing.State(leader=True, config=ON, relations=[relation])

    out = ctx.run(ctx.on.config_changed(), state)

    [(name, address)] = library.host.named("bootstrap_cluster")
    assert name == "container-compute-0"
    assert address.endswith(":8443")
    assert library.host.named("cluster_join_ticket") == ["container-compute-1"]
    databag = out.get_relation(relation.id).local_app_data
    secret_id = databag["join-container-compute/1"]
    [secret] = [s for s in out.secrets if s.id == secret_id]
    assert secret.tracked_content["token"] == "TOKEN-FOR-container-compute-1"
    everything = str(out.get_relation(relation.id).local_app_data) + str(
        out.get_relation(relation.id).local_unit_data
    )
    assert "TOKEN" not in everything  # only the secret's id is in relation data


def test_leader_hands_out_one_ticket_per_peer_once(ctx: testing.Context, library: Library) -> None:
    relation = testing.PeerRelation("cluster", peers_data={1: PEER, 2: {"certificate": "x"}})
    out = ctx.run(
        ctx.on.config_changed(), testing.State(leader=True, config=ON, relations=[relation])
    )
    library.host.calls.clear()

    ctx.run(ctx.on.update_status(), out)

    # unit 2 has published no address yet; unit 1 already has its ticket
    assert library.host.named("cluster_join_ticket") == []


def test_leader_removes_the_secret_once_the_peer_is_a_member(
    ctx: testing.Context, library: Library
) -> None:
    relation = testing.PeerRelation("cluster", peers_data={1: PEER})
    out = ctx.run(
        ctx.on.config_changed(), testing.State(leader=True, config=ON, relations=[relation])
    )
    library.host.cluster = members("Online", "Online")

    after = ctx.run(ctx.on.update_status(), out)

    assert "join-container-compute/1" not in after.get_relation(relation.id).local_app_data
    assert after.unit_status == testing.ActiveStatus(f"LXD cluster of 2; {library.host.summary}")


def test_peer_joins_with_the_ticket_from_the_secret(
    ctx: testing.Context, library: Library
) -> None:
    secret = testing.Secret(tracked_content={"token": "T0KEN", "member-config": "[]"}, owner="app")
    relation = testing.PeerRelation(
        "cluster",
        local_app_data={"join-container-compute/0": secret.id},
        peers_data={1: PEER},
    )
    state = testing.State(leader=False, config=ON, relations=[relation], secrets=[secret])

    out = ctx.run(ctx.on.relation_changed(relation, remote_unit=1), state)

    [(name, address, ticket)] = library.host.named("join_cluster")
    assert name == "container-compute-0"
    assert address.endswith(":8443")
    assert ticket["token"] == "T0KEN"
    assert out.unit_status.name == "active"


def test_peer_waits_for_its_ticket(ctx: testing.Context, library: Library) -> None:
    relation = testing.PeerRelation("cluster", peers_data={1: PEER})

    out = ctx.run(
        ctx.on.config_changed(), testing.State(leader=False, config=ON, relations=[relation])
    )

    assert library.host.named("join_cluster") == []
    assert out.unit_status == testing.WaitingStatus(
        "lxd-cluster: waiting for a join token from the leader"
    )


def test_status_names_the_members_offline(ctx: testing.Context, library: Library) -> None:
    library.host.cluster = members("Online", "Offline", "Online")
    relation = testing.PeerRelation("cluster", peers_data={1: PEER, 2: PEER})

    out = ctx.run(
        ctx.on.update_status(), testing.State(leader=True, config=ON, relations=[relation])
    )

    assert out.unit_status.name == "active"
    assert out.unit_status.message.startswith("LXD cluster of 3 (container-compute-1 offline); ")


def test_turning_it_off_is_refused_while_instances_exist(
    ctx: testing.Context, library: Library
) -> None:
    library.host.cluster = members("Online", "Online", "Online")
    library.host.cluster_instances = {"container-compute": 4}
    relation = testing.PeerRelation("cluster", peers_data={1: PEER, 2: PEER})
    config = {**ON, "lxd-cluster": False}

    out = ctx.run(
        ctx.on.config_changed(), testing.State(leader=True, config=config, relations=[relation])
    )

    assert library.host.named("remove_cluster_members") == []
    assert out.unit_status.name == "blocked"
    assert "lxd-cluster cannot be turned off: the cluster holds 4" in out.unit_status.message


def test_turning_it_off_without_instances_removes_the_other_members(
    ctx: testing.Context, library: Library
) -> None:
    library.host.cluster = members("Online", "Online", "Online")
    relation = testing.PeerRelation("cluster", peers_data={1: PEER, 2: PEER})
    config = {**ON, "lxd-cluster": False}

    ctx.run(
        ctx.on.config_changed(), testing.State(leader=True, config=config, relations=[relation])
    )

    assert library.host.named("remove_cluster_members") == [
        ["container-compute-1", "container-compute-2"]
    ]


def test_the_client_key_secret_is_read_and_kept_out_of_the_config(
    ctx: testing.Context, library: Library
) -> None:
    secret = testing.Secret(tracked_content={"key": "-----BEGIN EC PRIVATE KEY-----\nK\n"})
    config = {
        "lxd-endpoint": "https://10.0.0.9:8443",
        "lxd-client-cert": "/etc/cc/client.crt",
        "lxd-client-key": secret.id,
        "lxd-server-cert": "/etc/cc/cluster.crt",
    }

    ctx.run(ctx.on.config_changed(), testing.State(config=config, secrets=[secret]))

    [(loaded, _dry_run), *_] = library.host.named("configure_host")
    assert loaded.lxd_client_key == str(library.state_dir / "lxd-client.key")
    assert set(library.host.named("store_client_key")) == {"<key>"}


def test_an_unreadable_client_key_secret_blocks_naming_the_option(
    ctx: testing.Context, library: Library
) -> None:
    secret = testing.Secret(tracked_content={"not-key": "x"})
    config = {
        "lxd-endpoint": "https://10.0.0.9:8443",
        "lxd-client-cert": "/etc/cc/client.crt",
        "lxd-client-key": secret.id,
        "lxd-server-cert": "/etc/cc/cluster.crt",
    }

    out = ctx.run(ctx.on.config_changed(), testing.State(config=config, secrets=[secret]))

    assert out.unit_status.name == "blocked"
    assert out.unit_status.message.startswith("invalid config: lxd-client-key: ")
    assert library.host.named("configure_host") == []


def test_a_departed_peer_is_taken_out_of_the_cluster(
    ctx: testing.Context, library: Library
) -> None:
    library.host.cluster = members("Online", "Online", "Online")
    relation = testing.PeerRelation("cluster", peers_data={1: PEER, 2: PEER})
    state = testing.State(leader=True, config=ON, relations=[relation])

    ctx.run(ctx.on.relation_departed(relation, remote_unit=2, departing_unit=2), state)

    assert library.host.named("remove_cluster_members") == [["container-compute-2"]]
