"""Carrying out one core request against the two sides and the state store.

Every driver uses this for the requests it does not handle itself (time, sleeps, phase
announcements and ground truth are the driver's own), so that all three engines do exactly
the same thing for the same request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vecmig.harness.clusters.base import ClusterPort, Side
from vecmig.harness.core import requests as rq
from vecmig.harness.core.state import StateStore


# one branch per request a driver serves itself; issue 12's shared driver helper takes them (C901)
def execute(request: Any, sides: Mapping[Side, ClusterPort], store: StateStore) -> Any:  # noqa: C901
    """The result of `request`; side errors propagate as the port raised them."""
    match request:
        case rq.Upsert(side, records, fenced):
            return sides[side].upsert(records, fenced=fenced)
        case rq.Delete(side, tombstones, fenced):
            return sides[side].delete(tombstones, fenced=fenced)
        case rq.Get(side, ids):
            return sides[side].get(ids)
        case rq.Search():
            return sides[request.side].search(request.vector, request.k, request.filter)
        case rq.Scan(side, cursor, limit):
            return sides[side].scan(cursor, limit)
        case rq.Checksums(side, buckets):
            return sides[side].checksums(buckets)
        case rq.Count(side):
            return sides[side].count()
        case rq.AddRepairs(entries):
            return store.add_repairs(entries)
        case rq.AddIntent(record_id, side, hold_until):
            return store.add_intent(record_id, side, hold_until)
        case rq.ClearIntent(intent):
            return store.clear_intent(intent)
        case rq.NextRepairs(limit, now):
            return store.next_repairs(limit, now)
        case rq.PendingFor(keys):
            return store.pending_for(keys)
        case rq.RepairBacklog(now):
            return store.repair_backlog(now)
        case rq.RemoveRepairs(entries):
            return store.remove_repairs(entries)
        case rq.LoadCheckpoint():
            return store.load_checkpoint()
        case rq.SaveCheckpoint(checkpoint):
            return store.save_checkpoint(checkpoint)
        case rq.NoteRecent(side, writes):
            return store.note_recent(side, writes)
        case rq.RecentSince(side, since):
            return store.recent_since(side, since)
    raise TypeError(f"execute() does not carry out {type(request).__name__}; the driver must")
