"""The sandbox maker as a program (``templates/sandbox.c``): built once per host, copied in.

The shell recipe (``launch.SANDBOX_SETUP``) runs a dozen busybox processes per task; the
program makes the same system calls itself. The host builds it static with its C compiler
(``/usr/bin/gcc``; cached under ``/var/cache/container-compute`` by the source's digest)
and copies it into each new warm worker at ``/.cc-sandbox``, before the worker's sandbox
probe. Without a compiler, or when the build or the copy fails, the worker keeps the shell
recipe (said once in the log): the sandbox is the same, only slower to make.
"""

import hashlib
import logging
import os
import subprocess
import tempfile
import threading
from importlib import resources
from pathlib import Path

import pylxd.exceptions
import requests

from ...constants import GCC, HELPER_CACHE_DIR, SANDBOX_HELPER_IN_WORKER
from .api import LXDApi

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_built: dict[str, bytes | None] = {}  # source digest -> the program (None: cannot be built)


def helper_source() -> bytes:
    """The helper's C source, from the package."""
    return (resources.files("container_compute") / "templates" / "sandbox.c").read_bytes()


def sandbox_helper(cache_dir: Path = HELPER_CACHE_DIR) -> bytes | None:
    """The built helper (from the cache, or built now); None when it cannot be built here."""
    source = helper_source()
    digest = hashlib.sha256(source).hexdigest()[:16]
    with _lock:
        if digest not in _built:
            _built[digest] = _build(source, cache_dir / f"cc-sandbox-{digest}")
        return _built[digest]


def _build(source: bytes, target: Path) -> bytes | None:
    if target.is_file():
        return target.read_bytes()
    if not Path(GCC).is_file():
        logger.info("no C compiler (%s): sandboxes are made by the shell recipe", GCC)
        return None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as work:
            source_file = Path(work) / "sandbox.c"
            source_file.write_bytes(source)
            built = Path(work) / "cc-sandbox"
            subprocess.run(
                [GCC, "-static", "-Os", "-s", "-o", str(built), str(source_file)],
                check=True,
                capture_output=True,
                timeout=120,
            )
            os.replace(built, target)
    except (OSError, subprocess.SubprocessError) as err:
        detail = getattr(err, "stderr", b"") or b""
        logger.warning(
            "could not build the sandbox helper (the shell recipe is used): %s %s",
            err,
            detail.decode(errors="replace")[-500:],
        )
        return None
    return target.read_bytes()


def push_helper(api: LXDApi, name: str, program: bytes | None) -> bool:
    """Copy the helper into a running worker; False (the shell recipe then) if it failed."""
    if program is None:
        return False
    try:
        api.client.api.instances[name].files.post(
            params={"path": SANDBOX_HELPER_IN_WORKER},
            data=program,
            headers={
                "X-LXD-type": "file",
                "X-LXD-mode": "0755",
                "X-LXD-uid": "0",
                "X-LXD-gid": "0",
            },
        )
    except (pylxd.exceptions.LXDAPIException, requests.RequestException) as err:
        logger.info("could not copy the sandbox helper into %s: %s", name, err)
        return False
    return True
