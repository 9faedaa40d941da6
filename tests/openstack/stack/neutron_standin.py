"""STAND-IN for Neutron (Neutron itself does not run here): only what Nova asks of it.

Servers booted with ``nics='none'`` need from Neutron empty answers to its listings; the
metadata API needs one lookup: the guest (which shares the host's network namespace, being
a libvirt-lxc container without a NIC) sends its instance UUID as X-Forwarded-For, and
``ports?fixed_ips=ip_address=<uuid>`` answers with a port whose device is that instance.
Any network or port asked for by id does not exist (404), which is how Nova reports an
unknown network. Standard library only: run as ``python neutron_standin.py PORT``.
"""

import json
import re
import sys
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
COLLECTION_RE = re.compile(r"^/v2\.0/([a-z_-]+)(?:/([^/]+))?$")


class Handler(BaseHTTPRequestHandler):
    """Answers Neutron v2.0 reads; writes are refused, deletes succeed."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        """Log to stderr (the stack's log file)."""
        sys.stderr.write("neutron-standin " + format % args + "\n")

    def _send(self, body: object, status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        """Version document, empty collections, the metadata port lookup, 404 by id."""
        url = urlparse(self.path)
        path = url.path.rstrip("/")
        if path == "":
            self._send({"versions": [{"id": "v2.0", "status": "CURRENT", "links": []}]})
            return
        match = COLLECTION_RE.match(path)
        if not match:
            self._send({"NeutronError": {"type": "NotFound", "message": "not found"}}, 404)
            return
        collection, ident = match.groups()
        if ident:
            message = f"{collection[:-1]} {ident} could not be found"
            self._send({"NeutronError": {"type": "NotFound", "message": message}}, 404)
            return
        items = []
        if collection == "ports":
            for fixed in parse_qs(url.query).get("fixed_ips", []):
                address = fixed.split("=", 1)[-1]
                if UUID_RE.match(address):
                    items.append(
                        {
                            "id": str(uuid.uuid4()),
                            "device_id": address,
                            "device_owner": "compute:nova",
                            "fixed_ips": [{"ip_address": address, "subnet_id": None}],
                            "network_id": None,
                        }
                    )
        self._send({collection: items})

    def do_POST(self) -> None:
        """Nothing can be created here."""
        self._send({"NeutronError": {"type": "BadRequest", "message": "read-only stand-in"}}, 400)

    do_PUT = do_POST  # noqa: N815 - the name http.server looks up

    def do_DELETE(self) -> None:
        """Deleting anything succeeds."""
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
