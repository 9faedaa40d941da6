"""Connect to LXD: the local daemon over its unix socket, or an endpoint over HTTPS.

An HTTPS endpoint (a remote LXD, or any member of an LXD cluster) is reached with a client
certificate the server trusts, and the server's certificate pinned by its SHA-256 fingerprint
(for a cluster: the cluster certificate, which every member presents). Certificates and the
key are given as file paths or as PEM text; PEM text is kept in 0600 files of the state
directory (named by its hash: written once, reused), never under /tmp. Proxy and CA-bundle
settings of the environment (``REQUESTS_CA_BUNDLE``...) are ignored for LXD: they would
replace the pin.

Also: whether LXD can enforce a disk ``size`` on a storage pool (its dir driver needs project
quotas), which the host report and launch-job both tell the operator.
"""

import ctypes
import hashlib
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pylxd
import pylxd.client
import pylxd.exceptions
import requests
import yaml

from .constants import LXD_PEM_FILE_PREFIX, LXD_SOCKET_PATHS
from .privatefiles import default_state_dir, update_private

if TYPE_CHECKING:
    from .config import HostConfig

LXD_SOCKET_ENV = "LXD_SOCKET"
PEM_MARK = "-----BEGIN "
REMOTE_CONNECT_TIMEOUT = 10.0


class LXDUnavailableError(RuntimeError):
    """No LXD daemon answers (at the socket, or at the endpoint)."""


class LXDAccessError(RuntimeError):
    """An LXD endpoint answered but cannot be used: untrusted client, wrong pin, bad files.

    Never transient: retrying does not help, the operator must change something.
    """


@dataclass(frozen=True)
class Endpoint:
    """An LXD endpoint over HTTPS and the credentials to use it.

    Each of ``client_cert``, ``client_key`` and ``server_cert`` is a file path or PEM text;
    PEM text is kept in ``state_dir`` (None: $CONTAINER_COMPUTE_STATE_DIR, else the default).
    """

    url: str
    client_cert: str
    client_key: str
    server_cert: str
    state_dir: Path | None = None

    def __repr__(self) -> str:
        """Never show the key."""
        return f"Endpoint({self.url!r})"


def endpoint_of(config: "HostConfig", state_dir: Path | None = None) -> Endpoint | None:
    """Return the config's LXD endpoint; None for this host's daemon (lxd-endpoint empty).

    PEM text in the config is kept in ``state_dir`` (None: the default state directory).

    Raises:
        LXDAccessError: when the key is still a Juju secret URI (only the charm reads those).
    """
    if not config.lxd_endpoint:
        return None
    if config.lxd_client_key.startswith("secret:"):
        raise LXDAccessError(
            "lxd-client-key: holds a Juju secret, which only the charm can read; "
            "outside Juju give the path of the key file"
        )
    return Endpoint(
        config.lxd_endpoint,
        config.lxd_client_cert,
        config.lxd_client_key,
        config.lxd_server_cert,
        state_dir,
    )


LXC_CONFIG_DIRS = ("~/snap/lxd/common/config", "~/.config/lxc")


def lxc_remote(name: str, config_dir: Path | None = None) -> Endpoint:
    """Return the endpoint of a remote as the ``lxc`` client keeps it (``lxc remote add``).

    The client's ``config.yml`` gives the address; its ``client.crt``/``client.key`` are the
    credentials and ``servercerts/<name>.crt`` the server certificate to pin. The directory
    is ``config_dir``, else ``$LXD_CONF``, else the snap's or the package's usual one.

    Raises:
        LXDAccessError: naming what is missing.
    """
    candidates = (
        [config_dir]
        if config_dir is not None
        else [Path(os.environ["LXD_CONF"])]
        if os.environ.get("LXD_CONF")
        else [Path(p).expanduser() for p in LXC_CONFIG_DIRS]
    )
    folder = next((c for c in candidates if (c / "config.yml").is_file()), None)
    if folder is None:
        raise LXDAccessError(
            "lxd-remote: no lxc client configuration (config.yml) in "
            + ", ".join(map(str, candidates))
        )
    try:
        remotes = (yaml.safe_load((folder / "config.yml").read_text()) or {}).get("remotes", {})
    except (OSError, yaml.YAMLError) as err:
        raise LXDAccessError(
            f"lxd-remote: {folder / 'config.yml'} is not readable: {err}"
        ) from err
    remote = remotes.get(name)
    if not isinstance(remote, dict) or not str(remote.get("addr", "")).startswith("https://"):
        known = ", ".join(
            sorted(
                n
                for n, r in remotes.items()
                if str((r or {}).get("addr", "")).startswith("https://")
            )
        )
        raise LXDAccessError(
            f"lxd-remote: {name!r} is not an HTTPS remote of the lxc client "
            f"(known: {known or 'none'})"
        )
    paths = (folder / "client.crt", folder / "client.key", folder / "servercerts" / f"{name}.crt")
    for path in paths:
        if not path.is_file():
            raise LXDAccessError(f"lxd-remote: {path} is missing")
    cert, key, server = (str(p) for p in paths)
    return Endpoint(str(remote["addr"]).rstrip("/"), cert, key, server)


def is_local(client: pylxd.Client) -> bool:
    """Whether ``client`` talks to this host's daemon over its unix socket."""
    return str(client.api._api_endpoint).startswith("http+unix://")


def socket_path() -> Path | None:
    """Return the unix socket of the local LXD daemon, or None when there is none."""
    override = os.environ.get(LXD_SOCKET_ENV)
    candidates = (Path(override),) if override else LXD_SOCKET_PATHS
    return next((path for path in candidates if path.exists()), None)


def connect(
    project: str | None = None, timeout: float = 60.0, endpoint: Endpoint | None = None
) -> pylxd.Client:
    """Return a pylxd client of the local daemon (or ``endpoint``), in ``project`` when given.

    Raises:
        LXDUnavailableError: when no socket exists or nothing answers.
        LXDAccessError: when the endpoint answers but refuses us or is not the pinned server.
    """
    if endpoint is not None:
        return connect_endpoint(endpoint, project, timeout)
    path = socket_path()
    if path is None:
        raise LXDUnavailableError(
            "no LXD socket found at " + ", ".join(str(p) for p in LXD_SOCKET_PATHS)
        )
    try:
        return pylxd.Client(endpoint=str(path), project=project, timeout=timeout)
    except Exception as err:  # pylxd raises several kinds for a dead socket
        raise LXDUnavailableError(f"LXD at {path} does not answer: {err}") from err


def pem_file(value: str, option: str, state_dir: Path | None = None) -> str:
    """Return a file path holding ``value``: the path itself, or a 0600 file of PEM text.

    PEM text is kept in ``state_dir`` (None: the default state directory), named by its
    hash: written once, reused by every later connection, never under /tmp.

    Raises:
        LXDAccessError: when the path does not exist or the text cannot be kept.
    """
    if not value.lstrip().startswith(PEM_MARK):
        if not Path(value).is_file():
            raise LXDAccessError(f"{option}: {value!r} is neither PEM text nor an existing file")
        return value
    directory = state_dir or default_state_dir()
    digest = hashlib.sha256(value.encode()).hexdigest()[:16]
    path = directory / f"{LXD_PEM_FILE_PREFIX}{digest}.pem"
    try:
        update_private(path, value.strip() + "\n")
    except OSError as err:
        raise LXDAccessError(
            f"{option}: cannot keep its PEM text in {directory} ({err.strerror or err}); "
            "give the path of a PEM file instead"
        ) from None
    return str(path)


def certificate_fingerprint(path: str) -> str:
    """Return the SHA-256 fingerprint of the PEM certificate in ``path``."""
    try:
        der = ssl.PEM_cert_to_DER_cert(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise LXDAccessError(f"{path} does not hold a PEM certificate: {err}") from err
    return hashlib.sha256(der).hexdigest()


def connect_endpoint(
    endpoint: Endpoint, project: str | None = None, timeout: float = 60.0
) -> pylxd.Client:
    """Return a client of an LXD endpoint over HTTPS, checked to trust us.

    Raises:
        LXDUnavailableError: when nothing answers at the address.
        LXDAccessError: for a server that is not the pinned one, a client certificate it
            does not trust, or unreadable certificate files.
    """
    if not endpoint.url.startswith("https://"):
        raise LXDAccessError(f"lxd-endpoint: {endpoint.url!r} is not an https:// URL")
    cert = pem_file(endpoint.client_cert, "lxd-client-cert", endpoint.state_dir)
    key = pem_file(endpoint.client_key, "lxd-client-key", endpoint.state_dir)
    server = pem_file(endpoint.server_cert, "lxd-server-cert", endpoint.state_dir)
    pinned = certificate_fingerprint(server)
    session = pylxd.client.get_session_for_url(endpoint.url, verify=server, cert=(cert, key))
    session.trust_env = False  # REQUESTS_CA_BUNDLE & co. would replace the pin
    try:
        client = pylxd.Client(
            endpoint=endpoint.url,
            project=project,
            timeout=(min(REMOTE_CONNECT_TIMEOUT, timeout), timeout),
            session=session,
        )
    except pylxd.exceptions.ClientConnectionFailed as err:
        text = str(err)
        if "fingerprint" in text.lower():
            raise LXDAccessError(
                f"lxd-server-cert: the server at {endpoint.url} is not the pinned one: its "
                f"certificate does not have the pinned fingerprint {pinned[:16]}...; check "
                "lxd-server-cert (for a cluster: the cluster certificate, cluster.crt)"
            ) from err
        if "ssl" in text.lower() or "certificate" in text.lower():
            raise LXDAccessError(f"lxd-endpoint: TLS with {endpoint.url} failed: {text}") from err
        raise LXDUnavailableError(
            f"lxd-endpoint: no LXD answers at {endpoint.url}: {_reason(text)}"
        ) from err
    except (requests.exceptions.RequestException, OSError) as err:
        raise LXDUnavailableError(
            f"lxd-endpoint: no LXD answers at {endpoint.url}: {_reason(str(err))}"
        ) from err
    if not client.trusted:
        raise LXDAccessError(
            f"lxd-client-cert: the LXD at {endpoint.url} does not trust the client certificate "
            f"(fingerprint {certificate_fingerprint(cert)[:16]}...); trust it there with "
            "'lxc config trust add <certificate>' (or a trust token)"
        )
    return client


def _reason(text: str) -> str:
    """The innermost reason of a requests connection error, briefly."""
    for marker in ("Connection refused", "timed out", "No route to host", "Name or service"):
        if marker in text:
            return marker.lower()
    return text[-200:]


_MOUNTINFO = Path("/proc/self/mountinfo")
_Q_GETINFO = 0x800005
_PRJQUOTA = 2


def _mount_of(path: Path, mountinfo: Path = _MOUNTINFO) -> tuple[str, str, str] | None:
    """Return (filesystem type, mount point, source) of the mount holding ``path``."""
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        device = os.stat(path).st_dev
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return None
    wanted = f"{os.major(device)}:{os.minor(device)}"
    for line in lines:
        head, sep, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if sep and len(fields) >= 5 and len(rest) >= 2 and fields[2] == wanted:
            return rest[0], fields[4], rest[1]
    return None


def _project_quotas_on(source: str) -> bool:
    """Ask the kernel, as LXD does, whether ``source`` (a block device) has project quotas."""
    if not source.startswith("/") or not Path(source).exists():
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        info = ctypes.create_string_buffer(64)  # struct if_dqinfo is 24 bytes
        command = (_Q_GETINFO << 8) | _PRJQUOTA
        return libc.quotactl(command, source.encode(), 0, info) == 0
    except (OSError, AttributeError):
        return False


def size_unenforced(driver: str, source: str) -> str | None:
    """Why LXD ignores a disk ``size`` on a ``driver`` pool at ``source``; None: it enforces it.

    btrfs (quota groups), zfs and lvm enforce it. LXD's dir driver applies it only when the
    filesystem under the pool has project quotas, and silently skips it otherwise.
    """
    if driver != "dir":
        return None
    mount = _mount_of(Path(source)) if source else None
    if mount is not None and _project_quotas_on(mount[2]):
        return None
    where = f"{mount[0]} at {mount[1]}" if mount else f"the filesystem of {source or '?'}"
    return f"the dir pool's filesystem ({where}) has no project quotas, and LXD then ignores it"
