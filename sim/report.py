"""What a simulation leaves behind: the history, report.json, PNG plots and a self-contained
report.html, plus the verdict table printed to the terminal.

report.json carries the history's sha256, so that two runs of one seed can be compared by a
line of JSON; the history itself is byte-identical for the same scenario, strategy and seed.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from vecmig.harness.extras import as_missing_extra
from vecmig.harness.history.checker import ANOMALIES
from vecmig.harness.history.report import build as build_report
from vecmig.sim.scenario import SECOND
from vecmig.sim.simulation import RunResult

PHASE_COLOURS = {
    "OLD_ONLY": "#ffffff",
    "DUAL_WRITE": "#e8f0fe",
    "BACKFILL": "#fef3e0",
    "SHADOW": "#e6f4ea",
    "CUTOVER": "#fce8e6",
    "DECOMMISSIONED": "#f1f3f4",
}


# ---------------------------------------------------------------------------------------------
# Figures.


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "n": 0}  # type: ignore[dict-item]
    arr = np.asarray(values, dtype=float)
    return {
        "p50": round(float(np.percentile(arr, 50)), 3),
        "p99": round(float(np.percentile(arr, 99)), 3),
        "n": len(values),  # type: ignore[dict-item]
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
        backfill=result.backfill,
        gate_waits=gate_waits(result),
        controller={k: v for k, v in result.controller.items() if k != "gate_waits"},
        simulated_s=result.sim_end_ns / SECOND,
        wall_s=round(wall_s, 3),
        driver_bugs=result.bugs,
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
        plots = write_plots(result, out)
    except ModuleNotFoundError as exc:
        missing = as_missing_extra(exc, "vecmig simulate")
        if missing is None:
            raise
        plots_missing = str(missing)
    (out / "report.html").write_text(
        render_html(report, out, plots, plots_missing), encoding="utf-8"
    )
    return Written(report, plots, plots_missing)


def write_plots(result: RunResult, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    end_s = result.sim_end_ns / SECOND

    def shade(ax: Any) -> None:
        spans = result.phases + [{"phase": "", "time": result.sim_end_ns}]
        for a, b in zip(spans, spans[1:], strict=False):
            ax.axvspan(
                a["time"] / SECOND,
                b["time"] / SECOND,
                color=PHASE_COLOURS.get(a["phase"], "#fff"),
                zorder=0,
            )
            if a["phase"] != "OLD_ONLY":
                ax.axvline(a["time"] / SECOND, color="#999", lw=0.6, zorder=1)
        for f in result.faults:
            stop = (f["stop"] if f["stop"] is not None else result.sim_end_ns) / SECOND
            ax.axvspan(
                f["start"] / SECOND,
                max(stop, f["start"] / SECOND + 0.2),
                color="#d93025",
                alpha=0.12,
                zorder=1,
            )

    def legend_phases(ax: Any) -> None:
        from matplotlib.patches import Patch

        seen = list(dict.fromkeys(p["phase"] for p in result.phases))
        handles = [Patch(color=PHASE_COLOURS[p], label=p) for p in seen]
        handles.append(Patch(color="#d93025", alpha=0.25, label="fault"))
        ax.legend(handles=handles, loc="upper left", fontsize=7, ncol=4)

    # Latency and throughput.
    buckets: dict[int, list[float]] = defaultdict(list)
    count: dict[int, int] = defaultdict(int)
    for c in result.completed:
        second = (c.invoked + c.latency_ns) // SECOND
        count[second] += 1
        if c.type == "ok":
            buckets[second].append(c.latency_ns / 1e6)
    seconds = sorted(count)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True)
    if seconds:
        xs = [s for s in seconds if buckets.get(s)]
        ax1.plot(xs, [np.percentile(buckets[s], 50) for s in xs], lw=1, label="p50")
        ax1.plot(xs, [np.percentile(buckets[s], 99) for s in xs], lw=1, label="p99")
        ax2.plot(seconds, [count[s] for s in seconds], lw=1, color="#1a73e8")
    ax1.set_ylabel("client op latency (ms)")
    ax1.set_yscale("log")
    ax2.set_ylabel("ops completed / s")
    ax2.set_xlabel("simulated time (s)")
    for ax in (ax1, ax2):
        shade(ax)
        ax.set_xlim(0, end_s)
    legend_phases(ax2)
    ax1.legend(loc="upper right", fontsize=8)
    ax1.set_title(f"{result.scenario.name} / {result.strategy} / seed {result.seed}")
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=90)
    plt.close(fig)
    names.append("latency.png")

    # Backfill progress and the repair log.
    t = [x / SECOND for x in result.series["time"]]
    fig, ax = plt.subplots(figsize=(11, 3.5))
    ax.plot(t, result.series["backfill_copied"], label="backfill: records copied", color="#188038")
    ax.set_ylabel("records copied")
    ax.set_xlabel("simulated time (s)")
    shade(ax)
    ax2b = ax.twinx()
    ax2b.plot(t, result.series["repair_backlog"], label="repair log", color="#d93025", lw=0.8)
    ax2b.set_ylabel("repair log entries")
    ax.legend(loc="upper left", fontsize=8)
    ax2b.legend(loc="upper right", fontsize=8)
    ax.set_xlim(0, end_s)
    fig.tight_layout()
    fig.savefig(out / "backfill.png", dpi=90)
    plt.close(fig)
    names.append("backfill.png")

    # Mismatch rate of mirrored reads.
    fig, ax = plt.subplots(figsize=(11, 3))
    pts = [(x, y) for x, y in zip(t, result.series["mismatch_rate"], strict=True) if y is not None]
    if pts:
        ax.plot(
            [p[0] for p in pts],
            [p[1] for p in pts],
            color="#9334e6",
            label="mirrored-read mismatch rate",
        )
    noise = result.controller.get("noise_floor")
    if noise:
        ax.axhline(
            min(1.0, 2 * noise["rate"]), color="#5f6368", ls="--", lw=0.8, label="2 x noise floor"
        )
    ax.set_ylabel("mismatch rate")
    ax.set_xlabel("simulated time (s)")
    shade(ax)
    ax.set_xlim(0, end_s)
    if pts or noise:
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "mismatch.png", dpi=90)
    plt.close(fig)
    names.append("mismatch.png")
    return names


def render_html(
    report: dict[str, Any], out: Path, plots: Sequence[str], plots_missing: str | None = None
) -> str:
    e = html.escape
    verdict = report["verdict"]
    status = (
        "VALID"
        if verdict["valid"]
        else "UNKNOWN"
        if verdict["unknown"]
        else "ANOMALIES"
        if any(verdict[k] for k in ANOMALIES)
        else "STALLED"
    )
    colour = "#188038" if verdict["valid"] else "#d93025"
    rows = "".join(
        f"<tr><td>{e(k.replace('_', ' '))}</td><td class=n>{verdict[k]}</td>"
        f"<td><code>{e(json.dumps((report['examples'].get(k) or [''])[0], default=str))}</code></td></tr>"
        for k in ANOMALIES
    )
    stall = verdict.get("stall")
    rows += (
        f"<tr><td>progress</td><td class=n>{'stalled' if stall else 'finished'}</td>"
        f"<td>{e(stall['description'] if stall else 'the plan reached its last step')}</td></tr>"
    )
    phases = "".join(
        f"<tr><td>{e(p['phase'])}</td><td class=n>{p['time_s']:.2f}</td></tr>"
        for p in report["phases"]
    )
    faults = "".join(
        f"<tr><td>{e(f['family'])}</td><td>{e(json.dumps({k: v for k, v in f.items() if k not in ('family', 'start', 'stop', 'start_s', 'stop_s')}))}</td>"
        f"<td class=n>{f['start_s']:.2f}</td><td class=n>{_seconds(f['stop_s'])}</td></tr>"
        for f in report["faults"]
    )
    latency = "".join(
        f"<tr><td>{e(phase)}</td>"
        + "".join(
            f"<td class=n>{(v.get(kind) or {}).get('p50', '')}</td><td class=n>{(v.get(kind) or {}).get('p99', '')}</td>"
            for kind in ("reads", "writes")
        )
        + "</tr>"
        for phase, v in report["latency_ms"].items()
    )
    waits = "".join(
        f"<tr><td>{e(w['target'])}</td><td class=n>{w['count']}</td><td class=n>{w['first_s']:.1f}-{w['last_s']:.1f}</td><td>{e(w['reason'])}</td></tr>"
        for w in report["gate_waits"]
    )
    images = e(plots_missing or "") + "".join(
        f'<p><img alt="{e(name)}" src="data:image/png;base64,{base64.b64encode((out / name).read_bytes()).decode()}"></p>'
        for name in plots
    )
    recall = "n/a" if report["recall"] is None else f"{report['recall']:.4f}"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>vecmig simulate {e(report["scenario"])} {e(report["strategy"])} {report["seed"]}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#202124}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #dadce0;padding:3px 8px;font-size:13px;vertical-align:top}}
td.n{{text-align:right}}code{{font-size:11px;word-break:break-all}}img{{max-width:100%}}</style></head><body>
<h1>{e(report["scenario"])} &middot; {e(report["strategy"])} &middot; seed {report["seed"]}: <span style="color:{colour}">{status}</span></h1>
<p>Replay: <code>{e(report["replay"])}</code><br>history sha256 <code>{report["history_sha256"]}</code><br>
ended in {e(report["end_phase"])} after {report["simulated_s"]:.1f} simulated s ({report["wall_s"]:.1f} s wall); recall {recall};
backfill {e(json.dumps(report["backfill"]))}</p>
<h2>Verdict</h2><table><tr><th>anomaly</th><th>count</th><th>first example</th></tr>{rows}</table>
<p>{"<br>".join(e(n) for n in report["notes"])}</p>
<h2>Plots</h2>{images}
<h2>Latency by phase (ms, ok ops)</h2><table><tr><th>phase</th><th>reads p50</th><th>reads p99</th><th>writes p50</th><th>writes p99</th></tr>{latency}</table>
<h2>Phases</h2><table><tr><th>phase</th><th>published at (s)</th></tr>{phases}</table>
<h2>Gate waits</h2><table><tr><th>target</th><th>refusals</th><th>when (s)</th><th>reason (first wording)</th></tr>{waits}</table>
<h2>Faults</h2><table><tr><th>family</th><th>where</th><th>start (s)</th><th>stop (s)</th></tr>{faults}</table>
</body></html>
"""


# ---------------------------------------------------------------------------------------------
# The terminal.


def print_summary(console: Console, report: dict[str, Any]) -> None:
    verdict = report["verdict"]
    table = Table(
        title=f"vecmig simulate {report['scenario']} --strategy {report['strategy']} --seed {report['seed']}",
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
    console.print(table)

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
    console.print(lat)

    if report["gate_waits"]:
        waits = Table(title="gate waits (the reasons the gates gave)", title_justify="left")
        waits.add_column("to")
        waits.add_column("refusals", justify="right")
        waits.add_column("when (s)", justify="right")
        waits.add_column("reason (first wording)", overflow="fold")
        for w in report["gate_waits"]:
            waits.add_row(
                w["target"], str(w["count"]), f"{w['first_s']:.1f}-{w['last_s']:.1f}", w["reason"]
            )
        console.print(waits)
    ops = ", ".join(
        f"{f} {t['invoke']} ({', '.join(f'{k} {t[k]}' for k in ('ok', 'fail', 'info') if t[k])})"
        for f, t in report["ops"].items()
    )
    console.print(f"ops: {ops}", highlight=False)
    console.print(
        f"faults: {len(report['faults'])} started ({', '.join(sorted({f['family'] for f in report['faults']})) or 'none'})",
        highlight=False,
    )
    for note in report["notes"]:
        console.print(f"note: {note}", highlight=False, markup=False)
    for bug in report["driver_bugs"][:5]:
        console.print(f"[yellow]operation error:[/yellow] {bug}", highlight=False)


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


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
