"""Reading a worker through LXD's files API: the fallback when the host cannot see it.

Only regular files and directories are copied (never a link); names are checked; every file is
read up to the remaining byte cap; every request has a timeout.

LXD 5.0's files API cannot tell a fifo, a socket or a device from a regular file: ``HEAD``
and ``GET`` both say ``X-LXD-Type: file`` and ``X-LXD-Mode`` carries the permission bits
only. A socket fails at once (``ENXIO``), but a ``GET`` of a fifo leaves LXD's ``forkfile``
helper blocked in ``open`` until someone opens that fifo for writing, and while it is blocked
the instance cannot be stopped or deleted. Hence:

* a running worker is only ever looked at with ``HEAD`` (``head``), which never opens;
* a ``GET`` (``pull``) is only for a stopped worker, whose files no process can rename or
  hold open any more; one that gets no answer within ``READ_TIMEOUT`` is taken for a fifo,
  skipped, and the helper is set free by opening the same path for writing through the API
  (an append of zero bytes, which changes nothing in a regular file).
"""

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pylxd
import requests
import urllib3

from ..gather import safe_name
from .api import is_transient
from .hostside import CC_DIR

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 10.0
_TIMEOUT = (CONNECT_TIMEOUT, READ_TIMEOUT)
NO_ANSWER = "fifo (no answer)"
UNBLOCK_TRIES = 3
MAX_NO_ANSWERS = 3  # then the rest of /results is skipped: each costs READ_TIMEOUT
_READ_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, ValueError, OSError)


class FilesUnavailableError(RuntimeError):
    """The files API does not answer (the daemon is away); try again later."""


@dataclass
class Pulled:
    """What a ``GET`` of one path found: its kind ("file", "directory", "missing", ...)."""

    kind: str
    data: bytes = b""
    names: list[str] = field(default_factory=list)


def head(client: pylxd.Client, worker: str, path: str) -> str:
    """Return what ``HEAD`` says ``path`` is ("file", "directory", "symlink", "missing").

    Never opens the path (safe on a running worker). Raises FilesUnavailableError when the
    daemon does not answer.
    """
    node = client.api.instances[worker].files
    params = {"path": path}
    if getattr(client, "project", None):
        params["project"] = client.project
    try:
        response = node.session.head(node._api_endpoint, params=params, timeout=_TIMEOUT)
    except requests.RequestException as err:
        raise FilesUnavailableError(f"looking at {path} in {worker}: {err}") from err
    with contextlib.closing(response):
        if response.status_code == 404:
            return "missing"
        if response.status_code >= 500:
            raise FilesUnavailableError(f"looking at {path} in {worker}: {response.status_code}")
        if response.status_code != 200:
            return f"unreadable: HTTP {response.status_code}"
        return response.headers.get("X-LXD-type") or "unknown"


def _unblock(client: pylxd.Client, worker: str, path: str) -> bool:
    """Set free a forkfile helper blocked opening the fifo ``path`` (open it for writing).

    Tried a few times (the daemon may be busy); True once LXD accepted the write.
    """
    for attempt in range(UNBLOCK_TRIES):
        try:
            client.api.instances[worker].files.post(
                params={"path": path},
                data=b"",
                headers={"X-LXD-write": "append"},
                timeout=_TIMEOUT,
            )
            return True
        except (pylxd.exceptions.LXDAPIException, requests.RequestException):
            if attempt + 1 < UNBLOCK_TRIES:
                time.sleep(1.0)
    return False


def pull(client: pylxd.Client, worker: str, path: str, limit: int) -> Pulled:
    """``GET`` ``path`` in a stopped worker: up to ``limit`` bytes of a file, or a dir's names.

    Raises:
        FilesUnavailableError: when the daemon does not answer at all.

    """
    files = client.api.instances[worker].files
    try:
        response = files.get(params={"path": path}, stream=True, timeout=_TIMEOUT)
    except pylxd.exceptions.NotFound:
        return Pulled("missing")
    except requests.exceptions.ReadTimeout:
        freed = _unblock(client, worker, path)
        return Pulled(NO_ANSWER if freed else f"{NO_ANSWER}; LXD's file helper may stay blocked")
    except pylxd.exceptions.LXDAPIException as err:
        if is_transient(err):
            raise FilesUnavailableError(f"reading {path} in {worker}: {err}") from err
        return Pulled(f"unreadable: {str(err)[:80]}")  # e.g. a socket: ENXIO
    except requests.RequestException as err:
        raise FilesUnavailableError(f"reading {path} in {worker}: {err}") from err
    with contextlib.closing(response):
        kind = response.headers.get("X-LXD-type") or "unknown"
        try:
            if kind == "directory":
                names = response.json().get("metadata") or []
                return Pulled(kind, names=[n for n in names if isinstance(n, str)])
            if kind == "file":
                return Pulled(kind, response.raw.read(limit) if limit > 0 else b"")
        except _READ_ERRORS as err:
            return Pulled(f"unreadable: {type(err).__name__}")
        return Pulled(kind)


def pull_file(client: pylxd.Client, worker: str, path: str, limit: int) -> bytes | None:
    """Up to ``limit`` bytes of a regular file in the worker through the files API."""
    pulled = pull(client, worker, path, limit)
    return pulled.data if pulled.kind == "file" else None


def pull_tree(client: pylxd.Client, worker: str, root: Path, cap_bytes: int) -> list[str]:
    """Copy stdout, stderr and /results of a (stopped) worker into ``root``; return skips.

    Only regular files and directories are written (never a link); names are checked; every
    file is read up to the remaining cap (gather_task then applies the cap exactly). Paths
    that get no answer (fifos) are skipped and listed.
    """
    budget = cap_bytes + 1
    skipped: list[str] = []
    (root / "run" / "cc").mkdir(parents=True)
    for name in ("stdout", "stderr"):
        pulled = pull(client, worker, f"/{CC_DIR}/{name}", budget)
        if pulled.kind == "file":
            (root / "run" / "cc" / name).write_bytes(pulled.data)
            budget -= len(pulled.data)
        elif pulled.kind not in ("missing", "file"):
            skipped.append(f"{name} ({pulled.kind})")
    pending = [("results", root / "results")]
    entries = 0
    silent = 0
    while pending:
        relative, target = pending.pop(0)
        shown = "files" + relative[len("results") :]
        if silent >= MAX_NO_ANSWERS:
            skipped.append(f"{shown} (not read: {silent} paths gave no answer)")
            continue
        pulled = pull(client, worker, "/" + relative, max(budget, 0))
        silent += pulled.kind.startswith(NO_ANSWER)
        if pulled.kind == "directory":
            target.mkdir()
            for child in sorted(pulled.names):
                entries += 1
                if safe_name(child) and entries < 100_000:
                    pending.append((f"{relative}/{child}", target / child))
        elif pulled.kind == "file":
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "wb") as handle:
                handle.write(pulled.data)
            budget -= len(pulled.data)
        elif pulled.kind != "missing" and relative != "results":
            skipped.append(f"{shown} ({pulled.kind})")
    return skipped
