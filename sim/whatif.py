"""`vecmig simulate SCENARIO --what-if KNOB=V1,V2,...`: one scenario run once per value of one
knob, with the same seed, and what each value costs: how long until DECOMMISSIONED against the
p99 of client reads, with the verdict, the backfill and the gates' waits beside them.

Each variant is built by the scenario loader with the knob set (`scenario.load`'s overrides),
so a value passes every rule a value written in the file would, and a bad one is refused
before anything runs. Each run keeps its own folder (history, report.json, report.html,
plots), and its replay command is a what-if of that one value.
"""

from __future__ import annotations

import json
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from vecmig.harness.cli import EXIT_ANOMALIES, EXIT_STALLED, EXIT_VALID, exit_code
from vecmig.harness.history.checker import ANOMALIES
from vecmig.sim import report as rep
from vecmig.sim.scenario import Scenario, ScenarioError
from vecmig.sim.simulation import Simulation

KNOBS: dict[str, str] = {
    "migration.backfill_rate": "records per second the backfill may copy (0: the throttle only)",
    "migration.batch_size": "records per backfill batch (where the throttle starts)",
    "migration.mirror_sample_rate": "the share of reads mirrored to new in SHADOW",
    "migration.min_mirrored_reads": "mirrored reads the CUTOVER gate waits for",
    "migration.soak_s": "seconds of CUTOVER with no fallbacks before DECOMMISSIONED",
    "clusters.shards": "shards per side",
    "clusters.replicas": "replicas per shard",
    "instances.count": "app instances",
    "traffic.rate": "client sessions per second at the diurnal mean",
}
"""The knobs a what-if turns: an operator's settings of the plan, and the traffic."""


@dataclass(frozen=True)
class WhatIf:
    """One knob and its values: each as given on the command line and as parsed (TOML)."""

    knob: str
    values: tuple[tuple[str, Any], ...]

    def argument(self, token: str) -> str:
        """`--what-if` for one of the values: how a run's replay command names its variant."""
        return f"--what-if {self.knob}={token}"

    def folder(self, token: str) -> str:
        return f"{self.knob}={token}"


def parse(text: str) -> WhatIf:
    """`KNOB=V1,V2,...`, checked: a known knob and one or more distinct values. Raises
    `ScenarioError` naming the knob and the valid ones. The values' own checks are the
    loader's (`variants`)."""
    knob, sep, listed = (part.strip() for part in text.partition("="))
    if knob not in KNOBS:
        raise ScenarioError(
            f"--what-if: unknown knob {knob!r}; knobs: {', '.join(KNOBS)} "
            f"(for example --what-if migration.backfill_rate=250,500,1000)"
        )
    tokens = [token.strip() for token in listed.split(",")]
    if not sep or "" in tokens:
        raise ScenarioError(
            f"--what-if {knob}: give its values after '=', separated by commas, for example "
            f"--what-if {knob}=V1,V2 (got {text!r})"
        )
    twice = next((t for i, t in enumerate(tokens) if t in tokens[:i]), None)
    if twice is not None:
        raise ScenarioError(f"--what-if {knob}: the value {twice} is given twice")
    return WhatIf(knob, tuple((token, _scalar(token)) for token in tokens))


def _scalar(token: str) -> Any:
    """A value as TOML reads it (500 an integer, 0.2 a float, true a boolean); anything else
    stays the text it is, for the loader to refuse by the knob's type."""
    try:
        return tomllib.loads(f"v = {token}")["v"]
    except tomllib.TOMLDecodeError:
        return token


def variants(what_if: WhatIf, build: Callable[[dict[str, Any]], Scenario]) -> list[Scenario]:
    """The scenario once per value, each built by `build` (the loader, given the override);
    a refused value raises `ScenarioError` naming the knob, the value and the loader's
    reason."""
    built = []
    for token, value in what_if.values:
        try:
            built.append(build({what_if.knob: value}))
        except ScenarioError as exc:
            raise ScenarioError(f"--what-if {what_if.knob}={token}: {exc}") from None
    return built


# ---------------------------------------------------------------------------------------------
# Runs and rows.


def row(
    what_if: WhatIf, token: str, value: Any, report: dict[str, Any], code: int
) -> dict[str, Any]:
    """What one value cost, from its run's report.json: the verdict, time to DECOMMISSIONED
    (or the stall that kept it from there), the backfill, p99 of ok reads and writes overall
    and reads by phase, and the gates' refusals by the phase they held back."""
    verdict = report["verdict"]
    head = report["headline"]
    overall = report["latency_overall_ms"]
    waits: dict[str, dict[str, Any]] = {}
    for wait in report["gate_waits"]:
        target = waits.setdefault(
            wait["target"], {"refusals": 0, "first_s": wait["first_s"], "last_s": wait["last_s"]}
        )
        target["refusals"] += wait["count"]
        target["first_s"] = min(target["first_s"], wait["first_s"])
        target["last_s"] = max(target["last_s"], wait["last_s"])
    return {
        "value": value,
        "run": what_if.folder(token),
        "verdict": rep.status_of(verdict),
        "exit_code": code,
        "time_to_decommissioned_s": head["time_to_decommissioned_s"],
        "end_phase": report["end_phase"],
        "stall": verdict["stall"]["description"] if verdict["stall"] else None,
        "simulated_s": report["simulated_s"],
        "backfill_s": head["backfill_s"],
        "backfill_eta_s": head["backfill_eta_s"],
        "reads_p99_ms": overall["reads"]["p99"],
        "writes_p99_ms": overall["writes"]["p99"],
        "reads_p99_ms_by_phase": {
            phase: (kinds.get("reads") or {}).get("p99")
            for phase, kinds in report["latency_ms"].items()
        },
        "gate_waits": waits,
        "anomalies": {k: verdict[k] for k in ANOMALIES if verdict[k]},
        "history_sha256": report["history_sha256"],
        "replay": report["replay"],
    }


def overall_code(codes: Sequence[int]) -> int:
    """A what-if's exit code: anomalies (or an unknown verdict) in any run before a stall in
    any run, a stall before valid, as `vecmig sweep` does for its seeds."""
    if EXIT_ANOMALIES in codes:
        return EXIT_ANOMALIES
    if EXIT_STALLED in codes:
        return EXIT_STALLED
    return EXIT_VALID


@dataclass(frozen=True)
class Run:
    """One value's run, written into its folder."""

    token: str
    value: Any
    written: rep.Written
    code: int


def run_one(
    what_if: WhatIf,
    token: str,
    value: Any,
    sim: Simulation,
    out: Path,
    scenario_arg: str,
    progress: Callable[[int, int], None] | None = None,
) -> Run:
    """Simulate one variant and write its files into `out`/KNOB=VALUE; its replay command is
    `scenario_arg` with this value's `--what-if`."""
    started = time.perf_counter()
    result = sim.run(progress)
    wall = time.perf_counter() - started
    replay_arg = f"{scenario_arg} {what_if.argument(token)}"
    written = rep.write(result, out / what_if.folder(token), replay_arg, wall)
    return Run(token, value, written, exit_code(result.verdict))


def summary(
    what_if: WhatIf, scenario: Scenario, strategy: str, seed: int, command: str, runs: Sequence[Run]
) -> dict[str, Any]:
    """what-if.json: the settings every run shared and one row per value. Nothing in it
    depends on the wall clock or where the scenario is installed (the command names it as it
    was given), so the same command writes the same bytes."""
    rows = [row(what_if, r.token, r.value, r.written.report, r.code) for r in runs]
    return {
        "scenario": scenario.name,
        "strategy": strategy,
        "seed": seed,
        "fidelity": scenario.clusters.fidelity,
        "knob": what_if.knob,
        "knob_means": KNOBS[what_if.knob],
        "controller_start_s": scenario.migration.start_s,
        "command": command,
        "exit_code": overall_code([r.code for r in runs]),
        "rows": rows,
    }


def write_summary(table: dict[str, Any], out: Path) -> str | None:
    """Write what-if.json and what-if.png into `out`; returns why there is no plot (the
    missing extra), or None."""
    from vecmig.harness.extras import as_missing_extra

    out.mkdir(parents=True, exist_ok=True)
    (out / "what-if.json").write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
    try:
        from vecmig.sim.plots import what_if_plot

        what_if_plot(table, out / "what-if.png")
    except ModuleNotFoundError as exc:
        missing = as_missing_extra(exc, "vecmig simulate --what-if")
        if missing is None:
            raise
        return str(missing)
    return None


# ---------------------------------------------------------------------------------------------
# The terminal.


def what_if_table(table: dict[str, Any]) -> Table:
    """One line per value: verdict, time to DECOMMISSIONED, backfill, p99s, and how long each
    gate held the plan back (its first refusal to its last, by the phase it held back)."""
    out = Table(
        title=f"what if {table['knob']}: {table['scenario']}, {table['strategy']}, seed "
        f"{table['seed']} (times in s from the controller's start, p99 of ok ops in ms)",
        title_justify="left",
    )
    out.add_column(table["knob"].split(".")[-1], justify="right", no_wrap=True)
    out.add_column("verdict", no_wrap=True)
    for head in ("to DECOMM.", "backfill", "reads p99", "writes p99"):
        out.add_column(head, justify="right")
    out.add_column("gates held")
    for r in table["rows"]:
        style = {"VALID": "green", "STALLED": "yellow"}.get(r["verdict"], "red")
        eta = r["backfill_eta_s"]
        held = ", ".join(
            f"{target.replace('DECOMMISSIONED', 'DECOMM.')} {w['last_s'] - w['first_s']:.1f}"
            for target, w in r["gate_waits"].items()
        )
        out.add_row(
            str(r["value"]),
            f"[{style}]{r['verdict']}[/{style}]",
            _figure(r["time_to_decommissioned_s"], f"- ({r['end_phase']})"),
            _figure(r["backfill_s"], "unfinished" if eta is None else f"{eta:,.0f} left"),
            _figure(r["reads_p99_ms"], "-", ".2f"),
            _figure(r["writes_p99_ms"], "-", ".2f"),
            held or "-",
        )
    return out


def _figure(value: float | None, otherwise: str, spec: str = ".1f") -> str:
    return otherwise if value is None else format(value, spec)
