"""One rule for a job's environment: one name pattern, one reserved list, used everywhere."""

import re
from pathlib import Path

import pytest

from container_compute import constants
from container_compute.backends import LaunchError, WorkerSpec
from container_compute.backends.lxd import launch, warm
from container_compute.backends.lxd.backend import check_spec
from container_compute.backends.nova import payload
from container_compute.constants import RESERVED_ENV, SCRIPT_ENV, TASK_ENV
from container_compute.jobs.params import LaunchJobParams

PACKAGE = Path(constants.__file__).parent


def spec_with_env(env: dict[str, str]) -> WorkerSpec:
    return WorkerSpec(job_id="j1", task_index=0, attempt=1, image="img", command="true", env=env)


@pytest.mark.parametrize("name", RESERVED_ENV)
def test_every_reserved_name_is_refused_at_submission(name: str) -> None:
    with pytest.raises(ValueError, match=f"env: {name} is set by container-compute"):
        LaunchJobParams(command="true", env=[f"{name}=1"])


def test_the_scripts_set_only_reserved_names() -> None:
    lxd_scripts = launch.LAUNCHER + launch.WRAPPER + launch.RECYCLE + launch.SANDBOX_WRAPPER
    lxd_scripts += launch.SANDBOX_SETUP + launch.SANDBOX_PROBE
    nova_script = (PACKAGE / "templates" / payload.TEMPLATE).read_text()
    named = set(re.findall(r"\bCC_[A-Z_]+\b", lxd_scripts + nova_script))
    named |= set(re.findall(r"\b(cc_[a-z_0-9]+)=", lxd_scripts + nova_script))
    named |= set(warm.WarmWorkers.__init__.__code__.co_consts) & {"CC_KEEP", "CC_MIN_FREE"}
    assert named and named <= set(SCRIPT_ENV)
    assert set(RESERVED_ENV) == set(TASK_ENV) | set(SCRIPT_ENV)


@pytest.mark.parametrize("name", ["CC_KEEP", "CC_MIN_FREE", "cc_dir"])
def test_backends_refuse_the_names_their_scripts_set(name: str) -> None:
    with pytest.raises(LaunchError, match="is not allowed"):
        check_spec(spec_with_env({name: "1"}))
    with pytest.raises(ValueError, match="is not allowed"):
        payload.user_data(spec_with_env({name: "1"}), cap_bytes=1 << 20)


def test_the_engines_task_names_pass_the_backends() -> None:
    env: dict[str, str] = dict.fromkeys(TASK_ENV, "1")
    assert check_spec(spec_with_env(env))["TASK_ATTEMPT"] == "1"
    assert "export TASK_ATTEMPT=1" in payload.user_data(spec_with_env(env), cap_bytes=1 << 20)


def test_a_name_with_a_trailing_newline_is_refused_everywhere() -> None:
    with pytest.raises(ValueError, match="env: 'A\\\\n' is not KEY=VALUE"):
        LaunchJobParams(command="true", env=["A\n=1"])
    with pytest.raises(LaunchError):
        check_spec(spec_with_env({"A\n": "1"}))
    with pytest.raises(ValueError):
        payload.user_data(spec_with_env({"A\n": "1"}), cap_bytes=1 << 20)


def test_a_nul_byte_in_a_value_is_refused_at_submission_not_at_launch() -> None:
    with pytest.raises(ValueError, match="env: the value of A contains a NUL byte") as caught:
        LaunchJobParams(command="true", env=["A=s3cret\x00"])
    assert "s3cret" not in str(caught.value)


def test_the_env_name_pattern_is_written_once() -> None:
    pattern = "[A-Za-z_][A-Za-z0-9_]"
    holders = [
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if pattern in path.read_text()
    ]
    assert holders == ["constants.py"]
