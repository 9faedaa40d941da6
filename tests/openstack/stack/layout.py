"""Where a stack lives: its run directory, its ports, the venv its services run from."""

import contextlib
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path

PORT_NAMES = (
    "keystone",
    "glance",
    "neutron",
    "placement",
    "nova_api",
    "metadata",
    "rabbit",
    "rabbit_dist",
    "epmd",
    "postgres",
)
PORT_RANGE = (31000, 39000)


def _free(port: int) -> bool:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_ports(names: tuple[str, ...] = PORT_NAMES) -> dict[str, int]:
    """Return a block of consecutive free ports on 127.0.0.1, one per name (random base)."""
    for _ in range(50):
        base = PORT_RANGE[0] + secrets.randbelow((PORT_RANGE[1] - PORT_RANGE[0]) // 20) * 20
        ports = {name: base + offset for offset, name in enumerate(names)}
        if all(_free(port) for port in ports.values()):
            return ports
    raise RuntimeError("no free block of ports on 127.0.0.1")


@dataclass
class Layout:
    """A stack's directories and ports (all of it under ``root``)."""

    root: Path
    venv: Path
    ports: dict[str, int] = field(default_factory=pick_ports)

    @classmethod
    def fresh(cls, venv: Path, base: Path = Path("/var/tmp")) -> "Layout":
        """A new run directory ``<base>/cc-openstack-<random>``."""
        root = base / f"cc-openstack-{secrets.token_hex(4)}"
        root.mkdir(mode=0o755)
        layout = cls(root, venv)
        for sub in ("etc", "log", "run", "data", "wsgi"):
            (root / sub).mkdir(mode=0o755, exist_ok=True)
        return layout

    @property
    def etc(self) -> Path:
        """Configuration files."""
        return self.root / "etc"

    @property
    def log(self) -> Path:
        """One log file per process."""
        return self.root / "log"

    @property
    def run(self) -> Path:
        """Sockets and pid files."""
        return self.root / "run"

    @property
    def data(self) -> Path:
        """Databases, keys, images, instances."""
        return self.root / "data"

    @property
    def instances(self) -> Path:
        """Nova's instances directory (a shared mount: libvirtd's namespace sees its mounts)."""
        return self.data / "nova" / "instances"

    @property
    def libvirt_socket(self) -> Path:
        """Our libvirtd's read-write socket."""
        return self.run / "libvirt" / "libvirt-sock"

    @property
    def libvirt_uri(self) -> str:
        """The URI of our libvirtd's LXC driver."""
        return f"lxc:///system?socket={self.libvirt_socket}"

    def bin(self, name: str) -> str:
        """An executable of the services' venv."""
        return str(self.venv / "bin" / name)

    def url(self, service: str, path: str = "") -> str:
        """``http://127.0.0.1:<port of service><path>``."""
        return f"http://127.0.0.1:{self.ports[service]}{path}"
