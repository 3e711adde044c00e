"""`vecmig simulate`: run the SimPy model of a live migration and judge it (`vecmig sweep`, many
seeds at once, is `vecmig.sim.sweep`)."""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from vecmig.harness.cli import (
    EXIT_BAD_INPUT,
    EXIT_STALLED,
    EXIT_VALID,
    exit_code,
    strategy_argument,
)
from vecmig.sim import report as rep
from vecmig.sim import whatif
from vecmig.sim.scenario import (
    FIDELITIES,
    SCENARIO_DIR,
    Scenario,
    ScenarioError,
    load,
    with_fidelity,
)
from vecmig.sim.whatif import KNOBS

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
                  (docs/report.schema.json: the shape of every engine's report)
  report.html     the same, with the plots embedded
  timeline.png    phases, faults, latency, throughput, recall and mismatch on one time axis
  backfill.png    the backfill's progress and the repair log (both plots need matplotlib:
                  pip install 'vecmig[plots]')

exit codes: 0 valid, 1 anomalies found, 2 bad input (a malformed scenario names the key),
4 stalled (the plan did not finish, or a gate held past migration.stall_after_s).

the loader also refuses what the migration protocol cannot keep safe, naming the keys:
  leases: instances.lease_margin_ms >= latency.op_timeout_ms + 2 x instances.max_clock_skew_ms,
          instances.lease_ms > instances.poll_interval_ms + instances.lease_margin_ms
  node-crash, node-pause, slow-replica need clusters.replicas >= 2;
  app-instance-crash needs instances.count >= 2
  lost-ack only on side "new", from phase DUAL_WRITE or BACKFILL, until_phase BACKFILL or SHADOW
  clock-skew within instances.max_clock_skew_ms; visibility-lag only on migration.lagged_sides
  migration.steps must be walkable from OLD_ONLY by the phase table
(sim/README.md, "What the loader refuses, and why").

what if: --what-if KNOB=V1,V2,... runs the scenario once per value of one knob, same seed and
strategy, each value checked by the loader as if written in the file; it writes, in --out
(default out/<scenario>-<strategy>-<seed>-what-if-<knob>), one folder per value (KNOB=VALUE/,
the files above), what-if.json (a row per value: verdict, time to DECOMMISSIONED or the stall,
backfill, p99 of reads and writes, gate waits) and what-if.png (time to DECOMMISSIONED against
p99 of reads, a point per value), and prints the table. Knobs:
{knobs}
Exit 0 if every run is valid, 1 if any found anomalies, else 4 if any stalled, 2 for an unknown
knob or a value the loader refuses. A run's replay command is a what-if of its one value.

examples:
  vecmig simulate
  vecmig simulate black-friday --strategy naive --seed 7
  vecmig simulate my-plan.toml --swarm --out /tmp/run
  vecmig simulate scaled-shop --what-if migration.backfill_rate=250,500,1000,2000
  vecmig simulate default --what-if clusters.shards=2,4,8 --out /tmp/shards
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    simulate = subparsers.add_parser(
        "simulate",
        help="simulate a migration under traffic and faults, and judge it",
        description=SIMULATE_DESCRIPTION,
        epilog=SIMULATE_EPILOG.replace(
            "{knobs}", "\n".join(f"  {knob:30} {means}" for knob, means in KNOBS.items())
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    simulate.add_argument("scenario", metavar="SCENARIO", nargs="?", default="default")
    simulate.add_argument(
        "--seed", type=_at_least(0), default=None, help="0 or more; default: the scenario's seed"
    )
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
        type=_seconds,
        default=None,
        metavar="S",
        help="override the scenario's duration_s (at least 1)",
    )
    simulate.add_argument(
        "--fidelity",
        choices=FIDELITIES,
        default=None,
        help="override [clusters] fidelity: exact (every product a vector in a real index) or "
        "scaled (a sample does; service times from a measured cost profile)",
    )
    simulate.add_argument(
        "--profile",
        default=None,
        metavar="NAME",
        help="the cost profile of a scaled run, for both sides (in place of the scenario's "
        "profile, old_profile and new_profile): a name in profiles/ or a JSON file (`vecmig "
        "calibrate` writes one); default the scenario's, else fake-dim<catalog.dim>",
    )
    simulate.add_argument(
        "--what-if",
        metavar="KNOB=V1,V2,...",
        default=None,
        help="run the scenario once per value of one knob, same seed, and write what-if.json "
        "and what-if.png (time to DECOMMISSIONED against p99 of reads) to --out; knobs: "
        + ", ".join(KNOBS),
    )
    simulate.add_argument("--quiet", action="store_true", help="no progress bar and no tables")
    simulate.set_defaults(handler=run_simulate)


def _at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least `low` (argparse exits 2 naming the option)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {text}")
        return value

    return parse


def _seconds(text: str) -> float:
    """An argparse type: a simulated duration, a finite number of seconds of at least 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 second (and finite), got {text}")
    return value


def scenario_arg(given: str, scenario: Scenario) -> str:
    """How a replay command names the scenario: by name when it is one of scenarios/."""
    source = Path(scenario.source).resolve()
    return source.stem if source.parent == SCENARIO_DIR else given


def _load(
    given: str,
    duration: float | None,
    fidelity: str | None = None,
    profile: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> Scenario:
    import dataclasses

    scenario = load(given, overrides)
    if duration is not None:
        scenario = dataclasses.replace(scenario, duration_s=duration)
    if fidelity is not None or profile is not None:
        scenario = with_fidelity(scenario, fidelity or scenario.clusters.fidelity, profile)
    return scenario


def _replay_arg(args: argparse.Namespace, scenario: Scenario) -> str:
    """The scenario and the options that change it, as a replay command gives them."""
    name = scenario_arg(args.scenario, scenario)
    if args.duration is not None:
        name += f" --duration {args.duration:g}"
    if args.fidelity is not None:
        name += f" --fidelity {args.fidelity}"
    if args.profile is not None:
        name += f" --profile {args.profile}"
    return name


def run_simulate(args: argparse.Namespace) -> int:
    from vecmig.sim.simulation import Simulation

    if args.what_if is not None:
        return run_what_if(args)
    console = Console()
    err = Console(stderr=True)
    try:
        scenario = _load(args.scenario, args.duration, args.fidelity, args.profile)
    except ScenarioError as exc:
        print(f"vecmig simulate: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    sim = Simulation(
        scenario, args.strategy, args.seed, swarm=args.swarm or None, buggify=args.buggify
    )
    name = _replay_arg(args, scenario)
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
    written = rep.write(result, out, name, wall)
    report = written.report
    if written.plots_missing:
        print(f"{written.plots_missing} (wrote all but the plots)", file=sys.stderr)
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


def run_what_if(args: argparse.Namespace) -> int:
    """`--what-if`: every variant built (and checked) first, then run one after another under
    one progress bar, each into its own folder; then what-if.json, what-if.png and the table."""
    console = Console()
    try:
        what_if, scenarios = _what_if_variants(args)
    except ScenarioError as exc:
        print(f"vecmig simulate: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    first = scenarios[0]
    seed = first.seed if args.seed is None else args.seed
    name = _replay_arg(args, first)
    out = (
        Path(args.out)
        if args.out
        else Path("out") / f"{first.name}-{args.strategy}-{seed}-what-if-{what_if.knob}"
    )
    runs = _what_if_runs(args, what_if, scenarios, seed, out, name)
    command = (
        f"vecmig simulate {name} --what-if {what_if.knob}="
        + ",".join(token for token, _ in what_if.values)
        + f" --seed {seed} --strategy {args.strategy}"
        + (" --swarm" if args.swarm else "")
    )
    table = whatif.summary(what_if, first, args.strategy, seed, command, runs)
    plot_missing = whatif.write_summary(table, out)
    if plot_missing:
        print(f"{plot_missing} (wrote all but the plots)", file=sys.stderr)
    if not args.quiet:
        console.print(whatif.what_if_table(table))
    code = int(table["exit_code"])
    word = {
        EXIT_VALID: "[bold green]ALL VALID[/bold green]",
        EXIT_STALLED: "[bold red]STALLED[/bold red]",
    }
    console.print(
        f"{word.get(code, '[bold red]ANOMALIES[/bold red]')}: {len(runs)} runs of "
        f"{what_if.knob}; wrote {out}/what-if.json, what-if.png and one folder per value",
        highlight=False,
        soft_wrap=True,
    )
    for r in table["rows"]:
        if r["verdict"] != "VALID":
            why = f" ({r['stall']})" if r["stall"] else ""
            print(f"{r['run']}: {r['verdict']}{why}; replay: {r['replay']}")
    return code


def _what_if_variants(args: argparse.Namespace) -> tuple[whatif.WhatIf, list[Scenario]]:
    """The knob and its values, and the scenario once per value, built by the loader with
    the other options' overrides; raises `ScenarioError` before anything runs."""
    if args.buggify:
        raise ScenarioError(
            "--what-if cannot run with --buggify: buggify draws the settings from the seed, "
            "the knob among them; drop one of the two"
        )
    what_if = whatif.parse(args.what_if)
    scenarios = whatif.variants(
        what_if,
        lambda override: _load(args.scenario, args.duration, args.fidelity, args.profile, override),
    )
    return what_if, scenarios


def _what_if_runs(
    args: argparse.Namespace,
    what_if: whatif.WhatIf,
    scenarios: list[Scenario],
    seed: int,
    out: Path,
    name: str,
) -> list[whatif.Run]:
    """Each variant simulated and written in turn, under one progress bar of simulated time."""
    from vecmig.sim.simulation import Simulation

    runs = []
    with Progress(
        TextColumn("what if {task.description}"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f} simulated s"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=args.quiet,
    ) as progress:
        task = progress.add_task("", total=sum(s.duration_s for s in scenarios))
        done = 0.0
        for (token, value), scenario in zip(what_if.values, scenarios, strict=True):
            progress.update(task, description=f"{what_if.knob}={token}", completed=done)

            def advance(t: int, end: int, base: float = done) -> None:
                progress.update(task, completed=base + t / 1e9)

            # One simulation at a time: each holds two clusters' indexes until it is written.
            sim = Simulation(scenario, args.strategy, seed, swarm=args.swarm or None)
            runs.append(whatif.run_one(what_if, token, value, sim, out, name, advance))
            done += scenario.duration_s
    return runs


if __name__ == "__main__":  # pragma: no cover
    from vecmig.harness.cli import main

    sys.exit(main(["simulate", *sys.argv[1:]]))
