"""The migration layer's reads, one request at a time: which side a get or a search asks, what
it does when a side cannot answer, how it judges the hits of a side whose index lags, and what
the client is told. Found by mutation testing (docs/mutation-core.md): the scenario tests read
through the layer, but rarely with a side down, a repair pending or a filter.

The layer is driven by a script (`World`): what each side holds, what its index answers, which
repairs are pending, which requests fail, so that each test sets up exactly the state its rule
is about."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from vecmig.harness.clusters.base import (
    ClusterError,
    Filter,
    Hit,
    InvalidRequest,
    Metric,
    Record,
    Side,
    Stored,
    Unavailable,
    distance,
    matches,
    searchable,
)
from vecmig.harness.core import requests as rq
from vecmig.harness.core.layer import LayerConfig, MigrationLayer, rounded
from vecmig.harness.core.phases import InstanceView, Phase, Published
from vecmig.harness.core.state import RecentWrite
from vecmig.harness.core.strategy import SAFE, Strategy

NOW = 1_000_000_000_000
QUERY = np.array([1.0, 0.0, 0.0], dtype=np.float32)
RED: Filter = {"colour": "red"}


def vector(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def l2(v: np.ndarray) -> float:
    """The exact score of `v` for QUERY, as the layer scores a record it re-reads (L2)."""
    return float(distance(Metric.L2, QUERY, v[None, :])[0])


def record(id: str, version: int, v: np.ndarray, colour: str = "red") -> Stored:
    return Stored(id, version, False, v, {"colour": colour})


def tombstone(id: str, version: int) -> Stored:
    return Stored(id, version, True)


@dataclass
class World:
    """The two sides, the repair log and the recent-writes log as a test scripts them.

    A side answers a get with what it holds of the ids asked; a search with its `index` if one
    is set (a lagging index: hits as the test gives them), else exactly, by L2 over the live
    records it holds that match the filter. `down` sides fail every request with their
    message; `flaky` errors fail the next requests of a kind to a side, one each."""

    held: dict[Side, dict[str, Stored]] = field(
        default_factory=lambda: {Side.OLD: {}, Side.NEW: {}}
    )
    index: dict[Side, list[Hit]] = field(default_factory=dict)
    pending: dict[tuple[str, Side], bool] = field(default_factory=dict)
    recent: dict[Side, list[RecentWrite]] = field(
        default_factory=lambda: {Side.OLD: [], Side.NEW: []}
    )
    down: dict[Side, str] = field(default_factory=dict)
    flaky: dict[tuple[type, Side], list[ClusterError]] = field(default_factory=dict)
    knows_exact: bool = False
    write_answer: Callable[[tuple[Record, ...]], Any] = lambda records: {
        r.id: True for r in records
    }
    """What a side answers an upsert with (the ports answer {id: applied})."""
    now: int = NOW
    requests: list[Any] = field(default_factory=list)

    def hold(self, side: Side, *stored: Stored) -> None:
        for s in stored:
            self.held[side][s.id] = s

    def side_requests(self, side: Side) -> list[Any]:
        return [r for r in self.requests if rq.is_side_request(r) and r.side is side]

    def answer(self, request: Any) -> Any:  # noqa: C901
        self.requests.append(request)
        if rq.is_side_request(request):
            if request.side in self.down:
                raise Unavailable(self.down[request.side])
            errors = self.flaky.get((type(request), request.side))
            if errors:
                raise errors.pop(0)
        match request:
            case rq.Now():
                return self.now
            case rq.Get(side, ids):
                return {i: self.held[side][i] for i in ids if i in self.held[side]}
            case rq.Search(side=side, k=k, filter=filter):
                if side in self.index:
                    return list(self.index[side])
                return self.exact_hits(side, k, filter)
            case rq.Exact(side=side, k=k, filter=filter):
                if not self.knows_exact:
                    return None
                return tuple(h.id for h in self.exact_hits(side, k, filter))
            case rq.PendingFor(keys):
                return {key: self.pending[key] for key in keys if key in self.pending}
            case rq.RecentSince(side, since):
                return tuple(w for w in self.recent[side] if w.time >= since)
            case rq.Upsert(records=records):
                return self.write_answer(records)
        raise AssertionError(f"the script does not answer {request!r}")

    def exact_hits(self, side: Side, k: int, filter: Filter | None) -> list[Hit]:
        live = [
            s
            for s in self.held[side].values()
            if not s.deleted and searchable(s.vector) and matches(s.metadata, filter)
        ]
        hits = [Hit(s.id, s.version, l2(s.vector)) for s in live if s.vector is not None]
        return sorted(hits, key=lambda h: (h.score, h.id))[:k]


class Play:
    """One operation run against a `World`, to the end or up to a request."""

    def __init__(self, op: rq.Operation, world: World) -> None:
        self.steps = op.steps
        self.world = world
        self.outcome: rq.Outcome | None = None
        self.request: Any = self._advance(lambda: next(self.steps))

    def _advance(self, resume: Callable[[], Any]) -> Any:
        try:
            return resume()
        except StopIteration as stop:
            self.outcome = stop.value
            return None

    def step(self) -> None:
        request = self.request
        try:
            value = self.world.answer(request)
        except ClusterError as exc:
            error = exc
            self.request = self._advance(lambda: self.steps.throw(error))
        else:
            self.request = self._advance(lambda: self.steps.send(value))

    def until(self, wanted: Callable[[Any], bool]) -> Any:
        while self.outcome is None and not wanted(self.request):
            self.step()
        assert self.outcome is None, "the operation ended before the awaited request"
        return self.request

    def finish(self) -> rq.Outcome:
        while self.outcome is None:
            self.step()
        return self.outcome


def play(op: rq.Operation, world: World) -> rq.Outcome:
    return Play(op, world).finish()


def layer(
    phase: Phase,
    strategy: Strategy = SAFE,
    *,
    lagged: frozenset[Side] = frozenset(),
    lease_expires: int = 2 * NOW,
    **config: Any,
) -> MigrationLayer:
    view = InstanceView("app", phase, 1, lease_expires)
    settings = LayerConfig(strategy=strategy, metric=Metric.L2, lagged_sides=lagged, **config)
    return MigrationLayer(view, settings)


def found(record_id: str, version: int | None, **notes: Any) -> rq.Outcome:
    return rq.Outcome("ok", {"id": record_id, "version": version}, notes=notes)


def failed(error: str, **notes: Any) -> rq.Outcome:
    return rq.Outcome("fail", None, error=error, notes=notes)


def results(*hits: Hit) -> list[list[Any]]:
    return [[h.id, h.version, rounded(h.score)] for h in hits]


def is_get(request: Any) -> bool:
    return isinstance(request, rq.Get)


P1 = record("p", 1, vector(0.0, 1.0, 0.0))
P2 = record("p", 2, vector(0.0, 0.0, 1.0))
ROLLED_BACK = {("p", Side.OLD): False}
"""After a ROLLBACK from CUTOVER to SHADOW: a CUTOVER write of p reached new but not old (its
secondary), so a determinate repair of old is pending and new holds the latest version."""


# -- the lease ------------------------------------------------------------------------------------


@pytest.mark.parametrize("read", ["get", "search"])
def test_an_instance_whose_lease_ran_out_refuses_reads_and_asks_no_side(read: str) -> None:
    app = layer(Phase.SHADOW, lease_expires=NOW)
    world = World()
    op = app.get("p") if read == "get" else app.search(QUERY, 3)
    assert play(op, world) == failed(
        f"instance app has not heard from the config store in time (lease expired at {NOW}); "
        "it refuses work until it catches up",
        refused="lease",
    )
    assert world.requests == [rq.Now(), rq.Now()]


# -- gets -----------------------------------------------------------------------------------------


def test_a_get_with_no_repair_pending_reads_the_read_side_alone() -> None:
    world = World()
    world.hold(Side.OLD, P2)
    world.hold(Side.NEW, P1)  # behind, but nothing says new may be ahead
    assert play(layer(Phase.DUAL_WRITE).get("p"), world) == found("p", 2)
    assert world.side_requests(Side.NEW) == []


def test_a_get_of_an_id_with_a_repair_pending_on_the_read_side_keeps_the_newer_of_both() -> None:
    world = World(pending=dict(ROLLED_BACK))
    world.hold(Side.OLD, P1)
    world.hold(Side.NEW, P2)
    app = layer(Phase.SHADOW)
    assert play(app.get("p"), world) == found("p", 2, read_both=True)
    assert app.shared.fallbacks == 0


@pytest.mark.parametrize(
    ("phase", "gone"), [(Phase.OLD_ONLY, Side.NEW), (Phase.DECOMMISSIONED, Side.OLD)]
)
def test_in_a_phase_that_writes_one_side_reads_ask_that_side_alone(
    phase: Phase, gone: Side
) -> None:
    """In OLD_ONLY and DECOMMISSIONED the other side is out of the migration (dropped after an
    abort, retired after it): a repair entry still in the log does not send a read there."""
    side = gone.other
    world = World(down={gone: f"{gone.value}: torn down"}, pending={("p", side): False})
    world.hold(side, record("p", 3, vector(0.0, 1.0, 0.0)))
    world.index[side] = [Hit("p", 3, 0.5)]
    app = layer(phase)
    assert play(app.get("p"), world) == found("p", 3)
    assert play(app.search(QUERY, 3), world) == rq.Outcome("ok", {"results": [["p", 3, 0.5]]})
    assert world.side_requests(gone) == []


def test_a_get_the_side_refuses_as_invalid_fails_at_once_with_the_sides_words() -> None:
    """An invalid request is not retried, nor sent to the other side: it would fail there too.
    The notes say what the read did before it failed."""
    world = World(pending=dict(ROLLED_BACK))
    world.hold(Side.OLD, P1)
    world.flaky[(rq.Get, Side.NEW)] = [InvalidRequest("new: id too long")]
    assert play(layer(Phase.SHADOW).get("p"), world) == failed("new: id too long", read_both=True)
    assert len(world.side_requests(Side.NEW)) == 1


def test_a_get_reading_both_sides_answers_from_the_fallback_side_when_the_read_side_is_down() -> (
    None
):
    world = World(pending=dict(ROLLED_BACK), down={Side.OLD: "old: down"})
    world.hold(Side.NEW, P2)
    app = layer(Phase.SHADOW)
    assert play(app.get("p"), world) == found("p", 2, read_both=True, fallback_side="new")
    assert (app.shared.fallbacks, app.shared.last_fallback_to_old) == (1, None)


def test_a_get_fails_with_every_sides_error_when_no_side_can_answer() -> None:
    world = World(pending=dict(ROLLED_BACK), down={Side.OLD: "old: down", Side.NEW: "new: down"})
    assert play(layer(Phase.SHADOW).get("p"), world) == failed(
        "old: down; new: down", read_both=True
    )
    assert len(world.side_requests(Side.NEW)) == 2  # two attempts, and not asked again


def test_a_get_with_no_side_to_fall_back_to_fails_with_the_read_sides_error() -> None:
    world = World(down={Side.OLD: "old: down"})
    world.hold(Side.NEW, P2)
    assert play(layer(Phase.DUAL_WRITE).get("p"), world) == failed("old: down")


def test_before_shadow_a_get_never_answers_from_new_alone() -> None:
    """In DUAL_WRITE new may still miss records the backfill has not copied: when old cannot
    answer a read of both sides, new's answer alone is no answer (here it misses p)."""
    world = World(pending={("p", Side.OLD): True}, down={Side.OLD: "old: down"})
    assert play(layer(Phase.DUAL_WRITE).get("p"), world) == failed("old: down", read_both=True)


def test_a_get_falls_back_to_a_current_side_when_the_read_side_is_down() -> None:
    world = World(down={Side.OLD: "old: down"})
    world.hold(Side.NEW, P2)
    assert play(layer(Phase.SHADOW).get("p"), world) == found("p", 2, fallback_side="new")


def test_a_get_does_not_fall_back_to_a_side_a_determinate_repair_is_pending_on() -> None:
    world = World(pending={("p", Side.NEW): False}, down={Side.OLD: "old: down"})
    world.hold(Side.NEW, P1)
    assert play(layer(Phase.SHADOW).get("p"), world) == failed(
        "old: down; new may miss the latest write of 'p' (a repair is pending there)"
    )
    assert world.side_requests(Side.NEW) == []


def test_a_get_whose_fallback_fails_too_names_both_errors() -> None:
    world = World(down={Side.OLD: "old: down", Side.NEW: "new: down"})
    assert play(layer(Phase.SHADOW).get("p"), world) == failed("old: down; new: down")


def test_without_the_currency_check_a_get_still_reads_both_sides_for_a_pending_repair() -> None:
    """The ablation `fallback-currency-check` lets a fallback answer alone; reading both sides
    of an id with a pending repair is `read-both`'s, which stays on."""
    world = World(pending=dict(ROLLED_BACK))
    world.hold(Side.OLD, P1)
    world.hold(Side.NEW, P2)
    app = layer(Phase.SHADOW, SAFE.without("fallback-currency-check"))
    assert play(app.get("p"), world) == found("p", 2, read_both=True)


def test_without_read_fallback_a_read_fails_when_the_read_side_is_down() -> None:
    world = World(down={Side.OLD: "old: down"})
    world.hold(Side.NEW, P2)
    app = layer(Phase.SHADOW, SAFE.without("read-fallback"))
    assert play(app.get("p"), world) == failed("old: down")
    assert play(app.search(QUERY, 3), world) == failed("old: down")
    assert world.side_requests(Side.NEW) == []


def test_a_read_is_tried_twice_and_fails_with_the_last_error() -> None:
    world = World()
    world.hold(Side.OLD, P1)
    app = layer(Phase.OLD_ONLY)
    world.flaky[(rq.Get, Side.OLD)] = [Unavailable("old: replica 1 down")]
    assert play(app.get("p"), world) == found("p", 1)
    world.flaky[(rq.Get, Side.OLD)] = [Unavailable("old: replica 1"), Unavailable("old: replica 2")]
    assert play(app.get("p"), world) == failed("old: replica 2")
    assert len(world.side_requests(Side.OLD)) == 4  # 2, then 2: never a third try


def test_without_read_retry_a_read_is_tried_once() -> None:
    world = World()
    world.hold(Side.OLD, P1)
    world.flaky[(rq.Get, Side.OLD)] = [Unavailable("old: replica 1 down")]
    app = layer(Phase.OLD_ONLY, SAFE.without("read-retry"))
    assert play(app.get("p"), world) == failed("old: replica 1 down")


def test_a_layer_configured_with_no_read_attempts_says_so() -> None:
    with pytest.raises(AssertionError, match=r"^attempts must be at least 1$"):
        play(layer(Phase.OLD_ONLY, read_retries=-1).get("p"), World())


# -- operations in flight -------------------------------------------------------------------------


def test_an_instance_acknowledges_the_oldest_phase_a_read_still_runs_under() -> None:
    """Each read in flight counts under its own epoch, however many ran before it."""
    world = World()
    app = layer(Phase.DUAL_WRITE)
    play(app.get("p"), world)
    first = Play(app.get("p"), world)
    first.until(is_get)
    app.learn(Published(Phase.BACKFILL, 2), NOW)
    second = Play(app.get("p"), world)
    second.until(is_get)
    assert app.acknowledgement(NOW) == Published(Phase.DUAL_WRITE, 1)
    first.finish()
    assert app.acknowledgement(NOW) == Published(Phase.BACKFILL, 2)
    second.finish()
    assert app.acknowledgement(NOW) == Published(Phase.BACKFILL, 2)


def test_a_read_started_before_the_lease_lapsed_stops_counting_once_it_expired() -> None:
    world = World()
    app = layer(Phase.DUAL_WRITE, lease_expires=NOW + 10**9)
    Play(app.get("p"), world).until(is_get)
    later = NOW + 2 * 10**9
    app.learn(Published(Phase.BACKFILL, 2), later)
    assert app.acknowledgement(later) == Published(Phase.BACKFILL, 2)


# -- searches -------------------------------------------------------------------------------------


def test_a_search_is_recorded_with_its_k_and_filter() -> None:
    app = layer(Phase.OLD_ONLY)
    plain = app.search(QUERY, 3)
    filtered = app.search(QUERY, 3, {"colour": "red"})
    assert (plain.f, plain.invoke_value) == ("search", {"k": 3})
    assert (filtered.f, filtered.invoke_value) == ("search", {"k": 3, "filter": {"colour": "red"}})


CATALOG = (
    record("a", 1, vector(1.0, 0.1, 0.0)),
    record("b", 2, vector(1.0, 0.2, 0.0), colour="blue"),
    record("c", 1, vector(1.0, 0.3, 0.0)),
    record("d", 4, vector(1.0, 0.4, 0.0)),
)


def test_a_search_answers_the_filtered_top_k_of_the_read_side_with_the_exact_ids() -> None:
    world = World(knows_exact=True)
    world.hold(Side.OLD, *CATALOG)
    a, _, c, _ = CATALOG
    hits = [Hit(s.id, s.version, l2(s.vector)) for s in (a, c) if s.vector is not None]
    assert play(layer(Phase.OLD_ONLY).search(QUERY, 2, RED), world) == rq.Outcome(
        "ok", {"results": results(*hits), "exact": ["a", "c"]}
    )
    world.knows_exact = False
    assert play(layer(Phase.OLD_ONLY).search(QUERY, 2, RED), world) == rq.Outcome(
        "ok", {"results": results(*hits)}
    )


def test_scores_go_into_the_history_rounded_to_six_decimals() -> None:
    assert rounded(0.25) == 0.25
    assert rounded(0.1234567891) == 0.123457
    assert rounded(2.0000004) == 2.0


def test_a_search_falls_back_when_the_read_side_is_down_and_each_fallback_is_counted() -> None:
    """A fallback to old, and only to old, restarts the DECOMMISSIONED gate's soak."""
    world = World(down={Side.OLD: "old: down"})
    world.hold(Side.NEW, *CATALOG)
    app = layer(Phase.SHADOW)
    expected = play(layer(Phase.DECOMMISSIONED).search(QUERY, 2), world)
    assert play(app.search(QUERY, 2), world) == rq.Outcome(
        "ok", expected.value, notes={"fallback_side": "new"}
    )
    assert (app.shared.fallbacks, app.shared.last_fallback_to_old) == (1, None)
    world = World(down={Side.NEW: "new: down"}, now=NOW + 5)
    world.hold(Side.OLD, *CATALOG)
    app.learn(Published(Phase.CUTOVER, 2), NOW)
    assert play(app.search(QUERY, 2), world).notes == {"fallback_side": "old"}
    assert (app.shared.fallbacks, app.shared.last_fallback_to_old) == (2, NOW + 5)


def test_a_search_fails_with_every_sides_error_when_no_side_can_answer() -> None:
    world = World(down={Side.OLD: "old: down", Side.NEW: "new: down"})
    assert play(layer(Phase.SHADOW).search(QUERY, 2), world) == failed("old: down; new: down")
    assert play(layer(Phase.DUAL_WRITE).search(QUERY, 2), world) == failed("old: down")


def test_a_search_the_side_refuses_as_invalid_fails_at_once_with_the_sides_words() -> None:
    world = World()
    world.hold(Side.NEW, *CATALOG)
    world.flaky[(rq.Search, Side.OLD)] = [InvalidRequest("old: k too large")]
    assert play(layer(Phase.SHADOW).search(QUERY, 2), world) == failed("old: k too large")
    assert world.side_requests(Side.NEW) == []


# -- mirrored searches ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("phase", "draw", "down", "mirrored"),
    [
        (Phase.SHADOW, 0.1, None, True),
        (Phase.SHADOW, 0.2, None, False),  # the draw must fall below the rate (0.2)
        (Phase.SHADOW, 0.5, None, False),
        (Phase.DUAL_WRITE, 0.1, None, False),
        (Phase.SHADOW, 0.1, Side.OLD, False),  # answered by new: nothing to compare with
    ],
)
def test_a_sample_of_shadow_searches_answered_by_old_is_mirrored_to_new(
    phase: Phase, draw: float, down: Side | None, mirrored: bool
) -> None:
    world = World(down={} if down is None else {down: f"{down.value}: down"})
    world.hold(Side.OLD, *CATALOG)
    world.hold(Side.NEW, *CATALOG)
    app = layer(phase)
    assert play(app.search(QUERY, 2, RED, mirror_draw=draw), world).type == "ok"
    assert len(app.background) == mirrored


def test_a_mirrored_search_asks_new_the_same_query_and_compares_it_with_olds_hits() -> None:
    """The filter matters: unfiltered, new's top 2 would differ from old's (b is blue)."""
    world = World()
    world.hold(Side.OLD, *CATALOG)
    world.hold(Side.NEW, *CATALOG)
    app = layer(Phase.SHADOW)
    play(app.search(QUERY, 2, RED, mirror_draw=0.0), world)
    world.requests.clear()
    assert play(app.background.popleft(), world) == rq.Outcome("ok", {"discrepancy": False})
    [search] = [r for r in world.requests if isinstance(r, rq.Search)]
    assert (search.side, search.vector.tolist(), search.k, search.filter) == (
        Side.NEW,
        QUERY.tolist(),
        2,
        RED,
    )
    stats = app.shared.mirror
    assert (stats.compared, stats.overlap_sum, stats.errors) == (1, 1.0, 0)


# -- searches on a side whose index lags ----------------------------------------------------------


def test_a_search_on_a_lagging_side_answers_each_hit_as_the_side_now_holds_it() -> None:
    """A hit whose id is gone, deleted, vectorless or no longer matching the filter is dropped;
    a hit at the version the side holds keeps the engine's score (a quantised index scores
    approximately); a hit the side holds at a newer version is re-scored by the search's
    metric."""
    moved = vector(0.0, 1.0, 0.0)
    world = World()
    world.hold(
        Side.NEW,
        tombstone("deleted", 2),
        record("vectorless", 2, vector()),
        record("unmatched", 2, vector(1.0, 0.0, 0.0), colour="blue"),
        record("same", 3, vector(0.0, 0.0, 1.0)),
        record("moved", 2, moved),
    )
    world.index[Side.NEW] = [
        Hit("gone", 1, 0.01),
        Hit("deleted", 1, 0.02),
        Hit("vectorless", 1, 0.03),
        Hit("unmatched", 1, 0.04),
        Hit("same", 3, 0.05),
        Hit("moved", 1, 0.06),
    ]
    app = layer(Phase.DECOMMISSIONED, lagged=frozenset({Side.NEW}))
    expected = results(Hit("same", 3, 0.05), Hit("moved", 2, l2(moved)))
    assert play(app.search(QUERY, 10, RED), world) == rq.Outcome("ok", {"results": expected})


def test_the_writes_of_the_visibility_window_join_a_lagging_sides_search() -> None:
    """The window reaches back the visibility window plus twice the clock-skew bound: a write
    noted at its first instant joins (scored by the search's metric), one noted just before it
    does not, nor one that does not match the filter; the result is cut at k."""
    window, skew = 10_000, 1_000
    since = NOW - window - 2 * skew
    near, nearer, nearest = vector(1.0, 0.05, 0.0), vector(1.0, 0.01, 0.0), vector(1.0, 0.0, 0.0)
    world = World()
    far = [record("far1", 1, vector(1.0, 0.5, 0.0)), record("far2", 1, vector(1.0, 0.6, 0.0))]
    world.hold(Side.NEW, *far, record("fresh", 1, near), record("old_note", 1, nearer))
    world.hold(Side.NEW, record("blue", 1, nearest, colour="blue"))
    world.index[Side.NEW] = [
        Hit(s.id, s.version, l2(s.vector)) for s in far if s.vector is not None
    ]
    world.recent[Side.NEW] = [
        RecentWrite("fresh", 1, False, since, near, {"colour": "red"}),
        RecentWrite("old_note", 1, False, since - 1, nearer, {"colour": "red"}),
        RecentWrite("blue", 1, False, NOW, nearest, {"colour": "blue"}),
    ]
    app = layer(
        Phase.DECOMMISSIONED,
        lagged=frozenset({Side.NEW}),
        visibility_window_ns=window,
        max_clock_skew_ns=skew,
    )
    far1 = world.index[Side.NEW][0]
    expected = results(Hit("fresh", 1, l2(near)), far1)
    assert play(app.search(QUERY, 2, RED), world) == rq.Outcome("ok", {"results": expected})


def test_without_the_freshness_overlay_a_lagging_sides_hits_are_answered_as_indexed() -> None:
    """The ablation: what the index answers goes to the client, a stale version included."""
    world = World()
    world.hold(Side.NEW, record("moved", 2, vector(0.0, 1.0, 0.0)))
    world.index[Side.NEW] = [Hit("moved", 1, 0.06)]
    app = layer(
        Phase.DECOMMISSIONED, SAFE.without("freshness-overlay"), lagged=frozenset({Side.NEW})
    )
    assert play(app.search(QUERY, 2), world) == rq.Outcome("ok", {"results": [["moved", 1, 0.06]]})


# -- searches over ids with a pending repair ------------------------------------------------------


def test_search_hits_with_a_pending_repair_take_the_other_sides_newer_copy() -> None:
    """For the hits with a repair pending on the read side, the other side is read: a copy
    at the same version or older leaves the hit as it is (the engine's score), a newer copy
    replaces it, re-scored, unless it no longer matches the filter."""
    newer = vector(0.0, 1.0, 0.0)
    world = World()
    world.index[Side.NEW] = [
        Hit("clean", 1, 0.01),
        Hit("missing", 1, 0.02),
        Hit("same", 2, 0.03),
        Hit("blue", 1, 0.04),
        Hit("newer", 1, 0.05),
    ]
    world.pending = {(i, Side.NEW): False for i in ("missing", "same", "blue", "newer")}
    world.hold(
        Side.OLD,
        record("clean", 5, vector(1.0, 0.0, 0.0)),  # no repair pending: old is not asked
        record("same", 2, vector(1.0, 0.0, 0.0)),
        record("blue", 2, vector(1.0, 0.0, 0.0), colour="blue"),
        record("newer", 2, newer),
    )
    expected = results(
        Hit("clean", 1, 0.01),
        Hit("missing", 1, 0.02),
        Hit("same", 2, 0.03),
        Hit("newer", 2, l2(newer)),
    )
    outcome = play(layer(Phase.CUTOVER).search(QUERY, 10, RED), world)
    assert outcome == rq.Outcome("ok", {"results": expected})
    [get] = [r for r in world.side_requests(Side.OLD)]
    assert get == rq.Get(Side.OLD, ("blue", "missing", "newer", "same"))


def test_search_hits_missing_an_acknowledged_write_are_dropped_when_the_other_side_is_down() -> (
    None
):
    """An acknowledged write may be missing from such a hit; an indeterminate entry (a write
    nobody was told succeeded) does not make the read side stale."""
    world = World(down={Side.OLD: "old: down"})
    world.index[Side.NEW] = [Hit("clean", 1, 0.01), Hit("stale", 1, 0.02), Hit("unsure", 1, 0.03)]
    world.pending = {("stale", Side.NEW): False, ("unsure", Side.NEW): True}
    outcome = play(layer(Phase.CUTOVER).search(QUERY, 10), world)
    assert outcome == rq.Outcome("ok", {"results": [["clean", 1, 0.01], ["unsure", 1, 0.03]]})


# -- writes: what a side's answer says ------------------------------------------------------------


@pytest.mark.parametrize(
    ("applied", "notes"),
    [
        ({"p": True}, {}),
        ({"p": False}, {"superseded": True}),
        ({}, {}),  # a side that does not say is taken to have applied the write
        (None, {}),
    ],
)
def test_a_write_is_superseded_only_when_the_side_says_it_holds_a_newer_version(
    applied: Mapping[str, bool] | None, notes: dict[str, Any]
) -> None:
    world = World(write_answer=lambda records: applied)
    outcome = play(layer(Phase.OLD_ONLY).upsert(P1.as_record()), world)
    assert outcome == rq.Outcome("ok", {"id": "p", "version": 1}, notes=notes)
