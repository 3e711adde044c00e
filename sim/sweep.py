"""`vecmig sweep`: one scenario over many seeds, in local processes or on a Dask cluster.

A sweep is a list of tasks (`sweep_task.Task`: scenario, seed, strategy, buggify, duration,
swarm). Each result is stored as it arrives (`sweep_store`), so `--resume` runs only the seeds
that have none; a failing seed also keeps its history and report under `failures/`. At the
end, `sweep_report` writes sweep.json and sweep.html and the terminal gets the failures
grouped by signature, each group with the replay command of its smallest seed.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from vecmig.harness.cli import (
    EXIT_ANOMALIES,
    EXIT_BAD_INPUT,
    EXIT_INTERNAL,
    EXIT_STALLED,
    EXIT_VALID,
    strategy_argument,
)
from vecmig.sim import sweep_report
from vecmig.sim.command import _at_least, _load, _seconds, scenario_arg
from vecmig.sim.scenario import Scenario, ScenarioError
from vecmig.sim.sweep_executors import Lost, SeedExecutor, SweepError, connect
from vecmig.sim.sweep_store import ResultStore, StoreError
from vecmig.sim.sweep_task import SeedResult, Task, fingerprint, run_seed

DESCRIPTION = """\
Run one scenario over many seeds, with swarm faults (a random subset of fault families with
random timings per seed), in local processes (--jobs) or on a Dask cluster (--cluster).

Every result is stored in OUT/results.sqlite as it arrives: a sweep stopped halfway picks up
where it stopped with --resume. A failing seed keeps its history in OUT/failures/; every seed
keeps its report. OUT/sweep.json and OUT/sweep.html group the failures by signature (first
anomaly, phase, fault families active, op), each with the command that replays its smallest
seed.
"""

EPILOG = """\
exit codes: 0 every seed valid, 1 some seed found anomalies (or its verdict is unknown, or its
run raised), 2 bad input, 3 some seeds could not be run (their workers died; --resume
retries them), 4 no anomalies but some seed stalled (its plan stopped making progress).

examples:
  vecmig sweep default --seeds 32 --jobs 4
  vecmig sweep default --seeds 2000 --cluster tcp://scheduler:8786 --out out/nightly
  vecmig sweep default --seeds 2000 --cluster tcp://scheduler:8786 --out out/nightly --resume
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sweep = subparsers.add_parser(
        "sweep",
        help="many seeds with swarm faults, locally or on a Dask cluster; failures grouped",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sweep.add_argument("scenario", metavar="SCENARIO", nargs="?", default="default")
    sweep.add_argument("--seeds", type=_at_least(1), default=8, help="how many seeds (default 8)")
    sweep.add_argument("--first-seed", type=_at_least(0), default=1)
    sweep.add_argument(
        "--strategy",
        type=strategy_argument,
        default="safe",
        metavar="STRATEGY",
        help="safe (default), naive, or safe-without:PROTECTION[,PROTECTION]",
    )
    sweep.add_argument("--no-swarm", action="store_true", help="only the scenario's own faults")
    sweep.add_argument(
        "--buggify",
        action="store_true",
        help="draw each seed's settings and faults too (instead of swarm faults)",
    )
    sweep.add_argument("--duration", type=_seconds, default=None, metavar="S")
    where = sweep.add_mutually_exclusive_group()
    where.add_argument(
        "--jobs",
        type=_at_least(1),
        default=2,
        help="local worker processes (default 2; 1: this process)",
    )
    where.add_argument(
        "--cluster",
        metavar="ADDRESS",
        default=None,
        help="a Dask scheduler, e.g. tcp://scheduler:8786 (needs pip install 'vecmig[sweep]')",
    )
    sweep.add_argument(
        "--out", metavar="DIR", default=None, help="default out/sweep-<scenario>-<strategy>"
    )
    sweep.add_argument(
        "--resume",
        action="store_true",
        help="keep the results already in OUT and run only the missing seeds",
    )
    sweep.add_argument("--quiet", action="store_true", help="no progress bar, no per-seed table")
    sweep.set_defaults(handler=run_command)


# ---------------------------------------------------------------------------------------------
# The sweep as data.


def plan(
    given: str,
    scenario: Scenario,
    seeds: Sequence[int],
    strategy: str,
    *,
    swarm: bool = True,
    buggify: bool = False,
    duration: float | None = None,
) -> list[Task]:
    """The tasks of a sweep: one per seed, naming the scenario as a replay command would.
    Buggify draws its own faults, so a buggified task has no swarm faults."""
    name = scenario_arg(given, scenario)
    swarm = swarm and not buggify
    return [Task(name, seed, strategy, buggify, duration, swarm) for seed in seeds]


@dataclass
class SweepRun:
    """What one invocation did (a resumed sweep's earlier results are in the store)."""

    executor: str
    planned: int
    resumed: int = 0
    ran: int = 0
    lost: list[tuple[Task, str]] = field(default_factory=list)
    wall_s: float = 0.0
    interrupted: bool = False


def run(
    tasks: Sequence[Task],
    scenario: Scenario,
    executor: SeedExecutor,
    store: ResultStore,
    out: Path,
    *,
    resume: bool = False,
    on_result: Callable[[SeedResult], None] | None = None,
) -> SweepRun:
    """Run the tasks that have no stored result (all of them unless `resume`), storing each
    result as it arrives. `on_result` sees every stored result (the progress bar, tests)."""
    digest = fingerprint(scenario)
    keys = [task.key(digest) for task in tasks]
    if not resume:
        for row in store.rows(keys):
            if row.history is not None:  # a stale failure must not outlive its row
                shutil.rmtree((out / row.history).parent, ignore_errors=True)
        store.forget(keys)
    stored = store.keys()
    missing = [task for task, key in zip(tasks, keys, strict=True) if key not in stored]
    record = SweepRun(executor.description, len(tasks), resumed=len(tasks) - len(missing))
    started = time.perf_counter()
    try:
        results = executor.imap_unordered(
            functools.partial(run_seed, scenario=scenario), missing, lambda t: t.key(digest)
        )
        for task, result in results:
            if isinstance(result, Lost):
                record.lost.append((task, result.reason))
                continue
            history = keep_failure(out, result) if result.failed else None
            store.put(result, digest, history)
            record.ran += 1
            if on_result is not None:
                on_result(result)
    except KeyboardInterrupt:
        record.interrupted = True
    finally:
        record.wall_s = time.perf_counter() - started
    return record


def keep_failure(out: Path, result: SeedResult) -> str:
    """Write a failing seed's history.jsonl and report.json under OUT/failures/; return the
    history's path relative to OUT (what the store keeps)."""
    folder = out / "failures" / result.task.slug()
    folder.mkdir(parents=True, exist_ok=True)
    if result.history_zlib is not None:
        (folder / "history.jsonl").write_bytes(zlib.decompress(result.history_zlib))
    (folder / "report.json").write_text(
        json.dumps(result.report, indent=2, default=str) + "\n", encoding="utf-8"
    )
    name = "history.jsonl" if result.history_zlib is not None else "report.json"
    return str((folder / name).relative_to(out))


# ---------------------------------------------------------------------------------------------
# The command.


def run_command(args: argparse.Namespace) -> int:
    try:
        scenario = _load(args.scenario, args.duration)
    except ScenarioError as exc:
        print(f"vecmig sweep: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    tasks = plan(
        args.scenario,
        scenario,
        seeds,
        args.strategy,
        swarm=not args.no_swarm and not args.buggify,
        buggify=args.buggify,
        duration=args.duration,
    )
    out = Path(args.out) if args.out else Path("out") / f"sweep-{scenario.name}-{args.strategy}"
    try:
        executor = connect(args.cluster, args.jobs)
    except SweepError as exc:
        print(f"vecmig sweep: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    console = Console()
    try:
        with ResultStore(out / "results.sqlite") as store:
            record = _run_with_progress(args, tasks, scenario, executor, store, out)
            rows = list(store.rows(task.key(fingerprint(scenario)) for task in tasks))
    except StoreError as exc:
        print(f"vecmig sweep: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except SweepError as exc:
        print(f"vecmig sweep: {exc}", file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        executor.close()
    summary = sweep_report.summarise(rows, tasks, scenario, record)
    sweep_report.write(summary, out)
    sweep_report.print_summary(console, summary, rows, per_seed=not args.quiet)
    console.print(f"wrote {out}/sweep.json, {out}/sweep.html", highlight=False)
    if record.interrupted:
        print(
            f"interrupted: {len(rows)} of {len(tasks)} seeds stored; run the same command "
            "with --resume to run the rest",
            file=sys.stderr,
        )
        return 130
    if any(row.failed and row.outcome != "stalled" for row in rows):
        return EXIT_ANOMALIES
    if any(row.outcome == "stalled" for row in rows):
        return EXIT_STALLED
    return EXIT_INTERNAL if record.lost else EXIT_VALID


def _run_with_progress(
    args: argparse.Namespace,
    tasks: Sequence[Task],
    scenario: Scenario,
    executor: SeedExecutor,
    store: ResultStore,
    out: Path,
) -> SweepRun:
    if args.quiet:
        return run(tasks, scenario, executor, store, out, resume=args.resume)
    digest = fingerprint(scenario)
    keys = {task.key(digest) for task in tasks}
    before = [row for row in store.rows(keys)] if args.resume else []
    failures = sum(row.failed for row in before)
    err = Console(stderr=True)
    err.print(
        f"sweep {scenario.name} --strategy {args.strategy}: {len(tasks) - len(before)} seeds "
        f"to run on {executor.description}"
        + (f" ({len(before)} kept from before)" if before else ""),
        highlight=False,
    )
    with Progress(
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TextColumn("seeds, [red]{task.fields[failures]} failing[/red]"),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    ) as progress:
        bar = progress.add_task("sweep", total=len(tasks), completed=len(before), failures=failures)

        def advance(result: SeedResult) -> None:
            nonlocal failures
            failures += result.failed
            progress.update(bar, advance=1, failures=failures)

        return run(tasks, scenario, executor, store, out, resume=args.resume, on_result=advance)
