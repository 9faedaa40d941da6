"""Worker images from OCI and Docker images, on the real LXD with Debian's skopeo and umoci.

The image is made here: an OCI layout of two gzipped layers (a busybox root, then a layer
that whites out a file and makes a directory opaque) with Env and WorkingDir in its config;
a docker-archive of it is made with skopeo. Jobs run in both; bad sources (a missing file, a
blob whose digest is wrong, layers that climb out of the root, an image over the size limit,
no /bin/sh, a USER) are refused with a message and import nothing.
"""

import shutil
import socket
import subprocess
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from container_compute import actions
from container_compute.actions.images import BuildWorkerImageParams
from container_compute.config import HostConfig
from container_compute.constants import SKOPEO
from container_compute.errors import ActionError
from container_compute.host import images, oci
from container_compute.jobs.params import LaunchJobParams
from container_compute.lxdclient import connect

from ..oci_layout import (
    COMMAND,
    EXPECTED,
    IMAGE_CONFIG,
    base_layer,
    file_entry,
    link_entry,
    tar_of,
    top_layer,
    write_layout,
)

pytestmark = pytest.mark.functional


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("oci")
    return write_layout(tmp / "layout", [base_layer(tmp), top_layer()], IMAGE_CONFIG)


def build(config: HostConfig, source: str, alias: str) -> dict[str, Any]:
    params = BuildWorkerImageParams(source=source, alias=alias)
    return actions.run_action("build-worker-image", params, config, Path("/nonexistent"))


def aliases(config: HostConfig) -> set[str]:
    client = connect(project=config.lxd_project)
    listing = client.api.images.aliases.get(params={"recursion": "1"}).json()["metadata"]
    return {a["name"] for a in listing or []}


@pytest.fixture
def no_new_images(configured_host: HostConfig) -> Iterator[None]:
    client = connect(project=configured_host.lxd_project)
    before = {i.fingerprint for i in client.images.all()}
    yield
    after = {i.fingerprint for i in client.images.all()}
    for fingerprint in after - before:  # a test's own images go; a refused one left none
        client.images.get(fingerprint).delete(wait=True)


def run_job(config: HostConfig, state_dir: Path, image: str) -> dict[str, Any]:
    params = LaunchJobParams(
        command=COMMAND, tasks=2, image=image, env=["OVERRIDE=job"], wait=True
    )
    result = actions.run_action("launch-job", params, config, state_dir)
    assert result["state"] == "succeeded", result
    for index in range(2):
        stdout = Path(result["results-dir"]) / str(index) / "stdout"
        assert stdout.read_text() == EXPECTED
    return result


def test_a_job_runs_in_an_oci_layout_a_docker_archive_and_an_oci_archive(
    configured_host: HostConfig,
    state_dir: Path,
    layout: Path,
    tmp_path: Path,
    no_new_images: None,
) -> None:
    report = build(configured_host, f"oci:{layout}:v1", "oci-test")
    assert report["changed"] and report["image-config"]["working-dir"] == "/app", report
    assert report["image-config"]["entrypoint"] == ["/bin/sh", "-c"]
    assert report["image-config"]["cmd"] == ["echo ready"]
    run_job(configured_host, state_dir, "oci-test")

    for kind, tagged in (("docker-archive", ":cc/test:v1"), ("oci-archive", ":v1")):
        archive = tmp_path / f"{kind}.tar"
        subprocess.run(
            [
                SKOPEO,
                "--insecure-policy",
                "copy",
                "--quiet",
                f"oci:{layout}:v1",
                f"{kind}:{archive}{tagged}",
            ],
            check=True,
            capture_output=True,
        )
        report = build(configured_host, f"{kind}:{archive}", kind)
        assert report["image-config"]["env"][1] == "GREETING=from-image", report
        run_job(configured_host, state_dir, kind)


REGISTRY_BIN = Path("/usr/bin/docker-registry")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's docker-registry on 127.0.0.1 (a port of its own), storing in a temp dir."""
    if not REGISTRY_BIN.exists():
        pytest.fail(f"{REGISTRY_BIN} is missing: scripts/setup-functional-tests installs it")
    tmp = tmp_path_factory.mktemp("registry")
    address = f"127.0.0.1:{_free_port()}"
    config = tmp / "config.yml"
    config.write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp / 'data'}\n"
        f"http:\n  addr: {address}\n"
    )
    with (tmp / "registry.log").open("wb") as log:
        process = subprocess.Popen(
            [str(REGISTRY_BIN), "serve", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://{address}/v2/", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert process.poll() is None, (tmp / "registry.log").read_text()
            assert time.monotonic() < deadline, "the registry did not answer within 30 s"
            time.sleep(0.2)
        yield address
    finally:
        process.terminate()
        process.wait(30)


def test_a_job_runs_in_an_image_from_a_registry(
    configured_host: HostConfig,
    state_dir: Path,
    layout: Path,
    registry: str,
    no_new_images: None,
) -> None:
    subprocess.run(
        [
            SKOPEO,
            "--insecure-policy",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            f"oci:{layout}:v1",
            f"docker://{registry}/research/tool:v1",
        ],
        check=True,
        capture_output=True,
    )
    report = build(configured_host, f"docker://{registry}/research/tool:v1", "registry-test")
    assert report["source"] == f"docker://{registry}/research/tool:v1"
    run_job(configured_host, state_dir, "registry-test")
    with pytest.raises(ActionError, match="skopeo could not copy it") as refused:
        build(configured_host, f"docker://{registry}/research/absent:v1", "registry-absent")
    assert "nothing was imported" in str(refused.value)


def _corrupted(layout: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "corrupt"
    shutil.copytree(layout, copy)
    biggest = max((copy / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
    data = bytearray(biggest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    biggest.write_bytes(bytes(data))
    return copy


def _with_top_layer(tmp_path: Path, layer: bytes, config: dict[str, Any]) -> Path:
    base = tmp_path / "base.tar"
    if not base.exists():
        base.write_bytes(base_layer(tmp_path))
    return write_layout(
        tmp_path / f"bad{len(list(tmp_path.iterdir()))}", [base.read_bytes(), layer], config
    )


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("missing", "is not a file"),
        ("wrong-digest", "skopeo could not copy it"),
        ("dot-dot", "climbs out of the root with '..'"),
        ("absolute-hardlink", "is a hard link to '/etc/shadow', outside the image"),
        ("climbing-symlink", "which climbs out of the root"),
        ("no-shell", "has no /bin/sh"),
        ("user", "runs as user 'nobody'"),
    ],
)
def test_bad_sources_are_refused_and_import_nothing(
    configured_host: HostConfig,
    layout: Path,
    tmp_path: Path,
    no_new_images: None,
    case: str,
    words: str,
) -> None:
    before = aliases(configured_host)
    top_layers = {
        "dot-dot": [file_entry("../escape", b"x")],
        "absolute-hardlink": [link_entry("etc/h", tarfile.LNKTYPE, "/etc/shadow")],
        "climbing-symlink": [link_entry("etc/up", tarfile.SYMTYPE, "../../../host")],
        "no-shell": [file_entry("bin/.wh.sh", b"")],
    }
    if case == "missing":
        source = f"docker-archive:{tmp_path / 'absent.tar'}"
    elif case == "wrong-digest":
        source = f"oci:{_corrupted(layout, tmp_path)}:v1"
    elif case == "user":
        config = {**IMAGE_CONFIG, "User": "nobody"}
        source = f"oci:{_with_top_layer(tmp_path, top_layer(), config)}:v1"
    else:
        source = f"oci:{_with_top_layer(tmp_path, tar_of(top_layers[case]), IMAGE_CONFIG)}:v1"

    with pytest.raises((ActionError, ValueError)) as refused:
        build(configured_host, source, f"bad-{case}")
    assert words in str(refused.value)
    if isinstance(refused.value, ActionError):  # past the params: LXD was never asked
        assert "nothing was imported" in str(refused.value)
    assert aliases(configured_host) == before


def test_an_image_over_the_size_limit_is_refused(
    configured_host: HostConfig, layout: Path, no_new_images: None
) -> None:
    client = connect(project=configured_host.lxd_project)
    source = oci.parse_source(f"oci:{layout}:v1")
    assert source is not None
    with pytest.raises(oci.ImageRefusedError, match="unpacks to more than 1 MiB"):
        images.build_oci_image(client, "too-big", source, max_bytes=1 << 20)
    assert "too-big" not in aliases(configured_host)
