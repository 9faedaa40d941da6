"""Pure logic of the bench: samples, medians, best parallelism, ratios and the printed lines.

Nothing here touches LXD, podman or docker, so every function is unit-tested
(tests/unit/test_bench_report.py).
"""

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")
MET = ("met", "NOT met")  # the verdicts of issue 11's targets
PASS_MISS = ("PASS", "MISS")  # the verdicts of issue 20's targets


@dataclass(frozen=True)
class Summary:
    """Median, minimum and maximum of the samples of one figure, and how many there were."""

    median: float
    low: float
    high: float
    count: int


def summarise(values: Sequence[float]) -> Summary:
    """Return the summary of non-empty ``values``.

    Raises:
        ValueError: when there are no values.
    """
    if not values:
        raise ValueError("no samples")
    return Summary(statistics.median(values), min(values), max(values), len(values))


@dataclass
class Samples:
    """Samples of every figure, keyed by (figure, parallelism); 0 when one has no parallelism."""

    values: dict[tuple[str, int], list[float]] = field(default_factory=lambda: defaultdict(list))
    extras: dict[tuple[str, int], list[float]] = field(default_factory=lambda: defaultdict(list))
    chosen: dict[str, int] = field(default_factory=dict)  # parallelism kept after round 1

    def add(self, figure: str, parallel: int, seconds: float, cpu: float | None = None) -> None:
        """Record one measurement (seconds) and, when known, the CPU seconds it cost LXD."""
        self.values[(figure, parallel)].append(seconds)
        if cpu is not None:
            self.extras[(figure, parallel)].append(cpu)

    def by_parallel(self, figure: str) -> dict[int, list[float]]:
        """The samples of one figure by parallelism."""
        return {p: v for (f, p), v in self.values.items() if f == figure and v}

    def best(self, figure: str) -> tuple[int, Summary] | None:
        """The parallelism kept for a figure, or the one with the lowest median; its summary.

        None when the figure has no samples.
        """
        choices = self.by_parallel(figure)
        if not choices:
            return None
        parallel = self.chosen.get(figure)
        if parallel not in choices:
            parallel = best_parallel(choices)
        return parallel, summarise(choices[parallel])

    def cpu(self, figure: str, parallel: int) -> Summary | None:
        """The summary of the CPU seconds recorded with a figure, if any."""
        values = self.extras.get((figure, parallel))
        return summarise(values) if values else None


def best_parallel(samples: dict[int, list[float]]) -> int:
    """Return the parallelism whose samples have the lowest median (ties: the smaller one).

    Raises:
        ValueError: when no parallelism has samples.
    """
    candidates = {p: statistics.median(v) for p, v in samples.items() if v}
    if not candidates:
        raise ValueError("no samples")
    return min(candidates, key=lambda p: (candidates[p], p))


def parallels_for_round(
    round_index: int,
    figure: str,
    samples: Samples,
    parallels: Sequence[int],
    like: str = "",
) -> list[int]:
    """Which parallelisms to measure in a round.

    A figure of its own (``like`` empty) tries all of them in the first round; from the
    second round on it keeps the one that was best in the first. A figure ``like`` another
    (the same method on a slower pool or a bigger image) keeps the other's choice, or its
    best so far, from its first measurement on. Once chosen, a parallelism stays: it gets a
    sample in every round, and the report prints its median.
    """
    if figure in samples.chosen:
        return [samples.chosen[figure]]
    if round_index == 0 and not like:
        return list(parallels)
    for source in (figure, like):
        if source in samples.chosen:
            samples.chosen[figure] = samples.chosen[source]
            return [samples.chosen[figure]]
        best = samples.best(source) if source else None
        if best is not None:
            samples.chosen[figure] = best[0]
            return [best[0]]
    return list(parallels)


def rotated(items: list[T], shift: int) -> list[T]:
    """The items starting at ``shift`` (mod length): each round changes who goes first."""
    if not items:
        return items
    shift %= len(items)
    return items[shift:] + items[:shift]


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """Return numerator / denominator, or None when either is missing or the divisor is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def format_seconds(summary: Summary) -> str:
    """``12.34s (min 11.00, max 13.50, n=5)``; one sample prints alone."""
    if summary.count == 1:
        return f"{summary.median:.2f}s (n=1)"
    return (
        f"{summary.median:.2f}s (min {summary.low:.2f}, max {summary.high:.2f}, n={summary.count})"
    )


def figure_line(label: str, parallel: int, summary: Summary, cpu: Summary | None = None) -> str:
    """One printed row: the label, its parallelism, the median with min/max, LXD's CPU."""
    where = f" P={parallel}" if parallel else ""
    line = f"  {label + where:<38} {format_seconds(summary)}"
    if cpu is not None:
        line += f"  LXD CPU {cpu.median:.1f}s"
    return line


def exec_line(label: str, parallel: int, summary: Summary) -> str:
    """One printed row of a per-call figure, in milliseconds."""
    return (
        f"  {label + f' P={parallel}':<38} {summary.median * 1000:.1f} ms per call "
        f"(min {summary.low * 1000:.1f}, max {summary.high * 1000:.1f}, n={summary.count})"
    )


@dataclass(frozen=True)
class Target:
    """One target of the issue, checked against a measured value (printed, never asserted)."""

    name: str
    value: float | None
    limit: float
    at_most: bool
    unit: str = "x"
    why_missing: str = ""
    verdicts: tuple[str, str] = MET  # printed when the target is met, and when it is not

    @property
    def met(self) -> bool | None:
        """Whether the value meets the target; None when it was not measured."""
        if self.value is None or math.isnan(self.value):
            return None
        return self.value <= self.limit if self.at_most else self.value >= self.limit

    def line(self) -> str:
        """``name: 0.42x (target <= 0.5x): met`` (or PASS), or why it could not be measured."""
        sign = "<=" if self.at_most else ">="
        goal = f"target {sign} {self.limit:g}{self.unit}"
        if self.value is None:
            return f"  {self.name}: not measured ({goal}){': ' if self.why_missing else ''}" + (
                self.why_missing
            )
        verdict = self.verdicts[0] if self.met else self.verdicts[1]
        number = f"{self.value:.0f}" if self.value.is_integer() else f"{self.value:.2f}"
        return f"  {self.name}: {number}{self.unit} ({goal}): {verdict}"


@dataclass(frozen=True)
class IssueFigures:
    """The medians the targets of issue 11 are computed from (None: not measured).

    Issue 11's cold path is isolation=container (a fresh worker per task), its warm mode
    isolation=sandbox.
    """

    cold: float | None
    lxd_benchmark: float | None
    podman: float | None
    debootstrap_cold: float | None
    busybox_cold: float | None
    warm_many: float | None
    bare_exec: float | None
    warm_tasks: int
    warm_parallel: int
    warm_available: bool
    launch_failures: int


def issue_targets(figures: IssueFigures) -> list[Target]:
    """The targets of issue 11 with the measured values."""
    no_warm = "" if figures.warm_available else "warm mode not available in this build"
    many, tasks = figures.warm_many, figures.warm_tasks
    return [
        Target(
            "cold ours / lxd-benchmark launch+delete",
            ratio(figures.cold, figures.lxd_benchmark),
            0.5,
            at_most=True,
        ),
        Target(
            "cold ours / podman run --rm (moonshot)",
            ratio(figures.cold, figures.podman),
            1.0,
            at_most=True,
        ),
        Target(
            "cold debootstrap / busybox (ours)",
            ratio(figures.debootstrap_cold, figures.busybox_cold),
            1.5,
            at_most=True,
        ),
        Target(
            f"warm tasks/s ({tasks} trivial tasks, P={figures.warm_parallel})",
            None if many is None else per_second(tasks, many),
            25,
            at_most=False,
            unit="",
            why_missing=no_warm,
        ),
        Target(
            f"warm per-task overhead / bare API exec (P={figures.warm_parallel})",
            ratio(None if many is None else many / tasks, figures.bare_exec),
            2.0,
            at_most=True,
            why_missing=no_warm,
        ),
        Target(
            "launch failures across the whole bench (ours)",
            float(figures.launch_failures),
            0,
            at_most=True,
            unit="",
        ),
    ]


@dataclass(frozen=True)
class DefaultFigures:
    """The medians the targets of issue 20 are computed from (None: not measured).

    ``sandbox`` is launch-job's default (isolation=sandbox) and ``container`` a fresh worker per
    task, both on the reference pool and image with ``tasks`` trivial tasks; ``podman`` the same
    tasks with ``podman run --rm``; ``many`` the default with ``many_tasks`` tasks at
    ``many_parallel``, and ``bare_exec`` a bare LXD exec round trip (seconds per call) at that
    parallelism; ``debootstrap`` and ``busybox`` the default with each image on the reference
    pool. ``why`` says, by field name, why a figure is missing.
    """

    sandbox: float | None
    container: float | None
    podman: float | None
    many: float | None
    bare_exec: float | None
    debootstrap: float | None
    busybox: float | None
    tasks: int
    many_tasks: int
    many_parallel: int
    why: Mapping[str, str] = field(default_factory=dict)

    def missing(self, *names: str) -> str:
        """Why some of the named figures are missing (those that are, and say why)."""
        reasons = [
            self.why[name] for name in names if getattr(self, name) is None and self.why.get(name)
        ]
        return "; ".join(dict.fromkeys(reasons))


def default_targets(figures: DefaultFigures) -> list[Target]:
    """The targets of issue 20 (launch-job's default, isolation=sandbox) with measured values."""
    tasks, many, parallel = figures.tasks, figures.many_tasks, figures.many_parallel
    return [
        Target(
            f"1. speed-up of the default over parallel podman run --rm ({tasks} trivial tasks)",
            ratio(figures.podman, figures.sandbox),
            3,
            at_most=False,
            why_missing=figures.missing("podman", "sandbox"),
            verdicts=PASS_MISS,
        ),
        Target(
            f"1. speed-up of the default over isolation=container ({tasks} trivial tasks)",
            ratio(figures.container, figures.sandbox),
            4,
            at_most=False,
            why_missing=figures.missing("container", "sandbox"),
            verdicts=PASS_MISS,
        ),
        Target(
            f"2. tasks/s of the default ({many} trivial tasks, P={parallel})",
            None if figures.many is None else per_second(many, figures.many),
            50,
            at_most=False,
            unit="",
            why_missing=figures.missing("many"),
            verdicts=PASS_MISS,
        ),
        Target(
            f"2. per-task time of the default / bare LXD exec round trip ({many} tasks, "
            f"P={parallel})",
            ratio(None if figures.many is None else figures.many / many, figures.bare_exec),
            1.5,
            at_most=True,
            why_missing=figures.missing("many", "bare_exec"),
            verdicts=PASS_MISS,
        ),
        Target(
            f"3. debootstrap / busybox with the default ({tasks} trivial tasks)",
            ratio(figures.debootstrap, figures.busybox),
            1.3,
            at_most=True,
            why_missing=figures.missing("debootstrap", "busybox"),
            verdicts=PASS_MISS,
        ),
    ]


@dataclass(frozen=True)
class TaskAttempts:
    """What the ledger says of one task: its attempts, charged ones, and launch errors."""

    attempts: int
    charged: int
    succeeded: bool
    launch_errors: int


def launch_failures(tasks: Iterable[TaskAttempts]) -> int:
    """Count attempts lost to the host: launch errors, or attempts charged to no one.

    An attempt that failed to launch is uncharged too, so each task counts the larger of its
    launch errors and its uncharged attempts (the successful final attempt is not one).
    """
    total = 0
    for task in tasks:
        uncharged = task.attempts - task.charged - (1 if task.succeeded else 0)
        total += max(task.launch_errors, uncharged, 0)
    return total


def marginal_seconds(
    big: float | None, small: float | None, big_count: int, small_count: int
) -> float | None:
    """Seconds per extra task between a small and a big job: their fixed costs cancel out."""
    if big is None or small is None or big_count <= small_count:
        return None
    return (big - small) / (big_count - small_count)


def per_second(count: int, seconds: float) -> float | None:
    """Return count / seconds, or None when no time was measured."""
    return count / seconds if seconds > 0 else None


def mib(kib: int) -> str:
    """KiB as MiB with one decimal."""
    return f"{kib / 1024:.1f} MiB"
