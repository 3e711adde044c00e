"""What a simulation leaves behind: the history, report.json, the plots (`sim/plots.py`) and a
self-contained report.html (the template `report.html.j2`), plus the verdict table printed to
the terminal.

report.json carries the history's sha256, so that two runs of one seed can be compared by a
line of JSON; the history itself is byte-identical for the same scenario, strategy and seed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from vecmig.harness.extras import as_missing_extra
from vecmig.harness.history.checker import ANOMALIES
from vecmig.harness.history.report import build as build_report
from vecmig.sim.plots import write_plots
from vecmig.sim.scenario import SECOND
from vecmig.sim.simulation import RunResult, eta_points

# ---------------------------------------------------------------------------------------------
# Figures.


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "n": 0}
    arr = np.asarray(values, dtype=float)
    return {
        "p50": round(float(np.percentile(arr, 50)), 3),
        "p99": round(float(np.percentile(arr, 99)), 3),
        "n": len(values),
    }


def latency_by_phase(result: RunResult) -> dict[str, dict[str, Any]]:
    """p50/p99 (ms) of ok client reads and writes, by the phase published at invoke."""
    groups: dict[str, dict[str, list[float]]] = defaultdict(lambda: {"reads": [], "writes": []})
    for c in result.completed:
        if c.type != "ok":
            continue
        kind = "reads" if c.f in ("get", "search") else "writes"
        groups[c.phase][kind].append(c.latency_ns / 1e6)
    order = [p["phase"] for p in result.phases]
    out: dict[str, dict[str, Any]] = {}
    for phase in dict.fromkeys(order):
        if phase in groups:
            out[phase] = {kind: percentiles(v) for kind, v in groups[phase].items()}
    return out


def gate_waits(result: RunResult) -> list[dict[str, Any]]:
    """The gates' refusals, grouped by target and kind of reason, with the first wording."""
    grouped: dict[tuple[str, str], dict[str, Any]] = {}
    for wait in result.controller.get("gate_waits", []):
        for reason in wait["reasons"]:
            kind = re.sub(r"[\d.]+", "#", reason)
            key = (wait["target"], kind)
            entry = grouped.setdefault(
                key,
                {
                    "target": wait["target"],
                    "reason": reason,
                    "count": 0,
                    "first_s": wait["time"] / SECOND,
                    "last_s": 0.0,
                },
            )
            entry["count"] += 1
            entry["last_s"] = wait["time"] / SECOND
    return list(grouped.values())


def headline(result: RunResult) -> dict[str, Any]:
    """The figures asked first before a migration: how long from the controller's start until
    DECOMMISSIONED (None if the run never got there), how long the backfill took, and, for a
    backfill the run left unfinished, when it would finish at its average rate so far (from
    the end of the run; the catalog's size at load is what it counts down). `backfill_eta`
    is how the estimate moved while the backfill ran (`vecmig.sim.simulation.eta_points`)."""
    start_ns = int(result.scenario.migration.start_s * SECOND)
    done = next((p["time"] for p in result.phases if p["phase"] == "DECOMMISSIONED"), None)
    backfill = result.backfill
    eta = None
    if backfill["started"] is not None and not backfill["done"] and backfill["copied"]:
        rate = backfill["copied"] / ((result.sim_end_ns - backfill["started"]) / SECOND)
        left = max(0, result.scenario.catalog.products - backfill["copied"])
        eta = round(left / rate, 1)
    return {
        "time_to_decommissioned_s": None if done is None else round((done - start_ns) / SECOND, 3),
        "backfill_s": backfill["duration_s"],
        "backfill_eta_s": eta,
        "backfill_eta": eta_points(result.series),
    }


def overall_latency(result: RunResult) -> dict[str, dict[str, Any]]:
    """p50/p99 (ms) of every ok client read and write of the run, whatever the phase."""
    groups: dict[str, list[float]] = {"reads": [], "writes": []}
    for c in result.completed:
        if c.type == "ok":
            groups["reads" if c.f in ("get", "search") else "writes"].append(c.latency_ns / 1e6)
    return {kind: percentiles(values) for kind, values in groups.items()}


def history_bytes(result: RunResult) -> bytes:
    return "".join(e.to_json() + "\n" for e in result.events).encode("utf-8")


def replay_command(result: RunResult, scenario_arg: str) -> str:
    command = f"vecmig simulate {scenario_arg} --seed {result.seed} --strategy {result.strategy}"
    return command + (" --swarm" if result.swarm else "") + (" --buggify" if result.buggify else "")


def report_json(result: RunResult, sha256: str, scenario_arg: str, wall_s: float) -> dict[str, Any]:
    """report.json: the report every engine writes (`vecmig.harness.history.report`, schema in
    docs/report.schema.json), with the simulator's own fields."""
    report = build_report(
        "simulate",
        result.verdict,
        result.events,
        seed=result.seed,
        strategy=result.strategy,
        scenario=result.scenario.name,
        scenario_source=result.scenario.source,
        swarm=result.swarm,
        buggify=result.buggify,
        history_sha256=sha256,
        replay=replay_command(result, scenario_arg),
        end_phase=result.end_phase,
        latency_ms=latency_by_phase(result),
        latency_overall_ms=overall_latency(result),
        backfill=result.backfill,
        gate_waits=gate_waits(result),
        controller={k: v for k, v in result.controller.items() if k != "gate_waits"},
        simulated_s=result.sim_end_ns / SECOND,
        wall_s=round(wall_s, 3),
        driver_bugs=result.bugs,
        headline=headline(result),
        fidelity=result.fidelity,
    )
    report["notes"] += result.notes
    return report


# ---------------------------------------------------------------------------------------------
# Files.


@dataclass(frozen=True)
class Written:
    """What `write` left in the run's folder."""

    report: dict[str, Any]
    plots: list[str]
    """The PNG files written (none without matplotlib)."""
    plots_missing: str | None
    """Why there are no plots: the one line naming the extra to install, or None."""


def write(result: RunResult, out: Path, scenario_arg: str, wall_s: float) -> Written:
    """Write the history, report.json, the plots and report.html into `out`. Without
    matplotlib (the plots extra) everything but the plots is written, and `Written` says so."""
    out.mkdir(parents=True, exist_ok=True)
    data = history_bytes(result)
    (out / "history.jsonl").write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    report = report_json(result, sha, scenario_arg, wall_s)
    (out / "report.json").write_text(
        json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8"
    )
    plots: list[str] = []
    plots_missing = None
    try:
        plots = write_plots(result, report["faults"], out)
    except ModuleNotFoundError as exc:
        missing = as_missing_extra(exc, "vecmig simulate")
        if missing is None:
            raise
        plots_missing = str(missing)
    (out / "report.html").write_text(
        render_html(report, out, plots, plots_missing), encoding="utf-8"
    )
    return Written(report, plots, plots_missing)


_TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
)


def status_of(verdict: dict[str, Any]) -> str:
    """The one word the report's title gives the verdict."""
    if verdict["valid"]:
        return "VALID"
    if verdict["unknown"]:
        return "UNKNOWN"
    return "ANOMALIES" if any(verdict[k] for k in ANOMALIES) else "STALLED"


def render_html(
    report: dict[str, Any], out: Path, plots: Sequence[str], plots_missing: str | None = None
) -> str:
    """report.html: `report` and the plots (files in `out`) embedded, from report.html.j2."""
    return _TEMPLATES.get_template("report.html.j2").render(
        report=report,
        status=status_of(report["verdict"]),
        anomalies=ANOMALIES,
        plots=[(name, base64.b64encode((out / name).read_bytes()).decode()) for name in plots],
        plots_missing=plots_missing,
        faults=[
            (f, {k: v for k, v in f.items() if k not in ("family", "start_s", "stop_s")})
            for f in report["faults"]
        ],
    )


# ---------------------------------------------------------------------------------------------
# The terminal.


def print_summary(console: Console, report: dict[str, Any]) -> None:
    """The report in the terminal: the checks, latency by phase, gate waits, then one line each
    for the ops, the faults, the notes and the first operation errors; the headline figures
    first."""
    console.print(headline_line(report), highlight=False)
    console.print(_checks_table(report))
    console.print(_latency_table(report))
    if report["gate_waits"]:
        console.print(_gate_waits_table(report))
    ops = ", ".join(
        f"{f} {t['invoke']} ({', '.join(f'{k} {t[k]}' for k in ('ok', 'fail', 'info') if t[k])})"
        for f, t in report["ops"].items()
    )
    console.print(f"ops: {ops}", highlight=False)
    families = ", ".join(sorted({f["family"] for f in report["faults"]})) or "none"
    console.print(f"faults: {len(report['faults'])} started ({families})", highlight=False)
    for note in report["notes"]:
        console.print(f"note: {note}", highlight=False, markup=False)
    for bug in report["driver_bugs"][:5]:
        console.print(f"[yellow]operation error:[/yellow] {bug}", highlight=False)


def headline_line(report: dict[str, Any]) -> str:
    """The headline figures in one line: time to DECOMMISSIONED (from the controller's
    start), the backfill's duration, and its ETA when the run ended before it did."""
    head = report["headline"]
    done = head["time_to_decommissioned_s"]
    parts = [
        "to DECOMMISSIONED "
        + ("[red]not reached[/red]" if done is None else f"[bold]{done:.1f} s[/bold]")
        + " from the controller's start"
    ]
    if head["backfill_s"] is not None:
        parts.append(f"backfill {head['backfill_s']:.1f} s")
    elif report["backfill"]["started"] is None:
        parts.append("backfill not started")
    else:
        eta = head["backfill_eta_s"]
        parts.append(
            "backfill unfinished"
            + ("" if eta is None else f", about {eta:,.0f} s more at its rate so far")
        )
    return "; ".join(parts)


def _checks_table(report: dict[str, Any]) -> Table:
    """Each anomaly count with its first example, recall, the backfill, phases and progress."""
    verdict = report["verdict"]
    table = Table(
        title=f"vecmig simulate {report['scenario']} --strategy {report['strategy']} "
        f"--seed {report['seed']}",
        title_justify="left",
    )
    table.add_column("check")
    table.add_column("value", justify="right")
    table.add_column("detail", overflow="fold")
    for kind in ANOMALIES:
        count = verdict[kind]
        style = "red" if count else "green"
        shown = report["examples"].get(kind)
        table.add_row(
            kind.replace("_", " "),
            f"[{style}]{count}[/{style}]",
            _describe(shown[0]) if shown else "",
        )
    recall = report["recall"]
    table.add_row(
        "recall",
        "n/a" if recall is None else f"{recall:.4f}",
        "mean recall@k of sampled searches vs exact",
    )
    fidelity = report["fidelity"]
    if fidelity["mode"] == "scaled":
        table.add_row(
            "fidelity",
            "scaled",
            f"{fidelity['products']:,} products, {fidelity['sampled']:,} with vectors (searches "
            f"judged on those, the rest on every id); costs from {_profile_names(fidelity)}"
            + (" (extrapolated past the measured index)" if _extrapolated(fidelity) else ""),
        )
    b = report["backfill"]
    table.add_row(
        "backfill",
        "-" if b["duration_s"] is None else f"{b['duration_s']:.1f} s",
        f"{b['copied']} records scanned, done={b['done']}",
    )
    table.add_row(
        "phases",
        report["end_phase"],
        " -> ".join(f"{p['phase']}@{p['time_s']:.1f}s" for p in report["phases"]),
    )
    stall = verdict.get("stall")
    table.add_row(
        "progress",
        "[red]stalled[/red]" if stall else "[green]finished[/green]",
        escape(stall["description"]) if stall else "the plan reached its last step",
    )
    return table


def _latency_table(report: dict[str, Any]) -> Table:
    lat = Table(title="latency by phase (ms, ok client ops)", title_justify="left")
    lat.add_column("phase")
    for head in ("reads p50", "reads p99", "writes p50", "writes p99"):
        lat.add_column(head, justify="right")
    for phase, v in report["latency_ms"].items():
        cells = []
        for kind in ("reads", "writes"):
            p = v.get(kind) or {}
            cells += [_ms(p.get("p50")), _ms(p.get("p99"))]
        lat.add_row(phase, *cells)
    overall = report.get("latency_overall_ms")
    if overall:
        cells = [_ms(overall[kind][q]) for kind in ("reads", "writes") for q in ("p50", "p99")]
        lat.add_row("whole run", *cells, style="bold")
    return lat


def _gate_waits_table(report: dict[str, Any]) -> Table:
    waits = Table(title="gate waits (the reasons the gates gave)", title_justify="left")
    waits.add_column("to")
    waits.add_column("refusals", justify="right")
    waits.add_column("when (s)", justify="right")
    waits.add_column("reason (first wording)", overflow="fold")
    for w in report["gate_waits"]:
        waits.add_row(
            w["target"], str(w["count"]), f"{w['first_s']:.1f}-{w['last_s']:.1f}", w["reason"]
        )
    return waits


def _profile_names(fidelity: dict[str, Any]) -> str:
    """The profile's name, or each side's when they differ."""
    names = {side: p["name"] for side, p in fidelity.get("profiles", {}).items()}
    if len(set(names.values())) > 1:
        return ", ".join(f"{name} ({side})" for side, name in names.items())
    return str(fidelity["profile"]["name"])


def _extrapolated(fidelity: dict[str, Any]) -> bool:
    return any(side["extrapolated"] for side in fidelity["service"].values())


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _describe(example: dict[str, Any]) -> str:
    keys = (
        "f",
        "id",
        "returned",
        "max_up",
        "acknowledged_upsert",
        "acknowledged_delete",
        "final",
        "old",
        "new",
        "phase",
        "faults",
    )
    return ", ".join(
        f"{k}={example[k]!r}" for k in keys if k in example and example[k] not in (None, [])
    )
