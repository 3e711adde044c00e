"""`vecmig zoo`: every protection of the safe strategy switched off alone, through the
simulator, the state machine and a short load test; prints and writes the catch matrix."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from vecmig.harness.cli import EXIT_ANOMALIES, EXIT_BAD_INPUT, EXIT_VALID
from vecmig.harness.extras import require
from vecmig.harness.zoo import catalog
from vecmig.harness.zoo.catalog import COVERS, DEFAULT_ENGINES, ENGINES, QUALITY, SCENARIOS, Row
from vecmig.harness.zoo.matrix import OK_VERDICTS, Matrix, write
from vecmig.harness.zoo.search import Search, Settings, Trial, run

DESCRIPTION = """\
A VALID verdict proves something only if the harness says INVALID for a layer with a bug in
it. The zoo switches off each protection of the safe strategy alone (an ablation; see --list)
and runs it through the engines:

  sim      the shipped scenarios, then buggify seeds, up to the first run the checker fails
           (a run counts only if the safe strategy passes the very same run);
  machine  the Hypothesis state machine, derandomized, shrunk to the fewest steps (replayed
           on the safe machine, which must pass them);
  live     a short `vecmig loadtest` (slow: one at a time; not run unless named).

An ablation counts as caught only if the simulator or the machine catches it (their catches
replay exactly); one they miss runs again together with the protections declared to cover for
it (`--list` shows them). The matrix (ablation x engine: caught or not, time and runs to
detection, the replay command or the shrunk steps) is printed and written to OUT/zoo.json and
OUT/zoo.md, rewritten as each search ends. A search stops at its first confirmed catch or
when its budget (--budget-s, wall time) is spent, so the whole zoo takes at most about
rows x engines x budget / jobs; docs/zoo.md has the matrix and the time of a full run.
"""

EPILOG = """\
exit codes (for CI):
  0  every ablation is caught by the simulator or the machine, covered (switched
     off with the protections that cover for it, it is caught) or documented as a
     quality protection, and no safe control run failed
  1  some ablation escaped (MISSED, or LIVE ONLY), or a FALSE ALARM: the safe
     strategy failed the very same run, so the harness is at fault
  2  bad input

examples:
  vecmig zoo --list                                  # every protection, its cover
  vecmig zoo --only read-both,oldest-epoch-ack --seeds 2 --budget-s 60
  vecmig zoo --engines machine --examples 300        # the state machine alone
  vecmig zoo --engines sim,machine,live              # with a short load test each
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "zoo",
        help="switch off each protection alone and show which engine catches it",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--list", action="store_true", help="name every protection and exit")
    parser.add_argument(
        "--engines",
        default=",".join(DEFAULT_ENGINES),
        metavar="E[,E]",
        help=f"of {', '.join(ENGINES)} (default {','.join(DEFAULT_ENGINES)})",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME[,NAME]",
        help="these ablations only (protection names, or naive)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=300.0,
        metavar="S",
        help="wall seconds per ablation per engine (default 300)",
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        metavar="NAME[,NAME]",
        help=f"scenarios the simulator runs first (default {','.join(SCENARIOS)})",
    )
    parser.add_argument(
        "--seeds", type=int, default=8, help="buggify seeds after the scenarios (default 8)"
    )
    parser.add_argument(
        "--first-seed", type=int, default=1, help="the first buggify seed (default 1)"
    )
    parser.add_argument(
        "--examples",
        type=int,
        default=3000,
        # Each rule added for the rows the zoo missed (cut_off, stale_sync, save_and_view,
        # bail_out) moves the derandomized search: read-both, which a 1000-run search caught
        # at run 365 before them, took 1,904 runs after (65 s on a loaded machine).
        help="state machine runs per ablation (default 3000; the budget usually ends a search "
        "first)",
    )
    parser.add_argument("--steps", type=int, default=40, help="steps per machine run (default 40)")
    parser.add_argument(
        "--live-duration",
        type=float,
        default=20.0,
        metavar="S",
        help="seconds of traffic per load test (default 20)",
    )
    parser.add_argument(
        "--live-users", type=int, default=4, metavar="N", help="Locust users (default 4)"
    )
    parser.add_argument(
        "--live-catalog",
        type=int,
        default=300,
        metavar="N",
        help="products in a load test's catalog (default 300)",
    )
    parser.add_argument("--out", default="out/zoo", metavar="DIR", help="default out/zoo")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no table")
    parser.set_defaults(handler=run_zoo)


def _names(values: list[str]) -> tuple[str, ...]:
    return tuple(n.strip() for v in values for n in v.split(",") if n.strip())


def list_protections(console: Console) -> None:
    from vecmig.harness.core.strategy import PROTECTIONS

    for name, what in PROTECTIONS.items():
        console.print(f"[bold]{name}[/bold]: {what}", highlight=False)
        if name in COVERS:
            by = ", ".join(COVERS[name].by)
            console.print(f"    covered by {by}: {COVERS[name].why}", highlight=False)
        if name in QUALITY:
            console.print(f"    quality, not correctness: {QUALITY[name]}", highlight=False)


def settings_from(args: argparse.Namespace) -> Settings:
    engines = _names([args.engines])
    unknown = [e for e in engines if e not in ENGINES]
    if unknown or not engines:
        raise ValueError(f"--engines takes {', '.join(ENGINES)}; got {args.engines!r}")
    if args.jobs < 1 or args.budget_s <= 0 or args.seeds < 0 or args.examples < 1:
        raise ValueError("--jobs, --budget-s and --examples must be positive, --seeds not negative")
    from vecmig.sim.scenario import ScenarioError, load

    scenarios = _names([args.scenarios])
    for scenario in scenarios:
        try:
            load(scenario)
        except ScenarioError as exc:
            raise ValueError(str(exc)) from None
    return Settings(
        engines=tuple(e for e in ENGINES if e in engines),
        scenarios=scenarios,
        seeds=args.seeds,
        first_seed=args.first_seed,
        jobs=args.jobs,
        budget_s=args.budget_s,
        examples=args.examples,
        steps=args.steps,
        live_duration_s=args.live_duration,
        live_users=args.live_users,
        live_catalog=args.live_catalog,
        out=Path(args.out).resolve(),
    )


def run_zoo(args: argparse.Namespace) -> int:
    console = Console()
    if args.list:
        list_protections(console)
        return EXIT_VALID
    try:
        catalog.check_catalog()
        settings = settings_from(args)
        rows = catalog.rows(_names(args.only))
    except ValueError as exc:
        print(f"vecmig zoo: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    # Stop before anything starts when an engine's libraries are missing (the cli prints it).
    if "machine" in settings.engines:
        require("pytest", "vecmig zoo --engines machine (Hypothesis)")
    if "live" in settings.engines:
        require("service", "vecmig zoo --engines live")
        require("loadtest", "vecmig zoo --engines live")
    argv = sys.argv[1:] if sys.argv[1:2] == ["zoo"] else ["zoo"]
    command = "vecmig " + shlex.join(argv)
    started = time.time()

    def meta(partial: bool) -> dict[str, Any]:
        return {
            "command": command,
            "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(started)),
            "wall_s": time.time() - started,
            "partial": partial,
            "jobs": settings.jobs,
            "budget_s": settings.budget_s,
            "version": _version(),
            "settings": _settings_json(settings),
        }

    # The files are rewritten as each search ends, so a long run shows its progress there.
    matrix = zoo(rows, settings, args.quiet, lambda so_far: write(so_far, meta(True), settings.out))
    final = meta(False)
    json_path, md_path = write(matrix, final, settings.out)
    if not args.quiet:
        console.print(matrix.table(f"{command}: {final['wall_s']:.0f} s"))
    if matrix.ok():
        summary = "every ablation is caught, covered or documented"
    else:
        bad = [r for r in matrix.main_rows() if matrix.verdict(r) not in OK_VERDICTS]
        summary = "NOT all caught: " + ", ".join(f"{r.name} {matrix.verdict(r)}" for r in bad)
    console.print(f"{summary}; wrote {json_path} and {md_path}", highlight=False, soft_wrap=True)
    return EXIT_VALID if matrix.ok() else EXIT_ANOMALIES


def _settings_json(settings: Settings) -> dict[str, object]:
    from dataclasses import asdict

    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vecmig")
    except PackageNotFoundError:
        return "unknown"


def zoo(
    rows: list[Row],
    settings: Settings,
    quiet: bool = False,
    so_far: Callable[[Matrix], object] = lambda _: None,
) -> Matrix:
    """Run every row on every engine of `settings`, then the cover row of each ablation
    that nothing caught; the matrix of it all (and, after each search, of what ran so far)."""
    searches: dict[tuple[str, str], Search] = {}
    controls: dict[Trial, dict[str, Any]] = {}
    err = Console(stderr=True)
    progress = Progress(
        TextColumn("vecmig zoo"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} searches"),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=quiet,
    )

    def start(round_rows: list[Row], engines: tuple[str, ...], jobs: int) -> None:
        new = [Search(row, engine, settings, controls) for row in round_rows for engine in engines]
        for s in new:
            searches[(s.row.name, s.engine)] = s
        progress.update(task, total=len(searches))

        def finished(search: Search) -> None:
            progress.update(task, advance=1, description=f"{search.row.name} ({search.engine})")
            so_far(Matrix(_ordered(all_rows), settings.engines, searches))

        run(new, jobs, finished)

    all_rows = list(rows)
    fast = tuple(e for e in settings.engines if e != "live")
    live = ("live",) if "live" in settings.engines else ()
    with progress:
        task = progress.add_task("", total=0)
        if fast:
            start(rows, fast, settings.jobs)
        if live:
            start(rows, live, 1)  # a load test takes the whole machine
        matrix = Matrix(all_rows, settings.engines, searches)
        covers = [c for r in rows if not matrix.caught_reproducibly(r) and (c := catalog.cover(r))]
        all_rows += covers
        if covers and fast:
            start(covers, fast, settings.jobs)
        if covers and live:
            start(covers, live, 1)
    return Matrix(_ordered(all_rows), settings.engines, searches)


def _ordered(rows: list[Row]) -> list[Row]:
    """Each cover row right below its ablation."""
    covers = {r.protections[0]: r for r in rows if r.kind == "cover"}
    out: list[Row] = []
    for row in rows:
        if row.kind == "cover":
            continue
        out.append(row)
        if row.name in covers:
            out.append(covers[row.name])
    return out
