"""Subordinate uid/gid ranges for workers, and membership of the lxd group."""

import grp
import pwd
import re

from .. import constants
from .system import HostError, HostPaths, run_tool, write_if_changed


def needed_subids(max_parallel_workers: int) -> int:
    """Ids root needs for isolated idmaps: one block per worker, plus two spare."""
    return constants.IDMAP_SIZE * (max_parallel_workers + 2)


def extend_subid_text(text: str, needed: int, user: str = "root") -> str:
    """Return ``text`` (subuid/subgid) with ``user`` owning ``needed`` ids from SUBID_BASE.

    A range of the user that already covers them is kept; the user's range starting at
    SUBID_BASE is extended; otherwise one line is appended. Other lines are kept as they are.
    """
    base = constants.SUBID_BASE
    lines = text.splitlines()
    for line in lines:
        fields = line.strip().split(":")
        if len(fields) == 3 and fields[0] == user and fields[1].isdigit() and fields[2].isdigit():
            start, count = int(fields[1]), int(fields[2])
            if start <= base and start + count >= base + needed:
                return text
    for index, line in enumerate(lines):
        fields = line.strip().split(":")
        if len(fields) == 3 and fields[0] == user and fields[1] == str(base):
            lines[index] = f"{user}:{base}:{needed}"
            return "\n".join(lines) + "\n"
    return "".join(f"{line}\n" for line in lines) + f"{user}:{base}:{needed}\n"


def ensure_subids(paths: HostPaths, needed: int, *, dry_run: bool) -> list[str]:
    """Give root ``needed`` ids in subuid and subgid; return the changes."""
    changes = []
    for path in (paths.subuid, paths.subgid):
        try:
            current = path.read_text()
        except FileNotFoundError:
            current = ""
        updated = extend_subid_text(current, needed)
        if updated != current and write_if_changed(path, updated, dry_run=dry_run):
            changes.append(f"gave root {needed} ids from {constants.SUBID_BASE} in {path}")
    return changes


_NAME_RE = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")


def user_exists(user: str) -> bool:
    """Whether ``user`` is a user of this host."""
    try:
        pwd.getpwnam(user)
    except KeyError:
        return False
    return True


def ensure_group_member(user: str, group: str = constants.LXD_GROUP) -> bool:
    """Make ``user`` a member of ``group`` (created when missing); return whether it changed.

    Raises:
        HostError: for an invalid name, a user that does not exist, or a failing tool.

    """
    for what, name in (("user", user), ("group", group)):
        if not _NAME_RE.match(name):
            raise HostError(f"{what} {name!r} is not a valid name (a-z, 0-9, _ . -)")
    if not user_exists(user):
        raise HostError(f"user {user!r} does not exist on this host")
    changed = False
    try:
        entry = grp.getgrnam(group)
    except KeyError:
        run_tool([constants.GROUPADD, "--system", group])
        entry = grp.getgrnam(group)
        changed = True
    if user in entry.gr_mem or pwd.getpwnam(user).pw_gid == entry.gr_gid:
        return changed
    run_tool([constants.USERMOD, "--append", "--groups", group, user])
    return True
