"""The migration layer as one app instance runs it: client writes and reads in every phase.

Each public method returns an `Operation` whose steps yield requests (see `requests`). The
rules, for the safe strategy:

* A write goes to the phase's primary side first. If the primary refuses (`Unavailable`,
  `InvalidRequest`) the client gets `fail`: nothing was acknowledged. If it times out the
  client gets `info` (it may have applied), and the secondary is queued for repair so that
  the two sides agree on whatever happened (an *indeterminate* entry: nobody was told the
  write succeeded). A write the primary fenced out (it holds a newer version) is `ok` with
  `notes["superseded"]`.
* Then the secondary, fenced. If that fails the write is still acknowledged, because a
  durable repair entry now covers it; readers consult the repair log before trusting that
  side for that id.
* A read goes to the phase's read side; for an id with a pending repair it reads both sides
  and keeps the newer version (fenced versions only grow, so the higher one is the latest).
  When a side cannot answer, it retries once (another replica); an answer then stands alone
  only from a side the phase reads or falls back to that misses no acknowledged write of the
  id (no determinate repair pending there).
* Searches on a side whose writes become searchable late re-read their hits by id before
  answering (the visibility window's notes only add candidates, for recall), so no clock or
  timing decides what they return; in SHADOW a sample of searches is mirrored to new off the
  critical path and compared ANN-aware (`compare`).

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
    matches,
    searchable,
)
from vecmig.harness.core import compare as cmp
from vecmig.harness.core.freshness import correct_hits
from vecmig.harness.core.phases import ROUTES, InstanceView, Phase, Published, Route
from vecmig.harness.core.requests import (
    AddIntent,
    AddRepairs,
    ClearIntent,
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
    max_clock_skew_ns: int = 0
    """The declared bound on how far instances' clocks may stray: notes in the visibility
    window are stamped by the writer's clock and read against the reader's (recall only)."""
    lease_margin_ns: int = 500_000_000
    """How long before its lease runs out an instance stops serving (see `phases.lease_rules`)."""
    intent_hold_ns: int = 5_000_000_000
    """How long the intent a write queues for its secondary is left alone (see `_write`):
    longer than any write takes (every request is bounded by the driver's timeout), plus
    twice the clock-skew bound, since the repair worker reads it on another clock."""
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
        view.margin_ns = self.config.lease_margin_ns
        self.shared = shared or Shared()
        self.clock = HybridLogicalClock(node)
        self.background: deque[Operation] = deque()
        """Work to run off the critical path (mirrored reads); drivers drain it."""
        self._in_flight: dict[int, tuple[int, Phase, int]] = {}
        """op token -> (epoch, phase, start time) of each client operation still running."""
        self._next_token = 0
        self._lapsed_until: int | None = None
        """The lease expiry this instance let lapse last (it missed the config store)."""

    def learn(self, published: Published, now: int) -> bool:
        """Take a phase from the config store (see `InstanceView.learn`), noting whether the
        lease had lapsed meanwhile. Returns True if the phase changed.

        Then acknowledge `acknowledgement(now)` to the coordinator, and `renew` the lease only
        if the coordinator granted it (`Coordinator.ack`)."""
        if not self.view.may_serve(now):
            self._lapsed_until = self.view.lease_expires
        return self.view.learn(published)

    def renew(self, now: int, lease_ns: int) -> None:
        """The coordinator granted the lease asked for at `now` (this instance's clock)."""
        self.view.renew(now, lease_ns)

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
        if not self.strategy.oldest_epoch_ack:
            return current
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
            {"id": record.id, "version": record.version, "fields": dict(record.metadata)},
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
        notes: dict[str, Any] = {}
        intent = yield from self._intent(item, route)
        if intent is not None:
            late = yield from self._too_late_to_write(*intent)
            if late is not None:
                return Outcome("fail", value, error=late.error, notes=late.notes)
            intent_id: int | None = intent[0]
        else:
            intent_id = None
        try:
            applied = yield _write_request(route.primary, item, fenced)
        except (Unavailable, InvalidRequest) as exc:
            if intent_id is not None:
                yield ClearIntent(intent_id)
            return Outcome("fail", value, error=f"{route.primary.value}: {exc}")
        except Timeout as exc:
            # It may land yet: the secondary is repaired to whatever the primary ends up with
            # (a repair due now, in place of the intent). Nobody was told the write succeeded,
            # so the entry is indeterminate.
            if route.secondary is not None and self.strategy.repair_on_timeout:
                yield AddRepairs((RepairEntry(item.id, route.secondary, indeterminate=True),))
            if intent_id is not None:
                yield ClearIntent(intent_id)
            yield from self._landed(route.primary, item, None, landed)
            yield from self._note_recent(landed, item)
            return Outcome("info", value, error=f"{route.primary.value}: {exc}")
        if _superseded(applied, item.id):
            notes["superseded"] = True
        yield from self._landed(route.primary, item, applied, landed)
        if route.secondary is not None:
            yield from self._write_secondary(item, route.secondary, fenced, landed, notes)
            if intent_id is not None:
                yield ClearIntent(intent_id)
        yield from self._note_recent(landed, item)
        return Outcome("ok", value, notes=notes)

    def _write_secondary(
        self,
        item: Record | Tombstone,
        side: Side,
        fenced: bool,
        landed: list[tuple[Side, int]],
        notes: dict[str, Any],
    ) -> Sub[None]:
        """The write to the phase's secondary side, once the primary took it. If it fails, a
        repair entry re-applies it later, or, where the strategy keeps none, it is lost."""
        try:
            applied = yield _write_request(side, item, fenced)
        except ClusterError as exc:
            timed_out = isinstance(exc, Timeout)
            s = self.strategy
            if s.repair_on_timeout if timed_out else s.repair_on_refusal:
                yield AddRepairs((RepairEntry(item.id, side),))
                notes["repair_queued"] = side.value
            else:
                notes["secondary_lost"] = f"{side.value}: {exc}"
            if timed_out:
                yield from self._landed(side, item, None, landed)
        else:
            yield from self._landed(side, item, applied, landed)

    def _intent(self, item: Record | Tombstone, route: Route) -> Sub[tuple[int, int] | None]:
        """Before a write to two sides, note the intent to write the secondary, held for as
        long as the write may take: write-ahead, so that an instance dying between the primary
        and the secondary write leaves a durable note behind, which the repair worker takes
        as a repair of the secondary once the hold ends. The write clears its own intent when
        it is done (a failed secondary has queued its repair by then). Readers see the intent
        as pending meanwhile and read both sides, which is right for an id being written."""
        if route.secondary is None or not self.strategy.write_intents:
            return None
        now = yield Now()
        hold_until = now + self.config.intent_hold_ns
        intent: int = yield AddIntent(item.id, route.secondary, hold_until)
        return intent, hold_until

    def _too_late_to_write(self, intent: int, hold_until: int) -> Sub[Outcome | None]:
        """After the intent is noted and before anything is written: the state store may have
        taken its time (its requests have no deadline of their own). If the instance's lease
        lapsed meanwhile, the coordinator may have counted it out; if so little of the
        intent's hold is left that the primary write could land after it ends (a request
        timeout and twice the skew bound: the lease margin), the repair worker may already
        have taken the intent, copied the primary's older version and cleared it, and an
        instance that died after this primary write would leave the sides apart with nothing
        to repair them (the zoo's state machine found that run). Either way, nothing has been
        written yet: the intent is withdrawn and the write fails."""
        refused = yield from self._refuse_if_lease_expired()
        now = yield Now()
        if refused is None and now < hold_until - self.config.lease_margin_ns:
            return None
        yield ClearIntent(intent)
        if refused is not None:
            return refused
        return Outcome(
            "fail",
            error=f"instance {self.view.name} noted the intent of this write too late to make "
            f"it within the intent's hold (until {hold_until}); nothing was written",
            notes={"refused": "intent-hold"},
        )

    def _landed(
        self,
        side: Side,
        item: Record | Tombstone,
        applied: Any,
        landed: list[tuple[Side, int]],
    ) -> Sub[None]:
        """Remember when a write reached a side whose searches lag, to note it in the window
        (`applied` None: it timed out and may have landed).

        The notes only add candidates to a search on that side, which re-reads every hit by id
        before answering (`_freshen`), so a note never decides what a read returns. The time
        is taken as the write returns, not when it is noted (after the other side's write,
        which may be slow), so that the note ages out when the write would have. A write the
        side fenced out (it holds a newer version) is not noted."""
        if side not in self.config.lagged_sides or not self.strategy.freshness_overlay:
            return
        if applied is not None and _superseded(applied, item.id):
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
        if not self.strategy.lease_check:
            return None
        now = yield Now()
        if self.view.may_serve(now):
            return None
        return Outcome(
            "fail",
            error=f"instance {self.view.name} has not heard from the config store in time "
            f"(lease expired at {self.view.lease_expires}); it refuses work until it catches up",
            # Nothing was sent: a load balancer may send the request to another instance.
            notes={"refused": "lease"},
        )

    # -- reads -------------------------------------------------------------------------------

    def get(self, record_id: str) -> Operation:
        return Operation("get", {"id": record_id}, self._tracked(self._get(record_id)))

    def _get(self, record_id: str) -> Steps:
        refused = yield from self._refuse_if_lease_expired()
        if refused is not None:
            return Outcome(refused.type, None, error=refused.error, notes=refused.notes)
        route = self.route()
        notes: dict[str, Any] = {}
        pending: Mapping[tuple[str, Side], bool] = {}
        if self._both_written(route) and self._consults_repairs():
            pending = yield PendingFor(((record_id, route.reads), (record_id, route.reads.other)))
        sides = [route.reads]
        if (record_id, route.reads) in pending and self.strategy.read_both:
            # The read side may miss the latest write of this id: read both, keep the newer.
            sides.append(route.reads.other)
            notes["read_both"] = True
        answers: dict[Side, Stored | None] = {}
        errors: list[str] = []
        for side in sides:
            try:
                got = yield from _attempt(Get(side, (record_id,)), self._attempts())
            except InvalidRequest as exc:
                return Outcome("fail", None, error=str(exc), notes=notes)
            except ClusterError as exc:
                errors.append(str(exc))
                continue
            answers[side] = got.get(record_id)
        if len(answers) < len(sides):
            usable = yield from self._usable_answers(
                record_id, route, sides, pending, answers, errors
            )
            if not usable:
                return Outcome("fail", None, error="; ".join(errors), notes=notes)
            if route.reads not in usable:
                yield from self._fell_back(usable[0], notes)
            answers = {s: answers[s] for s in usable}
        newest = _newest(list(answers.values()))
        version = None if newest is None or newest.deleted else newest.version
        return Outcome("ok", {"id": record_id, "version": version}, notes=notes)

    def _usable_answers(
        self,
        record_id: str,
        route: Route,
        sides: Sequence[Side],
        pending: Mapping[tuple[str, Side], bool],
        answers: dict[Side, Stored | None],
        errors: list[str],
    ) -> Sub[list[Side]]:
        """A side did not answer a get: the sides whose answers may stand alone. Only a side
        this phase may read that misses no acknowledged write of the id; when none answered,
        the fallback side is asked, if it is current (its answer is added to `answers`)."""
        usable = [s for s in answers if self._current(s, record_id, route, pending)]
        fallback = self._fallback(route)
        if usable or fallback is None or fallback in sides:
            return usable
        if not self._current(fallback, record_id, route, pending):
            errors.append(
                f"{fallback.value} may miss the latest write of {record_id!r} "
                "(a repair is pending there)"
            )
            return usable
        try:
            got = yield from _attempt(Get(fallback, (record_id,)), self._attempts())
        except ClusterError as exc:
            errors.append(str(exc))
            return usable
        answers[fallback] = got.get(record_id)
        return [fallback]

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
            return Outcome(refused.type, None, error=refused.error, notes=refused.notes)
        route = self.route()
        notes: dict[str, Any] = {}
        sides = [route.reads]
        fallback = self._fallback(route)
        if fallback is not None:
            sides.append(fallback)
        errors: list[str] = []
        for side in sides:
            try:
                hits = yield from _attempt(Search(side, vector, k, filter), self._attempts())
                hits = yield from self._freshen(side, hits, vector, k, filter, route)
            except InvalidRequest as exc:
                return Outcome("fail", None, error=str(exc), notes=notes)
            except ClusterError as exc:
                errors.append(str(exc))
                continue
            if side is not route.reads:
                yield from self._fell_back(side, notes)
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
        return Outcome("fail", None, error="; ".join(errors), notes=notes)

    def _freshen(
        self,
        side: Side,
        hits: list[Hit],
        vector: Vector,
        k: int,
        filter: Filter | None,
        route: Route,
    ) -> Sub[list[Hit]]:
        """Hits of a search on `side` that are true of what the sides hold now.

        On a side whose searches lag, the hits may be versions since superseded or deleted,
        and the freshest writes may be missing. The writes of the visibility window are merged
        in (they only add candidates, for recall), then every remaining hit is re-read by id,
        which such a side answers at once: a hit stands at the version the side now holds, if
        that is live and still matches the filter. This judges every hit against the side
        itself, so it holds whatever the clocks, and for writes that timed out, were fenced,
        or came from a repair or the backfill. If the re-read fails, so does this side.

        Then pending repairs: a side may miss a write whose copy to it failed. For those ids
        the other side is read and the newer version kept; if it cannot be read, a hit whose
        entry is determinate (an acknowledged write may be missing) is dropped."""
        metric = self.config.metric
        if side in self.config.lagged_sides and self.strategy.freshness_overlay:
            now = yield Now()
            lookback = self.config.visibility_window_ns + 2 * self.config.max_clock_skew_ns
            recent = yield RecentSince(side, now - lookback)
            hits = correct_hits(hits, recent, vector, k, metric, filter)
            if hits:
                ids = tuple(h.id for h in hits)
                held = yield from _attempt(Get(side, ids), self._attempts())
                hits = _as_held(hits, held, vector, metric, filter)
        if self._both_written(route) and self.strategy.read_both and hits:
            pending = yield PendingFor(tuple((h.id, side) for h in hits))
            if pending:
                ids = tuple(sorted(i for i, _ in pending))
                try:
                    other = yield from _attempt(Get(side.other, ids), self._attempts())
                except ClusterError:
                    hits = [h for h in hits if pending.get((h.id, side), True)]
                else:
                    hits = _newer_of(hits, ids, other, vector, metric, filter)
        return hits

    def _attempts(self) -> int:
        return 1 + (self.config.read_retries if self.strategy.read_retry else 0)

    def _fallback(self, route: Route) -> Side | None:
        """The side a read may fall back to in this phase, if any."""
        fallback = route.fallback
        if not self.strategy.read_fallback or fallback is None or fallback is route.reads:
            return None
        return fallback

    def _current(
        self, side: Side, record_id: str, route: Route, pending: Mapping[tuple[str, Side], bool]
    ) -> bool:
        """Whether `side` alone may answer a read of `record_id`: a side this phase reads (or
        falls back to) that misses no acknowledged write of it (no determinate repair)."""
        if side is not route.reads and side is not self._fallback(route):
            return False
        return pending.get((record_id, side), True) or not self.strategy.fallback_currency_check

    def _consults_repairs(self) -> bool:
        return self.strategy.read_both or self.strategy.fallback_currency_check

    def _fell_back(self, side: Side, notes: dict[str, Any]) -> Sub[None]:
        notes["fallback_side"] = side.value
        self.shared.fallbacks += 1
        if side is Side.OLD:
            self.shared.last_fallback_to_old = yield Now()

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
            new_hits = yield from self._freshen(Side.NEW, new_hits, vector, k, filter, route)
        except ClusterError as exc:
            stats.errors += 1
            return Outcome("fail", error=str(exc))
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
        if comparison.version_mismatches and self.strategy.mirror_repairs:
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
        stray = recalls is not None and noise is not None and recalls[0] < noise.threshold
        stats.add(comparison, discrepancy, line, recalls, stray)
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


def _superseded(applied: Any, record_id: str) -> bool:
    """Whether a fenced write was refused because the side holds a newer version (the ports
    answer a write with {id: applied})."""
    return isinstance(applied, Mapping) and not applied.get(record_id, True)


def _newest(found: Sequence[Stored | None]) -> Stored | None:
    present = [s for s in found if s is not None]
    if not present:
        return None
    return max(present, key=lambda s: s.version)


def _hit(stored: Stored, query: Vector, metric: Metric) -> Hit:
    assert stored.vector is not None
    d = float(
        distance(metric, np.asarray(query, dtype=np.float32), stored.vector[np.newaxis, :])[0]
    )
    return Hit(stored.id, stored.version, d)


def _live_match(stored: Stored | None, filter: Filter | None) -> bool:
    return (
        stored is not None
        and not stored.deleted
        and searchable(stored.vector)
        and matches(stored.metadata, filter)
    )


def _as_held(
    hits: Sequence[Hit],
    held: Mapping[str, Stored],
    vector: Vector,
    metric: Metric,
    filter: Filter | None,
) -> list[Hit]:
    """The hits as the side holds them now: at the stored version (re-scored when it changed),
    dropped when deleted, gone or no longer matching the filter."""
    out: list[Hit] = []
    for hit in hits:
        stored = held.get(hit.id)
        if not _live_match(stored, filter):
            continue
        assert stored is not None
        out.append(hit if stored.version == hit.version else _hit(stored, vector, metric))
    return sorted(out, key=lambda h: (h.score, h.id))


def _newer_of(
    hits: Sequence[Hit],
    ids: Sequence[str],
    other: Mapping[str, Stored],
    vector: Vector,
    metric: Metric,
    filter: Filter | None,
) -> list[Hit]:
    """Hits with each of `ids` replaced by the other side's copy where that is newer (dropped
    when the newer copy is a delete or no longer matches the filter)."""
    wanted = set(ids)
    out: list[Hit] = []
    for hit in hits:
        stored = other.get(hit.id) if hit.id in wanted else None
        if stored is None or stored.version <= hit.version:
            out.append(hit)
        elif _live_match(stored, filter):
            out.append(_hit(stored, vector, metric))
    return sorted(out, key=lambda h: (h.score, h.id))
