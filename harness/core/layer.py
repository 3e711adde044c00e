"""The migration layer as one app instance runs it: client writes and reads in every phase.

Each public method returns an `Operation` whose steps yield requests (see `requests`). The
rules, for the safe strategy:

* A write goes to the phase's primary side first. If the primary refuses (`Unavailable`,
  `InvalidRequest`) the client gets `fail`: nothing was acknowledged. If it times out the
  client gets `info` (it may have applied), and the secondary is queued for repair so that
  the two sides agree on whatever happened.
* Then the secondary, fenced. If that fails the write is still acknowledged, because a
  durable repair entry now covers it; readers consult the repair log before trusting that
  side for that id.
* A read goes to the phase's read side; for an id with a pending repair it reads both sides
  and keeps the newer version (fenced versions only grow, so the higher one is the latest).
  When the read side cannot answer, it retries once (another replica), then falls back to
  the other side where the phase keeps that side current.
* Searches on a side whose writes become searchable late are corrected with the writes of
  the visibility window (`freshness`); in SHADOW a sample of searches is mirrored to new off
  the critical path and compared ANN-aware (`compare`).

The naive strategy switches those protections off, one by one (`strategy`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vecmig.harness.clusters.base import (
    ClusterError,
    Filter,
    Hit,
    InvalidRequest,
    Metric,
    Record,
    Side,
    Stored,
    Timeout,
    Tombstone,
    Unavailable,
    Vector,
    distance,
)
from vecmig.harness.core import compare as cmp
from vecmig.harness.core.freshness import correct_hits
from vecmig.harness.core.phases import ROUTES, InstanceView, Phase, Published, Route
from vecmig.harness.core.requests import (
    AddRepairs,
    Delete,
    Exact,
    Get,
    NoteRecent,
    Now,
    Operation,
    Outcome,
    PendingFor,
    RecentSince,
    Search,
    Steps,
    Sub,
    Upsert,
)
from vecmig.harness.core.state import RecentWrite, RepairEntry
from vecmig.harness.core.strategy import SAFE, Strategy
from vecmig.harness.core.versions import HybridLogicalClock


@dataclass(slots=True)
class LayerConfig:
    strategy: Strategy = SAFE
    metric: Metric = Metric.COSINE
    lagged_sides: frozenset[Side] = frozenset()
    """Sides whose searches see writes only after a delay."""
    visibility_window_ns: int = 2_000_000_000
    """How long a write may stay unsearchable on a lagged side (refresh interval plus margin)."""
    read_retries: int = 1
    mirror_sample_rate: float = 0.2
    mirror_phases: frozenset[Phase] = frozenset({Phase.SHADOW})


@dataclass(slots=True)
class Shared:
    """What every instance of the layer shares: the mirrored-read figures and the noise floor."""

    mirror: cmp.MirrorStats = field(default_factory=cmp.MirrorStats)
    noise: cmp.NoiseFloor | None = None
    fallbacks: int = 0
    last_fallback_to_old: int | None = None
    """When a read last fell back from new to old: the DECOMMISSIONED gate's soak restarts."""


class MigrationLayer:
    """One app instance's migration layer."""

    def __init__(
        self,
        view: InstanceView,
        config: LayerConfig | None = None,
        shared: Shared | None = None,
        node: int = 0,
    ) -> None:
        self.view = view
        self.config = config or LayerConfig()
        self.shared = shared or Shared()
        self.clock = HybridLogicalClock(node)
        self.background: deque[Operation] = deque()
        """Work to run off the critical path (mirrored reads); drivers drain it."""
        self._in_flight: dict[int, tuple[int, Phase, int]] = {}
        """op token -> (epoch, phase, start time) of each client operation still running."""
        self._next_token = 0
        self._lapsed_until: int | None = None
        """The lease expiry this instance let lapse last (it missed the config store)."""

    def learn(self, published: Published, now: int, lease_ns: int) -> bool:
        """Take a phase from the config store (see `InstanceView.learn`), noting whether the
        lease had lapsed meanwhile. Returns True if the phase changed."""
        if not self.view.may_serve(now):
            self._lapsed_until = self.view.lease_expires
        return self.view.learn(published, now, lease_ns)

    def acknowledgement(self, now: int | None = None) -> Published:
        """The phase this instance may acknowledge to the coordinator: the oldest one it still
        runs an operation under. An operation keeps the route of the phase it started in, so
        acknowledging a newer phase while it is in flight would let the migration step past
        it (an upsert routed to old only could land after the backfill copied its id).

        Operations started before the lease last lapsed stop counting once that lease has
        expired (`now`): the only request that takes their route, their first write, was
        issued while the lease held and, as every request is bounded below the lease margin,
        has been answered or timed out by then."""
        current = Published(self.view.phase, self.view.epoch)
        lapsed = self._lapsed_until
        counted = [
            (epoch, phase)
            for epoch, phase, started in self._in_flight.values()
            if not (
                lapsed is not None
                and now is not None
                and now >= lapsed
                and started < lapsed - self.view.margin_ns
            )
        ]
        if not counted:
            return current
        epoch, phase = min(counted)
        return Published(phase, epoch) if epoch < current.epoch else current

    def _tracked(self, steps: Steps) -> Steps:
        """Run a client operation, counted under the epoch whose route it takes."""
        token = self._next_token
        self._next_token += 1
        started: int = yield Now()
        self._in_flight[token] = (self.view.epoch, self.view.phase, started)
        try:
            return (yield from steps)
        finally:
            self._in_flight.pop(token, None)

    @property
    def strategy(self) -> Strategy:
        return self.config.strategy

    def route(self) -> Route:
        route = ROUTES[self.view.phase]
        if self.view.phase is Phase.CUTOVER and not self.strategy.write_old_after_cutover:
            return Route(reads=route.reads, primary=route.primary, secondary=None, fallback=None)
        return route

    # -- writes ------------------------------------------------------------------------------

    def upsert(self, record: Record) -> Operation:
        return Operation(
            "upsert",
            {"id": record.id, "version": record.version},
            self._tracked(self._write(record)),
        )

    def delete(self, record_id: str, version: int) -> Operation:
        return Operation(
            "delete",
            {"id": record_id, "version": version},
            self._tracked(self._write(Tombstone(record_id, version))),
        )

    def next_version(self, now: int) -> int:
        """A version for a write whose caller supplies none (hybrid logical clock)."""
        return self.clock.now(now)

    def _write(self, item: Record | Tombstone) -> Steps:
        value = {"id": item.id, "version": item.version}
        refused = yield from self._refuse_if_lease_expired()
        if refused is not None:
            return refused
        route = self.route()
        fenced = self.strategy.fenced_writes
        landed: list[tuple[Side, int]] = []
        try:
            applied = yield _write_request(route.primary, item, fenced)
        except (Unavailable, InvalidRequest) as exc:
            return Outcome("fail", value, error=f"{route.primary.value}: {exc}")
        except Timeout as exc:
            if route.secondary is not None and self.strategy.repair_log:
                yield AddRepairs((RepairEntry(item.id, route.secondary),))
            return Outcome("info", value, error=f"{route.primary.value}: {exc}")
        yield from self._landed(route.primary, item, applied, landed)
        notes: dict[str, Any] = {}
        if isinstance(applied, Mapping) and not applied.get(item.id, True):
            notes["superseded"] = True  # fencing kept a newer version: the client is told so
        if route.secondary is not None:
            try:
                applied = yield _write_request(route.secondary, item, fenced)
            except ClusterError as exc:
                if self.strategy.repair_log:
                    yield AddRepairs((RepairEntry(item.id, route.secondary),))
                    notes["repair_queued"] = route.secondary.value
                else:
                    notes["secondary_lost"] = f"{route.secondary.value}: {exc}"
            else:
                yield from self._landed(route.secondary, item, applied, landed)
        yield from self._note_recent(landed, item)
        return Outcome("ok", value, notes=notes)

    def _landed(
        self,
        side: Side,
        item: Record | Tombstone,
        applied: Any,
        landed: list[tuple[Side, int]],
    ) -> Sub[None]:
        """Remember when a write landed on a side whose searches lag, to note it in the window.

        The time is taken as the write returns, not when it is noted (after the other side's
        write, which may be slow): noted later, it would outlive a newer write to the same id
        in the window and be merged back over it. A write the side fenced out (it holds a newer
        version) is not noted at all."""
        if side not in self.config.lagged_sides or not self.strategy.freshness_overlay:
            return
        if isinstance(applied, Mapping) and not applied.get(item.id, True):
            return
        now = yield Now()
        landed.append((side, now))

    def _note_recent(
        self, landed: Sequence[tuple[Side, int]], item: Record | Tombstone
    ) -> Sub[None]:
        for side, time in landed:
            if isinstance(item, Record):
                write = RecentWrite(
                    item.id, item.version, False, time, item.vector, dict(item.metadata)
                )
            else:
                write = RecentWrite(item.id, item.version, True, time)
            yield NoteRecent(side, (write,))

    def _refuse_if_lease_expired(self) -> Sub[Outcome | None]:
        if not self.strategy.phase_protocol:
            return None
        now = yield Now()
        if self.view.may_serve(now):
            return None
        return Outcome(
            "fail",
            error=f"instance {self.view.name} has not heard from the config store in time "
            f"(lease expired at {self.view.lease_expires}); it refuses work until it catches up",
        )

    # -- reads -------------------------------------------------------------------------------

    def get(self, record_id: str) -> Operation:
        return Operation("get", {"id": record_id}, self._tracked(self._get(record_id)))

    def _get(self, record_id: str) -> Steps:
        refused = yield from self._refuse_if_lease_expired()
        if refused is not None:
            return Outcome(refused.type, None, error=refused.error)
        route = self.route()
        notes: dict[str, Any] = {}
        sides = [route.reads]
        if self._both_written(route) and self.strategy.repair_log:
            pending = yield PendingFor(((record_id, route.reads),))
            if pending:
                sides = [route.reads, route.reads.other]
                notes["read_both"] = True
        found: list[Stored | None] = []
        for side in sides:
            try:
                got = yield from self._read(side, Get(side, (record_id,)), route, notes)
            except ClusterError as exc:
                return Outcome("fail", None, error=str(exc), notes=notes)
            found.append(got.get(record_id))
        fallback = notes.get("fallback_side")
        if fallback is not None and len(sides) == 1 and self.strategy.repair_log:
            # The answer came from the fallback side: it is current only if no repair of this
            # id is pending there (a failed secondary write); otherwise it may be stale.
            behind = yield PendingFor(((record_id, Side(fallback)),))
            if behind:
                return Outcome(
                    "fail",
                    None,
                    error=f"{route.reads.value} cannot answer and {fallback} may miss the latest "
                    f"write of {record_id!r} (a repair is pending there)",
                    notes=notes,
                )
        newest = _newest(found)
        version = None if newest is None or newest.deleted else newest.version
        return Outcome("ok", {"id": record_id, "version": version}, notes=notes)

    def search(
        self, vector: Vector, k: int, filter: Filter | None = None, mirror_draw: float = 1.0
    ) -> Operation:
        """`mirror_draw` is a uniform number in [0, 1) drawn by the driver: the search is
        mirrored when it falls below the sample rate (the core draws no random numbers)."""
        invoke: dict[str, Any] = {"k": k}
        if filter:
            invoke["filter"] = dict(filter)
        return Operation(
            "search", invoke, self._tracked(self._search(vector, k, filter, mirror_draw))
        )

    def _search(self, vector: Vector, k: int, filter: Filter | None, mirror_draw: float) -> Steps:
        refused = yield from self._refuse_if_lease_expired()
        if refused is not None:
            return Outcome(refused.type, None, error=refused.error)
        route = self.route()
        notes: dict[str, Any] = {}
        try:
            hits = yield from self._read(
                route.reads, Search(route.reads, vector, k, filter), route, notes
            )
        except ClusterError as exc:
            return Outcome("fail", None, error=str(exc), notes=notes)
        side = notes.get("fallback_side", route.reads)
        side = Side(side)
        hits = yield from self._freshen(side, hits, vector, k, filter, route)
        if (
            self.view.phase in self.config.mirror_phases
            and mirror_draw < self.config.mirror_sample_rate
            and side is Side.OLD
        ):
            self.background.append(self.mirror(vector, k, filter, tuple(hits)))
        value: dict[str, Any] = {"results": [[h.id, h.version, rounded(h.score)] for h in hits]}
        exact = yield Exact(side, vector, k, filter)
        if exact is not None:
            value["exact"] = list(exact)
        return Outcome("ok", value, notes=notes)

    def _freshen(
        self,
        side: Side,
        hits: list[Hit],
        vector: Vector,
        k: int,
        filter: Filter | None,
        route: Route,
    ) -> Sub[list[Hit]]:
        """Correct hits for `side`'s visibility lag, then for its pending repairs.

        In that order: the visibility window holds only the writes that reached `side`, so a
        write whose copy to `side` failed (a delete, say) is not in it, and the window may merge
        back the version that write superseded. The pending-repair check then replaces every
        such id, the merged ones included, with the newer of the two sides' copies."""
        if side in self.config.lagged_sides and self.strategy.freshness_overlay:
            now = yield Now()
            recent = yield RecentSince(side, now - self.config.visibility_window_ns)
            hits = correct_hits(hits, recent, vector, k, self.config.metric, filter)
        if self._both_written(route) and self.strategy.repair_log and hits:
            pending = yield PendingFor(tuple((h.id, side) for h in hits))
            if pending:
                ids = tuple(sorted(i for i, _ in pending))
                try:
                    other = yield Get(side.other, ids)
                    mine = yield Get(side, ids)
                except ClusterError:
                    other, mine = {}, {}
                hits = _replace_versions(hits, ids, mine, other, vector, self.config.metric)
        return hits

    def _read(
        self, side: Side, request: Get | Search, route: Route, notes: dict[str, Any]
    ) -> Sub[Any]:
        """Carry out a read on `side`, retrying, then falling back where the phase allows."""
        attempts = 1 + (self.config.read_retries if self.strategy.read_fallback else 0)
        try:
            return (yield from _attempt(request, attempts))
        except InvalidRequest:
            raise
        except ClusterError:
            fallback = route.fallback
            if not (self.strategy.read_fallback and fallback is not None and fallback is not side):
                raise
        result = yield from _attempt(_retarget(request, fallback), attempts)
        notes["fallback_side"] = fallback.value
        self.shared.fallbacks += 1
        if fallback is Side.OLD:
            self.shared.last_fallback_to_old = yield Now()
        return result

    def _both_written(self, route: Route) -> bool:
        return route.secondary is not None

    # -- mirrored reads ------------------------------------------------------------------------

    def mirror(
        self, vector: Vector, k: int, filter: Filter | None, old_hits: tuple[Hit, ...]
    ) -> Operation:
        return Operation(None, None, self._mirror(vector, k, filter, old_hits), kind="mirror")

    def _mirror(
        self, vector: Vector, k: int, filter: Filter | None, old_hits: tuple[Hit, ...]
    ) -> Steps:
        stats = self.shared.mirror
        route = self.route()
        try:
            new_hits = yield Search(Side.NEW, vector, k, filter)
        except ClusterError as exc:
            stats.errors += 1
            return Outcome("fail", error=str(exc))
        new_hits = yield from self._freshen(Side.NEW, new_hits, vector, k, filter, route)
        comparison = cmp.compare(old_hits, new_hits, k)
        if comparison.version_mismatches:
            comparison = yield from self._recheck_versions(comparison)
        exact = yield Exact(Side.OLD, vector, k, filter)
        recalls = None
        if exact is not None:
            recalls = (
                cmp.recall_against(old_hits, exact, k),
                cmp.recall_against(new_hits, exact, k),
            )
        if comparison.version_mismatches and self.strategy.repair_log:
            # new is behind old on these ids after a re-read: not ANN noise but a lost or
            # missed write. Repair it both ways (the higher version wins on each side).
            yield AddRepairs(
                tuple(
                    RepairEntry(i, side)
                    for i in comparison.version_mismatches
                    for side in (Side.NEW, Side.OLD)
                )
            )
        noise = self.shared.noise
        discrepancy = (
            noise.is_discrepancy(comparison) if noise else bool(comparison.version_mismatches)
        )
        query: dict[str, Any] = {"k": k, "filter": dict(filter) if filter else None}
        line = cmp.discrepancy_line(query, old_hits, new_hits, comparison) if discrepancy else None
        stats.add(comparison, discrepancy, line, recalls)
        return Outcome("ok", {"discrepancy": discrepancy})

    def _recheck_versions(self, comparison: cmp.Comparison) -> Sub[cmp.Comparison]:
        """A version mismatch may be a write that landed between the two searches: re-read
        old, then new, and keep only the ids on which new is still behind."""
        ids = comparison.version_mismatches
        try:
            old = yield Get(Side.OLD, ids)
            new = yield Get(Side.NEW, ids)
        except ClusterError:
            return comparison
        still = tuple(
            i
            for i in ids
            if (o := old.get(i)) is not None
            and ((n := new.get(i)) is None or n.version < o.version)
        )
        return cmp.Comparison(
            comparison.k, comparison.overlap, comparison.rbo, comparison.mean_score_delta, still
        )


# ---------------------------------------------------------------------------------------------


def rounded(score: float) -> float:
    """Scores go into the history rounded, so that a replayed run writes the same bytes."""
    return round(float(score), 6)


def _attempt(request: Get | Search, attempts: int) -> Sub[Any]:
    """Carry out a read, trying again on a side error (the next try lands on another replica);
    the last error propagates."""
    for attempt in range(attempts):
        try:
            return (yield request)
        except InvalidRequest:
            raise
        except ClusterError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("attempts must be at least 1")


def _write_request(side: Side, item: Record | Tombstone, fenced: bool) -> Upsert | Delete:
    if isinstance(item, Record):
        return Upsert(side, (item,), fenced)
    return Delete(side, (item,), fenced)


def _retarget(request: Get | Search, side: Side) -> Get | Search:
    if isinstance(request, Get):
        return Get(side, request.ids)
    return Search(side, request.vector, request.k, request.filter)


def _newest(found: Sequence[Stored | None]) -> Stored | None:
    present = [s for s in found if s is not None]
    if not present:
        return None
    return max(present, key=lambda s: s.version)


def _replace_versions(
    hits: list[Hit],
    ids: Sequence[str],
    mine: Mapping[str, Stored],
    other: Mapping[str, Stored],
    vector: Vector,
    metric: Metric,
) -> list[Hit]:
    """Hits with each pending id replaced by the newer of the two sides' copies (or dropped)."""
    replaced: dict[str, Hit | None] = {}
    for record_id in ids:
        newest = _newest([mine.get(record_id), other.get(record_id)])
        if newest is None or newest.deleted or newest.vector is None:
            replaced[record_id] = None
            continue
        query = np.asarray(vector, dtype=np.float32)
        d = float(distance(metric, query, newest.vector[np.newaxis, :])[0])
        replaced[record_id] = Hit(record_id, newest.version, d)
    out = [replaced.get(h.id, h) if h.id in replaced else h for h in hits]
    return sorted((h for h in out if h is not None), key=lambda h: (h.score, h.id))
