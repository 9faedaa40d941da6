"""Certificate trust between the hosts of one application (cluster peers)."""

import base64
import hashlib
import ssl
from typing import Any

import pylxd
import pylxd.exceptions

from .. import constants
from .system import HostError


def pem_to_der(unit: str, pem: str) -> bytes:
    """Return the DER bytes of a PEM certificate; HostError naming ``unit`` when it is not one."""
    try:
        return ssl.PEM_cert_to_DER_cert(pem.strip() + "\n")
    except (ValueError, TypeError) as err:
        raise HostError(f"peer {unit}: its certificate is not a PEM certificate") from err


def trusted_certificates(client: pylxd.Client) -> dict[str, dict[str, Any]]:
    """LXD's trust store: name -> {fingerprint, ...} (names are not unique; last one wins)."""
    entries: dict[str, dict[str, Any]] = {}
    listing = client.api.certificates.get(params={"recursion": "1"}).json()["metadata"]
    for entry in listing:
        entries[entry.get("name", "")] = entry
    return entries


def sync_trust(client: pylxd.Client, peers: dict[str, str]) -> list[str]:
    """Add missing peer certificates, replace changed ones, drop ours no longer listed."""
    wanted = {
        constants.TRUST_NAME_PREFIX + unit: pem_to_der(unit, pem) for unit, pem in peers.items()
    }
    current = trusted_certificates(client)
    fingerprints = {entry["fingerprint"] for entry in current.values()}
    own = client.host_info["environment"].get("certificate_fingerprint", "")
    changes = []
    for name, entry in current.items():
        if not name.startswith(constants.TRUST_NAME_PREFIX):
            continue
        if name not in wanted or hashlib.sha256(wanted[name]).hexdigest() != entry["fingerprint"]:
            client.api.certificates[entry["fingerprint"]].delete()
            fingerprints.discard(entry["fingerprint"])
            changes.append(f"removed {name} from LXD's trust store")
    for name, der in wanted.items():
        fingerprint = hashlib.sha256(der).hexdigest()
        if fingerprint in fingerprints or fingerprint == own:
            continue
        client.api.certificates.post(
            json={
                "type": "client",
                "name": name,
                "certificate": base64.b64encode(der).decode(),
            }
        )
        fingerprints.add(fingerprint)
        changes.append(f"trusted {name} ({fingerprint[:12]})")
    return changes
