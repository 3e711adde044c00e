"""The migration layer's write path, request by request: what a client write asks of each
side and of the state store, and what its client is told, when a side takes it, refuses it,
times out or fences it out; and which phase an instance may acknowledge while its operations
are in flight (issue 11, found by mutation testing: docs/mutation-core.md).

The layer is sans-I/O: the requests an operation yields are what it does to the world, so
these tests run an operation by hand (`drive`), answer each request, and check the requests
and the outcome.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import numpy as np
import pytest

from vecmig.harness.clusters.base import (
    ClusterError,
    InvalidRequest,
    Record,
    Side,
    Timeout,
    Tombstone,
    Unavailable,
)
from vecmig.harness.core import requests as rq
from vecmig.harness.core.layer import LayerConfig, MigrationLayer, Shared
from vecmig.harness.core.phases import InstanceView, Phase, Published
from vecmig.harness.core.state import RecentWrite, RepairEntry
from vecmig.harness.core.strategy import SAFE, Strategy
from vecmig.harness.core.versions import HybridLogicalClock

OLD, NEW = Side.OLD, Side.NEW
START = 1_000_000_000
"""When the operations start (ns, the instance's clock)."""
WRITE_NS = 1_000_000
"""How long each write to a side takes in `drive`."""
LEASE = START + 10_000_000_000
MARGIN = LayerConfig().lease_margin_ns
HOLD = LayerConfig().intent_hold_ns
INTENT = 41
"""The number the state store gives the write's intent."""

RECORD = Record("p1", np.array([0.6, 0.8], dtype=np.float32), {"colour": "red"}, 5)
GONE = Tombstone("p1", 6)
VALUE = {"id": "p1", "version": 5}
"""What the history records of the upsert of `RECORD` when it ends."""


def layer(
    phase: Phase = Phase.DUAL_WRITE,
    strategy: Strategy = SAFE,
    lagged: Collection[Side] = (),
) -> MigrationLayer:
    """An instance at epoch 1 whose lease runs until `LEASE`."""
    config = LayerConfig(strategy=strategy, lagged_sides=frozenset(lagged))
    return MigrationLayer(InstanceView("app-1", phase, 1, LEASE), config)


@dataclass
class Run:
    outcome: rq.Outcome
    requests: list[object]
    """Every request but `Now`, in order."""


@dataclass
class World:
    """Answers an operation's requests: each side takes a write (after `WRITE_NS`) unless it
    fails with `errors[side]` or holds a newer version (`fenced_out`); the clock reads
    `time`, or `times` in turn while they last."""

    errors: Mapping[Side, ClusterError] = field(default_factory=dict)
    fenced_out: Collection[Side] = ()
    time: int = START
    times: list[int] = field(default_factory=list)

    def answer(self, request: object) -> object:
        if isinstance(request, rq.Now):
            return self.times.pop(0) if self.times else self.time
        if isinstance(request, rq.Upsert | rq.Delete):
            self.time += WRITE_NS
            error = self.errors.get(request.side)
            if error is not None:
                return error
            written = request.records if isinstance(request, rq.Upsert) else request.tombstones
            return {item.id: request.side not in self.fenced_out for item in written}
        if isinstance(request, rq.AddIntent):
            return INTENT
        return None


def drive(op: rq.Operation, world: World | None = None) -> Run:
    """Run `op` to its end in `world`, recording its requests."""
    world = world or World()
    requests: list[object] = []
    steps = op.steps
    try:
        request = next(steps)
        while True:
            if not isinstance(request, rq.Now):
                requests.append(request)
            answer = world.answer(request)
            if isinstance(answer, ClusterError):
                request = steps.throw(answer)
            else:
                request = steps.send(answer)
    except StopIteration as stop:
        return Run(stop.value, requests)


def writes(run: Run) -> list[object]:
    """The run's writes to the sides."""
    return [r for r in run.requests if isinstance(r, rq.Upsert | rq.Delete)]


Note = tuple[Side, str, int, bool, int, list[float] | None, dict[str, object]]


def notes_of(run: Run) -> list[Note]:
    """The writes the run noted in the visibility window: side, id, version, deleted, time,
    vector and fields (`RecentWrite` compares by identity)."""
    return [
        (r.side, *_fields(w))
        for r in run.requests
        if isinstance(r, rq.NoteRecent)
        for w in r.writes
    ]


def _fields(w: RecentWrite) -> tuple[str, int, bool, int, list[float] | None, dict[str, object]]:
    vector = None if w.vector is None else [float(x) for x in w.vector]
    return (w.id, w.version, w.deleted, w.time, vector, dict(w.metadata))


def noted_sides(run: Run) -> list[Side]:
    return [note[0] for note in notes_of(run)]


UPSERTED = ("p1", 5, False)
VECTOR_AND_FIELDS = ([float(x) for x in RECORD.vector], {"colour": "red"})


# -- what a client is told ---------------------------------------------------------------------


def test_an_upsert_is_invoked_with_its_id_version_and_fields() -> None:
    """The history's invoke of an upsert carries the fields it writes (the checker judges
    filtered searches against them)."""
    op = layer().upsert(RECORD)
    assert op.f == "upsert"
    assert op.invoke_value == {"id": "p1", "version": 5, "fields": {"colour": "red"}}


def test_a_write_both_sides_took_is_ok_with_its_id_and_version_and_no_notes() -> None:
    run = drive(layer().upsert(RECORD))
    assert run.outcome == rq.Outcome("ok", VALUE, None, {})


def test_a_write_in_a_phase_of_one_side_writes_it_alone_and_queues_no_intent() -> None:
    run = drive(layer(Phase.OLD_ONLY).upsert(RECORD))
    assert run.requests == [rq.Upsert(OLD, (RECORD,), True)]
    assert run.outcome == rq.Outcome("ok", VALUE)


@pytest.mark.parametrize("error", [Unavailable("down"), InvalidRequest("bad vector")])
def test_a_write_the_primary_refuses_fails_withdraws_its_intent_and_writes_no_secondary(
    error: ClusterError,
) -> None:
    run = drive(layer().upsert(RECORD), World(errors={OLD: error}))
    assert run.outcome == rq.Outcome("fail", VALUE, f"old: {error}")
    assert run.requests == [
        rq.AddIntent("p1", NEW, START + HOLD),
        rq.Upsert(OLD, (RECORD,), True),
        rq.ClearIntent(INTENT),
    ]


def test_a_refused_write_without_a_secondary_has_no_intent_to_withdraw() -> None:
    run = drive(layer(Phase.OLD_ONLY).upsert(RECORD), World(errors={OLD: Unavailable("down")}))
    assert run.outcome == rq.Outcome("fail", VALUE, "old: down")
    assert run.requests == [rq.Upsert(OLD, (RECORD,), True)]


def test_a_write_the_primary_timed_out_is_indeterminate_and_queues_an_indeterminate_repair() -> (
    None
):
    """It may land yet: the secondary is repaired to whatever the primary ends up with, and
    nobody was told the write succeeded, so the entry is indeterminate (a read may still
    answer from the secondary alone)."""
    run = drive(layer().upsert(RECORD), World(errors={OLD: Timeout("slow")}))
    assert run.outcome == rq.Outcome("info", VALUE, "old: slow")
    assert run.requests == [
        rq.AddIntent("p1", NEW, START + HOLD),
        rq.Upsert(OLD, (RECORD,), True),
        rq.AddRepairs((RepairEntry("p1", NEW, indeterminate=True),)),
        rq.ClearIntent(INTENT),
    ]


def test_a_timed_out_write_queues_no_repair_without_a_secondary_or_repair_on_timeout() -> None:
    alone = drive(layer(Phase.OLD_ONLY).upsert(RECORD), World(errors={OLD: Timeout("slow")}))
    assert alone.outcome == rq.Outcome("info", VALUE, "old: slow")
    assert alone.requests == [rq.Upsert(OLD, (RECORD,), True)]
    ablated = SAFE.without("repair-on-timeout", "write-intents")
    unrepaired = drive(layer(strategy=ablated).upsert(RECORD), World(errors={OLD: Timeout("x")}))
    assert unrepaired.outcome.type == "info"
    assert unrepaired.requests == [rq.Upsert(OLD, (RECORD,), True)]


def test_a_write_the_primary_fenced_out_is_ok_and_says_it_was_superseded() -> None:
    """The primary holds a newer version: the write is not applied, yet nothing failed."""
    run = drive(layer().upsert(RECORD), World(fenced_out={OLD}))
    assert run.outcome == rq.Outcome("ok", VALUE, None, {"superseded": True})
    assert writes(run) == [rq.Upsert(OLD, (RECORD,), True), rq.Upsert(NEW, (RECORD,), True)]


def test_a_delete_is_a_fenced_tombstone_to_each_side_in_turn() -> None:
    op = layer(Phase.CUTOVER).delete(GONE.id, GONE.version)
    assert (op.f, op.invoke_value) == ("delete", {"id": "p1", "version": 6})
    run = drive(op)
    assert run.outcome == rq.Outcome("ok", {"id": "p1", "version": 6})
    assert run.requests == [
        rq.AddIntent("p1", OLD, START + HOLD),
        rq.Delete(NEW, (GONE,), True),
        rq.Delete(OLD, (GONE,), True),
        rq.ClearIntent(INTENT),
    ]


def test_without_fenced_writes_both_sides_are_written_unfenced() -> None:
    unfenced = SAFE.without("fenced-writes")
    upsert = drive(layer(strategy=unfenced).upsert(RECORD))
    assert writes(upsert) == [rq.Upsert(OLD, (RECORD,), False), rq.Upsert(NEW, (RECORD,), False)]
    delete = drive(layer(strategy=unfenced).delete(GONE.id, GONE.version))
    assert writes(delete) == [rq.Delete(OLD, (GONE,), False), rq.Delete(NEW, (GONE,), False)]


def test_without_write_intents_a_two_sided_write_notes_and_clears_no_intent() -> None:
    run = drive(layer(strategy=SAFE.without("write-intents")).upsert(RECORD))
    assert run.requests == [rq.Upsert(OLD, (RECORD,), True), rq.Upsert(NEW, (RECORD,), True)]
    refused = drive(
        layer(strategy=SAFE.without("write-intents")).upsert(RECORD),
        World(errors={OLD: Unavailable("down")}),
    )
    assert refused.requests == [rq.Upsert(OLD, (RECORD,), True)]
    timed_out = drive(
        layer(strategy=SAFE.without("write-intents")).upsert(RECORD),
        World(errors={OLD: Timeout("slow")}),
    )
    assert timed_out.requests == [
        rq.Upsert(OLD, (RECORD,), True),
        rq.AddRepairs((RepairEntry("p1", NEW, indeterminate=True),)),
    ]


# -- the secondary -----------------------------------------------------------------------------


@pytest.mark.parametrize("error", [Unavailable("down"), Timeout("slow")])
def test_a_secondary_write_that_fails_or_times_out_is_acknowledged_with_a_repair_queued(
    error: ClusterError,
) -> None:
    """Issue 11: a secondary write that timed out (not only one refused) queues a repair,
    determinate (the client is told ok), before the write's intent is cleared."""
    run = drive(layer().upsert(RECORD), World(errors={NEW: error}))
    assert run.outcome == rq.Outcome("ok", VALUE, None, {"repair_queued": "new"})
    assert run.requests == [
        rq.AddIntent("p1", NEW, START + HOLD),
        rq.Upsert(OLD, (RECORD,), True),
        rq.Upsert(NEW, (RECORD,), True),
        rq.AddRepairs((RepairEntry("p1", NEW),)),
        rq.ClearIntent(INTENT),
    ]


@pytest.mark.parametrize(
    ("error", "protection"),
    [(Unavailable("down"), "repair-on-refusal"), (Timeout("slow"), "repair-on-timeout")],
)
def test_a_failed_secondary_write_is_lost_only_where_its_own_repair_is_switched_off(
    error: ClusterError, protection: str
) -> None:
    """A refusal is judged by repair-on-refusal and a timeout by repair-on-timeout: switching
    off one leaves the other failure repaired."""
    other = {"repair-on-refusal": "repair-on-timeout", "repair-on-timeout": "repair-on-refusal"}
    lost = drive(
        layer(strategy=SAFE.without(protection)).upsert(RECORD), World(errors={NEW: error})
    )
    assert lost.outcome == rq.Outcome("ok", VALUE, None, {"secondary_lost": f"new: {error}"})
    assert not [r for r in lost.requests if isinstance(r, rq.AddRepairs)]
    kept = drive(
        layer(strategy=SAFE.without(other[protection])).upsert(RECORD), World(errors={NEW: error})
    )
    assert kept.outcome.notes == {"repair_queued": "new"}
    assert rq.AddRepairs((RepairEntry("p1", NEW),)) in kept.requests


def test_a_write_the_secondary_fenced_out_needs_no_repair() -> None:
    run = drive(layer().upsert(RECORD), World(fenced_out={NEW}))
    assert run.outcome == rq.Outcome("ok", VALUE, None, {})
    assert not [r for r in run.requests if isinstance(r, rq.AddRepairs)]


def test_a_write_in_cutover_without_write_old_after_cutover_writes_new_alone() -> None:
    run = drive(layer(Phase.CUTOVER, SAFE.without("write-old-after-cutover")).upsert(RECORD))
    assert run.requests == [rq.Upsert(NEW, (RECORD,), True)]


# -- the intent's hold -------------------------------------------------------------------------


def test_a_write_whose_intent_was_noted_with_under_a_lease_margin_of_hold_left_fails() -> None:
    """The primary write could then land after the hold ends, when the repair worker may
    already have taken the intent: the intent is withdrawn and nothing is written. With one
    nanosecond more of hold left, the write goes ahead."""
    late = START + HOLD - MARGIN
    # Now: tracked start, lease check, intent, then the lease check and the clock of the hold.
    run = drive(layer().upsert(RECORD), World(times=[START, START, START, START, late]))
    assert run.outcome == rq.Outcome(
        "fail",
        VALUE,
        f"instance app-1 noted the intent of this write too late to make it within the "
        f"intent's hold (until {START + HOLD}); nothing was written",
        {"refused": "intent-hold"},
    )
    assert run.requests == [rq.AddIntent("p1", NEW, START + HOLD), rq.ClearIntent(INTENT)]
    in_time = drive(layer().upsert(RECORD), World(times=[START, START, START, START, late - 1]))
    assert in_time.outcome.type == "ok"


def test_a_write_whose_lease_ran_out_while_its_intent_was_noted_fails_as_refused() -> None:
    expired = LEASE - MARGIN
    run = drive(layer().upsert(RECORD), World(times=[START, START, START, expired]))
    assert run.outcome.type == "fail"
    assert run.outcome.value == VALUE
    assert run.outcome.notes == {"refused": "lease"}
    assert run.outcome.error is not None and "lease expired" in run.outcome.error
    assert run.requests == [rq.AddIntent("p1", NEW, START + HOLD), rq.ClearIntent(INTENT)]


# -- the visibility window ---------------------------------------------------------------------


def test_a_write_is_noted_on_each_lagged_side_it_reached_at_the_time_it_returned() -> None:
    """The note ages out when the write would have: its time is taken as each side's write
    returns, not after the other side's (which may be slow)."""
    run = drive(layer(lagged={OLD, NEW}).upsert(RECORD))
    assert notes_of(run) == [
        (OLD, *UPSERTED, START + WRITE_NS, *VECTOR_AND_FIELDS),
        (NEW, *UPSERTED, START + 2 * WRITE_NS, *VECTOR_AND_FIELDS),
    ]
    assert isinstance(run.requests[-1], rq.NoteRecent), "noted once both sides are written"


def test_a_delete_is_noted_on_a_lagged_side_as_a_tombstone() -> None:
    run = drive(layer(lagged={NEW}).delete(GONE.id, GONE.version))
    assert notes_of(run) == [(NEW, "p1", 6, True, START + 2 * WRITE_NS, None, {})]


def test_only_lagged_sides_are_noted_and_only_with_the_freshness_overlay() -> None:
    assert noted_sides(drive(layer(lagged={NEW}).upsert(RECORD))) == [NEW]
    assert noted_sides(drive(layer(lagged={OLD}).upsert(RECORD))) == [OLD]
    assert noted_sides(drive(layer().upsert(RECORD))) == []
    overlay_off = SAFE.without("freshness-overlay")
    assert noted_sides(drive(layer(strategy=overlay_off, lagged={OLD, NEW}).upsert(RECORD))) == []


def test_a_write_a_lagged_side_fenced_out_is_not_noted_there() -> None:
    """The side holds a newer version, which a note of this one must not shadow."""
    primary = drive(layer(lagged={OLD, NEW}).upsert(RECORD), World(fenced_out={OLD}))
    assert noted_sides(primary) == [NEW]
    secondary = drive(layer(lagged={OLD, NEW}).upsert(RECORD), World(fenced_out={NEW}))
    assert noted_sides(secondary) == [OLD]


def test_a_write_that_timed_out_on_a_lagged_primary_is_noted_there_as_it_may_have_landed() -> None:
    run = drive(layer(lagged={OLD, NEW}).upsert(RECORD), World(errors={OLD: Timeout("slow")}))
    assert notes_of(run) == [(OLD, *UPSERTED, START + WRITE_NS, *VECTOR_AND_FIELDS)]


def test_a_write_that_timed_out_on_a_lagged_secondary_is_noted_there_as_it_may_have_landed() -> (
    None
):
    run = drive(layer(lagged={OLD, NEW}).upsert(RECORD), World(errors={NEW: Timeout("slow")}))
    assert notes_of(run) == [
        (OLD, *UPSERTED, START + WRITE_NS, *VECTOR_AND_FIELDS),
        (NEW, *UPSERTED, START + 2 * WRITE_NS, *VECTOR_AND_FIELDS),
    ]


def test_a_write_a_lagged_secondary_refused_is_not_noted_there() -> None:
    run = drive(layer(lagged={NEW}).upsert(RECORD), World(errors={NEW: Unavailable("down")}))
    assert notes_of(run) == []


# -- the instance ------------------------------------------------------------------------------


def test_a_layer_without_a_node_number_stamps_versions_as_node_zero() -> None:
    assert layer().next_version(START) == HybridLogicalClock(0).now(START)
    numbered = MigrationLayer(InstanceView("app-2", Phase.OLD_ONLY, 0, LEASE), node=3)
    assert numbered.next_version(START) == HybridLogicalClock(3).now(START)


def test_a_layer_reports_into_the_shared_figures_it_is_given_or_its_own() -> None:
    shared = Shared()
    view = InstanceView("app-1", Phase.OLD_ONLY, 0, LEASE)
    assert MigrationLayer(view, shared=shared).shared is shared
    own = MigrationLayer(view).shared
    assert isinstance(own, Shared) and own.fallbacks == 0


def test_a_new_layer_has_no_background_work_for_its_driver_to_drain() -> None:
    view = InstanceView("app-1", Phase.OLD_ONLY, 0, LEASE)
    assert list(MigrationLayer(view).background) == []


# -- acknowledgement ---------------------------------------------------------------------------


def start(op: rq.Operation, at: int) -> rq.Steps:
    """Start `op` at `at` and leave it in flight (until it is closed, or dropped)."""
    steps = op.steps
    next(steps)
    steps.send(at)
    return steps


DUAL = Published(Phase.DUAL_WRITE, 1)
BACKFILL = Published(Phase.BACKFILL, 2)
SHADOW = Published(Phase.SHADOW, 3)


def test_an_instance_with_nothing_in_flight_acknowledges_the_phase_it_runs() -> None:
    app = layer()
    assert app.acknowledgement(START) == DUAL
    assert app.learn(BACKFILL, START)
    assert app.acknowledgement(START) == BACKFILL
    assert not app.learn(DUAL, START), "an older phase is no change"


def test_an_instance_acknowledges_the_oldest_phase_of_its_operations_in_flight() -> None:
    """Issue 11: an operation keeps the route of the phase it started in, so its instance
    acknowledges that phase until it ends, whatever it learned meanwhile."""
    app = layer()
    under_dual = start(app.upsert(RECORD), START)
    app.learn(BACKFILL, START + 1)
    under_backfill = start(app.upsert(RECORD), START + 2)
    app.learn(SHADOW, START + 3)
    assert app.acknowledgement(START + 3) == DUAL
    under_dual.close()
    assert app.acknowledgement(START + 3) == BACKFILL
    under_backfill.close()
    assert app.acknowledgement(START + 3) == SHADOW


def test_an_operation_started_before_a_lapsed_lease_stops_counting_once_it_expired() -> None:
    """Its one request that takes its route was issued while the lease held, and is answered
    or timed out by the time the lease expires (every request is bounded below the margin).
    Until that expiry it counts, as it does when the time is not given."""
    app = layer()
    write = start(app.upsert(RECORD), LEASE - MARGIN - 1)
    app.learn(BACKFILL, LEASE - MARGIN)
    assert app.acknowledgement(LEASE - 1) == DUAL, "the lapsed lease has not expired yet"
    assert app.acknowledgement() == DUAL
    assert app.acknowledgement(LEASE) == BACKFILL
    write.close()


def test_an_operation_started_once_its_instance_stopped_serving_counts_past_the_lapse() -> None:
    """Only operations started while the lease still served (before its expiry less the
    margin) are known to be done with their route by the expiry."""
    app = layer()
    write = start(app.upsert(RECORD), LEASE - MARGIN)
    app.learn(BACKFILL, LEASE - MARGIN)
    assert app.acknowledgement(LEASE) == DUAL
    write.close()


def test_an_operation_counts_past_a_lease_expiry_when_no_poll_found_the_lease_lapsed() -> None:
    """The instance learned and renewed while its lease held: its operations count, however
    long they run, until a poll finds the lease lapsed."""
    app = layer()
    write = start(app.upsert(RECORD), START)
    app.learn(BACKFILL, START + 1)
    app.renew(START + 1, LEASE)
    assert app.acknowledgement(LEASE) == DUAL
    write.close()
