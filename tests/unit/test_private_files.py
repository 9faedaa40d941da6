"""Private files, the LXD key and the job's environment: nothing leaks to other local users.

Private files are 0600 from their first byte (whatever the umask) and written whole; PEM text
of the lxd-* options is kept in the state directory, never under /tmp; the command line
refuses a key given as PEM text; no value of a job's environment reaches a message, a log
line or an outcome detail of the Nova backend, even when Nova echoes the user-data.
"""

import base64
import logging
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from novaclient import exceptions as nova_exceptions

from container_compute import cli, host, identity, lxdclient
from container_compute.backends import FailureReason, LaunchError, WorkerSpec, open_backend
from container_compute.backends.nova import api as nova_api
from container_compute.backends.nova import payload
from container_compute.backends.nova.backend import NovaBackend
from container_compute.backends.nova.servers import META_JOB
from container_compute.config import HostConfig
from container_compute.constants import STATE_DIR_ENV
from container_compute.jobs import results
from container_compute.jobs.scheduler import AttemptThreads, follow_attempt
from container_compute.privatefiles import update_private, write_private

KEY = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIK3y\n-----END EC PRIVATE KEY-----\n"
SECRET = "s3cr3t-T0ken-value-42"


# 1. One helper for atomic private writes -------------------------------------------------


def _mode(path: Path | int) -> int:
    info = os.fstat(path) if isinstance(path, int) else os.lstat(path)
    return stat.S_IMODE(info.st_mode)


@pytest.fixture
def seen_modes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Under umask 0, the mode of every file as it is chmod-ed, synced or renamed into place."""
    modes: list[int] = []
    real_chmod, real_fchmod, real_fsync, real_replace = os.chmod, os.fchmod, os.fsync, os.replace

    def chmod(path: Any, mode: int, **kwargs: Any) -> None:
        modes.append(_mode(Path(path)))
        real_chmod(path, mode, **kwargs)

    def fchmod(fd: int, mode: int) -> None:
        modes.append(_mode(fd))
        real_fchmod(fd, mode)

    def fsync(fd: int) -> None:
        modes.append(_mode(fd))
        real_fsync(fd)

    def replace(source: Any, target: Any, **kwargs: Any) -> None:
        modes.append(_mode(Path(source)))
        real_replace(source, target, **kwargs)

    monkeypatch.setattr(os, "chmod", chmod)
    monkeypatch.setattr(os, "fchmod", fchmod)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    old = os.umask(0)
    try:
        yield modes
    finally:
        os.umask(old)


def _only(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_write_private_is_0600_from_the_first_byte_and_leaves_no_temporary(
    tmp_path: Path, seen_modes: list[int]
) -> None:
    target = tmp_path / "state" / "secret.txt"

    write_private(target, "one\n")
    write_private(target, "two\n")

    assert target.read_text() == "two\n"
    assert _mode(target) == 0o600
    assert _mode(target.parent) == 0o700
    assert seen_modes and all(mode == 0o600 for mode in seen_modes)
    assert _only(target.parent) == ["secret.txt"]


def test_write_private_is_exactly_0600_under_a_strict_umask(tmp_path: Path) -> None:
    old = os.umask(0o277)
    try:
        write_private(tmp_path / "f", "text")
    finally:
        os.umask(old)

    assert _mode(tmp_path / "f") == 0o600


def test_write_private_tightens_a_loose_file_and_replaces_a_symlink_not_its_target(
    tmp_path: Path,
) -> None:
    loose = tmp_path / "loose"
    loose.write_text("old")
    loose.chmod(0o644)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("untouched")
    link = tmp_path / "link"
    link.symlink_to(elsewhere)

    write_private(loose, "new")
    write_private(link, "new")

    assert (loose.read_text(), _mode(loose)) == ("new", 0o600)
    assert not link.is_symlink() and link.read_text() == "new"
    assert elsewhere.read_text() == "untouched"


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "f"
    write_private(target, "old")

    def broken(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError, match="No space"):
        write_private(target, "new")

    assert target.read_text() == "old"
    assert _only(tmp_path) == ["f"]


def test_update_private_writes_only_a_change() -> None:
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / "f"
        assert update_private(target, "a") is True
        assert update_private(target, "a") is False
        target.chmod(0o644)
        assert update_private(target, "a") is True and _mode(target) == 0o600


def _credentials() -> identity.KeystoneCredentials:
    data = {
        "credentials_host": "10.0.0.1",
        "credentials_port": "5000",
        "credentials_protocol": "http",
        "credentials_username": "svc",
        "credentials_password": "pw-not-shown",
        "credentials_project": "services",
        "api_version": "2",
        "region": "RegionOne",
    }
    found = identity.from_relation_data(data)
    assert found is not None
    return found


WRITERS: dict[str, Callable[[Path], Path]] = {
    "host-config": lambda d: (host.save_config(HostConfig(), d), d / "host-config.json")[1],
    "client-key": lambda d: host.store_client_key(d, KEY),
    "credentials": lambda d: (_credentials().save(d / "identity.json"), d / "identity.json")[1],
    "clouds-yaml": lambda d: (
        identity.save_clouds_yaml(_credentials(), d / "clouds.yaml"),
        d / "clouds.yaml",
    )[1],
    "identity-check": lambda d: (identity.record_check(d, True, "ok"), d / "identity-check.json")[
        1
    ],
    "outcome": lambda d: (results.write_outcome(d, {"exit": 0}), d / results.OUTCOME_NAME)[1],
    "lxd-pem": lambda d: Path(lxdclient.pem_file(KEY, "lxd-client-key", d)),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_every_private_file_is_0600_from_its_first_byte(
    tmp_path: Path, seen_modes: list[int], writer: str
) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)

    path = WRITERS[writer](state)

    assert _mode(path) == 0o600
    assert seen_modes and all(mode == 0o600 for mode in seen_modes), seen_modes
    assert [p.name for p in state.iterdir() if p.name.startswith(".")] == []


# 2. The LXD client key is kept in the state directory, not under /tmp ------------------


@pytest.fixture
def temp_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh directory standing for /tmp (tempfile.gettempdir())."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def test_pem_text_is_kept_in_the_state_dir_once_and_nothing_under_tmp(
    tmp_path: Path, temp_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"

    first = Path(lxdclient.pem_file(KEY, "lxd-client-key", state))
    written = first.stat().st_mtime_ns
    again = Path(lxdclient.pem_file(KEY, "lxd-client-key", state))

    assert first == again and first.parent == state
    assert first.read_text() == KEY
    assert _mode(first) == 0o600 and _mode(state) == 0o700
    assert again.stat().st_mtime_ns == written  # reused, not written again
    assert list(temp_root.iterdir()) == []


def test_pem_text_goes_to_the_state_dir_of_the_environment_by_default(
    tmp_path: Path, temp_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path / "env-state"))

    path = Path(lxdclient.pem_file(KEY, "lxd-client-key"))

    assert path.parent == tmp_path / "env-state" and _mode(path) == 0o600
    assert list(temp_root.iterdir()) == []


def test_a_state_dir_that_cannot_be_written_names_the_option_not_the_key(
    tmp_path: Path,
) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")

    with pytest.raises(lxdclient.LXDAccessError) as error:
        lxdclient.pem_file(KEY, "lxd-client-key", not_a_dir / "state")

    assert str(error.value).startswith("lxd-client-key: cannot keep its PEM text in ")
    assert "MHcCAQEEIK3y" not in str(error.value)


def test_the_lxd_backend_keeps_pem_text_in_its_state_dir(tmp_path: Path) -> None:
    config = HostConfig(
        lxd_endpoint="https://10.1.2.3:8443",
        lxd_client_cert="/c.crt",
        lxd_client_key="/k.pem",
        lxd_server_cert="/s.crt",
    )

    backend: Any = open_backend("lxd", config, tmp_path / "state")

    assert backend.api.endpoint.state_dir == tmp_path / "state"
    assert lxdclient.endpoint_of(config) == lxdclient.Endpoint(
        "https://10.1.2.3:8443", "/c.crt", "/k.pem", "/s.crt"
    )


# 3. The command line refuses a key given as PEM text -----------------------------------


@pytest.mark.parametrize("flag", ["--lxd-client-key", "--client-key"])
def test_the_cli_refuses_pem_text_as_the_client_key(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    flag: str,
) -> None:
    called: list[HostConfig] = []
    monkeypatch.setattr(host, "configure_host", lambda config, **_: called.append(config))
    monkeypatch.setattr(host, "save_config", lambda config, state_dir: called.append(config))
    argv = [
        "configure-host",
        "--state-dir",
        str(tmp_path),
        "--lxd-endpoint",
        "https://10.1.2.3:8443",
        "--client-cert",
        "/home/me/client.crt",
        flag,
        KEY,
        "--server-cert",
        "/home/me/cluster.crt",
    ]

    with pytest.raises(SystemExit) as exited:
        cli.main(argv)

    err = capsys.readouterr().err
    assert exited.value.code == cli.EXIT_BAD_PARAMS
    assert "lxd-client-key: " in err and "pass the path of the key file" in err
    assert "MHcCAQEEIK3y" not in err
    assert called == []


# 4. No value of the job's environment in Nova's messages, logs or outcome details --------


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _spec() -> WorkerSpec:
    return WorkerSpec(
        job_id="j0123abcd",
        task_index=0,
        attempt=1,
        image="worker",
        command="echo hi",
        env={"API_TOKEN": SECRET, "PASSPHRASE": "two words here", "TASK_INDEX": "0"},
        results_cap_bytes=1 << 20,
    )


class FakeServers:
    """A stand-in for novaclient's server manager whose create fails as ``fail`` says."""

    def __init__(self, fail: Callable[[str], Exception], listed: list[Any] | None = None) -> None:
        self.fail = fail
        self.listed = listed or []
        self.userdata = ""

    def list(self, detailed: bool = True, search_opts: Any = None) -> list[Any]:
        return self.listed

    def create(self, name: str, image: str, flavor: Any, **kwargs: Any) -> Any:
        self.userdata = kwargs["userdata"]
        raise self.fail(self.userdata)


def _nova(servers: FakeServers) -> NovaBackend:
    backend = NovaBackend(HostConfig(nova_flavor="m1.small"), session=None, poll_seconds=0.0)
    flavor = SimpleNamespace(id="f1", name="m1.small")
    backend.api._local.client = SimpleNamespace(
        servers=servers,
        flavors=SimpleNamespace(list=lambda is_public=None: [flavor]),
        glance=SimpleNamespace(find_image=lambda name: SimpleNamespace(id="image-1")),
    )
    return backend


def _around_secret(userdata: str) -> str:
    """A stretch of the user-data's base64 that encodes the secret (a partial echo)."""
    start = userdata.index(SECRET) // 3 * 4
    return _b64(userdata)[max(0, start - 40) : start + 80]


ECHOES: dict[str, Callable[[str], Exception]] = {
    "base64 user-data": lambda ud: nova_exceptions.BadRequest(
        400, f"Invalid input for field/attribute user_data. Value: {_b64(ud)}. is too long"
    ),
    "part of its base64": lambda ud: nova_exceptions.BadRequest(
        400, f"Invalid user_data near '{_around_secret(ud)}'"
    ),
    "raw user-data": lambda ud: nova_exceptions.BadRequest(400, f"bad user data:\n{ud}"),
    "a value": lambda ud: nova_exceptions.BadRequest(
        400, f"refused API_TOKEN={SECRET} and PASSPHRASE='two words here'"
    ),
    "not a Nova error": lambda ud: RuntimeError(f"request failed with body {ud!r}"),
}


@pytest.mark.parametrize("echo", sorted(ECHOES))
def test_a_create_nova_refuses_with_an_echo_gives_no_value(echo: str) -> None:
    servers = FakeServers(ECHOES[echo])
    backend = _nova(servers)

    with pytest.raises(LaunchError) as error:
        backend.start(_spec())

    message = str(error.value)
    assert message.startswith("creating server cc-j0123abcd-0-1: ")
    assert SECRET not in message and "two words here" not in message
    assert _around_secret(servers.userdata) not in message
    assert error.value.__cause__ is None and error.value.__suppress_context__
    if echo == "a value":
        assert "API_TOKEN=<redacted> and PASSPHRASE=<redacted>" in message
    if echo in ("base64 user-data", "raw user-data", "part of its base64"):
        assert payload.REDACTED_USER_DATA in message


def test_the_attempts_outcome_detail_and_the_log_have_no_value(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    backend = _nova(FakeServers(ECHOES["raw user-data"]))

    followed = follow_attempt(backend, _spec(), tmp_path, False, AttemptThreads(), lambda: None)

    assert followed is not None
    outcome = followed[0]
    assert outcome.reason == FailureReason.LAUNCH_ERROR
    assert outcome.detail.startswith("creating server cc-j0123abcd-0-1: Nova answered 400")
    assert SECRET not in outcome.detail
    assert SECRET not in caplog.text


def test_a_server_fault_echoing_a_value_gives_no_value(tmp_path: Path) -> None:
    spec = _spec()
    server = SimpleNamespace(
        id="s1",
        name=spec.worker_name,
        status="ERROR",
        metadata={META_JOB: spec.job_id},
        fault={"message": f"Build of instance failed: env API_TOKEN={SECRET}"},
    )
    backend = _nova(FakeServers(ECHOES["a value"], listed=[server]))

    outcome = backend.wait(spec, tmp_path, lambda: None)

    assert outcome.reason == FailureReason.LAUNCH_ERROR
    assert outcome.detail.endswith("env API_TOKEN=<redacted>")


def test_novas_http_debug_lines_never_show_the_user_data(
    caplog: pytest.LogCaptureFixture,
) -> None:
    encoded = _b64(f"export API_TOKEN={SECRET}\n")
    caplog.set_level(logging.DEBUG, logger=nova_api.http_logger.name)

    nova_api.http_logger.debug(
        "REQ: curl -g -i -X POST http://nova/v2.1/servers -d '%s'",
        '{"server": {"name": "cc-j1-0-1", "user_data": "' + encoded + '"}}',
    )
    nova_api.http_logger.debug(
        'RESP BODY: {"server": {"OS-EXT-SRV-ATTR:user_data": "' + encoded + '"}}'
    )

    assert encoded not in caplog.text
    assert caplog.text.count('user_data": "<redacted>"') == 2
    assert "cc-j1-0-1" in caplog.text


def test_redaction_keeps_the_engines_own_values_and_short_ones() -> None:
    spec = _spec()

    text = payload.redact(f"cc-j0123abcd-0-1 TASK_INDEX=0 token {SECRET}", spec)

    assert text == "cc-j0123abcd-0-1 TASK_INDEX=0 token <redacted>"
