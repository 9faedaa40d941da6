"""The Nova backend: task attempts as Nova servers, results through the console log.

``backend`` runs an attempt's server (create with labels and user-data, follow, gather,
delete); ``payload`` renders the task script and reads its payload back from the console
log, whole or not at all; ``servers`` lists our servers once per poll for every attempt;
``api`` is python-novaclient with Nova's errors turned into messages; ``image`` builds a raw
worker image and uploads it to Glance.
"""

from pathlib import Path

from ...config import HostConfig
from ...identity import CLOUDS_FILE_NAME, session_from_clouds_yaml
from ...owner import owner_id
from .api import NovaApi
from .backend import NovaBackend
from .live import NovaLiveOutput

__all__ = ["NovaBackend", "NovaLiveOutput", "open_nova_api", "open_nova_backend"]


def open_nova_api(state_dir: Path) -> NovaApi:
    """Nova through the credentials in ``state_dir/clouds.yaml`` (see ``open_nova_backend``)."""
    session, region = session_from_clouds_yaml(state_dir / CLOUDS_FILE_NAME)
    return NovaApi(session, region)


def open_nova_backend(config: HostConfig, state_dir: Path) -> NovaBackend:
    """The Nova backend of the credentials in ``state_dir/clouds.yaml``.

    Raises:
        identity.IdentityError: no credentials there (the message says how to get them).
    """
    session, region = session_from_clouds_yaml(state_dir / CLOUDS_FILE_NAME)
    return NovaBackend(config, session, region, owner=owner_id(state_dir))
