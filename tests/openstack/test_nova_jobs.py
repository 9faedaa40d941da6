"""Jobs end to end on a real Nova (libvirt LXC) through the agent's engine."""

import time
from pathlib import Path
from typing import Any

import pytest

from container_compute import actions
from container_compute.actions.images import BuildWorkerImageParams
from container_compute.jobs import runner
from container_compute.jobs.params import JobParams, LaunchJobParams

from ..oci_layout import COMMAND, EXPECTED, IMAGE_CONFIG, base_layer, top_layer, write_layout
from .conftest import NovaHost
from .stack import OpenStackStack

SQUARE = "echo $((TASK_INDEX * TASK_INDEX)) > /results/square; echo out-$TASK_INDEX"


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries wait 0.5 s, 1 s, ... instead of 10 s, 20 s, ..."""
    monkeypatch.setattr(runner, "engine_options", {"backoff_base": 0.5, "backoff_cap": 2.0})


def launch(nova_host: NovaHost, **params: Any) -> dict[str, Any]:
    return actions.run_action(
        "launch-job", LaunchJobParams(**params), nova_host.config, nova_host.state_dir
    )


def our_servers(stack: OpenStackStack) -> list[str]:
    return sorted(s.name for s in stack.nova_admin().servers.list(search_opts={"all_tenants": 1}))


def test_sixteen_squares(stack: OpenStackStack, nova_host: NovaHost) -> None:
    started = time.monotonic()
    result = launch(
        nova_host, command=SQUARE, tasks=16, parallelism=16, wait=True, wait_timeout="10m"
    )
    elapsed = time.monotonic() - started
    print(f"\n16-task job on Nova: {elapsed:.1f}s")

    assert result["state"] == "succeeded", result
    job_dir = Path(result["results-dir"])
    for index in range(16):
        task = job_dir / str(index)
        assert (task / "files" / "square").read_text() == f"{index * index}\n"
        assert (task / "stdout").read_text() == f"out-{index}\n"
        assert (task / "exit_code").read_text() == "0\n"
    joblog = (job_dir / "joblog.tsv").read_text().splitlines()
    assert len(joblog) == 17
    status = actions.run_action(
        "job-status", JobParams(job=result["job"]), nova_host.config, nova_host.state_dir
    )
    assert status["completed-indexes"] == "0-15"
    assert our_servers(stack) == []


def test_inputs_reach_their_tasks(nova_host: NovaHost) -> None:
    inputs = "alpha one\n'quoted' $HOME\nthird;line"
    result = launch(
        nova_host, command='printf %s "$TASK_INPUT" > /results/input', inputs=inputs, wait=True
    )

    assert result["state"] == "succeeded", result
    job_dir = Path(result["results-dir"])
    for index, line in enumerate(inputs.splitlines()):
        assert (job_dir / str(index) / "files" / "input").read_text() == line


def test_failing_task_keeps_exit_code_and_stderr(
    stack: OpenStackStack, nova_host: NovaHost
) -> None:
    result = launch(nova_host, command="echo broken >&2; exit 3", tasks=1, retries=1, wait=True)

    assert result["state"] == "failed"
    task = Path(result["results-dir"]) / "0"
    assert (task / "exit_code").read_text() == "3\n"
    assert (task / "stderr").read_text() == "broken\n"
    assert result["failures"]["0"]["attempts"] == 2
    assert our_servers(stack) == []


def test_timeout_stops_and_deletes_the_server(stack: OpenStackStack, nova_host: NovaHost) -> None:
    result = launch(nova_host, command="sleep 600", timeout="15s", wait=True)

    assert result["state"] == "failed"
    assert result["failures"]["0"]["reason"] == "timeout"
    assert our_servers(stack) == []


def test_output_over_the_console_cap_is_cut_and_said(nova_host: NovaHost) -> None:
    command = (
        "head -c 300000 /dev/urandom | base64 > /results/big; head -c 200000 /dev/urandom | base64"
    )
    result = launch(nova_host, command=command, wait=True)

    assert result["state"] == "succeeded", result
    task = Path(result["results-dir"]) / "0"
    outcome = (task / "outcome.json").read_text()
    assert '"truncated": true' in outcome
    assert "nova-console-cap" in outcome
    assert not (task / "files" / "big").exists()
    assert 0 < len((task / "stdout").read_bytes()) < 100_000


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"flavor": "nosuch"}, "flavor: flavor 'nosuch' does not exist in Nova"),
        ({"image": "nosuch"}, "image: 'nosuch' does not exist in Glance"),
        ({"network": "nosuch"}, "network: network 'nosuch' does not exist in Neutron"),
        ({"availability_zone": "nosuch"}, "availability-zone: availability zone 'nosuch'"),
    ],
)
def test_unknown_names_are_refused_before_anything_runs(
    nova_host: NovaHost, params: dict[str, str], message: str
) -> None:
    with pytest.raises(actions.ActionError, match=message.replace("(", r"\(")):
        launch(nova_host, command="true", **params)


def test_error_server_reports_novas_fault(stack: OpenStackStack, nova_host: NovaHost) -> None:
    stack.nova_admin().flavors.create(
        # Within the project's quota, far beyond the host: the scheduler finds no host.
        "cc.huge",
        ram=300_000,
        vcpus=1,
        disk=1,
        flavorid="cc-huge",
        is_public=True,
    )

    result = launch(nova_host, command="true", flavor="cc.huge", wait=True)

    assert result["state"] == "failed"
    failure = result["failures"]["0"]
    assert failure["reason"] == "launch-error"
    assert "is in ERROR" in failure["detail"] and "No valid host" in failure["detail"]
    assert our_servers(stack) == []


def test_quota_exceeded_is_said(stack: OpenStackStack, nova_host: NovaHost) -> None:
    nova = stack.nova_admin()
    project = nova_host.credentials.project_id
    nova.quotas.update(project, instances=0)
    try:
        result = launch(nova_host, command="true", wait=True)
    finally:
        nova.quotas.update(project, instances=200)

    assert result["state"] == "failed"
    assert "Nova quota exceeded" in result["failures"]["0"]["detail"]


def test_a_job_runs_in_an_oci_image_on_nova(
    stack: OpenStackStack, nova_host: NovaHost, tmp_path: Path
) -> None:
    layout = write_layout(tmp_path / "layout", [base_layer(tmp_path), top_layer()], IMAGE_CONFIG)
    params = BuildWorkerImageParams(
        source=f"oci:{layout}:v1",
        target="nova",
        alias="cc-oci-worker",
        metadata_url=stack.metadata_url,
    )
    built = actions.run_action("build-worker-image", params, nova_host.config, nova_host.state_dir)
    assert built["image-config"]["working-dir"] == "/app", built
    assert built["source"] == f"oci:{layout}:v1"

    result = launch(
        nova_host,
        command=COMMAND,
        tasks=2,
        image="cc-oci-worker",
        env=["OVERRIDE=job"],
        wait=True,
        wait_timeout="10m",
    )

    assert result["state"] == "succeeded", result
    for index in range(2):
        stdout = Path(result["results-dir"]) / str(index) / "stdout"
        assert stdout.read_text() == EXPECTED
    assert our_servers(stack) == []
