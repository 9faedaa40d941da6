"""Submitting a job: check it against this host, then record it — nothing else.

Checks that need the host (the backend answers, the image exists, the input directory, CPU,
memory and disk limits within the host) run here, before one transaction records the job; a
refused job leaves no trace. A disk limit the worker pool cannot enforce is recorded with the
job as ``disk_note`` (launch-job shows it), not refused.
"""

import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..backends import Backend
from ..config import HostConfig
from ..constants import IMAGE_CONFIG, ISOLATION_NOTE
from ..errors import ActionError
from ..units import parse_size
from .ledger import JobRecord, Ledger
from .model import CONTAINER, SANDBOX
from .params import LaunchJobParams

MEMINFO = Path("/proc/meminfo")
ImageCheck = Callable[[str, str], bool]


def host_cpu_count() -> int:
    """Return the number of CPUs of this host."""
    return os.cpu_count() or 1


def host_memory_bytes(meminfo: Path = MEMINFO) -> int:
    """Return the host's total memory in bytes (from /proc/meminfo)."""
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no MemTotal in {meminfo}")


class JobSubmitter:
    """Validate and record jobs for one host."""

    def __init__(
        self,
        config: HostConfig,
        ledger: Ledger,
        backend: Callable[[str], Backend],
        image_exists: ImageCheck | None = None,
    ) -> None:
        """Check jobs against ``config`` and the backends ``backend(name)`` returns."""
        self.config = config
        self.ledger = ledger
        self.backend = backend
        self._image_exists = image_exists

    def _check_image(self, backend_name: str, image: str) -> bool:
        if self._image_exists is not None:
            return self._image_exists(backend_name, image)
        backend = self.backend(backend_name)
        method = getattr(backend, "image_exists", None)
        if callable(method):
            return bool(method(image))
        from ..backends.lxd import image_exists

        return image_exists(self.config, image)

    def validate(self, params: LaunchJobParams) -> tuple[str, str]:
        """Check a job against this host; return (backend, image).

        Raises:
            ActionError: naming the parameter that cannot work here.
        """
        backend_name = params.backend or self.config.default_backend
        if backend_name == "nova":
            return backend_name, self.validate_nova(params)[0]
        image = params.image or self.config.default_image
        try:
            self.backend(backend_name)
            found = self._check_image(backend_name, image)
        except ActionError:
            raise
        except Exception as err:
            raise ActionError(f"backend: {backend_name} does not answer: {err}") from err
        if not found:
            source = "image" if params.image else "image (the default-image option)"
            raise ActionError(
                f"{source}: {image!r} does not exist in LXD project "
                f"{self.config.lxd_project!r}; build it with build-worker-image"
            )
        if params.input_dir:
            path = Path(params.input_dir)
            if not path.exists():
                raise ActionError(f"input-dir: {params.input_dir} does not exist")
            if not path.is_dir():
                raise ActionError(f"input-dir: {params.input_dir} is not a directory")
        if params.cpu:
            self._check_cpu(params.cpu)
        if params.memory and not params.memory.endswith("%"):
            memory, total = parse_size(params.memory), host_memory_bytes()
            if memory > total:
                raise ActionError(
                    f"memory: {params.memory} is more than this host's {total >> 20} MiB"
                )
        if params.disk:
            self._check_disk(params.disk)
        return backend_name, image

    def _check_disk(self, disk: str) -> None:
        limit = self.config.worker_disk_bytes
        if limit is not None and parse_size(disk) > limit:
            raise ActionError(
                f"disk: {disk} is more than this host's worker-disk of {self.config.worker_disk}"
            )

    def disk_note(self, backend_name: str, disk: str) -> str:
        """Return why a root disk of ``disk`` is not enforced on ``backend_name``; "" if it is.

        Asks the backend's ``disk_limit_note`` method when it has one, else LXD about the
        worker pool. Never raises: a pool that cannot be asked gives a note saying so.
        """
        if not disk:
            return ""
        backend = self.backend(backend_name)
        method = getattr(backend, "disk_limit_note", None)
        if callable(method):
            return str(method(disk))
        from ..backends.lxd import LXDBackend
        from ..backends.lxd.disk import disk_limit_note

        if not isinstance(backend, LXDBackend):
            return ""
        try:
            return disk_limit_note(self.config, disk)
        except Exception as err:  # the note must never refuse a job
            return f"disk {disk}: could not tell whether the worker pool enforces it ({err})"

    def image_config(self, backend_name: str, image: str) -> dict[str, Any] | None:
        """The config an OCI worker image carries (Env, WorkingDir...); None: it has none.

        Asks the backend's ``image_config`` method when it has one (Nova: Glance), else LXD.
        """
        from ..backends.lxd import LXDBackend, image_config

        backend = self.backend(backend_name)
        method = getattr(backend, "image_config", None)
        try:
            if callable(method):
                found = method(image)
                return found if isinstance(found, dict) else None
            if isinstance(backend, LXDBackend):
                return image_config(self.config, image)
        except Exception as err:
            raise ActionError(f"image: cannot read {image!r} ({backend_name}): {err}") from err
        return None

    def validate_nova(self, params: LaunchJobParams) -> tuple[str, list[str]]:
        """Check a job for the Nova backend; return its image and notes on the flavor.

        Raises:
            ActionError: naming the parameter (or option) that cannot work.
        """
        if params.reuse_workers:
            raise ActionError(
                "reuse-workers: not available with backend=nova (every task is a server of "
                "its own)"
            )
        for name, value in (
            ("input-dir", params.input_dir),
            ("cpu", params.cpu),
            ("disk", params.disk),
        ):
            if value:
                raise ActionError(
                    f"{name}: not available with backend=nova (servers get their limits from "
                    "the flavor and cannot mount host directories; pass data with inputs)"
                )
        if params.memory:
            raise ActionError("memory: with backend=nova the flavor sets the memory")
        image = params.image or self.config.nova_image
        if not image:
            raise ActionError("image: no Nova image: set the nova-image option or pass image=")
        try:
            backend = self.backend("nova")
            found = self._check_image("nova", image)
            check: Callable[[dict[str, str]], list[str]] | None = getattr(
                backend, "check_launch", None
            )
            notes = check(params.backend_options) if check is not None else []
        except ValueError as err:
            raise ActionError(str(err)) from err
        except Exception as err:
            raise ActionError(f"backend: nova does not answer: {err}") from err
        if not found:
            source = "image" if params.image else "image (the nova-image option)"
            raise ActionError(
                f"{source}: {image!r} does not exist in Glance; upload one with "
                "build-worker-image target=nova"
            )
        return image, notes

    @staticmethod
    def _check_cpu(cpu: str) -> None:
        cpus = host_cpu_count()
        if cpu.isdigit():
            if int(cpu) > cpus:
                raise ActionError(f"cpu: {cpu} is more than this host's {cpus} CPUs")
            return
        highest = max(int(bound) for part in cpu.split(",") for bound in part.split("-"))
        if highest >= cpus:
            raise ActionError(
                f"cpu: CPU {highest} in {cpu!r} does not exist (this host has CPUs 0-{cpus - 1})"
            )

    def submit(self, params: LaunchJobParams, now: float) -> JobRecord:
        """Validate the job against the host, record it (one transaction) and return it."""
        backend_name = params.backend or self.config.default_backend
        notes: list[str] = []
        if backend_name == "nova":
            image, notes = self.validate_nova(params)
        else:
            backend_name, image = self.validate(params)
        recorded = asdict(params)
        recorded.update(image=image, backend=backend_name)
        isolation = SANDBOX if params.reuse_workers else params.isolation
        if isolation == SANDBOX and (backend_name == "nova" or params.placement):
            isolation = CONTAINER
            recorded[ISOLATION_NOTE] = (
                "no sandboxes with Nova: every task is a server of its own"
                if backend_name == "nova"
                else "placement puts each task on its own member: a fresh worker per task"
            )
        recorded["isolation"] = isolation
        if backend_name == "lxd":
            note = self.disk_note(backend_name, params.disk or self.config.worker_disk)
            if note:
                recorded["disk_note"] = note
        image_config = self.image_config(backend_name, image)
        if image_config:
            recorded[IMAGE_CONFIG] = image_config
        recorded["backend-options"] = params.backend_options
        if notes:
            recorded["notes"] = notes
        job_id = self.ledger.create_job(
            recorded,
            name=params.name,
            backend=backend_name,
            task_count=params.task_count,
            inputs=params.input_lines,
            deadline_seconds=params.deadline_seconds,
            now=now,
        )
        job = self.ledger.job(job_id)
        assert job is not None
        return job
