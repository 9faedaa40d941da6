"""The state directory is private to its owner (root): directories 0700, files 0600.

The ledger holds job definitions (commands, environment values until the job ends), the
results tree holds what tasks wrote, and credentials live next to them; none of it is for
other local users. Everything the jobs code creates under the state directory goes through
these helpers (whole files through ``privatefiles.write_private``), and a directory or file
left looser by an older version is tightened when it is opened. Only what the current user
owns is ever changed.
"""

import os
import stat
from pathlib import Path

from ..constants import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE

DIR_MODE = PRIVATE_DIR_MODE
FILE_MODE = PRIVATE_FILE_MODE


def _tighten(path: Path, *, follow: bool = True) -> None:
    """Take group and other permissions away from ``path`` when we own it."""
    try:
        info = os.stat(path, follow_symlinks=follow)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode) or info.st_uid != os.geteuid():
        return
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(path, stat.S_IMODE(info.st_mode) & ~0o077)


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) mode 0700, or tighten it to 0700; return it."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    _tighten(path)
    return path


def private_file(path: Path) -> Path:
    """Create ``path`` empty mode 0600 unless it exists; tighten it to 0600; return it.

    An existing file is never opened: closing any descriptor of a file drops every POSIX
    lock this process holds on it, such as those of SQLite connections to a database.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    except FileExistsError:
        _tighten(path)
    else:
        os.close(fd)
    return path


def tighten_file(path: Path) -> None:
    """Tighten an existing file to 0600 (nothing when it does not exist)."""
    _tighten(path, follow=False)


def tighten_tree(root: Path) -> None:
    """Take group and other permissions away from every directory and file under ``root``.

    Symbolic links are neither followed nor changed.
    """
    _tighten(root, follow=False)
    for directory, subdirs, files in os.walk(root):
        base = Path(directory)
        for name in subdirs:
            _tighten(base / name, follow=False)
        for name in files:
            _tighten(base / name, follow=False)
