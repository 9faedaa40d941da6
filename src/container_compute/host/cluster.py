"""LXD clustering of the hosts of one application: bootstrap, join tokens, joining, state.

The charm's leader bootstraps a cluster on its own daemon (``bootstrap``), issues one join
token per peer (``issue_join_token``) and hands it over in a Juju secret; each peer renders a
join preseed (``render_join_preseed``) and feeds it to ``lxd init --preseed`` (``join``).
``cluster_state`` says how big the cluster is and which members are offline; ``instance_counts``
whether it still holds instances (turning clustering off is refused while it does).

Every function takes a pylxd client, so the same calls drive the local daemon of a unit and,
in the tests, the members of a real cluster.
"""

import base64
import contextlib
import json
import subprocess
from dataclasses import dataclass, field
from typing import Any

import pylxd
import pylxd.exceptions

from .. import constants
from ..rendering import render
from .system import HostError

JOIN_PRESEED_TEMPLATE = "cluster-join-preseed.yaml.j2"
ONLINE = "Online"


@dataclass(frozen=True)
class ClusterMember:
    """One member of an LXD cluster as LXD reports it."""

    name: str
    url: str
    status: str
    message: str = ""

    @property
    def online(self) -> bool:
        """Whether LXD counts the member as online."""
        return self.status == ONLINE


@dataclass(frozen=True)
class ClusterState:
    """Whether the daemon is clustered, its own member name, and every member."""

    enabled: bool
    server_name: str = ""
    members: tuple[ClusterMember, ...] = field(default_factory=tuple)

    @property
    def size(self) -> int:
        """How many members the cluster has (0 when not clustered)."""
        return len(self.members)

    @property
    def offline(self) -> list[str]:
        """Names of the members that are not online."""
        return [m.name for m in self.members if not m.online]

    @property
    def online(self) -> list[str]:
        """Names of the members that are online, sorted."""
        return sorted(m.name for m in self.members if m.online)

    def summary(self) -> str:
        """One line for a status: size, and the members offline."""
        if not self.enabled:
            return "LXD is not clustered"
        text = f"LXD cluster of {self.size}"
        if self.offline:
            text += f" ({', '.join(sorted(self.offline))} offline)"
        return text


def cluster_state(client: pylxd.Client) -> ClusterState:
    """Return the cluster state as the daemon behind ``client`` sees it."""
    info = client.api.cluster.get().json()["metadata"]
    if not info.get("enabled"):
        return ClusterState(False)
    listing = client.api.cluster.members.get(params={"recursion": "1"}).json()["metadata"]
    members = tuple(
        ClusterMember(
            name=entry["server_name"],
            url=entry.get("url", ""),
            status=entry.get("status", ""),
            message=entry.get("message", ""),
        )
        for entry in sorted(listing, key=lambda e: e["server_name"])
    )
    return ClusterState(True, info.get("server_name", ""), members)


def bootstrap(client: pylxd.Client, server_name: str, address: str) -> bool:
    """Turn the daemon into the first member of a new cluster; False when already clustered.

    ``address`` (``host:port``) is where the members reach it; it becomes
    ``cluster.https_address`` (and ``core.https_address`` when that is unset).

    Raises:
        HostError: when LXD refuses.
    """
    if cluster_state(client).enabled:
        return False
    config = client.host_info["config"]
    updates: dict[str, Any] = {}
    if not config.get("core.https_address"):
        updates["core.https_address"] = address
    if config.get("cluster.https_address") != address:
        updates["cluster.https_address"] = address
    try:
        if updates:
            client.api.patch(json={"config": updates})
        _wait(client, client.api.cluster.put(json={"server_name": server_name, "enabled": True}))
    except (pylxd.exceptions.LXDAPIException, RuntimeError) as err:
        raise HostError(f"lxd-cluster: LXD refused to bootstrap a cluster: {err}") from err
    return True


def _wait(client: pylxd.Client, response: Any) -> dict[str, Any]:
    body = response.json()
    if body.get("type") != "async":
        return body.get("metadata") or {}
    operation = body["operation"].rsplit("/", 1)[-1]
    result = client.api.operations[operation].wait.get(params={"timeout": 120}).json()["metadata"]
    if result.get("status") != "Success":
        raise RuntimeError(result.get("err") or result.get("status"))
    return result.get("metadata") or {}


def issue_join_token(client: pylxd.Client, server_name: str) -> str:
    """Return a fresh join token for member ``server_name`` (older ones for it are revoked).

    Raises:
        HostError: when LXD refuses (e.g. a member of that name already exists).
    """
    with contextlib.suppress(pylxd.exceptions.LXDAPIException):
        for entry in (
            client.api.operations.get(params={"recursion": "1"})
            .json()["metadata"]
            .get("running", [])
        ):
            if (entry.get("metadata") or {}).get("serverName") == server_name:
                client.api.operations[entry["id"]].delete()
    try:
        response = client.api.cluster.members.post(json={"server_name": server_name})
        body = response.json()
        metadata = (body.get("metadata") or {}).get("metadata") or {}
    except pylxd.exceptions.LXDAPIException as err:
        raise HostError(f"lxd-cluster: no join token for {server_name}: {err}") from err
    return _token_from(metadata, server_name)


def revoke_join_tokens(client: pylxd.Client, server_name: str) -> int:
    """Cancel the join tokens still pending for ``server_name``; return how many."""
    revoked = 0
    with contextlib.suppress(pylxd.exceptions.LXDAPIException):
        listing = client.api.operations.get(params={"recursion": "1"}).json()["metadata"]
        for entry in listing.get("running", []):
            if (entry.get("metadata") or {}).get("serverName") == server_name:
                client.api.operations[entry["id"]].delete()
                revoked += 1
    return revoked


def _token_from(metadata: dict[str, Any], server_name: str) -> str:
    if "token" in metadata:
        return str(metadata["token"])
    token = {
        "server_name": server_name,
        "fingerprint": metadata["fingerprint"],
        "addresses": metadata["addresses"],
        "secret": metadata["secret"],
    }
    if "expiresAt" in metadata:
        token["expires_at"] = metadata["expiresAt"]
    return base64.b64encode(json.dumps(token).encode()).decode()


def join_member_config(client: pylxd.Client) -> list[dict[str, str]]:
    """What a joining member must set (e.g. each storage pool's ``source``), with values.

    LXD lists the member-specific keys; the values given are the empty ``source`` of a
    directory or loop-file pool, and the existing size of a loop pool.
    """
    info = client.api.cluster.get().json()["metadata"]
    wanted = []
    for entry in info.get("member_config") or []:
        value = ""
        if entry.get("key") == "size":
            pool = client.api.storage_pools[entry["name"]].get().json()["metadata"]
            value = pool.get("config", {}).get("size", "")
        wanted.append(
            {
                "entity": entry["entity"],
                "name": entry["name"],
                "key": entry["key"],
                "value": value,
            }
        )
    return wanted


def render_join_preseed(
    server_name: str, address: str, token: str, member_config: list[dict[str, str]]
) -> str:
    """Return the ``lxd init --preseed`` text that joins this daemon to a cluster."""
    return render(
        JOIN_PRESEED_TEMPLATE,
        server_name=server_name,
        server_address=address,
        token=token,
        member_config=member_config,
    )


def join(preseed: str, command: list[str] | None = None, timeout: float = 300.0) -> None:
    """Join the cluster: run ``lxd init --preseed`` (or ``command``) with the preseed on stdin.

    Raises:
        HostError: with LXD's message when the join fails (the token is never shown).
    """
    argv = command or [constants.LXD_DEB_BIN, "init", "--preseed"]
    try:
        subprocess.run(
            argv, input=preseed.encode(), check=True, capture_output=True, timeout=timeout
        )
    except subprocess.CalledProcessError as err:
        detail = (err.stderr or b"").decode(errors="replace").strip()[-400:]
        raise HostError(f"lxd-cluster: joining the cluster failed: {detail}") from err
    except (OSError, subprocess.TimeoutExpired) as err:
        raise HostError(f"lxd-cluster: joining the cluster failed: {err}") from err


def instance_counts(client: pylxd.Client) -> dict[str, int]:
    """Return project -> number of instances, over every project of the cluster."""
    listing = client.api.instances.get(params={"all-projects": "true", "recursion": "1"})
    counts: dict[str, int] = {}
    for entry in listing.json()["metadata"]:
        project = entry.get("project") or "default"
        counts[project] = counts.get(project, 0) + 1
    return counts


def refuse_leaving(counts: dict[str, int]) -> str | None:
    """Return why clustering cannot be turned off while instances exist; None when it can."""
    total = sum(counts.values())
    if not total:
        return None
    where = ", ".join(f"{n} in {p}" for p, n in sorted(counts.items()))
    return (
        f"lxd-cluster cannot be turned off: the cluster holds {total} instance"
        f"{'s' if total != 1 else ''} ({where}); LXD cannot take a member out of a cluster "
        "that has instances on it. Finish or delete the jobs (and move or delete other "
        "instances), then set lxd-cluster=false again"
    )


def remove_member(client: pylxd.Client, server_name: str) -> bool:
    """Remove a member from the cluster; False when it was not a member.

    Raises:
        HostError: when LXD refuses.
    """
    try:
        _wait(client, client.api.cluster.members[server_name].delete())
    except pylxd.exceptions.NotFound:
        return False
    except (pylxd.exceptions.LXDAPIException, RuntimeError) as err:
        raise HostError(f"lxd-cluster: could not remove member {server_name}: {err}") from err
    return True
