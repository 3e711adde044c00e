"""Mirrored reads in SHADOW (`MigrationLayer.mirror`): what a sampled search asks of new, how
its answer is made fresh and compared with old's, when a version mismatch is a discrepancy and
what it repairs, and the figures the CUTOVER gate reads (`Shared.mirror`).

The layer is driven directly: each test answers its requests from a `World` it sets up, so
the tests say exactly what each side holds and what the layer asked for.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from vecmig.harness.clusters.base import (
    ClusterError,
    Filter,
    Hit,
    Metric,
    Side,
    Stored,
    Unavailable,
    distance,
)
from vecmig.harness.core import requests as rq
from vecmig.harness.core.compare import NoiseFloor, compare, discrepancy_line
from vecmig.harness.core.layer import LayerConfig, MigrationLayer, Shared
from vecmig.harness.core.phases import InstanceView, Phase
from vecmig.harness.core.state import RecentWrite, RepairEntry
from vecmig.harness.core.strategy import SAFE, Strategy

QUERY = np.array([0.0, 0.0, 0.0], dtype=np.float32)
RED: Filter = {"colour": "red"}
NOW = 50_000_000_000


def vector(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def score(v: np.ndarray) -> float:
    return float(distance(Metric.L2, QUERY, v[None, :])[0])


def stored(id: str, version: int, v: np.ndarray | None = None, colour: str = "red") -> Stored:
    return Stored(id, version, False, vector(1, 1, 1) if v is None else v, {"colour": colour})


def hits(*spec: str) -> list[Hit]:
    """Hits from "id@version" strings, scored 0.1, 0.2, ... in the order given."""
    out = []
    for rank, item in enumerate(spec, start=1):
        id, version = item.split("@")
        out.append(Hit(id, int(version), rank / 10))
    return out


@dataclass
class World:
    """What the sides, the store and the driver answer a mirrored read."""

    new_hits: list[Hit]
    """new's answer to the mirrored search."""
    old: dict[str, Stored] = field(default_factory=dict)
    new: dict[str, Stored] = field(default_factory=dict)
    exact: tuple[str, ...] | None = None
    pending: dict[tuple[str, Side], bool] = field(default_factory=dict)
    recent: tuple[RecentWrite, ...] = ()
    down: dict[type, ClusterError] = field(default_factory=dict)
    """Request type -> the error every such request to a side gets."""
    requests: list[Any] = field(default_factory=list)
    repairs: list[RepairEntry] = field(default_factory=list)

    def answer(self, request: Any) -> Any:
        if isinstance(request, rq.Search):
            assert request.side is Side.NEW, request
            return list(self.new_hits)
        if isinstance(request, rq.Get):
            held = {Side.OLD: self.old, Side.NEW: self.new}[request.side]
            return {i: held[i] for i in request.ids if i in held}
        if isinstance(request, rq.PendingFor):
            return {key: self.pending[key] for key in request.keys if key in self.pending}
        if isinstance(request, rq.RecentSince):
            return self.recent
        if isinstance(request, rq.Now):
            return NOW
        if isinstance(request, rq.Exact):
            return self.exact
        if isinstance(request, rq.AddRepairs):
            self.repairs.extend(request.entries)
            return None
        raise AssertionError(f"a mirrored read asked for {request!r}")

    def run(self, op: rq.Operation) -> rq.Outcome:
        steps = op.steps
        request = next(steps)
        try:
            while True:
                self.requests.append(request)
                error = self.down.get(type(request))
                request = steps.throw(error) if error else steps.send(self.answer(request))
        except StopIteration as stop:
            outcome: rq.Outcome = stop.value
            return outcome

    def sent(self, kind: type) -> Iterator[Any]:
        return (r for r in self.requests if isinstance(r, kind))


def shadow_layer(
    strategy: Strategy = SAFE,
    noise: NoiseFloor | None = None,
    lagged: frozenset[Side] = frozenset(),
) -> MigrationLayer:
    view = InstanceView("a", Phase.SHADOW, 4, lease_expires=10 * NOW)
    config = LayerConfig(strategy=strategy, metric=Metric.L2, lagged_sides=lagged)
    return MigrationLayer(view, config, Shared(noise=noise))


def floor(threshold: float) -> NoiseFloor:
    return NoiseFloor(threshold=threshold, rate=0.0, samples=100, old_recall=1.0)


def mirror(
    layer: MigrationLayer,
    world: World,
    old_hits: list[Hit],
    k: int = 3,
    filter: Filter | None = None,
) -> rq.Outcome:
    return world.run(layer.mirror(QUERY, k, filter, tuple(old_hits)))


# -- what a mirrored read is and asks ----------------------------------------------------------


def test_a_mirrored_read_is_background_work_of_its_own_kind() -> None:
    """The history records no mirrored read (no `f`), and drivers know one by its kind: the
    live driver answers `Exact` only for the kinds `mirror` and `calibrate`, and the service
    labels its latency and outcome metrics with it."""
    op = shadow_layer().mirror(QUERY, 3, None, ())
    assert (op.f, op.invoke_value, op.kind) == (None, None, "mirror")


def test_a_mirrored_read_asks_new_the_clients_query_and_old_its_exact_answer() -> None:
    world = World(hits("a@1", "b@1"), exact=("a", "b", "c"))
    mirror(shadow_layer(), world, hits("a@1", "b@1"), k=3, filter=RED)
    [search] = world.sent(rq.Search)
    [exact] = world.sent(rq.Exact)
    for request, side in ((search, Side.NEW), (exact, Side.OLD)):
        assert request.side is side
        assert request.vector is QUERY
        assert (request.k, request.filter) == (3, RED)


# -- the comparison and its figures --------------------------------------------------------------


def test_answers_that_agree_are_compared_without_a_discrepancy_or_repair() -> None:
    layer = shadow_layer()
    world = World(hits("a@1", "b@1", "c@1"), exact=("a", "b", "c"))
    outcome = mirror(layer, world, hits("a@1", "b@1", "c@1"))
    assert outcome == rq.Outcome("ok", {"discrepancy": False})
    stats = layer.shared.mirror
    assert (stats.compared, stats.discrepancies, stats.version_mismatches) == (1, 0, 0)
    assert (stats.overlap_sum, stats.log) == (1.0, [])
    assert stats.rbo_sum == pytest.approx(1.0)
    assert not list(world.sent(rq.AddRepairs)) and not list(world.sent(rq.Get))


def test_each_sides_recall_against_old_s_exact_answer_is_recorded() -> None:
    """old found a, b of the exact top 3 (a, b, x), new found only a: the CUTOVER gate's
    recall parity is new's recall minus old's."""
    layer = shadow_layer()
    mirror(
        layer, World(hits("a@1", "d@1", "e@1"), exact=("a", "b", "x")), hits("a@1", "b@1", "c@1")
    )
    stats = layer.shared.mirror
    assert stats.recall_samples == 1
    assert stats.old_recall_sum == pytest.approx(2 / 3)
    assert stats.new_recall_sum == pytest.approx(1 / 3)
    assert stats.recall_parity == pytest.approx(-1 / 3)


@pytest.mark.parametrize("noise", [None, floor(0.7)], ids=["no-floor", "floor"])
def test_without_an_exact_answer_no_recall_is_recorded(noise: NoiseFloor | None) -> None:
    layer = shadow_layer(noise=noise)
    outcome = mirror(layer, World(hits("a@1", "d@1", "e@1")), hits("a@1", "b@1", "c@1"))
    assert outcome.type == "ok"
    stats = layer.shared.mirror
    assert (stats.compared, stats.recall_samples, stats.old_strays) == (1, 0, 0)
    assert stats.recall_parity is None and stats.live_noise_rate is None


@pytest.mark.parametrize(
    ("noise", "old", "new", "exact", "strays"),
    [
        # old found 1 of 3 (below 0.5), new all of them: old strayed
        (floor(0.5), ("a", "y", "z"), ("a", "b", "c"), ("a", "b", "c"), 1),
        # old found 1 of 2, at the threshold: not below it, though new found none
        (floor(0.5), ("a", "y"), ("x", "z"), ("a", "b"), 0),
        # old found every one
        (floor(0.5), ("a", "b", "c"), ("a", "b", "c"), ("a", "b", "c"), 0),
        # no noise floor: nothing to stray from
        (None, ("a", "y", "z"), ("a", "b", "c"), ("a", "b", "c"), 0),
    ],
    ids=["below", "at-threshold", "exact", "no-floor"],
)
def test_old_strays_when_its_own_recall_falls_below_the_noise_floors_threshold(
    noise: NoiseFloor | None,
    old: tuple[str, ...],
    new: tuple[str, ...],
    exact: tuple[str, ...],
    strays: int,
) -> None:
    """The live noise rate the CUTOVER gate allows for counts the mirrored reads on which old
    itself strayed from the exact answer: its recall strictly below the floor's threshold."""
    layer = shadow_layer(noise=noise)
    world = World(hits(*(f"{i}@1" for i in new)), exact=exact)
    mirror(layer, world, hits(*(f"{i}@1" for i in old)), k=len(exact))
    stats = layer.shared.mirror
    assert (stats.recall_samples, stats.old_strays) == (1, strays)
    assert stats.live_noise_rate == strays


def test_with_a_noise_floor_an_overlap_below_its_threshold_is_a_discrepancy_and_logged() -> None:
    layer = shadow_layer(noise=floor(0.7))
    old_hits = hits("a@1", "b@1", "c@1")
    new_hits = hits("a@1", "x@1", "y@1")
    outcome = mirror(layer, World(new_hits), old_hits, filter=RED)
    assert outcome == rq.Outcome("ok", {"discrepancy": True})
    stats = layer.shared.mirror
    assert (stats.compared, stats.discrepancies, stats.version_mismatches) == (1, 1, 0)
    comparison = compare(old_hits, new_hits, 3)
    assert stats.log == [
        discrepancy_line({"k": 3, "filter": {"colour": "red"}}, old_hits, new_hits, comparison)
    ]
    assert stats.log[0]["old"] == [["a", 1, 0.1], ["b", 1, 0.2], ["c", 1, 0.3]]
    assert stats.log[0]["new"] == [["a", 1, 0.1], ["x", 1, 0.2], ["y", 1, 0.3]]
    assert stats.log[0]["overlap"] == round(1 / 3, 6)


def test_without_a_noise_floor_answers_that_differ_are_no_discrepancy() -> None:
    """Without a measured floor, differing ids may be ANN noise: only a version mismatch
    (stale data) is a discrepancy."""
    layer = shadow_layer()
    outcome = mirror(layer, World(hits("a@1", "x@1", "y@1")), hits("a@1", "b@1", "c@1"))
    assert outcome == rq.Outcome("ok", {"discrepancy": False})
    assert (layer.shared.mirror.discrepancies, layer.shared.mirror.log) == (0, [])
    assert layer.shared.mirror.overlap_sum == pytest.approx(1 / 3)


# -- version mismatches ---------------------------------------------------------------------------


@pytest.mark.parametrize("new_holds", [1, None], ids=["older", "missing"])
def test_a_version_new_still_trails_after_a_reread_is_a_discrepancy_repaired_both_ways(
    new_holds: int | None,
) -> None:
    """Both sides returned a, new at an older version. Re-read, old then new: new still
    trails (or lost it), so it is a lost or missed write, not a write landing between the two
    searches; both sides are queued for repair (the higher version wins on each)."""
    layer = shadow_layer()
    world = World(
        hits("a@1", "b@1", "c@1"),
        old={"a": stored("a", 2), "b": stored("b", 1)},
        new={} if new_holds is None else {"a": stored("a", new_holds)},
    )
    old_hits = hits("a@2", "b@1", "c@1")
    outcome = mirror(layer, world, old_hits)
    assert outcome == rq.Outcome("ok", {"discrepancy": True})
    assert [(g.side, g.ids) for g in world.sent(rq.Get)] == [
        (Side.OLD, ("a",)),
        (Side.NEW, ("a",)),
    ]
    assert world.repairs == [RepairEntry("a", Side.NEW), RepairEntry("a", Side.OLD)]
    stats = layer.shared.mirror
    assert (stats.discrepancies, stats.version_mismatches) == (1, 1)
    comparison = compare(old_hits, world.new_hits, 3)
    assert stats.log == [
        discrepancy_line({"k": 3, "filter": None}, old_hits, world.new_hits, comparison)
    ]
    assert stats.log[0]["version_mismatches"] == ["a"]
    assert stats.log[0]["mean_score_delta"] == 0.0


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ({"a": stored("a", 2)}, {"a": stored("a", 2)}),
        ({"a": stored("a", 3)}, {"a": stored("a", 4)}),
        ({}, {"a": stored("a", 1)}),
    ],
    ids=["new-caught-up", "new-ahead", "old-lost-it"],
)
def test_a_version_mismatch_that_a_reread_resolves_is_no_discrepancy(
    old: dict[str, Stored], new: dict[str, Stored]
) -> None:
    """A write that landed between the two searches (or an id old no longer holds) is not
    new falling behind: no discrepancy, no repair, and not counted as a version mismatch."""
    layer = shadow_layer()
    world = World(hits("a@1", "b@1"), old=old, new=new)
    outcome = mirror(layer, world, hits("a@2", "b@1"))
    assert outcome == rq.Outcome("ok", {"discrepancy": False})
    assert len(list(world.sent(rq.Get))) == 2
    assert world.repairs == []
    stats = layer.shared.mirror
    assert (stats.discrepancies, stats.version_mismatches, stats.log) == (0, 0, [])


def test_a_reread_that_fails_keeps_the_version_mismatch() -> None:
    layer = shadow_layer()
    world = World(hits("a@1"), old={"a": stored("a", 2)}, down={rq.Get: Unavailable("down")})
    assert mirror(layer, world, hits("a@2")) == rq.Outcome("ok", {"discrepancy": True})
    assert world.repairs == [RepairEntry("a", Side.NEW), RepairEntry("a", Side.OLD)]


def test_without_mirror_repairs_a_version_mismatch_is_a_discrepancy_left_unrepaired() -> None:
    layer = shadow_layer(SAFE.without("mirror-repairs"))
    world = World(hits("a@1"), old={"a": stored("a", 2)}, new={"a": stored("a", 1)})
    assert mirror(layer, world, hits("a@2")) == rq.Outcome("ok", {"discrepancy": True})
    assert not list(world.sent(rq.AddRepairs))
    assert layer.shared.mirror.version_mismatches == 1


# -- new's answer --------------------------------------------------------------------------------


def test_a_mirrored_read_new_cannot_answer_fails_and_is_counted_as_an_error() -> None:
    layer = shadow_layer()
    for _ in range(2):
        world = World([], down={rq.Search: Unavailable("new: every replica is down")})
        outcome = mirror(layer, world, hits("a@1"))
        assert outcome == rq.Outcome("fail", error="new: every replica is down")
    stats = layer.shared.mirror
    assert (stats.errors, stats.compared) == (2, 0)


def test_new_s_hits_with_a_repair_pending_are_read_from_old_as_a_client_read_would() -> None:
    """new missed the latest writes of a and b (determinate repairs pending there): the
    mirrored read takes old's copies, as a client read of new would, and compares those.
    a's newer copy is re-scored at its own vector; b's no longer matches the filter and goes.
    So new's answer is a@2 and c@1: no version mismatch, no repair, and (the floor's
    threshold is high) a discrepancy logged with new's hits as the client would get them."""
    layer = shadow_layer(noise=floor(0.9))
    moved = vector(0.05, 0.05, 0.05)
    world = World(
        hits("a@1", "b@1", "c@1"),
        old={"a": stored("a", 2, moved), "b": stored("b", 2, colour="blue")},
        pending={("a", Side.NEW): False, ("b", Side.NEW): False},
    )
    outcome = mirror(layer, world, hits("a@2", "c@1", "d@1"), filter=RED)
    assert outcome == rq.Outcome("ok", {"discrepancy": True})
    assert [(g.side, g.ids) for g in world.sent(rq.Get)] == [(Side.OLD, ("a", "b"))]
    assert world.repairs == []
    [line] = layer.shared.mirror.log
    assert line["new"] == [["a", 2, round(score(moved), 6)], ["c", 1, 0.3]]
    assert line["version_mismatches"] == []


def test_new_s_lagging_index_is_corrected_by_its_recent_writes_up_to_k() -> None:
    """new's searches lag: the writes noted in its visibility window join its hits (here two
    records closer than any hit), the result is cut at k and re-read by id."""
    layer = shadow_layer(noise=floor(0.9), lagged=frozenset({Side.NEW}))
    near, nearer = vector(0.1, 0.1, 0.1), vector(0.01, 0.0, 0.0)
    world = World(
        hits("a@1", "b@1"),
        new={"a": stored("a", 1), "n1": stored("n1", 1, near), "n2": stored("n2", 1, nearer)},
        recent=(
            RecentWrite("n1", 1, False, NOW, near, {"colour": "red"}),
            RecentWrite("n2", 1, False, NOW, nearer, {"colour": "red"}),
        ),
    )
    mirror(layer, world, hits("a@1", "b@1"), k=2, filter=RED)
    [line] = layer.shared.mirror.log
    assert line["new"] == [["n2", 1, round(score(nearer), 6)], ["n1", 1, round(score(near), 6)]]
