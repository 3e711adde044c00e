"""What a simulation leaves behind for people: report.html is rendered from its template with
everything escaped, and the plots keep phases and faults apart and put every series on one
time axis."""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

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
from vecmig.sim.report import render_html, status_of

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
        "backfill": {"copied": 10, "done": True, "duration_s": 2.0},
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
