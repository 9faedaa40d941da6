"""The library calls the charm makes for lxd-cluster, against a REAL 3-member cluster.

The charm calls ``host.*`` on its own machine's LXD (the unix socket). Here that socket is
member1's, seen from the host through /proc/<member1 init>/root (``LXD_SOCKET``), so the very
calls run against a real cluster member.
"""

import json
from collections.abc import Iterator

import pytest

from container_compute import host
from container_compute.config import HostConfig
from container_compute.constants import WORKER_PROFILE
from container_compute.host import cluster
from container_compute.lxdclient import LXD_SOCKET_ENV

from .lab import ClusterLab

pytestmark = pytest.mark.functional

CONFIG = HostConfig(lxd_cluster=True, lxd_listen_https=":8443")


@pytest.fixture
def on_member1(lab: ClusterLab, monkeypatch: pytest.MonkeyPatch) -> Iterator[ClusterLab]:
    """Make member1's LXD "this host's" LXD for the library."""
    monkeypatch.setenv(LXD_SOCKET_ENV, lab.socket(1))
    yield lab


def test_status_bootstrap_and_tickets_on_a_member(on_member1: ClusterLab) -> None:
    state = host.cluster_status(CONFIG)
    assert state.enabled and state.server_name == "member1"
    assert state.size == 3 and state.offline == []
    assert state.summary() == "LXD cluster of 3"

    address = f"{on_member1.address(1)}:8443"
    assert host.bootstrap_cluster(CONFIG, "member1", address) is False  # already clustered

    ticket = host.cluster_join_ticket(CONFIG, "member9")
    assert ticket["token"] and "member9" not in json.dumps(ticket["member-config"])
    preseed = cluster.render_join_preseed(
        "member9", "10.0.0.9:8443", ticket["token"], json.loads(ticket["member-config"])
    )
    assert "cluster_token:" in preseed and 'server_name: "member9"' in preseed
    assert cluster.revoke_join_tokens(on_member1.local_client(1), "member9") == 1


def test_leaving_is_refused_while_an_instance_exists(
    on_member1: ClusterLab, cluster_config: HostConfig
) -> None:
    client = on_member1.local_client(1, project=cluster_config.lxd_project)
    body = {
        "name": "holder",
        "source": {"type": "image", "alias": "busybox"},
        "profiles": [WORKER_PROFILE],
    }
    operation = client.api.instances.post(json=body).json()["operation"]
    done = client.api.operations[operation.split("?")[0].rsplit("/", 1)[-1]].wait.get(
        params={"timeout": 60}
    )
    assert done.json()["metadata"]["status"] == "Success", done.json()
    try:
        refusal = host.cluster_leave_refusal(CONFIG)
    finally:
        client.api.instances["holder"].delete()

    assert refusal is not None
    assert f"holds 1 instance (1 in {cluster_config.lxd_project})" in refusal
