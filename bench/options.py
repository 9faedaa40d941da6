"""The bench's command line: which parts run, on which pools and images, how many rounds."""

import argparse
import sys
from dataclasses import dataclass

DRIVERS = ("btrfs", "dir")
IMAGES = ("busybox", "debootstrap")
PARTS = (
    "sandbox",
    "container",
    "spares",
    "podman",
    "docker",
    "lxd-benchmark",
    "loop",
    "wide",
    "bigjob",
)
# the parts' names before launch-job's isolation: cold was isolation=container, warm sandbox
PART_ALIASES = {"cold": "container", "warm": "sandbox"}
USAGE_EXAMPLES = """\
examples:
  full run (about 25 min on 2 cores):   bench/run.py
  smoke run (under 2 min):              bench/run.py --smoke
  one pool and image, 3 rounds:         bench/run.py --drivers btrfs --images busybox --rounds 3
  only ours and podman:                 bench/run.py --skip docker,lxd-benchmark,loop,wide,bigjob
  only the default (isolation=sandbox):  bench/run.py --skip container,spares,lxd-benchmark,loop

parts: sandbox (launch-job's default: 32 tasks, a 500-task job, a bare LXD exec), container
(isolation=container: a fresh worker per task), spares (container jobs with and without spare
workers); cold and warm are the old names of container and sandbox.
"""


@dataclass(frozen=True)
class Options:
    """The parsed command line."""

    rounds: int
    dir_rounds: int
    drivers: tuple[str, ...]
    images: tuple[str, ...]
    skip: frozenset[str]
    parallels: tuple[int, ...]
    tasks: int
    warm_tasks: int
    exec_calls: int
    loop_rounds: int
    wide_workers: int
    wide_sleep: int
    big_job_tasks: int
    agent_seconds: float
    idmap: str
    install_competitors: bool = True

    def runs(self, part: str) -> bool:
        """Whether a part of the bench runs (``cold`` and ``warm`` are old names)."""
        return PART_ALIASES.get(part, part) not in self.skip


def _choices(text: str, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    values = tuple(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"{what}: unknown {', '.join(unknown)} (choose from {', '.join(allowed)})"
        )
    return values


def _parallels(text: str) -> tuple[int, ...]:
    try:
        values = tuple(sorted({int(v) for v in text.split(",") if v.strip()}))
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"--parallel: {text!r} is not a list of integers"
        ) from err
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError("--parallel: give positive integers, e.g. 4,8")
    return values


def parser() -> argparse.ArgumentParser:
    """The argument parser (also printed by --help)."""
    parse = argparse.ArgumentParser(
        prog="bench/run.py",
        description="container-compute against podman, docker, lxd-benchmark and an lxc loop "
        "(interleaved rounds; medians printed, never asserted)",
        epilog=USAGE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parse.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parse.add_argument(
        "--dir-rounds",
        type=int,
        default=3,
        help="rounds on the dir pool, at most --rounds (default 3: it copies every image)",
    )
    parse.add_argument("--drivers", default=",".join(DRIVERS), help="storage drivers: btrfs,dir")
    parse.add_argument("--images", default=",".join(IMAGES), help="images: busybox,debootstrap")
    parse.add_argument(
        "--skip", default="", help=f"comma-separated parts to leave out: {','.join(PARTS)}"
    )
    parse.add_argument(
        "--parallel",
        default="4,8",
        help="parallelisms tried in round 1; later rounds use each method's best (default 4,8)",
    )
    parse.add_argument(
        "--tasks", type=int, default=32, help="tasks of the jobs of either isolation (32)"
    )
    parse.add_argument(
        "--warm-tasks",
        type=int,
        default=500,
        help="tasks of the default's (isolation=sandbox) throughput job (500)",
    )
    parse.add_argument(
        "--exec-calls", type=int, default=200, help="bare API exec calls per parallelism (200)"
    )
    parse.add_argument(
        "--loop-rounds",
        type=int,
        default=1,
        help="rounds that run the slow lxc loop, on the first driver and image only (1)",
    )
    parse.add_argument("--wide-workers", type=int, default=200, help="live workers at once (200)")
    parse.add_argument("--wide-sleep", type=int, default=30, help="seconds each wide task sleeps")
    parse.add_argument("--big-job-tasks", type=int, default=10_000)
    parse.add_argument("--agent-seconds", type=float, default=30.0)
    parse.add_argument(
        "--idmap",
        choices=("default", "isolated", "shared"),
        default="default",
        help="workers' idmap: the product default, isolated per worker, or shared (non-isolated)",
    )
    parse.add_argument(
        "--install-competitors",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="install podman and docker from Debian when absent (default: yes, not with "
        "--smoke); a competitor left absent is said so and left out",
    )
    parse.add_argument(
        "--smoke",
        action="store_true",
        help="a quick check of every part: 1 round, btrfs, busybox, 8 tasks, P=4, "
        "20 wide workers, no big job, podman and docker only when installed",
    )
    return parse


def parse_args(argv: list[str] | None = None) -> Options:
    """Parse and check the command line; --smoke sets small defaults for what is not given."""
    parse = parser()
    argv = sys.argv[1:] if argv is None else argv
    args = parse.parse_args(argv)
    given = set(argv)
    if args.smoke:
        smoke = {
            "--rounds": ("rounds", 1),
            "--drivers": ("drivers", "btrfs"),
            "--images": ("images", "busybox"),
            "--tasks": ("tasks", 8),
            "--parallel": ("parallel", "4"),
            "--warm-tasks": ("warm_tasks", 60),
            "--exec-calls": ("exec_calls", 40),
            "--wide-workers": ("wide_workers", 20),
            "--wide-sleep": ("wide_sleep", 5),
        }
        for flag, (name, value) in smoke.items():
            if not any(g == flag or g.startswith(flag + "=") for g in given):
                setattr(args, name, value)
        if not any(g == "--skip" or g.startswith("--skip=") for g in given):
            args.skip = "bigjob"
    try:
        options = Options(
            rounds=args.rounds,
            dir_rounds=min(args.dir_rounds, args.rounds),
            drivers=_choices(args.drivers, DRIVERS, "--drivers"),
            images=_choices(args.images, IMAGES, "--images"),
            skip=frozenset(
                PART_ALIASES.get(part, part)
                for part in _choices(args.skip, (*PARTS, *PART_ALIASES), "--skip")
            ),
            parallels=_parallels(str(args.parallel)),
            tasks=args.tasks,
            warm_tasks=args.warm_tasks,
            exec_calls=args.exec_calls,
            loop_rounds=args.loop_rounds,
            wide_workers=args.wide_workers,
            wide_sleep=args.wide_sleep,
            big_job_tasks=args.big_job_tasks,
            agent_seconds=args.agent_seconds,
            idmap=args.idmap,
            install_competitors=(
                not args.smoke if args.install_competitors is None else args.install_competitors
            ),
        )
    except argparse.ArgumentTypeError as err:
        parse.error(str(err))
    for name in ("rounds", "dir_rounds", "tasks", "warm_tasks", "exec_calls", "wide_workers"):
        if getattr(options, name) < 1:
            parse.error(f"--{name.replace('_', '-')} must be at least 1")
    if not options.drivers or not options.images:
        parse.error("give at least one driver and one image")
    return options
