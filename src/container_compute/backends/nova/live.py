"""A running Nova task's output as its server mirrors it to the console.

The task script (``nova-task.sh.j2``) copies the first ``NOVA_LIVE_BYTES`` of the task's
stdout and of its stderr to the console while the command runs, whole lines only, each as
``CC-LIVE <tag> <stream> <offset> <line>``. ``live_bytes`` rebuilds a stream from those lines
from a byte offset; ``NovaLiveOutput`` reads a server's console for it, at most once a second
per server, as Nova serves it (its last 100 KiB). What the console cannot show (bytes past
``NOVA_LIVE_BYTES``, a line not ended yet, lines Nova no longer keeps) comes once the task
ended, from its results.
"""

import re
import time
from typing import Any

from novaclient import exceptions as nova_exceptions

from .api import NovaApi

CONSOLE_READ_SECONDS = 1.0
_LIVE_RE = re.compile(r"^CC-LIVE (?P<tag>\S+) (?P<stream>stdout|stderr) (?P<at>\d{1,12})(?: |$)")


def live_bytes(console: str, tag: str, stream: str, offset: int, limit: int) -> bytes | None:
    """Up to ``limit`` bytes of attempt ``tag``'s ``stream`` from ``offset``, as mirrored.

    None when the console no longer holds the line that has ``offset`` (b"": nothing new).
    """
    out = bytearray()
    at = offset
    for line in console.replace("\r", "").split("\n"):
        found = _LIVE_RE.match(line)
        if found is None or found["tag"] != tag or found["stream"] != stream:
            continue
        start = int(found["at"])
        data = line[found.end() :].encode() + b"\n"
        if start + len(data) <= at:
            continue
        if start > at:  # the lines before it are gone from the console
            return bytes(out) or None
        out += data[at - start :]
        at = start + len(data)
        if len(out) >= limit:
            break
    return bytes(out[:limit])


class NovaLiveOutput:
    """Reads the mirrored output of attempts running as Nova servers."""

    def __init__(self, api: NovaApi) -> None:
        """Read consoles through ``api``."""
        self.api = api
        self._servers: dict[str, Any] = {}
        self._consoles: dict[str, tuple[float, str]] = {}

    def read(
        self, worker: str, attempt: str, stream: str, offset: int, limit: int
    ) -> bytes | None:
        """Up to ``limit`` bytes of ``stream`` of server ``worker`` from ``offset``.

        ``attempt`` is not needed: a server runs one attempt, tagged with its name. None when
        it cannot be read now (no such server, no console yet, the lines are gone).
        """
        console = self._console(worker)
        if console is None:
            return None
        return live_bytes(console, worker, stream, offset, limit)

    def _console(self, name: str) -> str | None:
        cached = self._consoles.get(name)
        if cached is not None and time.monotonic() - cached[0] < CONSOLE_READ_SECONDS:
            return cached[1]
        try:
            server = self._servers.get(name)
            if server is None:
                found = self.api.client.servers.list(search_opts={"name": f"^{re.escape(name)}$"})
                if len(found) != 1:
                    return None
                server = self._servers[name] = found[0]
            console = self.api.client.servers.get_console_output(server) or ""
        except nova_exceptions.ClientException:
            return None
        self._consoles[name] = (time.monotonic(), console)
        return console
