"""The checker (harness/history/checker.py) and `vecmig check`: each anomaly is caught with its
exact count, valid concurrent histories are not flagged, malformed input names its line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vecmig.harness.cli import EXIT_ANOMALIES, EXIT_BAD_INPUT, EXIT_VALID, main
from vecmig.harness.clusters.base import Filter, Hit, Record, Side, Unavailable, Vector, matches
from vecmig.harness.clusters.fake import FakeCluster
from vecmig.harness.core import requests as rq
from vecmig.harness.core.phases import Step
from vecmig.harness.drive.rig import Rig
from vecmig.harness.history import ops
from vecmig.harness.history.checker import ANOMALIES, Fields, Verdict, check, check_safely
from vecmig.harness.history.command import describe, print_verdict, read_history
from vecmig.harness.history.liveness import Stall
from vecmig.harness.history.ops import Event, MalformedHistory, Recorder

EXAMPLE = Path(__file__).parent / "data" / "example_history.jsonl"


class History:
    """A hand-written history: each call records one event one microsecond after the last."""

    def __init__(self) -> None:
        self.recorder = Recorder()
        self.now = 0

    @property
    def events(self) -> list[Event]:
        return self.recorder.events

    def _at(self) -> int:
        self.now += 1000
        return self.now

    def invoke(self, process: int, f: str, **value: Any) -> History:
        self.recorder.invoke(process, f, value, self._at())
        return self

    def complete(self, process: int, type_: str, f: str, **value: Any) -> History:
        self.recorder.complete(process, type_, f, value, self._at())  # type: ignore[arg-type]
        return self

    def ok(self, process: int, f: str, **value: Any) -> History:
        return self.complete(process, "ok", f, **value)

    def write(
        self, process: int, f: str, id: str, version: int, fields: Fields | None = None
    ) -> History:
        """A write that completes ok; an upsert carries `fields` (its metadata) if given."""
        carried = {"fields": dict(fields)} if fields is not None else {}
        return self.invoke(process, f, id=id, version=version, **carried).ok(
            process, f, id=id, version=version
        )

    def get(self, process: int, id: str, version: int | None) -> History:
        return self.invoke(process, "get", id=id).ok(process, "get", id=id, version=version)

    def search(
        self,
        process: int,
        results: list[tuple[str, int]],
        filter: Fields | None = None,
        **extra: Any,
    ) -> History:
        rows = [[id_, v, 0.5] for id_, v in results]
        asked = {"filter": dict(filter)} if filter is not None else {}
        return self.invoke(process, "search", k=10, **asked).ok(
            process, "search", results=rows, **extra
        )

    def load(self, records: dict[str, int], fields: dict[str, Fields] | None = None) -> History:
        value: dict[str, Any] = {"records": records}
        if fields is not None:
            value["fields"] = fields
        self.recorder.ok(ops.LOADER, "load", value, self._at())
        return self

    def phase(self, name: str) -> History:
        self.recorder.info(ops.CONTROLLER, "phase", {"phase": name, "epoch": 0}, self._at())
        return self

    def info(self, f: str, value: Any, process: str = ops.NEMESIS) -> History:
        """A fault, plan, gate or clock event (type info)."""
        self.recorder.info(process, f, value, self._at())
        return self

    def final(self, side: str, records: dict[str, int]) -> History:
        self.recorder.ok(ops.CHECKER, "final", {"side": side, "records": records}, self._at())
        return self

    def finals(self, records: dict[str, int]) -> History:
        return self.final("old", records).final("new", records)


def counts(verdict: Verdict) -> dict[str, int]:
    return {kind: n for kind, n in verdict.counts().items() if n}


# ---------------------------------------------------------------------------------------------
# Each anomaly is caught, with its exact count.


def test_stale_get_returns_a_version_older_than_an_acknowledged_upsert() -> None:
    h = History().load({"a": 1}).write(0, "upsert", "a", 2).get(1, "a", 1).finals({"a": 2})
    verdict = check(h.events)
    assert counts(verdict) == {"stale_reads": 1}
    assert not verdict.valid
    example = verdict.examples["stale_reads"][0]
    assert (example["id"], example["returned"], example["max_up"]) == ("a", 1, 2)


def test_stale_get_returns_a_version_at_or_below_an_acknowledged_delete() -> None:
    h = History().load({"a": 1}).write(0, "delete", "a", 2).get(1, "a", 1).final("old", {})
    assert counts(check(h.events)) == {"stale_reads": 1}


def test_a_delete_hides_its_own_version() -> None:
    """A tombstone of version d hides every version <= d, d itself included."""
    h = History().load({"a": 2}).write(0, "delete", "a", 2).get(1, "a", 2).final("old", {})
    assert counts(check(h.events)) == {"stale_reads": 1}


@pytest.mark.parametrize(("returned", "stale"), [(1, 1), (2, 0), (4, 0)])
def test_a_long_read_is_judged_against_the_state_at_its_invoke(returned: int, stale: int) -> None:
    h = (
        History()
        .load({"a": 1})
        .write(0, "upsert", "a", 2)
        .invoke(1, "search", k=10)
        .write(0, "upsert", "a", 3)
        .write(0, "upsert", "a", 4)
        .ok(1, "search", results=[["a", returned, 0.5]])
        .finals({"a": 4})
    )
    verdict = check(h.events)
    assert verdict.stale_reads == stale and verdict.garbage_reads == 0
    if stale:
        assert verdict.examples["stale_reads"][0]["max_up"] == 2


def test_stale_search_counts_each_stale_result() -> None:
    h = (
        History()
        .load({"a": 1, "b": 1, "c": 1})
        .write(0, "upsert", "a", 2)
        .write(0, "delete", "b", 2)
        .search(1, [("a", 1), ("b", 1), ("c", 1)])
        .final("old", {"a": 2, "c": 1})
    )
    assert counts(check(h.events)) == {"stale_reads": 2}


def test_stale_not_found_when_the_newest_op_is_an_upsert() -> None:
    h = History().load({"a": 1}).write(0, "upsert", "a", 2).get(1, "a", None).finals({"a": 2})
    verdict = check(h.events)
    assert counts(verdict) == {"stale_reads": 1}
    assert verdict.examples["stale_reads"][0]["why"] == "not found"


def test_garbage_read_of_a_version_no_write_carried() -> None:
    h = (
        History()
        .load({"a": 1})
        .get(0, "a", 7)
        .search(1, [("zz", 1), ("a", 1)])
        .final("old", {"a": 1})
    )
    verdict = check(h.events)
    assert counts(verdict) == {"garbage_reads": 2}
    assert {e["id"] for e in verdict.examples["garbage_reads"]} == {"a", "zz"}


def test_failed_reads_count_fail_and_info() -> None:
    h = (
        History()
        .load({"a": 1})
        .invoke(0, "get", id="a")
        .complete(0, "fail", "get", error="unavailable")
        .invoke(1, "search", k=10)
        .complete(1, "info", "search", error="timeout")
        .invoke(0, "get", id="a")
        .complete(0, "info", "get", error="timeout")
        .final("old", {"a": 1})
    )
    verdict = check(h.events)
    assert counts(verdict) == {"failed_reads": 3}
    assert verdict.examples["failed_reads"][0]["type"] == "fail"


def test_lost_write_when_the_serving_side_lacks_the_acknowledged_version() -> None:
    h = (
        History()
        .load({"a": 1, "b": 1})
        .write(0, "upsert", "a", 2)
        .write(0, "upsert", "b", 2)
        .final("old", {"a": 1})  # a is too old, b is gone
    )
    verdict = check(h.events)
    assert counts(verdict) == {"lost_writes": 2}


def test_resurrected_delete_when_the_serving_side_still_holds_the_record() -> None:
    h = History().load({"a": 1}).write(0, "delete", "a", 2).final("old", {"a": 1})
    verdict = check(h.events)
    assert counts(verdict) == {"resurrected_deletes": 1}
    assert verdict.examples["resurrected_deletes"][0]["acknowledged_delete"] == 2


def test_divergence_between_finals_in_shadow() -> None:
    h = (
        History()
        .load({"a": 1, "b": 1, "c": 1})
        .phase("SHADOW")
        .final("old", {"a": 1, "b": 1, "c": 1})
        .final("new", {"a": 1, "b": 2, "d": 1})  # b differs, c missing, d extra
    )
    assert counts(check(h.events)) == {"divergence": 3}


def test_an_indeterminate_delete_does_not_explain_an_older_version_in_the_final() -> None:
    """A newer delete may explain a missing id, never an id held at an older version."""
    h = (
        History()
        .load({"a": 1})
        .write(0, "upsert", "a", 2)
        .invoke(1, "delete", id="a", version=3)
        .complete(1, "info", "delete", error="timeout")
        .final("old", {"a": 1})
    )
    assert counts(check(h.events)) == {"lost_writes": 1}


def test_divergence_is_not_judged_before_shadow() -> None:
    h = History().load({"a": 1}).phase("BACKFILL").final("old", {"a": 1}).final("new", {})
    verdict = check(h.events)
    assert verdict.valid
    assert any("divergence not judged" in note for note in verdict.notes)


def test_missing_final_of_the_serving_side_is_unknown_not_valid() -> None:
    h = History().load({"a": 1}).phase("CUTOVER").final("old", {"a": 1})
    verdict = check(h.events)
    assert verdict.unknown and not verdict.valid
    assert any("no final state of side 'new'" in note for note in verdict.notes)


# ---------------------------------------------------------------------------------------------
# A stale read stays stale while a newer write of that id is open. What a read must return
# is fixed by the writes that completed before it was invoked; a write still in flight (or
# completing later) may explain a read of *its* version, never a read of an older one.

V3_INVOKED = ("before the read", "during the read")
V3_ENDS = ("never", "ok", "info", "fail")


def _read_with_v3_open(
    h: History, read: str, returned: int | None, v3_invoked: str, v3_ends: str, v3: str = "upsert"
) -> History:
    """Process 1 reads id a, returning `returned`, while process 2's `v3` write of a (version
    3) is open: invoked before the read or during it, completing after it, or never."""
    if v3_invoked == "before the read":
        h.invoke(2, v3, id="a", version=3)
    h.invoke(1, read, **({"id": "a"} if read == "get" else {"k": 10}))
    if v3_invoked == "during the read":
        h.invoke(2, v3, id="a", version=3)
    if read == "get":
        h.ok(1, "get", id="a", version=returned)
    else:
        h.ok(1, "search", results=[] if returned is None else [["a", returned, 0.5]])
    if v3_ends != "never":
        h.complete(2, v3_ends, v3, id="a", version=3)
    return h


@pytest.mark.parametrize("v3_ends", V3_ENDS)
@pytest.mark.parametrize("v3_invoked", V3_INVOKED)
@pytest.mark.parametrize(("read", "returned"), [("get", 1), ("search", 1), ("get", None)])
def test_a_stale_read_stays_stale_while_a_newer_upsert_is_open(
    read: str, returned: int | None, v3_invoked: str, v3_ends: str
) -> None:
    """Upsert v2 completed ok before the read was invoked, so v1 (or not-found) is stale,
    whatever happens to an upsert v3 of the same id that is in flight when the read ends."""
    h = History().load({"a": 1}).write(0, "upsert", "a", 2)
    _read_with_v3_open(h, read, returned, v3_invoked, v3_ends)
    h.final("old", {"a": 2 if v3_ends == "fail" else 3})
    verdict = check(h.events)
    assert counts(verdict) == {"stale_reads": 1}
    example = verdict.examples["stale_reads"][0]
    assert (example["id"], example["returned"], example["max_up"]) == ("a", returned, 2)


@pytest.mark.parametrize("v3_ends", V3_ENDS)
@pytest.mark.parametrize("v3_invoked", V3_INVOKED)
@pytest.mark.parametrize("read", ["get", "search"])
def test_a_read_hidden_by_a_delete_stays_stale_while_a_re_insert_is_open(
    read: str, v3_invoked: str, v3_ends: str
) -> None:
    """Delete v2 completed ok before the read: v1 is stale even while the re-insert v3 is open."""
    h = History().load({"a": 1}).write(0, "delete", "a", 2)
    _read_with_v3_open(h, read, 1, v3_invoked, v3_ends)
    h.final("old", {} if v3_ends == "fail" else {"a": 3})
    verdict = check(h.events)
    assert counts(verdict) == {"stale_reads": 1}
    assert verdict.examples["stale_reads"][0]["why"] == "a delete"


@pytest.mark.parametrize("v3_invoked", V3_INVOKED)
@pytest.mark.parametrize(
    ("read", "returned", "v3_ends"),
    [
        *((read, 3, ends) for read in ("get", "search") for ends in ("never", "ok", "info")),
        *(("get", 2, ends) for ends in V3_ENDS),
    ],
)
def test_a_read_of_the_open_version_or_the_last_acknowledged_one_is_valid(
    read: str, returned: int, v3_ends: str, v3_invoked: str
) -> None:
    """The contrast: while v3 is in flight, a read may return v3 (it is concurrent with the
    read) or v2 (the newest acknowledged); neither is stale, and v3 is no garbage."""
    h = History().load({"a": 1}).write(0, "upsert", "a", 2)
    _read_with_v3_open(h, read, returned, v3_invoked, v3_ends)
    h.final("old", {"a": 2 if v3_ends == "fail" else 3})
    verdict = check(h.events)
    assert verdict.valid, verdict


@pytest.mark.parametrize("v3_invoked", V3_INVOKED)
def test_an_open_delete_explains_a_not_found_get_but_not_an_older_version(
    v3_invoked: str,
) -> None:
    """A newer delete in flight may explain not-found (it is concurrent), never version 1."""
    h = History().load({"a": 1}).write(0, "upsert", "a", 2)
    _read_with_v3_open(h, "get", None, v3_invoked, "never", v3="delete")
    assert check(h.final("old", {}).events).valid
    h = History().load({"a": 1}).write(0, "upsert", "a", 2)
    _read_with_v3_open(h, "get", 1, v3_invoked, "never", v3="delete")
    assert counts(check(h.final("old", {}).events)) == {"stale_reads": 1}


# ---------------------------------------------------------------------------------------------
# Filters are judged: every hit of a filtered search must match its filter under the fields
# of the version it returned (the fields the load or upsert of that version carried).

IN_STOCK: Fields = {"category": 1, "in_stock": True, "price": 10.0}
OUT_OF_STOCK: Fields = {"category": 1, "in_stock": False, "price": 10.0}
OTHER_CATEGORY: Fields = {"category": 2, "in_stock": True, "price": 10.0}


@pytest.mark.parametrize(
    ("filter", "fields"),
    [
        ({"in_stock": True}, OUT_OF_STOCK),
        ({"category": 1}, OTHER_CATEGORY),
        ({"category": 1, "in_stock": True}, OUT_OF_STOCK),
        ({"brand": "acme"}, IN_STOCK),  # a field the record lacks matches no value
    ],
)
def test_a_fresh_hit_whose_version_does_not_match_the_filter_is_a_filter_violation(
    filter: Fields, fields: Fields
) -> None:
    """The version returned is the newest, so the read is neither stale nor garbage: the
    result set is wrong about the item."""
    h = (
        History()
        .load({"a": 1}, fields={"a": IN_STOCK})
        .write(0, "upsert", "a", 2, fields)
        .search(1, [("a", 2)], filter=filter)
        .final("old", {"a": 2})
    )
    verdict = check(h.events)
    assert counts(verdict) == {"filter_violations": 1}
    example = verdict.examples["filter_violations"][0]
    assert (example["id"], example["returned"]) == ("a", 2)
    assert (example["filter"], example["fields"]) == (filter, fields)
    assert verdict.unjudged_filtered_hits == 0 and not verdict.notes


def test_each_hit_is_judged_and_loaded_fields_count() -> None:
    h = (
        History()
        .load(
            {"a": 1, "b": 1, "c": 1},
            fields={"a": IN_STOCK, "b": OUT_OF_STOCK, "c": OTHER_CATEGORY},
        )
        .search(1, [("a", 1), ("b", 1), ("c", 1)], filter={"in_stock": True})
        .search(1, [("a", 1), ("b", 1), ("c", 1)], filter={"category": 1})
        .search(1, [("a", 1), ("b", 1), ("c", 1)])  # unfiltered: any hit goes
        .final("old", {"a": 1, "b": 1, "c": 1})
    )
    verdict = check(h.events)
    assert counts(verdict) == {"filter_violations": 2}
    assert [e["id"] for e in verdict.examples["filter_violations"]] == ["b", "c"]


def test_a_matching_fresh_hit_is_valid() -> None:
    h = (
        History()
        .load({"a": 1}, fields={"a": OUT_OF_STOCK})
        .write(0, "upsert", "a", 2, IN_STOCK)
        .search(1, [("a", 2)], filter={"in_stock": True, "category": 1})
        .final("old", {"a": 2})
    )
    verdict = check(h.events)
    assert verdict.valid, verdict
    assert verdict.unjudged_filtered_hits == 0


def test_a_hit_concurrent_with_the_write_that_took_it_out_of_stock_is_valid() -> None:
    """Invoked before upsert v2 (out of stock) completed, the search may return v1, which was
    in stock: v1 is neither stale nor a filter violation."""
    h = (
        History()
        .load({"a": 1}, fields={"a": IN_STOCK})
        .invoke(1, "search", k=10, filter={"in_stock": True})
        .write(0, "upsert", "a", 2, OUT_OF_STOCK)
        .ok(1, "search", results=[["a", 1, 0.5]])
        .final("old", {"a": 2})
    )
    assert check(h.events).valid


def test_a_stale_hit_that_matched_when_written_is_stale_not_a_filter_violation() -> None:
    h = (
        History()
        .load({"a": 1}, fields={"a": IN_STOCK})
        .write(0, "upsert", "a", 2, OUT_OF_STOCK)
        .search(1, [("a", 1)], filter={"in_stock": True})
        .final("old", {"a": 2})
    )
    assert counts(check(h.events)) == {"stale_reads": 1}


def test_a_stale_hit_that_does_not_match_counts_as_both() -> None:
    """Staleness is about the version, the filter about that version's fields: two faults."""
    h = (
        History()
        .load({"a": 1}, fields={"a": OUT_OF_STOCK})
        .write(0, "upsert", "a", 2, IN_STOCK)
        .search(1, [("a", 1)], filter={"in_stock": True})
        .final("old", {"a": 2})
    )
    assert counts(check(h.events)) == {"stale_reads": 1, "filter_violations": 1}


def test_a_garbage_hit_is_garbage_only() -> None:
    h = (
        History()
        .load({"a": 1}, fields={"a": IN_STOCK})
        .search(1, [("a", 7)], filter={"in_stock": True})
        .final("old", {"a": 1})
    )
    verdict = check(h.events)
    assert counts(verdict) == {"garbage_reads": 1}
    assert verdict.unjudged_filtered_hits == 0


@pytest.mark.parametrize(("fields", "violations"), [(OUT_OF_STOCK, 1), (IN_STOCK, 0)])
def test_a_hit_of_a_version_carried_later_in_the_file_is_judged_at_the_end(
    fields: Fields, violations: int
) -> None:
    """Clocks of different machines may put a read before the invoke of the write it saw."""
    h = (
        History()
        .load({"a": 1}, fields={"a": IN_STOCK})
        .search(1, [("a", 2)], filter={"in_stock": True})
        .invoke(0, "upsert", id="a", version=2, fields=dict(fields))
        .complete(0, "info", "upsert", error="timeout")
        .final("old", {"a": 2})
    )
    verdict = check(h.events)
    assert counts(verdict) == ({"filter_violations": 1} if violations else {})
    assert verdict.unjudged_filtered_hits == 0


def test_hits_of_versions_without_fields_are_not_judged_and_the_notes_say_how_many() -> None:
    """An older history records no fields: its filtered hits cannot be judged. That is no
    anomaly, and the notes say how many hits went unjudged."""
    h = (
        History()
        .load({"a": 1, "b": 1})  # no fields
        .write(0, "upsert", "b", 2, OUT_OF_STOCK)
        .search(1, [("a", 1), ("b", 2)], filter={"in_stock": True})
        .search(1, [("a", 1)], filter={"category": 1})
        .search(1, [("a", 1)])  # unfiltered: nothing to judge
        .final("old", {"a": 1, "b": 2})
    )
    verdict = check(h.events)
    assert counts(verdict) == {"filter_violations": 1}  # b's upsert carried its fields
    assert verdict.unjudged_filtered_hits == 2
    assert any(
        note.startswith("2 hit(s) of filtered searches not judged") for note in verdict.notes
    )


def test_two_writes_of_one_version_with_different_fields_leave_its_fields_unknown() -> None:
    h = (
        History()
        .load({"a": 1}, fields={"a": IN_STOCK})
        .write(0, "upsert", "a", 2, IN_STOCK)
        .write(0, "upsert", "a", 2, OUT_OF_STOCK)
        .write(0, "upsert", "a", 2)  # no fields: learns nothing, contradicts nothing
        .search(1, [("a", 2)], filter={"in_stock": True})
        .final("old", {"a": 2})
    )
    verdict = check(h.events)
    assert verdict.valid and verdict.unjudged_filtered_hits == 1
    assert any("recorded different fields" in note for note in verdict.notes)


def test_a_write_without_fields_does_not_unlearn_the_fields_of_its_version() -> None:
    h = (
        History()
        .load({"a": 1}, fields={"a": IN_STOCK})
        .write(0, "upsert", "a", 2)
        .write(0, "upsert", "a", 2, OUT_OF_STOCK)
        .search(1, [("a", 2)], filter={"in_stock": True})
        .final("old", {"a": 2})
    )
    assert counts(check(h.events)) == {"filter_violations": 1}


_FIELD_VALUES = st.one_of(
    st.integers(0, 2), st.booleans(), st.sampled_from([1.0, 2.5, "red", None])
)
_FIELD_NAMES = st.sampled_from(["category", "in_stock", "price", "color"])


@settings(max_examples=300, deadline=None)
@given(
    fields=st.dictionaries(_FIELD_NAMES, _FIELD_VALUES, max_size=4),
    filter=st.dictionaries(_FIELD_NAMES, _FIELD_VALUES, min_size=1, max_size=3),
)
def test_a_hit_violates_its_filter_exactly_when_a_cluster_would_not_return_it(
    fields: dict[str, Any], filter: dict[str, Any]
) -> None:
    """The checker's filter semantics are the port's (`clusters.base.matches`): every field
    equal, a missing field equal to nothing (so true equals 1, as in Python and JSON)."""
    h = (
        History()
        .load({"a": 1}, fields={"a": fields})
        .search(1, [("a", 1)], filter=filter)
        .final("old", {"a": 1})
    )
    assert check(h.events).filter_violations == (0 if matches(fields, filter) else 1)


# ---------------------------------------------------------------------------------------------
# Delist, then list again: a re-insert of a deleted id (with a version above its tombstone's)
# is a legitimate write, never a resurrection; the deleted version coming back is one.


def _delisted_then(h: History, reinsert: str) -> History:
    """Load a v1, delete it as v2 (ok), then re-insert it as v3, ending `reinsert`."""
    h.load({"a": 1}).write(0, "delete", "a", 2).invoke(1, "upsert", id="a", version=3)
    if reinsert == "ok":
        return h.ok(1, "upsert", id="a", version=3)
    return h.complete(1, "info", "upsert", error="timeout")


@pytest.mark.parametrize(
    ("reinsert", "final", "expected"),
    [
        ("ok", {"a": 3}, {}),
        ("ok", {"a": 1}, {"lost_writes": 1}),  # the newest acknowledged op is the re-insert
        ("ok", {}, {"lost_writes": 1}),
        ("info", {"a": 3}, {}),  # the indeterminate re-insert took effect
        ("info", {}, {}),  # ... or did not
        ("info", {"a": 1}, {"resurrected_deletes": 1}),  # it cannot explain v1
    ],
    ids=[
        "ok-holds-v3",
        "ok-holds-v1",
        "ok-holds-nothing",
        "info-holds-v3",
        "info-holds-nothing",
        "info-holds-v1",
    ],
)
def test_a_re_insert_after_a_delete_is_told_from_a_resurrection(
    reinsert: str, final: dict[str, int], expected: dict[str, int]
) -> None:
    h = _delisted_then(History(), reinsert).final("old", final)
    verdict = check(h.events)
    assert counts(verdict) == expected
    if "lost_writes" in expected:
        assert verdict.examples["lost_writes"][0]["acknowledged_upsert"] == 3


def test_reads_around_a_re_insert() -> None:
    """Between the delete and the re-insert a read must not see v1 and may see not-found;
    after the re-insert completed it must see v3, not not-found."""
    h = (
        History()
        .load({"a": 1})
        .write(0, "delete", "a", 2)
        .get(1, "a", None)  # valid: deleted
        .search(2, [("a", 1)])  # stale: v1 after the delete completed, before the re-insert
        .write(0, "upsert", "a", 3)
        .get(1, "a", 3)  # valid: re-listed
        .get(1, "a", None)  # stale: not-found after the re-insert completed
        .search(2, [("a", 3)])  # valid
        .final("old", {"a": 3})
    )
    verdict = check(h.events)
    assert counts(verdict) == {"stale_reads": 2}
    found = [(e["f"], e["returned"]) for e in verdict.examples["stale_reads"]]
    assert found == [("search", 1), ("get", None)]


# ---------------------------------------------------------------------------------------------
# Valid histories that must not be flagged.


@pytest.mark.parametrize("seen", [1, 2])
def test_a_read_concurrent_with_an_upsert_may_see_old_or_new(seen: int) -> None:
    h = (
        History()
        .load({"a": 1})
        .invoke(0, "upsert", id="a", version=2)
        .invoke(1, "get", id="a")
        .ok(1, "get", id="a", version=seen)
        .ok(0, "upsert", id="a", version=2)
        .finals({"a": 2})
    )
    assert check(h.events).valid


def test_a_read_invoked_before_the_upsert_completed_may_see_the_old_version() -> None:
    h = (
        History()
        .load({"a": 1})
        .invoke(1, "search", k=10)
        .write(0, "upsert", "a", 2)
        .ok(1, "search", results=[["a", 1, 0.9]])
        .finals({"a": 2})
    )
    assert check(h.events).valid


@pytest.mark.parametrize("final", [{"a": 1}, {"a": 2}])
def test_an_info_upsert_may_take_effect_later_or_never(final: dict[str, int]) -> None:
    h = (
        History()
        .load({"a": 1})
        .invoke(0, "upsert", id="a", version=2)
        .complete(0, "info", "upsert", error="timeout")
        .get(1, "a", 1)
        .get(1, "a", 2)
        .get(1, "a", final["a"])
        .final("old", final)
    )
    assert check(h.events).valid


def test_a_newer_indeterminate_upsert_after_a_delete_is_no_resurrection() -> None:
    h = (
        History()
        .load({"a": 1})
        .write(0, "delete", "a", 2)
        .invoke(1, "upsert", id="a", version=3)
        .complete(1, "info", "upsert", error="timeout")
        .final("old", {"a": 3})
    )
    assert check(h.events).valid


def test_an_info_delete_explains_a_missing_id() -> None:
    h = (
        History()
        .load({"a": 1})
        .invoke(0, "delete", id="a", version=2)
        .complete(0, "info", "delete", error="timeout")
        .get(1, "a", None)
        .final("old", {})
    )
    assert check(h.events).valid


def test_a_never_completed_delete_explains_a_missing_id() -> None:
    h = History().load({"a": 1}).invoke(0, "delete", id="a", version=2).final("old", {})
    verdict = check(h.events)
    assert verdict.valid, verdict


def test_a_concurrent_delete_explains_a_not_found_get() -> None:
    h = (
        History()
        .load({"a": 1})
        .invoke(1, "get", id="a")
        .invoke(0, "delete", id="a", version=2)
        .ok(1, "get", id="a", version=None)
        .ok(0, "delete", id="a", version=2)
        .final("old", {})
    )
    assert check(h.events).valid


def test_a_delete_invoked_only_after_the_get_completed_does_not_explain_it() -> None:
    h = History().load({"a": 1}).get(1, "a", None).write(0, "delete", "a", 2).final("old", {})
    assert check(h.events).stale_reads == 1


def test_reads_of_a_version_whose_upsert_is_still_in_flight() -> None:
    h = (
        History()
        .load({"a": 1})
        .invoke(0, "upsert", id="a", version=2)
        .get(1, "a", 2)
        .search(2, [("a", 2)])
        .ok(0, "upsert", id="a", version=2)
        .finals({"a": 2})
    )
    assert check(h.events).valid


def test_a_read_of_a_version_invoked_later_in_the_file_is_not_garbage() -> None:
    """Garbage means no write ever carried the version, wherever it appears in the history
    (clocks of different machines may put a read of a write before the write's invoke)."""
    h = (
        History()
        .load({"a": 1})
        .get(1, "a", 2)
        .invoke(0, "upsert", id="a", version=2)
        .complete(0, "info", "upsert", error="timeout")
        .final("old", {"a": 2})
    )
    assert check(h.events).valid


def test_after_cutover_the_new_side_serves_and_the_old_may_lag() -> None:
    h = (
        History()
        .load({"a": 1})
        .phase("DUAL_WRITE")
        .phase("BACKFILL")
        .phase("SHADOW")
        .phase("CUTOVER")
        .phase("DECOMMISSIONED")
        .write(0, "upsert", "a", 2)
        .final("old", {"a": 1})
        .final("new", {"a": 2})
    )
    assert check(h.events).valid


def test_a_stale_old_side_after_cutover_is_a_divergence_not_a_lost_write() -> None:
    h = (
        History()
        .load({"a": 1})
        .phase("CUTOVER")
        .write(0, "upsert", "a", 2)
        .final("old", {"a": 1})
        .final("new", {"a": 2})
    )
    assert counts(check(h.events)) == {"divergence": 1}


def test_loads_many_ops_and_agreeing_finals() -> None:
    h = History().load({f"p{i}": 1 for i in range(20)}).phase("DUAL_WRITE")
    state = {f"p{i}": 1 for i in range(20)}
    version = 1
    for round_ in range(10):
        for i in range(0, 20, 3):
            version += 1
            id_ = f"p{(i + round_) % 20}"
            if (i + round_) % 4 == 0 and id_ in state:
                h.write(round_ % 3, "delete", id_, version)
                del state[id_]
            else:
                h.write(round_ % 3, "upsert", id_, version)
                state[id_] = version
            h.get(3, id_, state.get(id_))
        top = sorted(state.items())[:5]
        h.search(4, top, exact=[id_ for id_, _ in top])
    h.phase("SHADOW").finals(state)
    verdict = check(h.events)
    assert verdict.valid, verdict
    assert verdict.recall == 1.0
    assert verdict.ops["upsert"] + verdict.ops["delete"] == 70


def test_unsorted_input_is_sorted_by_time_then_index() -> None:
    h = History().load({"a": 1}).write(0, "upsert", "a", 2).get(1, "a", 2).final("old", {"a": 2})
    verdict = check(list(reversed(h.events)))
    assert verdict.valid
    assert verdict.notes == ["events were not in (time, index) order; the checker sorted them"]


def test_recall_is_the_mean_over_searches_with_exact() -> None:
    h = (
        History()
        .load({"a": 1, "b": 1})
        .search(0, [("a", 1)], exact=["a", "b"])
        .search(0, [("a", 1), ("b", 1)], exact=["a", "b"])
        .search(0, [("a", 1)])
        .search(0, [("a", 1)], exact=[])
        .final("old", {"a": 1, "b": 1})
    )
    verdict = check(h.events)
    assert verdict.valid and verdict.recall == pytest.approx(0.75)


def test_a_crashing_checker_says_unknown() -> None:
    class Exploding:
        def __iter__(self) -> Any:
            raise RuntimeError("boom")

    verdict = check_safely(Exploding())
    assert verdict.unknown and not verdict.valid
    assert "boom" in verdict.notes[0]


# ---------------------------------------------------------------------------------------------
# Malformed histories name the line.


def _lines(events: list[Event]) -> list[str]:
    return [event.to_json() for event in events]


def _write(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "history.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _valid() -> History:
    return History().load({"a": 1}).write(0, "upsert", "a", 2).get(1, "a", 2).final("old", {"a": 2})


@pytest.mark.parametrize(
    ("corrupt", "line", "problem"),
    [
        (lambda lines: lines[:3] + ["{not json"] + lines[3:], 4, "not valid JSON"),
        (lambda lines: lines[:2] + [lines[2].replace('"index": 2, ', "")] + lines[3:], 3, "index"),
        (lambda lines: lines[:3] + lines[4:], 4, "no open invoke"),
    ],
    ids=["bad-json", "missing-key", "completion-without-invoke"],
)
def test_malformed_history_names_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], corrupt: Any, line: int, problem: str
) -> None:
    path = _write(tmp_path, corrupt(_lines(_valid().events)))
    assert main(["check", str(path)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith(f"vecmig check: {path}:{line}: ")
    assert problem in err


def test_blank_lines_do_not_shift_the_line_number(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = _lines(_valid().events)
    path = _write(tmp_path, ["", *lines[:3], "", *lines[4:]])  # drop the get's invoke
    assert main(["check", str(path)]) == EXIT_BAD_INPUT
    assert f"{path}:6: ok get on process 1 has no open invoke" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("build", "problem"),
    [
        (lambda h: h.invoke(0, "get", id="a").invoke(0, "get", id="a"), "still open"),
        (
            lambda h: (
                h.invoke(0, "get", id="a").complete(0, "info", "get").invoke(0, "get", id="a")
            ),
            "got info",
        ),
        (lambda h: h.invoke(0, "get", id="a").ok(0, "search", results=[]), "must match"),
        (lambda h: h.invoke(0, "upsert", id="a"), "version"),
        (lambda h: h.invoke(0, "search"), '"k"'),
        (lambda h: h.final("both", {}), "side"),
        (lambda h: h.invoke(0, "upsert", id="a", version=2, fields=[3]), '"fields" must be'),
        (lambda h: h.invoke(0, "search", k=10, filter="in_stock"), '"filter" is an object'),
        (lambda h: h.load({"b": 1}, fields={"b": 3}), "maps ids to their record's metadata"),
        (lambda h: h.phase("LIMBO"), "phase must be one of OLD_ONLY, DUAL_WRITE, BACKFILL, "),
        (lambda h: h.info("phase", "SHADOW"), "phase must be one of .*, got 'SHADOW'"),
        (lambda h: h.info("plan", "walk"), 'a plan value holds "steps": \\[step, ...\\], got'),
        (lambda h: h.info("plan", {"steps": "all"}), 'a plan value holds "steps"'),
        (lambda h: h.info("gate", "shut"), 'a gate value holds {"target", "reasons"'),
        (lambda h: h.info("gate", {"reasons": "lag"}), 'a gate value holds {"target", "reasons"'),
        (lambda h: h.info("fault", "crash"), 'a fault value holds {"family": str, "action"'),
        (lambda h: h.info("fault", {"family": 3, "action": "start"}), "a fault value holds"),
        (lambda h: h.info("fault", {"family": "crash", "action": "pause"}), "a fault value"),
        (lambda h: h.info("clock", "w1"), 'a clock value holds {"clock": name, "error_ns": int'),
        (lambda h: h.info("clock", {"clock": 1, "error_ns": 5}), "a clock value holds"),
        (lambda h: h.info("clock", {"clock": "w1", "error_ns": "5"}), "a clock value holds"),
        (
            lambda h: h.info("clock", {"clock": "w1", "error_ns": 5, "drift_ns": 1.5}),
            "a clock's drift_ns is an integer, got 1.5",
        ),
        (lambda h: h.invoke(0, "get"), 'get invoke value must be {"id": str}, got {}'),
    ],
    ids=[
        "second-invoke",
        "invoke-after-info",
        "f-mismatch",
        "no-version",
        "no-k",
        "bad-side",
        "fields-not-an-object",
        "filter-not-an-object",
        "load-fields-not-objects",
        "unknown-phase",
        "phase-not-an-object",
        "plan-not-an-object",
        "plan-steps-not-a-list",
        "gate-not-an-object",
        "gate-reasons-not-a-list",
        "fault-not-an-object",
        "fault-family-not-a-string",
        "fault-action-unknown",
        "clock-not-an-object",
        "clock-name-not-a-string",
        "clock-bound-not-an-integer",
        "clock-drift-not-an-integer",
        "get-without-id",
    ],
)
def test_malformed_ops_are_rejected(build: Any, problem: str) -> None:
    h = build(History().load({"a": 1}))
    with pytest.raises(MalformedHistory, match=problem) as raised:
        check(h.events)
    assert raised.value.line == len(h.events)


# ---------------------------------------------------------------------------------------------
# `vecmig check` end to end.


def test_check_safely_still_reports_malformed_input() -> None:
    with pytest.raises(MalformedHistory):
        check_safely(History().invoke(0, "upsert", id="a").events)


def test_check_help_teaches_the_anomalies_and_exit_codes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["check", "--help"])
    text = capsys.readouterr().out
    for phrase in (
        "stale reads",
        "garbage reads",
        "filter violations",
        "lost writes",
        "resurrected deletes",
    ):
        assert phrase in text
    assert "exit codes" in text and "vecmig check" in text


def test_the_command_list_and_check_help_say_what_check_takes_and_prints(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The anomaly table keeps its columns (the description is laid out by hand, not
    re-wrapped), and the argument and the option say what they are."""
    with pytest.raises(SystemExit):
        main(["--help"])
    listed = " ".join(capsys.readouterr().out.split())
    assert "check judge a history: failed, stale and garbage reads, lost writes, resurrections" in (
        listed
    )
    with pytest.raises(SystemExit):
        main(["check", "--help"])
    text = capsys.readouterr().out
    assert "usage: vecmig check [-h] [--json] HISTORY" in text
    assert "\n  failed reads         a get or search that completed fail or info.\n" in text
    words = " ".join(text.split())
    assert "HISTORY a history file (JSON lines)" in words
    assert (
        "--json print the report instead: one JSON object, the shape of every engine's "
        "report.json (docs/report.schema.json)"
    ) in words


def test_vecmig_check_exits_0_on_a_valid_history(tmp_path: Path) -> None:
    path = tmp_path / "valid.jsonl"
    ops.write_jsonl(_valid().events, path)
    assert main(["check", str(path)]) == EXIT_VALID


def test_vecmig_check_exits_1_on_anomalies_and_its_json_is_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], wide: None
) -> None:
    path = tmp_path / "stale.jsonl"
    events = (
        History().load({"a": 1}).write(0, "upsert", "a", 2).get(1, "a", 1).final("old", {"a": 2})
    )
    ops.write_jsonl(events.events, path)
    assert main(["check", str(path)]) == EXIT_ANOMALIES
    out = capsys.readouterr().out
    assert "stale reads" in out and f"vecmig check {path}" in out
    assert main(["check", str(path), "--json"]) == EXIT_ANOMALIES
    printed = capsys.readouterr().out
    assert printed.startswith('{\n  "schema_version": 1,\n  "engine": "check",\n')
    report = json.loads(printed)
    assert {"engine", "verdict", "examples", "recall", "ops", "notes"} <= report.keys()
    assert report["engine"] == "check" and report["history"] == str(path)
    verdict = report["verdict"]
    required = {"valid", "failed_reads", "stale_reads", "garbage_reads", "lost_writes"}
    required |= {"filter_violations", "unjudged_filtered_hits", "resurrected_deletes"}
    required |= {"divergence", "stalled", "stall", "unknown"}
    assert required == verdict.keys()
    assert verdict["valid"] is False and verdict["stale_reads"] == 1
    assert report["examples"]["stale_reads"][0]["id"] == "a"


def test_vecmig_check_shows_filter_violations_and_unjudged_hits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "filtered.jsonl"
    h = (
        History()
        .load({"a": 1, "b": 1}, fields={"a": IN_STOCK})
        .write(0, "upsert", "a", 2, OUT_OF_STOCK)
        .search(1, [("a", 2), ("b", 1)], filter={"in_stock": True})
        .final("old", {"a": 2, "b": 1})
    )
    ops.write_jsonl(h.events, path)
    assert main(["check", str(path)]) == EXIT_ANOMALIES
    out = capsys.readouterr().out
    assert "filter violations" in out and "'in_stock': False" in out
    assert "note: 1 hit(s) of filtered searches not judged" in out
    assert main(["check", str(path), "--json"]) == EXIT_ANOMALIES
    verdict = json.loads(capsys.readouterr().out)["verdict"]
    assert verdict["filter_violations"] == 1 and verdict["unjudged_filtered_hits"] == 1


def test_vecmig_check_exits_2_on_a_missing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", str(tmp_path / "nope.jsonl")]) == EXIT_BAD_INPUT
    assert "cannot read" in capsys.readouterr().err


def test_the_example_history_is_valid() -> None:
    assert main(["check", str(EXAMPLE)]) == EXIT_VALID
    verdict = check(ops.read_jsonl(EXAMPLE))
    assert verdict.recall == 1.0 and verdict.unjudged_filtered_hits == 0


# ---------------------------------------------------------------------------------------------
# End to end: the layer's histories carry the fields, and a wrong filtered result is caught.


class FilterBlindCluster:
    """A side whose adapter drops the search filter (a translation bug, say): every other call
    is the fake cluster's. Its filtered searches return whatever is nearest."""

    def __init__(self, inner: FakeCluster) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def search(self, vector: Vector, k: int, filter: Filter | None = None) -> list[Hit]:
        return self.inner.search(vector, k, None)


@pytest.mark.parametrize("blind", [True, False], ids=["filter-blind-side", "honest-side"])
def test_a_filtered_search_returning_products_that_went_out_of_stock_is_caught(
    blind: bool, tmp_path: Path
) -> None:
    """Merchants take half the catalog out of stock (acknowledged); then shoppers search for
    products in stock. A side that ignores the filter returns the fresh, out-of-stock versions:
    neither stale nor garbage, and `vecmig check` counts each such hit as a filter violation.
    The same run against an honest side is valid, with every filtered hit judged."""
    old = FakeCluster(8, shards=2, replicas=2, seed=0, name="old")
    rig = Rig(records=40, old=FilterBlindCluster(old) if blind else old)  # type: ignore[arg-type]
    app = rig.add_instance("app-0")
    in_stock = {(r.id, r.version): bool(r.metadata["in_stock"]) for r in rig.catalog.records()}
    for record in rig.catalog.records()[::2]:
        gone = Record(record.id, record.vector, {**record.metadata, "in_stock": False}, 2)
        assert rig.run(app.upsert(gone)).type == "ok"
        in_stock[(gone.id, 2)] = False
    wrong = hits = 0
    for seed in range(8):
        outcome = rig.run(app.search(rig.query(seed), 10, {"in_stock": True}))
        assert outcome.type == "ok"
        hits += len(outcome.value["results"])
        wrong += sum(not in_stock[(id_, v)] for id_, v, _ in outcome.value["results"])
    rig.heal_and_finish()
    path = tmp_path / "history.jsonl"
    ops.write_jsonl(rig.recorder.events, path)
    assert main(["check", str(path), "--json"]) == (EXIT_ANOMALIES if blind else EXIT_VALID)
    verdict = check(ops.read_jsonl(path))
    assert hits and verdict.unjudged_filtered_hits == 0
    assert (wrong > 0) == blind, "only the filter-blind side returns out-of-stock products"
    assert counts(verdict) == ({"filter_violations": wrong} if blind else {})
    if blind:
        example = verdict.examples["filter_violations"][0]
        assert example["filter"] == {"in_stock": True}
        assert example["fields"]["in_stock"] is False and example["returned"] == 2


def test_the_safe_layer_keeps_filtered_results_matching_across_a_rollback() -> None:
    """CUTOVER; a product goes out of stock (v2) while old refuses the copy, so a repair
    toward old is pending; ROLLBACK makes old serve reads again. A search for products in
    stock finds v1 on old (in stock) and must not answer the pending id's newer copy, v2,
    which is out of stock: the checker would count that hit as a filter violation, and
    nothing else would (v2 is the newest version). The layer once swapped it in unchecked."""
    rig = Rig()
    app = rig.add_instance("app")
    rig.advance_to_shadow()
    assert rig.step_phase().type == "ok"  # to CUTOVER
    rig.sync_all()
    product = next(r for r in rig.catalog.records() if r.metadata["in_stock"])
    gone = Record(product.id, product.vector, {**product.metadata, "in_stock": False}, 2)
    write = rig.driver.start(app.upsert(gone))
    rig.driver.run_until(write, lambda r: isinstance(r, rq.Upsert) and r.side is Side.OLD)
    rig.driver.step(write, error=Unavailable("old: injected"))
    assert rig.driver.run(write).type == "ok" and rig.store.repair_backlog() == 1
    assert rig.step_phase(Step.ROLLBACK).type == "ok"
    rig.sync_all()
    found = rig.run(app.search(product.vector, 5, {"in_stock": True}))
    assert found.type == "ok" and found.value["results"]
    rig.heal_and_finish()
    verdict = rig.verdict()
    assert counts(verdict) == {}, verdict.examples
    assert verdict.unjudged_filtered_hits == 0


# ---------------------------------------------------------------------------------------------
# Property: a history of a sequential model is always valid.


op_strategy = st.tuples(
    st.sampled_from(["upsert", "delete", "get", "search"]),
    st.integers(0, 5),  # id
    st.integers(0, 3),  # process
)


@settings(max_examples=200, deadline=None)
@given(
    initial=st.dictionaries(st.integers(0, 5), st.just(1), max_size=6),
    steps=st.lists(op_strategy, max_size=40),
    last_phase=st.sampled_from(["OLD_ONLY", "DUAL_WRITE", "SHADOW", "CUTOVER", "DECOMMISSIONED"]),
)
def test_a_sequential_history_is_always_valid(
    initial: dict[int, int], steps: list[tuple[str, int, int]], last_phase: str
) -> None:
    """Deletes and re-inserts of one id included; a search with an even id draw is filtered
    to the products in stock, by the fields its upserts carried."""
    state = {f"p{i}": v for i, v in initial.items()}
    in_stock = dict.fromkeys(state, True)
    h = History().load(dict(state), fields={id_: {"in_stock": True} for id_ in state})
    h.phase(last_phase)
    version = 1
    for f, i, process in steps:
        id_ = f"p{i}"
        if f in ("upsert", "delete"):
            version += 1
            if f == "upsert":
                state[id_], in_stock[id_] = version, version % 3 != 0
                h.write(process, f, id_, version, {"in_stock": in_stock[id_]})
            else:
                state.pop(id_, None)
                h.write(process, f, id_, version)
        elif f == "get":
            h.get(process, id_, state.get(id_))
        elif i % 2:
            top = sorted(state.items())[:3]
            h.search(process, top, exact=[id_ for id_, _ in top])
        else:
            top = sorted((id_, v) for id_, v in state.items() if in_stock[id_])[:3]
            h.search(process, top, filter={"in_stock": True}, exact=[id_ for id_, _ in top])
    h.finals(state)
    verdict = check(h.events)
    assert verdict.valid, verdict
    assert verdict.unjudged_filtered_hits == 0


# ---------------------------------------------------------------------------------------------
# What `vecmig check` prints: one line per anomaly with its first example, then recall, the ops,
# the notes, the stall and the verdict in words.


def _printed(verdict: Verdict, capsys: pytest.CaptureFixture[str]) -> str:
    print_verdict(verdict, "run.jsonl")
    return capsys.readouterr().out


@pytest.fixture
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    """A terminal wide enough that rich prints each example on one line."""
    monkeypatch.setenv("COLUMNS", "200")


def test_the_table_shows_each_anomalys_count_and_its_first_example_only(
    wide: None, capsys: pytest.CaptureFixture[str]
) -> None:
    verdict = Verdict(
        valid=False,
        stale_reads=2,
        examples={"stale_reads": [{"id": "a", "returned": 1}, {"id": "b", "returned": 7}]},
        recall=0.25,
        ops={"upsert": 3, "get": 2},
    )
    out = _printed(verdict, capsys)
    assert "vecmig check run.jsonl" in out
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") == 4}
    assert [kind.replace("_", " ") for kind in ANOMALIES] == [
        kind for kind in rows if kind != "anomaly"
    ]
    stale = [cell.strip() for cell in rows["stale reads"].split("│")[1:4]]
    assert stale == ["stale reads", "2", "id='a', returned=1"]
    assert [cell.strip() for cell in rows["lost writes"].split("│")[1:4]] == [
        "lost writes",
        "0",
        "",
    ]
    assert "recall: 0.2500\n" in out
    assert "ops invoked: get 2, upsert 3\n" in out
    assert out.rstrip().endswith("anomalies found")


def test_an_example_prints_without_its_empty_lists_and_keeps_brackets_literal(
    wide: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """rich reads `[x]` as markup; an example's text must reach the reader as it is."""
    example = {"id": "a", "faults": [], "filter": {"tags": ["[red]"]}}
    assert describe(example) == "id='a', filter={'tags': ['[red]']}"
    out = _printed(
        Verdict(valid=False, filter_violations=1, examples={"filter_violations": [example]}), capsys
    )
    assert "id='a', filter={'tags': ['[red]']}" in out


def test_without_exact_results_recall_is_not_applicable_and_no_ops_says_none(
    wide: None, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _printed(Verdict(valid=True), capsys)
    assert "recall: n/a (no search carries its exact top-k)\n" in out
    assert "ops invoked: none\n" in out
    assert out.rstrip().endswith("valid") and "anomalies found" not in out


def test_notes_print_as_written_and_an_unknown_verdict_points_at_them(
    wide: None, capsys: pytest.CaptureFixture[str]
) -> None:
    verdict = Verdict(valid=False, unknown=True, notes=["no final state of side 'old' [see]"])
    out = _printed(verdict, capsys)
    assert "note: no final state of side 'old' [see]\n" in out
    assert out.rstrip().endswith("unknown: see the notes above")


def test_a_stalled_run_without_anomalies_says_where_it_stopped(
    wide: None, capsys: pytest.CaptureFixture[str]
) -> None:
    stall = Stall(why="unfinished", phase="BACKFILL", steps_done=2, steps=3)
    out = _printed(Verdict(valid=False, stall=stall), capsys)
    assert "stalled: the plan stopped in BACKFILL after 2 of 3 steps\n" in out
    assert out.rstrip().endswith("stalled: the migration stopped making progress")
    anomalous = _printed(Verdict(valid=False, stale_reads=1, stall=stall), capsys)
    assert anomalous.rstrip().endswith("anomalies found")


def test_vecmig_check_reads_the_history_with_its_line_numbers(tmp_path: Path) -> None:
    """Blank lines are skipped, and each event keeps the line it came from, for the
    checker's messages."""
    path = _write(tmp_path, ["", *_lines(_valid().events[:2]), "", ""])
    events, lines = read_history(path)
    assert events == _valid().events[:2] and lines == [2, 3]


# ---------------------------------------------------------------------------------------------
# The examples: what a reader of a verdict sees of each anomaly.


def _faulty(h: History) -> History:
    """Faults started and stopped so that only `disk` and `partition` are active: `clock`
    started and stopped, `partition` started twice and stopped once, `latency` only stopped."""
    for family, action in [
        ("clock", "start"),
        ("partition", "start"),
        ("partition", "start"),
        ("disk", "start"),
        ("clock", "stop"),
        ("partition", "stop"),
        ("latency", "stop"),
    ]:
        h.info("fault", {"family": family, "action": action})
    return h


def test_a_stale_read_example_names_the_read_the_state_it_missed_and_the_moment() -> None:
    """A read's example says which op (process, indexes, times), what it returned, the
    newest acknowledged upsert and delete at its invoke, and the phase and faults active
    when it completed."""
    h = _faulty(History().load({"a": 1}).phase("DUAL_WRITE"))
    h.write(0, "upsert", "a", 3).get(1, "a", 1).final("old", {"a": 3})
    verdict = check(h.events)
    assert verdict.examples["stale_reads"] == [
        {
            "f": "get",
            "id": "a",
            "returned": 1,
            "max_up": 3,
            "max_del": None,
            "why": "a newer upsert",
            "process": 1,
            "invoke_index": 11,
            "complete_index": 12,
            "invoke_time": 12_000,
            "complete_time": 13_000,
            "phase": "DUAL_WRITE",
            "faults": ["disk", "partition"],
        }
    ]


def test_a_not_found_example_names_the_upsert_and_the_older_delete_it_missed() -> None:
    h = History().load({"a": 1}).write(0, "delete", "a", 2).write(0, "upsert", "a", 3)
    h.get(1, "a", None).final("old", {"a": 3})
    (example,) = check(h.events).examples["stale_reads"]
    assert {k: example[k] for k in ("id", "returned", "max_up", "max_del", "why")} == {
        "id": "a",
        "returned": None,
        "max_up": 3,
        "max_del": 2,
        "why": "not found",
    }
    assert example["phase"] is None and example["faults"] == []


def test_a_failed_read_example_says_how_it_failed() -> None:
    h = History().load({"a": 1}).invoke(1, "get", id="a")
    h.complete(1, "fail", "get", reason="timeout").final("old", {"a": 1})
    (example,) = check(h.events).examples["failed_reads"]
    assert example["type"] == "fail" and example["error"] == {"reason": "timeout"}
    assert example["id"] == "a" and example["phase"] is None


def test_each_anomaly_keeps_its_first_five_examples_and_counts_them_all() -> None:
    h = History().load({"a": 1}).write(0, "upsert", "a", 2)
    for process in range(1, 7):
        h.get(process, "a", 1)
    verdict = check(h.final("old", {"a": 2}).events)
    assert verdict.stale_reads == 6
    assert [e["process"] for e in verdict.examples["stale_reads"]] == [1, 2, 3, 4, 5]


def test_a_lost_write_example_names_the_event_that_acknowledged_the_newest_upsert() -> None:
    """The acknowledgement is the one that set the newest version, not the first or last
    change of the id: here a delete came after it."""
    h = History().load({"a": 1}).write(0, "upsert", "a", 5).write(0, "upsert", "a", 7)
    h.write(0, "delete", "a", 6).phase("SHADOW")
    (example,) = check(h.final("old", {"a": 5}).events).examples["lost_writes"]
    assert example == {
        "id": "a",
        "acknowledged_upsert": 7,
        "final": 5,
        "side": "old",
        "acked_by": "upsert",
        "process": 0,
        "index": 4,
        "time": 5_000,
    }


def test_a_resurrection_example_names_the_delete_and_what_the_final_state_held() -> None:
    h = History().load({"a": 1}).write(0, "upsert", "a", 2).write(2, "delete", "a", 3)
    (example,) = check(h.final("old", {"a": 2}).events).examples["resurrected_deletes"]
    assert example == {
        "id": "a",
        "acknowledged_delete": 3,
        "final": 2,
        "side": "old",
        "acked_by": "delete",
        "process": 2,
        "index": 4,
        "time": 5_000,
    }


def test_a_divergence_example_shows_both_sides_and_nothing_of_the_moment() -> None:
    """Found at the end, against the final scans: the phase and faults at the end of the run
    would mislead, so end-of-run examples carry none."""
    h = _faulty(History().load({"a": 1, "b": 1}).phase("SHADOW"))
    verdict = check(h.final("old", {"a": 1, "b": 1}).final("new", {"b": 2, "c": 1}).events)
    assert verdict.examples["divergence"] == [
        {"id": "a", "old": 1, "new": None},
        {"id": "b", "old": 1, "new": 2},
        {"id": "c", "old": None, "new": 1},
    ]


def test_a_filter_violation_found_in_the_pass_has_its_moment_and_one_found_at_the_end_not() -> None:
    """A hit of a version carried later in the file is judged at the end of the pass."""
    h = _faulty(History().load({"a": 1}, fields={"a": OUT_OF_STOCK}).phase("BACKFILL"))
    h.search(1, [("a", 1)], filter={"in_stock": True})
    h.search(2, [("b", 4)], filter={"in_stock": True})
    h.write(0, "upsert", "b", 4, OUT_OF_STOCK).final("old", {"a": 1, "b": 4})
    live, later = check(h.events).examples["filter_violations"]
    assert (live["id"], live["phase"], live["faults"]) == ("a", "BACKFILL", ["disk", "partition"])
    assert live["filter"] == {"in_stock": True} and live["fields"] == OUT_OF_STOCK
    assert later["id"] == "b" and "phase" not in later and "faults" not in later


def test_a_verdicts_json_holds_every_count_the_flags_and_what_explains_them() -> None:
    verdict = Verdict(
        valid=False,
        stale_reads=2,
        examples={"stale_reads": [{"id": "a"}]},
        recall=0.5,
        ops={"get": 2},
        notes=["n"],
        unjudged_filtered_hits=1,
    )
    assert verdict.to_json() == {
        "valid": False,
        **dict.fromkeys(ANOMALIES, 0),
        "stale_reads": 2,
        "unknown": False,
        "stalled": False,
        "stall": None,
        "unjudged_filtered_hits": 1,
        "recall": 0.5,
        "ops": {"get": 2},
        "examples": {"stale_reads": [{"id": "a"}]},
        "notes": ["n"],
    }


def test_a_crash_of_the_checker_is_named_in_its_note() -> None:
    class Exploding:
        def __iter__(self) -> Any:
            raise RuntimeError("boom")

    verdict = check_safely(Exploding())
    assert verdict.valid is False and verdict.unknown is True
    assert verdict.notes == ["the checker crashed, so the verdict is unknown: RuntimeError: boom"]


def test_check_safely_names_the_line_of_malformed_input() -> None:
    with pytest.raises(MalformedHistory, match=r"^history:1: upsert invoke value must be"):
        check_safely(History().invoke(0, "upsert", id="a").events)


# ---------------------------------------------------------------------------------------------
# Reads at the edges of the state log, and fields carried more than once.


def test_a_not_found_get_invoked_before_the_first_write_of_its_id_is_valid() -> None:
    h = History().invoke(1, "get", id="a").write(0, "upsert", "a", 1)
    h.ok(1, "get", id="a", version=None).final("old", {"a": 1})
    assert check(h.events).valid


def test_a_not_found_get_invoked_after_the_load_is_stale_though_newer_writes_followed() -> None:
    """The state at the invoke is the load's (the first change of the id): v1 was live."""
    h = History().load({"a": 1}).invoke(1, "get", id="a").write(0, "upsert", "a", 2)
    h.ok(1, "get", id="a", version=None).final("old", {"a": 2})
    assert counts(check(h.events)) == {"stale_reads": 1}


def test_a_not_found_get_after_a_delete_of_the_same_version_is_valid() -> None:
    h = History().load({"a": 1}).write(0, "delete", "a", 1).get(1, "a", None).final("old", {})
    assert check(h.events).valid


def test_a_get_answer_need_not_repeat_the_id_but_must_not_name_another() -> None:
    h = History().load({"a": 1}).invoke(1, "get", id="a").ok(1, "get", version=1)
    assert check(h.final("old", {"a": 1}).events).valid
    wrong = History().load({"a": 1}).invoke(1, "get", id="a").ok(1, "get", id="b", version=1)
    with pytest.raises(MalformedHistory) as raised:
        check(wrong.events)
    assert str(raised.value) == "history:3: get ok answers id 'b', but the invoke asked for 'a'"


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ("gone", 'get ok value must be {"id", "version"}, got \'gone\''),
        ({"id": "a"}, "get ok value must be {\"id\", \"version\"}, got {'id': 'a'}"),
        ({"id": "a", "version": "1"}, "get ok version must be a number or null, got '1'"),
    ],
    ids=["not-an-object", "no-version", "version-not-a-number"],
)
def test_a_malformed_get_answer_is_refused_with_its_line(answer: Any, problem: str) -> None:
    h = History().load({"a": 1}).invoke(1, "get", id="a")
    h.recorder.complete(1, "ok", "get", answer, h._at())
    with pytest.raises(MalformedHistory) as raised:
        check(h.events, lines=[10, 20, 30], source="run.jsonl")
    assert str(raised.value) == f"run.jsonl:30: {problem}"


def test_a_version_carried_with_fields_keeps_them_when_carried_again_without() -> None:
    h = (
        History()
        .load({"a": 1})
        .write(0, "upsert", "a", 2, OUT_OF_STOCK)
        .write(0, "upsert", "a", 2)
        .search(1, [("a", 2)], filter={"in_stock": True})
        .final("old", {"a": 2})
    )
    assert counts(check(h.events)) == {"filter_violations": 1}


def test_a_version_carried_twice_with_the_same_fields_is_still_judged() -> None:
    h = (
        History()
        .load({"a": 1})
        .write(0, "upsert", "a", 2, OUT_OF_STOCK)
        .write(0, "upsert", "a", 2, dict(OUT_OF_STOCK))
        .search(1, [("a", 2)], filter={"in_stock": True})
        .final("old", {"a": 2})
    )
    verdict = check(h.events)
    assert counts(verdict) == {"filter_violations": 1}
    assert not any("different fields" in note for note in verdict.notes)


def test_fields_once_contradicted_stay_unknown_and_each_pair_is_counted() -> None:
    """After two writes of a version disagree, a third agreeing with either settles nothing."""
    h = History().load({"a": 1, "b": 1})
    for id_ in ("a", "b"):
        h.write(0, "upsert", id_, 2, IN_STOCK).write(0, "upsert", id_, 2, OUT_OF_STOCK)
    h.write(0, "upsert", "a", 2, IN_STOCK)
    h.search(1, [("a", 2)], filter={"in_stock": False}).final("old", {"a": 2, "b": 2})
    verdict = check(h.events)
    assert verdict.valid and verdict.unjudged_filtered_hits == 1
    assert "2 (id, version) pair(s) were carried by writes that recorded different fields" in (
        " ".join(verdict.notes)
    )


# ---------------------------------------------------------------------------------------------
# Liveness through the checker: the plan, phase and gate events of a history.


def test_a_gate_held_past_the_plans_bound_stalls_the_verdict() -> None:
    plan = {"steps": ["DUAL_WRITE", "BACKFILL"], "stall_after_s": 0.000_001_5}
    h = History().info("plan", plan, ops.CONTROLLER).phase("DUAL_WRITE")
    h.info("gate", {"target": "BACKFILL", "reasons": ["lag"]}, ops.CONTROLLER)
    h.load({}).load({}).phase("BACKFILL").final("old", {})
    verdict = check(h.events)
    assert verdict.stall is not None and not verdict.valid
    assert (verdict.stall.why, verdict.stall.phase, verdict.stall.target) == (
        "held",
        "DUAL_WRITE",
        "BACKFILL",
    )
    assert verdict.stall.held_s == pytest.approx(3e-6)


def test_an_unfinished_plan_stalls_in_the_last_phase_published() -> None:
    plan = {"steps": ["DUAL_WRITE", "BACKFILL", "SHADOW"]}
    h = History().info("plan", plan, ops.CONTROLLER).phase("DUAL_WRITE").final("old", {})
    stall = check(h.events).stall
    assert stall is not None and (stall.why, stall.phase, stall.steps_done) == (
        "unfinished",
        "DUAL_WRITE",
        1,
    )


# ---------------------------------------------------------------------------------------------
# More of the rules, each at its edge.


def test_a_stale_read_example_says_whether_a_newer_upsert_or_a_delete_hid_its_version() -> None:
    h = History().load({"a": 1, "b": 1}).write(0, "delete", "a", 2).write(0, "upsert", "a", 3)
    h.write(0, "upsert", "b", 2).write(0, "delete", "b", 3)
    h.get(1, "a", 1).get(2, "b", 2).final("old", {"a": 3})
    first, second = check(h.events).examples["stale_reads"]
    assert (first["max_up"], first["max_del"], first["why"]) == (3, 2, "a newer upsert")
    assert (second["max_up"], second["max_del"], second["why"]) == (2, 3, "a delete")


def test_a_delete_in_flight_at_the_upserts_own_version_explains_a_not_found_get() -> None:
    """A delete wins a tie of versions everywhere: acknowledged, it hides the upsert of its
    version (above), so in flight it may have, and a not-found get is no stale read. A
    delete below the upsert's version explains nothing. No engine writes a tie (each write
    of an id takes the next version); a hand-written history can."""
    for delete, stale in ((2, 0), (1, 1)):
        h = History().load({"a": 1}).write(0, "upsert", "a", 2)
        h.invoke(1, "delete", id="a", version=delete).get(2, "a", None)
        assert counts(check(h.final("old", {"a": 2}).events)) == (
            {"stale_reads": 1} if stale else {}
        )


def test_an_indeterminate_delete_at_the_upserts_own_version_explains_a_missing_id() -> None:
    """The final-state twin of the rule above: a delete of the acknowledged upsert's own
    version that ended info may have taken effect, so the id missing is no lost write."""
    for delete, lost in ((2, 0), (1, 1)):
        h = History().load({"a": 1}).write(0, "upsert", "a", 2)
        h.invoke(1, "delete", id="a", version=delete).complete(1, "info", "delete")
        assert counts(check(h.final("old", {}).events)) == ({"lost_writes": 1} if lost else {})


def test_a_search_hit_of_a_version_its_own_delete_hid_is_stale() -> None:
    h = History().load({"a": 1}).write(0, "delete", "a", 1).search(1, [("a", 1)]).final("old", {})
    assert counts(check(h.events)) == {"stale_reads": 1}


def test_every_hit_of_a_search_is_judged_after_a_fresh_one() -> None:
    h = History().load({"a": 1, "b": 1}).write(0, "upsert", "b", 2)
    h.search(1, [("a", 1), ("b", 1)]).final("old", {"a": 1, "b": 2})
    assert counts(check(h.events)) == {"stale_reads": 1}


def test_a_get_of_a_version_no_write_carried_is_garbage() -> None:
    h = History().load({"a": 1}).get(1, "z", 9).final("old", {"a": 1})
    assert counts(check(h.events)) == {"garbage_reads": 1}


def test_an_acknowledgement_arriving_late_does_not_lower_the_newest_version() -> None:
    """Two upserts in flight: v5 is acknowledged first, then v3. The newest is still v5."""
    h = History().load({"a": 1}).invoke(0, "upsert", id="a", version=3)
    h.write(1, "upsert", "a", 5).ok(0, "upsert", id="a", version=3)
    h.get(2, "a", 3).final("old", {"a": 5})
    assert counts(check(h.events)) == {"stale_reads": 1}


def test_the_newest_delete_in_flight_explains_a_not_found_not_the_last_invoked() -> None:
    h = History().load({"a": 1}).write(0, "upsert", "a", 4)
    h.invoke(1, "delete", id="a", version=5).invoke(2, "delete", id="a", version=3)
    h.get(3, "a", None).final("old", {})
    assert counts(check(h.events)) == {}


def test_the_newest_indeterminate_delete_explains_a_missing_id_not_the_last_one() -> None:
    h = History().load({"a": 1}).write(0, "upsert", "a", 4)
    h.invoke(1, "delete", id="a", version=5).complete(1, "info", "delete", id="a", version=5)
    h.invoke(2, "delete", id="a", version=3).complete(2, "info", "delete", id="a", version=3)
    assert check(h.final("old", {}).events).valid


def test_a_failed_delete_had_no_effect_and_explains_no_missing_id() -> None:
    h = History().load({"a": 1}).write(0, "upsert", "a", 2)
    h.invoke(1, "delete", id="a", version=3).complete(1, "fail", "delete", id="a", version=3)
    assert counts(check(h.final("old", {}).events)) == {"lost_writes": 1}


def test_a_failed_search_example_names_no_id() -> None:
    h = History().load({"a": 1}).invoke(1, "search", k=10).complete(1, "info", "search")
    (example,) = check(h.final("old", {"a": 1}).events).examples["failed_reads"]
    assert "id" not in example and (example["f"], example["type"]) == ("search", "info")


def test_two_hits_of_one_filtered_search_without_fields_are_two_unjudged_hits() -> None:
    h = History().load({"a": 1, "b": 1}).search(1, [("a", 1), ("b", 1)], filter={"x": 1})
    verdict = check(h.final("old", {"a": 1, "b": 1}).events)
    assert verdict.valid and verdict.unjudged_filtered_hits == 2


def test_every_id_of_the_final_state_is_judged_after_a_sound_one() -> None:
    """a is sound, b explained by an indeterminate newer delete, c lost: each is judged."""
    h = History().load({"a": 1, "b": 1, "c": 1}).write(0, "upsert", "c", 2)
    h.invoke(1, "delete", id="b", version=2).complete(1, "info", "delete", id="b", version=2)
    verdict = check(h.final("old", {"a": 1, "c": 1}).events)
    assert counts(verdict) == {"lost_writes": 1}
    assert verdict.examples["lost_writes"][0]["id"] == "c"


def test_a_final_state_holding_the_deleted_version_itself_is_a_resurrection() -> None:
    h = History().load({"a": 1}).write(0, "delete", "a", 1).final("old", {"a": 1})
    assert counts(check(h.events)) == {"resurrected_deletes": 1}


def _refused(h: History) -> str:
    with pytest.raises(MalformedHistory) as raised:
        check(h.events, lines=[10 * (i + 1) for i in range(len(h.events))], source="run.jsonl")
    return str(raised.value)


def test_a_second_invoke_on_a_busy_or_crashed_process_says_how_to_fix_the_history() -> None:
    busy = History().invoke(0, "get", id="a").invoke(0, "get", id="b")
    assert _refused(busy) == (
        "run.jsonl:20: process 0 invokes get while its get invoked at line 10 is still open; "
        "a process runs one op at a time, so complete that op (ok, fail or info) first"
    )
    crashed = History().invoke(0, "get", id="a").complete(0, "info", "get").invoke(0, "get", id="a")
    assert _refused(crashed) == (
        "run.jsonl:30: process 0 invokes get after it got info at line 20; a process that got "
        "info never invokes again: give the next op a new process number"
    )


def test_a_completion_without_an_invoke_says_whether_its_process_had_crashed() -> None:
    crashed = History().invoke(0, "get", id="a").complete(0, "info", "get").ok(0, "get", id="a")
    assert _refused(crashed) == (
        "run.jsonl:30: ok get on process 0 has no open invoke (it already got info at line 20); "
        "every completion follows its own invoke on the same process"
    )
    assert _refused(History().ok(3, "get", id="a", version=1)) == (
        "run.jsonl:10: ok get on process 3 has no open invoke; every completion follows its "
        "own invoke on the same process"
    )


@pytest.mark.parametrize(
    ("f", "value", "problem"),
    [
        ("upsert", 5, 'upsert invoke value must be {"id", "version"}, got 5'),
        ("delete", {"version": 2}, 'delete invoke value must be {"id", "version"}, got {'),
        ("upsert", {"id": 3, "version": 2}, "upsert id must be a string (records maps key ids"),
        ("upsert", {"id": "a", "version": "2"}, "upsert version must be a number, got '2'"),
        (
            "delete",
            {"id": "a", "version": float("nan")},
            "delete version must be a number, got nan",
        ),
        (
            "upsert",
            {"id": "a", "version": 2, "fields": "x"},
            'upsert "fields" must be an object (the record\'s metadata, as filters see it), '
            "got 'x'",
        ),
        ("get", "a", "get invoke value must be {\"id\": str}, got 'a'"),
        (
            "search",
            {"k": 3, "filter": 1},
            'a search "filter" is an object of field: value (every field must equal its value), '
            "got 1",
        ),
    ],
    ids=[
        "write-not-an-object",
        "write-without-id",
        "id-not-a-string",
        "version-not-a-number",
        "version-nan",
        "fields-not-an-object",
        "get-not-an-object",
        "filter-not-an-object",
    ],
)
def test_a_malformed_invoke_is_refused_with_its_line_and_rule(
    f: str, value: Any, problem: str
) -> None:
    h = History().load({"a": 1})
    h.recorder.invoke(0, f, value, h._at())
    assert _refused(h).startswith(f"run.jsonl:20: {problem}")


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ("none", "search ok value must hold \"results\": [[id, version, score], ...], got 'none'"),
        ({"hits": []}, 'search ok value must hold "results": [[id, version, score], ...], got {'),
        ({"results": [["a", "1", 0.5]]}, "a search result must be [id: str, version: number, "),
        ({"results": [[3, 1, 0.5]]}, "a search result must be [id: str, version: number, score]"),
        ({"results": [7]}, "a search result must be [id: str, version: number, score], got 7"),
        ({"results": [], "exact": "a"}, "search \"exact\" must be a list of ids, got 'a'"),
    ],
    ids=["not-an-object", "no-results", "version-text", "id-number", "hit-number", "exact-text"],
)
def test_a_malformed_search_answer_is_refused_with_its_line_and_rule(
    answer: Any, problem: str
) -> None:
    h = History().load({"a": 1}).invoke(1, "search", k=3)
    h.recorder.complete(1, "ok", "search", answer, h._at())
    assert _refused(h).startswith(f"run.jsonl:30: {problem}")


def test_an_event_of_the_wrong_type_is_refused_naming_the_type_it_should_have() -> None:
    h = History().load({"a": 1})
    h.recorder.ok(ops.CONTROLLER, "phase", {"phase": "SHADOW"}, h._at())
    assert _refused(h) == "run.jsonl:20: a phase event has type 'info', got 'ok'"
    final = History()
    final.recorder.info(ops.CHECKER, "final", {"side": "old", "records": {}}, 1)
    assert _refused(final) == "run.jsonl:10: a final event has type 'ok', got 'info'"


def test_a_load_that_is_not_an_object_is_refused() -> None:
    h = History().load({"a": 1})
    h.recorder.ok(ops.LOADER, "load", "all", h._at())
    assert _refused(h) == "run.jsonl:20: a load value holds \"records\": {id: version}, got 'all'"


def test_reads_never_completed_are_noted_not_failed_and_open_deletes_may_have_taken_effect() -> (
    None
):
    h = History().load({"a": 1}).write(0, "upsert", "a", 4)
    h.invoke(1, "delete", id="a", version=5).invoke(2, "delete", id="a", version=3)
    h.invoke(3, "get", id="a").invoke(4, "search", k=1).invoke(5, "upsert", id="a", version=6)
    verdict = check(h.final("old", {}).events)
    assert verdict.valid
    assert verdict.notes == ["2 read(s) never completed; not counted as failed"]


def test_the_stall_of_an_unfinished_plan_is_timed_at_the_last_event() -> None:
    plan = {"steps": ["DUAL_WRITE", "BACKFILL", "SHADOW"]}
    h = History().info("plan", plan, ops.CONTROLLER).phase("DUAL_WRITE")
    h.load({}).final("old", {})
    stall = check(h.events).stall
    assert stall is not None and stall.time == h.events[-1].time == 4_000
    assert check(h.events).to_json()["stall"] == stall.to_json()


def test_the_table_title_sits_left_counts_align_right_and_long_examples_fold(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A long example folds onto more lines instead of losing its end to an ellipsis."""
    monkeypatch.setenv("COLUMNS", "70")
    example = {"id": "a" * 40, "returned": 123456789}
    out = _printed(
        Verdict(valid=False, stale_reads=12, examples={"stale_reads": [example]}), capsys
    )
    title, _, header, *_ = out.splitlines()
    assert title.rstrip() == "vecmig check run.jsonl"
    assert [cell.strip() for cell in header.split("┃")[1:4]] == [
        "anomaly",
        "count",
        "first example",
    ]
    assert "…" not in out and "123456789" in "".join(out.split())
    rows = [line.split("│") for line in out.splitlines() if line.count("│") == 4]
    shown = {cells[1].strip(): cells[2] for cells in rows if cells[1].strip()}
    assert (shown["stale reads"], shown["lost writes"]) == ("    12 ", "     0 ")  # " count "


def test_in_a_terminal_counts_are_red_or_green_and_the_plain_lines_stay_plain(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Numbers in the recall, ops, note and stall lines are not highlighted: only the counts
    and the verdict carry colour, and brackets in notes and stalls print as they are."""
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "200")
    stall = Stall(why="held", phase="SHADOW", target="CUTOVER", held_s=2.0, reasons=("[lag] 3",))
    verdict = Verdict(
        valid=False, stale_reads=2, recall=0.5, ops={"get": 3}, notes=["[x] 1"], stall=stall
    )
    out = _printed(verdict, capsys)
    assert "\x1b[31m2\x1b[0m" in out and "\x1b[32m0\x1b[0m" in out
    for line in (
        "recall: 0.5000\n",
        "ops invoked: get 3\n",
        "note: [x] 1\n",
        "stalled: in SHADOW; the gate to CUTOVER held 2.0 s: [lag] 3\n",
    ):
        assert line in out
    assert "\x1b[1;31manomalies found\x1b[0m" in out
    unknown = _printed(Verdict(valid=False, unknown=True), capsys)
    assert "\x1b[1;33munknown\x1b[0m: see the notes above" in unknown
    valid = _printed(Verdict(valid=True), capsys)
    assert "\x1b[1;32mvalid\x1b[0m" in valid
    stalled = _printed(Verdict(valid=False, stall=stall), capsys)
    assert "\x1b[1;31mstalled\x1b[0m: the migration stopped making progress" in stalled


def test_a_second_load_may_record_the_fields_the_first_did_not() -> None:
    h = History().load({"a": 1}).load({"a": 1}, fields={"a": OUT_OF_STOCK})
    h.search(1, [("a", 1)], filter={"in_stock": True}).final("old", {"a": 1})
    assert counts(check(h.events)) == {"filter_violations": 1}


def test_a_final_names_its_side_and_its_records_and_the_last_of_a_side_counts() -> None:
    h = History().load({"a": 1})
    h.recorder.ok(ops.CHECKER, "final", "old", h._at())
    assert _refused(h) == 'run.jsonl:20: a final names its side, "old" or "new", got None'
    bad = History().load({"a": 1})
    bad.recorder.ok(ops.CHECKER, "final", {"side": "old", "records": {"a": "1"}}, bad._at())
    assert _refused(bad) == (
        "run.jsonl:20: final records map string ids to numeric versions, got 'a': '1'"
    )
    twice = History().load({"a": 1}).final("old", {}).final("old", {"a": 1})
    verdict = check(twice.events)
    assert verdict.valid
    assert verdict.notes == ["more than one final of side 'old'; the last one counts"]


def test_check_takes_any_iterable_and_its_line_numbers_must_match_the_events() -> None:
    h = History().load({"a": 1}).get(1, "a", 1).final("old", {"a": 1})
    verdict = check(iter(h.events))
    assert verdict.valid and verdict.unknown is False and verdict.stall is None
    with pytest.raises(ValueError) as raised:
        check(h.events, lines=[1])
    assert str(raised.value) == "got 1 line numbers for 4 events"


def test_an_empty_history_is_unknown_not_stalled() -> None:
    verdict = check([])
    assert verdict.unknown and not verdict.valid
    assert verdict.stall is None and not verdict.stalled


def test_a_garbage_read_example_names_the_read_and_nothing_of_the_moment() -> None:
    h = History().load({"a": 1}).phase("BACKFILL").get(1, "z", 9).final("old", {"a": 1})
    (example,) = check(h.events).examples["garbage_reads"]
    assert example == {
        "f": "get",
        "id": "z",
        "returned": 9,
        "process": 1,
        "invoke_index": 2,
        "complete_index": 3,
        "invoke_time": 3_000,
        "complete_time": 4_000,
    }


def test_without_a_final_of_the_serving_side_the_note_says_which_side_and_phase() -> None:
    verdict = check(History().load({"a": 1}).events)
    assert verdict.unknown and verdict.notes == [
        "no final state of side 'old' (the side serving reads after phase OLD_ONLY): lost "
        "writes and resurrected deletes cannot be judged; record a final scan of that side at "
        "the end of the run"
    ]


def test_divergence_before_any_phase_is_not_judged_and_the_note_says_old_only() -> None:
    verdict = check(History().load({"a": 1}).final("old", {"a": 1}).final("new", {}).events)
    assert verdict.valid and verdict.notes == [
        "divergence not judged: the run ended in OLD_ONLY, where old and new are not both meant "
        "to be current"
    ]


def test_hits_of_versions_carried_later_without_fields_are_each_unjudged() -> None:
    h = History().load({"a": 1}).search(1, [("b", 4), ("c", 4)], filter={"in_stock": True})
    h.write(0, "upsert", "b", 4).write(0, "upsert", "c", 4).final("old", {"a": 1, "b": 4, "c": 4})
    verdict = check(h.events)
    assert verdict.valid and verdict.unjudged_filtered_hits == 2
    assert verdict.notes == [
        "2 hit(s) of filtered searches not judged against their filter: no write recorded the "
        'fields of the version returned (record "fields" in upsert invokes and the load to judge '
        "them)"
    ]


def test_a_filter_violation_judged_at_the_end_names_the_version_returned() -> None:
    h = History().load({"a": 1}).search(1, [("b", 4)], filter={"in_stock": True})
    h.write(0, "upsert", "b", 4, OUT_OF_STOCK).final("old", {"a": 1, "b": 4})
    (example,) = check(h.events).examples["filter_violations"]
    assert (example["id"], example["returned"], example["fields"]) == ("b", 4, OUT_OF_STOCK)


def test_a_loads_fields_that_are_not_objects_are_refused_with_the_rule() -> None:
    h = History().load({"b": 1}, fields={"b": 3})
    assert _refused(h) == (
        "run.jsonl:10: a load's \"fields\" maps ids to their record's metadata, "
        "{id: {field: value}}, got {'b': 3}"
    )
