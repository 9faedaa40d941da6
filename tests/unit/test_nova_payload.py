"""A Nova task's payload read back from its console log: parsing, unpacking, hostile input.

Consoles are built here exactly as ``nova-task.sh.j2`` prints them: ``CC-BEGIN <tag>``, a
``CC-RESULT`` line (exit code, size and SHA-256 of the gzip), base64 of a gzip of a tar of
stdout, stderr, exit_code and results.tar, then ``CC-END <tag> <sha256>``. Whatever the task
(or the console) holds must end as an outcome with a reason, never as an exception.
"""

import base64
import gzip
import hashlib
import io
import random
import tarfile
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from container_compute.backends import FailureReason, TaskOutcome, WorkerSpec
from container_compute.backends.nova import payload
from container_compute.backends.nova.backend import NovaBackend
from container_compute.backends.nova.payload import ConsolePayload, PayloadState

SPEC = WorkerSpec(
    job_id="j1", task_index=1, attempt=1, image="img", command="true", env={},
    results_cap_bytes=1 << 20,
)  # fmt: skip
TAG = payload.attempt_tag(SPEC)

Member = tuple[tarfile.TarInfo, bytes | None]


def _reg(name: str, data: bytes) -> Member:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name: str, kind: bytes, linkname: str = "") -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def _tar(members: list[Member]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def make_payload(
    stdout: bytes = b"hello\n",
    stderr: bytes = b"warn\n",
    exit_text: bytes = b"0\n",
    results: list[Member] | None = None,
    outer_extra: list[Member] | None = None,
) -> bytes:
    """The gzip the template sends: tar of stdout, stderr, exit_code, results.tar."""
    results_tar = _tar(results if results is not None else [_special(".", tarfile.DIRTYPE)])
    outer = _tar(
        [
            _reg("stdout", stdout),
            _reg("stderr", stderr),
            _reg("exit_code", exit_text),
            _reg("results.tar", results_tar),
            *(outer_extra or []),
        ]
    )
    return gzip.compress(outer)


def block(
    data: bytes,
    tag: str = TAG,
    exit_code: int | str = 0,
    *,
    size: int | None = None,
    sha: str | None = None,
    end_sha: str | None = None,
    truncated: int = 0,
    full: int | None = None,
) -> list[str]:
    """The marker lines of one attempt, as the template prints them (base64 wrapped at 76)."""
    digest = hashlib.sha256(data).hexdigest()
    encoded = base64.encodebytes(data).decode().splitlines()
    return [
        f"CC-BEGIN {tag}",
        f"CC-RESULT {tag} exit={exit_code} size={len(data) if size is None else size} "
        f"sha256={sha or digest} truncated={truncated} full={len(data) if full is None else full}",
        *encoded,
        f"CC-END {tag} {end_sha or digest}",
    ]


NOISE = [
    "[    0.000000] Linux version 6.1.0 (gcc 12)",
    "[    3.141592] random: crng init done",
    "cloud-init[412]: Cloud-init v. 23.1 running 'modules:final'",
    "",
    "Ubuntu 22.04 LTS cc-j1-1-1 ttyS0",
]


def console(*parts: list[str], newline: str = "\n") -> str:
    lines = [f"CC-START {TAG}"]
    for part in parts:
        lines += part
    return newline.join(lines) + newline


def settle(
    text: str, tmp_path: Path, spec: WorkerSpec = SPEC
) -> tuple[ConsolePayload, TaskOutcome | None, Path]:
    """What the backend does with a console: parse, then unpack and gather a whole payload."""
    found = payload.parse_console(text, payload.attempt_tag(spec))
    task_dir = Path(tempfile.mkdtemp(prefix="task-", dir=tmp_path))
    outcome: TaskOutcome | None = None
    if found.state == PayloadState.COMPLETE:
        assert found.exit_code is not None
        outcome = TaskOutcome(
            found.exit_code, None if found.exit_code == 0 else FailureReason.EXIT_CODE
        )
        backend = SimpleNamespace(config=SimpleNamespace(nova_console_cap="64K"))
        NovaBackend._gather(backend, spec, found, task_dir, outcome)  # type: ignore[arg-type]
    elif found.state == PayloadState.CORRUPT:
        outcome = TaskOutcome(None, FailureReason.EXIT_CODE, detail=found.detail)
    return found, outcome, task_dir


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and not path.is_symlink()
    }


# -- a whole payload -------------------------------------------------------------------------


def test_whole_payload_gives_exit_code_streams_and_files(tmp_path: Path) -> None:
    data = make_payload(
        stdout=b"out line\n",
        stderr=b"err line\n",
        exit_text=b"3\n",
        results=[
            _special(".", tarfile.DIRTYPE),
            _reg("./a.txt", b"alpha"),
            _special("./sub", tarfile.DIRTYPE),
            _reg("./sub/b.bin", bytes(range(256))),
        ],
    )
    found, outcome, task = settle(console(block(data, exit_code=3)), tmp_path)
    assert found.state == PayloadState.COMPLETE and found.data == data
    assert outcome is not None
    assert outcome.exit_code == 3 and outcome.reason == FailureReason.EXIT_CODE
    assert not outcome.truncated and outcome.skipped == []
    assert (task / "stdout").read_bytes() == b"out line\n"
    assert (task / "stderr").read_bytes() == b"err line\n"
    assert (task / "exit_code").read_text() == "3\n"
    assert _files(task / "files") == {"a.txt": b"alpha", "sub/b.bin": bytes(range(256))}
    assert outcome.stdout_bytes == 9 and outcome.files_bytes == 5 + 256


def test_success_is_exit_zero_without_reason(tmp_path: Path) -> None:
    _, outcome, task = settle(console(block(make_payload())), tmp_path)
    assert outcome is not None and outcome.succeeded
    assert (task / "stdout").read_bytes() == b"hello\n"
    assert (task / "files").is_dir() and not any((task / "files").iterdir())


def test_crlf_console_and_noise_around_markers(tmp_path: Path) -> None:
    data = make_payload(stdout=b"x" * 5000)
    text = console(NOISE, block(data), NOISE, newline="\r\n")
    assert "\r\n" in text
    found, outcome, task = settle(text, tmp_path)
    assert found.state == PayloadState.COMPLETE and found.data == data
    assert outcome is not None and outcome.succeeded
    assert (task / "stdout").read_bytes() == b"x" * 5000


def test_stray_carriage_returns_inside_lines(tmp_path: Path) -> None:
    data = make_payload()
    lines = [line + "\r\r" for line in block(data)]
    found, _, _ = settle(console(lines), tmp_path)
    assert found.state == PayloadState.COMPLETE and found.data == data


def test_noise_between_markers_is_left_out(tmp_path: Path) -> None:
    """Kernel chatter between BEGIN and RESULT and inside the payload does not lose it."""
    data = make_payload(stdout=random.Random(3).randbytes(3000))
    lines = block(data)
    assert len(lines) > 6
    lines[5:5] = ["[   12.000001] audit: type=1400 apparmor=STATUS", ""]
    lines[3:3] = ["cloud-init[412]: ci-info: +++ Net device info +++"]
    lines[1:1] = ["[   11.5] random: crng init done"]
    found, outcome, _ = settle(console(lines), tmp_path)
    assert found.state == PayloadState.COMPLETE and found.data == data
    assert outcome is not None and outcome.succeeded


def test_noise_that_looks_like_base64_is_refused(tmp_path: Path) -> None:
    lines = block(make_payload(stdout=random.Random(4).randbytes(3000)))
    lines[3:3] = ["login"]  # only base64 letters: taken in, the checksum refuses it
    found, outcome, task = settle(console(lines), tmp_path)
    _refused(found, outcome, task)
    assert found.state == PayloadState.CORRUPT


def test_only_this_attempts_markers_are_taken(tmp_path: Path) -> None:
    mine = make_payload(stdout=b"mine\n", exit_text=b"0\n")
    earlier = make_payload(stdout=b"attempt zero\n")
    other_job = make_payload(stdout=b"other job\n")
    prefix_twin = make_payload(stdout=b"task 10\n")  # cc-j1-1-10 starts with cc-j1-1-1
    text = console(
        NOISE,
        block(earlier, tag="cc-j1-1-0", exit_code=7),
        NOISE,
        block(mine),
        block(other_job, tag="cc-j2-1-1", exit_code=9),
        block(prefix_twin, tag=f"{TAG}0", exit_code=4),
        NOISE,
    )
    found, outcome, task = settle(text, tmp_path)
    assert found.state == PayloadState.COMPLETE and found.data == mine
    assert outcome is not None and outcome.succeeded
    assert (task / "stdout").read_bytes() == b"mine\n"


def test_other_attempts_markers_only_means_absent(tmp_path: Path) -> None:
    text = "\n".join(block(make_payload(), tag="cc-j1-1-0") + block(make_payload(), tag=f"{TAG}0"))
    found, outcome, _ = settle(text, tmp_path)
    assert found.state == PayloadState.ABSENT and outcome is None
    assert payload.parse_console(f"noise\nCC-START {TAG}\nmore", TAG).state == PayloadState.STARTED


# -- payloads that are not whole --------------------------------------------------------------


def _refused(found: ConsolePayload, outcome: TaskOutcome | None, task: Path) -> None:
    assert found.state != PayloadState.COMPLETE
    assert found.data == b""
    assert not (task / "stdout").exists()
    if found.state == PayloadState.CORRUPT:
        assert outcome is not None and not outcome.succeeded and found.detail


def test_console_cut_before_begin_is_corrupt(tmp_path: Path) -> None:
    lines = block(make_payload(stdout=bytes(random.Random(1).randbytes(4000))))
    found, outcome, task = settle("\n".join(lines[3:]), tmp_path)  # BEGIN, RESULT, 1st line lost
    _refused(found, outcome, task)
    assert found.state == PayloadState.CORRUPT and "start is missing" in found.detail
    found, outcome, _ = settle("\n".join(lines[1:]), tmp_path)
    assert found.state == PayloadState.CORRUPT


@pytest.mark.parametrize(
    "change",
    [
        {"size": 1},
        {"sha": "0" * 64},
        {"end_sha": "f" * 64},
    ],
    ids=["size", "result-sha", "end-sha"],
)
def test_size_or_checksum_mismatch_is_corrupt(tmp_path: Path, change: dict[str, object]) -> None:
    found, outcome, task = settle(console(block(make_payload(), **change)), tmp_path)  # type: ignore[arg-type]
    _refused(found, outcome, task)
    assert found.state == PayloadState.CORRUPT and "checksum" in found.detail


def test_altered_payload_line_is_corrupt(tmp_path: Path) -> None:
    lines = block(make_payload(stdout=b"z" * 2000))
    body = lines[2]
    lines[2] = body[:10] + ("A" if body[10] != "A" else "B") + body[11:]
    found, outcome, task = settle(console(lines), tmp_path)
    _refused(found, outcome, task)
    assert found.state == PayloadState.CORRUPT


def test_dropped_payload_line_is_corrupt(tmp_path: Path) -> None:
    lines = block(make_payload(stdout=random.Random(2).randbytes(3000)))
    del lines[3]
    found, outcome, task = settle(console(lines), tmp_path)
    _refused(found, outcome, task)
    assert found.state == PayloadState.CORRUPT


def test_garbage_base64_is_corrupt(tmp_path: Path) -> None:
    lines = block(make_payload())
    lines[2:-1] = ["this is *not* base64 at all!!", "ÿÿ\x00é"]
    found, outcome, task = settle(console(lines), tmp_path)
    _refused(found, outcome, task)
    assert found.state == PayloadState.CORRUPT
    lines[2:-1] = ["QUJD=", "A"]  # base64 letters, impossible padding
    found, outcome, task = settle(console(lines), tmp_path)
    _refused(found, outcome, task)
    assert found.state == PayloadState.CORRUPT and "base64" in found.detail


@pytest.mark.parametrize(
    "data",
    [gzip.compress(b"plain text, not a tar" * 40), b"not even gzip", gzip.compress(b"")],
    ids=["gzip-not-tar", "not-gzip", "empty-gzip"],
)
def test_whole_but_not_a_tar_fails_with_a_reason(tmp_path: Path, data: bytes) -> None:
    found, outcome, task = settle(console(block(data)), tmp_path)
    assert found.state == PayloadState.COMPLETE  # whole as sent: unpacking refuses it
    assert outcome is not None and outcome.exit_code is None
    assert outcome.reason == FailureReason.EXIT_CODE and "not a gzipped tar" in outcome.detail
    assert not (task / "stdout").exists()


def test_missing_end_is_partial(tmp_path: Path) -> None:
    lines = block(make_payload(), exit_code=0)
    found, outcome, task = settle(console(lines[:-1], NOISE), tmp_path)
    _refused(found, outcome, task)
    assert found.state == PayloadState.PARTIAL
    found = payload.parse_console(console(lines[:1]), TAG)  # BEGIN only
    assert found.state == PayloadState.PARTIAL


def test_malformed_result_line_is_corrupt(tmp_path: Path) -> None:
    for exit_code in ["abc", "1.5", "", "0x1"]:
        found, outcome, task = settle(
            console(block(make_payload(), exit_code=exit_code)), tmp_path
        )
        _refused(found, outcome, task)
        assert found.state == PayloadState.CORRUPT and "CC-RESULT" in found.detail


def test_huge_or_negative_exit_on_result_line_is_no_exit_status(tmp_path: Path) -> None:
    for index, exit_code in enumerate(["-1", "256", "9" * 30, "9" * 5000]):
        sub = tmp_path / str(index)
        sub.mkdir()
        _, outcome, _ = settle(console(block(make_payload(), exit_code=exit_code)), sub)
        assert outcome is not None and outcome.exit_code is None, exit_code
        assert outcome.reason == FailureReason.EXIT_CODE and not outcome.succeeded


def test_duplicated_markers_never_give_a_wrong_payload(tmp_path: Path) -> None:
    data = make_payload(stdout=b"real\n")
    whole = block(data)
    cases = {
        "block-twice": whole + whole,
        "begin-twice": whole[:1] + whole,
        "result-twice": whole[:2] + whole[1:],
        "end-twice": whole + whole[-1:],
        "second-begin-unfinished": whole + whole[:3],
        "two-payloads": block(make_payload(stdout=b"forged\n")) + whole,
        "nested-begin": whole[:4] + whole,
    }
    for index, (name, lines) in enumerate(cases.items()):
        sub = tmp_path / str(index)
        sub.mkdir()
        found, outcome, task = settle(console(lines), sub)
        assert found.state != PayloadState.ABSENT, name
        if found.state == PayloadState.COMPLETE:
            assert hashlib.sha256(found.data).hexdigest() in "\n".join(lines), name
            assert outcome is not None and (task / "stdout").read_bytes() in (
                b"real\n",
                b"forged\n",
            )
        else:
            _refused(found, outcome, task)


# -- hostile tar contents ---------------------------------------------------------------------


def test_hostile_results_members_are_skipped_and_nothing_escapes(tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    results = [
        _special(".", tarfile.DIRTYPE),
        _reg("/etc/absolute", b"abs"),
        _reg("../escape", b"up"),
        _reg("./ok/../../escape2", b"up2"),
        _reg("a/./b", b"dot"),
        _special("link-out", tarfile.SYMTYPE, "/etc/passwd"),
        _special("link-up", tarfile.SYMTYPE, "../../outside"),
        _special("hard-out", tarfile.LNKTYPE, "/etc/passwd"),
        _special("hard-up", tarfile.LNKTYPE, "../outside/x"),
        _special("chr", tarfile.CHRTYPE),
        _special("blk", tarfile.BLKTYPE),
        _special("fifo", tarfile.FIFOTYPE),
        _reg("link-up/through", b"via link"),  # link-up was skipped: becomes a plain dir
        _reg("kept.txt", b"kept"),
    ]
    data = make_payload(results=results)
    found, outcome, task = settle(console(block(data)), tmp_path)
    assert found.state == PayloadState.COMPLETE
    assert outcome is not None and outcome.succeeded, outcome
    assert _files(task / "files") == {"kept.txt": b"kept", "link-up/through": b"via link"}
    assert not any(p.is_symlink() for p in task.rglob("*"))
    assert not (tmp_path / "escape").exists() and not (tmp_path / "escape2").exists()
    assert list((tmp_path / "outside").iterdir()) == []
    skipped = "\n".join(outcome.skipped)
    for name in ("/etc/absolute", "../escape", "link-out", "hard-out", "chr", "blk", "fifo"):
        assert name in skipped, name


def test_outer_tar_hostile_members_are_not_unpacked(tmp_path: Path) -> None:
    data = make_payload(
        outer_extra=[
            _reg("../../evil", b"evil"),
            _reg("/tmp/evil-abs", b"evil"),
            _special("stdout2", tarfile.SYMTYPE, "/etc/shadow"),
            _special("dev", tarfile.CHRTYPE),
        ]
    )
    found, outcome, task = settle(console(block(data)), tmp_path)
    assert found.state == PayloadState.COMPLETE
    assert outcome is not None and outcome.succeeded
    assert not (tmp_path / "evil").exists()
    assert sorted(p.name for p in task.iterdir()) == ["exit_code", "files", "stderr", "stdout"]
    assert len([s for s in outcome.skipped if "unexpected in the payload" in s]) == 4


def test_outer_stdout_as_symlink_is_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"secret")
    outer = _tar(
        [
            _special("stdout", tarfile.SYMTYPE, str(secret)),
            _reg("stderr", b""),
            _reg("exit_code", b"0\n"),
            _reg("results.tar", _tar([])),
        ]
    )
    _, outcome, task = settle(console(block(gzip.compress(outer))), tmp_path)
    assert outcome is not None
    assert not (task / "stdout").exists() or (task / "stdout").read_bytes() != b"secret"
    assert any("stdout" in s for s in outcome.skipped)


def test_duplicate_outer_members_fail_with_a_reason(tmp_path: Path) -> None:
    data = make_payload(outer_extra=[_reg("stdout", b"second")])
    found, outcome, _ = settle(console(block(data)), tmp_path)
    assert found.state == PayloadState.COMPLETE
    assert outcome is not None and not outcome.succeeded and outcome.detail


def test_forged_exit_code_member_is_ignored(tmp_path: Path) -> None:
    """The exit code is the RESULT line's; the exit_code member is never trusted."""
    for index, forged in enumerate(
        [b"0\n", b"99999999999999999999999\n", b"-7\n", b"text\n", b"9" * 5000]
    ):
        sub = tmp_path / str(index)
        sub.mkdir()
        _, outcome, task = settle(console(block(make_payload(exit_text=forged), exit_code=2)), sub)
        assert outcome is not None and outcome.exit_code == 2, forged
        assert (task / "exit_code").read_text() == "2\n"


def test_many_members_are_bounded(tmp_path: Path) -> None:
    count = 3000
    results = [_special(".", tarfile.DIRTYPE)] + [_reg(f"f{i:05d}", b"") for i in range(count)]
    results += [_special(f"l{i:05d}", tarfile.SYMTYPE, "/") for i in range(count)]
    found, outcome, task = settle(console(block(make_payload(results=results))), tmp_path)
    assert found.state == PayloadState.COMPLETE
    assert outcome is not None and outcome.exit_code == 0
    assert len(list((task / "files").iterdir())) <= count
    assert all(not p.is_symlink() for p in (task / "files").iterdir())


def test_member_count_over_the_gather_limit_is_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("container_compute.backends.gather.MAX_ENTRIES", 50)
    results = [_reg(f"f{i:04d}", b"x") for i in range(200)]
    _, outcome, task = settle(console(block(make_payload(results=results))), tmp_path)
    assert outcome is not None and outcome.exit_code == 0
    assert outcome.truncated
    assert len(list((task / "files").iterdir())) == 50


def test_member_over_the_cap_is_cut_and_recorded(tmp_path: Path) -> None:
    cap = 4096
    spec = WorkerSpec(
        job_id="j1", task_index=1, attempt=1, image="i", command="c", env={}, results_cap_bytes=cap
    )
    big = bytes(100_000)  # compresses to almost nothing: a small payload, a big member
    data = make_payload(
        stdout=b"o" * 100, stderr=b"e" * 100, results=[_reg("big", big), _reg("z-after", b"late")]
    )
    found, outcome, task = settle(console(block(data)), tmp_path, spec)
    assert found.state == PayloadState.COMPLETE
    assert outcome is not None and outcome.truncated
    written = sum(len(v) for v in _files(task).values()) - len((task / "exit_code").read_bytes())
    assert written <= cap
    assert (task / "stdout").read_bytes() == b"o" * 100
    assert len((task / "files" / "big").read_bytes()) == cap - 200, outcome


def test_unpack_budget_stops_a_decompression_bomb(tmp_path: Path) -> None:
    data = make_payload(stdout=bytes(20 << 20))  # 20 MiB of zeros, ~20 KiB gzipped
    staging = tmp_path / "staging"
    staging.mkdir()
    _, cut = payload.unpack(data, staging, 1000)
    assert cut
    assert (staging / "stdout").stat().st_size <= 1001


def test_truncated_flag_is_recorded(tmp_path: Path) -> None:
    data = make_payload(stdout=b"cut short")
    found, outcome, _ = settle(console(block(data, truncated=1, full=123456)), tmp_path)
    assert found.truncated and found.full_size == 123456
    assert outcome is not None and outcome.truncated and "123456" in outcome.detail


# -- property-style: random damage never raises -----------------------------------------------


def _mutate(rng: random.Random, text: str) -> str:
    choice = rng.randrange(6)
    if choice == 0:  # random bytes spliced in
        at = rng.randrange(len(text) + 1)
        junk = rng.randbytes(rng.randrange(1, 40)).decode("latin-1")
        return text[:at] + junk + text[at:]
    if choice == 1:  # a slice deleted
        a = rng.randrange(len(text) + 1)
        return text[:a] + text[a + rng.randrange(1, 200) :]
    if choice == 2:  # the head cut (Nova keeps the tail)
        return text[rng.randrange(len(text) + 1) :]
    if choice == 3:  # one character changed
        at = rng.randrange(len(text))
        return (
            text[:at]
            + chr(rng.randrange(0x110000 if rng.random() < 0.1 else 128))
            + text[at + 1 :]
        )
    if choice == 4:  # a line duplicated
        lines = text.split("\n")
        i = rng.randrange(len(lines))
        lines.insert(i, lines[rng.randrange(len(lines))])
        return "\n".join(lines)
    return text[: rng.randrange(len(text) + 1)]  # the tail not there yet


def _unpack_or_refuse(data: bytes, staging: Path) -> None:
    try:
        payload.unpack(data, staging, 1 << 20)
    except ValueError as err:  # the one documented failure of unpack
        assert "not a gzipped tar" in str(err)


def test_random_console_damage_never_raises(tmp_path: Path) -> None:
    rng = random.Random(20240607)
    data = make_payload(stdout=b"s" * 300, results=[_reg("r", b"res")])
    base = console(NOISE, block(data), NOISE)
    seen: set[PayloadState] = set()
    for _ in range(3000):
        text = base
        for _ in range(rng.randrange(1, 4)):
            text = _mutate(rng, text)
        found = payload.parse_console(text, TAG)
        seen.add(found.state)
        if found.state == PayloadState.COMPLETE:
            assert found.data == data  # never a wrong success
        elif found.state == PayloadState.CORRUPT:
            assert found.detail
    assert {PayloadState.COMPLETE, PayloadState.CORRUPT, PayloadState.PARTIAL} <= seen


def test_random_payload_damage_never_raises(tmp_path: Path) -> None:
    rng = random.Random(77)
    outer = gzip.decompress(
        make_payload(
            stdout=b"out" * 50,
            results=[
                _special(".", tarfile.DIRTYPE),
                _reg("./a", b"a" * 700),
                _special("./d", tarfile.DIRTYPE),
                _reg("./d/b", b"b"),
            ],
        )
    )
    outcomes = {"ok": 0, "refused": 0}
    for i in range(2000):
        raw = bytearray(outer)
        for _ in range(rng.randrange(1, 6)):
            at = rng.randrange(len(raw))
            if rng.random() < 0.5:
                raw[at : at + rng.randrange(1, 8)] = rng.randbytes(rng.randrange(1, 8))
            else:
                raw[at] = rng.randrange(256)
        data = gzip.compress(bytes(raw)) if rng.random() < 0.8 else bytes(raw)
        sub = tmp_path / str(i)
        sub.mkdir()
        found, outcome, task = settle(console(NOISE, block(data), NOISE), sub)
        assert found.state == PayloadState.COMPLETE
        assert outcome is not None
        if outcome.exit_code is None:
            assert outcome.reason == FailureReason.EXIT_CODE and outcome.detail
            outcomes["refused"] += 1
        else:
            assert not any(p.is_symlink() for p in task.rglob("*"))
            outcomes["ok"] += 1
        staging = sub / "staging"
        staging.mkdir()
        _unpack_or_refuse(data, staging)
    assert outcomes["ok"] and outcomes["refused"]


def test_end_without_result_line_is_corrupt(tmp_path: Path) -> None:
    lines = block(make_payload())
    del lines[1]
    found, outcome, task = settle(console(lines), tmp_path)
    _refused(found, outcome, task)
    assert found.state == PayloadState.CORRUPT and "CC-RESULT" in found.detail
