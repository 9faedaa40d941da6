"""Names, paths and labels shared by the library, the charm and the command line."""

import re
from pathlib import Path

APP_NAME = "container-compute"

# Juju endpoints (metadata.yaml).
JUJU_INFO_ENDPOINT = "juju-info"
LXD_ENDPOINT = "lxd"
IDENTITY_ENDPOINT = "identity-credentials"
CLUSTER_ENDPOINT = "cluster"
COMPUTE_JOBS_ENDPOINT = "compute-jobs"
COS_AGENT_ENDPOINT = "cos-agent"

# Paths on the host.
STATE_DIR = Path("/var/lib/container-compute")
STATE_DIR_ENV = "CONTAINER_COMPUTE_STATE_DIR"
# The state dir is private to its owner (privatefiles.py, jobs/private.py).
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
# PEM text of an lxd-* option, kept in the state dir as <prefix><hash of the text>.
LXD_PEM_FILE_PREFIX = "lxd-pem-"
# What a secret value (a task's environment value) is shown as.
REDACTED = "<redacted>"
LEDGER_FILE = "ledger.sqlite3"
OWNER_FILE = "owner"  # the state dir's owner id, on every worker and template it makes
RESULTS_SUBDIR = "results"
SYSCTL_DIR = Path("/etc/sysctl.d")
SYSCTL_FILE_NAME = "60-container-compute.conf"
MODULES_LOAD_DIR = Path("/etc/modules-load.d")
MODULES_LOAD_FILE_NAME = "container-compute.conf"
SUBUID_FILE = Path("/etc/subuid")
SUBGID_FILE = Path("/etc/subgid")
LXD_SOCKET_PATHS = (
    Path("/var/snap/lxd/common/lxd/unix.socket"),
    Path("/var/lib/lxd/unix.socket"),
)
LXD_LOG_FILE = Path("/var/log/lxd.log")
AGENT_UNIT_NAME = "container-compute-agent.service"
AGENT_LOG_FILE = Path("/var/log/container-compute/agent.log")  # a log collector's to take
LOGROTATE_FILE = Path("/etc/logrotate.d/container-compute")
DEFAULT_METRICS_LISTEN = "127.0.0.1:9790"
AGENT_UNIT_PATH = Path("/etc/systemd/system") / AGENT_UNIT_NAME

# Executables (absolute paths; never resolved through PATH from user input).
APT_GET = "/usr/bin/apt-get"
SNAP = "/usr/bin/snap"
SYSTEMCTL = "/usr/bin/systemctl"
SYSCTL = "/usr/sbin/sysctl"
MODPROBE = "/usr/sbin/modprobe"
GCC = "/usr/bin/gcc"  # builds the sandbox helper (backends/lxd/helper.py); optional
MODINFO = "/usr/sbin/modinfo"
USERMOD = "/usr/sbin/usermod"
GROUPADD = "/usr/sbin/groupadd"
LXD_DEB_BIN = "/usr/bin/lxd"
LXD_SNAP_BIN = "/snap/bin/lxd"
LXC_DEB_BIN = "/usr/bin/lxc"
BUSYBOX_BIN = "/bin/busybox"
DEBOOTSTRAP = "/usr/sbin/debootstrap"
SKOPEO = "/usr/bin/skopeo"
UMOCI = "/usr/bin/umoci"
# An OCI worker image's config (Env, WorkingDir, Entrypoint, Cmd; JSON), as an LXD image
# property; launch-job records it with the job (IMAGE_CONFIG) and tasks start from it.
IMAGE_CONFIG_PROPERTY = "container-compute.config"
IMAGE_CONFIG = "image-config"

# LXD objects.
LXD_GROUP = "lxd"
WORKER_PROFILE = "container-compute-worker"
# They mark the project and pool container-compute created: teardown deletes only those.
PROJECT_DESCRIPTION = "container-compute workers"
POOL_DESCRIPTION = "container-compute workers"
TRUST_NAME_PREFIX = "container-compute:"
CONFIG_KEY_PREFIX = "user.container-compute."
LABEL_JOB = CONFIG_KEY_PREFIX + "job"
LABEL_TASK = CONFIG_KEY_PREFIX + "task"
LABEL_ATTEMPT = CONFIG_KEY_PREFIX + "attempt"
LABEL_OWNER = CONFIG_KEY_PREFIX + "owner"  # the state dir that made it (owner.py)
WORKER_NAME_PREFIX = "cc-"
# Prepared templates workers are copied from (backends/lxd/templates.py).
TEMPLATE_NAME_PREFIX = "cct-"
LABEL_TEMPLATE = CONFIG_KEY_PREFIX + "template"  # "<id mode>:<image fingerprint>"
LABEL_TEMPLATE_JOB = CONFIG_KEY_PREFIX + "template-job"  # the job whose id range it holds
LABEL_TEMPLATE_READY = CONFIG_KEY_PREFIX + "template-ready"
# Ready workers kept between jobs (backends/lxd/ready.py, jobs/ready.py): their job label
# says no job holds them yet; a job that takes one relabels it.
READY_JOB = "ready"
READY_NAME_PREFIX = "cc-ready-"
LABEL_READY = CONFIG_KEY_PREFIX + "ready"  # "<id mode>:<image fingerprint>"
LABEL_READY_IMAGE = CONFIG_KEY_PREFIX + "ready-image"  # the alias (or fingerprint) asked for
LABEL_READY_STATE = CONFIG_KEY_PREFIX + "ready-state"  # "made" once started and probed
LABEL_READY_BASELINE = CONFIG_KEY_PREFIX + "ready-baseline"  # its own processes (warm checks)
# The sandbox helper: built once per host (by its source's digest), copied into warm workers.
HELPER_CACHE_DIR = Path("/var/cache/container-compute")
SANDBOX_HELPER_IN_WORKER = "/.cc-sandbox"
RUNNER_DIR_IN_WORKER = "/run/cc-runner"  # a warm worker's resident launcher (runner.py)
# Where a worker delegates the memory and pids controllers (cgroup v2), each task's own cgroup
# gets the worker's limits less these margins (at most a quarter of the limit) for the
# worker's init, runner and wrapper: a task meets its limit, and its OOM, before the worker.
TASK_MEMORY_MARGIN_BYTES = 32 * 1024 * 1024
TASK_PIDS_MARGIN = 32
READY_MAX_IMAGES = 3  # ready workers are kept for the images of this many recent jobs
READY_KEEP_SECONDS = 24 * 3600  # ... submitted within this long
# Where LXD keeps a log directory per instance (<project>_<name>; the default project: <name>).
LXD_INSTANCE_LOG_DIRS = (Path("/var/snap/lxd/common/lxd/logs"), Path("/var/log/lxd"))

# Idmaps: one isolated container takes this many ids; base is LXD's usual start.
IDMAP_SIZE = 65536
SUBID_BASE = 100000

# Inside a worker.
RESULTS_DIR_IN_WORKER = "/results"
INPUT_DIR_IN_WORKER = "/input"

# A task's environment. A name a job may give (launch-job's env), checked by every backend too.
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}\Z")  # \Z: no trailing newline
# Set by the engine for every task (jobs/scheduler.py).
TASK_ENV = ("TASK_INDEX", "TASK_COUNT", "JOB_ID", "RESULTS_DIR", "TASK_INPUT", "TASK_ATTEMPT")
# Set by the scripts that run a task: the LXD launcher, wrapper and warm wipe
# (backends/lxd/launch.py) and the Nova task script (templates/nova-task.sh.j2).
SCRIPT_ENV = (
    "CC_ATTEMPT",
    "CC_COMMAND",
    "CC_WRAPPER",
    "CC_KEEP",
    "CC_MIN_FREE",
    "CC_SANDBOX",
    "CC_SANDBOX_SIZE",
    "CC_HOSTNAME",
    "CC_CGROUP",
    "CC_MEMORY_MARGIN",
    "CC_PIDS_MARGIN",
    "CC_RUNNER",
    "cc_command",
    "cc_sandbox",
    "cc_cg",
    "cc_enter",
    "cc_d",
    "cc_fail",
    "cc_setsid",
    "cc_tag",
    "cc_cap",
    "cc_linger",
    "cc_dir",
    "cc_exit",
    "cc_full",
    "cc_truncated",
    "cc_keep",
    "cc_sum",
    "cc_p",
    "cc_n",
    "cc_stat",
    "cc_state",
    "cc_i",
    "cc_r",
    "cc_f",
    "cc_free",
    "cc_live_cap",
    "cc_limited",
    "cc_have",
    "cc_on",
    "cc_want",
    "cc_c",
    "cc_k",
    "cc_mirrors",
    "cc_s",
    "cc_pid",
)
# A job cannot set these.
RESERVED_ENV = TASK_ENV + SCRIPT_ENV

# How a job that asked for sandboxes says it got a fresh worker per task instead, and why
# (job-status's isolation-note; recorded in the job's params under ISOLATION_NOTE).
SANDBOX_REFUSED = "sandboxes are refused in this worker"
ISOLATION_NOTE = "isolation_note"

# Bytes of each stream a Nova server mirrors to its console while its task runs (live logs).
NOVA_LIVE_BYTES = 16 * 1024
