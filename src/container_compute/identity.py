"""Keystone service credentials, as the keystone charm hands them over ``identity-credentials``.

The keystone leader answers a requirer's ``username`` (and ``project``) in its unit data with
``credentials_*``, ``auth_*``, ``api_version``, ``region`` and, for v3, the domain names and
ids. :func:`from_relation_data` turns that mapping into :class:`KeystoneCredentials` (``None``
while the answer is incomplete); the charm saves it with :meth:`KeystoneCredentials.save` and
the Nova backend reads it back with :meth:`KeystoneCredentials.load`. The password is never
shown by ``repr`` and never logged.

:func:`keystone_session` builds a keystoneauth1 v3 session from the credentials and
:func:`verify` proves it by getting a token (``IdentityError`` says why not, without the
password). :func:`save_clouds_yaml` writes them as a standard ``clouds.yaml`` (mode 0600) that
the agent opens with :func:`session_from_clouds_yaml` and an operator uses with
``OS_CLIENT_CONFIG_FILE=<state dir>/clouds.yaml openstack --os-cloud container-compute ...``.
"""

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .privatefiles import update_private

CREDENTIALS_FILE_NAME = "identity.json"
"""File name of the saved credentials, in the state directory."""
CLOUDS_FILE_NAME = "clouds.yaml"
"""File name of the clouds.yaml written from the credentials, in the state directory."""
CHECK_FILE_NAME = "identity-check.json"
"""File name of the result of the last token check, in the state directory."""
CLOUD_NAME = "container-compute"
"""The cloud's name in clouds.yaml (``openstack --os-cloud container-compute``)."""
KEYSTONE_TIMEOUT_SECONDS = 30.0

PROTOCOLS = ("http", "https")

# Keys keystone must have sent before the credentials are usable.
REQUIRED_KEYS = (
    "credentials_host",
    "credentials_port",
    "credentials_protocol",
    "credentials_username",
    "credentials_password",
    "credentials_project",
)

# Relation key -> field name, for every key read from keystone's unit data.
_RELATION_KEYS = {
    "auth_host": "auth_host",
    "auth_port": "auth_port",
    "auth_protocol": "auth_protocol",
    "credentials_host": "credentials_host",
    "credentials_port": "credentials_port",
    "credentials_protocol": "credentials_protocol",
    "credentials_username": "username",
    "credentials_password": "password",
    "credentials_project": "project",
    "credentials_project_id": "project_id",
    "credentials_user_domain_name": "user_domain_name",
    "credentials_user_domain_id": "user_domain_id",
    "credentials_project_domain_name": "project_domain_name",
    "credentials_project_domain_id": "project_domain_id",
    "domain": "domain",
    "api_version": "api_version",
    "region": "region",
}

_HOST_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.:-]{1,253})$")
_PORT_FIELDS = ("auth_port", "credentials_port")


def credentials_path(state_dir: Path) -> Path:
    """Return where the credentials are saved in a state directory."""
    return state_dir / CREDENTIALS_FILE_NAME


@dataclass(frozen=True)
class KeystoneCredentials:
    """A Keystone service user's credentials and where to authenticate them."""

    credentials_host: str
    credentials_port: int
    credentials_protocol: str
    username: str
    password: str = dataclasses.field(repr=False)
    project: str
    project_id: str = ""
    user_domain_name: str = ""
    user_domain_id: str = ""
    project_domain_name: str = ""
    project_domain_id: str = ""
    domain: str = ""
    auth_host: str = ""
    auth_port: int = 0
    auth_protocol: str = ""
    api_version: str = "3"
    region: str = "RegionOne"

    def __post_init__(self) -> None:
        """Check the shape of every value; raise ValueError naming the relation key."""
        for f in dataclasses.fields(self):
            _check_value(f.name, getattr(self, f.name))
        for name in ("credentials_protocol", "auth_protocol"):
            protocol = getattr(self, name)
            if protocol and protocol not in PROTOCOLS:
                raise ValueError(f"{name}: {protocol!r} is not one of {', '.join(PROTOCOLS)}")
        for name in ("credentials_host", "auth_host"):
            address = getattr(self, name)
            if address and not _HOST_RE.match(address):
                raise ValueError(f"{name}: {address!r} is not a host name or address")
        for name in ("credentials_host", "username", "password", "project"):
            if not getattr(self, name):
                raise ValueError(f"{_relation_key(name)}: is empty")

    def __repr__(self) -> str:
        """Show everything but the password."""
        shown = ", ".join(
            f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self) if f.repr
        )
        return f"KeystoneCredentials({shown}, password='***')"

    @property
    def auth_url(self) -> str:
        """The Keystone v3 URL to authenticate against (keystoneauth1 ``auth_url``)."""
        return f"{self.credentials_protocol}://{self.credentials_host}:{self.credentials_port}/v3"

    def to_dict(self) -> dict[str, Any]:
        """Return every field, password included: for the 0600 file only, never for a log."""
        return dataclasses.asdict(self)

    def save(self, path: Path) -> bool:
        """Write the credentials as JSON, mode 0600, atomically; return True if the file changed.

        Args:
            path: the file to write (its directory is created, mode 0700, if missing).

        """
        return update_private(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @property
    def user_domain(self) -> dict[str, str]:
        """keystoneauth1 arguments naming the user's domain (Default for v2-shaped answers)."""
        if self.user_domain_id:
            return {"user_domain_id": self.user_domain_id}
        if self.user_domain_name or self.domain:
            return {"user_domain_name": self.user_domain_name or self.domain}
        return {"user_domain_id": "default"}

    @property
    def project_scope(self) -> dict[str, str]:
        """keystoneauth1 arguments naming the project (by id when keystone sent one)."""
        if self.project_id:
            return {"project_id": self.project_id}
        if self.project_domain_id:
            domain = {"project_domain_id": self.project_domain_id}
        elif self.project_domain_name or self.domain:
            domain = {"project_domain_name": self.project_domain_name or self.domain}
        else:
            domain = {"project_domain_id": "default"}
        return {"project_name": self.project, **domain}

    def auth_arguments(self) -> dict[str, str]:
        """Every argument of keystoneauth1's v3 ``Password`` plugin, password included."""
        return {
            "auth_url": self.auth_url,
            "username": self.username,
            "password": self.password,
            **self.user_domain,
            **self.project_scope,
        }

    def describe(self) -> str:
        """Who authenticates where, for messages (never the password)."""
        domain = next(iter(self.user_domain.values()))
        project = next(iter(self.project_scope.values()))
        return f"user {self.username} (domain {domain}) of project {project} at {self.auth_url}"

    @classmethod
    def load(cls, path: Path) -> "KeystoneCredentials":
        """Read credentials saved by :meth:`save`.

        Raises:
            FileNotFoundError: nothing saved at ``path``.
            ValueError: the file is not saved credentials (the message names the file).

        """
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise TypeError("not a JSON object")
            names = {f.name for f in dataclasses.fields(cls)}
            return cls(**{key: value for key, value in data.items() if key in names})
        except (TypeError, json.JSONDecodeError, ValueError) as err:
            raise ValueError(f"{path}: not saved keystone credentials: {err}") from None


def from_relation_data(data: Mapping[str, str]) -> KeystoneCredentials | None:
    """Parse the keystone leader's unit data; None while keystone has not answered fully.

    Raises:
        ValueError: keystone sent a malformed value; the message names the relation key.

    """
    if any(not data.get(key) for key in REQUIRED_KEYS):
        return None
    values: dict[str, Any] = {}
    for key, name in _RELATION_KEYS.items():
        value = data.get(key, "")
        if not value:
            continue
        if name in _PORT_FIELDS:
            if not value.strip().isdigit():
                raise ValueError(f"{key}: {value!r} is not a port number")
            values[name] = int(value)
        else:
            values[name] = value
    return KeystoneCredentials(**values)


def forget(path: Path) -> bool:
    """Delete saved credentials; return True if there were any."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def forget_all(state_dir: Path) -> list[str]:
    """Delete every file made from keystone's credentials in ``state_dir``; return their names."""
    names = (CREDENTIALS_FILE_NAME, CLOUDS_FILE_NAME, CHECK_FILE_NAME)
    return [name for name in names if forget(state_dir / name)]


class IdentityError(RuntimeError):
    """Keystone refused the credentials or could not be asked; the message has no password."""


def clouds_yaml(credentials: KeystoneCredentials, cloud: str = CLOUD_NAME) -> str:
    """Return a standard clouds.yaml text holding the credentials as cloud ``cloud``."""
    import yaml

    auth = credentials.auth_arguments()
    entry: dict[str, Any] = {
        "auth_type": "password",
        "auth": auth,
        "region_name": credentials.region,
        "identity_api_version": 3,
        "interface": "public",
    }
    header = "# Written by container-compute from the identity-credentials relation. Mode 0600.\n"
    return header + yaml.safe_dump({"clouds": {cloud: entry}}, sort_keys=True)


def save_clouds_yaml(
    credentials: KeystoneCredentials, path: Path, cloud: str = CLOUD_NAME
) -> bool:
    """Write the credentials as clouds.yaml at ``path`` (mode 0600); True if it changed."""
    return update_private(path, clouds_yaml(credentials, cloud))


def load_cloud(path: Path, cloud: str = CLOUD_NAME) -> dict[str, Any]:
    """Return cloud ``cloud`` of a clouds.yaml (its ``auth``, ``region_name``, ...).

    Raises:
        IdentityError: no such file or cloud (the message says where to get credentials).
    """
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise IdentityError(
            f"no keystone credentials ({path} does not exist): relate the charm to keystone "
            "(identity-credentials), or write a clouds.yaml there"
        ) from None
    except yaml.YAMLError as err:
        raise IdentityError(f"{path} is not YAML: {err}") from None
    entry = (data or {}).get("clouds", {}).get(cloud) if isinstance(data, dict) else None
    if not isinstance(entry, dict) or not isinstance(entry.get("auth"), dict):
        raise IdentityError(f"{path} has no cloud {cloud!r} with an auth section")
    return entry


def keystone_session(
    credentials: KeystoneCredentials | Mapping[str, Any],
    timeout: float = KEYSTONE_TIMEOUT_SECONDS,
) -> Any:
    """Return a keystoneauth1 session (v3 password) for credentials or a clouds.yaml ``auth``."""
    from keystoneauth1 import session as ks_session
    from keystoneauth1.identity import v3

    if isinstance(credentials, KeystoneCredentials):
        arguments: dict[str, Any] = credentials.auth_arguments()
    else:
        arguments = dict(credentials)
    return ks_session.Session(auth=v3.Password(**arguments), timeout=int(timeout))


def session_from_clouds_yaml(path: Path, cloud: str = CLOUD_NAME) -> tuple[Any, str]:
    """Return (keystoneauth1 session, region name) of cloud ``cloud`` in a clouds.yaml."""
    entry = load_cloud(path, cloud)
    return keystone_session(entry["auth"]), str(entry.get("region_name") or "")


def verify(session: Any, who: str, password: str = "") -> str:
    """Prove a session by getting a token; return who it authenticated.

    Args:
        session: a keystoneauth1 session (see keystone_session).
        who: a description for messages (e.g. ``KeystoneCredentials.describe()``).
        password: scrubbed from any message, should a server ever echo it.

    Raises:
        IdentityError: naming the user and URL and saying why (wrong password, no answer, ...).
    """
    from keystoneauth1 import exceptions as ks_exceptions

    try:
        token = session.get_token()
    except ks_exceptions.Unauthorized:
        message = f"keystone refused {who}: wrong password, or no such user or project"
    except (ks_exceptions.ConnectFailure, ks_exceptions.ConnectTimeout) as err:
        message = f"cannot reach keystone for {who}: {type(err).__name__}"
    except ks_exceptions.ClientException as err:
        message = f"keystone could not authenticate {who}: {type(err).__name__}: {err}"
    else:
        if not token:
            message = f"keystone gave no token to {who}"
        else:
            return who
    if password:
        message = message.replace(password, "***")
    raise IdentityError(message)


def record_check(state_dir: Path, ok: bool, message: str) -> None:
    """Remember the result of the last token check (for the unit's status)."""
    update_private(state_dir / CHECK_FILE_NAME, json.dumps({"ok": ok, "message": message}) + "\n")


def last_check(state_dir: Path) -> tuple[bool, str] | None:
    """Return (ok, message) of the last token check, or None if there was none."""
    try:
        data = json.loads((state_dir / CHECK_FILE_NAME).read_text())
        return bool(data["ok"]), str(data["message"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _check_value(field_name: str, value: object) -> None:
    """Check one field's type (ports: 1-65535, auth_port may be 0 for unknown)."""
    key = _relation_key(field_name)
    if field_name in _PORT_FIELDS:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{key}: {value!r} is not a port number")
        if not (0 < value < 65536 or (value == 0 and field_name == "auth_port")):
            raise ValueError(f"{key}: {value} is not a port number (1-65535)")
        return
    if not isinstance(value, str):
        raise ValueError(f"{key}: {type(value).__name__} is not a string")
    if any(ord(char) < 32 or ord(char) == 127 for char in value):
        raise ValueError(f"{key}: contains control characters")


def _relation_key(field_name: str) -> str:
    """Return the relation key a field is read from."""
    for key, name in _RELATION_KEYS.items():
        if name == field_name:
            return key
    return field_name
