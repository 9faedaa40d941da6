"""Keystone service credentials, as the keystone charm hands them over ``identity-credentials``.

The keystone leader answers a requirer's ``username`` (and ``project``) in its unit data with
``credentials_*``, ``auth_*``, ``api_version``, ``region`` and, for v3, the domain names and
ids. :func:`from_relation_data` turns that mapping into :class:`KeystoneCredentials` (``None``
while the answer is incomplete); the charm saves it with :meth:`KeystoneCredentials.save` and
the Nova backend reads it back with :meth:`KeystoneCredentials.load`. The password is never
shown by ``repr`` and never logged.
"""

import dataclasses
import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CREDENTIALS_FILE_NAME = "identity.json"
"""File name of the saved credentials, in the state directory."""

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
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        try:
            if path.read_text() == text and (path.stat().st_mode & 0o777) == 0o600:
                return False
        except FileNotFoundError:
            pass
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(descriptor, "w") as stream:  # mkstemp creates it mode 0600
                stream.write(text)
                stream.flush()
                os.fsync(stream.fileno())
            os.chmod(temporary, 0o600)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return True

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
