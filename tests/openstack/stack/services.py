"""The OpenStack services of a stack: configuration files, databases, processes.

Keystone, Glance, Placement, Nova API and metadata API are WSGI applications served by
gunicorn; a tiny module per application resets ``sys.argv`` before importing it (oslo.config
would otherwise parse gunicorn's command line). Conductor, scheduler and compute are Nova's
own commands.
"""

import shutil
from pathlib import Path

from .infra import database_url, write_ini
from .layout import Layout
from .processes import Supervisor, run

WSGI_APPS = {
    "keystone": "keystone.wsgi.api",
    "glance": "glance.wsgi.api",
    "placement": "placement.wsgi.api",
    "nova_api": "nova.wsgi.osapi_compute",
    "metadata": "nova.wsgi.metadata",
}
SERVICE_USERS = ("nova", "placement", "glance")


def _service_auth(layout: Layout, user: str, password: str) -> dict[str, str]:
    return {
        "auth_url": layout.url("keystone", "/v3"),
        "auth_type": "password",
        "project_domain_name": "Default",
        "user_domain_name": "Default",
        "project_name": "service",
        "region_name": "RegionOne",
        "username": user,
        "password": password,
    }


def _authtoken(layout: Layout, user: str, password: str) -> dict[str, str]:
    return {
        "www_authenticate_uri": layout.url("keystone", "/v3"),
        **_service_auth(layout, user, password),
    }


def serve_wsgi(layout: Layout, supervisor: Supervisor, name: str, env: dict[str, str]) -> None:
    """Serve WSGI application ``name`` on its port with gunicorn (1 worker, threads)."""
    module = f"cc_{name}"
    (layout.root / "wsgi" / f"{module}.py").write_text(
        "import sys\n"
        "sys.argv = sys.argv[:1]  # oslo.config must not see gunicorn's arguments\n"
        f"from {WSGI_APPS[name]} import application  # noqa: E402,F401\n"
    )
    supervisor.start(
        name,
        [
            layout.bin("gunicorn"),
            "--bind",
            f"127.0.0.1:{layout.ports[name]}",
            "--workers",
            "1",
            "--threads",
            "8",
            "--timeout",
            "300",
            # Keep idle connections well past any client's pause: with gunicorn's 2 s default a
            # client reusing a connection as gunicorn closes it gets "connection reset" (seen as
            # nova-compute failing a server's delete when its placement update was reset).
            "--keep-alive",
            "600",
            "--chdir",
            str(layout.root / "wsgi"),
            f"{module}:application",
        ],
        env,
    )


def keystone(layout: Layout, supervisor: Supervisor, admin_password: str) -> None:
    """Keystone on SQLite with fernet tokens, bootstrapped with an admin and its endpoint."""
    data = layout.data
    write_ini(
        layout.etc / "keystone.conf",
        {
            "database": {"connection": f"sqlite:///{data / 'keystone.db'}"},
            "token": {"provider": "fernet"},
            "fernet_tokens": {"key_repository": str(data / "fernet-keys")},
            "credential": {"key_repository": str(data / "credential-keys")},
            # bcrypt's fewest rounds: every test authenticates many times.
            "identity": {"password_hash_rounds": "4"},
        },
    )
    manage = [layout.bin("keystone-manage"), "--config-file", str(layout.etc / "keystone.conf")]
    run([*manage, "db_sync"])
    for command in ("fernet_setup", "credential_setup"):
        run([*manage, command, "--keystone-user", "root", "--keystone-group", "root"])
    url = layout.url("keystone", "/v3")
    # The password goes through the environment: on the command line, one that starts with
    # "-" (token_urlsafe gives that one time in 64) is taken for an option, and any would show
    # in the process list and in a failure's message.
    run(
        [
            *manage,
            "bootstrap",
            "--bootstrap-admin-url",
            url,
            "--bootstrap-public-url",
            url,
            "--bootstrap-internal-url",
            url,
            "--bootstrap-region-id",
            "RegionOne",
        ],
        env={"OS_BOOTSTRAP_PASSWORD": admin_password},
    )
    env = {"OS_KEYSTONE_CONFIG_FILES": str(layout.etc / "keystone.conf")}
    serve_wsgi(layout, supervisor, "keystone", env)
    supervisor.wait_http("keystone", url)


def neutron_standin(layout: Layout, supervisor: Supervisor) -> None:
    """Start the Neutron stand-in (see neutron_standin.py)."""
    script = Path(__file__).with_name("neutron_standin.py")
    supervisor.start("neutron", [layout.bin("python"), str(script), str(layout.ports["neutron"])])
    supervisor.wait_http("neutron", layout.url("neutron", "/"))


def glance(layout: Layout, supervisor: Supervisor, password: str) -> None:
    """Glance (real, from PyPI) on SQLite with a file store."""
    etc = layout.etc / "glance"
    etc.mkdir()
    shutil.copy(layout.venv / "etc" / "glance" / "glance-api-paste.ini", etc)
    store = layout.data / "glance"
    write_ini(
        etc / "glance-api.conf",
        {
            "DEFAULT": {"enabled_backends": "fs:file", "show_image_direct_url": "False"},
            "database": {"connection": f"sqlite:///{layout.data / 'glance.db'}"},
            "glance_store": {"default_backend": "fs"},
            "fs": {"filesystem_store_datadir": str(store / "images")},
            "os_glance_staging_store": {"filesystem_store_datadir": str(store / "staging")},
            "os_glance_tasks_store": {"filesystem_store_datadir": str(store / "tasks")},
            "keystone_authtoken": _authtoken(layout, "glance", password),
            "paste_deploy": {"flavor": "keystone"},
            "oslo_concurrency": {"lock_path": str(store / "locks")},
        },
    )
    env = {"OS_GLANCE_CONFIG_DIR": str(etc)}
    run(
        [layout.bin("glance-manage"), "--config-file", str(etc / "glance-api.conf"), "db_sync"],
        env,
    )
    serve_wsgi(layout, supervisor, "glance", env)
    supervisor.wait_http("glance", layout.url("glance", "/"))


def placement(layout: Layout, supervisor: Supervisor, password: str) -> None:
    """Placement on PostgreSQL."""
    etc = layout.etc / "placement"
    etc.mkdir()
    write_ini(
        etc / "placement.conf",
        {
            "placement_database": {"connection": database_url(layout, "placement")},
            "api": {"auth_strategy": "keystone"},
            "keystone_authtoken": _authtoken(layout, "placement", password),
        },
    )
    env = {"OS_PLACEMENT_CONFIG_DIR": str(etc)}
    run(
        [
            layout.bin("placement-manage"),
            "--config-file",
            str(etc / "placement.conf"),
            "db",
            "sync",
        ],
        env,
    )
    serve_wsgi(layout, supervisor, "placement", env)


def nova_config(layout: Layout, password: str) -> Path:
    """Write nova.conf (libvirt LXC driver, raw images, our ports) and return its path."""
    etc = layout.etc / "nova"
    etc.mkdir(exist_ok=True)
    shutil.copy(layout.venv / "etc" / "nova" / "api-paste.ini", etc)
    state = layout.data / "nova"
    privsep = f"{layout.bin('privsep-helper')} --config-file {etc / 'nova.conf'}"
    sections: dict[str, dict[str, str]] = {
        "DEFAULT": {
            "host": layout.root.name,
            "my_ip": "127.0.0.1",
            "state_path": str(state),
            "instances_path": str(layout.instances),
            "transport_url": f"rabbit://guest:guest@127.0.0.1:{layout.ports['rabbit']}/",
            "compute_driver": "libvirt.LibvirtDriver",
            "use_cow_images": "False",
            "force_raw_images": "True",
            "force_config_drive": "False",
            "reserved_host_memory_mb": "512",
            "ram_allocation_ratio": "4.0",
            "cpu_allocation_ratio": "32.0",
            "disk_allocation_ratio": "10.0",
            "heal_instance_info_cache_interval": "-1",
            "rootwrap_config": str(layout.venv / "etc" / "nova" / "rootwrap.conf"),
        },
        "api": {"auth_strategy": "keystone", "local_metadata_per_cell": "False"},
        "wsgi": {"api_paste_config": str(etc / "api-paste.ini")},
        "api_database": {"connection": database_url(layout, "nova_api")},
        "database": {"connection": database_url(layout, "nova_cell1")},
        "keystone_authtoken": _authtoken(layout, "nova", password),
        "service_user": {"send_service_user_token": "False"},
        "placement": {**_service_auth(layout, "placement", password), "connect_retries": "3"},
        "glance": {"endpoint_override": layout.url("glance")},
        "neutron": {
            **_service_auth(layout, "nova", password),
            "endpoint_override": layout.url("neutron"),
            "service_metadata_proxy": "False",
        },
        "libvirt": {
            "virt_type": "lxc",
            "connection_uri": layout.libvirt_uri,
            "images_type": "raw",
            "inject_partition": "-2",
        },
        "scheduler": {"discover_hosts_in_cells_interval": "2", "workers": "1"},
        "filter_scheduler": {
            "enabled_filters": "ComputeFilter,ServerGroupAntiAffinityFilter,"
            "ServerGroupAffinityFilter",
        },
        "conductor": {"workers": "1"},
        "oslo_concurrency": {"lock_path": str(state / "locks")},
        "oslo_messaging_notifications": {"driver": "noop"},
        "oslo_middleware": {"enable_proxy_headers_parsing": "True"},
        "vnc": {"enabled": "False"},
        "spice": {"enabled": "False"},
        "serial_console": {"enabled": "False"},
    }
    for context in (
        "nova_sys_admin",
        "vif_plug_linux_bridge_privileged",
        "vif_plug_ovs_privileged",
        "privsep_osbrick",
    ):
        sections[context] = {"helper_command": privsep}
    write_ini(etc / "nova.conf", sections)
    (state / "locks").mkdir(parents=True, exist_ok=True)
    return etc / "nova.conf"


def nova_databases(layout: Layout, conf: Path) -> None:
    """Create Nova's API and cell databases and map cell0 and cell1."""
    manage = [layout.bin("nova-manage"), "--config-file", str(conf)]
    run([*manage, "api_db", "sync"])
    run(
        [
            *manage,
            "cell_v2",
            "map_cell0",
            "--database_connection",
            database_url(layout, "nova_cell0"),
        ]
    )
    run([*manage, "cell_v2", "create_cell", "--name", "cell1"])
    run([*manage, "db", "sync"])


def nova(layout: Layout, supervisor: Supervisor, conf: Path) -> None:
    """Start Nova's API, metadata API, conductor, scheduler and compute."""
    env = {"OS_NOVA_CONFIG_DIR": str(conf.parent)}
    serve_wsgi(layout, supervisor, "nova_api", env)
    serve_wsgi(layout, supervisor, "metadata", env)
    for name in ("nova-conductor", "nova-scheduler", "nova-compute"):
        supervisor.start(name, [layout.bin(name), "--config-file", str(conf)], env)
