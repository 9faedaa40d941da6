"""Deploy the packed charm on a real Juju controller and drive it (skips where juju is absent).

Run with a controller and a packed charm: ``CHARM_PATH=./container-compute_amd64.charm
tox -e integration``. The charm is a subordinate: it rides on an ``ubuntu`` principal through
``juju-info``.
"""

import os
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    shutil.which("juju") is None,
    reason="no juju binary on PATH: integration tests need a real Juju controller",
)

APP = "container-compute"
PRINCIPAL = "host"


@pytest.fixture(scope="module")
def juju():
    """A temporary model on the current controller, destroyed afterwards."""
    import jubilant

    with jubilant.temp_model() as juju_model:
        juju_model.wait_timeout = 30 * 60
        yield juju_model


@pytest.fixture(scope="module")
def charm_path() -> Path:
    """The packed charm: CHARM_PATH, or the single *.charm in the repository's root."""
    if "CHARM_PATH" in os.environ:
        return Path(os.environ["CHARM_PATH"])
    charms = sorted(Path(__file__).resolve().parents[2].glob("*.charm"))
    if len(charms) != 1:
        pytest.fail("pack the charm first (charmcraft pack) or set CHARM_PATH")
    return charms[0]


def test_deploy_configures_the_host(juju, charm_path: Path):
    """Deployed on a principal, the unit configures LXD and goes active with its summary."""
    import jubilant

    juju.deploy("ubuntu", PRINCIPAL, base="ubuntu@24.04")
    juju.deploy(charm_path, APP, config={"storage-driver": "dir"})
    juju.integrate(f"{APP}:juju-info", f"{PRINCIPAL}:juju-info")
    status = juju.wait(jubilant.all_active)
    message = status.apps[APP].units[f"{APP}/0"].workload_status.message
    assert "dir pool container-compute" in message


def test_invalid_config_blocks_and_names_the_option(juju):
    """A bad value blocks the unit with the option's name; fixing it returns to active."""
    import jubilant

    juju.config(APP, {"storage-driver": "ext4"})
    status = juju.wait(jubilant.all_blocked)
    assert "storage-driver" in status.apps[APP].units[f"{APP}/0"].workload_status.message
    juju.config(APP, reset=["storage-driver"])
    juju.config(APP, {"storage-driver": "dir"})
    juju.wait(jubilant.all_active)


def test_job_runs_through_actions(juju):
    """build-worker-image, launch-job with wait, then gather-results with inline output."""
    juju.run(f"{APP}/0", "build-worker-image")
    launched = juju.run(
        f"{APP}/0",
        "launch-job",
        {"command": "echo $((TASK_INDEX * TASK_INDEX))", "tasks": 4, "wait": True},
    )
    job = launched.results["job"]
    assert launched.results["state"] == "succeeded"
    gathered = juju.run(f"{APP}/0", "gather-results", {"job": job, "inline": True})
    assert gathered.results["summary"]
