"""Charm hygiene: what charmcraft and Charmhub expect, and one source of dependency versions.

Every dependency version is declared in pyproject.toml and resolved in the committed uv.lock;
tox, the charm build, CI and scripts/test install from the lock. These tests fail when a version
is declared anywhere else again (a requirements file, a tox ``deps``), when the lock no longer
records what pyproject.toml declares (what ``uv lock --check`` would say), or when a declared
dependency is locked at a version it does not allow.
"""

import configparser
import hashlib
import os
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
SVG = "{http://www.w3.org/2000/svg}"
# Endpoints the charm works without; every other `requires` endpoint must be related.
OPTIONAL_REQUIRES = {"identity-credentials"}
# Requirement files that are not ours: the OpenStack services the openstack tests start.
FOREIGN_REQUIREMENTS = {
    "tests/openstack/services-requirements.txt",
    "tests/openstack/services-constraints.txt",
}
APACHE_2_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"
NOT_THE_REPOSITORY = {".git", ".tox", ".venv", ".quickstart-venv", "build", "parts", "stage"}


@pytest.fixture(scope="module")
def metadata() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "metadata.yaml").read_text())


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def lock() -> dict[str, Any]:
    return tomllib.loads((ROOT / "uv.lock").read_text())


def locked_versions(lock: dict[str, Any]) -> dict[str, set[Version]]:
    """Every locked package's versions (a fork by Python version may lock two)."""
    versions: dict[str, set[Version]] = {}
    for package in lock["package"]:
        versions.setdefault(package["name"], set()).add(Version(package["version"]))
    return versions


def declared_groups(pyproject: dict[str, Any]) -> dict[str, list[Requirement]]:
    """Each dependency group's requirements, with its included groups expanded."""
    groups: dict[str, list[str | dict[str, str]]] = pyproject["dependency-groups"]

    def expand(name: str) -> list[Requirement]:
        requirements = []
        for entry in groups[name]:
            if isinstance(entry, dict):
                requirements += expand(entry["include-group"])
            else:
                requirements.append(Requirement(entry))
        return requirements

    return {name: expand(name) for name in groups}


def key(requirement: Requirement) -> tuple[str, frozenset[str], SpecifierSet, str]:
    return (
        canonicalize_name(requirement.name),
        frozenset(requirement.extras),
        requirement.specifier,
        str(requirement.marker or ""),
    )


def locked_key(
    entry: dict[str, Any], group_python: bool = False
) -> tuple[str, frozenset[str], SpecifierSet, str]:
    """A requirement as uv.lock records it (a group's own requires-python adds a marker)."""
    return (
        entry["name"],
        frozenset(entry.get("extras", [])),
        SpecifierSet(entry.get("specifier", "")),
        "" if group_python else entry.get("marker", ""),
    )


def repository_files() -> list[str]:
    """The repository's files (relative paths), without VCS, tox, venvs and build output."""
    found = []
    for top, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in NOT_THE_REPOSITORY and d != "__pycache__"]
        found += [str((Path(top) / f).relative_to(ROOT)) for f in files]
    return found


# Metadata, license and icon -------------------------------------------------------------------


def test_summary_is_one_short_line(metadata: dict[str, Any]) -> None:
    summary = metadata["summary"]
    assert "\n" not in summary.strip()
    assert len(summary) <= 72, f"{len(summary)} characters: {summary}"


def test_only_the_endpoints_the_charm_works_without_are_optional(
    metadata: dict[str, Any],
) -> None:
    optional = {name for name, spec in metadata["requires"].items() if spec.get("optional")}
    assert optional == OPTIONAL_REQUIRES
    assert metadata["requires"]["identity-credentials"]["optional"] is True


def test_license_is_the_apache_2_text(pyproject: dict[str, Any]) -> None:
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert re.findall(r"^   (\d)\. ", text, re.M) == [str(n) for n in range(1, 10)]
    # Byte for byte the Apache Software Foundation's LICENSE-2.0.txt (as ops ships it too).
    assert hashlib.sha256(text.encode()).hexdigest() == APACHE_2_SHA256
    assert pyproject["project"]["license"] == {"text": "Apache-2.0"}


def test_icon_is_a_100_pixel_svg_on_a_circle() -> None:
    root = ElementTree.parse(ROOT / "icon.svg").getroot()
    assert root.tag == f"{SVG}svg"
    assert root.get("viewBox") == "0 0 100 100"
    assert (root.get("width"), root.get("height")) == ("100", "100")
    circle = root.find(f"{SVG}circle")
    assert circle is not None, "the background is a circle"
    assert (circle.get("cx"), circle.get("cy"), circle.get("r")) == ("50", "50", "50")


def test_the_packed_charm_carries_its_icon_and_license() -> None:
    charmcraft = yaml.safe_load((ROOT / "charmcraft.yaml").read_text())
    staged = {f for part in charmcraft["parts"].values() for f in part.get("stage", [])}
    assert {"LICENSE", "icon.svg"} <= staged


# One source of dependency versions ------------------------------------------------------------


def test_no_requirements_file_declares_versions() -> None:
    strays = [
        path
        for path in repository_files()
        if re.search(r"(requirements|constraints)[^/]*\.(txt|in)$", path)
        and path not in FOREIGN_REQUIREMENTS
    ]
    assert strays == [], "versions belong in pyproject.toml and uv.lock"


def test_tox_installs_only_from_the_lock(lock: dict[str, Any]) -> None:
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(ROOT / "tox.ini")
    assert tox["testenv"]["runner"] == "uv-venv-lock-runner"
    for section in tox.sections():
        assert "deps" not in tox[section], f"[{section}] deps: use a dependency group"
        assert "runner" not in tox[section] or section == "testenv", section
    # The bootstrap: a tox without tox-uv provisions it, at least the locked version.
    locked = locked_versions(lock)
    for line in tox["tox"]["requires"].split(","):
        requirement = Requirement(line.strip())
        for version in locked[canonicalize_name(requirement.name)]:
            assert version in requirement.specifier, f"{requirement}: uv.lock has {version}"


def test_scripts_test_bootstraps_the_locked_uv(lock: dict[str, Any]) -> None:
    script = (ROOT / "scripts" / "test").read_text()
    pinned = re.findall(r"^UV_VERSION=([0-9.]+)$", script, re.M)
    assert [Version(v) for v in pinned] == sorted(locked_versions(lock)["uv"])
    assert "--only-group tox" in script and "--frozen" in script


def test_every_declared_dependency_is_locked_at_a_version_it_allows(
    pyproject: dict[str, Any], lock: dict[str, Any]
) -> None:
    locked = locked_versions(lock)
    declared = [Requirement(r) for r in pyproject["project"]["dependencies"]]
    declared += [r for group in declared_groups(pyproject).values() for r in group]
    for requirement in declared:
        versions = locked.get(canonicalize_name(requirement.name))
        assert versions, f"{requirement} is not in uv.lock: run uv lock"
        for version in versions:
            assert version in requirement.specifier, f"{requirement}: uv.lock has {version}"


def test_the_lock_records_what_pyproject_declares(
    pyproject: dict[str, Any], lock: dict[str, Any]
) -> None:
    """What ``uv lock --check`` compares first: the project's requirements as locked."""
    (project,) = [p for p in lock["package"] if p["name"] == pyproject["project"]["name"]]
    recorded = project["metadata"]
    assert sorted(map(locked_key, recorded["requires-dist"]), key=str) == sorted(
        (key(Requirement(r)) for r in pyproject["project"]["dependencies"]), key=str
    ), "uv.lock is stale: run uv lock"
    groups = declared_groups(pyproject)
    group_pythons = pyproject["tool"]["uv"]["dependency-groups"]
    assert set(recorded["requires-dev"]) == set(groups), "uv.lock is stale: run uv lock"
    for name, requirements in groups.items():
        locked = [locked_key(e, name in group_pythons) for e in recorded["requires-dev"][name]]
        assert sorted(locked, key=str) == sorted(set(map(key, requirements)), key=str), (
            f"group {name}: uv.lock is stale, run uv lock"
        )
    for name, settings in group_pythons.items():
        assert project["group-requires-python"][name] == settings["requires-python"], name
    assert lock["requires-python"] == pyproject["project"]["requires-python"]


def test_the_charm_takes_ops_in_a_compatible_range(pyproject: dict[str, Any]) -> None:
    charm = {requirement.name: requirement for requirement in declared_groups(pyproject)["charm"]}
    assert set(charm) == {"ops", "cosl"}  # cosl: the cos-agent provider's rules and dashboards
    ops = charm["ops"]
    assert Version("3.9.0") in ops.specifier and Version("4.0") not in ops.specifier
    charmcraft = yaml.safe_load((ROOT / "charmcraft.yaml").read_text())
    assert charmcraft["parts"]["charm"]["uv-groups"] == ["charm"]
