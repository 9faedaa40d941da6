"""Who owns a worker: the state directory that made it, by the owner id it keeps.

Several state directories may share one LXD project (the units of a charm-formed LXD
cluster, a CLI user beside the charm's agent) or one Nova project. Each has an owner id,
made once and kept in ``<state dir>/owner``; every worker and template it makes carries it
(``user.container-compute.owner`` on LXD, ``container-compute.owner`` metadata on Nova). A
reaper deletes only what its own state directory owns; the leftovers of a state directory
gone for good are removed by ``container-compute reap --owner ID``, never by another agent.
"""

import os
import re
import secrets
from pathlib import Path

from .constants import OWNER_FILE

OWNER_RE = re.compile(r"^o[0-9a-f]{12}$")
# ``reap --owner`` value for workers made before owners were labelled.
UNOWNED = "unowned"


def owner_id(state_dir: Path) -> str:
    """Return the state directory's owner id, made (atomically, once) on first use.

    Two processes asking at once get the same id: the file is written whole under another
    name and linked into place, so it is never seen half-written.
    """
    path = state_dir / OWNER_FILE
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = state_dir / f".{OWNER_FILE}.{secrets.token_hex(4)}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(f"o{secrets.token_hex(6)}\n")
    try:
        os.link(temporary, path)
    except FileExistsError:
        pass  # another process made it first: theirs is the id
    finally:
        temporary.unlink()
    return _read(path)


def _read(path: Path) -> str:
    text = path.read_text().strip()
    if not OWNER_RE.match(text):
        raise ValueError(f"{path} does not hold an owner id (o + 12 hex digits): {text[:40]!r}")
    return text


def check_owner(value: str) -> str:
    """Return an owner id given by an operator (or ``unowned``); ValueError names the fault."""
    if value != UNOWNED and not OWNER_RE.match(value):
        raise ValueError(
            f"owner: {value!r} is not an owner id (o + 12 hex digits, as in <state dir>/owner) "
            f"nor {UNOWNED!r}"
        )
    return value
