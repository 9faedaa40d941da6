"""What the integration tests share: names, the deployment, actions and status through Juju."""

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import tomllib
from juju.model import Model
from juju.unit import Unit
from pytest_operator.plugin import OpsTest

ROOT = Path(__file__).resolve().parents[2]
APP = "container-compute"
PRINCIPAL = "host"
REQUIRER = "portal"
BASE = "ubuntu@24.04"
SQUARE = "echo $((TASK_INDEX * TASK_INDEX)) > /results/square"
T = TypeVar("T")


def model_of(ops_test: OpsTest) -> Model:
    """The test module's model (pytest-operator makes one per module)."""
    assert ops_test.model is not None, "no model: pytest-operator did not set one up"
    return ops_test.model


def unit(ops_test: OpsTest, name: str) -> Unit:
    return model_of(ops_test).units[name]


def units_of(ops_test: OpsTest, app: str) -> list[Unit]:
    return list(model_of(ops_test).applications[app].units)


async def deploy_on_principal(ops_test: OpsTest, charm: Path, hosts: int = 1) -> None:
    """The charm as a subordinate of `hosts` ubuntu units, related through juju-info."""
    model = model_of(ops_test)
    await model.deploy("ubuntu", application_name=PRINCIPAL, base=BASE, num_units=hosts)
    await model.deploy(charm, application_name=APP, num_units=0, config={"storage-driver": "dir"})
    await model.integrate(f"{APP}:juju-info", f"{PRINCIPAL}:juju-info")
    await model.wait_for_idle(apps=[PRINCIPAL, APP], status="active", timeout=1800)
    await model.block_until(lambda: len(units_of(ops_test, APP)) == hosts, timeout=600)


async def run_action(
    ops_test: OpsTest, unit_name: str, action: str, /, **params: Any
) -> dict[str, Any]:
    """Run an action on a unit; its results (fails the test when the action fails)."""
    action_run = await unit(ops_test, unit_name).run_action(action, **params)
    action_run = await action_run.wait()
    assert action_run.status == "completed", (action, params, action_run.results)
    return action_run.results


async def build_worker_images(ops_test: OpsTest) -> None:
    """The default worker image (busybox) on every unit's host: each has its own LXD."""
    for each in units_of(ops_test, APP):
        built = await run_action(ops_test, each.name, "build-worker-image", source="busybox")
        assert built["alias"]


async def juju_status(ops_test: OpsTest) -> dict[str, Any]:
    code, out, err = await ops_test.juju("status", "--format=json")
    assert code == 0, err
    return json.loads(out)


async def leader_of(ops_test: OpsTest, app: str) -> str:
    """The leader unit of `app`, as `juju status` says (a subordinate's under its principal)."""
    status = await juju_status(ops_test)
    found = dict(status["applications"][app].get("units", {}))
    for principal in status["applications"][app].get("subordinate-to", []):
        for each in status["applications"][principal].get("units", {}).values():
            found.update(each.get("subordinates", {}))
    leaders = [name for name, u in found.items() if name.startswith(f"{app}/") and u.get("leader")]
    assert len(leaders) == 1, f"{app}: leaders {leaders}"
    return leaders[0]


async def principal_of(ops_test: OpsTest, subordinate: str) -> str:
    """The principal unit `subordinate` rides on."""
    status = await juju_status(ops_test)
    for name, principal in status["applications"][PRINCIPAL]["units"].items():
        if subordinate in principal.get("subordinates", {}):
            return name
    raise AssertionError(f"{subordinate} rides on no {PRINCIPAL} unit")


async def poll(
    probe: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    timeout: float,
    what: str,
    interval: float = 3.0,
) -> T:
    """Call `probe` until `done` says yes to its answer; that answer (fails after `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = await probe()
        if done(answer):
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s; last: {answer}")
        await asyncio.sleep(interval)


def counts(status: dict[str, Any]) -> dict[str, int]:
    """A job-status' counts as integers (Juju returns action results as strings)."""
    return {state: int(n) for state, n in status["counts"].items()}


def locked_requirements(root: str) -> str:
    """requirements.txt of `root` and what it needs, at the versions of uv.lock."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    packages: dict[str, list[dict[str, Any]]] = {}
    for package in lock["package"]:
        packages.setdefault(package["name"], []).append(package)
    lines, todo, seen = [], [{"name": root}], set()
    while todo:
        wanted = todo.pop()
        candidates = packages[wanted["name"]]
        (package,) = [p for p in candidates if p["version"] == wanted.get("version")] or candidates
        line = f"{package['name']}=={package['version']}"
        if "marker" in wanted:
            line += f"; {wanted['marker']}"
        if line not in seen:
            seen.add(line)
            lines.append(line)
            todo += package.get("dependencies", [])
    return "\n".join(sorted(lines)) + "\n"
