"""Fixtures for tests against a REAL OpenStack on 127.0.0.1 (see ``stack``).

The stack starts once per session (about two minutes) in ``/var/tmp/cc-openstack-<random>``
and is stopped at the end, also when tests fail: no process, mount, loop device or libvirt
domain is left. Its services come from the venv ``$CC_OPENSTACK_VENV`` (tox builds it with
scripts/openstack-services-venv).
"""

import contextlib
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from container_compute import host, identity
from container_compute.actions import run_action
from container_compute.actions.images import BuildWorkerImageParams
from container_compute.config import HostConfig

from .stack import Layout, OpenStackStack

FLAVOR = "cc.tiny"
IMAGE = "cc-worker"


@pytest.fixture(scope="session")
def stack() -> Iterator[OpenStackStack]:
    """A started stack for the whole session; stopped and removed at the end."""
    venv = Path(os.environ.get("CC_OPENSTACK_VENV", ""))
    if not (venv / "bin" / "nova-compute").exists():
        pytest.fail(
            "the OpenStack services venv is missing: run `tox -e openstack` (it builds it), or "
            "set CC_OPENSTACK_VENV to a venv made by scripts/openstack-services-venv"
        )
    started = OpenStackStack(Layout.fresh(venv))
    started.start()
    print(f"\nOpenStack stack up in {started.timings['total']}s: {started.timings}")
    try:
        yield started
    finally:
        report = started.stop()
        print(f"\nOpenStack stack stopped; cleaned up: {report}")
        if not os.environ.get("CC_OPENSTACK_KEEP"):
            started.remove()


@pytest.fixture(autouse=True)
def no_server_outlives_its_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test that used the stack, delete every server left: none leaks into the next.

    Each test then sees only its own servers, also after an earlier test failed.
    """
    yield
    if "stack" not in request.fixturenames:
        return
    nova = request.getfixturevalue("stack").nova_admin()
    deadline = time.monotonic() + 180
    while left := nova.servers.list(search_opts={"all_tenants": 1}):
        if time.monotonic() > deadline:
            pytest.fail(f"servers left by the test could not be deleted: {left}")
        for server in left:  # asked again: Nova may put a server back in ERROR mid-delete
            if getattr(server, "OS-EXT-STS:task_state", None) != "deleting":
                with contextlib.suppress(Exception):  # gone meanwhile
                    server.delete()
        time.sleep(2)


def keystone_charm_credentials(
    stack: OpenStackStack, username: str, password: str
) -> dict[str, str]:
    """Create a service user exactly as the keystone charm does for identity-credentials.

    Domain ``service_domain``, project ``services`` in it, role ``Admin``, the user in that
    domain with that default project, the role granted on the project and on the domain; then
    answer with the keys the charm's leader puts in its unit data. (With MySQL, ``Admin`` is
    bootstrap's ``admin``; with this SQLite it is a role of its own, and keystone refuses
    ``admin`` as an implied role: ``Admin`` implies ``member`` here, which is what Nova's and
    Glance's default policies ask of the job's user.)
    """
    admin = stack.keystone_admin()
    domain = admin.domain("service_domain")
    project = admin.project("services", domain)
    role = admin.role("Admin")
    admin.implies(role, admin.role("member"))
    user = admin.user(username, password, domain, project)
    admin.grant(role, user, project_id=project)
    admin.grant(role, user, domain_id=domain)
    port = str(stack.layout.ports["keystone"])
    return {
        "auth_host": "127.0.0.1",
        "auth_port": port,
        "auth_protocol": "http",
        "credentials_host": "127.0.0.1",
        "credentials_port": port,
        "credentials_protocol": "http",
        "credentials_username": username,
        "credentials_password": password,
        "credentials_project": "services",
        "credentials_project_id": project,
        "credentials_user_domain_name": "service_domain",
        "credentials_user_domain_id": domain,
        "credentials_project_domain_name": "service_domain",
        "credentials_project_domain_id": domain,
        "domain": "service_domain",
        "api_version": "3",
        "region": "RegionOne",
    }


@dataclass
class NovaHost:
    """A host whose agent runs jobs on the stack's Nova: state dir, config, credentials."""

    state_dir: Path
    config: HostConfig
    credentials: identity.KeystoneCredentials
    password: str


@pytest.fixture(scope="session")
def nova_host(stack: OpenStackStack) -> Iterator[NovaHost]:
    """Credentials from the keystone charm's way, clouds.yaml, a flavor, a Glance image."""
    password = secrets.token_urlsafe(18)
    data = keystone_charm_credentials(stack, "container-compute", password)
    credentials = identity.from_relation_data(data)
    assert credentials is not None
    state_dir = Path(tempfile.mkdtemp(prefix="cc-openstack-state-"))
    credentials.save(identity.credentials_path(state_dir))
    identity.save_clouds_yaml(credentials, state_dir / identity.CLOUDS_FILE_NAME)
    nova = stack.nova_admin()
    nova.flavors.create(FLAVOR, ram=64, vcpus=1, disk=1, flavorid="cc-tiny", is_public=True)
    nova.quotas.update(
        credentials.project_id, instances=200, cores=400, ram=512000, server_groups=100
    )
    config = HostConfig(
        # A Nova-only host: its LXD project never exists (reaping must cope), and nothing of
        # this session touches the host's own container-compute project.
        lxd_project=f"cco{secrets.token_hex(4)}",
        default_backend="nova",
        nova_flavor=FLAVOR,
        nova_image=IMAGE,
        max_parallel_workers=16,
        sysctl_tuning=False,
    )
    host.save_config(config, state_dir)
    built = run_action(
        "build-worker-image",
        BuildWorkerImageParams(target="nova", alias=IMAGE, metadata_url=stack.metadata_url),
        config,
        state_dir,
    )
    assert built["changed"] is True
    yield NovaHost(state_dir, config, credentials, password)
    shutil.rmtree(state_dir, ignore_errors=True)
