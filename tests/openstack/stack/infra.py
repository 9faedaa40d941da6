"""The stack's infrastructure from Debian packages: PostgreSQL, RabbitMQ, libvirtd (LXC).

Each runs privately: PostgreSQL on a unix socket in the run directory only, RabbitMQ and its
epmd on our own ports of 127.0.0.1, libvirtd in a mount namespace of its own (its sockets in
the run directory, a private /run/libvirt, /var/lib/libvirt and /var/log/libvirt), so that
another libvirtd on this machine is neither seen nor disturbed.
"""

import configparser
import glob
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

from .layout import Layout
from .processes import StartupError, Supervisor, run

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
RABBITMQCTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
EPMD = "/usr/bin/epmd"
LIBVIRTD = "/usr/sbin/libvirtd"
VIRSH = "/usr/bin/virsh"
UNSHARE = "/usr/bin/unshare"
SETPRIV = "/usr/bin/setpriv"
MOUNT = "/usr/bin/mount"
UMOUNT = "/usr/bin/umount"
MOUNTPOINT = "/usr/bin/mountpoint"
LOSETUP = "/usr/sbin/losetup"
DATABASES = ("keystone", "glance", "placement", "nova_api", "nova_cell0", "nova_cell1")


def write_ini(path: Path, sections: dict[str, dict[str, str]]) -> None:
    """Write an oslo.config style ini file."""
    parser = configparser.RawConfigParser()
    parser.optionxform = str  # type: ignore[assignment] # keep keys as written
    for section, values in sections.items():
        if section != "DEFAULT":
            parser.add_section(section)
        for key, value in values.items():
            parser.set(section, key, value)
    with path.open("w") as stream:
        parser.write(stream)


def postgres_bin(name: str) -> str:
    """An executable of Debian's PostgreSQL (whichever major version is installed)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise StartupError("PostgreSQL is not installed: run scripts/setup-openstack")
    return found[-1]


def database_url(layout: Layout, name: str) -> str:
    """SQLAlchemy URL of database ``name`` over our PostgreSQL's unix socket."""
    return f"postgresql+psycopg2://root@/{name}?host={layout.run}&port={layout.ports['postgres']}"


def start_postgres(layout: Layout, supervisor: Supervisor) -> None:
    """Initdb a private cluster, serve it on a unix socket only, create the databases."""
    data = layout.data / "pg"
    data.mkdir()
    shutil.chown(data, "postgres", "postgres")
    shutil.chown(layout.run, "postgres", "postgres")
    as_postgres = [SETPRIV, "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]
    run([*as_postgres, postgres_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"])
    port = str(layout.ports["postgres"])
    supervisor.start(
        "postgres",
        [
            *as_postgres,
            postgres_bin("postgres"),
            "-D",
            str(data),
            "-p",
            port,
            "-k",
            str(layout.run),
            "-c",
            "listen_addresses=",
            "-c",
            "max_connections=300",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
        ],
    )
    psql = [postgres_bin("psql"), "-h", str(layout.run), "-p", port, "-U", "postgres", "-qtA"]
    end = time.monotonic() + 60
    while True:
        supervisor.check_alive("postgres")
        if subprocess.run([*psql, "-c", "select 1"], capture_output=True).returncode == 0:
            break
        if time.monotonic() > end:
            raise StartupError("postgres did not accept connections")
        time.sleep(0.2)
    run([*psql, "-c", "create role root superuser login"])
    for name in DATABASES:
        run([*psql, "-c", f"create database {name} owner root"])


def rabbit_env(layout: Layout) -> dict[str, str]:
    """The environment of our RabbitMQ node and of rabbitmqctl talking to it."""
    ports = layout.ports
    return {
        "RABBITMQ_NODENAME": f"{layout.root.name}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(ports["rabbit"]),
        "RABBITMQ_DIST_PORT": str(ports["rabbit_dist"]),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "ERL_EPMD_PORT": str(ports["epmd"]),
        "RABBITMQ_MNESIA_BASE": str(layout.data / "rabbit"),
        "RABBITMQ_LOG_BASE": str(layout.log / "rabbit"),
        "RABBITMQ_PID_FILE": str(layout.run / "rabbit.pid"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(layout.etc / "rabbit_plugins"),
        "RABBITMQ_CONFIG_FILE": str(layout.etc / "rabbitmq"),
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        "HOME": str(layout.data),
    }


def start_rabbit(layout: Layout, supervisor: Supervisor) -> None:
    """Start RabbitMQ on our ports; return once it accepts clients (guest/guest)."""
    (layout.etc / "rabbit_plugins").write_text("[].\n")
    (layout.etc / "rabbitmq.conf").write_text("")
    env = rabbit_env(layout)
    supervisor.start("rabbitmq", [RABBITMQ_SERVER], env)
    node = env["RABBITMQ_NODENAME"]
    end = time.monotonic() + 120
    while not (layout.run / "rabbit.pid").exists():
        supervisor.check_alive("rabbitmq")
        if time.monotonic() > end:
            raise StartupError("rabbitmq wrote no pid file")
        time.sleep(0.2)
    run(
        [
            RABBITMQCTL,
            "-n",
            node,
            "-q",
            "wait",
            "--timeout",
            "120",
            str(layout.run / "rabbit.pid"),
        ],
        env,
    )


def stop_rabbit(layout: Layout, supervisor: Supervisor) -> None:
    """Stop RabbitMQ, then the epmd it started on our port."""
    supervisor.stop("rabbitmq", timeout=30)
    for _ in range(20):  # epmd refuses while it still counts our (stopping) node
        killed = subprocess.run(
            [EPMD, "-port", str(layout.ports["epmd"]), "-kill"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if "Killed" in killed.stdout or killed.returncode != 0:
            return
        time.sleep(0.5)


def start_libvirtd(layout: Layout, supervisor: Supervisor) -> None:
    """Start libvirtd (LXC driver) in a mount namespace of its own.

    On this hybrid-cgroup host libvirt_lxc cannot start containers while the cgroup2 mount
    /sys/fs/cgroup/unified is visible: it is unmounted inside the namespace only. Nova's loop
    mounts under the instances directory must reach the namespace, and the host's / is
    private: the instances directory becomes a shared mount first.
    """
    layout.instances.mkdir(parents=True, exist_ok=True)
    run([MOUNT, "--bind", str(layout.instances), str(layout.instances)])
    run([MOUNT, "--make-shared", str(layout.instances)])
    private = layout.data / "libvirt"
    for sub in ("run", "lib", "log", "cache"):
        (private / sub).mkdir(parents=True, exist_ok=True)
    (layout.run / "libvirt").mkdir(exist_ok=True)
    (layout.log / "libvirt").mkdir(exist_ok=True)
    conf = layout.etc / "libvirtd.conf"
    conf.write_text(
        f'unix_sock_dir = "{layout.run / "libvirt"}"\n'
        'unix_sock_group = "root"\n'
        'auth_unix_rw = "none"\n'
        'auth_unix_ro = "none"\n'
        f'log_outputs = "3:file:{layout.log / "libvirt" / "libvirtd.log"}"\n'
    )
    binds = [
        (private / "run", "/run/libvirt"),
        (private / "lib", "/var/lib/libvirt"),
        (private / "log", "/var/log/libvirt"),
        (private / "cache", "/var/cache/libvirt"),
    ]
    script = ["umount /sys/fs/cgroup/unified 2>/dev/null || true"]
    for source, target in binds:
        script.append(f"mkdir -p {target} && mount --bind {source} {target}")
    pid_file = layout.run / "libvirtd.pid"
    script.append(f"exec {LIBVIRTD} -p {shlex.quote(str(pid_file))} -f {shlex.quote(str(conf))}")
    supervisor.start(
        "libvirtd", [UNSHARE, "-m", "--propagation", "slave", "/bin/sh", "-ec", "\n".join(script)]
    )
    end = time.monotonic() + 60
    while True:
        supervisor.check_alive("libvirtd")
        probe = subprocess.run(
            [VIRSH, "-c", layout.libvirt_uri, "version"], capture_output=True, check=False
        )
        if probe.returncode == 0:
            return
        if time.monotonic() > end:
            raise StartupError(f"libvirtd did not answer: {probe.stderr.decode()[-500:]}")
        time.sleep(0.3)


def destroy_domains(layout: Layout) -> list[str]:
    """Destroy and undefine every domain of our libvirtd; return their names."""
    virsh = [VIRSH, "-c", layout.libvirt_uri]
    listed = subprocess.run(
        [*virsh, "list", "--all", "--name"], capture_output=True, text=True, check=False
    )
    names = [line.strip() for line in listed.stdout.splitlines() if line.strip()]
    for name in names:
        subprocess.run([*virsh, "destroy", name], capture_output=True, check=False, timeout=60)
        subprocess.run([*virsh, "undefine", name], capture_output=True, check=False, timeout=60)
    return names


# Nova's instance disks as losetup names them once their mount is gone: relative to the
# instances bind mount, often deleted already (nova's LoopMount can lose track of a device when
# libvirt-lxc holds the mount in its own namespace).
NOVA_DISK_RE = re.compile(r"^/[0-9a-f-]{36}(_del|_resize)?/disk( \(deleted\))?$")


def loop_devices() -> dict[str, str]:
    """Every attached loop device and its backing file."""
    listed = subprocess.run(
        [LOSETUP, "-nO", "NAME,BACK-FILE"], capture_output=True, text=True, check=False
    )
    devices = {}
    for line in listed.stdout.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2:
            devices[parts[0]] = parts[1].strip()
    return devices


def release_mounts_and_loops(
    layout: Layout, loops_before: frozenset[str] = frozenset()
) -> list[str]:
    """Unmount everything under the run directory, detach loop devices backed by it.

    A loop device that existed before the stack started (``loops_before``) is never touched.
    """
    released = []
    mounts = []
    with open("/proc/self/mountinfo") as stream:
        for line in stream:
            target = line.split()[4]
            if target == str(layout.root) or target.startswith(str(layout.root) + "/"):
                mounts.append(target)
    for target in sorted(set(mounts), key=len, reverse=True):
        subprocess.run([UMOUNT, "-l", target], capture_output=True, check=False)
        released.append(target)
    for device, backing in loop_devices().items():
        ours = backing.startswith(str(layout.root) + "/") or NOVA_DISK_RE.match(backing)
        if ours and device not in loops_before:
            subprocess.run([LOSETUP, "-d", device], capture_output=True, check=False)
            released.append(device)
    return released
