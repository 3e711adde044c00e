"""What a simulation leaves behind for people: report.html is rendered from its template with
everything escaped and the headline figures on top, the plots keep phases and faults apart and
put every series on one time axis, and the backfill's ETA follows the copy down to zero."""

from __future__ import annotations

import html
import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from vecmig.harness.cli import EXIT_VALID, main
from vecmig.harness.history.checker import ANOMALIES
from vecmig.harness.history.ops import Event
from vecmig.sim.plots import (
    FAULT_COLOUR,
    FAULT_OPEN_COLOUR,
    PHASE_COLOURS,
    fault_lanes,
    phase_spans,
    recall_by_second,
)
from vecmig.sim.report import headline_line, print_summary, render_html, status_of
from vecmig.sim.simulation import ETA_POINTS, ETA_WINDOW_NS, backfill_eta_s, eta_points

SECOND = 1_000_000_000


def report(**changes: Any) -> dict[str, Any]:
    verdict = {
        "valid": False,
        "unknown": False,
        "stalled": False,
        "stall": None,
        **dict.fromkeys(ANOMALIES, 0),
        "unjudged_filtered_hits": 0,
    }
    verdict["stale_reads"] = 2
    base = {
        "scenario": "<script>alert(1)</script>",
        "strategy": "naive",
        "seed": 3,
        "replay": "vecmig simulate x --seed 3 --strategy naive",
        "history_sha256": "0" * 64,
        "end_phase": "CUTOVER",
        "simulated_s": 12.5,
        "wall_s": 0.4,
        "recall": None,
        "backfill": {"started": SECOND, "copied": 10, "done": True, "duration_s": 2.0},
        "headline": {
            "time_to_decommissioned_s": None,
            "backfill_s": 2.0,
            "backfill_eta_s": None,
            "backfill_eta": [[2.0, 1.0], [3.0, 0.0]],
        },
        "verdict": verdict,
        "examples": {"stale_reads": [{"id": "p1", "returned": 1, "note": "a < b & c"}]},
        "notes": ["first note", "second & last"],
        "latency_ms": {"OLD_ONLY": {"reads": {"p50": 1.5, "p99": 3.25, "n": 4}}},
        "phases": [{"phase": "DUAL_WRITE", "epoch": 1, "time_s": 1.0}],
        "gate_waits": [
            {"target": "SHADOW", "reason": "backfill <50%", "count": 2, "first_s": 1, "last_s": 2}
        ],
        "faults": [
            {"family": "partition", "side": "new", "mode": "timeout", "start_s": 2, "stop_s": None}
        ],
    }
    return {**base, **changes}


def test_the_html_report_escapes_everything_the_report_carries(tmp_path: Path) -> None:
    page = render_html(report(), tmp_path, [])
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "backfill &lt;50%" in page and "second &amp; last" in page
    text = html.unescape(re.sub(r"<[^>]+>", " ", page))
    assert "ANOMALIES" in text
    assert '"note": "a \\u003c b \\u0026 c"' in text  # an example is JSON, HTML-safe
    assert re.search(r"stale reads\s+2", text)
    assert all(kind.replace("_", " ") in text for kind in ANOMALIES)
    assert '"mode": "timeout"' in text and '"side": "new"' in text


def test_the_headline_figures_open_the_html_report_before_the_verdict(tmp_path: Path) -> None:
    """The first question before a migration is how long it takes: the page answers it above
    everything else, and says so when the run never got to DECOMMISSIONED."""
    text = html.unescape(re.sub(r"<[^>]+>", " ", render_html(report(), tmp_path, [])))
    assert re.search(r"to DECOMMISSIONED\s+not reached\s+backfill\s+2\.0 s", text)
    assert text.index("to DECOMMISSIONED") < text.index("Verdict")
    unfinished = report(
        backfill={"started": SECOND, "copied": 10, "done": False, "duration_s": None},
        headline={
            "time_to_decommissioned_s": None,
            "backfill_s": None,
            "backfill_eta_s": 41.5,
            "backfill_eta": [],
        },
    )
    text = html.unescape(re.sub(r"<[^>]+>", " ", render_html(unfinished, tmp_path, [])))
    assert re.search(r"backfill\s+unfinished\s+backfill ETA at the end\s+42 s more", text)


def test_the_headline_line_says_how_long_or_what_is_left() -> None:
    done = report(headline={**report()["headline"], "time_to_decommissioned_s": 88.6})
    assert headline_line(done) == (
        "to DECOMMISSIONED [bold]88.6 s[/bold] from the controller's start; backfill 2.0 s"
    )
    unfinished = report(
        backfill={"started": SECOND, "copied": 10, "done": False, "duration_s": None},
        headline={**report()["headline"], "backfill_s": None, "backfill_eta_s": 1234.0},
    )
    assert headline_line(unfinished) == (
        "to DECOMMISSIONED [red]not reached[/red] from the controller's start; "
        "backfill unfinished, about 1,234 s more at its rate so far"
    )


def test_the_html_report_embeds_each_plot_or_says_why_there_is_none(tmp_path: Path) -> None:
    (tmp_path / "timeline.png").write_bytes(b"\x89PNG fake")
    page = render_html(report(), tmp_path, ["timeline.png"])
    assert page.count("data:image/png;base64,iVBORyBmYWtl") == 1
    missing = "vecmig simulate: matplotlib is not installed; install the plots extra"
    page = render_html(report(), tmp_path, [], missing)
    assert "No plots: " + missing in page and "data:image/png" not in page


def test_the_status_word_follows_the_verdict() -> None:
    verdict = report()["verdict"]
    assert status_of(verdict) == "ANOMALIES"
    assert status_of({**verdict, "stale_reads": 0, "stalled": True}) == "STALLED"
    assert status_of({**verdict, "unknown": True}) == "UNKNOWN"
    assert status_of({**verdict, "valid": True, "stale_reads": 0}) == "VALID"


def test_no_phase_is_drawn_in_a_fault_colour() -> None:
    assert not {FAULT_COLOUR, FAULT_OPEN_COLOUR} & set(PHASE_COLOURS.values())
    assert len(set(PHASE_COLOURS.values())) == len(PHASE_COLOURS)


def test_phase_spans_cover_the_run_from_each_publication_to_the_next() -> None:
    phases = [{"phase": "OLD_ONLY", "time": 0}, {"phase": "DUAL_WRITE", "time": 5 * SECOND}]
    assert phase_spans(phases, 12.0) == [("OLD_ONLY", 0.0, 5.0), ("DUAL_WRITE", 5.0, 12.0)]


def test_each_fault_family_and_place_gets_its_own_lane_in_order_of_first_start() -> None:
    faults = [
        {"family": "node-crash", "side": "new", "node": "s0r1", "lose_data": True},
        {"family": "partition", "side": "old"},
        {"family": "node-crash", "side": "new", "node": "s0r1", "lose_data": False},
        {"family": "backfill-worker-crash"},
    ]
    assert fault_lanes(faults) == ["node-crash new/s0r1", "partition old", "backfill-worker-crash"]


def test_recall_over_time_is_the_mean_per_second_of_searches_with_an_exact_answer() -> None:
    def search(t: float, returned: list[str], exact: list[str] | None) -> Event:
        value: dict[str, Any] = {"results": [[i, 1, 0.1] for i in returned]}
        if exact is not None:
            value["exact"] = exact
        return Event(0, 1, "ok", "search", value, int(t * SECOND))

    events = [
        search(0.2, ["a", "b"], ["a", "b"]),
        search(0.7, ["a", "c"], ["a", "b"]),
        search(1.5, ["a"], None),  # no exact answer sampled: not counted
        search(2.1, ["x"], ["a", "b", "c", "d"]),
    ]
    assert recall_by_second(events) == {0: 0.75, 2: 0.0}


# ---------------------------------------------------------------------------------------------
# The backfill's ETA.


def test_the_eta_needs_two_samples_in_the_window_and_some_progress() -> None:
    """The first sample after the backfill starts has no rate to go by, and a backfill that
    copied nothing over the window (a crashed worker, a paused node) has no ETA rather than
    an infinite one."""
    started = SECOND // 2
    assert backfill_eta_s([SECOND], [10], started, total=100) is None
    assert backfill_eta_s([SECOND, 2 * SECOND], [10, 30], started, total=100) == 3.5
    assert backfill_eta_s([SECOND, 2 * SECOND], [30, 30], started, total=100) is None


def test_the_eta_goes_by_the_recent_rate_not_the_average_since_the_start() -> None:
    """Ten slow seconds then ten fast ones: the estimate follows the fast rate once the slow
    ones are out of the window, as an operator watching it would."""
    times = [s * SECOND for s in range(31)]
    copied = [min(s, 10) * 1 + max(0, s - 10) * 10 for s in range(31)]
    assert ETA_WINDOW_NS <= 20 * SECOND  # the slow seconds are out of the window by t = 30
    assert backfill_eta_s(times, copied, 0, total=1000) == (1000 - copied[-1]) / 10  # not / 7


def test_eta_points_run_from_the_first_estimate_to_the_first_zero_thinned_to_the_limit() -> None:
    times = [s * SECOND for s in range(200)]
    etas: list[float | None] = [None] * 5 + [float(150 - s) for s in range(5, 150)] + [0.0] * 50
    series: dict[str, list[Any]] = {"time": times, "backfill_eta_s": etas}
    points = eta_points(series)
    assert len(points) <= ETA_POINTS
    assert points[0] == (5.0, 145.0) and points[-1] == (150.0, 0.0)
    assert [t for t, _ in points] == sorted({t for t, _ in points})
    assert eta_points({"time": times, "backfill_eta_s": [None] * 200}) == []
    assert eta_points({"time": times[:3], "backfill_eta_s": [None, 2.0, None]}) == [
        (1.0, 2.0),
        (2.0, None),
    ]


@pytest.fixture(scope="module")
def slow_backfill(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The small shop with its backfill capped at 20 records a second (about 15 s), no faults:
    its report.json."""
    folder = tmp_path_factory.mktemp("eta")
    shop = (Path(__file__).parent / "data" / "small_shop.toml").read_text()
    path = folder / "slow-backfill.toml"
    path.write_text(shop.replace("backfill_rate = 60", "backfill_rate = 20"))
    out = folder / "out"
    assert main(["simulate", str(path), "--quiet", "--out", str(out)]) == EXIT_VALID
    loaded: dict[str, Any] = json.loads((out / "report.json").read_text())
    return loaded


def test_the_eta_counts_down_to_zero_as_the_backfill_finishes(
    slow_backfill: dict[str, Any],
) -> None:
    """At a steady rate the estimate falls about a second per second, ends at 0 within a
    sample of the backfill's end, and is never far from the time the copy really had left
    (it counts down the catalog's size at load, so the copy's tombstones and adds make it a
    little short)."""
    points = slow_backfill["headline"]["backfill_eta"]
    finished = slow_backfill["backfill"]["finished"] / SECOND
    assert len(points) >= 10
    assert points[-1][1] == 0 and abs(points[-1][0] - finished) <= 1.5
    etas = [eta for _, eta in points]
    assert None not in etas
    assert all(later <= earlier + 1.0 for earlier, later in itertools.pairwise(etas))
    for t, eta in points[:-1]:
        truth = finished - t
        assert abs(eta - truth) <= max(2.5, 0.25 * truth), (t, eta, truth)


def test_the_console_summary_starts_with_the_headline_figures(
    slow_backfill: dict[str, Any],
) -> None:
    console = Console(record=True, width=200)
    print_summary(console, slow_backfill)
    decommissioned = slow_backfill["headline"]["time_to_decommissioned_s"]
    assert console.export_text().splitlines()[0] == (
        f"to DECOMMISSIONED {decommissioned:.1f} s from the controller's start; "
        f"backfill {slow_backfill['headline']['backfill_s']:.1f} s"
    )
