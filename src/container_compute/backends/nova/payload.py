"""A task's round trip through a Nova server: user-data out, console payload back.

``user_data`` renders the task script (template ``nova-task.sh.j2``): it runs the command with
the same environment as the LXD backend and prints, between markers of the attempt
(``CC-BEGIN <tag>`` ... ``CC-END <tag> <sha256>``), a ``CC-RESULT`` line (exit code, payload
size and SHA-256, whether it was cut to the console cap) and the payload: base64 of a gzipped
tar of ``stdout``, ``stderr``, ``exit_code`` and ``results.tar`` (a tar of /results).

``parse_console`` finds the payload in a console log (Nova returns only its last 100 KiB, a pty
may add carriage returns) and accepts it only whole: its size and checksum must match, or it
is reported incomplete or corrupt, never taken for the task's output. ``unpack`` writes it into
a staging tree that ``gather.gather_task`` then copies with its caps and path safety.
"""

import base64
import binascii
import hashlib
import io
import os
import re
import shlex
import tarfile
import zlib
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from ...constants import (
    ENV_NAME_RE,
    NOVA_LIVE_BYTES,
    REDACTED,
    RESULTS_DIR_IN_WORKER,
    SCRIPT_ENV,
    TASK_ENV,
)
from ...rendering import render
from .. import WorkerSpec
from ..gather import split_relative

TEMPLATE = "nova-task.sh.j2"
LINGER_SECONDS = 1800
NOVA_USER_DATA_LIMIT = 65535  # bytes of base64, Nova's limit
_RESULT_RE = re.compile(
    r"^exit=(?P<exit>-?\d{1,20}) size=(?P<size>\d{1,20}) sha256=(?P<sha>[0-9a-f]{64}) "
    r"truncated=(?P<truncated>[01]) full=(?P<full>\d{1,20})$"
)
_BASE64_LINE_RE = re.compile(r"^[A-Za-z0-9+/=]*$")
_OUTER_MEMBERS = ("stdout", "stderr", "exit_code", "results.tar")
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
REDACTED_USER_DATA = "<user-data>"
_MIN_REDACTED_CHARS = 4  # a shorter value would blank out ordinary numbers and words
_BASE64_RUN_RE = re.compile(r"[A-Za-z0-9+/]{16,}=*")


class PayloadState(str, Enum):
    """What a console log holds of an attempt's payload."""

    ABSENT = "absent"
    STARTED = "started"
    PARTIAL = "partial"
    COMPLETE = "complete"
    CORRUPT = "corrupt"


@dataclass
class ConsolePayload:
    """An attempt's payload as found in a console log."""

    state: PayloadState
    exit_code: int | None = None
    data: bytes = b""
    truncated: bool = False
    full_size: int = 0
    detail: str = ""


def attempt_tag(spec: WorkerSpec) -> str:
    """The marker tag of an attempt: its worker name (unique per job, task and attempt)."""
    return spec.worker_name


def user_data(spec: WorkerSpec, cap_bytes: int, linger_seconds: int = LINGER_SECONDS) -> str:
    """Render the task script of an attempt (every value shell-quoted).

    Raises:
        ValueError: an environment name is invalid or a value holds a NUL byte.
    """
    env = {"RESULTS_DIR": RESULTS_DIR_IN_WORKER, **spec.env}
    for key, value in env.items():
        if not ENV_NAME_RE.match(key) or key in SCRIPT_ENV:
            raise ValueError(f"environment variable name {key!r} is not allowed")
        if "\0" in value:
            raise ValueError(f"environment variable {key} contains a NUL byte")
    if "\0" in spec.command or not spec.command.strip():
        raise ValueError("the command is empty or contains a NUL byte")
    return render(
        TEMPLATE,
        tag=attempt_tag(spec),
        env=[(key, shlex.quote(value)) for key, value in sorted(env.items())],
        command=shlex.quote(spec.command),
        cap=int(cap_bytes),
        linger=int(linger_seconds),
        live_cap=NOVA_LIVE_BYTES,
    )


def redact(text: str, spec: WorkerSpec, script: str = "") -> str:
    """Return ``text`` with the values of the job's environment replaced by ``<redacted>``.

    For messages that may echo what Nova was sent: the task script ``script`` (user-data)
    and any stretch of its base64 (how the request carries it) become ``<user-data>``; each
    value, bare or shell-quoted, becomes ``<redacted>``. Names stay; so do the engine's own
    variables (TASK_INDEX...) and values under 4 characters.
    """
    if script:
        encoded = base64.b64encode(script.encode()).decode()
        text = text.replace(script, REDACTED_USER_DATA)
        text = _BASE64_RUN_RE.sub(
            lambda run: REDACTED_USER_DATA if run.group() in encoded else run.group(), text
        )
    values = [v for k, v in spec.env.items() if k not in TASK_ENV]
    forms = {f for v in values if len(v) >= _MIN_REDACTED_CHARS for f in (shlex.quote(v), v)}
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, REDACTED)
    return text


def user_data_size(text: str) -> int:
    """Bytes of ``text`` once base64-encoded, as Nova counts them against its limit."""
    return len(base64.b64encode(text.encode()))


def _lines(console: str) -> list[str]:
    return console.replace("\r", "").split("\n")


def parse_console(console: str, tag: str) -> ConsolePayload:
    """Find attempt ``tag``'s payload in a console log; accept it only when whole."""
    lines = _lines(console)
    begin = f"CC-BEGIN {tag}"
    end_prefix = f"CC-END {tag} "
    begins = [i for i, line in enumerate(lines) if line == begin]
    ends = [i for i, line in enumerate(lines) if line.startswith(end_prefix)]
    if not begins:
        if ends or any(line.startswith(f"CC-RESULT {tag} ") for line in lines):
            return ConsolePayload(
                PayloadState.CORRUPT,
                detail="the payload's start is missing from the console log (Nova keeps only "
                "its last 100 KiB: was the console flooded?)",
            )
        started = any(line == f"CC-START {tag}" for line in lines)
        return ConsolePayload(PayloadState.STARTED if started else PayloadState.ABSENT)
    first = begins[-1]
    last = next((i for i in ends if i > first), None)
    # Console chatter (kernel, init) may land between the markers: the first CC-RESULT line
    # after CC-BEGIN is taken, and lines that cannot be base64 are left out of the payload
    # (its size and checksum still decide whether it is whole).
    result_prefix = f"CC-RESULT {tag} "
    stop = len(lines) if last is None else last
    result = next((i for i in range(first + 1, stop) if lines[i].startswith(result_prefix)), None)
    if result is None:
        if last is None:
            return ConsolePayload(PayloadState.PARTIAL)
        return ConsolePayload(PayloadState.CORRUPT, detail="no CC-RESULT line before CC-END")
    match = _RESULT_RE.match(lines[result][len(result_prefix) :].strip())
    if match is None:
        return ConsolePayload(PayloadState.CORRUPT, detail="malformed CC-RESULT line")
    if last is None:
        return ConsolePayload(PayloadState.PARTIAL, exit_code=int(match["exit"]))
    return _decode(lines[result + 1 : last], lines[last][len(end_prefix) :].strip(), match)


def _decode(body: list[str], end_sum: str, match: re.Match[str]) -> ConsolePayload:
    exit_code = int(match["exit"])
    text = "".join(line.strip() for line in body if _BASE64_LINE_RE.match(line.strip()))
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return ConsolePayload(
            PayloadState.CORRUPT, exit_code, detail="the payload is not valid base64"
        )
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != int(match["size"]) or digest != match["sha"] or end_sum != match["sha"]:
        return ConsolePayload(
            PayloadState.CORRUPT,
            exit_code,
            detail=f"the payload does not match its size or checksum ({len(data)} bytes read, "
            f"{match['size']} sent)",
        )
    return ConsolePayload(
        PayloadState.COMPLETE,
        exit_code,
        data,
        truncated=match["truncated"] == "1",
        full_size=int(match["full"]),
    )


class _Budget:
    """Bytes left to write while unpacking (decompression cannot exceed the task's cap)."""

    def __init__(self, limit: int) -> None:
        self.left = limit
        self.cut = False

    def copy(self, source: io.BufferedIOBase, target_fd: int) -> None:
        while True:
            chunk = source.read(min(1 << 16, max(self.left, 0) + 1))
            if not chunk:
                return
            if len(chunk) > self.left:
                chunk = chunk[: self.left]
                self.cut = True
            os.write(target_fd, chunk)
            self.left -= len(chunk)
            if self.cut:
                return


def _write_member(
    archive: tarfile.TarFile, member: tarfile.TarInfo, target: Path, budget: _Budget
) -> None:
    stream = archive.extractfile(member)
    if stream is None:
        return
    fd = os.open(target, _FILE_FLAGS, 0o644)
    try:
        budget.copy(stream, fd)  # type: ignore[arg-type]
    finally:
        os.close(fd)


def _extract_results(data: io.BufferedIOBase, root: Path, budget: _Budget) -> list[str]:
    """Extract a tar of /results into ``root``: directories and regular files only."""
    skipped: list[str] = []
    root.mkdir()
    with tarfile.open(fileobj=data, mode="r|") as archive:
        for member in archive:
            name = member.name
            while name.startswith("./"):
                name = name[2:]
            name = name.rstrip("/")
            if name in ("", "."):
                continue
            try:
                parts = split_relative(name)
            except ValueError:
                skipped.append(f"files/{member.name} (unsafe name)")
                continue
            if len(parts) > 64:
                skipped.append(f"files/{name} (too deep)")
                continue
            target = root.joinpath(*parts)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif member.isreg():
                target.parent.mkdir(parents=True, exist_ok=True)
                if target.parent.is_symlink() or target.exists():
                    skipped.append(f"files/{name} (duplicate)")
                    continue
                _write_member(archive, member, target, budget)
            else:
                skipped.append(f"files/{name} (not a regular file)")
    return skipped


def unpack(data: bytes, staging: Path, cap_bytes: int) -> tuple[list[str], bool]:
    """Unpack a complete payload into ``staging`` (stdout, stderr, results/).

    Returns what was skipped (links, devices, unsafe names) and whether the cap cut anything
    while decompressing.

    Raises:
        ValueError: the payload is not a gzipped tar of the expected members.
    """
    budget = _Budget(cap_bytes + 1)
    skipped: list[str] = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as outer:
            for member in outer.getmembers():
                if member.name not in _OUTER_MEMBERS or not member.isreg():
                    skipped.append(f"{member.name} (unexpected in the payload)")
                    continue
                if member.name == "exit_code":
                    continue  # the exit code is the CC-RESULT line's: this copy is not read
                if member.name == "results.tar":
                    inner = outer.extractfile(member)
                    if inner is not None:
                        skipped += _extract_results(inner, staging / "results", budget)  # type: ignore[arg-type]
                else:
                    _write_member(outer, member, staging / member.name, budget)
    except (OSError, EOFError, tarfile.TarError, zlib.error) as err:
        raise ValueError(f"the payload is not a gzipped tar: {err}") from err
    if not (staging / "results").exists():
        (staging / "results").mkdir()
    return skipped, budget.cut
