"""Freshness over eventually consistent engines.

Many engines make a write searchable only after a delay (a refresh interval, "bounded"
consistency). For a side configured so, the layer notes every write it makes there (durably,
so that every instance sees every instance's writes) and corrects search results with the
writes of the last visibility window: it drops ids deleted since, replaces versions that have
been superseded, and merges in recent records that match the query, by exact distance.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from vecmig.harness.clusters.base import (
    Filter,
    Hit,
    Metric,
    Vector,
    distance,
    matches,
    searchable,
)
from vecmig.harness.core.state import RecentWrite


def latest_per_id(writes: Iterable[RecentWrite]) -> dict[str, RecentWrite]:
    latest: dict[str, RecentWrite] = {}
    for write in writes:
        seen = latest.get(write.id)
        if seen is None or write.version > seen.version:
            latest[write.id] = write
    return latest


def correct_hits(
    hits: Sequence[Hit],
    recent: Iterable[RecentWrite],
    query: Vector,
    k: int,
    metric: Metric,
    filter: Filter | None = None,
) -> list[Hit]:
    """Search hits made fresh with the writes of the visibility window."""
    latest = latest_per_id(recent)
    if not latest:
        return list(hits[:k])
    kept: dict[str, Hit] = {}
    for hit in hits:
        write = latest.get(hit.id)
        if write is None or write.version <= hit.version:
            kept[hit.id] = hit
    candidates = [
        w
        for w in latest.values()
        if not w.deleted
        and searchable(w.vector)
        and matches(w.metadata, filter)
        and (w.id not in kept or kept[w.id].version < w.version)
    ]
    if candidates:
        vectors = np.stack([np.asarray(w.vector, dtype=np.float32) for w in candidates])
        scores = distance(metric, np.asarray(query, dtype=np.float32), vectors)
        for write, score in zip(candidates, scores, strict=True):
            kept[write.id] = Hit(write.id, write.version, float(score))
    ordered = sorted(kept.values(), key=lambda h: (h.score, h.id))
    return ordered[:k]
