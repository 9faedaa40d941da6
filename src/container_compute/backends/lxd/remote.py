"""Following workers the host cannot see (an LXD endpoint, another cluster member).

``RemoteAttemptWatcher`` is the watcher with no host access: everything goes through the API.
There the worker is stopped before its exit code is read (so that nothing of the task can
swap or hold the file), which also ends what LXD shows of its memory. Just before any stop
(whether the command wrote its exit code or its shell was killed first), it notes the
worker's memory peak (``usage_peak`` of the instance state), which
``explain_remote_oom`` then compares with the worker's limit: no cgroup OOM counter is
visible remotely, so a command killed by SIGKILL (137) with the memory at its limit is taken
as an OOM kill. The process limit (forks refused) has no such trace in the API and is not
told apart remotely.
"""

import threading

import pylxd
import pylxd.exceptions
import requests

from ...units import parse_size
from .. import FailureReason, TaskOutcome, WorkerSpec
from .api import LXDApi
from .watch import AttemptWatcher

OOM_EXIT_CODE = 137  # the shell's status for a command killed by SIGKILL (the OOM killer's)
OOM_PEAK_FRACTION = 0.9


class RemoteAttemptWatcher(AttemptWatcher):
    """An AttemptWatcher reading through the API only, noting memory peaks before stops."""

    def __init__(self, api: LXDApi) -> None:
        """Watch through ``api`` only."""
        super().__init__(api, host_access=False)
        self._peaks: dict[str, int] = {}
        self._lock = threading.Lock()

    def stop(self, name: str) -> None:
        """Note the worker's memory peak, then stop it (a stop ends what LXD shows of it).

        Every stop of a watched worker comes here, whatever ended its attempt: an exit code
        written, the task's shell killed before it could write one, a timeout.
        """
        with self._lock:
            noted = name in self._peaks
        if not noted:
            peak = memory_peak(self.api, name)
            if peak is not None:
                with self._lock:
                    self._peaks[name] = peak
        super().stop(name)

    def take_peak(self, worker: str) -> int | None:
        """The memory peak noted for ``worker`` (forgotten once taken)."""
        with self._lock:
            return self._peaks.pop(worker, None)


def memory_peak(api: LXDApi, worker: str) -> int | None:
    """The worker's memory peak in bytes as LXD's state shows it; None where it shows none."""
    try:
        state = api.client.api.instances[worker].state.get().json()["metadata"]
    except (pylxd.exceptions.LXDAPIException, requests.exceptions.RequestException):
        return None
    peak = ((state or {}).get("memory") or {}).get("usage_peak")
    return peak if isinstance(peak, int) and peak > 0 else None


def explain_remote_oom(
    api: LXDApi, spec: WorkerSpec, outcome: TaskOutcome, peak: int | None
) -> TaskOutcome:
    """Tell an OOM kill of a remote worker from its memory peak and limit (see the module)."""
    if outcome.reason != FailureReason.EXIT_CODE or outcome.exit_code not in (OOM_EXIT_CODE, None):
        return outcome
    try:
        record = api.client.api.instances[spec.worker_name].get().json()["metadata"]
    except (pylxd.exceptions.LXDAPIException, requests.exceptions.RequestException):
        return outcome
    peak = peak if peak is not None else memory_peak(api, spec.worker_name)
    limit_text = (record.get("expanded_config") or {}).get("limits.memory", "")
    try:
        limit = parse_size(limit_text) if limit_text and not limit_text.endswith("%") else 0
    except ValueError:
        limit = 0
    if limit and peak and peak >= OOM_PEAK_FRACTION * limit:
        outcome.reason = FailureReason.OOM
        outcome.detail = (
            f"killed with the worker's memory at its limit ({peak >> 20} MiB of {limit_text}): "
            "an OOM kill, as LXD's API shows it"
        )
    return outcome
