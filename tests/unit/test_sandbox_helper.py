"""The sandbox helper is built once per host from the package's source, or not at all."""

from pathlib import Path

import pytest

from container_compute.backends.lxd import helper


@pytest.fixture(autouse=True)
def no_memo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(helper, "_built", {})


@pytest.mark.skipif(not Path(helper.GCC).is_file(), reason=f"no C compiler at {helper.GCC}")
def test_it_is_built_static_once_and_cached_by_its_source(tmp_path: Path) -> None:
    program = helper.sandbox_helper(tmp_path)
    assert program is not None and program.startswith(b"\x7fELF")
    cached = list(tmp_path.glob("cc-sandbox-*"))
    assert len(cached) == 1 and cached[0].read_bytes() == program
    helper._built.clear()
    cached[0].write_bytes(b"\x7fELF cached")  # the next process takes the cached build
    assert helper.sandbox_helper(tmp_path) == b"\x7fELF cached"


def test_without_a_compiler_the_shell_recipe_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(helper, "GCC", str(tmp_path / "no-gcc"))
    assert helper.sandbox_helper(tmp_path) is None
    assert list(tmp_path.iterdir()) == []


def test_a_source_that_does_not_build_is_said_and_kept_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    if not Path(helper.GCC).is_file():
        pytest.skip(f"no C compiler at {helper.GCC}")
    monkeypatch.setattr(helper, "helper_source", lambda: b"int main( {")
    assert helper.sandbox_helper(tmp_path) is None
    assert "could not build the sandbox helper" in caplog.text
    assert list(tmp_path.glob("cc-sandbox-*")) == []
