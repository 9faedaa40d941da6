"""Reading what a task left in its worker's ``/run/cc``: never trusted, never raising.

The task owns its worker: it may write anything into ``/run/cc/exit_code`` or
``/run/cc/pid`` (huge or negative numbers, text, binary bytes), or put a directory, a fifo or
a link there. These functions turn such bytes into a valid value or into a short, printable
sentence that says what was found; they never raise.
"""

import re

MAX_EXIT_STATUS = 255
MAX_PID = 1 << 22  # the kernel's PID_MAX_LIMIT
SHOWN_BYTES = 24
_NUMBER_RE = re.compile(rb"[ \t\r\n]*([0-9]{1,12})[ \t\r\n]*")


def shown(data: bytes, limit: int = SHOWN_BYTES) -> str:
    """Return ``data`` as printable ASCII (``b'...'`` form), at most about 2 * ``limit`` long."""
    text = repr(data[:limit])
    if len(text) > 2 * limit:
        return text[: 2 * limit] + "..."
    return text + ("..." if len(data) > limit else "")


def _number(data: bytes) -> int | None:
    """Return the one decimal number (ASCII digits, blanks around) in ``data``, else None."""
    match = _NUMBER_RE.fullmatch(data)
    return int(match.group(1)) if match else None


def parse_exit_status(data: bytes | None) -> tuple[int | None, str | None]:
    """Parse the bytes of ``/run/cc/exit_code``.

    Returns:
        ``(code, None)`` for an exit status 0..255; ``(None, None)`` when there is nothing yet
        (no file, or an empty one); ``(None, problem)`` when the file holds something else,
        ``problem`` saying what, shortened and printable.
    """
    if data is None or not data.strip(b" \t\r\n"):
        return None, None
    code = _number(data)
    if code is not None and code <= MAX_EXIT_STATUS:
        return code, None
    return None, f"the exit code file holds {shown(data)}, not an exit status 0..255"


def parse_pid(data: bytes | None) -> tuple[int | None, str | None]:
    """Parse the bytes of ``/run/cc/pid`` (the wrapper's pid inside the worker).

    Returns:
        ``(pid, None)`` for a pid 1..4194304; ``(None, None)`` when there is nothing yet;
        ``(None, problem)`` when the file holds something else.
    """
    if data is None or not data.strip(b" \t\r\n"):
        return None, None
    pid = _number(data)
    if pid is not None and 0 < pid <= MAX_PID:
        return pid, None
    return None, f"the wrapper's pid file holds {shown(data)}, not a pid"


def event_count(text: str | None, key: str) -> int:
    """Return the count of ``key`` in a cgroup ``<key> <count>`` file (0 when absent or bad)."""
    if not text:
        return 0
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            value = value.strip()
            if value.isascii() and value.isdigit() and len(value) <= 19:
                return int(value)
            return 0
    return 0
