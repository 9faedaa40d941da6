"""Every worker an engine holds, and why: the one place to ask whose a worker is.

A worker of this state dir (its owner id, see ``owner.py``) is held by the engine while:

- an attempt runs in it, from before it is created until it is deleted (``ATTEMPT``);
- it waits between two tasks of its job (a warm worker, ``WARM``: ``warm.WarmPool``);
- it is made, or waits, ahead of its task (a spare, ``SPARE``: ``spares.SpareWorkers``);
- it is made, or waits, ahead of any job (a ready worker, ``READY``: ``ready.ReadyWorkers``);
- it is being deleted (``DELETING``).

The attempt threads, the warm pool and the spares record here what they hold; the reaper
deletes only workers of its owner that nothing here holds and no running attempt names.
A worker changes hands (a spare taken by an attempt, an attempt's worker kept warm): the
new holder records it, and a release by the old one leaves the new one's record alone.
"""

import threading
from enum import Enum


class Role(str, Enum):
    """Why the engine holds a worker."""

    ATTEMPT = "attempt"
    WARM = "warm"
    SPARE = "spare"
    READY = "ready"
    DELETING = "deleting"


class WorkerRegistry:
    """The workers one engine holds, by name, with their job and role."""

    def __init__(self) -> None:
        """Hold nothing yet."""
        self._lock = threading.Lock()
        self._held: dict[str, tuple[str, Role]] = {}

    def hold(self, name: str, job_id: str, role: Role) -> None:
        """Record that the engine holds ``name`` (of ``job_id``) as ``role``."""
        with self._lock:
            self._held[name] = (job_id, role)

    def hold_unless_held(self, name: str, job_id: str, role: Role) -> None:
        """Record ``name`` as ``role`` unless the engine holds it already (in any role)."""
        with self._lock:
            self._held.setdefault(name, (job_id, role))

    def release(self, name: str, role: Role) -> None:
        """Forget ``name`` unless another role holds it now (it changed hands)."""
        with self._lock:
            if self._held.get(name, ("", None))[1] == role:
                del self._held[name]

    def role(self, name: str) -> Role | None:
        """Why the engine holds ``name``; None when it does not."""
        with self._lock:
            held = self._held.get(name)
            return held[1] if held else None

    def names(self, role: Role | None = None, job_id: str | None = None) -> set[str]:
        """The workers held (in one role, of one job)."""
        with self._lock:
            return {
                name
                for name, (job, held_as) in self._held.items()
                if role in (None, held_as) and job_id in (None, job)
            }
