"""The shell scripts that run inside a worker: the launcher, the wrapper, the warm wipe.

They run through LXD's exec API as ``/bin/sh -c <script>`` with their data in the
environment: nothing from a job is ever spliced into a script's text.
"""

from typing import Any

from ...constants import RESULTS_DIR_IN_WORKER
from .api import LXDApi

# The names these scripts set are constants.SCRIPT_ENV; a job cannot set them.

# Runs in the worker through exec; returns as soon as the wrapper is in the background.
LAUNCHER = (
    "mkdir -p /run " + RESULTS_DIR_IN_WORKER + " || exit 1\n"
    "mkdir /run/cc 2>/dev/null || { test -d /run/cc && exit 0; exit 1; }\n"
    # A session of its own: no controlling terminal inherited from however LXD was started,
    # so no SIGHUP reaches the task when the daemon goes away.
    "cc_setsid=; command -v setsid >/dev/null 2>&1 && cc_setsid=setsid\n"
    'exec $cc_setsid /bin/sh -c "$CC_WRAPPER" </dev/null >/dev/null 2>&1 &\n'
)
# The wrapper: the user's command comes from the environment, its output goes to files.
WRAPPER = (
    "trap '' HUP\n"
    "cd /\n"
    "echo $$ >/run/cc/pid\n"
    "cc_command=$CC_COMMAND\n"
    "unset CC_COMMAND CC_WRAPPER CC_KEEP CC_MIN_FREE\n"
    '/bin/sh -c "$cc_command" </dev/null >/run/cc/stdout 2>/run/cc/stderr\n'
    "echo $? >/run/cc/exit_code.tmp && mv /run/cc/exit_code.tmp /run/cc/exit_code\n"
)

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
    "if [ -d /tmp ]; then (cd /tmp && rm -rf -- * .[!.]* ..?*) || exit 4;"
    " else mkdir -m 1777 /tmp || exit 4; fi\n"
    'for cc_f in /tmp/* /tmp/.[!.]* /tmp/..?* "$cc_r"/* "$cc_r"/.[!.]* "$cc_r"/..?*; do\n'
    '  [ -e "$cc_f" ] || [ -L "$cc_f" ] && exit 5\n'
    "done\n"
    "if command -v df >/dev/null 2>&1; then\n"
    "  df -kP / 2>/dev/null |\n"
    "    { read -r _; read -r _ _ _ cc_free _;"
    ' [ "${cc_free:-0}" -ge "$CC_MIN_FREE" ]; } || exit 6\n'
    "fi\n"
)
# A warm worker's next task: the checks and the wipe, then the launcher.
WARM_LAUNCHER = RECYCLE + LAUNCHER

LAUNCHER_TIMEOUT_SECONDS = 60.0  # the launcher only forks the wrapper and returns


def run_launcher(api: LXDApi, name: str, script: str, environment: dict[str, str]) -> int:
    """Run ``script`` in worker ``name`` through exec (no websocket); return its exit code."""

    def execute() -> dict[str, Any]:
        response = api.client.api.instances[name].exec.post(
            json={
                "command": ["/bin/sh", "-c", script],
                "environment": environment,
                "wait-for-websocket": False,
                "interactive": False,
                "record-output": False,
            }
        )
        return api.wait_operation(response, timeout=LAUNCHER_TIMEOUT_SECONDS)

    result = api.retry(f"starting the command in worker {name}", execute)
    return int(result.get("return", 0))
