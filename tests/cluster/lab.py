"""A real 3-member LXD cluster on this machine, for the tests and the bench.

Members are privileged, nesting containers of the host's LXD (project and pool
``<prefix>-members``), each running Debian's own LXD daemon, on a private Linux bridge
``<prefix>br`` with no NAT and no uplink: iptables drops whatever would be routed in or out
of it (bridged member-to-member traffic passes; br_netfilter would drop it otherwise). The
cluster is formed with the library's own calls (``host.cluster``): bootstrap on member1
through its unix socket, one join token per member, a join preseed fed to ``lxd init``.
A client certificate is trusted cluster-wide and the cluster certificate is kept for pinning.

``down`` removes everything ``up`` made (members, images, profile, project, pool, bridge,
iptables rules), also after a half-made ``up``; everything is named after the prefix.
"""

import base64
import contextlib
import ipaddress
import random
import ssl
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pylxd
import pylxd.exceptions

from container_compute.host import cluster
from container_compute.lxdclient import Endpoint, socket_path

from .member_image import build_image

LXC = "/usr/bin/lxc"
IP = "/usr/sbin/ip"
IPTABLES = "/usr/sbin/iptables"
OPENSSL = "/usr/bin/openssl"
LXD_PORT = 8443
MEMBER_PROFILE = {
    "security.privileged": "true",
    "security.nesting": "true",
    "raw.lxc": "lxc.apparmor.profile=unconfined\n"
    "lxc.cgroup.devices.allow=a\n"
    "lxc.mount.auto=proc:rw sys:rw cgroup:rw\n",
}
# Start Debian's LXD in a member (no systemd there) and wait until it answers.
START_LXD = (
    "mkdir -p /var/log/lxd && "
    "(setsid /usr/bin/lxd --group root --logfile /var/log/lxd/lxd.log "
    "</dev/null >/var/log/lxd/stdout.log 2>&1 &) && "
    "/usr/bin/lxd waitready --timeout=60"
)
OFFLINE_THRESHOLD = "11"  # seconds before LXD counts a silent member offline (default 20)


def run(*argv: str, stdin: bytes | None = None, check: bool = True) -> str:
    """Run a host tool (absolute path, argument list); return its stdout."""
    done = subprocess.run(list(argv), input=stdin, capture_output=True, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited {done.returncode}: {done.stderr.decode(errors='replace')}"
        )
    return done.stdout.decode(errors="replace")


def _succeeds(*argv: str) -> bool:
    """Whether a host tool exits 0 (its output is dropped)."""
    return subprocess.run(list(argv), capture_output=True, check=False).returncode == 0


def free_subnet() -> ipaddress.IPv4Network:
    """Return a private /24 no interface of this host is on."""
    used = run(IP, "-4", "-o", "addr", "show")
    for _ in range(50):
        net = ipaddress.IPv4Network(f"10.{random.randint(64, 250)}.{random.randint(0, 255)}.0/24")
        if f" {net.network_address + 1}/" not in used and str(net)[:-5] not in used:
            return net
    raise RuntimeError("no free private /24 found")


@dataclass
class ClusterLab:
    """A cluster of ``size`` nested LXD members named after ``prefix``."""

    prefix: str
    workdir: Path
    size: int = 3
    log: Callable[[str], None] = print
    subnet: ipaddress.IPv4Network = field(default_factory=free_subnet)
    timings: dict[str, float] = field(default_factory=dict)
    host_socket: str = field(default_factory=lambda: str(socket_path()))

    def host_client(self, project: str | None = None) -> pylxd.Client:
        """A client of the host's own LXD (whatever LXD_SOCKET says later)."""
        return pylxd.Client(endpoint=self.host_socket, project=project, timeout=120)

    @property
    def project(self) -> str:
        """The host project of the members."""
        return f"{self.prefix}-members"

    @property
    def bridge(self) -> str:
        """The members' private bridge."""
        return f"{self.prefix}br"

    def member(self, number: int) -> str:
        """The host container name of member ``number`` (1-based)."""
        return f"{self.prefix}-member{number}"

    @staticmethod
    def server_name(number: int) -> str:
        """The cluster member name of member ``number``."""
        return f"member{number}"

    def address(self, number: int) -> str:
        """The member's address on the bridge."""
        return str(self.subnet.network_address + 10 + number)

    @property
    def url(self) -> str:
        """HTTPS endpoint of the cluster (member1)."""
        return f"https://{self.address(1)}:{LXD_PORT}"

    @property
    def client_cert(self) -> Path:
        """The trusted client certificate."""
        return self.workdir / "client.crt"

    @property
    def client_key(self) -> Path:
        """Its key."""
        return self.workdir / "client.key"

    @property
    def cluster_cert(self) -> Path:
        """The cluster certificate every member presents (pinned)."""
        return self.workdir / "cluster.crt"

    def endpoint(self, number: int = 1) -> Endpoint:
        """The cluster as an HTTPS endpoint, through member ``number``."""
        return Endpoint(
            f"https://{self.address(number)}:{LXD_PORT}",
            str(self.client_cert),
            str(self.client_key),
            str(self.cluster_cert),
        )

    def _mark(self, phase: str, begin: float) -> None:
        self.timings[phase] = round(time.monotonic() - begin, 1)
        self.log(f"cluster lab: {phase} in {self.timings[phase]}s")

    # Building -----------------------------------------------------------------------------

    def up(self) -> None:
        """Build the whole cluster; on failure the caller still calls ``down``."""
        begin = time.monotonic()
        meta, squashfs, key = build_image(log=self.log)
        self._mark("member image ready", begin)
        self._network()
        self._host_objects(meta, squashfs, key)
        self._mark("member image imported", begin)
        for number in range(1, self.size + 1):
            self._launch(number)
        for number in range(1, self.size + 1):
            self.boot_member(number)
        self._mark("members running LXD", begin)
        self._form()
        self._mark("cluster formed", begin)
        self.timings["total"] = round(time.monotonic() - begin, 1)

    def _network(self) -> None:
        host = f"{self.subnet.network_address + 1}/{self.subnet.prefixlen}"
        run(IP, "link", "add", self.bridge, "type", "bridge")
        run(IP, "addr", "add", host, "dev", self.bridge)
        run(IP, "link", "set", self.bridge, "up")
        for rule in self._iptables_rules():
            run(IPTABLES, "-I", "FORWARD", *rule)

    def _iptables_rules(self) -> list[list[str]]:
        tag = ["-m", "comment", "--comment", f"{self.prefix} cluster lab"]
        return [
            ["-i", self.bridge, "!", "-o", self.bridge, *tag, "-j", "DROP"],
            ["-o", self.bridge, "!", "-i", self.bridge, *tag, "-j", "DROP"],
        ]

    def _host_objects(self, meta: Path, squashfs: Path, key: str) -> None:
        host = self.host_client()
        host.api.projects.post(
            json={
                "name": self.project,
                "description": "container-compute cluster lab (tests)",
                "config": {"features.images": "true", "features.profiles": "true"},
            }
        )
        btrfs = (
            any(
                d["Name"] == "btrfs"
                for d in host.host_info["environment"].get("storage_supported_drivers", [])
            )
            and "btrfs" in Path("/proc/filesystems").read_text()
        )
        pool = {"name": self.project, "driver": "btrfs" if btrfs else "dir", "config": {}}
        if btrfs:
            pool["config"] = {"size": "8GiB"}
        host.api.storage_pools.post(json=pool)
        scoped = self.host_client(self.project)
        scoped.api.profiles["default"].put(
            json={
                "description": "cluster lab member",
                "config": MEMBER_PROFILE,
                "devices": {
                    "eth0": {"type": "nic", "nictype": "bridged", "parent": self.bridge},
                    "root": {"type": "disk", "path": "/", "pool": self.project},
                },
            }
        )
        run(
            LXC,
            "image",
            "import",
            str(meta),
            str(squashfs),
            "--alias",
            f"member-{key}",
            "--project",
            self.project,
        )
        self._image = f"member-{key}"

    def _launch(self, number: int) -> None:
        run(LXC, "launch", self._image, self.member(number), "--project", self.project)

    def lxc_exec(self, number: int, script: str, stdin: bytes | None = None) -> str:
        """Run ``sh -c script`` in member ``number`` (host side, ``lxc exec``)."""
        return run(
            LXC,
            "exec",
            self.member(number),
            "--project",
            self.project,
            "--",
            "/bin/sh",
            "-c",
            script,
            stdin=stdin,
        )

    def boot_member(self, number: int) -> None:
        """Give a running member its address and start its LXD daemon."""
        cidr = f"{self.address(number)}/{self.subnet.prefixlen}"
        self.lxc_exec(
            number,
            f"ip addr replace {cidr} dev eth0 && ip link set eth0 up && {START_LXD}",
        )

    def socket(self, number: int) -> str:
        """Member ``number``'s LXD unix socket, seen from the host (through its init's root)."""
        host = self.host_client(self.project)
        pid = host.api.instances[self.member(number)].state.get().json()["metadata"]["pid"]
        return f"/proc/{pid}/root/var/lib/lxd/unix.socket"

    def local_client(self, number: int, project: str | None = None) -> pylxd.Client:
        """A client of member ``number``'s daemon over its unix socket."""
        return pylxd.Client(endpoint=self.socket(number), project=project, timeout=60)

    def _form(self) -> None:
        first = self.local_client(1)
        cluster.bootstrap(first, self.server_name(1), f"{self.address(1)}:{LXD_PORT}")
        first.api.patch(json={"config": {"cluster.offline_threshold": OFFLINE_THRESHOLD}})
        run(
            OPENSSL,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:secp384r1",
            "-nodes",
            "-keyout",
            str(self.client_key),
            "-out",
            str(self.client_cert),
            "-days",
            "7",
            "-subj",
            f"/CN={self.prefix}-tests",
        )
        der = ssl.PEM_cert_to_DER_cert(self.client_cert.read_text())
        first.api.certificates.post(
            json={
                "type": "client",
                "name": f"{self.prefix}-tests",
                "certificate": base64.b64encode(der).decode(),
            }
        )
        fresh = self.local_client(1)  # host_info is read once: after bootstrap, the cluster cert
        self.cluster_cert.write_text(fresh.host_info["environment"]["certificate"])
        for number in range(2, self.size + 1):
            self.join(number)

    def join(self, number: int) -> None:
        """Join member ``number`` with a token from member1 and a rendered preseed."""
        first = self.local_client(1)
        token = cluster.issue_join_token(first, self.server_name(number))
        preseed = cluster.render_join_preseed(
            self.server_name(number),
            f"{self.address(number)}:{LXD_PORT}",
            token,
            cluster.join_member_config(first),
        )
        cluster.join(
            preseed,
            [
                LXC,
                "exec",
                self.member(number),
                "--project",
                self.project,
                "--",
                "/usr/bin/lxd",
                "init",
                "--preseed",
            ],
        )

    # Members going away and coming back ---------------------------------------------------

    def stop_member(self, number: int) -> None:
        """Stop member ``number``'s container from the host (its workers die with it)."""
        run(LXC, "stop", "--force", self.member(number), "--project", self.project)

    def start_member(self, number: int, wait_online: float = 120.0) -> None:
        """Start a stopped member again and wait until the cluster counts it online."""
        run(LXC, "start", self.member(number), "--project", self.project)
        self.boot_member(number)
        deadline = time.monotonic() + wait_online
        name = self.server_name(number)
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                state = cluster.cluster_state(self.local_client(1))
                if name in state.online:
                    return
            time.sleep(1.0)
        raise RuntimeError(f"{name} did not come back online within {wait_online:.0f}s")

    def wait_offline(self, number: int, timeout: float = 90.0) -> None:
        """Wait until the cluster counts member ``number`` offline."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.server_name(number) in cluster.cluster_state(self.local_client(1)).offline:
                return
            time.sleep(1.0)
        raise RuntimeError(f"member{number} was not seen offline within {timeout:.0f}s")

    # Tearing down -------------------------------------------------------------------------

    def down(self) -> list[str]:
        """Remove everything of this lab that exists; return what was removed."""
        removed: list[str] = []
        with contextlib.suppress(Exception):
            host = self.host_client()
            if any(p.name == self.project for p in host.projects.all()):
                scoped = self.host_client(self.project)
                for instance in scoped.instances.all():
                    with contextlib.suppress(pylxd.exceptions.LXDAPIException):
                        if instance.status != "Stopped":
                            instance.stop(force=True, wait=True)
                    with contextlib.suppress(pylxd.exceptions.LXDAPIException):
                        instance.delete(wait=True)
                        removed.append(f"member {instance.name}")
                for image in scoped.images.all():
                    with contextlib.suppress(pylxd.exceptions.LXDAPIException):
                        image.delete(wait=True)
                with contextlib.suppress(pylxd.exceptions.LXDAPIException):
                    scoped.api.profiles["default"].put(
                        json={"description": "", "config": {}, "devices": {}}
                    )
                with contextlib.suppress(pylxd.exceptions.LXDAPIException):
                    host.api.projects[self.project].delete()
                    removed.append(f"project {self.project}")
            with contextlib.suppress(pylxd.exceptions.LXDAPIException):
                host.api.storage_pools[self.project].delete()
                removed.append(f"pool {self.project}")
        for rule in self._iptables_rules():
            while _succeeds(IPTABLES, "-C", "FORWARD", *rule):
                run(IPTABLES, "-D", "FORWARD", *rule)
                removed.append("iptables rule")
        if run(IP, "link", "show", self.bridge, check=False):
            run(IP, "link", "del", self.bridge, check=False)
            removed.append(f"bridge {self.bridge}")
        return removed
