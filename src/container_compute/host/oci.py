"""Worker images from OCI and Docker images: fetched by skopeo, checked, flattened by umoci.

A source is ``oci:DIR[:TAG]`` (an OCI image layout), ``oci-archive:FILE``,
``docker-archive:FILE`` (what ``docker save`` writes) or ``docker://REGISTRY/NAME:TAG``.
``skopeo copy`` brings it into a layout of our own (checking every blob's digest); each layer
is then read here before anything is unpacked: a member whose path is absolute or climbs out
with ``..``, a link that leaves the root, a device node, or more bytes than allowed refuse the
whole image. ``umoci unpack`` applies the layers in order (whiteouts and opaque directories,
owners, modes, links). The image's config (``Env``, ``WorkingDir``, ``User``, ``Entrypoint``,
``Cmd``) is kept as ``ImageConfig``: Env and WorkingDir become the tasks' defaults.
"""

import json
import posixpath
import re
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..constants import SKOPEO, UMOCI
from ..rootfs import MAX_LINKS, in_root

TRANSPORTS = ("oci", "oci-archive", "docker-archive", "docker")
MAX_IMAGE_BYTES = 16 << 30  # unpacked, all layers together
FETCH_TIMEOUT_SECONDS = 1800
UNPACK_TIMEOUT_SECONDS = 1800
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_REGISTRY_REF_RE = re.compile(
    r"^(?P<registry>[A-Za-z0-9.-]+(:\d{1,5})?|\[[0-9a-fA-F:]+\](:\d{1,5})?)/"
    r"(?P<name>[a-z0-9]+([._/-][a-z0-9]+)*)(:(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})"
    r"|@sha256:[0-9a-f]{64})$"
)
_LOOPBACK = ("127.0.0.1", "localhost", "[::1]")
_ROOT_USERS = ("", "0", "root", "0:0", "root:root", "root:0", "0:root")
OUR_TAG = "cc"


class ImageRefusedError(ValueError):
    """The source or one of its layers cannot become a worker image; nothing was imported."""


@dataclass(frozen=True)
class OciSource:
    """A checked ``--source``: the skopeo transport and reference, and how to show it."""

    transport: str
    reference: str
    text: str
    path: str = ""  # a local source's file or layout

    def check_present(self) -> None:
        """Refuse a local source whose file or layout is not there."""
        where = Path(self.path)
        if self.transport == "oci" and not (where / "index.json").is_file():
            raise ImageRefusedError(f"source: {where} is not an OCI image layout (no index.json)")
        if self.transport in ("oci-archive", "docker-archive") and not where.is_file():
            raise ImageRefusedError(f"source: {where} is not a file")

    @property
    def skopeo_args(self) -> list[str]:
        """The source as skopeo takes it (TLS off only for a registry on this loopback)."""
        args = []
        if self.transport == "docker":
            host = self.reference.removeprefix("//").split("/", 1)[0].rsplit(":", 1)[0]
            if host in _LOOPBACK:
                args.append("--src-tls-verify=false")
        return [*args, f"{self.transport}:{self.reference}"]


def parse_source(text: str) -> OciSource | None:
    """The OCI source ``text`` names; None when it is not one (busybox, debootstrap).

    Raises:
        ImageRefusedError: an OCI source that is malformed (``check_present`` looks for it).
    """
    transport, sep, rest = text.partition(":")
    if not sep or transport not in TRANSPORTS:
        return None
    if transport == "docker":
        if not rest.startswith("//") or not _REGISTRY_REF_RE.match(rest[2:]):
            raise ImageRefusedError(
                f"source: {text!r} is not docker://REGISTRY/NAME:TAG (or @sha256:DIGEST)"
            )
        return OciSource(transport, rest, text)
    path, tag = rest, ""
    if transport == "oci" and ":" in rest:
        path, _, tag = rest.rpartition(":")
        if not _TAG_RE.match(tag):
            raise ImageRefusedError(f"source: {tag!r} is not an image tag in {text!r}")
    if not path.startswith("/"):
        raise ImageRefusedError(f"source: {text!r} must name an absolute path")
    return OciSource(transport, f"{path}:{tag}" if tag else path, text, path)


@dataclass(frozen=True)
class ImageConfig:
    """What the image's config asks of the processes it runs."""

    env: list[str] = field(default_factory=list)
    working_dir: str = ""
    user: str = ""
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)

    @classmethod
    def from_oci(cls, config: dict[str, Any]) -> "ImageConfig":
        """Read the ``config`` object of an OCI image config."""
        inner = config.get("config") or {}
        return cls(
            env=[str(e) for e in inner.get("Env") or [] if "=" in str(e)],
            working_dir=str(inner.get("WorkingDir") or ""),
            user=str(inner.get("User") or ""),
            entrypoint=[str(a) for a in inner.get("Entrypoint") or []],
            cmd=[str(a) for a in inner.get("Cmd") or []],
        )

    def to_dict(self) -> dict[str, Any]:
        """As recorded in the image's properties and shown in reports."""
        return {
            "env": self.env,
            "working-dir": self.working_dir,
            "user": self.user,
            "entrypoint": self.entrypoint,
            "cmd": self.cmd,
        }


def fetch(source: OciSource, layout: Path) -> None:
    """Copy the source into a new OCI layout at ``layout`` (tag ``cc``); skopeo checks digests.

    Raises:
        ImageRefusedError: it is not there, or skopeo could not read or verify it (its
            message kept).
    """
    source.check_present()
    _run_tool(
        [
            SKOPEO,
            "--insecure-policy",
            "copy",
            "--quiet",
            *source.skopeo_args,
            f"oci:{layout}:{OUR_TAG}",
        ],
        FETCH_TIMEOUT_SECONDS,
        f"source {source.text}: skopeo could not copy it",
    )


def _run_tool(argv: list[str], timeout: int, failed: str) -> None:
    """Run skopeo or umoci; a failure is an ImageRefusedError saying ``failed`` and why."""
    try:
        subprocess.run(argv, check=True, capture_output=True, text=True, timeout=timeout)
    except subprocess.CalledProcessError as err:
        said = (err.stderr or err.stdout or "").strip().splitlines()
        raise ImageRefusedError(f"{failed}: {said[-1] if said else err}") from err
    except FileNotFoundError as err:
        name = Path(argv[0]).name
        raise ImageRefusedError(f"{argv[0]} is missing: install Debian's {name}") from err


def _blob(layout: Path, digest: str) -> Path:
    algorithm, _, value = digest.partition(":")
    if algorithm != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ImageRefusedError(f"digest {digest!r} is not a sha256 digest")
    return layout / "blobs" / "sha256" / value


def read_manifest(layout: Path) -> tuple[ImageConfig, list[Path]]:
    """The image config and layer blobs of the layout's ``cc`` image."""
    index = json.loads((layout / "index.json").read_text())
    manifests = index.get("manifests") or []
    if len(manifests) != 1:
        raise ImageRefusedError(f"the copied layout holds {len(manifests)} images, not one")
    manifest = json.loads(_blob(layout, manifests[0]["digest"]).read_text())
    config = json.loads(_blob(layout, manifest["config"]["digest"]).read_text())
    layers = [_blob(layout, layer["digest"]) for layer in manifest.get("layers") or []]
    return ImageConfig.from_oci(config), layers


def check_layers(layers: list[Path], max_bytes: int = MAX_IMAGE_BYTES) -> int:
    """Read every layer before unpacking any; return their bytes together.

    Raises:
        ImageRefusedError: a member escapes the root or is a device; over ``max_bytes``.
    """
    total = 0
    for number, layer in enumerate(layers, start=1):
        try:
            with tarfile.open(layer, mode="r:*") as tar:
                for member in tar:
                    total += member.size
                    why = _refusal(member)
                    if why:
                        raise ImageRefusedError(f"layer {number}: {member.name!r} {why}")
                    if total > max_bytes:
                        raise ImageRefusedError(
                            f"layer {number}: the image unpacks to more than "
                            f"{max_bytes >> 20} MiB: refused"
                        )
        except (tarfile.TarError, EOFError, OSError) as err:
            raise ImageRefusedError(f"layer {number} is not a readable tar: {err}") from err
    return total


def _refusal(member: tarfile.TarInfo) -> str:
    """Why a layer member cannot be unpacked ("" when it can)."""
    name = member.name
    if name.startswith("/"):
        return "is an absolute path"
    if ".." in name.split("/"):
        return "climbs out of the root with '..'"
    if member.ischr() or member.isblk():
        return "is a device node (LXD makes a worker's devices)"
    if member.islnk():
        target = member.linkname
        if target.startswith("/") or ".." in target.split("/"):
            return f"is a hard link to {target!r}, outside the image"
    if member.issym():
        target = member.linkname
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
        if not target.startswith("/") and resolved.split("/")[0] == "..":
            return f"is a link to {target!r}, which climbs out of the root"
    return ""


def unpack(layout: Path, bundle: Path) -> Path:
    """Apply the layers with umoci into ``bundle``; return its rootfs."""
    _run_tool(
        [UMOCI, "unpack", "--image", f"{layout}:{OUR_TAG}", str(bundle)],
        UNPACK_TIMEOUT_SECONDS,
        "umoci could not unpack the image",
    )
    return bundle / "rootfs"


def check_runnable(root: Path, config: ImageConfig) -> None:
    """Refuse what the worker cannot run: no /bin/sh, a user other than root."""
    if config.user not in _ROOT_USERS:
        raise ImageRefusedError(
            f"the image runs as user {config.user!r}: tasks run as root of their unprivileged "
            "worker (its uid is not the host's root); rebuild the image without USER"
        )
    if not exists_in_root(root, "bin/sh"):
        raise ImageRefusedError(
            "the image has no /bin/sh (a distroless image?): the task launcher needs a POSIX "
            "shell; build it FROM an image with one (busybox, debian, alpine...)"
        )


def exists_in_root(root: Path, relative: str) -> bool:
    """Whether ``relative`` names something in ``root``, links followed inside it."""
    try:
        path = in_root(root, relative)
        for _ in range(MAX_LINKS):
            if not path.is_symlink():
                return path.exists()
            target = str(path.readlink())
            parent = "/" + str(path.parent.relative_to(root))
            path = in_root(root, target if target.startswith("/") else f"{parent}/{target}")
    except ValueError:
        pass
    return False


def unpacked_root(
    source: OciSource, work: Path, max_bytes: int = MAX_IMAGE_BYTES
) -> tuple[Path, ImageConfig]:
    """Fetch, check and unpack ``source`` in ``work``; return its rootfs and its config.

    Raises:
        ImageRefusedError: the source, a layer or the image cannot be a worker.
    """
    layout = work / "layout"
    fetch(source, layout)
    config, layers = read_manifest(layout)
    check_layers(layers, max_bytes)
    root = unpack(layout, work / "bundle")
    check_runnable(root, config)
    return root, config
