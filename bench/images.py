"""The bench's images: one rootfs per image name, imported into LXD, podman and docker alike.

``busybox`` is built by the library (``host.images.build_busybox_image``, reproducible);
``debootstrap`` (Debian bookworm minbase, ~150 MB unpacked) by ``build_debootstrap_image``
from the host's Debian mirror, once: its two LXD tarballs are kept under
/var/cache/container-compute-bench/ and imported from there by later runs. Podman and docker
import the very rootfs tarball LXD got, so every method starts from the same files.
"""

import json
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pylxd

from container_compute.host.images import (
    ImageReport,
    build_busybox_image,
    build_debootstrap_image,
    import_image,
)

LXC = "/usr/bin/lxc"
CACHE_DIR = Path("/var/cache/container-compute-bench")
DEBOOTSTRAP_SUITE = "bookworm"


@dataclass(frozen=True)
class BenchImage:
    """One image of the bench: its LXD alias and the tarballs it was imported from."""

    name: str
    alias: str
    metadata: Path
    rootfs: Path
    unpacked_bytes: int
    entries: int

    def describe(self) -> str:
        """``busybox: 1.0 MiB packed, 1.9 MiB in 420 files, links and directories``."""
        packed = self.rootfs.stat().st_size + self.metadata.stat().st_size
        return (
            f"{self.name}: {packed / 2**20:.1f} MiB packed, {self.unpacked_bytes / 2**20:.1f} "
            f"MiB in {self.entries} files, links and directories"
        )


def tree_stats(rootfs: Path) -> tuple[int, int]:
    """The bytes of the regular files in a rootfs tarball, and how many entries it has."""
    size = entries = 0
    with tarfile.open(rootfs) as tar:
        for member in tar:
            entries += 1
            size += member.size if member.isfile() else 0
    return size, entries


def export_image(project: str, fingerprint: str, directory: Path) -> tuple[Path, Path]:
    """Export a split LXD image to ``directory``; return (metadata, rootfs) tarballs."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [LXC, "image", "export", fingerprint, f"{directory}/", "--project", project],
        check=True,
        capture_output=True,
        text=True,
    )
    files = sorted(directory.glob(f"*{fingerprint}*"))
    metadata = [f for f in files if f.name.startswith("meta-")]
    rootfs = [f for f in files if not f.name.startswith("meta-")]
    if len(metadata) != 1 or len(rootfs) != 1:
        raise RuntimeError(f"lxc image export of {fingerprint} left {[f.name for f in files]}")
    return metadata[0], rootfs[0]


def _import_tarballs(
    clients: list[pylxd.Client], alias: str, metadata: Path, rootfs: Path, source: str
) -> None:
    meta_bytes, rootfs_bytes = metadata.read_bytes(), rootfs.read_bytes()
    for client in clients:
        import_image(client, alias, meta_bytes, rootfs_bytes, source)


def prepare_busybox(
    clients: list[pylxd.Client], project: str, scratch: Path, alias: str
) -> BenchImage:
    """Build the busybox image in every project and export its tarballs to ``scratch``."""
    report: ImageReport | None = None
    for client in clients:
        report = build_busybox_image(client, alias)
    assert report is not None
    metadata, rootfs = export_image(project, report.fingerprint, scratch / "busybox")
    return BenchImage("busybox", alias, metadata, rootfs, *tree_stats(rootfs))


def prepare_debootstrap(
    clients: list[pylxd.Client], project: str, alias: str, cache: Path = CACHE_DIR
) -> BenchImage:
    """Import the cached debootstrap image into every project, building it on a cache miss."""
    where = cache / f"debootstrap-{DEBOOTSTRAP_SUITE}"
    info_file = where / "image.json"
    info: dict[str, Any] | None = json.loads(info_file.read_text()) if info_file.exists() else None
    if info is None or not all((where / info[k]).exists() for k in ("metadata", "rootfs")):
        begin = time.monotonic()
        print(f"  building the debootstrap image ({DEBOOTSTRAP_SUITE} minbase), once ...")
        report = build_debootstrap_image(clients[0], alias, suite=DEBOOTSTRAP_SUITE)
        where.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=where) as tmp:
            metadata, rootfs = export_image(project, report.fingerprint, Path(tmp))
            info = {
                "metadata": "metadata.tar.gz",
                "rootfs": "rootfs.tar.gz",
                "fingerprint": report.fingerprint,
                "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            info["unpacked-bytes"], info["entries"] = tree_stats(rootfs)
            metadata.replace(where / info["metadata"])
            rootfs.replace(where / info["rootfs"])
        info_file.write_text(json.dumps(info, indent=1) + "\n")
        print(f"  built and cached in {where} ({time.monotonic() - begin:.0f}s)")
        _import_tarballs(
            clients[1:], alias, where / info["metadata"], where / info["rootfs"], "debootstrap"
        )
    else:
        print(f"  debootstrap image from the cache {where} (built {info['built']})")
        if "entries" not in info:  # cached by an earlier bench
            info["unpacked-bytes"], info["entries"] = tree_stats(where / info["rootfs"])
            info_file.write_text(json.dumps(info, indent=1) + "\n")
        _import_tarballs(
            clients, alias, where / info["metadata"], where / info["rootfs"], "debootstrap"
        )
    return BenchImage(
        "debootstrap",
        alias,
        where / info["metadata"],
        where / info["rootfs"],
        int(info["unpacked-bytes"]),
        int(info["entries"]),
    )
