"""Histories from many clocks: events that carry a bound on their clock's error (`error`), and
`clock` events that say whether a clock stayed within its bound. A worker whose clock is off
by less than its bound produces no false anomaly; a real stale read further apart than the
bounds is still found; a clock that left its bound makes the verdict unknown."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vecmig.harness.history.checker import check
from vecmig.harness.history.ops import Event, MalformedHistory, Recorder, merge, read_jsonl

MS = 1_000_000


class Clock:
    """One recorder's clock: it reads the reference's time plus `skew` and records `error`."""

    def __init__(self, name: str, skew_ns: int = 0, error_ns: int = 0) -> None:
        self.name = name
        self.skew = skew_ns
        self.recorder = Recorder(error=error_ns)

    def at(self, true_ns: int) -> int:
        return true_ns + self.skew

    def invoke(self, process: int, f: str, true_ns: int, **value: Any) -> None:
        self.recorder.invoke(process, f, value, self.at(true_ns))

    def ok(self, process: int, f: str, true_ns: int, **value: Any) -> None:
        self.recorder.ok(process, f, value, self.at(true_ns))

    def clock_event(self, *, drift_ns: int | None = None) -> None:
        value: dict[str, Any] = {"clock": self.name, "error_ns": self.recorder.error}
        value.update({"offset_ns": 0, "at": "start" if drift_ns is None else "end"})
        if drift_ns is not None:
            value["drift_ns"] = drift_ns
        self.recorder.info(self.name, "clock", value, self.at(0 if drift_ns is None else 10**9))


def race(worker: Clock, read_true_ns: int, returned: int) -> list[Event]:
    """The reference clock loads p1 v1 and upserts p1 v2 (invoked at 10 ms, acknowledged at
    20 ms, true time); `worker` gets p1 invoked at `read_true_ns` (completed 1 ms later) and
    returns `returned`."""
    reference = Clock("master")
    reference.recorder.ok("loader", "load", {"records": {"p1": 1}}, 0)
    reference.invoke(1, "upsert", 10 * MS, id="p1", version=2)
    reference.ok(1, "upsert", 20 * MS, id="p1", version=2)
    worker.clock_event()
    worker.invoke(2, "get", read_true_ns, id="p1")
    worker.ok(2, "get", read_true_ns + MS, id="p1", version=returned)
    worker.clock_event(drift_ns=0)
    finals(reference.recorder, {"p1": 2})
    return merge([reference.recorder.events, worker.recorder.events])


def finals(recorder: Recorder, records: dict[str, int]) -> None:
    for side in ("old", "new"):
        recorder.ok("checker", "final", {"side": side, "records": records}, 2 * 10**9)


def test_a_worker_ahead_within_its_bound_gives_no_false_stale_read() -> None:
    """The read truly began 2 ms before v2 was acknowledged, so v1 is a fair answer; the
    worker's clock runs 5 ms ahead, so its invoke reads 3 ms after the acknowledgement."""
    worker = Clock("worker-1", skew_ns=5 * MS, error_ns=6 * MS)
    verdict = check(race(worker, 18 * MS, returned=1))
    assert verdict.valid, verdict.to_json()
    assert any("clock-error bounds" in note for note in verdict.notes)
    exact = Clock("worker-1", skew_ns=5 * MS, error_ns=0)  # the same clock, said to be exact
    assert check(race(exact, 18 * MS, returned=1)).stale_reads == 1


def test_a_real_stale_read_further_apart_than_the_bounds_is_still_found() -> None:
    """The read truly began 30 ms after v2 was acknowledged: beyond both bounds."""
    for skew in (-5 * MS, 0, 5 * MS):
        worker = Clock("worker-1", skew_ns=skew, error_ns=6 * MS)
        verdict = check(race(worker, 50 * MS, returned=1))
        assert verdict.stale_reads == 1 and not verdict.valid, (skew, verdict.to_json())
        assert verdict.examples["stale_reads"][0]["process"] == 2  # the original process
        fresh = Clock("worker-1", skew_ns=skew, error_ns=6 * MS)
        assert check(race(fresh, 50 * MS, returned=2)).valid


def test_a_clock_beyond_its_bound_is_caught_at_the_end_and_the_verdict_is_unknown() -> None:
    """The worker's clock stepped 9 ms ahead during the run while it claimed 6 ms: its
    recorded read looks stale; the end check measured the drift, so the verdict is unknown
    (and the anomaly it sees is still reported), never valid."""
    worker = Clock("worker-1", skew_ns=9 * MS, error_ns=6 * MS)
    events = race(worker, 18 * MS, returned=1)
    events = [
        e if e.f != "clock" or "drift_ns" not in e.value else _drift(e, 9 * MS) for e in events
    ]
    verdict = check(events)
    assert verdict.unknown and not verdict.valid
    assert any("beyond its bound" in note for note in verdict.notes), verdict.notes
    real = race(Clock("worker-1", skew_ns=9 * MS, error_ns=6 * MS), 50 * MS, returned=1)
    real = [e if e.f != "clock" or "drift_ns" not in e.value else _drift(e, 9 * MS) for e in real]
    verdict = check(real)
    assert verdict.stale_reads == 1 and verdict.unknown


def test_a_clock_never_checked_at_the_end_leaves_the_verdict_unknown() -> None:
    worker = Clock("worker-1", skew_ns=1 * MS, error_ns=6 * MS)
    events = [e for e in race(worker, 50 * MS, returned=2) if "drift_ns" not in e.value]
    verdict = check(events)
    assert verdict.unknown and not verdict.valid
    assert any("never checked at the end" in note for note in verdict.notes), verdict.notes


def _drift(event: Event, drift_ns: int) -> Event:
    value = {**event.value, "drift_ns": drift_ns}
    return Event(event.index, event.process, event.type, event.f, value, event.time, event.error)


def test_one_process_may_overlap_itself_once_widened_but_never_runs_two_ops(tmp_path: Path) -> None:
    """Two reads of one worker 1 ms apart overlap once widened by 6 ms each; that is no
    malformed history. Two invokes without a completion between are, with their line."""
    worker = Clock("w", error_ns=6 * MS)
    worker.recorder.ok("loader", "load", {"records": {"p1": 1}}, 0)
    for n in range(3):
        worker.invoke(7, "get", (10 + 2 * n) * MS, id="p1")
        worker.ok(7, "get", (11 + 2 * n) * MS, id="p1", version=1)
    finals(worker.recorder, {"p1": 1})
    path = tmp_path / "h.jsonl"
    path.write_text("".join(e.to_json() + "\n" for e in worker.recorder.events))
    events = read_jsonl(path)
    assert [e.error for e in events] == [6 * MS] * 9
    assert check(events).valid
    bad = [*events[:2], Event(2, 7, "invoke", "get", {"id": "p1"}, 12 * MS, 6 * MS)]
    with pytest.raises(MalformedHistory, match="still open"):
        check(bad)


def test_an_exact_history_writes_no_error_field_and_a_negative_bound_is_refused() -> None:
    exact = Recorder().invoke(1, "get", {"id": "p1"}, 5)
    assert "error" not in json.loads(exact.to_json())
    from vecmig.harness.history.ops import parse_event

    line = {"index": 0, "process": 1, "type": "invoke", "f": "get", "value": {}, "time": 5}
    with pytest.raises(MalformedHistory, match="error must be a bound"):
        parse_event({**line, "error": -1}, 1)
    assert parse_event({**line, "error": 7}, 1).error == 7


def test_a_drift_equal_to_the_bound_is_within_it_and_a_larger_one_is_named_in_ms() -> None:
    def judged(drift_ns: int) -> Any:
        worker = Clock("worker-1", error_ns=2 * MS)
        worker.clock_event()
        worker.clock_event(drift_ns=drift_ns)
        finals(worker.recorder, {})
        return check(worker.recorder.events)

    assert judged(2 * MS).valid and judged(-2 * MS).valid
    verdict = judged(-3_500_000)
    assert verdict.unknown
    assert (
        "clock worker-1 moved -3.5 ms from the offset it used, beyond its bound of 2 ms: the "
        "times it gave cannot be ordered against other clocks' within their bounds, so this "
        "history cannot be judged"
    ) in verdict.notes


def test_clocks_never_checked_at_the_end_are_named() -> None:
    first, second = Clock("w2", error_ns=MS), Clock("w1", error_ns=MS)
    first.clock_event()
    second.clock_event()
    finals(first.recorder, {})
    verdict = check(merge([first.recorder.events, second.recorder.events]))
    assert verdict.unknown
    assert (
        "clock(s) w1, w2 were set at the start but never checked at the end: whether they "
        "stayed within their bounds is unknown, so this history cannot be judged"
    ) in verdict.notes


def _bounded(*ops: tuple[int, str, str, dict[str, Any]]) -> list[Event]:
    """Events of one worker whose clock has a 1 ms bound, 10 ms apart: (process, type, f,
    value) each."""
    return [
        Event(i, process, type_, f, value, (i + 1) * 10 * MS, MS)  # type: ignore[arg-type]
        for i, (process, type_, f, value) in enumerate(ops)
    ]


def test_a_bounded_history_refuses_a_process_running_two_ops_naming_the_line() -> None:
    busy = _bounded((7, "invoke", "get", {"id": "a"}), (7, "invoke", "get", {"id": "b"}))
    with pytest.raises(MalformedHistory) as raised:
        check(busy)
    assert str(raised.value) == (
        "history:2: process 7 invokes get while an earlier op of it is still open"
    )
    crashed = _bounded(
        (7, "invoke", "get", {"id": "a"}), (7, "info", "get", {}), (7, "invoke", "get", {"id": "a"})
    )
    with pytest.raises(MalformedHistory) as raised:
        check(crashed, lines=[4, 8, 15], source="w.jsonl")
    assert str(raised.value) == (
        "w.jsonl:15: process 7 invokes get while an earlier op of it got info"
    )


def test_a_bounded_history_refuses_a_completion_without_an_invoke_naming_the_line() -> None:
    stray = _bounded((7, "invoke", "get", {"id": "a"}), (8, "ok", "get", {"version": 1}))
    with pytest.raises(MalformedHistory) as raised:
        check(stray, lines=[3, 9], source="w.jsonl")
    assert str(raised.value) == "w.jsonl:9: ok get on process 8 has no open invoke"


def test_a_widened_history_is_judged_in_order_and_the_lines_follow_it() -> None:
    """Widening moves a first invoke before time 0 and may reorder events; the pass sees
    them sorted (no note that they were not), and a later error names the file's line."""
    events = [
        Event(0, 1, "invoke", "get", {"id": "a"}, 0, 5 * MS),
        Event(1, 1, "ok", "get", {"id": "a", "version": None}, MS, 5 * MS),
        Event(2, 2, "ok", "get", {"id": "a", "version": None}, 2 * MS, 0),
    ]
    with pytest.raises(MalformedHistory) as raised:
        check(events, lines=[5, 6, 7], source="w.jsonl")
    assert str(raised.value).startswith("w.jsonl:7: ok get on process 2 has no open invoke")
    verdict = check([*events[:2], *_finals_at(3 * MS)])
    assert not any("not in (time, index) order" in note for note in verdict.notes)


def _finals_at(time: int) -> list[Event]:
    return [
        Event(10 + i, "checker", "ok", "final", {"side": side, "records": {}}, time)
        for i, side in enumerate(("old", "new"))
    ]


def test_events_sharing_a_time_and_an_index_are_in_order() -> None:
    """Histories merged without renumbering may repeat an index; equal keys need no sort."""
    events = [Event(0, "loader", "ok", "load", {"records": {}}, 0), *_finals_at(5)]
    events.append(Event(11, "checker", "ok", "final", {"side": "new", "records": {}}, 5))
    verdict = check(events)
    assert not any("not in (time, index) order" in note for note in verdict.notes)


def test_a_bounded_history_says_so_and_its_examples_name_the_original_processes() -> None:
    """Widening gives each op a process of its own; the examples name the one recorded, and
    a load's acknowledgement keeps its loader."""
    events = [
        Event(0, "loader", "ok", "load", {"records": {"a": 1, "b": 1}}, 0, 1_500_000),
        Event(1, 1, "invoke", "upsert", {"id": "a", "version": 2}, 10 * MS, 1_500_000),
        Event(2, 1, "ok", "upsert", {"id": "a", "version": 2}, 11 * MS, 1_500_000),
        Event(3, 7, "invoke", "get", {"id": "a"}, 20 * MS, 1_500_000),
        Event(4, 7, "ok", "get", {"id": "a", "version": 1}, 21 * MS, 1_500_000),
        *_finals_at(30 * MS),
    ]
    verdict = check(events)
    assert verdict.notes[0] == (
        "times carry clock-error bounds (up to 1.5 ms): ops that overlap within their bounds "
        "are judged concurrent, and the times in examples are the widened ones"
    )
    assert verdict.examples["stale_reads"][0]["process"] == 7
    assert verdict.examples["stale_reads"][0]["invoke_index"] == 3
    lost = {e["id"]: e["process"] for e in verdict.examples["lost_writes"]}
    assert lost == {"a": 1, "b": "loader"}


def test_a_clock_bound_of_a_second_is_named_as_1000_ms() -> None:
    worker = Clock("w1", error_ns=1_000_000_000)
    worker.clock_event()
    worker.clock_event(drift_ns=1_000_000_001)
    finals(worker.recorder, {})
    (note,) = [n for n in check(worker.recorder.events).notes if n.startswith("clock w1")]
    assert note.startswith(
        "clock w1 moved 1000 ms from the offset it used, beyond its bound of 1000 ms"
    )
    assert (
        check(worker.recorder.events)
        .notes[0]
        .startswith("times carry clock-error bounds (up to 1000 ms): ")
    )


def test_a_bounded_history_may_still_name_the_line_of_a_malformed_answer() -> None:
    bad = _bounded((7, "invoke", "get", {"id": "a"}), (7, "ok", "get", {"id": "b", "version": 1}))
    with pytest.raises(MalformedHistory) as raised:
        check(bad, lines=[3, 9], source="w.jsonl")
    assert str(raised.value) == "w.jsonl:9: get ok answers id 'b', but the invoke asked for 'a'"


def test_an_acknowledgement_on_a_bounded_clock_counts_as_late_as_its_bound_allows() -> None:
    """The worker acknowledged v2 at 20 ms on a clock good to 6 ms; the reference's read at
    23 ms may truly have begun before that acknowledgement, so v1 is a fair answer."""
    reference, worker = Clock("master"), Clock("worker-1", error_ns=6 * MS)
    reference.recorder.ok("loader", "load", {"records": {"p1": 1}}, 0)
    worker.invoke(1, "upsert", 10 * MS, id="p1", version=2)
    worker.ok(1, "upsert", 20 * MS, id="p1", version=2)
    reference.invoke(2, "get", 23 * MS, id="p1")
    reference.ok(2, "get", 24 * MS, id="p1", version=1)
    worker.clock_event()
    worker.clock_event(drift_ns=0)
    finals(reference.recorder, {"p1": 2})
    assert check(merge([reference.recorder.events, worker.recorder.events])).valid


def test_a_bounded_history_breaks_time_ties_by_index_not_by_position() -> None:
    """Of two finals of one side at one time, the one with the higher index is the last."""
    events = [
        Event(0, "loader", "ok", "load", {"records": {"a": 1}}, 0, MS),
        Event(11, "checker", "ok", "final", {"side": "old", "records": {}}, 5 * MS, MS),
        Event(10, "checker", "ok", "final", {"side": "old", "records": {"a": 1}}, 5 * MS, MS),
    ]
    assert check(events).lost_writes == 1
