"""OCI sources as build-worker-image takes them, and paths resolved inside an image's root."""

from pathlib import Path

import pytest

from container_compute.host.oci import ImageRefusedError, exists_in_root, parse_source
from container_compute.rootfs import in_root


@pytest.mark.parametrize(
    ("text", "args"),
    [
        ("oci:/srv/layout:v1", ["oci:/srv/layout:v1"]),
        ("oci:/srv/layout", ["oci:/srv/layout"]),
        ("oci-archive:/srv/image.tar", ["oci-archive:/srv/image.tar"]),
        ("docker-archive:/srv/image.tar", ["docker-archive:/srv/image.tar"]),
        (
            "docker://registry.example.org/lab/tool:2.1",
            ["docker://registry.example.org/lab/tool:2.1"],
        ),
        (
            "docker://127.0.0.1:5000/lab/tool:2.1",
            ["--src-tls-verify=false", "docker://127.0.0.1:5000/lab/tool:2.1"],
        ),
        (
            "docker://localhost:5000/tool@sha256:" + "a" * 64,
            ["--src-tls-verify=false", "docker://localhost:5000/tool@sha256:" + "a" * 64],
        ),
    ],
)
def test_sources_and_tls_only_off_on_loopback(text: str, args: list[str]) -> None:
    source = parse_source(text)
    assert source is not None and source.skopeo_args == args


@pytest.mark.parametrize("text", ["busybox", "debootstrap", "alpine:3", "http://x/y"])
def test_other_sources_are_not_oci(text: str) -> None:
    assert parse_source(text) is None


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("oci:relative/layout", "must name an absolute path"),
        ("oci:/srv/layout:bad tag", "is not an image tag"),
        ("docker://tool:1", "is not docker://REGISTRY/NAME:TAG"),
        ("docker:registry.example.org/tool:1", "is not docker://REGISTRY/NAME:TAG"),
        ("docker://registry.example.org/Tool:1", "is not docker://REGISTRY/NAME:TAG"),
    ],
)
def test_malformed_sources_are_refused_by_name(text: str, words: str) -> None:
    with pytest.raises(ImageRefusedError, match=words):
        parse_source(text)


def test_a_missing_local_source_is_said_when_built(tmp_path: Path) -> None:
    source = parse_source(f"docker-archive:{tmp_path / 'absent.tar'}")
    assert source is not None
    with pytest.raises(ImageRefusedError, match="is not a file"):
        source.check_present()


def test_links_resolve_inside_the_root_only(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr" / "sbin").mkdir(parents=True)
    (root / "usr" / "bin").mkdir()
    (root / "usr" / "bin" / "dash").write_text("")
    (root / "sbin").symlink_to("/usr/sbin")  # absolute: counts from the root
    (root / "bin").symlink_to("usr/bin")
    (root / "usr" / "bin" / "sh").symlink_to("dash")
    (root / "etc").symlink_to("../../../../../../usr/etc")  # climbs: stops at the root
    (root / "loop").symlink_to("loop/again")
    assert in_root(root, "sbin/init") == root / "usr" / "sbin" / "init"
    assert in_root(root, "etc/passwd") == root / "usr" / "etc" / "passwd"
    assert exists_in_root(root, "bin/sh")
    assert not exists_in_root(root, "etc/passwd")  # the host's /etc/passwd is not the image's
    with pytest.raises(ValueError, match="links on the way"):
        in_root(root, "loop/x")
    assert not exists_in_root(root, "loop/x")
