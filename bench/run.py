"""Speed of container-compute against what users would pick instead (prints, never asserts).

One invocation (``tox -e bench``, as root after scripts/setup-host) runs, interleaved over N
rounds on every storage driver (btrfs, dir) and image (busybox, a ~150 MB debootstrap):

- ours sandbox: ``launch-job`` of 32 trivial tasks with the default, ``isolation=sandbox``
  (warm workers, a fresh sandbox per task; passed explicitly), best parallelism; a
  500-task job of the default (tasks/s) and a bare REST exec round trip (the floor of any
  warm mode). A build without ``isolation`` gets ``reuse_workers=true`` instead;
- ours container: the same job with ``isolation=container``, a fresh worker each (the
  default before, issue 11's "cold");
- spare workers: the container job with tasks of ``sleep 1``, and the trivial one, with and
  without spare workers made ahead of demand (``spare-workers``), at the first parallelism;
- podman and docker ``run --rm --network none`` with a bind-mounted results directory, at
  the same parallelism, from the same rootfs (bench/competitors.py);
- ``lxd-benchmark launch`` + ``delete`` and a sequential ``lxc launch/exec/file pull/delete``;

then 200 live workers at once (a job of ``sleep 30`` tasks with parallelism 200) and a
10,000-task job's bookkeeping. It prints medians (min, max), the targets of issue 11 and
those of issue 20 (the default against podman, isolation=container and a bare LXD exec; the
debootstrap image against busybox) with the measured ratios and PASS/MISS, never asserted. It
exits non-zero only when something broke (a job failed, a competitor could not be installed or
run), naming it; podman or docker absent when not to be installed (``--smoke``) is said and
left out. Everything lives in run-prefixed LXD projects and pools (``ccb<hex>-<driver>``) and
directories, deleted at the end, also on failure or Ctrl-C.
``python bench/run.py --help`` lists the flags (``--smoke`` runs everything small, < 2 min).
"""

import dataclasses
import io
import itertools
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "lib"), str(ROOT)]

from bench import competitors, lxdsetup, ours, wide
from bench.bigjob import run_big_job
from bench.common import BenchError, Measured, measure
from bench.images import BenchImage, prepare_busybox, prepare_debootstrap
from bench.options import Options, parse_args
from bench.report import (
    DefaultFigures,
    IssueFigures,
    Samples,
    default_targets,
    exec_line,
    figure_line,
    issue_targets,
    marginal_seconds,
    mib,
    parallels_for_round,
    rotated,
    summarise,
)
from container_compute.config import HostConfig
from container_compute.constants import WORKER_PROFILE
from container_compute.lxdclient import connect


@dataclass(frozen=True)
class Combo:
    """One storage driver with one image: its project's configuration and the image."""

    driver: str
    image: BenchImage
    config: HostConfig

    @property
    def label(self) -> str:
        """``btrfs/busybox``."""
        return f"{self.driver}/{self.image.name}"


class Bench:
    """One run of the bench: set-up, interleaved rounds, the wide job, the report."""

    def __init__(self, options: Options, prefix: str, scratch: Path) -> None:
        """Nothing is created yet."""
        self.options = options
        self.prefix = prefix
        self.scratch = scratch
        self.samples = Samples()
        self.broken: list[str] = []
        self.launch_failures = 0
        self.benchmark_failures = 0
        self.combos: list[Combo] = []
        self.images: dict[str, BenchImage] = {}
        self.configs: dict[str, HostConfig] = {}
        self.started: list[competitors.ContainerRunner] = []
        self.runners: dict[str, competitors.ContainerRunner] = {}
        self.references: dict[tuple[str, str], str] = {}
        self.unavailable: dict[str, str] = {}  # competitor -> why it was left out
        self.sandbox = ours.sandbox_supported()
        self.isolation_notes: dict[str, int] = {}  # why sandbox jobs ran without -> how many
        self.counter = 0
        self.wide: wide.WideRun | None = None

    # -- set-up -------------------------------------------------------------------------

    def set_up(self) -> None:
        """Projects and pools per driver, the images in each, podman and docker."""
        max_workers = max(self.options.parallels)
        for driver in self.options.drivers:
            config = lxdsetup.base_config(self.prefix, driver, self.options.idmap, max_workers)
            lxdsetup.set_up(config, self.scratch)
            self.configs[driver] = config
        first = next(iter(self.configs.values()))
        isolated = first.worker_idmap_isolated and not first.worker_privileged
        print(f"projects and pools: {', '.join(c.lxd_project for c in self.configs.values())}")
        print(f"workers: unprivileged, idmap {'isolated' if isolated else 'shared'}")
        print(ours.describe_isolation())
        clients = [connect(project=c.lxd_project) for c in self.configs.values()]
        projects = [c.lxd_project for c in self.configs.values()]
        for name in self.options.images:
            begin = time.monotonic()
            if name == "busybox":
                image = prepare_busybox(clients, projects[0], self.scratch / "images", name)
            else:
                image = prepare_debootstrap(clients, projects[0], name)
            self.images[name] = image
            print(f"image {image.describe()} (ready in {time.monotonic() - begin:.0f}s)")
        for driver, config in self.configs.items():
            for image in self.images.values():
                self.combos.append(Combo(driver, image, config))
        self._warm_up()
        self._set_up_competitors()

    def isolations(self) -> list[str]:
        """The isolations measured: sandbox (the default) when this build has it, container."""
        wanted = []
        if self.options.runs("sandbox") and self.sandbox:
            wanted.append(ours.SANDBOX)
        if self.options.runs("container") or self.options.runs("spares"):
            wanted.append(ours.CONTAINER)
        return wanted

    def _warm_up(self) -> None:
        """Untimed small jobs (each isolation) and an lxd-benchmark launch per combo."""
        for combo in self.combos:
            for isolation in self.isolations() or [None]:
                self._try(
                    f"{combo.label} warm-up ({isolation or 'default'})",
                    lambda c=combo, i=isolation: ours.run_job(
                        c.config, self._state(c, i), ours.job_params(c.image.alias, 2, 2, i)
                    ),
                )
            if self.options.runs("lxd-benchmark"):
                self._try(
                    f"{combo.label} lxd-benchmark warm-up",
                    lambda c=combo: self._lxd_benchmark(c, 1, 1),
                )
        print("warm-up done (untimed jobs and an lxd-benchmark launch per pool and image)")

    def _set_up_competitors(self) -> None:
        """Install podman and docker when absent (unless told not to), start them, import images.

        A competitor that cannot be installed or set up is reported (the bench will exit
        non-zero) and left out; one that is absent and not to be installed (``--smoke``,
        ``--no-install-competitors``) is only said so. The rest of the bench runs.
        """
        wanted = [p for p in ("podman", "docker") if self.options.runs(p)]
        if not wanted:
            return
        if self.options.install_competitors:
            installed = self._try(
                f"installing {' and '.join(wanted)}",
                lambda: competitors.ensure_installed(wanted),
            )
            if isinstance(installed, list) and installed:
                print(f"installed from Debian: {', '.join(map(str, installed))}")
        for kind in wanted:
            absent = competitors.missing_binaries(kind)
            if absent:
                how = (
                    "could not be installed"
                    if self.options.install_competitors
                    else "not installed: --install-competitors installs it"
                )
                self.unavailable[kind] = f"{kind} absent ({', '.join(absent)}; {how})"
                print(f"{self.unavailable[kind]}: left out, the rest of the bench goes on")
                continue
            self._try(f"setting up {kind}", lambda k=kind: self._start_runner(k))
            if kind not in self.runners:
                self.unavailable[kind] = f"{kind} could not be set up (see BROKEN above)"

    def _start_runner(self, kind: str) -> None:
        runner: competitors.ContainerRunner
        if kind == "podman":
            runner = competitors.Podman(self.prefix)
            self.started.append(runner)
            print(f"{runner.version()} (runc, cgroupfs, no network, no daemon)")
        else:
            runner = competitors.Docker(self.prefix, self.scratch / "dockerd.log")
            self.started.append(runner)
            print(f"{runner.start()} (own dockerd, no systemd, no bridge, no iptables)")
        for image in self.images.values():
            reference = runner.import_image(image.rootfs, f"{self.prefix}-{image.name}")
            self.references[(kind, image.name)] = reference
        self.runners[kind] = runner

    def close(self) -> None:
        """Stop docker, remove podman's and docker's storage."""
        for runner in self.started:
            try:
                runner.close()
            except Exception as err:  # clean up the rest anyway
                print(f"cleanup of {runner.kind}: {err}")

    # -- helpers ------------------------------------------------------------------------

    def _state(self, combo: Combo | None = None, isolation: str | None = None) -> Path:
        """A fresh state dir; sandbox jobs of one driver and image share theirs (ready workers)."""
        if combo is not None and isolation == ours.SANDBOX:
            return self.scratch / f"state-{combo.driver}-{combo.image.name}"
        self.counter += 1
        return self.scratch / f"state-{self.counter}"

    def _try(self, what: str, action: Callable[[], object]) -> object | None:
        """Run one measurement; a failure is recorded (exit non-zero later), not fatal."""
        try:
            return action()
        except Exception as err:  # any failure of one measurement: reported, the rest runs
            detail = err.stderr if isinstance(err, subprocess.CalledProcessError) else ""
            self.broken.append(f"{what}: {err} {detail or ''}".strip())
            print(f"  BROKEN {what}: {err} {detail or ''}")
            traceback.print_exc(limit=3)
            return None

    def _record(
        self, figure: str, parallel: int, measured: Measured, note: str = "", lxd: bool = True
    ) -> None:
        """Keep a measurement and print it (with LXD's CPU for the methods that use LXD)."""
        self.samples.add(figure, parallel, measured.seconds, measured.lxd_cpu if lxd else None)
        where = f" P={parallel}" if parallel else ""
        cpu = f"LXD CPU {measured.lxd_cpu:.1f}s, " if lxd else ""
        print(
            f"  {figure}{where}: {measured.seconds:.2f}s "
            f"({cpu}bench CPU {measured.own_cpu:.1f}s){note}"
        )

    # -- the methods ----------------------------------------------------------------------

    def _ours(
        self,
        combo: Combo,
        figure: str,
        tasks: int,
        parallel: int,
        isolation: str,
        spares: bool = True,
        sleep: int = 0,
    ) -> None:
        config = dataclasses.replace(combo.config, spare_workers=spares)
        params = ours.job_params(combo.image.alias, tasks, parallel, isolation, sleep)
        run = ours.run_job(config, self._state(combo, isolation), params)
        self.launch_failures += run.launch_failures
        note = (
            f", returned after {run.returned_seconds:.2f}s"
            f", workers gone {run.clean_seconds:.1f}s later"
        )
        if run.isolation_note:
            self.isolation_notes[run.isolation_note] = (
                self.isolation_notes.get(run.isolation_note, 0) + 1
            )
            note += f", WITHOUT SANDBOXES: {run.isolation_note[:200]}"
        if run.launch_failures:
            note += f", LAUNCH FAILURES {run.launch_failures}: " + "; ".join(
                run.failure_details[:2]
            )
        self._record(figure, parallel, run.measured, note)

    def _lxd_benchmark(self, combo: Combo, tasks: int, parallel: int) -> Measured:
        project = combo.config.lxd_project
        launch = measure(
            lambda: competitors.lxd_benchmark(
                project, combo.image.alias, tasks, parallel, "launch"
            )
        )
        running = sum(
            1
            for i in connect(project=project).instances.all()
            if i.name.startswith("benchmark-") and i.status == "Running"
        )
        delete = measure(lambda: competitors.lxd_benchmark(project, "", tasks, parallel, "delete"))
        self.benchmark_failures += max(0, tasks - running)
        return Measured(
            launch.seconds + delete.seconds,
            launch.lxd_cpu + delete.lxd_cpu,
            launch.own_cpu + delete.own_cpu,
        )

    def _container_runner(self, kind: str, image: str, parallel: int) -> None:
        runner = self.runners[kind]
        reference = self.references[(kind, image)]
        directory = self.scratch / f"{kind}-{self._state().name}"
        measured = measure(
            lambda: competitors.run_batch(
                lambda index, results: runner.run_one(reference, index, results),
                self.options.tasks,
                parallel,
                directory,
                kind,
            )
        )
        shutil.rmtree(directory, ignore_errors=True)
        self._record(f"{image} {kind}", parallel, measured, lxd=False)

    def _bare_exec(self, combo: Combo, parallel: int) -> None:
        per_call = ours.bare_exec(
            combo.config.lxd_project, combo.image.alias, self.options.exec_calls, parallel
        )
        self.samples.add(f"{combo.label} bare exec", parallel, per_call)
        print(f"  {combo.label} bare exec P={parallel}: {per_call * 1000:.1f} ms per call")

    def _steps(
        self,
        round_index: int,
        figure: str,
        like: str,
        action: Callable[[str, int], None],
    ) -> list[tuple[str, Callable[[], None]]]:
        """One method's measurements this round, at the parallelisms report.py picks."""
        return [
            (f"{figure} P={p}", lambda p=p: action(figure, p))
            for p in parallels_for_round(
                round_index, figure, self.samples, self.options.parallels, like
            )
        ]

    def _combo_round(self, round_index: int, combo: Combo, reference: Combo) -> None:
        """Every LXD method on one driver and image, in an order that changes each round.

        The reference (first driver and image) tries every parallelism in the first round;
        the other combinations start from its best. The default's many-task job, the bare
        exec and the lxc loop run on the reference only.
        """
        tasks = self.options.tasks
        is_reference = combo is reference
        steps: list[tuple[str, Callable[[], None]]] = []
        sandbox, container = ours.SANDBOX, ours.CONTAINER

        def like(method: str) -> str:
            return "" if is_reference else f"{reference.label} {method}"

        if self.options.runs("container"):
            steps += self._steps(
                round_index,
                ours_figure(combo.label, container),
                like(f"ours {container}"),
                lambda f, p: self._ours(combo, f, tasks, p, container),
            )
        if self.options.runs("sandbox") and self.sandbox:
            small = ours_figure(combo.label, sandbox)
            steps += self._steps(
                round_index,
                small,
                like(f"ours {sandbox}"),
                lambda f, p: self._ours(combo, f, tasks, p, sandbox),
            )
            if is_reference:
                p, many = self.options.parallels[0], self.options.warm_tasks
                figure = many_figure(combo.label, many)
                steps.append((figure, lambda: self._ours(combo, figure, many, p, sandbox)))
                if round_index > 0 and self.samples.chosen.get(small, p) != p:
                    # the small job at the big one's parallelism too, every round: the
                    # marginal cost per task compares the two
                    steps.append((small, lambda: self._ours(combo, small, tasks, p, sandbox)))
        if is_reference and self.options.runs("spares"):
            steps += self._spare_steps(combo)
        if is_reference and self.options.runs("sandbox"):
            for p in sorted({1, self.options.parallels[0]}):
                steps.append(("bare exec", lambda p=p: self._bare_exec(combo, p)))
        if self.options.runs("lxd-benchmark"):
            steps += self._steps(
                round_index,
                f"{combo.label} lxd-benchmark",
                like("lxd-benchmark"),
                lambda f, p: self._record(f, p, self._lxd_benchmark(combo, tasks, p)),
            )
        if is_reference and self.options.runs("loop") and round_index < self.options.loop_rounds:
            steps.append(("lxc loop", lambda: self._loop(combo)))
        for what, step in rotated(steps, round_index):
            self._try(f"round {round_index + 1} {what}", step)

    def _spare_steps(self, combo: Combo) -> list[tuple[str, Callable[[], None]]]:
        """The container job, trivial and ``sleep 1`` tasks, with spare workers and without.

        Spare workers are made ahead of demand for isolation=container only (the default's
        warm workers take none).
        """
        p = self.options.parallels[0]
        steps: list[tuple[str, Callable[[], None]]] = []
        for sleep, spares in itertools.product((0, 1), (True, False)):
            figure = spare_figure(combo.label, sleep, spares)
            job = partial(
                self._ours, combo, figure, self.options.tasks, p, ours.CONTAINER, spares, sleep
            )
            steps.append((figure, job))
        return steps

    def _loop(self, combo: Combo) -> None:
        directory = self.scratch / f"loop-{self._state().name}"
        measured = measure(
            lambda: competitors.lxc_loop(
                combo.config.lxd_project,
                combo.image.alias,
                WORKER_PROFILE,
                self.options.tasks,
                directory,
            )
        )
        shutil.rmtree(directory, ignore_errors=True)
        self._record(f"{combo.label} lxc loop", 1, measured)

    def _image_round(self, round_index: int, image: str) -> None:
        """Podman and docker on one image (their storage is their own, not LXD's pool)."""
        steps: list[tuple[str, Callable[[], None]]] = []
        first = self.options.images[0]
        for kind in self.runners:
            steps += self._steps(
                round_index,
                f"{image} {kind}",
                "" if image == first else f"{first} {kind}",
                lambda _f, p, k=kind: self._container_runner(k, image, p),
            )
        for what, step in rotated(steps, round_index):
            self._try(f"round {round_index + 1} {what}", step)

    # -- the run --------------------------------------------------------------------------

    def rounds(self) -> None:
        """The interleaved rounds (the dir pool takes part in the first --dir-rounds only)."""
        if not self.sandbox and self.options.runs("sandbox"):
            print(
                "isolation=sandbox: not available in this build (LaunchJobParams has neither "
                "isolation nor reuse_workers): only isolation=container runs"
            )
        reference = self.combos[0]
        for round_index in range(self.options.rounds):
            begin = time.monotonic()
            print(f"\nround {round_index + 1}/{self.options.rounds}")
            combos = [
                c
                for c in self.combos
                if c.driver != "dir" or round_index < self.options.dir_rounds
            ]
            images = list(self.images)
            for combo in rotated(combos, round_index):
                self._combo_round(round_index, combo, reference)
                if combo.image.name in images:  # podman and docker once per image and round
                    images.remove(combo.image.name)
                    self._image_round(round_index, combo.image.name)
            print(f"round {round_index + 1} took {time.monotonic() - begin:.0f}s")

    def wide_job(self) -> None:
        """N live workers at once (bench/wide.py), on the first driver, busybox if there."""
        image = "busybox" if "busybox" in self.images else next(iter(self.images))
        config = self.configs[self.options.drivers[0]]
        print(
            f"\n{self.options.wide_workers} live workers ({config.storage_driver}/{image}, "
            f"sleep {self.options.wide_sleep}, launch-job's default: "
            f"isolation={ours.default_isolation()})"
        )
        self.wide = wide.run_wide(
            config,
            self.images[image].alias,
            self.options.wide_workers,
            self.options.wide_sleep,
            self._state(),
            self.scratch,
        )
        self.launch_failures += self.wide.launch_failures

    # -- the report -----------------------------------------------------------------------

    def report(self) -> None:
        """Medians of every figure, then the targets of issues 11 and 20."""
        print("\n== figures: medians over rounds (min, max); best parallelism per method ==")
        figures = sorted({f for (f, _p) in self.samples.values})
        for figure in figures:
            best = self.samples.best(figure)
            if best is None:
                continue
            parallel, summary = best
            if figure.endswith("bare exec"):
                for p, values in sorted(self.samples.by_parallel(figure).items()):
                    print(exec_line(figure, p, summarise(values)))
                continue
            print(figure_line(figure, parallel, summary, self.samples.cpu(figure, parallel)))
            others = {p: v for p, v in self.samples.by_parallel(figure).items() if p != parallel}
            for p, values in sorted(others.items()):
                print(f"      (P={p}: {summarise(values).median:.2f}s, n={len(values)})")
        for line in self.targets():
            print(line)

    def _spare_lines(self, label: str) -> list[str]:
        """Cold jobs with spare workers against without, trivial and ``sleep 1`` tasks."""
        lines = []
        for sleep in (1, 0):
            on = self._best(spare_figure(label, sleep, True))
            off = self._best(spare_figure(label, sleep, False))
            if on is not None and off is not None:
                tasks = "sleep 1" if sleep else "trivial"
                lines.append(
                    f"  spare workers, {self.options.tasks} {tasks} tasks "
                    f"(P={self.options.parallels[0]}): {on:.2f}s with, {off:.2f}s without "
                    f"({on / off:.2f}x)"
                )
        return lines

    def _best(self, figure: str) -> float | None:
        best = self.samples.best(figure)
        return best[1].median if best else None

    def targets(self) -> list[str]:
        """The targets of issues 11 and 20 with the measured values, and related ratios."""
        ref = self.combos[0]
        warm_p = self.options.parallels[0]
        bare = self.samples.by_parallel(f"{ref.label} bare exec").get(warm_p)
        container = self._best(ours_figure(ref.label, ours.CONTAINER))
        sandbox = self._best(ours_figure(ref.label, ours.SANDBOX))
        figures = IssueFigures(
            cold=container,
            lxd_benchmark=self._best(f"{ref.label} lxd-benchmark"),
            podman=self._best(f"{ref.image.name} podman"),
            debootstrap_cold=self._best(ours_figure(f"{ref.driver}/debootstrap", ours.CONTAINER)),
            busybox_cold=self._best(ours_figure(f"{ref.driver}/busybox", ours.CONTAINER)),
            warm_many=self._best(many_figure(ref.label, self.options.warm_tasks)),
            bare_exec=summarise(bare).median if bare else None,
            warm_tasks=self.options.warm_tasks,
            warm_parallel=warm_p,
            warm_available=self.sandbox,
            launch_failures=self.launch_failures,
        )
        lines = [
            "",
            f"== targets of issue 11 (reference: {ref.label}, {self.options.tasks} tasks; "
            "cold: isolation=container, warm: isolation=sandbox) ==",
            *(target.line() for target in issue_targets(figures)),
        ]
        small = self.samples.by_parallel(ours_figure(ref.label, ours.SANDBOX)).get(warm_p)
        marginal = marginal_seconds(
            figures.warm_many,
            summarise(small).median if small else None,
            self.options.warm_tasks,
            self.options.tasks,
        )
        if marginal is not None and figures.bare_exec:
            lines.append(
                f"  warm marginal cost per task ({self.options.warm_tasks}- minus "
                f"{self.options.tasks}-task job, P={warm_p}): {marginal * 1000:.1f} ms = "
                f"{marginal / figures.bare_exec:.2f}x a bare exec "
                f"({figures.bare_exec * 1000:.1f} ms)"
            )
        docker = self._best(f"{ref.image.name} docker")
        loop = self._best(f"{ref.label} lxc loop")
        for name, ours_seconds in (("cold", container), ("default (sandbox)", sandbox)):
            if docker is not None and ours_seconds is not None:
                lines.append(f"  {name} ours / docker run --rm: {ours_seconds / docker:.2f}x")
        for name, ours_seconds in (("cold", container), ("default (sandbox)", sandbox)):
            if loop is not None and ours_seconds is not None:
                lines.append(
                    f"  sequential lxc loop / {name} ours: {loop / ours_seconds:.1f}x faster"
                )
        lines += self._spare_lines(ref.label)
        for figure in (f"ours {ours.CONTAINER}", f"ours {ours.SANDBOX}", "lxd-benchmark"):
            best = self.samples.best(f"{ref.label} {figure}")
            cpu = self.samples.cpu(f"{ref.label} {figure}", best[0]) if best else None
            if cpu is not None:
                lines.append(
                    f"  LXD CPU per task, {figure}: {cpu.median / self.options.tasks:.2f}s"
                )
        if self.benchmark_failures:
            lines.append(f"  lxd-benchmark launches that failed: {self.benchmark_failures}")
        if self.wide is not None:
            lines.append(
                f"  {self.options.wide_workers} live workers: {self.wide.launch_failures} "
                f"launch failures, peak {self.wide.peak_running} running, MemAvailable "
                f"{mib(self.wide.mem_before_kib)} -> {mib(self.wide.mem_low_kib)}, LXD CPU "
                f"{self.wide.measured.lxd_cpu:.1f}s"
            )
        return lines + self._default_lines(ref, figures.bare_exec, sandbox, container)

    def _default_lines(
        self, ref: Combo, bare_exec: float | None, sandbox: float | None, container: float | None
    ) -> list[str]:
        """The targets of issue 20: launch-job's default (isolation=sandbox), PASS or MISS."""
        figures = DefaultFigures(
            sandbox=sandbox,
            container=container,
            podman=self._best(f"{ref.image.name} podman"),
            many=self._best(many_figure(ref.label, self.options.warm_tasks)),
            bare_exec=bare_exec,
            debootstrap=self._best(ours_figure(f"{ref.driver}/debootstrap", ours.SANDBOX)),
            busybox=self._best(ours_figure(f"{ref.driver}/busybox", ours.SANDBOX)),
            tasks=self.options.tasks,
            many_tasks=self.options.warm_tasks,
            many_parallel=self.options.parallels[0],
            why=self._why_missing(),
        )
        how = "" if ours.isolation_supported() else ", asked for as reuse_workers=true"
        lines = [
            "",
            f"== targets of issue 20 (reference: {ref.label}; the default: isolation=sandbox"
            f"{how}) ==",
            *(target.line() for target in default_targets(figures)),
        ]
        for note, count in self.isolation_notes.items():
            lines.append(f"  NOTE: {count} sandbox job(s) ran without sandboxes: {note}")
        return lines

    def _why_missing(self) -> dict[str, str]:
        """Why each figure of issue 20's targets may be missing (a skipped part, no image)."""
        skipped = "skipped (--skip {})".format
        if not self.sandbox:
            sandbox = "no sandbox mode in this build"
        elif not self.options.runs("sandbox"):
            sandbox = skipped("sandbox")
        else:
            sandbox = ""
        why = {"sandbox": sandbox, "many": sandbox, "busybox": sandbox, "debootstrap": sandbox}
        why["bare_exec"] = "" if self.options.runs("sandbox") else skipped("sandbox")
        why["container"] = "" if self.options.runs("container") else skipped("container")
        why["podman"] = self.unavailable.get("podman", "") or (
            "" if self.options.runs("podman") else skipped("podman")
        )
        for image in ("busybox", "debootstrap"):
            if image not in self.options.images:
                why[image] = f"no {image} image in this run (--images)"
        return why


def ours_figure(label: str, isolation: str) -> str:
    """The name of our small job's figure: ``btrfs/busybox ours sandbox``."""
    return f"{label} ours {isolation}"


def many_figure(label: str, tasks: int) -> str:
    """The name of the default's many-task job: ``btrfs/busybox ours sandbox x500``."""
    return f"{ours_figure(label, ours.SANDBOX)} x{tasks}"


def spare_figure(label: str, sleep: int, spares: bool) -> str:
    """The name of a spare-workers measurement (isolation=container)."""
    tasks = f"sleep {sleep}" if sleep else "trivial"
    return f"{ours_figure(label, ours.CONTAINER)} {tasks}, spares {'on' if spares else 'off'}"


@contextmanager
def interrupts_as_exceptions() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt like Ctrl-C, so clean-up runs on both."""

    def handler(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def cleanup_not_interrupted() -> Iterator[None]:
    """Ignore Ctrl-C and SIGTERM while the run's things are deleted.

    A second Ctrl-C, or ``timeout`` signalling both the process and its group, would otherwise
    interrupt the clean-up and leave things behind.
    """
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    print("cleaning up (Ctrl-C is ignored until it is done) ...")
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    """Run the bench; return 0, or 1 when something broke."""
    options = parse_args(argv)
    if os.geteuid() != 0:
        print("the bench runs as root, after scripts/setup-host (LXD, lxd-tools, debootstrap)")
        return 2
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # progress shows in CI logs as it happens
    prefix = f"ccb{secrets.token_hex(3)}"
    scratch = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    started = time.monotonic()
    print(
        f"bench {prefix}: {options.rounds} rounds, drivers {','.join(options.drivers)}, "
        f"images {','.join(options.images)}, {options.tasks} tasks, "
        f"parallelism {','.join(map(str, options.parallels))}, "
        f"skipping {','.join(sorted(options.skip)) or 'nothing'}"
    )
    bench = Bench(options, prefix, scratch)
    with interrupts_as_exceptions():
        try:
            bench.set_up()
            bench.rounds()
            if options.runs("wide"):
                bench._try("wide job", bench.wide_job)
            if options.runs("bigjob"):
                print(f"\n{options.big_job_tasks}-task job")
                config = bench.configs[options.drivers[0]]
                alias = next(iter(bench.images.values())).alias
                bench._try(
                    "big job",
                    lambda: run_big_job(
                        config, scratch, alias, options.big_job_tasks, options.agent_seconds
                    ),
                )
            bench.report()
        except BenchError as err:
            bench.broken.append(str(err))
            print(f"BROKEN: {err}")
        except KeyboardInterrupt:
            bench.broken.append("interrupted (Ctrl-C or SIGTERM)")
            print("\ninterrupted")
        finally:
            with cleanup_not_interrupted():
                bench.close()
                lxdsetup.purge(prefix)
                shutil.rmtree(scratch, ignore_errors=True)
    print(f"\nbench took {(time.monotonic() - started) / 60:.1f} min")
    if bench.broken:
        print("SOMETHING BROKE:")
        for entry in bench.broken:
            print(f"  - {entry[:500]}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
