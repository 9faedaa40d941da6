"""The shell scripts that run inside a worker: the launcher, the wrapper, the warm wipe.

They run through LXD's exec API as ``/bin/sh -c <script>`` with their data in the
environment: nothing from a job is ever spliced into a script's text.
"""

from typing import Any

from ...constants import (
    RESULTS_DIR_IN_WORKER,
    SANDBOX_HELPER_IN_WORKER,
    TASK_MEMORY_MARGIN_BYTES,
    TASK_PIDS_MARGIN,
)
from .api import LXDApi

# The names these scripts set are constants.SCRIPT_ENV; a job cannot set them.

# Runs in the worker through exec; returns as soon as the wrapper is in the background.
LAUNCHER = (
    "{ [ -d /run ] && [ -d " + RESULTS_DIR_IN_WORKER + " ]; } ||"
    " mkdir -p /run " + RESULTS_DIR_IN_WORKER + " || exit 1\n"
    # /run/cc is the lock: taken by this attempt (a relaunch), the command runs already; left
    # by another attempt (a warm worker's last task), 7: that attempt's files are not this one's.
    "mkdir /run/cc 2>/dev/null || { test -d /run/cc || exit 1;"
    " read -r cc_a </run/cc/attempt 2>/dev/null;"
    ' [ "$cc_a" = "$CC_ATTEMPT" ] && exit 0; exit 7; }\n'
    'echo "$CC_ATTEMPT" >/run/cc/attempt\n'
    # A session of its own: no controlling terminal inherited from however LXD was started,
    # so no SIGHUP reaches the task when the daemon goes away (the runner has one already).
    'cc_setsid=; [ -z "$CC_RUNNER" ] && command -v setsid >/dev/null 2>&1 && cc_setsid=setsid\n'
    'exec $cc_setsid /bin/sh -c "$CC_WRAPPER" </dev/null >/dev/null 2>&1 &\n'
)
# The wrapper: the user's command comes from the environment, its output goes to files.
WRAPPER = (
    "trap '' HUP\n"
    "cd /\n"
    "echo $$ >/run/cc/pid\n"
    "cc_command=$CC_COMMAND\n"
    "unset CC_ATTEMPT CC_COMMAND CC_WRAPPER CC_KEEP CC_MIN_FREE\n"
    '/bin/sh -c "$cc_command" </dev/null >/run/cc/stdout 2>/run/cc/stderr\n'
    "echo $? >/run/cc/exit_code.tmp && mv /run/cc/exit_code.tmp /run/cc/exit_code\n"
)

# A warm worker runs each task in a sandbox of its own (``SANDBOX_SETUP``): the wrapper puts
# it in a child cgroup of the worker's own cgroup2 tree (``/run/cc-cgroup/task``: its
# cpu.stat is kept in /run/cc, cgroup.kill ends the task's whole tree and leaves the worker),
# then makes it PID 1 of new pid, mount, ipc and uts namespaces. The exit code and output
# files stay in the worker's /run/cc, out of the task's reach.
SANDBOX_CGROUP = "/run/cc-cgroup"
# Once per warm worker, before its sandbox probe: where the worker's cgroup2 tree has the
# memory and pids controllers (a cgroup v2 host; none on hybrid hosts), its processes leave the
# tree's root for a leaf (``worker``: a cgroup that hands controllers down holds no process),
# and the root hands both down, so each task cgroup can have limits of its own. Silent, and
# nothing fails without it: the limits are then the worker's.
DELEGATE_CONTROLLERS = (
    f"cc_cg={SANDBOX_CGROUP}\n"
    "{\n"
    "  mkdir -p $cc_cg && { [ -f $cc_cg/cgroup.procs ] || mount -t cgroup2 cc-cgroup $cc_cg; }\n"
    "  cc_have=; read -r cc_have <$cc_cg/cgroup.controllers\n"
    "  cc_on=; read -r cc_on <$cc_cg/cgroup.subtree_control\n"
    "  cc_want=\n"
    "  for cc_c in memory pids; do\n"
    '    case " $cc_have " in *" $cc_c "*) ;; *) continue ;; esac\n'
    '    case " $cc_on " in *" $cc_c "*) ;; *) cc_want="$cc_want +$cc_c" ;; esac\n'
    "  done\n"
    '  if [ -n "$cc_want" ]; then\n'
    "    mkdir -p $cc_cg/worker\n"
    "    for cc_p in $(cat $cc_cg/cgroup.procs); do echo $cc_p >$cc_cg/worker/cgroup.procs; done\n"
    '    echo "$cc_want" >$cc_cg/cgroup.subtree_control\n'
    "  fi\n"
    "} </dev/null >/dev/null 2>&1\n"
)
# The shell recipe's twin of the helper's task limits (sandbox.c): the task cgroup gets the
# worker's memory and pids limits less the margins, where their files exist in it.
_TASK_LIMITS = (
    "  cc_limited=\n"
    "  for cc_c in memory.max:$CC_MEMORY_MARGIN pids.max:$CC_PIDS_MARGIN; do\n"
    "    cc_f=${cc_c%%:*}; cc_k=${cc_c#*:}\n"
    "    [ -f $cc_cg/task/$cc_f ] && read -r cc_n <$cc_cg/$cc_f || continue\n"
    '    case "$cc_n" in ""|*[!0-9]*) continue ;; esac\n'
    '    case "$cc_k" in ""|*[!0-9]*) continue ;; esac\n'
    "    [ $cc_k -gt $((cc_n / 4)) ] && cc_k=$((cc_n / 4))\n"
    "    echo $((cc_n - cc_k)) >$cc_cg/task/$cc_f 2>/dev/null && cc_limited=1\n"
    "  done\n"
    '  [ -n "$cc_limited" ] && echo 1 >$cc_cg/task/memory.oom.group 2>/dev/null\n'
)
# ... and of its report of the task cgroup's limits and what they did, after the command.
_TASK_REPORT = (
    '  if [ -n "$cc_limited" ]; then {\n'
    '    read -r cc_n <$cc_cg/task/memory.max && echo "task-memory-max $cc_n"\n'
    '    read -r cc_n <$cc_cg/task/pids.max && echo "task-pids-max $cc_n"\n'
    '    read -r cc_n <$cc_cg/task/memory.peak && echo "memory-peak-bytes $cc_n"\n'
    "    while read -r cc_f cc_n; do\n"
    '      [ "$cc_f" = oom_kill ] && echo "oom-kills $cc_n"; done <$cc_cg/task/memory.events\n'
    "    while read -r cc_f cc_n; do\n"
    '      [ "$cc_f" = max ] && echo "forks-refused $cc_n"; done <$cc_cg/task/pids.events\n'
    "  } >>/run/cc/sandbox 2>/dev/null; fi\n"
)
SANDBOX_WRAPPER = (
    "trap '' HUP\n"
    "cd /\n"
    "echo $$ >/run/cc/pid\n"
    "cc_command=$CC_COMMAND\n"
    "cc_sandbox=$CC_SANDBOX\n"
    "unset CC_ATTEMPT CC_COMMAND CC_WRAPPER CC_KEEP CC_MIN_FREE CC_SANDBOX CC_RUNNER\n"
    f"cc_cg={SANDBOX_CGROUP}\n"
    # The sandbox's init moves itself into the task's cgroup, then the namespaces; fd 3
    # says how far the sandbox got ("ready" just before the command). The helper program
    # (helper.py, which also makes the task's cgroup) where the host could copy it in, else
    # the shell recipe.
    f"if [ -x {SANDBOX_HELPER_IN_WORKER} ]; then\n"
    f'  CC_CGROUP=$cc_cg {SANDBOX_HELPER_IN_WORKER} "$cc_command"'
    " </dev/null >/run/cc/stdout 2>/run/cc/stderr 3>/run/cc/sandbox\n"
    "  cc_exit=$?\n"
    "else\n"
    "  mkdir -p $cc_cg && { [ -f $cc_cg/cgroup.procs ] ||"
    " mount -t cgroup2 cc-cgroup $cc_cg 2>/dev/null; }\n"
    "  rmdir $cc_cg/task 2>/dev/null\n"
    "  cc_enter=; mkdir $cc_cg/task 2>/dev/null &&"
    " cc_enter='echo 0 >'$cc_cg/task/cgroup.procs' &&'\n"
    + _TASK_LIMITS
    + '  /bin/sh -c "$cc_enter exec unshare -m -p -f -i -u /bin/sh -c \\"\\$0\\" cc-sandbox'
    ' \\"\\$1\\"" "$cc_sandbox" "$cc_command"'
    " </dev/null >/run/cc/stdout 2>/run/cc/stderr 3>/run/cc/sandbox\n"
    "  cc_exit=$?\n"
    "  cat $cc_cg/task/cpu.stat >/run/cc/cpu.stat 2>/dev/null\n"
    + _TASK_REPORT
    + "  rmdir $cc_cg/task 2>/dev/null\n"
    "fi\n"
    "read -r cc_state </run/cc/sandbox 2>/dev/null\n"
    '[ "$cc_state" = ready ] || echo "${cc_state:-the sandbox ended before it was made}"'
    " >/run/cc/sandbox_error\n"
    "echo $cc_exit >/run/cc/exit_code.tmp && mv /run/cc/exit_code.tmp /run/cc/exit_code\n"
)
# Makes the sandbox, as the init of its new namespaces: the worker's root as the read-only
# lower layer of an overlay whose upper layer is a size-capped tmpfs (every write of the task
# vanishes with it), /dev, a fresh /proc, /sys, /results, /input and /tmp (on the worker's
# disk, wiped between tasks) bound in, pivot_root with
# the old root detached (a chroot could be escaped), its own host name; then the command.
SANDBOX_SETUP = (
    'cc_fail() { echo "$1" >&3; exit 1; }\n'
    "cc_d=/run/cc-sandbox; cc_r=$cc_d/root\n"
    "mount --make-rprivate / || cc_fail 'mount --make-rprivate / was refused'\n"
    'mkdir -p $cc_d || cc_fail "mkdir $cc_d failed"\n'
    "mount -t tmpfs -o size=$CC_SANDBOX_SIZE,mode=0700 cc-sandbox $cc_d ||"
    " cc_fail 'a tmpfs mount was refused'\n"
    "mkdir $cc_d/upper $cc_d/work $cc_r || cc_fail 'the sandbox tmpfs is not writable'\n"
    "mount -t overlay cc-sandbox -o lowerdir=/,upperdir=$cc_d/upper,workdir=$cc_d/work $cc_r"
    " || cc_fail 'an overlay mount was refused (it needs kernel 5.11 or later in a container)'\n"
    "mount --rbind /dev $cc_r/dev || cc_fail 'binding /dev was refused'\n"
    "if [ -d $cc_r/dev/shm ]; then mount -t tmpfs -o size=$CC_SANDBOX_SIZE,nosuid,nodev"
    " cc-shm $cc_r/dev/shm || cc_fail 'a tmpfs on /dev/shm was refused'; fi\n"
    "mount -t proc proc $cc_r/proc || cc_fail 'mounting /proc was refused'\n"
    "if [ -d /sys/class ]; then mount --rbind /sys $cc_r/sys || cc_fail 'binding /sys'; fi\n"
    f"mount --bind {RESULTS_DIR_IN_WORKER} $cc_r{RESULTS_DIR_IN_WORKER} ||"
    " cc_fail 'binding /results was refused'\n"
    "if [ -d /input ]; then mount --rbind /input $cc_r/input || cc_fail 'binding /input'; fi\n"
    # Scratch space on the worker's disk, emptied and checked before the next task.
    "if [ -d /tmp ]; then mount --bind /tmp $cc_r/tmp || cc_fail 'binding /tmp'; fi\n"
    "cd $cc_r && mkdir -p .cc-old && pivot_root . .cc-old || cc_fail 'pivot_root was refused'\n"
    "umount -l /.cc-old || cc_fail 'the old root could not be detached'\n"
    "rmdir /.cc-old\n"
    "hostname \"$CC_HOSTNAME\" || cc_fail 'setting the host name was refused'\n"
    # The task's processes go before the wrapper when the worker's memory runs out.
    "echo 500 >/proc/self/oom_score_adj 2>/dev/null\n"
    "unset CC_SANDBOX_SIZE CC_HOSTNAME CC_MEMORY_MARGIN CC_PIDS_MARGIN\n"
    "cd / && echo ready >&3 && exec 3>&-\n"
    'exec /bin/sh -c "$1"\n'
)
# Once per new warm worker: can it make a sandbox? (0: yes; else fd 3 says why.) Its task
# cgroups first get the memory and pids controllers where the worker has them.
SANDBOX_PROBE = DELEGATE_CONTROLLERS + (
    f"if [ -x {SANDBOX_HELPER_IN_WORKER} ]; then\n"
    f"  {SANDBOX_HELPER_IN_WORKER} true 3>&1 </dev/null 2>/dev/null\n"
    "else\n"
    '  unshare -m -p -f -i -u /bin/sh -c "$CC_SANDBOX" cc-sandbox true'
    " 3>&1 </dev/null 2>/dev/null\n"
    "fi\n"
)
SANDBOX_KILL = f"echo 1 >{SANDBOX_CGROUP}/task/cgroup.kill\n"
# The size cap of a sandbox's own tmpfs (its writes outside /results and /tmp, and /dev/shm);
# what it holds counts against the worker's memory.
SANDBOX_TMPFS_SIZE = "512m"


def sandbox_environment(worker: str) -> dict[str, str]:
    """What the sandbox scripts need besides the command: the setup, its tmpfs cap, a name."""
    return {
        "CC_SANDBOX": SANDBOX_SETUP,
        "CC_SANDBOX_SIZE": SANDBOX_TMPFS_SIZE,
        "CC_HOSTNAME": worker,
        "CC_MEMORY_MARGIN": str(TASK_MEMORY_MARGIN_BYTES),
        "CC_PIDS_MARGIN": str(TASK_PIDS_MARGIN),
    }


# The checks and wipe of a warm worker before its next task (``warm``). Exit codes: 3 a
# process left behind, 4 a directory that cannot be wiped, 5 not empty after, 6 no room left
# on /; else it goes on. Nothing but ``sleep`` forks before the process check is passed (a
# subshell would count itself). Its variables are cc_* (reserved): a job's env keeps its own.
RECYCLE = (
    "cd / || exit 4\n"
    "cc_left() {\n"
    "  for cc_p in /proc/[0-9]*; do\n"
    '    cc_n=${cc_p#/proc/}; [ "$cc_n" = "$$" ] && continue\n'
    '    case " $CC_KEEP " in *" $cc_n "*) continue ;; esac\n'
    # A zombie (Z) has ended already; init reaps it in its own time (busybox: within 1 s).
    '    read -r cc_stat < "$cc_p/stat" 2>/dev/null || continue\n'
    '    cc_state=${cc_stat##*) }; case "${cc_state%% *}" in Z|X) ;; *) return 0 ;; esac\n'
    "  done\n"
    "  return 1\n"
    "}\n"
    # The task's wrapper may still be exiting: its processes get a moment (2 s) to go.
    "cc_i=0\n"
    "while cc_left; do\n"
    "  cc_i=$((cc_i + 1)); [ $cc_i -gt 40 ] && exit 3\n"
    "  sleep 0.05 2>/dev/null || sleep 1\n"
    "done\n"
    f"cc_r={RESULTS_DIR_IN_WORKER}\n"
    '[ -L "$cc_r" ] || [ -L /tmp ] || [ -L /run ] || [ -L /run/cc ] && exit 4\n'
    'rm -rf /run/cc "$cc_r" || exit 4\n'
    'mkdir -m 0755 "$cc_r" || exit 4\n'
    "if [ -d /tmp ]; then for cc_f in /tmp/* /tmp/.[!.]* /tmp/..?*; do\n"
    '  if [ -e "$cc_f" ] || [ -L "$cc_f" ]; then'
    " (cd /tmp && rm -rf -- * .[!.]* ..?*) || exit 4; break; fi\n"
    "done; else mkdir -m 1777 /tmp || exit 4; fi\n"
    'for cc_f in /tmp/* /tmp/.[!.]* /tmp/..?* "$cc_r"/* "$cc_r"/.[!.]* "$cc_r"/..?*; do\n'
    '  [ -e "$cc_f" ] || [ -L "$cc_f" ] && exit 5\n'
    "done\n"
    # CC_MIN_FREE 0: the host looked at the worker's free space itself (runner.py).
    'if [ "$CC_MIN_FREE" -gt 0 ] && command -v df >/dev/null 2>&1; then\n'
    "  df -kP / 2>/dev/null |\n"
    "    { read -r _; read -r _ _ _ cc_free _;"
    ' [ "${cc_free:-0}" -ge "$CC_MIN_FREE" ]; } || exit 6\n'
    "fi\n"
)
NO_ROOM_EXIT = 6  # RECYCLE's exit code for a worker with too little room left on /
# A warm worker's next task: the checks and the wipe, then the launcher.
WARM_LAUNCHER = RECYCLE + LAUNCHER

LAUNCHER_TIMEOUT_SECONDS = 60.0  # the launcher only forks the wrapper and returns


def exec_script(
    api: LXDApi,
    name: str,
    script: str,
    environment: dict[str, str] | None = None,
    timeout: float = LAUNCHER_TIMEOUT_SECONDS,
    record_output: bool = False,
) -> dict[str, Any]:
    """Run ``script`` with /bin/sh in worker ``name`` through exec (no websocket).

    Returns the finished operation's metadata (``return``: the exit code; ``output``: where
    LXD recorded stdout and stderr, with ``record_output``).

    Raises:
        OperationFailedError, pylxd.exceptions.LXDAPIException: as LXDApi's calls do.
    """
    response = api.client.api.instances[name].exec.post(
        json={
            "command": ["/bin/sh", "-c", script],
            "environment": environment or {},
            "wait-for-websocket": False,
            "interactive": False,
            "record-output": record_output,
        }
    )
    return api.wait_operation(response, timeout=timeout)


def run_launcher(api: LXDApi, name: str, script: str, environment: dict[str, str]) -> int:
    """Run ``script`` in worker ``name`` through exec (no websocket); return its exit code."""
    result = api.retry(
        f"starting the command in worker {name}",
        lambda: exec_script(api, name, script, environment),
    )
    return int(result.get("return", 0))


def run_recorded(
    api: LXDApi, name: str, script: str, environment: dict[str, str], timeout: float
) -> tuple[int, bytes]:
    """Run ``script`` in worker ``name`` through exec; its exit code and what it printed.

    Raises:
        OperationFailedError, pylxd.exceptions.LXDAPIException: as LXDApi's calls do.
    """
    result = exec_script(api, name, script, environment, timeout, record_output=True)
    output = result.get("output") or {}
    stdout = str(output.get("1") or output.get(1) or "")  # where LXD recorded it
    said = b""
    if stdout:
        logs = api.client.api.instances[name].logs[stdout.rsplit("/", 1)[-1]]
        said = logs.get(is_api=False).content
    return int(result.get("return", -1)), said
