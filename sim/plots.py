"""The PNG plots of a simulation (matplotlib, the `plots` extra).

`timeline.png` puts everything that happens over time on one time axis, top to bottom: the
phase strip, the fault timeline (one lane per fault and where it hit), client latency,
throughput, recall of sampled searches against the exact answer, and the mismatch rate of
mirrored reads. Phases are drawn only in their strip and faults only in theirs, in colours
that cannot be taken for each other; the other panels carry a thin line at each phase change.
`backfill.png` shows the backfill's progress, the repair log and the backfill's ETA over time.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vecmig.harness.history.ops import Event
from vecmig.sim.scenario import SECOND
from vecmig.sim.simulation import RunResult, eta_points

if TYPE_CHECKING:
    from matplotlib.axes import Axes

PLOTS = ("timeline.png", "backfill.png")

PHASE_COLOURS = {
    "OLD_ONLY": "#dadce0",
    "DUAL_WRITE": "#8ab4f8",
    "BACKFILL": "#fdd663",
    "SHADOW": "#81c995",
    "CUTOVER": "#c58af9",
    "DECOMMISSIONED": "#80868b",
}
"""Blues, yellows, greens and purples: no phase is red, so none reads as a fault."""
SHORT_NAMES = {"OLD_ONLY": "old", "DUAL_WRITE": "dual", "DECOMMISSIONED": "decom."}
"""Labels for phases whose span is too narrow for their name."""
FAULT_COLOUR = "#d93025"
FAULT_OPEN_COLOUR = "#f28b82"
"""A fault still on when the run ended."""
WHERE = ("side", "target", "instance", "shard", "replica", "node")
"""The fault parameters that say where a fault hit: a fault's lane is its family and these."""


def write_plots(result: RunResult, faults: Sequence[dict[str, Any]], out: Path) -> list[str]:
    """Write the plots of `result` into `out` and return their file names. `faults` are the
    report's (paired starts and stops, in seconds). Raises ModuleNotFoundError without
    matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    timeline(result, faults, out / PLOTS[0])
    backfill(result, out / PLOTS[1])
    return list(PLOTS)


def timeline(result: RunResult, faults: Sequence[dict[str, Any]], path: Path) -> None:
    import matplotlib.pyplot as plt

    lanes = fault_lanes(faults)
    heights = [0.45, max(0.45, 0.22 * len(lanes)), 2.0, 1.1, 1.1, 1.1]
    fig, axes = plt.subplots(
        len(heights),
        1,
        figsize=(11, 1.2 + sum(heights)),
        sharex=True,
        gridspec_kw={"height_ratios": heights, "hspace": 0.12},
    )
    strip, fault_ax, latency_ax, ops_ax, recall_ax, mismatch_ax = axes
    end_s = result.sim_end_ns / SECOND
    phase_strip(strip, result.phases, end_s)
    fault_timeline(fault_ax, faults, lanes, end_s)
    latency_and_throughput(latency_ax, ops_ax, result)
    recall_over_time(recall_ax, result.events)
    mismatch_over_time(mismatch_ax, result)
    for ax in axes[2:]:
        phase_lines(ax, result.phases)
    axes[-1].set_xlabel("simulated time (s)")
    axes[-1].set_xlim(0, end_s)
    strip.set_title(f"{result.scenario.name} / {result.strategy} / seed {result.seed}")
    fig.align_ylabels(axes)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def phase_spans(phases: Sequence[dict[str, Any]], end_s: float) -> list[tuple[str, float, float]]:
    """(phase, start, stop) in seconds, from the published phases (times in ns)."""
    starts = [(p["phase"], p["time"] / SECOND) for p in phases]
    stops = [t for _, t in starts[1:]] + [end_s]
    return [(name, start, stop) for (name, start), stop in zip(starts, stops, strict=True)]


def phase_strip(ax: Axes, phases: Sequence[dict[str, Any]], end_s: float) -> None:
    for name, start, stop in phase_spans(phases, end_s):
        ax.broken_barh([(start, stop - start)], (0, 1), color=PHASE_COLOURS.get(name, "#fff"))
        share = (stop - start) / end_s
        label = name if share > 0.1 else SHORT_NAMES.get(name, "") if share > 0.035 else ""
        ax.text((start + stop) / 2, 0.5, label, ha="center", va="center", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_yticks([])
    ax.set_ylabel("phase", rotation=0, ha="right", va="center", fontsize=8)


def fault_lane(fault: dict[str, Any]) -> str:
    where = "/".join(str(fault[k]) for k in WHERE if fault.get(k) is not None)
    return f"{fault['family']} {where}".strip()


def fault_lanes(faults: Iterable[dict[str, Any]]) -> list[str]:
    """One lane per fault family and place, in the order they first started."""
    return list(dict.fromkeys(fault_lane(f) for f in faults))


def fault_timeline(
    ax: Axes, faults: Sequence[dict[str, Any]], lanes: Sequence[str], end_s: float
) -> None:
    row = {lane: i for i, lane in enumerate(reversed(lanes))}
    for fault in faults:
        still_on = fault["stop_s"] is None
        stop = end_s if still_on else fault["stop_s"]
        width = max(stop - fault["start_s"], 0.004 * end_s)  # an instant fault stays visible
        ax.broken_barh(
            [(fault["start_s"], width)],
            (row[fault_lane(fault)] + 0.15, 0.7),
            color=FAULT_OPEN_COLOUR if still_on else FAULT_COLOUR,
        )
    ax.set_yticks([i + 0.5 for i in range(len(lanes))], list(reversed(lanes)), fontsize=6)
    ax.set_ylim(0, max(1, len(lanes)))
    ax.set_ylabel("faults", rotation=0, ha="right", va="center", fontsize=8, labelpad=4)
    if not lanes:
        ax.set_yticks([])
        ax.text(0.5, 0.5, "no faults", transform=ax.transAxes, ha="center", fontsize=7)


def phase_lines(ax: Axes, phases: Sequence[dict[str, Any]]) -> None:
    for p in phases[1:]:
        ax.axvline(p["time"] / SECOND, color="#9aa0a6", lw=0.6, ls="--", zorder=0)


def latency_and_throughput(latency_ax: Axes, ops_ax: Axes, result: RunResult) -> None:
    latencies: dict[int, list[float]] = defaultdict(list)
    completed: dict[int, int] = defaultdict(int)
    for c in result.completed:
        second = (c.invoked + c.latency_ns) // SECOND
        completed[second] += 1
        if c.type == "ok":
            latencies[second].append(c.latency_ns / 1e6)
    seconds = [s for s in sorted(latencies) if latencies[s]]
    if seconds:
        for q in (50, 99):
            values = [np.percentile(latencies[s], q) for s in seconds]
            latency_ax.plot(seconds, values, lw=1, label=f"p{q}")
        latency_ax.legend(loc="upper right", fontsize=7)
    latency_ax.set_yscale("log")
    latency_ax.set_ylabel("latency (ms)\nok client ops", fontsize=8)
    busy = sorted(completed)
    ops_ax.plot(busy, [completed[s] for s in busy], lw=1, color="#1a73e8")
    ops_ax.set_ylabel("ops / s", fontsize=8)


def recall_by_second(events: Iterable[Event]) -> dict[int, float]:
    """Mean recall@k, per second, of the searches that carry their exact top-k."""
    sums: dict[int, list[float]] = defaultdict(list)
    for e in events:
        if e.f != "search" or e.type != "ok" or not isinstance(e.value, dict):
            continue
        exact = e.value.get("exact")
        if exact:
            returned = {entry[0] for entry in e.value.get("results", [])}
            sums[e.time // SECOND].append(len(returned & set(exact)) / len(set(exact)))
    return {second: float(np.mean(values)) for second, values in sorted(sums.items())}


def recall_over_time(ax: Axes, events: Iterable[Event]) -> None:
    recall = recall_by_second(events)
    if recall:
        ax.plot(list(recall), list(recall.values()), lw=1, color="#188038", marker=".", ms=2)
    else:
        ax.text(0.5, 0.5, "no sampled exact answers", transform=ax.transAxes, ha="center")
    ax.set_ylim(min([0.8, *recall.values()]) - 0.02, 1.02)
    ax.set_ylabel("recall@k\nvs exact", fontsize=8)


def mismatch_over_time(ax: Axes, result: RunResult) -> None:
    times = [t / SECOND for t in result.series["time"]]
    points = [
        (t, rate)
        for t, rate in zip(times, result.series["mismatch_rate"], strict=True)
        if rate is not None
    ]
    if points:
        ax.plot(*zip(*points, strict=True), color="#9334e6", lw=1, label="mirrored reads")
    noise = result.controller.get("noise_floor")
    if noise:
        ax.axhline(
            min(1.0, 2 * noise["rate"]), color="#5f6368", ls=":", lw=0.8, label="2 x noise floor"
        )
    if points or noise:
        ax.legend(loc="upper right", fontsize=7)
    ax.set_ylabel("mismatch\nrate", fontsize=8)


def backfill(result: RunResult, path: Path) -> None:
    """The backfill's progress and the repair log above, its ETA over time below."""
    import matplotlib.pyplot as plt

    times = [t / SECOND for t in result.series["time"]]
    fig, (ax, eta_ax) = plt.subplots(
        2, 1, figsize=(11, 5), sharex=True, gridspec_kw={"height_ratios": [3, 2], "hspace": 0.1}
    )
    ax.plot(times, result.series["backfill_copied"], label="records copied", color="#188038")
    ax.set_ylabel("backfill: records copied", fontsize=8)
    repairs = ax.twinx()
    repairs.plot(
        times, result.series["repair_backlog"], label="repair log", color="#e37400", lw=0.8
    )
    repairs.set_ylabel("repair log entries", fontsize=8)
    ax.legend(loc="upper left", fontsize=7)
    repairs.legend(loc="upper right", fontsize=7)
    backfill_eta(eta_ax, result)
    for panel in (ax, eta_ax):
        phase_lines(panel, result.phases)
    eta_ax.set_xlabel("simulated time (s)")
    eta_ax.set_xlim(0, result.sim_end_ns / SECOND)
    fig.align_ylabels([ax, eta_ax])
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def backfill_eta(ax: Axes, result: RunResult) -> None:
    """The ETA the run estimated each second (gaps: no progress to measure a rate by) and,
    for a backfill that finished, the time it really had left, to judge the estimate by."""
    points = eta_points(result.series, limit=len(result.series["time"]))
    if not points:
        ax.text(0.5, 0.5, "no backfill ETA (no backfill ran)", transform=ax.transAxes, ha="center")
    else:
        # None breaks the line: NaN is matplotlib's gap.
        ax.plot(
            [t for t, _ in points],
            [np.nan if eta is None else eta for _, eta in points],
            color="#1a73e8",
            lw=1,
            label="ETA (recent rate)",
        )
        finished = result.backfill["finished"]
        if finished is not None and result.backfill["done"]:
            end, start = finished / SECOND, points[0][0]
            ax.plot([start, end], [end - start, 0], color="#5f6368", ls=":", lw=1, label="actual")
        ax.legend(loc="upper right", fontsize=7)
    ax.set_ylabel("backfill ETA (s)", fontsize=8)
    ax.set_ylim(bottom=0)


VERDICT_COLOURS = {"VALID": "#188038", "STALLED": "#e37400"}
"""A what-if point's colour by its run's verdict; anything else (anomalies, unknown) is red."""


def what_if_plot(table: dict[str, Any], path: Path) -> None:
    """what-if.png: each value of the knob as a point, time to DECOMMISSIONED against the p99
    of ok client reads, joined in the order given. A run that never got to DECOMMISSIONED is
    drawn at the end of its run (a lower bound) with a right-pointing marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    start = table["controller_start_s"]
    short = table["knob"].split(".")[-1]
    xs, ys = [], []
    for r in table["rows"]:
        reached = r["time_to_decommissioned_s"] is not None
        x = r["time_to_decommissioned_s"] if reached else r["simulated_s"] - start
        y = r["reads_p99_ms"]
        if y is None:
            continue
        xs.append(x)
        ys.append(y)
        ax.scatter(
            [x],
            [y],
            s=50,
            marker="o" if reached else ">",
            color=VERDICT_COLOURS.get(r["verdict"], FAULT_COLOUR),
            zorder=3,
        )
        label = f"{short}={r['value']}" + ("" if r["verdict"] == "VALID" else f" ({r['verdict']})")
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.plot(xs, ys, color="#9aa0a6", lw=0.8, zorder=1)
    ax.set_xlabel("time to DECOMMISSIONED from the controller's start (s; > not reached)")
    ax.set_ylabel("p99 of ok client reads (ms)")
    ax.set_title(
        f"what if {table['knob']}: {table['scenario']} / {table['strategy']} / "
        f"seed {table['seed']}",
        fontsize=10,
    )
    ax.margins(0.15)
    ax.grid(True, lw=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
