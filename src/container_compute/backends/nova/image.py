"""A raw worker image for Nova, built offline from the host's busybox, uploaded to Glance.

The image is a bare ext4 filesystem (no partition table: Nova's libvirt-lxc and nova-lxd
mount it as the server's root) holding busybox with every applet linked and an init (template
``nova-init.sh.j2``) that fetches the server's user-data from the metadata service and runs it.
"""

import hashlib
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...constants import BUSYBOX_BIN
from ...rendering import render
from ...rootfs import OCI_TOOLS_DIR, add_worker_needs, busybox_rootfs

MKFS_EXT4 = "/sbin/mkfs.ext4"
DEFAULT_METADATA_URLS = ("http://169.254.169.254",)
IMAGE_SIZE_MIB = 32
FETCH_ATTEMPTS = 60
# What our init and task script use, as busybox gives them in an OCI image's /.cc/bin: the
# init puts them first in its PATH, the task script last (where the image lacks a tool).
NOVA_APPLETS = (
    "mount", "wget", "head", "tail", "chmod", "sleep", "cat", "mkdir", "base64", "sha256sum",
    "wc", "tr", "tar", "gzip", "cut", "sed", "poweroff", "halt", "kill",
)  # fmt: skip


@dataclass(frozen=True)
class GlanceImageReport:
    """What build-worker-image target=nova did."""

    name: str
    image_id: str
    size_bytes: int
    changed: bool

    def to_dict(self) -> dict[str, object]:
        """The report as an action result."""
        return {
            "target": "nova",
            "image": self.name,
            "id": self.image_id,
            "size-bytes": self.size_bytes,
            "changed": self.changed,
        }


def build_raw_image(
    target: Path, metadata_urls: tuple[str, ...] = DEFAULT_METADATA_URLS, root: Path | None = None
) -> Path:
    """Build the raw ext4 image at ``target``; return it.

    ``root``: an unpacked OCI image to make it from (given its own init and a static busybox
    in /.cc, its tools left as they are); None: the busybox root.

    Raises:
        FileNotFoundError: busybox-static or mkfs.ext4 is missing on the host.
    """
    for tool in (BUSYBOX_BIN, MKFS_EXT4):
        if not Path(tool).exists():
            raise FileNotFoundError(f"{tool} is missing (install busybox-static and e2fsprogs)")
    with tempfile.TemporaryDirectory(prefix="cc-nova-image-") as staging:
        if root is None:
            root = Path(staging)
            busybox_rootfs(root, BUSYBOX_BIN)
            init = root / "sbin" / "init"
            init.unlink(missing_ok=True)  # busybox's init applet link: ours fetches user-data
            init.write_text(_init(metadata_urls, "/bin/sh", ""))
            init.chmod(0o755)
        else:
            shell, tools = f"/{OCI_TOOLS_DIR}/busybox sh", f"/{OCI_TOOLS_DIR}/bin:"
            bin_dir = add_worker_needs(root, BUSYBOX_BIN, _init(metadata_urls, shell, tools))
            (bin_dir / "bin").mkdir(exist_ok=True)
            for applet in NOVA_APPLETS:
                (bin_dir / "bin" / applet).symlink_to("../busybox")
        target.unlink(missing_ok=True)
        with target.open("wb") as image:
            image.truncate(_image_bytes(root))
        subprocess.run(
            [MKFS_EXT4, "-q", "-F", "-L", "cc-worker", "-d", str(root), str(target)],
            check=True,
            capture_output=True,
        )
    return target


def _init(metadata_urls: tuple[str, ...], shell: str, tools: str) -> str:
    """Our init, which fetches the user-data: run by ``shell``, ``tools`` first in its PATH."""
    return render(
        "nova-init.sh.j2",
        metadata_urls=list(metadata_urls),
        attempts=FETCH_ATTEMPTS,
        shell=shell,
        tools=tools,
    )


def _image_bytes(root: Path) -> int:
    """The filesystem's size: what ``root`` holds, half as much again, at least 32 MiB."""
    used = sum(p.lstat().st_size for p in root.rglob("*"))
    return max(IMAGE_SIZE_MIB << 20, (used * 3 // 2 + (16 << 20)) & ~((1 << 20) - 1))


def _sha512(path: Path) -> str:
    digest = hashlib.sha512()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def upload(
    session: Any,
    path: Path,
    name: str,
    region: str = "",
    properties: dict[str, str] | None = None,
) -> GlanceImageReport:
    """Upload a raw image to Glance as ``name``; an identical one already there is kept.

    ``properties`` are set on the new image (an OCI image's config). An older image of that
    name (other content) is deleted once the new one is active.
    """
    from keystoneauth1 import adapter

    glance = adapter.Adapter(
        session, service_type="image", interface="public", region_name=region or None
    )
    checksum = _sha512(path)
    existing = glance.get("/v2/images", params={"name": name}).json()["images"]
    for image in existing:
        if image.get("os_hash_value") == checksum and image.get("status") == "active":
            return GlanceImageReport(name, image["id"], path.stat().st_size, False)
    created = glance.post(
        "/v2/images",
        json={
            "name": name,
            "disk_format": "raw",
            "container_format": "bare",
            "visibility": "private",
            "container-compute": "worker",
            **(properties or {}),
        },
    ).json()
    with path.open("rb") as data:
        glance.put(
            f"/v2/images/{created['id']}/file",
            data=data,
            headers={"Content-Type": "application/octet-stream"},
        )
    for image in existing:
        glance.delete(f"/v2/images/{image['id']}", raise_exc=False)
    return GlanceImageReport(name, created["id"], path.stat().st_size, True)
