"""Bring a whole stack up (in parallel where the services allow) and take it down again."""

import logging
import secrets
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from keystoneauth1 import session as ks_session
from keystoneauth1.identity import v3
from novaclient import client as nova_client

from . import infra, services
from .keystone_admin import KeystoneAdmin
from .layout import Layout
from .processes import StartupError, Supervisor, run

logger = logging.getLogger(__name__)
NOVA_MICROVERSION = "2.96"


def _parallel(*steps: Callable[[], None]) -> None:
    """Run setup steps in threads; re-raise the first failure."""
    with ThreadPoolExecutor(max_workers=len(steps)) as pool:
        for future in [pool.submit(step) for step in steps]:
            future.result()


class OpenStackStack:
    """Keystone, Glance, Placement, Nova (libvirt LXC) and their infrastructure on 127.0.0.1."""

    def __init__(self, layout: Layout) -> None:
        """Prepare (nothing runs until ``start``)."""
        self.layout = layout
        self.supervisor = Supervisor(layout.log)
        self.admin_password = secrets.token_urlsafe(16)
        self.service_password = secrets.token_urlsafe(16)
        self.timings: dict[str, float] = {}
        self.nova_conf = layout.etc / "nova" / "nova.conf"
        self.loops_before = frozenset(infra.loop_devices())

    @property
    def auth_url(self) -> str:
        """Keystone's v3 URL."""
        return self.layout.url("keystone", "/v3")

    @property
    def metadata_url(self) -> str:
        """Where guests fetch their user-data (the metadata API on 127.0.0.1)."""
        return self.layout.url("metadata")

    def _timed(self, name: str, step: Callable[[], None]) -> Callable[[], None]:
        def timed() -> None:
            start = time.monotonic()
            step()
            self.timings[name] = round(time.monotonic() - start, 1)

        return timed

    def start(self) -> None:
        """Start everything; return when a server can be booted. Stops what started on error."""
        layout, sup = self.layout, self.supervisor
        started = time.monotonic()
        try:
            _parallel(
                self._timed("postgres", lambda: infra.start_postgres(layout, sup)),
                self._timed("rabbitmq", lambda: infra.start_rabbit(layout, sup)),
                self._timed("libvirtd", lambda: infra.start_libvirtd(layout, sup)),
                self._timed(
                    "keystone", lambda: services.keystone(layout, sup, self.admin_password)
                ),
                self._timed("neutron-standin", lambda: services.neutron_standin(layout, sup)),
            )
            self._timed("catalog", self._register_services)()
            services.nova_config(layout, self.service_password)
            _parallel(
                self._timed(
                    "placement", lambda: services.placement(layout, sup, self.service_password)
                ),
                self._timed("nova-db", lambda: services.nova_databases(layout, self.nova_conf)),
            )
            # nova-compute registers its resource provider at start: Placement must answer.
            sup.wait_http("placement", layout.url("placement", "/"))
            services.nova(layout, sup, self.nova_conf)
            _parallel(
                self._timed("glance", lambda: services.glance(layout, sup, self.service_password)),
                self._timed("compute-ready", self._wait_compute),
            )
        except BaseException:
            self.stop()
            raise
        self.timings["total"] = round(time.monotonic() - started, 1)

    def _register_services(self) -> None:
        admin = KeystoneAdmin(self.auth_url, self.admin_password)
        service_project = admin.project("service")
        admin_role, service_role = admin.role("admin"), admin.role("service")
        for name in services.SERVICE_USERS:
            user = admin.user(name, self.service_password, project_id=service_project)
            admin.grant(admin_role, user, project_id=service_project)
            admin.grant(service_role, user, project_id=service_project)
        layout = self.layout
        admin.service("nova", "compute", layout.url("nova_api", "/v2.1"))
        admin.service("placement", "placement", layout.url("placement"))
        admin.service("glance", "image", layout.url("glance"))
        admin.service("neutron", "network", layout.url("neutron"))

    def admin_session(self) -> ks_session.Session:
        """A keystoneauth session of the bootstrap admin (project admin)."""
        auth = v3.Password(
            auth_url=self.auth_url,
            username="admin",
            password=self.admin_password,
            project_name="admin",
            user_domain_id="default",
            project_domain_id="default",
        )
        return ks_session.Session(auth=auth, timeout=60)

    def nova_admin(self) -> Any:
        """A novaclient of the bootstrap admin."""
        return nova_client.Client(NOVA_MICROVERSION, session=self.admin_session())

    def keystone_admin(self) -> KeystoneAdmin:
        """Keystone's admin API."""
        return KeystoneAdmin(self.auth_url, self.admin_password)

    def _wait_compute(self, timeout: float = 180.0) -> None:
        """Wait for nova-compute to be up, map it to cell1, wait for its resource provider."""
        self.supervisor.wait_http("nova_api", self.layout.url("nova_api", "/"))
        self.supervisor.wait_http("placement", self.layout.url("placement", "/"))
        nova = self.nova_admin()
        manage = [self.layout.bin("nova-manage"), "--config-file", str(self.nova_conf)]
        end = time.monotonic() + timeout
        mapped = False
        while True:
            for name in ("nova-compute", "nova-conductor", "nova-scheduler"):
                self.supervisor.check_alive(name)
            up = [
                s
                for s in nova.services.list(binary="nova-compute")
                if s.state == "up" and s.status == "enabled"
            ]
            if up and not mapped:
                # The compute node is listed (and scheduled to) once its host is in cell1.
                run([*manage, "cell_v2", "discover_hosts"])
                mapped = True
            if mapped and nova.hypervisors.list():
                return
            if time.monotonic() > end:
                raise StartupError("nova-compute did not come up")
            time.sleep(1)

    def stop(self) -> dict[str, list[str]]:
        """Stop everything; return what had to be cleaned up (domains, mounts, loops)."""
        layout, sup = self.layout, self.supervisor
        report: dict[str, list[str]] = {}
        for name in ("nova-compute", "nova-scheduler", "nova-conductor", "metadata", "nova_api"):
            sup.stop(name)
        if "libvirtd" in sup.processes:
            report["domains"] = infra.destroy_domains(layout)
        sup.stop("libvirtd")
        for name in ("glance", "placement", "neutron", "keystone"):
            sup.stop(name)
        infra.stop_rabbit(layout, sup)
        sup.stop("postgres", timeout=30)
        sup.stop_all()
        report["mounts-and-loops"] = infra.release_mounts_and_loops(layout, self.loops_before)
        return report

    def remove(self) -> None:
        """Delete the run directory (after ``stop``)."""
        shutil.rmtree(self.layout.root, ignore_errors=True)


def start_stack(venv: Path) -> OpenStackStack:
    """A started stack in a fresh run directory."""
    stack = OpenStackStack(Layout.fresh(venv))
    stack.start()
    return stack
