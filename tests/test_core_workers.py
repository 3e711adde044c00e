"""The background work of harness/core/workers.py driven request by request, as a driver would:
the verification diff, the repair pass and noise-floor calibration, plus the corners of the
backfill and its throttle that the worker-loop tests leave unchecked (found by mutation
testing, docs/mutation-core.md). The operations run against fake clusters and a memory store;
a test that needs a side to answer otherwise (a failure, a write landing between two
requests) wraps the answers."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pytest

from vecmig.harness.clusters.base import (
    ClusterError,
    Counts,
    Hit,
    Record,
    ScanPage,
    Side,
    Tombstone,
    Unavailable,
    bucket_of,
)
from vecmig.harness.clusters.fake import FakeCluster
from vecmig.harness.core import requests as rq
from vecmig.harness.core.compare import NoiseFloor
from vecmig.harness.core.gates import Verification
from vecmig.harness.core.state import Checkpoint, RepairEntry
from vecmig.harness.core.strategy import NAIVE, SAFE, Strategy
from vecmig.harness.core.workers import (
    Backfill,
    Throttle,
    calibrate_noise_floor,
    repair_pass,
    verify,
)
from vecmig.harness.drive.execute import execute
from vecmig.harness.state import MemoryStore

DIM = 4
TICK = 1_000
Answer = Callable[[Any], Any]


def record(record_id: str, version: int, colour: str = "red") -> Record:
    rng = np.random.default_rng(version * 7919 + len(record_id))
    vector = rng.normal(size=DIM).astype(np.float32)
    return Record(record_id, vector, {"colour": colour}, version)


def tombstone(record_id: str, version: int) -> Tombstone:
    return Tombstone(record_id, version)


class World:
    """Two fake sides and a state store, answering requests as the step driver does; `Now`
    is a clock that advances `TICK` per ask."""

    def __init__(self) -> None:
        self.old = FakeCluster(DIM, shards=2, replicas=1, seed=1, name="old")
        self.new = FakeCluster(DIM, shards=2, replicas=1, seed=2, name="new")
        self.sides = {Side.OLD: self.old, Side.NEW: self.new}
        self.store = MemoryStore()
        self.time = 0

    def holds(
        self,
        side: Side,
        records: Iterable[Record] = (),
        deleted: Iterable[Tombstone] = (),
    ) -> None:
        port = self.sides[side]
        if batch := list(records):
            port.upsert(batch, fenced=False)
        if tombs := list(deleted):
            port.delete(tombs, fenced=False)

    def state(self, side: Side, record_id: str) -> tuple[int, bool] | None:
        stored = self.sides[side].get([record_id]).get(record_id)
        return None if stored is None else (stored.version, stored.deleted)

    def answer(self, request: Any) -> Any:
        if isinstance(request, rq.Now):
            self.time += TICK
            return self.time
        return execute(request, self.sides, self.store)


def play(op: rq.Operation, answer: Answer, max_requests: int = 2_000) -> tuple[list[Any], Any]:
    """Run `op` to its end, answering each request with `answer(request)`; a `ClusterError`
    that `answer` returns is thrown into the op, as a driver does with a side's error.
    Returns the requests in the order asked and the outcome. An op still asking after
    `max_requests` fails the test (a scan that never ends), instead of hanging it."""
    asked: list[Any] = []
    reply: Any = None
    for _ in range(max_requests):
        try:
            if isinstance(reply, ClusterError):
                request = op.steps.throw(reply)
            else:
                request = op.steps.send(reply)
        except StopIteration as stop:
            return asked, stop.value
        asked.append(request)
        reply = answer(request)
    raise AssertionError(f"{op.kind} still asking after {max_requests} requests: {asked[-2:]}")


def of_type(requests: list[Any], kind: type) -> list[Any]:
    return [r for r in requests if isinstance(r, kind)]


def failing(answer: Answer, when: Callable[[Any], bool], error: ClusterError) -> Answer:
    return lambda request: error if when(request) else answer(request)


# -- the verification diff ----------------------------------------------------------------------


def test_a_diff_of_equal_sides_counts_tombstones_as_held_and_scans_nothing() -> None:
    """Both sides are counted and checksummed in 64 buckets; with every bucket equal there is
    nothing to scan, and each side's count is everything it holds, deletes included."""
    world = World()
    for side in Side:
        world.holds(side, [record("a", 1), record("b", 2)], [tombstone("c", 3)])
    asked, outcome = play(verify(), world.answer)
    assert [r for r in asked if not isinstance(r, rq.Now)] == [
        rq.Count(Side.OLD),
        rq.Count(Side.NEW),
        rq.Checksums(Side.OLD, 64),
        rq.Checksums(Side.NEW, 64),
    ]
    assert outcome == rq.Outcome("ok", Verification(0, 0, 3, 3, world.time))
    assert verify().kind == "verify"


def test_each_side_is_reported_with_its_own_count() -> None:
    """A write that lands on both sides between the two counts leaves the buckets equal and
    the counts apart: the diff reports each side's count as that side answered it."""
    world = World()
    for side in Side:
        world.holds(side, [record("a", 1)])

    def answer(request: Any) -> Any:
        if isinstance(request, rq.Count):
            return Counts(5, 1) if request.side is Side.OLD else Counts(6, 1)
        return world.answer(request)

    _, outcome = play(verify(), answer)
    assert outcome == rq.Outcome("ok", Verification(0, 0, 6, 7, world.time))


def test_a_diff_finds_what_either_side_lacks_or_holds_at_another_version() -> None:
    """Only the ids whose versions differ between the two scans are re-read; each that still
    differs is queued for repair toward the side behind: the one that lacks it or holds the
    lower version, and both sides when the versions tie and only one is a delete."""
    world = World()
    world.holds(Side.OLD, [record("same", 1), record("newer-on-new", 2), record("only-old", 3)])
    world.holds(Side.OLD, [record("tie", 4), record("newer-on-old", 6), record("only-old-2", 1)])
    world.holds(Side.NEW, [record("same", 1), record("newer-on-new", 5), record("only-new", 2)])
    world.holds(Side.NEW, [record("newer-on-old", 3)], [tombstone("tie", 4)])
    asked, outcome = play(verify(), world.answer)

    differing = ["newer-on-new", "newer-on-old", "only-new", "only-old", "only-old-2", "tie"]
    assert of_type(asked, rq.Scan)[0] == rq.Scan(Side.OLD, None, 1000)
    assert of_type(asked, rq.Get) == [
        rq.Get(Side.OLD, tuple(differing)),
        rq.Get(Side.NEW, tuple(differing)),
    ]
    assert of_type(asked, rq.AddRepairs) == [
        rq.AddRepairs(
            (
                RepairEntry("newer-on-new", Side.OLD),
                RepairEntry("newer-on-old", Side.NEW),
                RepairEntry("only-new", Side.OLD),
                RepairEntry("only-old", Side.NEW),
                RepairEntry("only-old-2", Side.NEW),
                RepairEntry("tie", Side.NEW),
                RepairEntry("tie", Side.OLD),
            )
        )
    ]
    buckets = len({bucket_of(i, 64) for i in differing})
    expected = Verification(6, buckets, 6, 5, world.time, tuple(differing))
    assert outcome == rq.Outcome("ok", expected)


def test_a_difference_the_re_read_no_longer_sees_is_no_difference() -> None:
    """A write in flight during the scans (on old, not yet on new) shows as a difference; if
    new holds it by the re-read, nothing is reported and nothing is queued."""
    world = World()
    world.holds(Side.OLD, [record("a", 1), record("b", 2)])
    world.holds(Side.NEW, [record("a", 1), record("b", 1)])

    def answer(request: Any) -> Any:
        if isinstance(request, rq.Get) and request.side is Side.OLD:
            world.holds(Side.NEW, [record("b", 2)])
        return world.answer(request)

    asked, outcome = play(verify(), answer)
    assert of_type(asked, rq.Get)[0].ids == ("b",)
    assert not of_type(asked, rq.AddRepairs)
    assert outcome == rq.Outcome("ok", Verification(0, 1, 2, 2, world.time))


def test_a_diff_asked_not_to_queue_repairs_only_reports() -> None:
    world = World()
    world.holds(Side.OLD, [record("a", 1)])
    asked, outcome = play(verify(queue_repairs=False), world.answer)
    assert not of_type(asked, rq.AddRepairs)
    assert world.store.repair_backlog() == 0
    assert outcome.value.differences == 1 and outcome.value.examples == ("a",)


def test_a_diff_scans_each_side_page_after_page_to_its_end() -> None:
    world = World()
    ids = [f"r{n:02d}" for n in range(7)]
    world.holds(Side.OLD, [record(i, 2) for i in ids])
    world.holds(Side.NEW, [record(i, 2 if i != "r06" else 1) for i in ids])
    asked, outcome = play(verify(page=3), world.answer)
    assert [(s.side, s.cursor) for s in of_type(asked, rq.Scan)] == [
        (side, cursor) for side in Side for cursor in (None, "r02", "r05")
    ]
    assert outcome.value.examples == ("r06",)


def test_a_diff_re_reads_in_chunks_of_256_and_names_the_first_ten_ids() -> None:
    """300 ids new lacks: re-read 256 then 44 at a time on each side, every one counted once
    and queued toward new; the verification names ten, the first in id order."""
    world = World()
    ids = [f"p{n:03d}" for n in range(300)]
    world.holds(Side.OLD, [record(i, 1) for i in ids])
    asked, outcome = play(verify(), world.answer)
    assert [(g.side, len(g.ids)) for g in of_type(asked, rq.Get)] == [
        (Side.OLD, 256),
        (Side.NEW, 256),
        (Side.OLD, 44),
        (Side.NEW, 44),
    ]
    assert world.store.repair_backlog() == 300
    assert outcome.value.differences == 300
    assert outcome.value.examples == tuple(ids[:10])


READS = {
    "count old": lambda r: isinstance(r, rq.Count) and r.side is Side.OLD,
    "count new": lambda r: isinstance(r, rq.Count) and r.side is Side.NEW,
    "checksums old": lambda r: isinstance(r, rq.Checksums) and r.side is Side.OLD,
    "checksums new": lambda r: isinstance(r, rq.Checksums) and r.side is Side.NEW,
    "scan old": lambda r: isinstance(r, rq.Scan) and r.side is Side.OLD,
    "scan new": lambda r: isinstance(r, rq.Scan) and r.side is Side.NEW,
    "re-read old": lambda r: isinstance(r, rq.Get) and r.side is Side.OLD,
    "re-read new": lambda r: isinstance(r, rq.Get) and r.side is Side.NEW,
}


@pytest.mark.parametrize("read", READS)
def test_a_diff_that_cannot_read_a_side_fails_with_the_side_s_error_and_queues_nothing(
    read: str,
) -> None:
    world = World()
    world.holds(Side.OLD, [record("a", 1)])
    answer = failing(world.answer, READS[read], Unavailable("a side is down"))
    asked, outcome = play(verify(), answer)
    assert outcome == rq.Outcome("fail", error="a side is down")
    assert not of_type(asked, rq.AddRepairs)


# -- the repair pass ------------------------------------------------------------------------------


def test_a_repair_pass_copies_each_entry_s_latest_state_fenced_and_removes_it() -> None:
    """Each queued id is read on the other side and copied, a delete as a delete; copies are
    fenced, so a write that reached the side since the entry was queued is kept. An id neither
    side holds has nothing to copy and is done. By default a pass reads 256 entries."""
    world = World()
    world.holds(Side.OLD, [record("live", 2), record("kept", 2)], [tombstone("gone", 3)])
    world.holds(Side.OLD, deleted=[tombstone("kept-too", 2)])
    world.holds(Side.NEW, [record("gone", 1), record("kept", 6), record("kept-too", 7)])
    world.holds(Side.NEW, [record("back", 5)])
    world.holds(Side.OLD, [record("back", 4)])
    entries = ["live", "gone", "kept", "kept-too", "nowhere"]
    world.store.add_repairs([RepairEntry(i, Side.NEW) for i in entries])
    world.store.add_repairs([RepairEntry("back", Side.OLD)])

    asked, outcome = play(repair_pass(), world.answer)
    assert outcome == rq.Outcome("ok", {"repaired": 6, "failed": 0})
    assert of_type(asked, rq.NextRepairs)[0].limit == 256
    assert world.store.repair_backlog() == 0
    assert world.state(Side.NEW, "live") == (2, False)
    assert world.state(Side.NEW, "gone") == (3, True)
    assert world.state(Side.NEW, "kept") == (6, False)
    assert world.state(Side.NEW, "kept-too") == (7, False)
    assert world.state(Side.NEW, "nowhere") is None
    assert world.state(Side.OLD, "back") == (5, False)
    copies = of_type(asked, rq.Upsert) + of_type(asked, rq.Delete)
    assert len(copies) == 5 and all(c.fenced is True for c in copies)
    assert repair_pass().kind == "repair"


def test_a_repair_that_fails_stays_queued_and_the_pass_goes_on_with_the_next() -> None:
    """An entry whose read or copy fails is counted and kept for the next pass; the entries
    after it are still repaired."""
    world = World()
    world.holds(Side.OLD, [record(i, 1) for i in ("a", "b", "c", "d")])
    world.store.add_repairs([RepairEntry(i, Side.NEW) for i in ("a", "b", "c", "d")])
    answer = failing(
        world.answer,
        lambda r: (
            (isinstance(r, rq.Get) and r.ids == ("a",))
            or (isinstance(r, rq.Upsert) and r.records[0].id == "b")
        ),
        Unavailable("a side is down"),
    )
    _, outcome = play(repair_pass(), answer)
    assert outcome == rq.Outcome("ok", {"repaired": 2, "failed": 2})
    assert [e.id for e in world.store.next_repairs(10)] == ["a", "b"]
    assert [world.state(Side.NEW, i) for i in ("a", "b", "c", "d")] == [
        None,
        None,
        (1, False),
        (1, False),
    ]


def test_a_repair_to_a_lagged_side_is_noted_in_its_visibility_window() -> None:
    """A side whose searches see writes late gets each repair noted as a recent write, as a
    client write to it would be, at the time the copy was made; a side that does not lag is
    not noted."""
    world = World()
    world.holds(Side.OLD, [record("live", 2, colour="blue")], [tombstone("gone", 3)])
    world.holds(Side.NEW, [record("back", 4)])
    world.store.add_repairs([RepairEntry("live", Side.NEW), RepairEntry("gone", Side.NEW)])
    world.store.add_repairs([RepairEntry("back", Side.OLD)])
    asked, _ = play(repair_pass(lagged=frozenset({Side.NEW})), world.answer)

    notes = of_type(asked, rq.NoteRecent)
    assert [n.side for n in notes] == [Side.NEW, Side.NEW]
    assert world.store.recent_since(Side.OLD, 0) == ()
    live, gone = world.store.recent_since(Side.NEW, 0)
    copied = record("live", 2, colour="blue")
    assert (live.id, live.version, live.deleted, live.metadata) == (
        "live",
        2,
        False,
        {"colour": "blue"},
    )
    assert live.vector is not None and np.array_equal(live.vector, copied.vector)
    assert (gone.id, gone.version, gone.deleted, gone.vector, gone.metadata) == (
        "gone",
        3,
        True,
        None,
        {},
    )
    assert (live.time, gone.time) == (2 * TICK, 3 * TICK), "the clock after each copy"


def test_once_old_is_retired_a_pass_drops_what_it_reads_without_copying() -> None:
    world = World()
    world.holds(Side.OLD, [record("a", 1)])
    world.store.add_repairs([RepairEntry("a", Side.NEW), RepairEntry("b", Side.OLD)])
    asked, outcome = play(repair_pass(retired=True), world.answer)
    assert outcome == rq.Outcome("ok", {"repaired": 0, "failed": 0, "dropped": 2})
    assert not [r for r in asked if rq.is_side_request(r)]
    assert world.store.repair_backlog() == 0


# -- calibration ----------------------------------------------------------------------------------


def test_calibration_skips_a_query_without_exact_answer_or_whose_search_fails() -> None:
    """Per query: the exact answer, then old asked twice. A query the driver has no exact
    answer for, or that old cannot answer, is left out, and the queries after it still count.
    The noise floor keeps the threshold asked for (0.7 unless said)."""
    queries = [np.full(DIM, float(n + 1), dtype=np.float32) for n in range(4)]
    exact: dict[int, tuple[str, ...] | None] = {
        0: None,
        1: ("a", "b"),
        2: ("a", "b"),
        3: ("a", "b"),
    }
    answers = {2: ["a", "b"], 3: ["a", "c"]}

    def answer(request: Any) -> Any:
        n = int(request.vector[0]) - 1
        if isinstance(request, rq.Exact):
            return exact[n]
        if n == 1:
            return Unavailable("old is down")
        return [Hit(i, 1, 0.1) for i in answers[n]]

    asked, outcome = play(calibrate_noise_floor(queries, 2, threshold=0.9), answer)
    assert outcome == rq.Outcome(
        "ok", NoiseFloor(threshold=0.9, rate=0.5, samples=2, old_recall=0.75)
    )
    assert [type(r).__name__ for r in asked] == ["Exact", "Exact", "Search"] + [
        "Exact",
        "Search",
        "Search",
    ] * 2
    assert all(r.side is Side.OLD and r.k == 2 for r in asked)
    _, default = play(calibrate_noise_floor(queries, 2), answer)
    assert default.value.threshold == 0.7
    assert calibrate_noise_floor(queries, 2).kind == "calibrate"


# -- the backfill and its throttle ----------------------------------------------------------------


def test_the_throttle_halves_to_whole_batches_and_ends_a_pause_of_1_ms() -> None:
    throttle = Throttle(batch_size=65, min_batch=16)
    throttle.observe(99.0)
    assert throttle.batch_size == 32 and isinstance(throttle.batch_size, int)
    throttle.pause_ns = 1_000_000
    throttle.observe(1.0)
    assert throttle.pause_ns == 0


def backfill(strategy: Strategy = SAFE, batch: int = 16) -> Backfill:
    return Backfill(strategy, Throttle(batch_size=batch, unthrottled=True))


def test_a_backfill_worker_that_restarts_resumes_from_the_durable_checkpoint() -> None:
    world = World()
    world.holds(Side.OLD, [record(f"p{n:02d}", 1) for n in range(40)])
    play(backfill().batch(3), world.answer)
    _, outcome = play(backfill().batch(3), world.answer)
    assert outcome.value == {"copied": 16, "done": False, "cursor": "p31"}
    assert world.store.load_checkpoint() == Checkpoint("p31", 32, False, 3)


def test_the_last_batch_leaves_the_cursor_at_the_last_id_copied() -> None:
    world = World()
    world.holds(Side.OLD, [record(f"p{n:02d}", 1) for n in range(40)])
    worker = backfill()
    cursors = [play(worker.batch(3), world.answer)[1].value["cursor"] for _ in range(3)]
    assert cursors == ["p15", "p31", "p39"]
    assert world.store.load_checkpoint() == Checkpoint("p39", 40, True, 3)


def test_an_empty_last_page_leaves_the_cursor_where_it_stood() -> None:
    """A side may end a scan with an empty page; the copy is then done where the last page
    left it (and an empty old is done at once)."""
    world = World()
    world.store.save_checkpoint(Checkpoint("p15", 16, False, 3))

    def answer(request: Any) -> Any:
        return ScanPage((), None) if isinstance(request, rq.Scan) else world.answer(request)

    _, outcome = play(backfill().batch(3), answer)
    assert outcome.value == {"copied": 0, "done": True, "cursor": "p15"}
    assert world.store.load_checkpoint() == Checkpoint("p15", 16, True, 3)
    empty = World()
    _, outcome = play(backfill().batch(3), empty.answer)
    assert outcome.value == {"copied": 0, "done": True, "cursor": None}


def test_without_checkpoint_after_write_the_durable_cursor_moves_before_the_batch_lands() -> None:
    """The ablation's hazard, and what it means: a batch whose write fails has already moved
    the durable checkpoint past ids new never got."""
    world = World()
    world.holds(Side.OLD, [record(f"p{n:02d}", 1) for n in range(40)])
    worker = backfill(SAFE.without("checkpoint-after-write"))
    answer = failing(world.answer, lambda r: isinstance(r, rq.Upsert), Unavailable("new is down"))
    _, outcome = play(worker.batch(3), answer)
    assert outcome.type == "fail"
    assert world.store.load_checkpoint() == Checkpoint("p15", 16, False, 3)


@pytest.mark.parametrize(
    ("strategy", "deletes"),
    [
        (SAFE, [rq.Delete(Side.NEW, (tombstone("t", 3),), True)]),
        (SAFE.without("fenced-backfill"), [rq.Delete(Side.NEW, (tombstone("t", 3),), False)]),
        (NAIVE, []),
    ],
    ids=["safe", "unfenced", "naive"],
)
def test_the_backfill_copies_deletes_only_with_tombstone_copy_and_fenced_as_its_upserts(
    strategy: Strategy, deletes: list[rq.Delete]
) -> None:
    world = World()
    world.holds(Side.OLD, [record("a", 1)], [tombstone("t", 3)])
    asked, _ = play(backfill(strategy).batch(3), world.answer)
    assert of_type(asked, rq.Delete) == deletes
    assert [u.fenced for u in of_type(asked, rq.Upsert)] == [strategy.fenced_backfill]
    live_only = World()
    live_only.holds(Side.OLD, [record("a", 1)])
    asked, _ = play(backfill(strategy).batch(3), live_only.answer)
    assert not of_type(asked, rq.Delete)


def test_a_fenced_backfill_never_deletes_a_newer_write() -> None:
    world = World()
    world.holds(Side.OLD, deleted=[tombstone("t", 3)])
    world.holds(Side.NEW, [record("t", 5)])
    play(backfill().batch(3), world.answer)
    assert world.state(Side.NEW, "t") == (5, False)
