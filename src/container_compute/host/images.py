"""Build worker images offline and import them into LXD under an alias.

``busybox``: a few-MiB image from the host's static busybox (Debian ``busybox-static``).
The rootfs is assembled in a temporary directory and packed as a split LXD image
(metadata tarball + rootfs tarball); nothing is downloaded.

``debootstrap``: a Debian minbase rootfs (``/usr/sbin/debootstrap --variant=minbase``) from the
host's own apt mirror unless one is given, with ``tini`` as init; packed the same way.
"""

import gzip
import hashlib
import io
import json
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pylxd
import pylxd.exceptions

from ..constants import (
    BUSYBOX_BIN,
    DEBOOTSTRAP,
    IMAGE_CONFIG_PROPERTY,
    INPUT_DIR_IN_WORKER,
    RESULTS_DIR_IN_WORKER,
)
from ..rootfs import add_worker_needs, busybox_rootfs
from . import oci


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


def _metadata_tar(
    description: str, architecture: str, created: int, properties: dict[str, str] | None = None
) -> bytes:
    extra = "".join(
        f"  {key}: {json.dumps(value)}\n" for key, value in sorted((properties or {}).items())
    )
    text = (
        f"architecture: {architecture}\n"
        f"creation_date: {created}\n"
        f"properties:\n  description: {json.dumps(description)}\n  os: container-compute\n"
        f"{extra}"
    ).encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("metadata.yaml")
        info.size = len(text)
        tar.addfile(info, io.BytesIO(text))
    return gzip.compress(buffer.getvalue(), mtime=0)


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
        busybox_rootfs(root, busybox)
        rootfs = _rootfs_tar(root)
    created = int(Path(busybox).stat().st_mtime)
    metadata = _metadata_tar("container-compute busybox worker", architecture, created)
    return import_image(client, alias, metadata, rootfs, "busybox")


_SUITE_RE = re.compile(r"^[a-z][a-z0-9-]{1,31}$")
_PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]{0,99}$")
_MIRROR_RE = re.compile(r"^https?://[A-Za-z0-9.-]+(:\d{1,5})?(/[A-Za-z0-9._~%/+-]*)?$")
APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
DEBOOTSTRAP_TIMEOUT_SECONDS = 1800
# tini reaps the orphans a worker's tasks leave behind; LXD force-stops workers.
_TINI_INIT = "#!/bin/sh\nexec /usr/bin/tini -- /bin/sleep infinity\n"


def _debian_uris(text: str, suite: str) -> list[str]:
    """Return the URIs of apt sources (one-line or deb822) that carry ``suite``."""
    uris: list[str] = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 3 and words[0] == "deb":
            rest = [w for w in words[1:] if not w.startswith("[")] if "[" in line else words[1:]
            if len(rest) >= 2 and rest[1] == suite:
                uris.append(rest[0])
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            key, sep, value = line.partition(":")
            if sep and not line.startswith((" ", "#")):
                fields[key.strip().lower()] = value.strip()
        if "deb" in fields.get("types", "").split() and suite in fields.get("suites", "").split():
            uris.extend(fields.get("uris", "").split())
    return uris


def host_mirror(suite: str, sources: tuple[Path, ...] = APT_SOURCES) -> str:
    """Return the first http(s) apt mirror of this host that serves ``suite``.

    Raises:
        ValueError: when no apt source of the host carries that suite.
    """
    files: list[Path] = []
    for source in sources:
        if source.is_dir():
            files.extend(sorted(p for p in source.iterdir() if p.suffix in (".list", ".sources")))
        elif source.is_file():
            files.append(source)
    for path in files:
        for uri in _debian_uris(path.read_text(errors="replace"), suite):
            if _MIRROR_RE.match(uri):
                return uri
    raise ValueError(f"mirror: no apt source of this host serves suite {suite!r}; give a mirror")


def _check_debootstrap_args(suite: str, packages: tuple[str, ...], mirror: str) -> None:
    if not _SUITE_RE.match(suite):
        raise ValueError(f"suite: {suite!r} is not a Debian suite name (e.g. bookworm)")
    for package in packages:
        if not _PACKAGE_RE.match(package):
            raise ValueError(f"packages: {package!r} is not a Debian package name")
    if mirror and not _MIRROR_RE.match(mirror):
        raise ValueError(
            f"mirror: {mirror!r} is not an http(s) URL such as http://deb.debian.org/debian"
        )


def _tree_tar(root: Path) -> bytes:
    """Pack a rootfs keeping owners and modes; /dev stays empty (LXD makes its own nodes)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for child in sorted(root.iterdir()):
            if child.name == "dev":
                tar.add(child, arcname="dev", recursive=False)
                continue
            tar.add(child, arcname=child.name)
    return gzip.compress(buffer.getvalue(), compresslevel=6, mtime=0)


def build_debootstrap_image(
    client: pylxd.Client,
    alias: str,
    suite: str = "bookworm",
    packages: tuple[str, ...] = (),
    mirror: str = "",
) -> ImageReport:
    """Build a Debian minbase worker image with debootstrap and import it under ``alias``.

    ``mirror`` defaults to the host's own apt mirror for ``suite``. Takes minutes. Every
    build makes a new image (debootstrap output is not reproducible), so ``changed`` is True.

    Raises:
        ValueError: when suite, packages or mirror are malformed (nothing is done).
        FileNotFoundError: when debootstrap is not installed.
        subprocess.CalledProcessError: when debootstrap fails (its output is attached).
    """
    _check_debootstrap_args(suite, packages, mirror)
    if not Path(DEBOOTSTRAP).exists():
        raise FileNotFoundError(f"{DEBOOTSTRAP} is missing: install Debian's debootstrap")
    mirror = mirror or host_mirror(suite)
    include = ",".join(dict.fromkeys(("tini", *packages)))
    architecture = client.host_info["environment"]["architectures"][0]
    with tempfile.TemporaryDirectory(prefix="cc-debootstrap-") as tmp:
        root = Path(tmp) / "rootfs"
        subprocess.run(
            [DEBOOTSTRAP, "--variant=minbase", f"--include={include}", suite, str(root), mirror],
            check=True,
            capture_output=True,
            timeout=DEBOOTSTRAP_TIMEOUT_SECONDS,
        )
        for directory in (RESULTS_DIR_IN_WORKER, INPUT_DIR_IN_WORKER, "/run"):
            (root / directory.lstrip("/")).mkdir(parents=True, exist_ok=True)
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (root / cache).glob("*"):
                if entry.is_file() and not entry.is_symlink():
                    entry.unlink()
        dev = root / "dev"
        shutil.rmtree(dev, ignore_errors=True)
        dev.mkdir(mode=0o755)
        init = root / "sbin" / "init"
        if init.is_symlink() or init.exists():
            init.unlink()
        init.write_text(_TINI_INIT)
        init.chmod(0o755)
        rootfs = _tree_tar(root)
    metadata = _metadata_tar(
        f"container-compute Debian {suite} minbase worker", architecture, int(time.time())
    )
    return import_image(client, alias, metadata, rootfs, f"debootstrap {suite}")


def build_oci_image(
    client: pylxd.Client,
    alias: str,
    source: oci.OciSource,
    busybox: str = BUSYBOX_BIN,
    max_bytes: int = oci.MAX_IMAGE_BYTES,
) -> tuple[ImageReport, oci.ImageConfig]:
    """Build a worker image from an OCI or Docker image and import it under ``alias``.

    Raises:
        oci.ImageRefusedError: the source, a layer or the image cannot be a worker (nothing
            imported; the message says why).
    """
    architecture = client.host_info["environment"]["architectures"][0]
    with tempfile.TemporaryDirectory(prefix="cc-oci-") as tmp:
        root, config = oci.unpacked_root(source, Path(tmp), max_bytes)
        add_worker_needs(root, busybox)
        rootfs = _tree_tar(root)
    properties = {IMAGE_CONFIG_PROPERTY: json.dumps(config.to_dict(), sort_keys=True)}
    # A fixed creation date: the same image built again is the same LXD image (LXD refuses 0).
    metadata = _metadata_tar(
        f"container-compute worker from {source.text}", architecture, 1, properties
    )
    return import_image(client, alias, metadata, rootfs, source.text), config
