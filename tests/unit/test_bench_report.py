"""The bench's pure logic: summaries, best parallelism, ratios, target lines, the command line."""

from pathlib import Path

import pytest

from bench import hostlimits, lxdsetup
from bench.options import parse_args
from bench.report import (
    PASS_MISS,
    DefaultFigures,
    IssueFigures,
    Samples,
    Target,
    TaskAttempts,
    best_parallel,
    default_targets,
    exec_line,
    figure_line,
    format_seconds,
    issue_targets,
    launch_failures,
    marginal_seconds,
    parallels_for_round,
    per_second,
    ratio,
    rotated,
    summarise,
)


def test_summary_is_median_min_max_and_count():
    summary = summarise([3.0, 1.0, 10.0, 2.0])
    assert (summary.median, summary.low, summary.high, summary.count) == (2.5, 1.0, 10.0, 4)


def test_summary_of_nothing_is_an_error():
    with pytest.raises(ValueError):
        summarise([])


def test_best_parallelism_has_the_lowest_median_and_ties_go_to_the_smaller():
    assert best_parallel({4: [9.0, 9.2, 30.0], 8: [9.4, 9.6]}) == 4  # medians, not means
    assert best_parallel({8: [5.0], 4: [5.0]}) == 4
    with pytest.raises(ValueError):
        best_parallel({4: []})


def test_first_round_tries_every_parallelism_then_keeps_the_best():
    samples = Samples()
    assert parallels_for_round(0, "cold", samples, (4, 8)) == [4, 8]
    assert parallels_for_round(1, "cold", samples, (4, 8)) == [4, 8]  # nothing measured yet
    samples.add("cold", 4, 12.0)
    samples.add("cold", 8, 9.0)
    samples.add("other", 4, 1.0)
    assert parallels_for_round(1, "cold", samples, (4, 8)) == [8]
    samples.add("cold", 8, 20.0)  # a slow second round does not change the choice
    assert parallels_for_round(2, "cold", samples, (4, 8)) == [8]
    assert samples.best("cold") == (8, summarise([9.0, 20.0]))  # the kept one, n=2
    assert samples.best("missing") is None


def test_without_a_choice_the_best_median_is_reported():
    samples = Samples()
    samples.add("podman", 4, 4.0)
    samples.add("podman", 8, 5.0)
    assert samples.best("podman") == (4, summarise([4.0]))


def test_cpu_is_kept_only_when_given():
    samples = Samples()
    samples.add("podman", 4, 5.0)
    samples.add("lxd", 4, 5.0, cpu=2.0)
    samples.add("lxd", 4, 7.0, cpu=4.0)
    assert samples.cpu("podman", 4) is None
    cpu = samples.cpu("lxd", 4)
    assert cpu is not None and cpu.median == 3.0


def test_ratio_and_rate_need_both_numbers():
    assert ratio(5.0, 10.0) == 0.5
    assert ratio(None, 10.0) is None
    assert ratio(5.0, None) is None
    assert ratio(5.0, 0.0) is None
    assert per_second(500, 20.0) == 25.0
    assert per_second(500, 0.0) is None


def test_rotation_changes_who_goes_first():
    assert rotated([1, 2, 3], 0) == [1, 2, 3]
    assert rotated([1, 2, 3], 1) == [2, 3, 1]
    assert rotated([1, 2, 3], 4) == [2, 3, 1]
    assert rotated([], 3) == []


def test_seconds_are_printed_with_min_max_unless_alone():
    assert format_seconds(summarise([2.0, 1.0, 3.0])) == "2.00s (min 1.00, max 3.00, n=3)"
    assert format_seconds(summarise([4.25])) == "4.25s (n=1)"
    line = figure_line("btrfs/busybox ours container", 8, summarise([1.0]), summarise([0.5]))
    assert "btrfs/busybox ours container P=8" in line and line.endswith("LXD CPU 0.5s")


@pytest.mark.parametrize(
    ("target", "met", "text"),
    [
        (Target("cold / bench", 0.42, 0.5, at_most=True), True, "0.42x (target <= 0.5x): met"),
        (Target("cold / bench", 0.62, 0.5, at_most=True), False, "0.62x (target <= 0.5x): NOT"),
        (Target("tasks/s", 43.0, 25, at_most=False, unit=""), True, "43 (target >= 25): met"),
        (Target("failures", 0.0, 0, at_most=True, unit=""), True, "failures: 0 (target <= 0)"),
        (Target("failures", 3.0, 0, at_most=True, unit=""), False, "3 (target <= 0): NOT met"),
        (
            Target("speed-up", 3.5, 3, at_most=False, verdicts=PASS_MISS),
            True,
            "3.50x (target >= 3x): PASS",
        ),
        (
            Target("speed-up", 2.5, 3, at_most=False, verdicts=PASS_MISS),
            False,
            "2.50x (target >= 3x): MISS",
        ),
    ],
)
def test_target_lines_say_whether_each_target_is_met(target, met, text):
    assert target.met is met
    assert text in target.line()


def test_a_target_not_measured_says_why():
    target = Target("warm tasks/s", None, 25, at_most=False, unit="", why_missing="no warm")
    assert target.met is None
    assert target.line() == "  warm tasks/s: not measured (target >= 25): no warm"


def test_launch_failures_count_launch_errors_or_uncharged_attempts_once():
    tasks = [
        TaskAttempts(attempts=1, charged=0, succeeded=True, launch_errors=0),  # clean
        TaskAttempts(attempts=3, charged=0, succeeded=True, launch_errors=2),  # 2 lost, retried
        TaskAttempts(attempts=2, charged=0, succeeded=True, launch_errors=0),  # worker vanished
        TaskAttempts(attempts=2, charged=2, succeeded=False, launch_errors=0),  # the command
        TaskAttempts(attempts=4, charged=1, succeeded=False, launch_errors=3),  # gave up
    ]
    assert launch_failures(tasks) == 0 + 2 + 1 + 0 + 3


def test_smoke_defaults_apply_only_to_what_is_not_given():
    options = parse_args(["--smoke"])
    assert (options.rounds, options.drivers, options.images) == (1, ("btrfs",), ("busybox",))
    assert options.tasks == 8 and options.parallels == (4,)
    assert options.skip == {"bigjob"}
    assert not options.install_competitors  # a smoke run says podman is absent, installs nothing
    options = parse_args(["--smoke", "--rounds", "2", "--skip=docker,podman", "--tasks=16"])
    assert options.rounds == 2 and options.tasks == 16
    assert options.skip == {"docker", "podman"}
    assert not options.runs("docker") and options.runs("container") and options.runs("sandbox")
    assert parse_args(["--smoke", "--install-competitors"]).install_competitors


def test_cold_and_warm_are_the_old_names_of_container_and_sandbox():
    options = parse_args(["--skip", "cold,warm"])
    assert options.skip == {"container", "sandbox"}
    assert not options.runs("cold") and not options.runs("container")
    assert not options.runs("warm") and not options.runs("sandbox")
    assert options.runs("spares")
    assert parse_args(["--skip", "sandbox"]).skip == {"sandbox"}


def test_full_defaults_run_everything():
    options = parse_args([])
    assert options.rounds == 5 and options.dir_rounds == 3
    assert options.drivers == ("btrfs", "dir")
    assert options.images == ("busybox", "debootstrap")
    assert options.parallels == (4, 8) and options.tasks == 32
    assert options.skip == frozenset() and options.wide_workers == 200
    assert options.install_competitors
    assert not parse_args(["--no-install-competitors"]).install_competitors


@pytest.mark.parametrize(
    "argv",
    [
        ["--drivers", "zfs"],
        ["--images", "alpine"],
        ["--skip", "everything"],
        ["--parallel", "four"],
        ["--parallel", "0,4"],
        ["--rounds", "0"],
    ],
)
def test_bad_command_lines_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        parse_args(argv)
    assert exited.value.code == 2
    assert "error" in capsys.readouterr().err


def test_lists_are_deduplicated_in_order():
    options = parse_args(["--drivers", "dir,btrfs,dir", "--parallel", "8,2,8"])
    assert options.drivers == ("dir", "btrfs")
    assert options.parallels == (2, 8)


def test_pid_max_wanted_grows_with_workers():
    small = hostlimits.wanted_sysctls(10, 500)["kernel.pid_max"]
    large = hostlimits.wanted_sysctls(200, 500)["kernel.pid_max"]
    assert small < large
    assert hostlimits.wanted_sysctls(200, 500)["fs.inotify.max_user_instances"] >= 1048576


def test_a_figure_like_another_keeps_the_others_choice():
    samples = Samples()
    parallels = (4, 8)
    # nothing measured anywhere: every parallelism, even in the first round
    assert parallels_for_round(0, "dir ours", samples, parallels, like="btrfs ours") == [4, 8]
    samples.add("btrfs ours", 4, 9.0)
    samples.add("btrfs ours", 8, 11.0)
    assert parallels_for_round(0, "dir ours", samples, parallels, like="btrfs ours") == [4]
    samples.add("btrfs ours", 8, 1.0)  # the reference's later rounds change nothing
    assert parallels_for_round(1, "dir ours", samples, parallels, like="btrfs ours") == [4]
    samples.chosen["btrfs ours"] = 8
    assert parallels_for_round(0, "deb ours", samples, parallels, like="btrfs ours") == [8]


def test_dir_rounds_never_exceed_rounds():
    assert parse_args(["--rounds", "2"]).dir_rounds == 2
    assert parse_args(["--rounds", "6", "--dir-rounds", "4"]).dir_rounds == 4


def test_key_users_are_read_per_uid(tmp_path: Path):
    key_users = tmp_path / "key-users"
    key_users.write_text(
        "    0:    95 94/94 75/1000000 1590/25000000\n"
        "1000000:   201 201/201 201/2000 4020/2000000\n"
        "garbage\n"
    )
    assert hostlimits.key_users(key_users) == {0: (75, 1000000), 1000000: (201, 2000)}
    assert hostlimits.key_users(tmp_path / "absent") == {}


def test_first_start_error_of_an_lxc_log():
    log = (
        "lxc x 20261124045648.300 WARN     cgfsng - something\n"
        "lxc x 20261124045648.396 ERROR    conf - ../src/lxc/conf.c:lxc_map_ids:3708 - newuidmap "
        'failed to write mapping "newuidmap: uid range [0-65536) -> [65536-131072) not allowed"'
        ": newuidmap 31681 0 65536 65536\n"
        "lxc x 20261124045648.396 ERROR    start - ../src/lxc/start.c:lxc_spawn:1788 - Failed\n"
    )
    error = lxdsetup.first_error(log)
    assert error is not None and error.startswith("newuidmap failed to write mapping")
    assert "31681" not in error and "[#-#)" in error
    assert lxdsetup.first_error("lxc x 1 INFO fine\n") is None


def test_a_forced_stops_noise_is_not_a_start_error():
    log = (
        "lxc 20261124045653.620 ERROR    af_unix - ../src/lxc/af_unix.c:lxc_abstract_unix_recv_"
        "fds_iov:218 - Connection reset by peer - Failed to receive response\n"
        "lxc 20261124045653.620 ERROR    commands - ../src/lxc/commands.c:lxc_cmd_rsp_recv_fds:128"
        ' - Failed to receive file descriptors for command "get_state"\n'
    )
    assert lxdsetup.first_error(log) is None
    assert lxdsetup.first_error(log + "lxc x 1 ERROR    start - a.c:f:1 - Failed 2 spawn\n") == (
        "Failed # spawn"
    )


def test_exec_lines_are_in_milliseconds():
    line = exec_line("btrfs/busybox bare exec", 4, summarise([0.012, 0.010, 0.030]))
    assert "btrfs/busybox bare exec P=4" in line
    assert line.endswith("12.0 ms per call (min 10.0, max 30.0, n=3)")


def _figures(**changes):
    base = {
        "cold": 5.0,
        "lxd_benchmark": 10.0,
        "podman": 5.0,
        "debootstrap_cold": 7.0,
        "busybox_cold": 5.0,
        "warm_many": 20.0,
        "bare_exec": 0.016,
        "warm_tasks": 500,
        "warm_parallel": 4,
        "warm_available": True,
        "launch_failures": 0,
    }
    return IssueFigures(**{**base, **changes})


def test_issue_targets_from_the_medians():
    lines = [t.line() for t in issue_targets(_figures())]
    assert "cold ours / lxd-benchmark launch+delete: 0.50x (target <= 0.5x): met" in lines[0]
    assert "cold ours / podman run --rm (moonshot): 1x (target <= 1x): met" in lines[1]
    assert "cold debootstrap / busybox (ours): 1.40x (target <= 1.5x): met" in lines[2]
    assert "warm tasks/s (500 trivial tasks, P=4): 25 (target >= 25): met" in lines[3]
    assert "per-task overhead / bare API exec (P=4): 2.50x (target <= 2x): NOT met" in lines[4]
    assert "launch failures across the whole bench (ours): 0 (target <= 0): met" in lines[5]


def test_issue_targets_without_warm_mode_or_debootstrap_say_so():
    targets = issue_targets(
        _figures(warm_many=None, warm_available=False, debootstrap_cold=None, launch_failures=3)
    )
    assert [t.met for t in targets] == [True, True, None, None, None, False]
    assert targets[3].line().endswith("warm mode not available in this build")
    assert (
        targets[2].line() == "  cold debootstrap / busybox (ours): not measured (target <= 1.5x)"
    )


def test_marginal_cost_cancels_the_fixed_costs():
    assert marginal_seconds(22.0, 4.0, 500, 32) == pytest.approx(18.0 / 468)
    assert marginal_seconds(None, 4.0, 500, 32) is None
    assert marginal_seconds(22.0, None, 500, 32) is None
    assert marginal_seconds(22.0, 4.0, 32, 32) is None


def _defaults(**changes):
    base = {
        "sandbox": 1.0,
        "container": 5.0,
        "podman": 3.5,
        "many": 9.0,
        "bare_exec": 0.016,
        "debootstrap": 1.2,
        "busybox": 1.0,
        "tasks": 32,
        "many_tasks": 500,
        "many_parallel": 4,
    }
    return DefaultFigures(**{**base, **changes})


def test_issue_20_targets_from_the_medians():
    lines = [t.line() for t in default_targets(_defaults())]
    assert lines == [
        "  1. speed-up of the default over parallel podman run --rm (32 trivial tasks): "
        "3.50x (target >= 3x): PASS",
        "  1. speed-up of the default over isolation=container (32 trivial tasks): "
        "5x (target >= 4x): PASS",
        "  2. tasks/s of the default (500 trivial tasks, P=4): 55.56 (target >= 50): PASS",
        "  2. per-task time of the default / bare LXD exec round trip (500 tasks, P=4): "
        "1.12x (target <= 1.5x): PASS",
        "  3. debootstrap / busybox with the default (32 trivial tasks): "
        "1.20x (target <= 1.3x): PASS",
    ]


def test_issue_20_targets_missed_say_miss():
    targets = default_targets(
        _defaults(podman=2.5, container=3.0, many=12.0, bare_exec=0.01, debootstrap=1.5)
    )
    assert [t.met for t in targets] == [False, False, False, False, False]
    assert all(t.line().endswith("MISS") for t in targets)
    assert "2.50x (target >= 3x): MISS" in targets[0].line()
    assert "41.67 (target >= 50): MISS" in targets[2].line()
    assert "2.40x (target <= 1.5x): MISS" in targets[3].line()
    # the limits themselves pass
    edge = default_targets(
        _defaults(podman=3.0, container=4.0, many=10.0, bare_exec=0.01 / 0.75, debootstrap=1.3)
    )
    assert [t.met for t in edge] == [True, True, True, True, True]


def test_issue_20_targets_not_measured_say_why():
    figures = _defaults(
        podman=None,
        debootstrap=None,
        bare_exec=None,
        why={
            "podman": "podman absent (/usr/bin/podman; not installed)",
            "debootstrap": "no debootstrap image in this run (--images)",
            "bare_exec": "",
            "sandbox": "never shown: measured",
        },
    )
    targets = default_targets(figures)
    assert [t.met for t in targets] == [None, True, True, None, None]
    assert targets[0].line() == (
        "  1. speed-up of the default over parallel podman run --rm (32 trivial tasks): "
        "not measured (target >= 3x): podman absent (/usr/bin/podman; not installed)"
    )
    assert targets[3].line().endswith("not measured (target <= 1.5x)")  # no reason given
    assert targets[4].line().endswith(": no debootstrap image in this run (--images)")


def test_issue_20_without_sandboxes_gives_one_reason_once():
    why = "no sandbox mode in this build"
    figures = _defaults(
        sandbox=None,
        many=None,
        debootstrap=None,
        busybox=None,
        why={"sandbox": why, "many": why, "debootstrap": why, "busybox": why},
    )
    targets = default_targets(figures)
    assert [t.met for t in targets] == [None] * 5
    assert all(t.line().endswith(f": {why}") for t in targets)
    assert all(t.line().count(why) == 1 for t in targets)
