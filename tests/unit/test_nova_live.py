"""A running Nova task's output, as its server mirrors it to the console, read back live.

``live_bytes`` is checked on consoles built as ``nova-task.sh.j2`` prints them, and the real
script is run here (by dash and by busybox sh when there is one) with its console sent to a
file, its work directory in a temporary one and its power-off cut away: what it mirrors must
rebuild, byte for byte, the start of what the task wrote.
"""

import dataclasses
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from container_compute.backends import WorkerSpec
from container_compute.backends.nova import payload
from container_compute.backends.nova.live import live_bytes
from container_compute.constants import NOVA_LIVE_BYTES

SPEC = WorkerSpec(job_id="j1", task_index=0, attempt=1, image="img", command="true", env={})
TAG = payload.attempt_tag(SPEC)


def live(*lines: tuple[str, str, int, str], newline: str = "\n") -> str:
    """A console with boot noise and these ``(tag, stream, offset, text)`` lines."""
    body = [f"CC-LIVE {tag} {stream} {at} {text}" for tag, stream, at, text in lines]
    return newline.join(["[    0.1] booting", f"CC-START {TAG}", *body, ""])


def test_a_stream_is_rebuilt_from_its_lines_only() -> None:
    console = live(
        (TAG, "stdout", 0, "one"),
        (TAG, "stderr", 0, "warning"),
        ("cc-j1-1-1", "stdout", 0, "another task"),
        (TAG, "stdout", 4, ""),
        (TAG, "stdout", 5, "  three"),
        newline="\r\n",
    )
    assert live_bytes(console, TAG, "stdout", 0, 1000) == b"one\n\n  three\n"
    assert live_bytes(console, TAG, "stderr", 0, 1000) == b"warning\n"
    assert live_bytes(console, "cc-j1-2-1", "stdout", 0, 1000) == b""


def test_from_an_offset_within_a_limit() -> None:
    console = live((TAG, "stdout", 0, "one"), (TAG, "stdout", 4, "two"))
    assert live_bytes(console, TAG, "stdout", 2, 1000) == b"e\ntwo\n"
    assert live_bytes(console, TAG, "stdout", 2, 3) == b"e\nt"
    assert live_bytes(console, TAG, "stdout", 8, 1000) == b""  # nothing new yet


def test_lines_gone_from_the_console_are_not_made_up() -> None:
    console = live((TAG, "stdout", 4000, "late"))  # Nova keeps only the console's end
    assert live_bytes(console, TAG, "stdout", 0, 1000) is None
    assert live_bytes(console, TAG, "stdout", 4000, 1000) == b"late\n"


def test_a_line_that_only_looks_like_one_is_ignored() -> None:
    console = f"CC-LIVE {TAG} stdout 12x forged\nCC-LIVE {TAG} stdin 0 no\n"
    assert live_bytes(console, TAG, "stdout", 0, 1000) == b""


def _shells() -> list[tuple[str, ...]]:
    """dash, and busybox sh with only busybox's tools (as the Nova worker image has them)."""
    shells: list[tuple[str, ...]] = [("/bin/sh",)]
    if shutil.which("busybox"):
        shells.append(("busybox", "sh"))
    return shells


def _busybox_tools(directory: Path) -> Path:
    """A directory of busybox's applets, for the script's PATH."""
    busybox = shutil.which("busybox")
    assert busybox is not None
    directory.mkdir(exist_ok=True)
    applets = subprocess.run([busybox, "--list"], check=True, capture_output=True, text=True)
    for applet in applets.stdout.split():
        (directory / applet).symlink_to(busybox)
    return directory


def _runnable_script(
    tmp_path: Path, command: str, shell: tuple[str, ...] = ("/bin/sh",)
) -> tuple[list[str], Path]:
    """The task script run by ``shell``, its console a file, its work in ``tmp_path``.

    It never powers off; run by busybox, its PATH has busybox's tools only.
    """
    results = tmp_path / "results"
    spec = dataclasses.replace(SPEC, command=command, env={"RESULTS_DIR": str(results)})
    script = payload.user_data(spec, cap_bytes=64 * 1024, linger_seconds=0)
    console = tmp_path / "console"
    path_line = "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    tools = _busybox_tools(tmp_path / "tools") if shell[0] == "busybox" else None
    for old, new in (
        ("exec 3>/dev/console", f"exec 3>{console}"),
        ("cc_dir=/run/cc-$cc_tag", f"cc_dir={tmp_path}/cc"),
        (path_line, f"export PATH={tools}" if tools else path_line),
    ):
        assert script.count(old) == 1, old
        script = script.replace(old, new)
    script = script[: script.index('sleep "$cc_linger"')]
    assert "poweroff" not in script
    path = tmp_path / "task.sh"
    path.write_text(script)
    return [shutil.which(shell[0]) or shell[0], *shell[1:], str(path)], console


@pytest.mark.parametrize("shell", _shells(), ids=lambda shell: shell[0].rsplit("/", 1)[-1])
def test_the_script_mirrors_whole_lines_of_both_streams_live(
    tmp_path: Path, shell: tuple[str, ...]
) -> None:
    command = (
        "echo first; echo oops >&2; sleep 3; printf 'th\\303\\251 \\\\ %%s\\n'; "
        "i=0; while [ $i -lt 400 ]; do printf '%099d\\n' $i; i=$((i+1)); done; "
        "sleep 2; printf partial"
    )
    argv, console = _runnable_script(tmp_path, command, shell)
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        first = f"CC-LIVE {TAG} stdout 0 first\n"
        deadline = time.monotonic() + 2.5  # before the command's first sleep ends
        while first not in (console.read_text() if console.exists() else ""):
            assert time.monotonic() < deadline, "the first line was not mirrored while it ran"
            time.sleep(0.05)
        assert process.poll() is None  # live: the task still runs
    finally:
        assert process.wait(60) == 0

    stdout = (tmp_path / "cc" / "pack" / "stdout").read_bytes()
    text = console.read_text(errors="replace")
    mirrored = live_bytes(text, TAG, "stdout", 0, 1 << 20)
    assert mirrored is not None and mirrored.startswith(b"first\n")
    assert stdout.startswith(mirrored) and mirrored.endswith(b"\n")  # whole lines
    # the mirror had 2 s to catch up before the command ended: it stopped at its cap
    assert NOVA_LIVE_BYTES - 100 < len(mirrored) <= NOVA_LIVE_BYTES < len(stdout)  # 100 B lines
    assert b"th\xc3\xa9 \\ %s\n" in mirrored
    assert live_bytes(text, TAG, "stderr", 0, 1 << 20) == b"oops\n"
    # the whole output still comes in the payload, after every mirrored line
    assert text.index("CC-BEGIN") > text.rindex("CC-LIVE")
    found = payload.parse_console(text, TAG)
    assert found.state == payload.PayloadState.COMPLETE and found.exit_code == 0


def test_a_task_that_ends_at_once_leaves_no_mirror_behind(tmp_path: Path) -> None:
    for shell in _shells():
        argv, console = _runnable_script(tmp_path, "true", shell)
        for _ in range(10):  # the mirrors' start races the command's end
            subprocess.run(argv, check=True, capture_output=True, timeout=20)
        found = payload.parse_console(console.read_text(), TAG)
        assert found.state == payload.PayloadState.COMPLETE
