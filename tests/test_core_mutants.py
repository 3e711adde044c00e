"""Rules of harness/core that the scenario tests left unchecked, found by mutation testing
(docs/mutation-core.md): the freshness correction of search hits, and what an operation and a
request say about themselves."""

from __future__ import annotations

import numpy as np

from vecmig.harness.clusters.base import Hit, Metric, Side, distance
from vecmig.harness.core import requests as rq
from vecmig.harness.core.freshness import correct_hits, latest_per_id
from vecmig.harness.core.state import RecentWrite

QUERY = np.array([0.7, 0.1, 0.5], dtype=np.float32)


def vector(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def exact(v: np.ndarray, metric: Metric = Metric.L2) -> float:
    return float(distance(metric, QUERY, v[None, :])[0])


def write(
    id: str,
    version: int,
    v: np.ndarray | None = None,
    *,
    deleted: bool = False,
    colour: str = "red",
) -> RecentWrite:
    return RecentWrite(id, version, deleted, 0, v, {"colour": colour})


# -- freshness --------------------------------------------------------------------------------


def test_the_latest_write_of_an_id_is_its_highest_version_whatever_the_order_noted() -> None:
    """Instances note their writes to the recent log in any order: the one that counts is the
    highest version, not the last noted."""
    latest = latest_per_id([write("a", 3), write("b", 1), write("a", 2)])
    assert {i: w.version for i, w in latest.items()} == {"a": 3, "b": 1}


def test_without_recent_writes_the_hits_are_kept_as_the_engine_ranked_them_up_to_k() -> None:
    hits = [Hit("b", 1, 0.5), Hit("a", 1, 0.1), Hit("c", 1, 0.9)]
    assert correct_hits(hits, [], QUERY, 2, Metric.L2) == hits[:2]


def test_search_hits_are_corrected_by_the_writes_of_the_visibility_window() -> None:
    """A hit deleted since is dropped; a hit superseded is re-scored at its new version; a
    recent record that matches the filter joins by exact distance, one that does not match
    (or has no vector) stays out; a hit the window holds at the same or an older version
    keeps the engine's score. The result is ranked by distance, then id, and cut at k."""
    hits = [Hit("same", 4, 0.05), Hit("gone", 1, 0.2), Hit("moved", 1, 0.3), Hit("old", 5, 0.4)]
    recent = [
        write("same", 4, vector(9, 9, 9)),
        write("gone", 2, deleted=True),
        write("moved", 2, vector(0.1, 0.2, 0.3)),
        write("old", 3, vector(9, 9, 9)),
        write("new", 1, vector(0.7, 0.1, 0.4)),
        write("blue", 1, vector(0.7, 0.1, 0.5), colour="blue"),
        write("unsearchable", 1, vector()),
    ]
    corrected = correct_hits(hits, recent, QUERY, 10, Metric.L2, {"colour": "red"})
    assert corrected == [
        Hit("new", 1, exact(vector(0.7, 0.1, 0.4))),
        Hit("same", 4, 0.05),
        Hit("old", 5, 0.4),
        Hit("moved", 2, exact(vector(0.1, 0.2, 0.3))),
    ]
    assert correct_hits(hits, recent, QUERY, 2, Metric.L2, {"colour": "red"}) == corrected[:2]


def test_recent_records_are_scored_with_the_search_metric() -> None:
    moved = vector(0.1, 0.2, 0.3)
    [hit] = correct_hits([Hit("moved", 1, 0.3)], [write("moved", 2, moved)], QUERY, 1, Metric.L2)
    assert hit.score == exact(moved, Metric.L2) != exact(moved, Metric.COSINE)


# -- operations and requests ------------------------------------------------------------------


def test_an_operation_is_known_by_its_history_name_or_as_background_work() -> None:
    """Drivers label latency, outcomes and crashes by an operation's kind: a client operation's
    history name, `background` for unnamed work, unless the operation names its own kind."""
    steps = iter(())
    assert rq.Operation("upsert", None, steps).kind == "upsert"
    assert rq.Operation(None, None, steps).kind == "background"
    assert rq.Operation(None, None, steps, kind="backfill").kind == "backfill"
    assert rq.Operation("get", None, steps, kind="mirror").kind == "mirror"


def test_only_a_request_to_a_side_has_a_side() -> None:
    assert rq.side_of(rq.Get(Side.NEW, ("p1",))) is Side.NEW
    assert rq.side_of(rq.Count(Side.OLD)) is Side.OLD
    intent = rq.AddIntent("p1", Side.NEW, 0)  # names a side, but goes to the state store
    assert rq.side_of(intent) is None
