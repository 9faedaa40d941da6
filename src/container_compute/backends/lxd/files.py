"""Reading a worker through LXD's files API: the fallback when the host cannot see it.

Only regular files and directories are copied (never a link); names are checked; every file is
read up to the remaining byte cap.
"""

import contextlib
import os
from pathlib import Path

import pylxd
import requests

from ..gather import safe_name
from .hostside import CC_DIR


def get_path(client: pylxd.Client, worker: str, path: str) -> requests.Response | None:
    """Return the files API's streamed answer for ``path`` in the worker; None if absent."""
    try:
        return client.api.instances[worker].files.get(params={"path": path}, stream=True)
    except pylxd.exceptions.NotFound:
        return None


def pull_file(client: pylxd.Client, worker: str, path: str, limit: int) -> bytes | None:
    """Up to ``limit`` bytes of a regular file in the worker through the files API."""
    response = get_path(client, worker, path)
    if response is None or response.headers.get("X-LXD-type") != "file":
        return None
    with contextlib.closing(response):
        return response.raw.read(limit)


def pull_tree(client: pylxd.Client, worker: str, root: Path, cap_bytes: int) -> None:
    """Copy stdout, stderr and /results of a worker into ``root`` through the files API.

    Only regular files and directories are written (never a link); names are checked; every
    file is read up to the remaining cap (gather_task then applies the cap exactly).
    """
    budget = cap_bytes + 1
    (root / "run" / "cc").mkdir(parents=True)
    for name in ("stdout", "stderr"):
        data = pull_file(client, worker, f"/{CC_DIR}/{name}", budget)
        if data is not None:
            (root / "run" / "cc" / name).write_bytes(data)
            budget -= len(data)
    pending = [("results", root / "results")]
    entries = 0
    while pending:
        relative, target = pending.pop(0)
        response = get_path(client, worker, "/" + relative)
        if response is None:
            continue
        kind = response.headers.get("X-LXD-type")
        if kind == "directory":
            target.mkdir()
            names = response.json().get("metadata") or []
            for child in sorted(names):
                entries += 1
                if safe_name(child) and entries < 100_000:
                    pending.append((f"{relative}/{child}", target / child))
        elif kind == "file" and budget > 0:
            with contextlib.closing(response):
                data = response.raw.read(budget)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            budget -= len(data)
        else:
            response.close()
