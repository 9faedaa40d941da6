"""The LXD daemon: install it (snap or deb), start it, and its HTTPS listener."""

import subprocess
import time
from pathlib import Path
from typing import Any

import pylxd
import pylxd.exceptions

from .. import constants
from ..config import HostConfig
from ..lxdclient import LXDUnavailableError, connect, socket_path
from .system import StepLog

HTTPS_OWNER_KEY = constants.CONFIG_KEY_PREFIX + "https-address"
LXD_START_TIMEOUT = 120.0


def _answering_client() -> pylxd.Client | None:
    try:
        client = connect()
        client.host_info  # noqa: B018 - a round trip proves the daemon answers
    except (LXDUnavailableError, pylxd.exceptions.LXDAPIException, OSError):
        return None
    return client


def _run(command: list[str], log: StepLog, option: str, what: str) -> bool:
    try:
        subprocess.run(command, check=True, capture_output=True)
    except (subprocess.CalledProcessError, OSError) as err:
        detail = getattr(err, "stderr", b"") or str(err).encode()
        log.problems.append(
            f"{option}: {what} failed ({' '.join(command)}): "
            f"{detail.decode(errors='replace').strip()[-300:]}"
        )
        return False
    return True


def ensure_daemon(config: HostConfig, log: StepLog) -> pylxd.Client | None:
    """Return a client of a daemon that answers, installing and starting LXD when needed."""
    client = _answering_client()
    if client is not None:
        return client
    use_snap = config.lxd_source == "snap" or (
        config.lxd_source == "auto" and Path(constants.SNAP).exists()
    )
    installed = Path(constants.LXD_SNAP_BIN).exists() or Path(constants.LXD_DEB_BIN).exists()
    if not installed:
        if use_snap and not Path(constants.SNAP).exists():
            log.problems.append(
                "lxd-source: snap was asked for but snapd is not installed; install snapd "
                "or set lxd-source=deb"
            )
            return None
        command = (
            [constants.SNAP, "install", "lxd", "--channel", config.lxd_snap_channel]
            if use_snap
            else [constants.APT_GET, "install", "-y", "lxd"]
        )
        origin = f"snap {config.lxd_snap_channel}" if use_snap else "deb"
        log.changes.append(f"installed LXD ({origin})")
        if log.dry_run:
            return None
        if not _run(command, log, "lxd-source", "installing LXD"):
            return None
    log.changes.append("started the LXD daemon")
    if log.dry_run:
        log.notes.append("LXD is not running: the other steps are checked once it is")
        return None
    _start_daemon(log)
    deadline = time.monotonic() + LXD_START_TIMEOUT
    while time.monotonic() < deadline:
        client = _answering_client()
        if client is not None:
            return client
        time.sleep(1.0)
    log.problems.append(
        f"lxd-source: LXD did not answer within {LXD_START_TIMEOUT:.0f}s of starting; "
        f"see {constants.LXD_LOG_FILE} or the lxd service's journal"
    )
    return None


def _start_daemon(log: StepLog) -> None:
    snap = Path(constants.LXD_SNAP_BIN).exists()
    if Path("/run/systemd/system").exists():
        unit = "snap.lxd.daemon" if snap else "lxd"
        _run([constants.SYSTEMCTL, "start", unit], log, "lxd-source", "starting LXD")
        return
    binary = constants.LXD_SNAP_BIN if snap else constants.LXD_DEB_BIN
    command = [binary, "--group", "root", "--logfile", str(constants.LXD_LOG_FILE)]
    subprocess.Popen(  # detached daemon: no shell, its own session, no inherited pipes
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def restart_daemon(log: StepLog) -> None:
    """Restart LXD so that it reads new subuid/subgid ranges (or say how to)."""
    if log.dry_run:
        log.changes.append("restarted LXD to read the new id ranges")
        return
    if not Path("/run/systemd/system").exists():
        log.notes.append(
            "LXD must be restarted to use the new id ranges; there is no systemd here: "
            "stop the daemon and start it again (scripts/setup-host)"
        )
        return
    socket = socket_path()
    snap = socket is not None and str(socket).startswith("/var/snap/")
    command = (
        [constants.SNAP, "restart", "lxd"] if snap else [constants.SYSTEMCTL, "restart", "lxd"]
    )
    if _run(command, log, "max-parallel-workers", "restarting LXD"):
        log.changes.append("restarted LXD to read the new id ranges")


def ensure_https(client: pylxd.Client, config: HostConfig, log: StepLog) -> None:
    """Set core.https_address from lxd-listen-https; unset it only when we had set it."""
    server = client.host_info["config"]
    current = server.get("core.https_address", "")
    owned = server.get(HTTPS_OWNER_KEY, "") != ""
    wanted = config.lxd_listen_https
    updates: dict[str, Any] = {}
    if wanted and (current != wanted or not owned):
        updates = {"core.https_address": wanted, HTTPS_OWNER_KEY: wanted}
        if current != wanted:
            log.changes.append(f"LXD listens on {wanted}")
    elif not wanted and owned:
        updates = {"core.https_address": None, HTTPS_OWNER_KEY: None}
        log.changes.append(f"LXD no longer listens on {current or 'the network'}")
    if not updates or log.dry_run:
        return
    try:
        client.api.patch(json={"config": updates})
    except pylxd.exceptions.LXDAPIException as err:
        log.problems.append(f"lxd-listen-https: LXD refused {wanted or 'the unset'}: {err}")
