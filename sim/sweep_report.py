"""What a sweep leaves behind besides its results: sweep.json (seeds run, wall time, seeds per
second, verdict counts, stalls, failures grouped by signature), two plots (failures by fault
family and by phase) and sweep.html (Jinja2, the plots embedded), plus the terminal summary.

Everything is computed from the stored rows of the sweep's tasks, so a resumed sweep reports
on all of its seeds, not only on those this invocation ran.
"""

from __future__ import annotations

import base64
import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import numpy as np
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from vecmig.harness.history.checker import ANOMALIES
from vecmig.sim.scenario import Scenario
from vecmig.sim.sweep_store import StoredResult
from vecmig.sim.sweep_task import OUTCOMES, Signature, Task, fingerprint

if TYPE_CHECKING:
    from vecmig.sim.sweep import SweepRun

PLOTS = ("failures-by-family.png", "failures-by-phase.png")
PER_SEED_TABLE_MAX = 40
"""Above this many seeds the terminal shows the groups, not one row per seed."""


# ---------------------------------------------------------------------------------------------
# sweep.json.


def summarise(
    rows: Sequence[StoredResult], tasks: Sequence[Task], scenario: Scenario, record: SweepRun
) -> dict[str, Any]:
    """The sweep report as JSON-ready data."""
    first = tasks[0]
    stored = {row.task.seed for row in rows}
    failing = [row for row in rows if row.failed]
    return {
        "scenario": scenario.name,
        "scenario_arg": first.scenario,
        "scenario_source": scenario.source,
        "fingerprint": fingerprint(scenario),
        "strategy": first.strategy,
        "swarm": first.swarm,
        "buggify": first.buggify,
        "duration": first.duration,
        "executor": record.executor,
        "seeds": {
            "planned": record.planned,
            "first": min(t.seed for t in tasks),
            "last": max(t.seed for t in tasks),
            "stored": len(rows),
            "run_now": record.ran,
            "resumed": record.resumed,
            "missing": sorted(t.seed for t in tasks if t.seed not in stored),
            "lost": [{"seed": t.seed, "reason": reason} for t, reason in record.lost],
        },
        "interrupted": record.interrupted,
        "wall_s": round(record.wall_s, 3),
        "seeds_per_s": round(record.ran / record.wall_s, 4) if record.wall_s > 0 else None,
        "seed_wall_s": _spread([row.wall_s for row in rows]),
        "seed_cpu_s": _spread([row.cpu_s for row in rows]),
        "workers": len({row.worker for row in rows}),
        "verdicts": {outcome: sum(row.outcome == outcome for row in rows) for outcome in OUTCOMES},
        "stalls": sum(row.stalled for row in rows),
        "anomalies": {kind: sum(bool(row.counts.get(kind)) for row in rows) for kind in ANOMALIES},
        "groups": groups(failing),
        "by_family": by_family(rows),
        "by_phase": dict(
            Counter(row.signature.phase for row in failing if row.signature).most_common()
        ),
        "failures": [
            {
                "seed": row.task.seed,
                "outcome": row.outcome,
                "signature": row.signature.label() if row.signature else row.outcome,
                "replay": row.replay,
                "history": row.history,
                "raised": row.raised,
            }
            for row in failing
        ],
    }


def groups(failing: Sequence[StoredResult]) -> list[dict[str, Any]]:
    """Failing seeds grouped by signature, the largest group first; each group names its
    smallest seed and that seed's replay command."""
    grouped: dict[Signature | None, list[StoredResult]] = defaultdict(list)
    for row in failing:
        grouped[row.signature].append(row)
    out: list[dict[str, Any]] = []
    for signature, members in grouped.items():
        smallest = min(members, key=lambda row: row.task.seed)
        out.append(
            {
                "signature": signature.to_json() if signature else None,
                "label": signature.label() if signature else smallest.outcome,
                "count": len(members),
                "smallest_seed": smallest.task.seed,
                "replay": smallest.replay,
                "history": smallest.history,
                "seeds": sorted(row.task.seed for row in members),
            }
        )
    out.sort(key=lambda group: (-len(group["seeds"]), group["smallest_seed"]))
    return out


def by_family(rows: Sequence[StoredResult]) -> dict[str, dict[str, int]]:
    """Per fault family: seeds whose run had it, how many of those failed, and how many
    failures had it active at the first anomaly."""
    table: dict[str, dict[str, int]] = defaultdict(
        lambda: {"seeds": 0, "failing": 0, "at_first_anomaly": 0}
    )
    for row in rows:
        for family in row.families:
            table[family]["seeds"] += 1
            table[family]["failing"] += row.failed
        if row.failed and row.signature is not None:
            for family in row.signature.families:
                table[family]["at_first_anomaly"] += 1
    return {family: table[family] for family in sorted(table)}


def _spread(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "p50": None, "p99": None, "max": None}
    arr = np.asarray(values, dtype=float)
    return {
        "mean": round(float(arr.mean()), 3),
        "p50": round(float(np.percentile(arr, 50)), 3),
        "p99": round(float(np.percentile(arr, 99)), 3),
        "max": round(float(arr.max()), 3),
    }


# ---------------------------------------------------------------------------------------------
# Files.


def write(summary: dict[str, Any], out: Path) -> None:
    """sweep.json, the plots and sweep.html in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    write_plots(summary, out)
    (out / "sweep.html").write_text(render_html(summary, out), encoding="utf-8")


def write_plots(summary: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = summary["by_family"]
    names = list(families)
    fig, ax = plt.subplots(figsize=(9, 0.35 * max(len(names), 3) + 1.2))
    ys = np.arange(len(names))
    bars = (
        ("seeds", "seeds whose run had it", "#dadce0"),
        ("failing", "failing seeds whose run had it", "#1a73e8"),
        ("at_first_anomaly", "failing seeds with it active at the first anomaly", "#d93025"),
    )
    for offset, (field, label, colour) in zip((-0.27, 0.0, 0.27), bars, strict=True):
        counts = [families[n][field] for n in names]
        ax.barh(ys + offset, counts, 0.27, label=label, color=colour)
    ax.set_yticks(ys, names)
    ax.invert_yaxis()
    ax.set_xlabel("seeds")
    ax.set_title("failures by fault family")
    if names:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / PLOTS[0], dpi=90)
    plt.close(fig)

    phases = summary["by_phase"]
    fig, ax = plt.subplots(figsize=(9, 3.2))
    ax.bar(list(phases), list(phases.values()), color="#d93025")
    ax.set_ylabel("failing seeds")
    ax.set_title("failures by phase of the first anomaly (or where a stalled run stopped)")
    fig.tight_layout()
    fig.savefig(out / PLOTS[1], dpi=90)
    plt.close(fig)


_TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent),
    autoescape=jinja2.select_autoescape(default=True),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def render_html(summary: dict[str, Any], out: Path) -> str:
    images = {
        name: base64.b64encode((out / name).read_bytes()).decode("ascii")
        for name in PLOTS
        if (out / name).exists()
    }
    template = _TEMPLATES.get_template("sweep_report.html.j2")
    return template.render(s=summary, images=images, anomalies=ANOMALIES)


# ---------------------------------------------------------------------------------------------
# The terminal.


def print_summary(
    console: Console,
    summary: dict[str, Any],
    rows: Sequence[StoredResult],
    *,
    per_seed: bool = True,
) -> None:
    title = f"vecmig sweep {summary['scenario_arg']} --strategy {summary['strategy']}"
    if per_seed and len(rows) <= PER_SEED_TABLE_MAX:
        table = Table(title=f"{title}: {len(rows)} seeds", title_justify="left")
        table.add_column("seed", justify="right")
        table.add_column("verdict")
        table.add_column("anomalies", overflow="fold")
        table.add_column("ended in")
        table.add_column("wall s", justify="right")
        for row in rows:
            found = ", ".join(f"{k.replace('_', ' ')} {n}" for k, n in row.counts.items() if n)
            verdict = (
                "[green]valid[/green]" if not row.failed else f"[red]{row.outcome.upper()}[/red]"
            )
            if row.raised:
                found = row.raised
            table.add_row(
                str(row.task.seed), verdict, escape(found), row.end_phase, f"{row.wall_s:.1f}"
            )
        console.print(table)
    if summary["groups"]:
        grouped = Table(title="failures by signature", title_justify="left", box=box.SIMPLE_HEAD)
        grouped.add_column("seeds", justify="right")
        grouped.add_column("signature", overflow="fold")
        grouped.add_column("smallest seed's replay", overflow="fold")
        for group in summary["groups"]:
            grouped.add_row(str(group["count"]), escape(group["label"]), escape(group["replay"]))
        console.print(grouped)
    seeds = summary["seeds"]
    counts = summary["verdicts"]
    others = ", ".join(f"{k} {n}" for k, n in counts.items() if n and k not in ("valid", "raised"))
    rate = summary["seeds_per_s"]
    console.print(
        f"{counts['valid']} of {len(rows)} seeds valid"
        + (f", {counts['raised']} raised" if counts["raised"] else "")
        + (f" ({others})" if others else "")
        + "; "
        f"ran {seeds['run_now']} in {summary['wall_s']:.1f} s"
        + (f" ({rate:.2f} seeds/s)" if rate else "")
        + (f", {seeds['resumed']} kept from before" if seeds["resumed"] else "")
        + f" on {summary['executor']}",
        highlight=False,
    )
    for failure in summary["failures"]:
        print(f"replay seed {failure['seed']}: {failure['replay']}")
        if failure["raised"]:
            print(f"  raised: {failure['raised']}")
    for lost in seeds["lost"]:
        print(f"not run: seed {lost['seed']}: {lost['reason']} (retry with --resume)")
