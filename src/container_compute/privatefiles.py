"""Files only their owner may read, written whole: keys, credentials, config, job records.

``write_private`` creates a temporary sibling mode 0600 from the start (never an existing
file, never through a symlink), writes and syncs it, then renames it over the target: other
local users never see the text, and readers see the old file or the new one, whole. Every
layer (host, identity, lxdclient, jobs, backends) writes its private files through it.
"""

import os
import secrets
from pathlib import Path

from .constants import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, STATE_DIR, STATE_DIR_ENV

_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
TEMP_SUFFIX = ".tmp"


def default_state_dir() -> Path:
    """Return the state directory: $CONTAINER_COMPUTE_STATE_DIR, else the package default."""
    return Path(os.environ.get(STATE_DIR_ENV) or STATE_DIR)


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``, mode 0600, atomically; a missing parent is made 0700."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}")
    fd = os.open(temporary, _CREATE_FLAGS, PRIVATE_FILE_MODE)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            os.fchmod(stream.fileno(), PRIVATE_FILE_MODE)  # exactly 0600, whatever the umask
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def update_private(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` (as ``write_private``) unless it holds it at mode 0600.

    Returns whether the file was written.
    """
    try:
        unchanged = path.read_text(encoding="utf-8") == text
        if unchanged and (path.lstat().st_mode & 0o777) == PRIVATE_FILE_MODE:
            return False
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    write_private(path, text)
    return True
