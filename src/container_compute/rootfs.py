"""The busybox root filesystem every worker image starts from (LXD image or Nova raw image).

``busybox_rootfs`` lays out the directories workers use, busybox-static with every applet
linked at its usual path, ``root``/``nobody`` users and an inittab; image builders add their own
init and packaging (``host.images`` for LXD, ``backends.nova.image`` for Glance).
"""

import subprocess
from pathlib import Path

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
