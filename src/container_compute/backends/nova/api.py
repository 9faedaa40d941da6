"""Nova (and the Glance and Neutron look-ups it needs) through python-novaclient.

One keystoneauth1 session from the clouds.yaml the charm writes; an explicit microversion the
client supports. Nova's errors become messages a user can act on: which flavor, image,
network or zone is unknown, that a quota is exhausted, a server's fault.
"""

import json
import logging
import re
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from keystoneauth1 import exceptions as ks_exceptions
from keystoneauth1 import session as ks_session
from novaclient import client as nova_client
from novaclient import exceptions as nova_exceptions

from ...constants import IMAGE_CONFIG_PROPERTY, REDACTED
from ...instruments import count_api_error
from .. import LaunchError

logger = logging.getLogger(__name__)
_USER_DATA_RE = re.compile(r'(user_data"\s*:\s*")[^"]*')

MICROVERSION = "2.87"
CONNECT_RETRIES = 3  # soft-anti-affinity groups (2.64 form), nics='none' (2.37)
T = TypeVar("T")


class NotFoundError(ValueError):
    """A flavor, image, network or zone named by the config or the job does not exist."""


def describe_error(err: Exception) -> str:
    """A one-line message for a novaclient or keystoneauth error (Nova's own words kept)."""
    if isinstance(err, nova_exceptions.ClientException):
        message = getattr(err, "message", "") or str(err)
        code = getattr(err, "code", "")
        if code == 403 and "quota" in str(message).lower():
            return (
                f"Nova quota exceeded: {message} (raise the project's quota or lower parallelism)"
            )
        return f"Nova answered {code}: {message}"
    if isinstance(err, ks_exceptions.ConnectFailure | ks_exceptions.ConnectTimeout):
        return f"cannot reach Nova or Keystone: {type(err).__name__}"
    if isinstance(err, ks_exceptions.Unauthorized):
        return "keystone refused the saved credentials (see the unit's status)"
    return f"{type(err).__name__}: {err}"


class _UserDataFilter(logging.Filter):
    """Blank the user-data (it holds the job's environment) in the HTTP debug log lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "user_data" in message:
            record.msg, record.args = _USER_DATA_RE.sub(rf"\1{REDACTED}", message), ()
        return True


# keystoneauth logs each request and response body here at DEBUG (novaclient's ``logger``).
http_logger = logging.getLogger(__name__ + ".http")
http_logger.addFilter(_UserDataFilter())


class NovaApi:
    """The calls the Nova backend makes, with look-ups cached per backend."""

    def __init__(self, session: Any, region: str = "") -> None:
        """Talk to Nova through a keystoneauth1 session."""
        self.session = session
        self.region = region
        self._local = threading.local()
        self._flavors: dict[str, Any] = {}
        self._images: dict[str, str] = {}
        self._networks: dict[str, str] = {}

    @property
    def client(self) -> Any:
        """This thread's novaclient (each thread has its own HTTP session; one token).

        Concurrent calls through one client were seen to get each other's answers.
        """
        client = getattr(self._local, "client", None)
        if client is None:
            session = ks_session.Session(
                auth=self.session.auth, timeout=getattr(self.session, "timeout", None) or 60
            )
            client = nova_client.Client(
                MICROVERSION,
                session=session,
                region_name=self.region or None,
                timeout=60,
                # A pooled connection the API server closed meanwhile (keep-alive) resets.
                connect_retries=CONNECT_RETRIES,
                logger=http_logger,
            )
            self._local.client = client
        return client

    def call(self, what: str, function: Callable[[], T]) -> T:
        """Run one API call; raise LaunchError saying what failed and Nova's reason."""
        try:
            return function()
        except (nova_exceptions.ClientException, ks_exceptions.ClientException) as err:
            count_api_error("nova")
            raise LaunchError(f"{what}: {describe_error(err)}") from err

    def flavor(self, name_or_id: str) -> Any:
        """The flavor with this id or name.

        Raises:
            NotFoundError: no such flavor (the message lists the ones there are).
        """
        if name_or_id in self._flavors:
            return self._flavors[name_or_id]
        flavors = self.call("listing flavors", lambda: self.client.flavors.list(is_public=None))
        for flavor in flavors:
            if name_or_id in (flavor.id, flavor.name):
                self._flavors[name_or_id] = flavor
                return flavor
        known = ", ".join(sorted(f.name for f in flavors)) or "none"
        raise NotFoundError(f"flavor {name_or_id!r} does not exist in Nova (flavors: {known})")

    def image(self, name_or_id: str) -> str:
        """The id of the Glance image with this id or name.

        Raises:
            NotFoundError: no such image.
        """
        if name_or_id not in self._images:
            try:
                found = self.client.glance.find_image(name_or_id)
            except nova_exceptions.NotFound:
                raise NotFoundError(
                    f"image {name_or_id!r} does not exist in Glance (build one with "
                    "build-worker-image target=nova)"
                ) from None
            except nova_exceptions.NoUniqueMatch:
                raise NotFoundError(
                    f"image name {name_or_id!r} is not unique: use its id"
                ) from None
            self._images[name_or_id] = found.id
        return self._images[name_or_id]

    def image_config(self, name_or_id: str) -> dict[str, Any] | None:
        """The OCI config a Glance image built from an OCI source carries; None: none."""
        from keystoneauth1 import adapter

        glance = adapter.Adapter(
            self.session, service_type="image", interface="public", region_name=self.region or None
        )
        image_id = self.image(name_or_id)
        text = glance.get(f"/v2/images/{image_id}").json().get(IMAGE_CONFIG_PROPERTY)
        return json.loads(text) if text else None

    def network(self, name_or_id: str) -> str:
        """The id of the Neutron network with this id or name.

        Raises:
            NotFoundError: no such network.
        """
        if name_or_id not in self._networks:
            try:
                found = self.client.neutron.find_network(name_or_id)
            except nova_exceptions.NotFound:
                raise NotFoundError(f"network {name_or_id!r} does not exist in Neutron") from None
            except nova_exceptions.NoUniqueMatch:
                raise NotFoundError(
                    f"network name {name_or_id!r} is not unique: use its id"
                ) from None
            self._networks[name_or_id] = found.id
        return self._networks[name_or_id]

    def check_zone(self, zone: str) -> None:
        """Raise NotFoundError when ``zone`` is not an available availability zone."""
        zones = self.call(
            "listing availability zones",
            lambda: self.client.availability_zones.list(detailed=False),
        )
        names = sorted(z.zoneName for z in zones if getattr(z, "zoneState", {}).get("available"))
        if zone not in names:
            raise NotFoundError(
                f"availability zone {zone!r} is not available "
                f"(zones: {', '.join(names) or 'none'})"
            )

    def flavor_notes(self, flavor: Any, privileged: bool, nested: bool) -> list[str]:
        """Say what the flavor's lxd:* extra specs allow, for the host policy that wants them."""
        wanted = {"lxd:privileged_allowed": privileged, "lxd:nested_allowed": nested}
        if not any(wanted.values()):
            return []
        try:
            specs = flavor.get_keys()
        except nova_exceptions.ClientException as err:
            return [f"flavor {flavor.name}: extra specs not readable ({describe_error(err)})"]
        notes = []
        for key, asked in wanted.items():
            if not asked:
                continue
            value = str(specs.get(key, "")).lower()
            allowed = value in ("true", "1", "yes")
            notes.append(
                f"flavor {flavor.name}: {key}={specs.get(key, 'unset')} ("
                + ("allowed" if allowed else "NOT allowed: workers will not get it")
                + ")"
            )
        return notes
