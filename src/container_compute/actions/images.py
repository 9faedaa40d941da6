"""The build-worker-image action: a worker image built offline, imported into LXD or Glance."""

import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import HostConfig
from ..constants import IMAGE_CONFIG_PROPERTY
from ..errors import ActionError
from ..host.oci import ImageRefusedError, OciSource, parse_source
from ..jobs.params import ActionParams, fail, param

IMAGE_SOURCES = ("busybox", "debootstrap")
IMAGE_TARGETS = ("lxd", "nova")
_URL_RE = re.compile(r"^https?://[A-Za-z0-9.:\[\]_-]{1,253}(/[^\s'\"\\]*)?$")
_IMAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$")
_PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]{0,127}$")
_SUITE_RE = re.compile(r"^[a-z]{2,20}$")
_MIRROR_RE = re.compile(r"^(https?|file)://[^\s'\"\\]{1,250}$")


@dataclass(frozen=True)
class BuildWorkerImageParams(ActionParams):
    """build-worker-image: build a worker image offline and import it under an alias."""

    source: str = param(
        "busybox",
        "busybox: a tiny image from the host's busybox-static. debootstrap: a Debian minbase "
        "with the chosen packages (uses the host's Debian mirror). An OCI or Docker image: "
        "oci:DIR[:TAG] (an OCI image layout), oci-archive:FILE, docker-archive:FILE (what "
        "docker save writes) or docker://REGISTRY/NAME:TAG; its Env and WorkingDir become the "
        "tasks' defaults.",
    )
    alias: str = param("", "Alias of the image. Empty: the default-image option.")
    packages: str = param("", "debootstrap only: extra Debian packages, comma-separated.")
    suite: str = param("bookworm", "debootstrap only: the Debian suite.")
    mirror: str = param("", "debootstrap only: Debian mirror URL. Empty: the host's apt mirror.")
    target: str = param(
        "lxd",
        "lxd: import into this host's LXD. nova: upload a raw image to Glance (busybox or OCI), "
        "named by alias (empty: the nova-image option, else container-compute-worker).",
        enum=list(IMAGE_TARGETS),
    )
    metadata_url: str = param(
        "",
        "target=nova: metadata service URL(s) the image's init fetches user-data from, "
        "space-separated. Empty: http://169.254.169.254.",
    )

    def __post_init__(self) -> None:
        """Check alias, packages, suite and mirror."""
        super().__post_init__()
        if self.source not in IMAGE_SOURCES and self.oci_source is None:
            fail(
                "source",
                f"{self.source!r} is not busybox, debootstrap, oci:DIR[:TAG], oci-archive:FILE, "
                "docker-archive:FILE or docker://REGISTRY/NAME:TAG",
            )
        if self.alias and not _IMAGE_RE.match(self.alias):
            fail("alias", f"{self.alias!r} is not a valid image alias")
        for package in self.package_list:
            if not _PACKAGE_RE.match(package):
                fail("packages", f"{package!r} is not a Debian package name")
        if self.source != "debootstrap" and (self.package_list or self.mirror):
            fail(
                "packages" if self.package_list else "mirror", "only applies to source=debootstrap"
            )
        if not _SUITE_RE.match(self.suite):
            fail("suite", f"{self.suite!r} is not a Debian suite name such as bookworm")
        if self.mirror and not _MIRROR_RE.match(self.mirror):
            fail("mirror", f"{self.mirror!r} is not an http(s):// or file:// URL")

        if self.target == "nova" and self.source == "debootstrap":
            fail("source", "target=nova builds busybox images and images from OCI sources")
        for url in self.metadata_urls:
            if not _URL_RE.match(url):
                fail("metadata-url", f"{url!r} is not an http(s) URL")
        if self.metadata_url and self.target != "nova":
            fail("metadata-url", "only applies to target=nova")

    @property
    def oci_source(self) -> OciSource | None:
        """The OCI source named, None for busybox and debootstrap (checked: see fail)."""
        try:
            return parse_source(self.source)
        except ImageRefusedError as err:
            fail("source", str(err).removeprefix("source: "))
            raise  # fail() raised already

    @property
    def metadata_urls(self) -> tuple[str, ...]:
        """The metadata URLs, without trailing slashes."""
        return tuple(url.rstrip("/") for url in self.metadata_url.split())

    @property
    def package_list(self) -> list[str]:
        """The extra packages, without blanks or repeats."""
        names = [p.strip() for p in re.split(r"[,\s]+", self.packages)]
        return list(dict.fromkeys(n for n in names if n))


def build_nova_image(
    params: BuildWorkerImageParams, config: HostConfig, state_dir: Path
) -> dict[str, Any]:
    """Build a raw worker image (busybox, or an OCI source) and upload it to Glance."""
    from ..backends.nova import image as nova_image
    from ..host import oci
    from ..identity import CLOUDS_FILE_NAME, IdentityError, session_from_clouds_yaml

    name = params.alias or config.nova_image or "container-compute-worker"
    urls = params.metadata_urls or nova_image.DEFAULT_METADATA_URLS
    source = params.oci_source
    try:
        session, region = session_from_clouds_yaml(state_dir / CLOUDS_FILE_NAME)
        with tempfile.TemporaryDirectory(prefix="cc-build-") as work:
            root, image_config = None, None
            if source is not None:
                root, image_config = oci.unpacked_root(source, Path(work))
            raw = nova_image.build_raw_image(Path(work) / "worker.raw", urls, root)
            properties = (
                {IMAGE_CONFIG_PROPERTY: json.dumps(image_config.to_dict())}
                if (image_config is not None)
                else {}
            )
            report = nova_image.upload(session, raw, name, region, properties)
    except IdentityError as err:
        raise ActionError(f"build-worker-image (nova): {err}") from err
    except oci.ImageRefusedError as err:
        raise ActionError(f"build-worker-image: {err}; nothing was uploaded") from err
    except Exception as err:
        raise ActionError(
            f"build-worker-image (nova) failed: {type(err).__name__}: {err}"
        ) from err
    result = {**report.to_dict(), "source": params.source}
    if image_config is not None:
        result["image-config"] = image_config.to_dict()
    return result


def build_worker_image(
    params: BuildWorkerImageParams, config: HostConfig, state_dir: Path | None = None
) -> dict[str, Any]:
    """Build the image the params ask for and import it; return the image report."""
    if params.target == "nova":
        from ..constants import STATE_DIR

        return build_nova_image(params, config, state_dir or STATE_DIR)
    from .. import lxdclient
    from ..host import images

    alias = params.alias or config.default_image
    try:
        client = lxdclient.connect(project=config.lxd_project)
        oci_source = params.oci_source
        if oci_source is not None:
            report, image_config = images.build_oci_image(client, alias, oci_source)
            return {**report.to_dict(), "image-config": image_config.to_dict()}
        if params.source == "busybox":
            report = images.build_busybox_image(client, alias)
        else:
            build = getattr(images, "build_debootstrap_image", None)
            if build is None:
                raise ActionError("source: debootstrap images are not available in this version")
            report = build(
                client,
                alias,
                suite=params.suite,
                packages=tuple(params.package_list),
                mirror=params.mirror,
            )
    except ActionError:
        raise
    except ImageRefusedError as err:
        raise ActionError(f"build-worker-image: {err}; nothing was imported") from err
    except Exception as err:
        raise ActionError(
            f"build-worker-image ({params.source}) failed in LXD project "
            f"{config.lxd_project!r}: {err}"
        ) from err
    return report.to_dict()
