"""An OCI image layout made by the tests, for the LXD and the Nova targets.

Two gzipped layers (a busybox root, then one that whites out a file and makes a directory
opaque) and a config with Env and WorkingDir; the command whose output shows them all, and
that output.
"""

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

from container_compute.constants import BUSYBOX_BIN
from container_compute.rootfs import busybox_rootfs

COMMAND = (
    'pwd; echo "$GREETING $OVERRIDE"; cat hello.txt; ls /data/old; '
    "test -e /etc/removed.txt && echo whiteout-ignored; true"
)
EXPECTED = "/app\nfrom-image job\nhello\nc.txt\n"


def tar_of(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in entries:
            info.size = len(data) if data is not None else 0
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def file_entry(name: str, data: bytes, mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = mode
    return info, data


def link_entry(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o755
    return info, None


def base_layer(tmp: Path) -> bytes:
    """A busybox root with the files the second layer removes."""
    root = tmp / "base-root"
    busybox_rootfs(root, BUSYBOX_BIN)
    (root / "etc" / "removed.txt").write_text("gone in layer 2\n")
    (root / "data" / "old").mkdir(parents=True)
    for name in ("a.txt", "b.txt"):
        (root / "data" / "old" / name).write_text(name)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for child in sorted(root.iterdir()):
            tar.add(child, arcname=child.name)
    return buffer.getvalue()


def top_layer() -> bytes:
    return tar_of(
        [
            file_entry("etc/.wh.removed.txt", b""),
            file_entry("data/old/.wh..wh..opq", b""),
            file_entry("data/old/c.txt", b"c"),
            link_entry("app", tarfile.DIRTYPE),
            file_entry("app/hello.txt", b"hello\n"),
        ]
    )


def write_layout(path: Path, layers: list[bytes], config: dict[str, Any], tag: str = "v1") -> Path:
    """An OCI image layout of gzipped ``layers`` and ``config`` (its ``config`` object)."""
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes, media_type: str) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    gzipped = [gzip.compress(layer, mtime=0) for layer in layers]
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {
            "type": "layers",
            "diff_ids": [f"sha256:{hashlib.sha256(layer).hexdigest()}" for layer in layers],
        },
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": blob(
            json.dumps(image_config).encode(), "application/vnd.oci.image.config.v1+json"
        ),
        "layers": [blob(g, "application/vnd.oci.image.layer.v1.tar+gzip") for g in gzipped],
    }
    entry = blob(json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json")
    entry["annotations"] = {"org.opencontainers.image.ref.name": tag}
    (path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return path


IMAGE_CONFIG = {
    "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "GREETING=from-image", "OVERRIDE=image"],
    "WorkingDir": "/app",
    "Entrypoint": ["/bin/sh", "-c"],
    "Cmd": ["echo ready"],
}
