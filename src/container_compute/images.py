"""Build worker images offline and import them into LXD under an alias.

``busybox``: a few-MiB image from the host's static busybox (Debian ``busybox-static``).
The rootfs is assembled in a temporary directory and packed as a split LXD image
(metadata tarball + rootfs tarball); nothing is downloaded.
"""

import gzip
import hashlib
import io
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pylxd

from .constants import BUSYBOX_BIN

_INITTAB = "::sysinit:/bin/mount -t tmpfs -o mode=1777 tmpfs /tmp\n::restart:/sbin/init\n"
_PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
_GROUP = "root:x:0:\nnogroup:x:65534:\n"


@dataclass(frozen=True)
class ImageReport:
    """What was imported: the alias, the image's fingerprint, whether anything changed."""

    alias: str
    fingerprint: str
    size_bytes: int
    changed: bool
    source: str

    def to_dict(self) -> dict[str, object]:
        """The report as an action result."""
        return {
            "alias": self.alias,
            "fingerprint": self.fingerprint,
            "size-bytes": self.size_bytes,
            "changed": self.changed,
            "source": self.source,
        }


def _metadata_tar(description: str, architecture: str, created: int) -> bytes:
    text = (
        f"architecture: {architecture}\n"
        f"creation_date: {created}\n"
        f"properties:\n  description: {description}\n  os: container-compute\n"
    ).encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("metadata.yaml")
        info.size = len(text)
        tar.addfile(info, io.BytesIO(text))
    return gzip.compress(buffer.getvalue(), mtime=0)


def _busybox_rootfs(root: Path, busybox: str) -> None:
    """Lay out a minimal rootfs: busybox with every applet linked, an init, users."""
    for directory in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp",
                      "root", "results", "input", "run", "var/tmp"):
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
    (root / "etc" / "inittab").write_text(_INITTAB)
    (root / "etc" / "passwd").write_text(_PASSWD)
    (root / "etc" / "group").write_text(_GROUP)
    (root / "tmp").chmod(0o1777)


def _rootfs_tar(root: Path) -> bytes:
    buffer = io.BytesIO()

    def as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mtime = 0
        return info

    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for child in sorted(root.iterdir()):
            tar.add(child, arcname=child.name, filter=as_root)
    return gzip.compress(buffer.getvalue(), mtime=0)


def import_image(
    client: pylxd.Client, alias: str, metadata: bytes, rootfs: bytes, source: str
) -> ImageReport:
    """Import a split image and point ``alias`` at it; an identical image changes nothing."""
    fingerprint = hashlib.sha256(metadata + rootfs).hexdigest()
    existing_alias = _alias_target(client, alias)
    if existing_alias == fingerprint:
        return ImageReport(alias, fingerprint, len(metadata) + len(rootfs), False, source)
    if not client.images.exists(fingerprint):
        client.images.create(rootfs, metadata=metadata, public=False, wait=True)
    image = client.images.get(fingerprint)
    if existing_alias is not None:
        client.api.images.aliases[alias].delete()
    image.add_alias(alias, f"container-compute worker image ({source})")
    return ImageReport(alias, fingerprint, len(metadata) + len(rootfs), True, source)


def _alias_target(client: pylxd.Client, alias: str) -> str | None:
    try:
        response = client.api.images.aliases[alias].get()
    except pylxd.exceptions.NotFound:
        return None
    return response.json()["metadata"]["target"]


def build_busybox_image(
    client: pylxd.Client, alias: str, busybox: str = BUSYBOX_BIN
) -> ImageReport:
    """Build the busybox worker image and import it under ``alias`` (idempotent)."""
    if not Path(busybox).exists():
        raise FileNotFoundError(f"{busybox} is missing: install Debian's busybox-static")
    architecture = client.host_info["environment"]["architectures"][0]
    with tempfile.TemporaryDirectory(prefix="cc-image-") as tmp:
        root = Path(tmp) / "rootfs"
        _busybox_rootfs(root, busybox)
        rootfs = _rootfs_tar(root)
    created = int(Path(busybox).stat().st_mtime)
    metadata = _metadata_tar("container-compute busybox worker", architecture, created)
    return import_image(client, alias, metadata, rootfs, "busybox")
