"""Background work of the migration: the backfill, the repair worker and the verification diff.

All three are fenced and idempotent in the safe strategy, so a batch that a crash cut short
is simply done again: the backfill resumes from its durable checkpoint, a repair entry is
removed only after its repair applied, and a verification pass repairs what it finds in both
directions (the higher version wins on both sides, since versions only grow).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vecmig.harness.clusters.base import ClusterError, Hit, Side, Stored, Vector, bucket_of
from vecmig.harness.core.compare import calibrate
from vecmig.harness.core.gates import Verification
from vecmig.harness.core.requests import (
    AddRepairs,
    Checksums,
    Count,
    Delete,
    Exact,
    Get,
    LoadCheckpoint,
    NextRepairs,
    NoteRecent,
    Now,
    Operation,
    Outcome,
    RemoveRepairs,
    SaveCheckpoint,
    Scan,
    Search,
    Steps,
    Sub,
    Upsert,
)
from vecmig.harness.core.state import Checkpoint, RecentWrite, RepairEntry
from vecmig.harness.core.strategy import Strategy

# ---------------------------------------------------------------------------------------------
# The throttle.


@dataclass(slots=True)
class Throttle:
    """Additive-increase, multiplicative-decrease control of the backfill's batch size and
    pause, fed with the live read latency the driver observes and the backfill's own errors."""

    slo_p99_ms: float = 50.0
    batch_size: int = 256
    min_batch: int = 16
    max_batch: int = 2048
    pause_ns: int = 0
    max_pause_ns: int = 2_000_000_000
    unthrottled: bool = False

    def observe(self, live_p99_ms: float | None, error: bool = False) -> None:
        if self.unthrottled:
            return
        if error or (live_p99_ms is not None and live_p99_ms > self.slo_p99_ms):
            self.batch_size = max(self.min_batch, self.batch_size // 2)
            self.pause_ns = min(self.max_pause_ns, max(50_000_000, self.pause_ns * 2))
        else:
            self.batch_size = min(self.max_batch, self.batch_size + 32)
            self.pause_ns = self.pause_ns * 3 // 4 if self.pause_ns > 1_000_000 else 0


# ---------------------------------------------------------------------------------------------
# The backfill.


class Backfill:
    """Copies old to new in id order, one batch per operation.

    Safe: every batch is fenced (never overwrites a newer live write, never resurrects a
    delete, since tombstones are copied too) and the cursor is checkpointed durably after each
    batch. Naive: plain inserts of the live records, with the cursor only in memory, so a
    crashed worker starts again from the beginning.
    """

    def __init__(self, strategy: Strategy, throttle: Throttle | None = None) -> None:
        self.strategy = strategy
        self.throttle = throttle or Throttle()
        self._memory = Checkpoint()
        self.done_at: int | None = None
        """When this worker copied the last batch of its attempt."""

    @property
    def checkpoint(self) -> Checkpoint:
        """The last checkpoint this worker reached (the durable one may be further along)."""
        return self._memory

    def reset(self) -> None:
        """Forget this worker's progress (after an ABORT the copy starts over)."""
        self._memory = Checkpoint()
        self.done_at = None

    def batch(self, attempt: int) -> Operation:
        """Copy the next batch of the copy that belongs to `attempt`, the epoch at which
        BACKFILL was published (a checkpoint of another attempt starts the copy over)."""
        return Operation(None, None, self._batch(attempt), kind="backfill")

    def _batch(self, attempt: int) -> Steps:
        strategy = self.strategy
        durable = strategy.durable_checkpoint
        checkpoint: Checkpoint = (yield LoadCheckpoint()) if durable else self._memory
        if checkpoint.attempt != attempt:
            checkpoint = Checkpoint(attempt=attempt)
        if checkpoint.done:
            return Outcome("ok", {"copied": 0, "done": True})
        try:
            page = yield Scan(Side.OLD, checkpoint.cursor, self.throttle.batch_size)
        except ClusterError as exc:
            self.throttle.observe(None, error=True)
            return Outcome("fail", {"copied": 0, "done": False}, error=str(exc))
        done = page.next_cursor is None
        last = page.items[-1].id if page.items else checkpoint.cursor
        if page.next_cursor is not None:
            last = page.next_cursor
        advanced = Checkpoint(last, checkpoint.copied + len(page.items), done, attempt)
        if not strategy.checkpoint_after_write:
            yield from self._save(advanced, durable)
        try:
            records = tuple(s.as_record() for s in page.items if not s.deleted)
            tombstones = tuple(s.as_tombstone() for s in page.items if s.deleted)
            fenced = strategy.fenced_backfill
            if records:
                yield Upsert(Side.NEW, records, fenced)
            if tombstones and strategy.tombstone_copy:
                yield Delete(Side.NEW, tombstones, fenced)
        except ClusterError as exc:
            self.throttle.observe(None, error=True)
            return Outcome("fail", {"copied": 0, "done": False}, error=str(exc))
        if strategy.checkpoint_after_write:
            yield from self._save(advanced, durable)
        if done:
            self.done_at = yield Now()
        return Outcome("ok", {"copied": len(page.items), "done": done, "cursor": last})

    def _save(self, checkpoint: Checkpoint, durable: bool) -> Sub[None]:
        if durable:
            yield SaveCheckpoint(checkpoint)
        self._memory = checkpoint


# ---------------------------------------------------------------------------------------------
# The repair worker.


def repair_pass(
    limit: int = 256, lagged: frozenset[Side] = frozenset(), retired: bool = False
) -> Operation:
    """Re-apply, fenced, the latest state of every queued id to the side that may miss it.

    A repair written to a side in `lagged` (one whose searches see writes late) is noted in
    the visibility window too, as a client write would be, before its entry is removed.
    Once old is `retired` (DECOMMISSIONED) there is nothing left to repair: old is neither
    written nor read, and copying its state to new could only bring back what it missed, so
    the pass removes what it reads without copying."""
    return Operation(None, None, _repair_pass(limit, lagged, retired), kind="repair")


def _repair_pass(limit: int, lagged: frozenset[Side], retired: bool) -> Steps:
    now = yield Now()
    entries: list[RepairEntry] = yield NextRepairs(limit, now)
    if retired:
        if entries:
            yield RemoveRepairs(tuple(entries))
        return Outcome("ok", {"repaired": 0, "failed": 0, "dropped": len(entries)})
    done: list[RepairEntry] = []
    failed = 0
    for entry in entries:
        try:
            got = yield Get(entry.side.other, (entry.id,))
            stored = got.get(entry.id)
            if stored is not None:
                yield _copy(stored, entry.side)
                if entry.side in lagged:
                    now = yield Now()
                    yield NoteRecent(entry.side, (_recent(stored, now),))
        except ClusterError:
            failed += 1
            continue
        done.append(entry)
    if done:
        yield RemoveRepairs(tuple(done))
    return Outcome("ok", {"repaired": len(done), "failed": failed})


def _recent(stored: Stored, now: int) -> RecentWrite:
    if stored.deleted:
        return RecentWrite(stored.id, stored.version, True, now)
    return RecentWrite(stored.id, stored.version, False, now, stored.vector, dict(stored.metadata))


def _copy(stored: Stored, side: Side) -> Upsert | Delete:
    if stored.deleted:
        return Delete(side, (stored.as_tombstone(),), fenced=True)
    return Upsert(side, (stored.as_record(),), fenced=True)


# ---------------------------------------------------------------------------------------------
# The verification diff.


def verify(buckets: int = 64, page: int = 1000, queue_repairs: bool = True) -> Operation:
    """Counts and per-bucket version checksums of both sides; where buckets differ, the
    differing ids, re-read to rule out writes in flight, and queued for repair toward the side
    that is behind.
    Returns an `Outcome` whose value is a `Verification`."""
    return Operation(None, None, _verify(buckets, page, queue_repairs), kind="verify")


def _verify(buckets: int, page: int, queue_repairs: bool) -> Steps:
    try:
        old_count = yield Count(Side.OLD)
        new_count = yield Count(Side.NEW)
        old_sums = yield Checksums(Side.OLD, buckets)
        new_sums = yield Checksums(Side.NEW, buckets)
    except ClusterError as exc:
        return Outcome("fail", error=str(exc))
    now = yield Now()
    differing = {
        a.bucket
        for a, b in zip(old_sums, new_sums, strict=True)
        if (a.count, a.checksum) != (b.count, b.checksum)
    }
    live = old_count.live + old_count.tombstones, new_count.live + new_count.tombstones
    if not differing:
        return Outcome("ok", Verification(0, 0, live[0], live[1], now))
    try:
        old_ids = yield from _scan_buckets(Side.OLD, differing, buckets, page)
        new_ids = yield from _scan_buckets(Side.NEW, differing, buckets, page)
        candidates = sorted(
            i for i in old_ids.keys() | new_ids.keys() if old_ids.get(i) != new_ids.get(i)
        )
        persistent = yield from _recheck(candidates)
    except ClusterError as exc:
        return Outcome("fail", error=str(exc))
    if persistent and queue_repairs:
        yield AddRepairs(tuple(RepairEntry(i, side) for i, behind in persistent for side in behind))
    now = yield Now()
    ids = [i for i, _ in persistent]
    result = Verification(len(ids), len(differing), live[0], live[1], now, tuple(ids[:10]))
    return Outcome("ok", result)


def _scan_buckets(
    side: Side, wanted: set[int], buckets: int, page: int
) -> Sub[dict[str, tuple[int, bool]]]:
    found: dict[str, tuple[int, bool]] = {}
    cursor: str | None = None
    while True:
        result = yield Scan(side, cursor, page)
        for item in result.items:
            if bucket_of(item.id, buckets) in wanted:
                found[item.id] = (item.version, item.deleted)
        if result.next_cursor is None:
            return found
        cursor = result.next_cursor


def _recheck(candidates: list[str], chunk: int = 256) -> Sub[list[tuple[str, tuple[Side, ...]]]]:
    """Re-read old, then new: an id is still different only if the two copies disagree now.
    Each comes with the side or sides behind: the one that lacks it or holds the lower
    version (both, if the versions tie and only one is a delete). A repair entry says its
    side may miss an acknowledged write, and a read of the id then needs both sides; queued
    both ways, as it once was, the side that holds the newest version could no longer answer
    alone, and a get in BACKFILL failed while new was partitioned though old held the write
    (buggify seed 35 of eventually-consistent)."""
    persistent: list[tuple[str, tuple[Side, ...]]] = []
    for start in range(0, len(candidates), chunk):
        ids = tuple(candidates[start : start + chunk])
        old: Mapping[str, Stored] = yield Get(Side.OLD, ids)
        new: Mapping[str, Stored] = yield Get(Side.NEW, ids)
        for i in ids:
            a, b = old.get(i), new.get(i)
            if (a and (a.version, a.deleted)) != (b and (b.version, b.deleted)):
                persistent.append((i, _behind(a, b)))
    return persistent


def _behind(old: Stored | None, new: Stored | None) -> tuple[Side, ...]:
    if old is None or (new is not None and old.version < new.version):
        return (Side.OLD,)
    if new is None or new.version < old.version:
        return (Side.NEW,)
    return (Side.NEW, Side.OLD)


# ---------------------------------------------------------------------------------------------
# The noise floor.


def calibrate_noise_floor(queries: Sequence[Vector], k: int, threshold: float = 0.7) -> Operation:
    """Ask old each calibration query twice and the driver for the exact answer; the outcome's
    value is the measured `NoiseFloor` (see `compare`)."""
    return Operation(None, None, _calibrate(tuple(queries), k, threshold), kind="calibrate")


def _calibrate(queries: tuple[Vector, ...], k: int, threshold: float) -> Steps:
    olds: list[list[Hit]] = []
    agains: list[list[Hit]] = []
    exacts: list[tuple[str, ...]] = []
    for vector in queries:
        exact = yield Exact(Side.OLD, vector, k, None)
        if exact is None:
            continue
        try:
            first = yield Search(Side.OLD, vector, k, None)
            second = yield Search(Side.OLD, vector, k, None)
        except ClusterError:
            continue
        olds.append(first)
        agains.append(second)
        exacts.append(exact)
    return Outcome("ok", calibrate(olds, exacts, agains, k, threshold))
