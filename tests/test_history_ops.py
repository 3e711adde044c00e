"""The history format (harness/history/ops.py): what a recorder writes, what a history file
may hold (every bad line is refused with its line and the rule it broke), and how histories
recorded apart are merged into one."""

from __future__ import annotations

import io
import json
import locale
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vecmig.harness.clusters.base import Record
from vecmig.harness.history.ops import (
    Event,
    MalformedHistory,
    Recorder,
    iter_jsonl,
    iter_numbered,
    load_value,
    merge,
    parse_event,
    read_jsonl,
    write_jsonl,
)

GOOD: dict[str, Any] = {
    "index": 0,
    "process": 3,
    "type": "invoke",
    "f": "upsert",
    "value": {"id": "p42", "version": 9},
    "time": 123,
}


def _file(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "history.jsonl"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# Events and the recorder.


def test_an_event_is_one_json_line_in_the_documented_order_and_spacing() -> None:
    """The module docstring's example is what a reader compares a file with: keys in that
    order, `", "` and `": "` between them."""
    event = Event(17, 3, "invoke", "upsert", {"id": "p42", "version": 9}, 123456789)
    assert event.to_json() == (
        '{"index": 17, "process": 3, "type": "invoke", "f": "upsert", '
        '"value": {"id": "p42", "version": 9}, "time": 123456789}'
    )


def test_an_event_writes_its_error_bound_only_when_it_has_one() -> None:
    exact = Event(0, "w1", "ok", "get", None, 5)
    bounded = Event(0, "w1", "ok", "get", None, 5, error=250)
    assert "error" not in json.loads(exact.to_json())
    assert bounded.to_json().endswith('"time": 5, "error": 250}')


def test_an_event_with_a_value_json_cannot_carry_is_refused_when_written() -> None:
    """NaN is not JSON: a history holding it could not be read back by other tools."""
    with pytest.raises(ValueError):
        Event(0, 1, "ok", "search", {"recall": float("nan")}, 1).to_json()


def test_a_load_value_carries_each_records_version_and_metadata() -> None:
    records = [
        Record("a", np.zeros(2, np.float32), {"in_stock": True}, 2),
        Record("b", np.ones(2, np.float32), {}, 5),
    ]
    assert load_value(iter(records)) == {
        "records": {"a": 2, "b": 5},
        "fields": {"a": {"in_stock": True}, "b": {}},
    }


def test_a_recorder_numbers_its_events_from_zero_and_keeps_each_call_as_given() -> None:
    recorder = Recorder()
    first = recorder.invoke(1, "get", {"id": "a"}, 10)
    second = recorder.ok(1, "get", {"id": "a", "version": 1}, 20)
    third = recorder.info("controller", "phase", {"phase": "SHADOW"}, 30)
    fourth = recorder.complete(2, "fail", "upsert", {"id": "b"}, 40)
    assert recorder.events == [first, second, third, fourth]
    assert [(e.index, e.process, e.type, e.f, e.time) for e in recorder.events] == [
        (0, 1, "invoke", "get", 10),
        (1, 1, "ok", "get", 20),
        (2, "controller", "info", "phase", 30),
        (3, 2, "fail", "upsert", 40),
    ]
    assert second.value == {"id": "a", "version": 1}
    assert all(e.error == 0 for e in recorder.events)


def test_a_recorder_stores_times_as_integer_nanoseconds() -> None:
    """A driver may pass a float clock reading; the format holds integers only."""
    event = Recorder().ok(1, "get", {}, 12.9)  # type: ignore[arg-type]
    assert event.time == 12 and isinstance(event.time, int)


def test_a_recorder_gives_every_event_its_clocks_error_bound() -> None:
    recorder = Recorder(error=7)
    recorder.invoke(1, "get", {}, 1)
    recorder.info("w1", "clock", {}, 2)
    assert [e.error for e in recorder.events] == [7, 7]


def test_a_recorder_streams_each_event_as_a_line_and_may_keep_none() -> None:
    """A long live run streams its history to a file and keeps nothing in memory; the
    indexes still count up."""
    sink = io.StringIO()
    recorder = Recorder(sink=sink, keep=False)
    recorder.invoke(1, "get", {"id": "a"}, 10)
    last = recorder.ok(1, "get", {"id": "a", "version": None}, 20)
    assert recorder.events == []
    assert last.index == 1
    lines = sink.getvalue().splitlines(keepends=True)
    assert [line.endswith("\n") for line in lines] == [True, True]
    assert [json.loads(line)["index"] for line in lines] == [0, 1]
    assert lines[1] == last.to_json() + "\n"


def test_a_completion_cannot_be_an_invoke() -> None:
    recorder = Recorder()
    with pytest.raises(ValueError) as raised:
        recorder.complete(1, "invoke", "get", {}, 1)
    assert str(raised.value) == "complete() takes ok, fail or info, not invoke"
    assert recorder.events == []
    for type_ in ("ok", "fail", "info"):
        assert recorder.complete(1, type_, "get", {}, 2).type == type_  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Reading and writing files.


def test_a_history_written_to_a_file_reads_back_equal(tmp_path: Path) -> None:
    recorder = Recorder(error=3)
    recorder.invoke(1, "upsert", {"id": "é", "version": 2}, 10)
    recorder.ok(1, "upsert", {"id": "é", "version": 2}, 20)
    recorder.ok("checker", "final", {"side": "old", "records": {"é": 2}}, 30)
    path = tmp_path / "h.jsonl"
    write_jsonl(recorder.events, path)
    text = path.read_text(encoding="utf-8")
    assert text == "".join(e.to_json() + "\n" for e in recorder.events)
    assert read_jsonl(path) == recorder.events
    assert list(iter_jsonl(str(path))) == recorder.events


def test_reading_numbers_the_lines_of_the_file_and_skips_blank_ones(tmp_path: Path) -> None:
    a = Event(0, 1, "invoke", "get", {"id": "a"}, 1)
    b = Event(1, 1, "ok", "get", {"id": "a", "version": 1}, 2)
    path = _file(tmp_path, f"\n{a.to_json()}\n   \n\t\n{b.to_json()}\n\n")
    assert list(iter_numbered(path)) == [(2, a), (5, b)]


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ('{"index": 0,\n', 1, "not valid JSON (Expecting property name enclosed in double quotes)"),
        ("[1, 2]\n", 1, "expected a JSON object, got list"),
        ('"a line"\n', 1, "expected a JSON object, got str"),
        ("\n\n{}\n", 3, "missing key(s) index, process, type, f, value, time"),
    ],
    ids=["bad-json", "array", "string", "empty-object"],
)
def test_a_line_that_is_not_an_event_object_is_refused_with_its_line(
    tmp_path: Path, text: str, line: int, problem: str
) -> None:
    path = _file(tmp_path, text)
    with pytest.raises(MalformedHistory) as raised:
        read_jsonl(path)
    assert str(raised.value) == f"{path}:{line}: {problem}"
    assert (raised.value.line, raised.value.problem) == (line, problem)


def test_a_file_that_is_not_utf8_is_refused_not_crashed_on(tmp_path: Path) -> None:
    path = _file(tmp_path, b"\xff\xfe{}\n")
    with pytest.raises(MalformedHistory) as raised:
        read_jsonl(path)
    assert str(raised.value) == f"{path}:1: not UTF-8 text"


def test_a_history_reads_as_utf8_whatever_the_locale(tmp_path: Path) -> None:
    """A history written by another tool (or by hand) may hold non-ASCII text as it is; a
    machine whose locale is plain ASCII (LC_CTYPE=C, UTF-8 mode off) must read it the same."""
    line = json.dumps({**GOOD, "value": {"id": "café", "version": 1}}, ensure_ascii=False)
    path = _file(tmp_path, line + "\n")
    if sys.flags.utf8_mode:
        pytest.skip("Python's UTF-8 mode ignores the locale")
    was = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")
    try:
        assert read_jsonl(path)[0].value == {"id": "café", "version": 1}
    finally:
        locale.setlocale(locale.LC_CTYPE, was)


def test_a_malformed_history_names_its_source_and_keeps_the_line_and_problem() -> None:
    error = MalformedHistory(4, "index must be an integer, got 'x'")
    assert str(error) == "history:4: index must be an integer, got 'x'"
    assert (error.line, error.problem) == (4, "index must be an integer, got 'x'")
    assert str(MalformedHistory(2, "bad", "run.jsonl")) == "run.jsonl:2: bad"


# ---------------------------------------------------------------------------------------------
# What one line may hold.


def test_a_good_line_parses_to_its_event_with_an_exact_clock_by_default() -> None:
    assert parse_event(GOOD, 1) == Event(0, 3, "invoke", "upsert", GOOD["value"], 123, 0)
    named = {**GOOD, "process": "nemesis", "f": "fault", "type": "info", "error": 0}
    assert parse_event(named, 1).process == "nemesis"
    assert parse_event({**GOOD, "error": 40}, 1).error == 40


@pytest.mark.parametrize(
    ("key", "bad", "problem"),
    [
        ("index", True, "index must be an integer, got True"),
        ("index", "0", "index must be an integer, got '0'"),
        ("index", 1.0, "index must be an integer, got 1.0"),
        ("process", False, "process must be an integer or a name, got False"),
        ("process", 2.5, "process must be an integer or a name, got 2.5"),
        ("process", None, "process must be an integer or a name, got None"),
        ("type", "done", "type must be one of ['fail', 'info', 'invoke', 'ok'], got 'done'"),
        ("f", "scan", "f must be one of "),
        ("f", ["get"], "f must be one of "),
        ("time", True, "time must be integer nanoseconds, got True"),
        ("time", 1.5, "time must be integer nanoseconds, got 1.5"),
        ("time", "1", "time must be integer nanoseconds, got '1'"),
        ("error", -1, "error must be a bound in integer nanoseconds, 0 or more, got -1"),
        ("error", True, "error must be a bound in integer nanoseconds, 0 or more, got True"),
        ("error", 0.5, "error must be a bound in integer nanoseconds, 0 or more, got 0.5"),
    ],
)
def test_each_field_of_a_line_is_checked_and_the_problem_named(
    key: str, bad: Any, problem: str
) -> None:
    with pytest.raises(MalformedHistory) as raised:
        parse_event({**GOOD, key: bad}, 7, "run.jsonl")
    assert str(raised.value).startswith(f"run.jsonl:7: {problem}")
    assert raised.value.line == 7


def test_an_unknown_f_is_refused_naming_every_known_one() -> None:
    with pytest.raises(MalformedHistory) as raised:
        parse_event({**GOOD, "f": "scan"}, 1)
    known = "clock, delete, fault, final, gate, get, load, phase, plan, search, upsert"
    assert raised.value.problem == f"f must be one of {sorted(known.split(', '))}, got 'scan'"


def test_a_missing_key_is_named_alone() -> None:
    without_time = {k: v for k, v in GOOD.items() if k != "time"}
    with pytest.raises(MalformedHistory) as raised:
        parse_event(without_time, 1)
    assert str(raised.value) == "history:1: missing key(s) time"
    with pytest.raises(MalformedHistory, match=r"missing key\(s\) index, value$"):
        parse_event({k: v for k, v in GOOD.items() if k not in ("index", "value")}, 1)


def test_every_event_type_and_every_f_is_accepted() -> None:
    for type_ in ("invoke", "ok", "fail", "info"):
        assert parse_event({**GOOD, "type": type_}, 1).type == type_
    fs = ("upsert", "delete", "get", "search", "load", "phase", "fault", "final", "plan")
    for f in (*fs, "gate", "clock"):
        assert parse_event({**GOOD, "f": f}, 1).f == f


# ---------------------------------------------------------------------------------------------
# Merging histories recorded apart.


def test_merging_orders_by_time_keeps_each_files_order_on_ties_and_renumbers() -> None:
    """Two Locust workers each write their own file; the merged history is one timeline
    whose indexes count from zero, and events at the same nanosecond keep the order of the
    files given, then of their lines."""
    first = [
        Event(0, 1, "invoke", "get", {"id": "a"}, 10),
        Event(1, 1, "ok", "get", {"id": "a", "version": 1}, 30),
        Event(2, 1, "invoke", "get", {"id": "b"}, 30),
    ]
    second = [
        Event(0, 2, "invoke", "upsert", {"id": "a", "version": 2}, 5, error=9),
        Event(1, 2, "ok", "upsert", {"id": "a", "version": 2}, 30, error=9),
        Event(2, 2, "invoke", "get", {"id": "a"}, 40, error=9),
    ]
    merged = merge([first, second])
    assert [e.index for e in merged] == [0, 1, 2, 3, 4, 5]
    assert [(e.process, e.time, e.error) for e in merged] == [
        (2, 5, 9),
        (1, 10, 0),
        (1, 30, 0),
        (1, 30, 0),
        (2, 30, 9),
        (2, 40, 9),
    ]
    assert [(e.type, e.f, e.value) for e in merged[2:4]] == [
        ("ok", "get", {"id": "a", "version": 1}),
        ("invoke", "get", {"id": "b"}),
    ]
    assert merged[0].value == {"id": "a", "version": 2} and merged[0].type == "invoke"
    assert merged[0].f == "upsert"


def test_merging_ties_follow_the_files_order_not_their_indexes() -> None:
    """A later file's event with a lower index still comes after an earlier file's at the
    same time."""
    early = [Event(5, 1, "ok", "get", {}, 10)]
    late = [Event(0, 2, "ok", "get", {}, 10)]
    assert [e.process for e in merge([early, late])] == [1, 2]
    assert [e.process for e in merge([late, early])] == [2, 1]
