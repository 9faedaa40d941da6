"""The root filesystems of worker images: the busybox one, and what an OCI image is given.

``busybox_rootfs`` lays out the directories workers use, busybox-static with every applet
linked at its usual path, ``root``/``nobody`` users and an inittab; image builders add their own
init and packaging (``host.images`` for LXD, ``backends.nova.image`` for Glance).
``add_worker_needs`` gives an unpacked OCI image the directories, the static busybox (in /.cc)
and the init a worker needs, writing only inside the root (``in_root`` resolves its links
there).
"""

import posixpath
import subprocess
from pathlib import Path

from .constants import BUSYBOX_BIN, INPUT_DIR_IN_WORKER, RESULTS_DIR_IN_WORKER

DIRECTORIES = (
    "bin",
    "sbin",
    "usr/bin",
    "usr/sbin",
    "etc",
    "proc",
    "sys",
    "dev",
    "tmp",
    "root",
    "results",
    "input",
    "run",
    "var/tmp",
)
INITTAB = "::sysinit:/bin/mount -t tmpfs -o mode=1777 tmpfs /tmp\n::restart:/sbin/init\n"
PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"  # noqa: S105
GROUP = "root:x:0:\nnogroup:x:65534:\n"


def busybox_rootfs(root: Path, busybox: str) -> None:
    """Lay out a minimal rootfs in ``root``: busybox with every applet linked, users, inittab."""
    for directory in DIRECTORIES:
        (root / directory).mkdir(parents=True, exist_ok=True)
    target = root / "bin" / "busybox"
    target.write_bytes(Path(busybox).read_bytes())
    target.chmod(0o755)
    listing = subprocess.run(
        [busybox, "--list-full"], check=True, capture_output=True, text=True
    ).stdout.split()
    for applet_path in listing:
        link = root / applet_path
        if link.name == "busybox" or link.exists():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        depth = len(Path(applet_path).parts) - 1
        link.symlink_to("../" * depth + "bin/busybox")
    (root / "etc" / "inittab").write_text(INITTAB)
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)
    (root / "tmp").chmod(0o1777)


MAX_LINKS = 16


def in_root(root: Path, relative: str, depth: int = 0) -> Path:
    """The host path of ``relative`` in ``root``, every link on the way resolved inside it.

    An absolute link counts from ``root``, ``..`` stops at it: never a path outside ``root``.
    The last component is not resolved when it is a link (it can be replaced).

    Raises:
        ValueError: links that lead round in a loop (no path without a link is found).
    """
    if depth > MAX_LINKS:
        raise ValueError(f"{relative}: more than {MAX_LINKS} links on the way (a loop?)")
    parts = [p for p in relative.strip("/").split("/") if p not in ("", ".")]
    path = root
    for number, part in enumerate(parts):
        if part == "..":
            path = path.parent if path != root else root
            continue
        following = path / part
        last = number == len(parts) - 1
        if following.is_symlink() and not last:
            target = str(following.readlink())
            base = "" if target.startswith("/") else str(path.relative_to(root))
            rest = "/".join(parts[number + 1 :])
            return in_root(root, posixpath.normpath(f"/{base}/{target}/{rest}"), depth + 1)
        path = following
    return path


# An OCI image's own init is not meant to run a worker: ours sleeps and reaps orphans with a
# static busybox of the host's kept apart in /.cc (the image's tools stay its own).
OCI_TOOLS_DIR = ".cc"
_OCI_INIT = (
    "#!/.cc/busybox sh\ntrap '' TERM HUP\nwhile :; do /.cc/busybox sleep 3600 & wait; done\n"
)


def add_worker_needs(root: Path, busybox: str = BUSYBOX_BIN, init: str = _OCI_INIT) -> Path:
    """Give an unpacked image what a worker needs: its directories, /.cc/busybox, ``init``.

    Returns /.cc as the host sees it. Those directories are made real where the image has
    a link, and /sbin/init is written where the image's /sbin leads inside ``root``: nothing
    is written through a link to outside ``root``.
    """
    for directory in (RESULTS_DIR_IN_WORKER, INPUT_DIR_IN_WORKER, "/run", "/tmp", "/dev"):
        _real_dir(root, directory.lstrip("/"))
    (root / "tmp").chmod(0o1777)
    tools = _real_dir(root, OCI_TOOLS_DIR)
    (tools / "busybox").write_bytes(Path(busybox).read_bytes())
    (tools / "busybox").chmod(0o755)
    sbin = in_root(root, "sbin/init").parent
    sbin.mkdir(parents=True, exist_ok=True)
    (sbin / "init").unlink(missing_ok=True)
    (sbin / "init").write_text(init)
    (sbin / "init").chmod(0o755)
    return tools


def _real_dir(root: Path, relative: str) -> Path:
    """``root/relative`` as a real directory of the image (a link there is replaced)."""
    path = root / relative
    if path.is_symlink():
        path.unlink()
    path.mkdir(parents=True, exist_ok=True)
    return path
