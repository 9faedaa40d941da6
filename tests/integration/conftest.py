"""Integration tests run against a real Juju controller with pytest-operator.

They skip, with the reason, where no ``juju`` binary is on PATH (as on the CI machines here);
elsewhere ``tox -e integration`` runs them unchanged against the current controller. The charm
under test is ``CHARM_PATH``, else the newest ``build/*.charm`` (``tox -e pack`` on Ubuntu makes
a deployable one), else pytest-operator packs the repository. pytest-operator gives each test
module a model of its own; the tests of a module run in order, each on what the one before left.
"""

import os
import shutil
from pathlib import Path

import pytest
from pytest_operator.plugin import OpsTest

from .helpers import ROOT

NO_JUJU = "no juju binary on PATH: integration tests need a real Juju controller"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip every integration test, saying why, where juju is absent."""
    if shutil.which("juju") is None:
        for item in items:
            item.add_marker(pytest.mark.skip(reason=NO_JUJU))


@pytest.fixture(scope="module")
async def charm_path(ops_test: OpsTest) -> Path:
    """The packed container-compute charm."""
    if "CHARM_PATH" in os.environ:
        return Path(os.environ["CHARM_PATH"])
    built = sorted((ROOT / "build").glob("*.charm"), key=lambda p: p.stat().st_mtime)
    if built:
        return built[-1]
    return await ops_test.build_charm(ROOT)
