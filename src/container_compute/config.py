"""The host configuration: one typed class shared by the charm (config.yaml) and the CLI.

Every field is a Juju option with dashes turned into underscores. Construction validates
every value and raises ``ValueError`` with a message that names the option (dashed, as the
operator typed it) and says what is allowed; nothing is changed on the host before that.
"""

import dataclasses
import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .constants import DEFAULT_METRICS_LISTEN, READY_MAX_IMAGES
from .units import parse_duration, parse_size

LXD_SOURCES = ("auto", "snap", "deb")
STORAGE_DRIVERS = ("dir", "btrfs", "lvm", "zfs")
BACKENDS = ("lxd", "nova")

_LXD_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_CHANNEL_RE = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+){0,2}$")
_LISTEN_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)?:(\d{1,5})$")
_MODULE_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_CPU_COUNT_RE = re.compile(r"^[1-9]\d{0,3}$")
_CPU_SET_RE = re.compile(r"^\d{1,4}(-\d{1,4})?(,\d{1,4}(-\d{1,4})?)*$")
_PERCENT_RE = re.compile(r"^([1-9]\d?|100)%$")
_IMAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$")
_ZFS_DATASET_RE = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
_ENDPOINT_RE = re.compile(r"^https://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(:(\d{1,5}))?/?$")
_SECRET_URI_RE = re.compile(r"^secret:(//[A-Za-z0-9-]+/)?[a-z0-9]{20}$")
_USER_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_PRINTABLE_RE = re.compile(r"^[^\x00-\x1f\x7f]{0,255}$")
_PRINTABLE_PEM_RE = re.compile(r"^[^\x00-\x08\x0b-\x1f\x7f]{0,16384}$")
PEM_MARK = "-----BEGIN "

_TYPE_NAMES = {"str": str, "bool": bool, "int": int}
_TYPE_WORDS = {str: "a string", int: "an integer", bool: "a boolean (true or false)"}

MIN_LOOP_SIZE = 1 << 30
MIN_WORKER_MEMORY = 32 << 20
MIN_WORKER_DISK = 32 << 20
MIN_RESULTS_CAP = 1 << 10
MAX_PARALLEL_WORKERS = 1024
MAX_READY_WORKERS = 64
MAX_NOVA_CONSOLE_CAP = 96 << 10  # Nova's console-log API serves only the last 100 KiB


def _opt(default: Any, description: str, juju_type: str = "") -> Any:
    """Declare a config option: its default and the description shown in config.yaml.

    ``juju_type`` overrides the Juju type derived from the Python type (``secret``: the
    option holds a Juju secret URI on a unit).
    """
    metadata = {"description": description}
    if juju_type:
        metadata["juju_type"] = juju_type
    return field(default=default, metadata=metadata)


METRICS_OPTION = "metrics-listen"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$")
_METRICS_LISTEN_RE = re.compile(
    r"^(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]+)):(?P<port>[0-9]{1,5})$"
)


@dataclass(frozen=True)
class MetricsListen:
    """Where the endpoint listens."""

    host: str
    port: int

    def __str__(self) -> str:
        """``HOST:PORT``, brackets around an IPv6 address."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_metrics_listen(text: str) -> MetricsListen | None:
    """Parse ``metrics-listen``: ``HOST:PORT`` or ``[IPV6]:PORT``; None when empty (off).

    Raises:
        ValueError: what is wrong with it.
    """
    text = text.strip()
    if not text:
        return None
    match = _METRICS_LISTEN_RE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:9790 or [::1]:9790)")
    port = int(match["port"])
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} of {text!r} is not between 1 and 65535")
    if match["v6"] is not None:
        try:
            ipaddress.IPv6Address(match["v6"])
        except ValueError:
            raise ValueError(f"{match['v6']!r} in {text!r} is not an IPv6 address") from None
        return MetricsListen(match["v6"], port)
    host = match["host"]
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        if not _HOSTNAME_RE.match(host) or host.replace(".", "").isdigit():
            raise ValueError(
                f"{host!r} in {text!r} is neither an address nor a host name"
            ) from None
    return MetricsListen(host, port)


def _fail(option: str, message: str) -> None:
    """Raise the ValueError every invalid option gives: ``option: message``."""
    raise ValueError(f"{option}: {message}")


def _require_lxd_name(option: str, value: str) -> None:
    if not _LXD_NAME_RE.match(value):
        _fail(
            option,
            f"{value!r} is not a valid LXD name (1-63 letters, digits, '_', '.', '-', "
            "starting with a letter or digit)",
        )


def check_cpu_limit(option: str, value: str) -> None:
    """Check an LXD ``limits.cpu`` value: a CPU count (``2``) or a CPU set (``0-3,6``)."""
    if not (_CPU_COUNT_RE.match(value) or (_CPU_SET_RE.match(value) and not value.isdigit())):
        _fail(option, f"{value!r} is not a CPU count (e.g. 2) or a CPU set (e.g. 0-3,6)")


def check_disk_limit(option: str, value: str) -> int:
    """Check a worker root disk size (LXD's root disk ``size``); return its bytes."""
    try:
        size = parse_size(value)
    except ValueError as err:
        _fail(option, str(err))
        raise  # unreachable: _fail raises
    if size < MIN_WORKER_DISK:
        _fail(option, f"{value!r} is below the minimum of 32MiB")
    return size


def check_memory_limit(option: str, value: str) -> int | None:
    """Check an LXD ``limits.memory`` value; return its bytes, or None for a percentage."""
    if _PERCENT_RE.match(value):
        return None
    try:
        size = parse_size(value)
    except ValueError as err:
        _fail(option, f"{err}, or a percentage of host memory such as 50%")
        raise  # unreachable: _fail raises
    if size < MIN_WORKER_MEMORY:
        _fail(option, f"{value!r} is below the minimum of 32MiB")
    return size


@dataclass(frozen=True)
class HostConfig:
    """Everything the operator sets for a host: LXD, storage, worker policy, jobs, identity."""

    lxd_source: str = _opt(
        "auto",
        "Where LXD comes from: 'snap' (the LXD snap at lxd-snap-channel), 'deb' (the "
        "distribution's lxd package) or 'auto' (the snap where snapd exists, else the package). "
        "An LXD already installed either way is kept.",
    )
    lxd_snap_channel: str = _opt(
        "5.21/stable", "Snap channel of LXD when it is installed as a snap, e.g. 5.21/stable."
    )
    lxd_project: str = _opt(
        "container-compute",
        "LXD project the workers and the worker profile live in, apart from nova-lxd's and the "
        "host's own instances. Cap it with LXD project limits if you wish.",
    )
    lxd_listen_https: str = _opt(
        "",
        "Address LXD listens on for HTTPS, e.g. '[::]:8443' or ':8443'. Empty: no network "
        "listener. Needed for hosts of this application to trust each other (cluster relation).",
    )
    lxd_endpoint: str = _opt(
        "",
        "HTTPS URL of the LXD that runs the workers, e.g. https://10.0.0.5:8443: a remote LXD "
        "or any member of an LXD cluster (LXD's scheduler then places workers over every "
        "member). Empty: this host's LXD over its unix socket. Needs lxd-client-cert, "
        "lxd-client-key and lxd-server-cert.",
    )
    lxd_client_cert: str = _opt(
        "",
        "Client certificate that lxd-endpoint trusts (lxc config trust add): PEM text or the "
        "path of a PEM file.",
    )
    lxd_client_key: str = _opt(
        "",
        "Key of lxd-client-cert. On a unit: a Juju secret (juju add-secret NAME key=@client.key; "
        "juju grant-secret NAME APP) whose 'key' field holds the PEM key. Without Juju: the "
        "path of the PEM key file. Never shown or logged.",
        juju_type="secret",
    )
    lxd_server_cert: str = _opt(
        "",
        "Certificate lxd-endpoint must present, pinned by its SHA-256 fingerprint: PEM text or "
        "the path of a PEM file. For an LXD cluster: the cluster certificate (cluster.crt).",
    )
    lxd_cluster: bool = _opt(
        False,
        "Form an LXD cluster of this application's units: the leader bootstraps it on its "
        "host, each peer joins with a token handed over in a Juju secret; jobs then spread "
        "over every member. Needs lxd-listen-https. Cannot be turned off while the cluster "
        "holds instances.",
    )
    storage_driver: str = _opt(
        "btrfs",
        "Storage driver of the worker pool: btrfs, zfs or lvm (copy-on-write: a worker is "
        "created in well under a second) or dir (copies the whole image for every worker; "
        "works everywhere). A pool that holds instances is never re-created with another driver.",
    )
    storage_source: str = _opt(
        "",
        "Block device (e.g. /dev/sdb) for the pool, an existing directory for dir, or an "
        "existing dataset for zfs. Empty: a loop file of storage-size (dir: LXD's own directory).",
    )
    storage_size: str = _opt(
        "20GiB", "Size of the loop file when storage-source is empty (not used by dir)."
    )
    storage_pool: str = _opt("container-compute", "Name of the LXD storage pool for workers.")
    worker_privileged: bool = _opt(
        False,
        "Run workers privileged (root in a worker is root on the host). Only for trusted "
        "workloads that need it.",
    )
    worker_nesting: bool = _opt(
        False, "Allow nested containers inside workers (security.nesting)."
    )
    worker_kernel_modules: str = _opt(
        "",
        "Comma-separated kernel modules workers need (e.g. 'openvswitch,nbd'). Each is checked "
        "on the host: built-in or already loaded is fine, a loadable one is loaded, a missing "
        "one blocks the unit.",
    )
    worker_idmap_isolated: bool = _opt(
        True,
        "Give every job's unprivileged workers a uid/gid range of their own "
        "(security.idmap.isolated with one security.idmap.base per job), so that workers of "
        "different jobs cannot touch each other's files; workers of one job share it. Off: "
        "every worker shares LXD's default map. Ignored for privileged workers.",
    )
    worker_cpu: str = _opt(
        "1",
        "CPU limit of a worker (limits.cpu): a count like 2, or a CPU set like 0-3. Empty: none.",
    )
    worker_memory: str = _opt(
        "1GiB", "Memory limit of a worker (limits.memory), e.g. 512MiB, 4GiB or 50%. Empty: none."
    )
    worker_disk: str = _opt(
        "10GiB",
        "Size of a worker's root disk (LXD's root disk size, image included), e.g. 10GiB: a task "
        "that writes more gets 'disk full' and fails, instead of filling the pool all workers "
        "share. Enforced by btrfs (quota groups), zfs and lvm; a dir pool enforces it only on a "
        "filesystem with project quotas (configure-host says so). Empty: no limit.",
    )
    worker_processes: int = _opt(
        2000, "Maximum processes in a worker (limits.processes). 0: no limit."
    )
    worker_network: str = _opt(
        "",
        "LXD network to give workers a NIC on (eth0). Empty (default): workers have no network.",
    )
    max_parallel_workers: int = _opt(
        8, "Most workers this host runs at once, over all jobs (1-1024)."
    )
    spare_workers: bool = _opt(
        True,
        "Make fresh workers ahead of a job's next tasks (LXD, one task per worker): a slot that "
        "frees finds its next worker created and started. A job then has up to its parallelism "
        "in spares besides its running tasks, within max-parallel-workers. Off: a job's workers "
        "are only those of its running tasks.",
    )
    ready_workers: int = _opt(
        4,
        "Ready workers kept per image between jobs (LXD on this host, not a cluster): started, "
        "probed and idle, each with its own id map, for the images of the last "
        f"{READY_MAX_IMAGES} sandbox jobs of the day. A sandbox job takes them instead of "
        "making its first workers; they are made again once no job runs. Never more than "
        "max-parallel-workers in all. 0: none.",
    )
    default_image: str = _opt(
        "container-compute-worker",
        "Image alias (or fingerprint) workers start from when a job names none; "
        "build one with the build-worker-image action.",
    )
    default_backend: str = _opt(
        "lxd", "Where tasks run when a job names no backend: 'lxd' (this host) or 'nova'."
    )
    nova_flavor: str = _opt("", "Nova flavor for task instances (name or id).")
    nova_image: str = _opt("", "Glance image for task instances (name or id).")
    nova_network: str = _opt("", "Neutron network for task instances (name or id). Empty: none.")
    metrics_listen: str = _opt(
        DEFAULT_METRICS_LISTEN,
        "Where the job agent serves Prometheus metrics: HOST:PORT, or [IPV6]:PORT. Empty: no "
        "metrics. The cos-agent relation hands this endpoint, alert rules and dashboards to "
        "COS. A value the agent cannot listen on blocks the unit; jobs run on without metrics.",
    )
    job_retention: str = _opt(
        "7d",
        "How long a finished job's record and results are kept, e.g. 12h or 30d. 0: forever.",
    )
    task_results_cap: str = _opt(
        "256MiB",
        "Most bytes gathered from one task (stdout, stderr and /results together); what is "
        "over is cut and the task's record says so.",
    )
    sysctl_tuning: bool = _opt(
        True,
        "Raise kernel limits (inotify, keys, map count, neighbour table) for many containers, "
        "written to /etc/sysctl.d and applied.",
    )
    keystone_username: str = _opt(
        "container-compute",
        "Service user name asked of Keystone on the identity-credentials relation.",
    )
    keystone_project: str = _opt(
        "", "Project asked of Keystone with the credentials. Empty: Keystone's default."
    )
    nova_availability_zone: str = _opt(
        "", "Nova availability zone for task instances. Empty: Nova's default."
    )
    nova_console_cap: str = _opt(
        "90KiB",
        "Most bytes of a Nova task's encoded output (stdout, stderr, /results compressed) sent "
        "back through the console log, which Nova serves only its last 100 KiB of: 1KiB-96KiB. "
        "Over it, /results are dropped, stdout and stderr cut, and the task's record says so.",
    )

    def __post_init__(self) -> None:
        """Validate every option; the first bad one raises ValueError naming it."""
        self._check_types()
        self._check_lxd()
        _check_storage(self)
        _check_worker(self)
        _check_jobs(self)
        check_nova_options(self)

    def _check_types(self) -> None:
        for name, kind, _default, _description in config_options():
            value = getattr(self, name.replace("-", "_"))
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                _fail(name, f"{value!r} is not {_TYPE_WORDS[kind]}")

    def _check_lxd(self) -> None:
        if self.lxd_source not in LXD_SOURCES:
            _fail("lxd-source", f"{self.lxd_source!r} is not one of {', '.join(LXD_SOURCES)}")
        if not _CHANNEL_RE.match(self.lxd_snap_channel):
            _fail(
                "lxd-snap-channel",
                f"{self.lxd_snap_channel!r} is not a snap channel (e.g. 5.21/stable)",
            )
        _require_lxd_name("lxd-project", self.lxd_project)
        if self.lxd_listen_https:
            match = _LISTEN_RE.match(self.lxd_listen_https)
            if not match or not 0 < int(match.group(2)) < 65536:
                _fail(
                    "lxd-listen-https",
                    f"{self.lxd_listen_https!r} is not an address:port such as '[::]:8443', "
                    "':8443' or '10.0.0.5:8443' (port 1-65535); empty for no listener",
                )
        _check_endpoint(self)
        if self.lxd_cluster and not self.lxd_listen_https:
            _fail(
                "lxd-cluster",
                "needs lxd-listen-https (e.g. ':8443') so that the members reach each other",
            )
        if self.lxd_cluster and self.lxd_endpoint:
            _fail(
                "lxd-cluster",
                "forms a cluster of this application's own hosts; it cannot be combined with "
                "lxd-endpoint (leave one of them empty)",
            )

    @property
    def kernel_modules(self) -> tuple[str, ...]:
        """The worker kernel modules, in order, without blanks or repeats."""
        names = [m.strip() for m in re.split(r"[,\s]+", self.worker_kernel_modules)]
        return tuple(dict.fromkeys(n for n in names if n))

    @property
    def remote(self) -> bool:
        """Whether workers run on an LXD endpoint rather than this host's daemon."""
        return bool(self.lxd_endpoint)

    @property
    def storage_size_bytes(self) -> int:
        """Loop file size in bytes."""
        return parse_size(self.storage_size)

    @property
    def worker_disk_bytes(self) -> int | None:
        """A worker's root disk limit in bytes; None when worker-disk is empty (no limit)."""
        return parse_size(self.worker_disk) if self.worker_disk else None

    @property
    def job_retention_seconds(self) -> int:
        """Seconds a finished job is kept (0: forever)."""
        return parse_duration(self.job_retention)

    @property
    def task_results_cap_bytes(self) -> int:
        """Most bytes gathered from one task."""
        return parse_size(self.task_results_cap)


def check_limits(cpu: tuple[str, str], memory: tuple[str, str], disk: tuple[str, str]) -> None:
    """Check CPU, memory and disk limits, each (option name, value); an empty value is none.

    Raises:
        ValueError: naming the first option whose value is not a limit.
    """
    checks = ((check_cpu_limit, cpu), (check_memory_limit, memory), (check_disk_limit, disk))
    for check, (name, value) in checks:
        if value:
            check(name, value)


def _check_worker(config: "HostConfig") -> None:
    for module in config.kernel_modules:
        if not _MODULE_RE.match(module):
            _fail(
                "worker-kernel-modules",
                f"{module!r} is not a kernel module name (letters, digits, '_', '-'); "
                "separate names with commas",
            )
    check_limits(
        ("worker-cpu", config.worker_cpu),
        ("worker-memory", config.worker_memory),
        ("worker-disk", config.worker_disk),
    )
    if not 0 <= config.worker_processes <= 10_000_000:
        _fail("worker-processes", f"{config.worker_processes} is not between 0 and 10000000")
    if config.worker_network:
        _require_lxd_name("worker-network", config.worker_network)
    if not 1 <= config.max_parallel_workers <= MAX_PARALLEL_WORKERS:
        _fail(
            "max-parallel-workers",
            f"{config.max_parallel_workers} is not between 1 and {MAX_PARALLEL_WORKERS}",
        )
    if not 0 <= config.ready_workers <= MAX_READY_WORKERS:
        _fail("ready-workers", f"{config.ready_workers} is not between 0 and {MAX_READY_WORKERS}")


def _check_endpoint(config: "HostConfig") -> None:
    credentials = ("lxd-client-cert", "lxd-client-key", "lxd-server-cert")
    for name in credentials:
        value = getattr(config, name.replace("-", "_"))
        if value and not _PRINTABLE_PEM_RE.match(value):
            _fail(name, "holds control characters (give PEM text or a file path)")
        if value and not value.lstrip().startswith(PEM_MARK):
            if not (value.startswith("/") or _SECRET_URI_RE.match(value)):
                _fail(name, "is neither PEM text, an absolute file path nor a Juju secret")
    if not config.lxd_endpoint:
        return
    match = _ENDPOINT_RE.match(config.lxd_endpoint)
    if not match or (match.group(3) and not 0 < int(match.group(3)) < 65536):
        _fail(
            "lxd-endpoint",
            f"{config.lxd_endpoint!r} is not an https:// URL such as https://10.0.0.5:8443",
        )
    missing = [n for n in credentials if not getattr(config, n.replace("-", "_"))]
    if missing:
        _fail("lxd-endpoint", f"{config.lxd_endpoint} needs {', '.join(missing)} too")


def check_nova_options(config: HostConfig) -> None:
    """Check the Nova backend's options (raise ValueError naming the option)."""
    if not _PRINTABLE_RE.match(config.nova_availability_zone):
        _fail("nova-availability-zone", "contains control characters or is over 255 characters")
    try:
        cap = parse_size(config.nova_console_cap)
    except ValueError as err:
        _fail("nova-console-cap", str(err))
        raise
    if not MIN_RESULTS_CAP <= cap <= MAX_NOVA_CONSOLE_CAP:
        _fail("nova-console-cap", f"{config.nova_console_cap!r} is not between 1KiB and 96KiB")


def _check_storage(config: "HostConfig") -> None:
    if config.storage_driver not in STORAGE_DRIVERS:
        _fail(
            "storage-driver",
            f"{config.storage_driver!r} is not one of {', '.join(STORAGE_DRIVERS)}",
        )
    _require_lxd_name("storage-pool", config.storage_pool)
    source = config.storage_source
    if source:
        if not _PRINTABLE_RE.match(source) or " " in source:
            _fail("storage-source", f"{source!r} contains spaces or control characters")
        if config.storage_driver == "zfs" and not source.startswith("/"):
            if not _ZFS_DATASET_RE.match(source):
                _fail("storage-source", f"{source!r} is neither a /dev path nor a zfs dataset")
        elif config.storage_driver == "dir":
            if not source.startswith("/"):
                _fail("storage-source", f"{source!r} must be an absolute directory path for dir")
        elif not source.startswith("/dev/"):
            _fail(
                "storage-source",
                f"{source!r} must be a block device under /dev/ for {config.storage_driver}"
                + (" (or a zfs dataset)" if config.storage_driver == "zfs" else ""),
            )
    try:
        size = parse_size(config.storage_size)
    except ValueError as err:
        _fail("storage-size", str(err))
        raise
    if size < MIN_LOOP_SIZE:
        _fail("storage-size", f"{config.storage_size!r} is below the minimum of 1GiB")


def _check_jobs(config: "HostConfig") -> None:
    if not _IMAGE_RE.match(config.default_image):
        _fail("default-image", f"{config.default_image!r} is not an image alias or fingerprint")
    if config.default_backend not in BACKENDS:
        _fail("default-backend", f"{config.default_backend!r} is not one of {', '.join(BACKENDS)}")
    for name in ("nova_flavor", "nova_image", "nova_network"):
        if not _PRINTABLE_RE.match(getattr(config, name)):
            _fail(option_name(name), "contains control characters or is over 255 characters")
    try:
        parse_metrics_listen(config.metrics_listen)
    except ValueError as err:
        _fail(METRICS_OPTION, str(err))
    try:
        parse_duration(config.job_retention)
    except ValueError as err:
        _fail("job-retention", str(err))
    try:
        cap = parse_size(config.task_results_cap)
    except ValueError as err:
        _fail("task-results-cap", str(err))
        raise
    if cap < MIN_RESULTS_CAP:
        _fail("task-results-cap", f"{config.task_results_cap!r} is below the minimum of 1KiB")
    if not _USER_RE.match(config.keystone_username):
        _fail(
            "keystone-username",
            f"{config.keystone_username!r} is not a user name (1-64 of A-Z a-z 0-9 _ . @ -)",
        )
    if config.keystone_project and not _USER_RE.match(config.keystone_project):
        _fail("keystone-project", f"{config.keystone_project!r} is not a project name")


def option_name(field_name: str) -> str:
    """Return the Juju option name of a HostConfig field (underscores to dashes)."""
    return field_name.replace("_", "-")


def juju_type(name: str) -> str:
    """Return the Juju type of an option when it is not derived from its Python type."""
    for f in dataclasses.fields(HostConfig):
        if option_name(f.name) == name:
            return str(f.metadata.get("juju_type", ""))
    raise KeyError(name)


def config_options() -> Iterator[tuple[str, type, Any, str]]:
    """Yield (option name, type, default, description) for every option, in order."""
    for f in dataclasses.fields(HostConfig):
        kind = f.type if isinstance(f.type, type) else _TYPE_NAMES[str(f.type)]
        yield option_name(f.name), kind, f.default, f.metadata["description"]
