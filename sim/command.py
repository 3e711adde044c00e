"""`vecmig simulate` and `vecmig sweep`: run the SimPy model of a live migration and judge it."""

from __future__ import annotations

import argparse
import concurrent.futures
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from vecmig.harness.cli import (
    EXIT_ANOMALIES,
    EXIT_BAD_INPUT,
    EXIT_STALLED,
    EXIT_VALID,
    exit_code,
    strategy_argument,
)
from vecmig.sim import report as rep
from vecmig.sim.scenario import SCENARIO_DIR, Scenario, ScenarioError, load

SIMULATE_DESCRIPTION = """\
Simulate a live migration (old -> new) under e-commerce traffic and faults, in SimPy time
against two in-memory HNSW clusters, then judge the history with the checker.

SCENARIO is a TOML file or the name of one in scenarios/ (default: default). The same
scenario, strategy and seed always give a byte-identical history.jsonl.
"""

SIMULATE_EPILOG = """\
writes, in --out (default out/<scenario>-<strategy>-<seed>):
  history.jsonl   every event (vecmig check can judge it again)
  report.json     verdict, ops, phases, faults, latency by phase, recall, the history's sha256
  report.html     the same, with the plots embedded
  latency.png backfill.png mismatch.png

exit codes: 0 valid, 1 anomalies found, 2 bad input (a malformed scenario names the key),
4 stalled (the plan did not finish, or a gate held past migration.stall_after_s).

examples:
  vecmig simulate
  vecmig simulate black-friday --strategy naive --seed 7
  vecmig simulate my-plan.toml --swarm --out /tmp/run
"""

SWEEP_DESCRIPTION = """\
Run one scenario over many seeds in parallel processes, with swarm faults (a random subset of
fault families with random timings per seed), and print a summary; every failing seed comes
with the exact command that replays it.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    simulate = subparsers.add_parser(
        "simulate",
        help="simulate a migration under traffic and faults, and judge it",
        description=SIMULATE_DESCRIPTION,
        epilog=SIMULATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    simulate.add_argument("scenario", metavar="SCENARIO", nargs="?", default="default")
    simulate.add_argument("--seed", type=int, default=None, help="default: the scenario's seed")
    simulate.add_argument(
        "--strategy",
        type=strategy_argument,
        default="safe",
        metavar="STRATEGY",
        help="safe (default), naive, or safe-without:PROTECTION[,PROTECTION] (one protection "
        "switched off; `vecmig zoo --list` names them)",
    )
    simulate.add_argument("--out", metavar="DIR", default=None)
    simulate.add_argument(
        "--swarm", action="store_true", help="add random swarm faults for the seed"
    )
    simulate.add_argument(
        "--buggify",
        action="store_true",
        help="draw the settings and faults from the seed too (instances, leases, lagged "
        "sides, shards, replicas, traffic mix, a plan with rollbacks and aborts; see "
        "sim/buggify.py)",
    )
    simulate.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="S",
        help="override the scenario's duration_s",
    )
    simulate.add_argument("--quiet", action="store_true", help="no progress bar and no tables")
    simulate.set_defaults(handler=run_simulate)

    sweep = subparsers.add_parser(
        "sweep",
        help="many seeds in parallel with swarm faults; replay commands for the failures",
        description=SWEEP_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit codes: 0 every seed valid, 1 some seed found anomalies, 2 bad input.\n\n"
        "example:\n  vecmig sweep default --seeds 32 --jobs 4",
    )
    sweep.add_argument("scenario", metavar="SCENARIO", nargs="?", default="default")
    sweep.add_argument("--seeds", type=int, default=8, help="how many seeds (default 8)")
    sweep.add_argument("--first-seed", type=int, default=1)
    sweep.add_argument("--jobs", type=int, default=2, help="parallel processes (default 2)")
    sweep.add_argument(
        "--strategy",
        type=strategy_argument,
        default="safe",
        metavar="STRATEGY",
        help="safe (default), naive, or safe-without:PROTECTION[,PROTECTION]",
    )
    sweep.add_argument("--no-swarm", action="store_true", help="only the scenario's own faults")
    sweep.add_argument(
        "--buggify", action="store_true", help="draw each seed's settings and faults too"
    )
    sweep.add_argument("--duration", type=float, default=None, metavar="S")
    sweep.set_defaults(handler=run_sweep)


def scenario_arg(given: str, scenario: Scenario) -> str:
    """How a replay command names the scenario: by name when it is one of scenarios/."""
    source = Path(scenario.source).resolve()
    return source.stem if source.parent == SCENARIO_DIR else given


def _load(given: str, duration: float | None) -> Scenario:
    import dataclasses

    scenario = load(given)
    if duration is not None:
        if duration < 1:
            raise ScenarioError(f"--duration must be at least 1 second, got {duration}")
        scenario = dataclasses.replace(scenario, duration_s=duration)
    return scenario


def run_simulate(args: argparse.Namespace) -> int:
    from vecmig.sim.simulation import Simulation

    console = Console()
    err = Console(stderr=True)
    try:
        scenario = _load(args.scenario, args.duration)
    except ScenarioError as exc:
        print(f"vecmig simulate: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    sim = Simulation(
        scenario, args.strategy, args.seed, swarm=args.swarm or None, buggify=args.buggify
    )
    name = scenario_arg(args.scenario, scenario)
    if args.duration is not None:
        name += f" --duration {args.duration:g}"
    out = (
        Path(args.out) if args.out else Path("out") / f"{scenario.name}-{args.strategy}-{sim.seed}"
    )
    started = time.perf_counter()
    if args.quiet:
        result = sim.run()
    else:
        with Progress(
            TextColumn(f"simulating {scenario.name} ({args.strategy}, seed {sim.seed})"),
            BarColumn(),
            TextColumn("{task.completed:.0f}/{task.total:.0f} simulated s"),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        ) as progress:
            task = progress.add_task("sim", total=scenario.duration_s)
            result = sim.run(lambda t, end: progress.update(task, completed=t / 1e9))
    wall = time.perf_counter() - started
    report = rep.write(result, out, name, wall)
    if not args.quiet:
        rep.print_summary(console, report)
    valid = report["verdict"]["valid"]
    code = exit_code(result.verdict)
    label = (
        "[bold green]VALID[/bold green]"
        if valid
        else "[bold red]STALLED[/bold red]"
        if code == EXIT_STALLED
        else "[bold red]ANOMALIES[/bold red]"
    )
    console.print(
        f"{label}: "
        f"{report['simulated_s']:.0f} simulated s in {wall:.1f} s; wrote {out}/ "
        f"(history.jsonl sha256 {report['history_sha256'][:16]}...)",
        highlight=False,
        soft_wrap=True,
    )
    if not valid:
        print(f"replay: {report['replay']}")
        print(f"judge again: vecmig check {out / 'history.jsonl'}")
    return code


# ---------------------------------------------------------------------------------------------


def _sweep_one(
    given: str, duration: float | None, strategy: str, seed: int, swarm: bool, buggify: bool
) -> dict[str, Any]:
    from vecmig.sim.simulation import Simulation

    scenario = _load(given, duration)
    started = time.perf_counter()
    result = Simulation(
        scenario, strategy, seed, swarm=swarm and not buggify, buggify=buggify
    ).run()
    wall = time.perf_counter() - started
    return {
        "seed": seed,
        "valid": result.verdict.valid,
        "stalled": result.verdict.stalled,
        "counts": result.verdict.counts(),
        "end_phase": result.end_phase,
        "families": sorted({f["family"] for f in result.faults}),
        "faults": len(result.faults),
        "wall_s": wall,
        "replay": rep.replay_command(
            result,
            scenario_arg(given, scenario)
            + ("" if duration is None else f" --duration {duration:g}"),
        ),
        "bugs": result.bugs[:3],
    }


def run_sweep(args: argparse.Namespace) -> int:
    console = Console()
    err = Console(stderr=True)
    try:
        _load(args.scenario, args.duration)
    except ScenarioError as exc:
        print(f"vecmig sweep: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.seeds < 1 or args.jobs < 1:
        print("vecmig sweep: --seeds and --jobs must be at least 1", file=sys.stderr)
        return EXIT_BAD_INPUT
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    with (
        concurrent.futures.ProcessPoolExecutor(max_workers=args.jobs) as pool,
        Progress(
            TextColumn(f"sweep {args.scenario} ({args.strategy})"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} seeds"),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        ) as progress,
    ):
        task = progress.add_task("sweep", total=len(seeds))
        futures = [
            pool.submit(
                _sweep_one,
                args.scenario,
                args.duration,
                args.strategy,
                seed,
                not args.no_swarm,
                args.buggify,
            )
            for seed in seeds
        ]
        for future in concurrent.futures.as_completed(futures):
            rows.append(future.result())
            progress.advance(task)
    rows.sort(key=lambda r: r["seed"])
    table = Table(
        title=f"vecmig sweep {args.scenario} --strategy {args.strategy}: {len(rows)} seeds",
        title_justify="left",
    )
    table.add_column("seed", justify="right")
    table.add_column("verdict")
    table.add_column("anomalies", overflow="fold")
    table.add_column("ended in")
    table.add_column("faults", justify="right")
    table.add_column("wall s", justify="right")
    for r in rows:
        anomalies = ", ".join(f"{k.replace('_', ' ')} {n}" for k, n in r["counts"].items() if n)
        if r["stalled"]:
            anomalies = ", ".join(x for x in (anomalies, "stalled") if x)
        table.add_row(
            str(r["seed"]),
            "[green]valid[/green]" if r["valid"] else "[red]ANOMALIES[/red]",
            anomalies,
            r["end_phase"],
            str(r["faults"]),
            f"{r['wall_s']:.1f}",
        )
    console.print(table)
    failing = [r for r in rows if not r["valid"]]
    console.print(
        f"{len(rows) - len(failing)} of {len(rows)} seeds valid in {time.perf_counter() - started:.1f} s",
        highlight=False,
    )
    for r in failing:
        print(f"replay seed {r['seed']}: {r['replay']}")
        print(f"  fault families: {', '.join(r['families'])}")
    return EXIT_ANOMALIES if failing else EXIT_VALID


if __name__ == "__main__":  # pragma: no cover
    from vecmig.harness.cli import main

    sys.exit(main(["simulate", *sys.argv[1:]]))
