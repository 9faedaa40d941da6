"""The LXD backend: worker containers on the local daemon (or an LXD endpoint).

``backend`` runs a worker's lifecycle (create, label, start, exec, delete); ``watch`` follows it
and gathers its results; ``hostside`` reads it from the host (/proc, the storage pool,
cgroups); ``files`` reads it through LXD's files API; ``parsing`` turns what the task left in
/run/cc into values or reasons; ``api`` is the REST plumbing that rides out daemon restarts.
"""

from .api import image_config, image_exists
from .backend import LXDBackend

__all__ = ["LXDBackend", "image_config", "image_exists"]
