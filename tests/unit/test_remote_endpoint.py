"""An LXD endpoint from the command line: flags, their short spellings, and lxc's remotes."""

from pathlib import Path
from typing import Any

import pytest

from container_compute import cli, host
from container_compute.config import HostConfig
from container_compute.lxdclient import LXDAccessError, endpoint_of, lxc_remote

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def lxc_config(folder: Path, remotes: dict[str, str], servercerts: tuple[str, ...]) -> Path:
    folder.mkdir(parents=True)
    lines = ["default-remote: local", "remotes:"]
    for name, addr in remotes.items():
        lines += [f"  {name}:", f"    addr: {addr}", "    protocol: lxd", "    auth_type: tls"]
    (folder / "config.yml").write_text("\n".join(lines) + "\n")
    (folder / "client.crt").write_text(PEM)
    (folder / "client.key").write_text("-----BEGIN EC PRIVATE KEY-----\nK\n")
    (folder / "servercerts").mkdir()
    for name in servercerts:
        (folder / "servercerts" / f"{name}.crt").write_text(PEM)
    return folder


def test_lxc_remote_gives_the_address_and_the_files(tmp_path: Path) -> None:
    folder = lxc_config(
        tmp_path / "lxc", {"lab": "https://10.1.2.3:8443", "local": "unix://"}, ("lab",)
    )

    endpoint = lxc_remote("lab", folder)

    assert endpoint.url == "https://10.1.2.3:8443"
    assert endpoint.client_cert == str(folder / "client.crt")
    assert endpoint.client_key == str(folder / "client.key")
    assert endpoint.server_cert == str(folder / "servercerts" / "lab.crt")
    assert "client.key" not in repr(endpoint)


@pytest.mark.parametrize(
    ("name", "servercerts", "words"),
    [
        ("nope", ("lab",), "'nope' is not an HTTPS remote of the lxc client (known: lab)"),
        ("local", ("lab",), "'local' is not an HTTPS remote"),
        ("lab", (), "servercerts/lab.crt is missing"),
    ],
)
def test_lxc_remote_says_what_is_missing(
    tmp_path: Path, name: str, servercerts: tuple[str, ...], words: str
) -> None:
    folder = lxc_config(
        tmp_path / "lxc", {"lab": "https://10.1.2.3:8443", "local": "unix://"}, servercerts
    )

    with pytest.raises(LXDAccessError) as error:
        lxc_remote(name, folder)

    assert words in str(error.value)


def capture_configure(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    class Report:
        ok = True
        problems: list[str] = []

        def to_dict(self) -> dict[str, Any]:
            return {"ok": True}

    def configure(config: HostConfig, *, paths: object = None, dry_run: bool = False) -> Report:
        seen.update(config=config)
        return Report()

    monkeypatch.setattr(host, "configure_host", configure)
    monkeypatch.setattr(host, "save_config", lambda config, state_dir: None)
    return seen


def test_configure_host_takes_an_lxc_remote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = lxc_config(tmp_path / "lxc", {"lab": "https://10.1.2.3:8443"}, ("lab",))
    monkeypatch.setenv("LXD_CONF", str(folder))
    seen = capture_configure(monkeypatch)

    code = cli.main(["configure-host", "--state-dir", str(tmp_path), "--lxd-remote", "lab"])

    config = seen["config"]
    assert code == 0
    assert config.lxd_endpoint == "https://10.1.2.3:8443"
    assert config.lxd_server_cert == str(folder / "servercerts" / "lab.crt")
    assert endpoint_of(config) is not None


def test_configure_host_takes_short_certificate_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = capture_configure(monkeypatch)

    code = cli.main(
        [
            "configure-host",
            "--state-dir",
            str(tmp_path),
            "--lxd-endpoint",
            "https://10.1.2.3:8443",
            "--client-cert",
            "/home/me/client.crt",
            "--client-key",
            "/home/me/client.key",
            "--server-cert",
            "/home/me/cluster.crt",
        ]
    )

    assert code == 0
    assert seen["config"].lxd_client_key == "/home/me/client.key"


def test_an_endpoint_without_its_credentials_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    capture_configure(monkeypatch)

    with pytest.raises(SystemExit) as exited:
        cli.main(["configure-host", "--lxd-endpoint", "https://10.1.2.3:8443"])

    assert exited.value.code == cli.EXIT_BAD_PARAMS
    assert "lxd-endpoint: https://10.1.2.3:8443 needs lxd-client-cert" in capsys.readouterr().err


def test_a_juju_secret_key_cannot_be_used_outside_juju() -> None:
    config = HostConfig(
        lxd_endpoint="https://10.1.2.3:8443",
        lxd_client_cert="/c.crt",
        lxd_client_key="secret:d1g0c6co5kt6mg2r8fu0",
        lxd_server_cert="/s.crt",
    )

    with pytest.raises(LXDAccessError, match="only the charm can read"):
        endpoint_of(config)
