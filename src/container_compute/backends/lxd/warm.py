"""Workers made before their task: warm ones and prepared ones.

Warm workers (``reuse-workers``): one worker runs task after task of the same job.

Before its next task the worker is checked and wiped by the script that launches that task
(``launch.WARM_LAUNCHER``; handed to the worker's resident launcher, ``runner``, else run
through an LXD exec): every process but those the worker ran before its first
task (read when it was made: ``learn``) must be gone, ``/results`` and ``/tmp`` must be real
directories that can be emptied, ``/run/cc`` (the last task's output and exit code) is
removed, and the root disk must have room left. A worker that fails any of it is deleted and
made again, never reused. The list of allowed processes comes from the backend, not from the
worker; the checks themselves run the worker's own shell, so a task that replaces the
worker's tools could fool them: that is why only tasks of the same job share a worker.

Prepared workers (``PreparedWorkers``): fresh workers created and started ahead of their
task, so that a free slot finds a started worker; each runs one task, like any cold worker.
"""

import logging
import threading
import time

from ...constants import SANDBOX_HELPER_IN_WORKER, SANDBOX_REFUSED
from .api import LXDApi
from .helper import push_helper, sandbox_helper
from .launch import NO_ROOM_EXIT, SANDBOX_PROBE, run_launcher, run_recorded, sandbox_environment
from .runner import Runners

logger = logging.getLogger(__name__)

LIST_TIMEOUT_SECONDS = 30.0
MIN_FREE_KIB = 32 * 1024  # a worker with less room left on / is replaced
SETTLE_READS = 5  # reads of the process list, 0.1 s apart, until two agree

# Prints the PIDs of the worker's processes (but its own), one per line.
_LIST_PROCESSES = 'for p in /proc/[0-9]*; do n=${p#/proc/}; [ "$n" = "$$" ] || echo "$n"; done'

_VERDICTS = {
    3: "a process of the task was still running",
    4: "/results, /tmp or /run/cc could not be wiped (replaced by a link or a mount?)",
    5: "/results or /tmp was not empty after the wipe",
    NO_ROOM_EXIT: f"less than {MIN_FREE_KIB // 1024} MiB left on its root disk",
}


class WarmWorkers:
    """Check and wipe the warm workers of one LXD project between their tasks."""

    def __init__(self, api: LXDApi, host_access: bool = True) -> None:
        """Use ``api``'s project; no worker known yet. ``host_access``: runners may be used."""
        self.api = api
        self.runners = Runners(api, host_access)
        self._baselines: dict[str, str] = {}
        self.sandbox_refusal = ""  # why the last new worker could not make a sandbox

    def learn(self, name: str) -> None:
        """Start a new worker's runner, then note the processes it runs by itself."""
        self.runners.start(name)
        previous = None
        for _ in range(SETTLE_READS):
            current = " ".join(sorted(self._processes(name), key=int))
            if current == previous:
                break
            previous = current
            time.sleep(0.1)
        self._baselines[name] = current

    def baseline(self, name: str) -> str:
        """The processes ``name`` ran by itself when it was made (``learn``), "" if unknown."""
        return self._baselines.get(name, "")

    def know(self, name: str, baseline: str) -> None:
        """Reuse ``name``, made elsewhere (a ready worker); it runs ``baseline`` by itself."""
        self._baselines[name] = baseline
        self.runners.adopt(name)

    def knows(self, name: str) -> bool:
        """Tell whether ``name`` is a warm worker this backend made and may reuse."""
        return name in self._baselines

    def forget(self, name: str) -> None:
        """Stop reusing ``name`` (it is deleted, or was never ours)."""
        self._baselines.pop(name, None)
        self.runners.forget(name)

    def launch(self, name: str, script: str, environment: dict[str, str]) -> int:
        """Run a launcher script in ``name``: through its runner, else exec; its exit code.

        Raises:
            LaunchError: when its runner took the script but gave no exit code.
        """
        code = self.runners.run(name, script, environment)
        return run_launcher(self.api, name, script, environment) if code is None else code

    def environment(self, name: str) -> dict[str, str]:
        """What the checks before a worker's next task need: the processes it may run."""
        return {"CC_KEEP": self._baselines.get(name, "1"), "CC_MIN_FREE": str(MIN_FREE_KIB)}

    @staticmethod
    def verdict(code: int) -> str:
        """Why a warm worker was not clean, from the checks' exit code ("" for another code)."""
        return _VERDICTS.get(code, "")

    def makes_sandboxes(self, name: str) -> bool:
        """Try a sandbox in a new worker; False (said once, with why) when it cannot.

        Without sandboxes its tasks would see each other's files: such a worker runs one
        task and goes (a fresh worker per task).
        """
        helper = push_helper(self.api, name, sandbox_helper())
        why = self._probe(name)
        if why and helper:  # the helper cannot run here: the shell recipe may
            logger.info("the sandbox helper failed in worker %s (%s): the shell recipe", name, why)
            self._run(name, f"rm -f {SANDBOX_HELPER_IN_WORKER}", {})
            why = self._probe(name)
        if why and why != self.sandbox_refusal:
            logger.warning(
                "sandboxes are refused in worker %s (%s): each task gets a fresh worker", name, why
            )
        self.sandbox_refusal = why
        return not why

    def _probe(self, name: str) -> str:
        """Make a sandbox in the worker and end it: "" when it worked, else why not."""
        code, said = self._run(name, SANDBOX_PROBE, sandbox_environment(name))
        lines = said.strip().splitlines()  # "ready" (the helper adds its rusage), or why not
        if code == 0 and lines[:1] == ["ready"]:
            return ""
        return lines[-1] if lines else f"the probe exited {code}"

    def refusal_note(self) -> str:
        """Why workers here run one task each though sandboxes were asked for ("" if not)."""
        if not self.sandbox_refusal:
            return ""
        return f"{SANDBOX_REFUSED}: {self.sandbox_refusal}; each task gets a fresh worker"

    def _processes(self, name: str) -> list[str]:
        """The PIDs (in the worker) of the worker's processes, read through exec."""
        _code, text = self._run(name, _LIST_PROCESSES, {})
        return [line for line in text.split() if line.isdigit()]

    def _run(self, name: str, script: str, environment: dict[str, str]) -> tuple[int, str]:
        """Run ``script`` in the worker through exec; its exit code and what it printed."""
        code, said = run_recorded(self.api, name, script, environment, LIST_TIMEOUT_SECONDS)
        return code, said.decode(errors="replace")


class PreparedWorkers:
    """The workers this backend made ahead of their task and no attempt has claimed yet."""

    def __init__(self) -> None:
        """None yet."""
        self._lock = threading.Lock()
        self._ready: set[str] = set()

    def add(self, name: str) -> None:
        """``name`` is made and started, with no command yet."""
        with self._lock:
            self._ready.add(name)

    def claim(self, name: str) -> bool:
        """Take ``name`` for its attempt; False when it is not a prepared worker (any more)."""
        with self._lock:
            if name in self._ready:
                self._ready.discard(name)
                return True
            return False

    def forget(self, name: str) -> None:
        """``name`` is deleted."""
        with self._lock:
            self._ready.discard(name)
