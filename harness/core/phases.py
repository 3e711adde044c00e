"""The migration's phases, as a transition table, and the protocol that moves app instances
through them.

Theory of operation
-------------------
The migration walks OLD_ONLY -> DUAL_WRITE -> BACKFILL -> SHADOW -> CUTOVER -> DECOMMISSIONED.
ROLLBACK takes CUTOVER back to SHADOW; ABORT takes DUAL_WRITE, BACKFILL or SHADOW back to
OLD_ONLY. `TRANSITIONS` is the whole machine: a step that is not in it raises `PhaseError`
naming the step and the phase. `ROUTES` says where each phase reads and writes.

Real apps run many instances, and each learns the phase from a config store, late. As in F1's
online schema change, at most two *adjacent* phases may be live at once: the `Coordinator`
publishes phase N+1 (a new epoch) only after every live instance has acknowledged epoch N, or
its lease expired. An instance holds a lease while it keeps in touch with the config store; an
instance whose lease ran out must stop serving until it has caught up (see `InstanceView`), so
the coordinator may count it out without breaking the rule.

Time comes in as arguments (nanoseconds on the caller's clock); nothing here reads a clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from vecmig.harness.clusters.base import Side


class Phase(StrEnum):
    OLD_ONLY = "OLD_ONLY"
    DUAL_WRITE = "DUAL_WRITE"
    BACKFILL = "BACKFILL"
    SHADOW = "SHADOW"
    CUTOVER = "CUTOVER"
    DECOMMISSIONED = "DECOMMISSIONED"


class Step(StrEnum):
    ADVANCE = "advance"
    ROLLBACK = "rollback"
    ABORT = "abort"


TRANSITIONS: Mapping[Phase, Mapping[Step, Phase]] = {
    Phase.OLD_ONLY: {Step.ADVANCE: Phase.DUAL_WRITE},
    Phase.DUAL_WRITE: {Step.ADVANCE: Phase.BACKFILL, Step.ABORT: Phase.OLD_ONLY},
    Phase.BACKFILL: {Step.ADVANCE: Phase.SHADOW, Step.ABORT: Phase.OLD_ONLY},
    Phase.SHADOW: {Step.ADVANCE: Phase.CUTOVER, Step.ABORT: Phase.OLD_ONLY},
    Phase.CUTOVER: {Step.ADVANCE: Phase.DECOMMISSIONED, Step.ROLLBACK: Phase.SHADOW},
    Phase.DECOMMISSIONED: {},
}

ORDER: tuple[Phase, ...] = tuple(Phase)


@dataclass(frozen=True, slots=True)
class Route:
    """Where a phase sends traffic. `secondary` is None when only one side is written."""

    reads: Side
    primary: Side
    secondary: Side | None
    fallback: Side | None
    """The side a read may fall back to when `reads` cannot serve it (if that side is current)."""


ROUTES: Mapping[Phase, Route] = {
    Phase.OLD_ONLY: Route(reads=Side.OLD, primary=Side.OLD, secondary=None, fallback=None),
    Phase.DUAL_WRITE: Route(reads=Side.OLD, primary=Side.OLD, secondary=Side.NEW, fallback=None),
    Phase.BACKFILL: Route(reads=Side.OLD, primary=Side.OLD, secondary=Side.NEW, fallback=None),
    Phase.SHADOW: Route(reads=Side.OLD, primary=Side.OLD, secondary=Side.NEW, fallback=Side.NEW),
    Phase.CUTOVER: Route(reads=Side.NEW, primary=Side.NEW, secondary=Side.OLD, fallback=Side.OLD),
    Phase.DECOMMISSIONED: Route(reads=Side.NEW, primary=Side.NEW, secondary=None, fallback=None),
}


class PhaseError(Exception):
    """A step that the transition table or the adjacent-phase protocol does not allow."""


def next_phase(phase: Phase, step: Step) -> Phase:
    try:
        return TRANSITIONS[phase][step]
    except KeyError:
        allowed = ", ".join(f"{s.value} -> {p.value}" for s, p in TRANSITIONS[phase].items())
        raise PhaseError(
            f"cannot {step.value} from {phase.value}; allowed from {phase.value}: "
            f"{allowed or 'nothing (the migration is over)'}"
        ) from None


def adjacent(a: Phase, b: Phase) -> bool:
    """Whether two phases may be live at once: equal, or one step apart in either direction."""
    if a == b:
        return True
    return b in TRANSITIONS[a].values() or a in TRANSITIONS[b].values()


# ---------------------------------------------------------------------------------------------
# The coordinator: the controller's side of the protocol.


@dataclass(frozen=True, slots=True)
class Published:
    """What the config store holds: the current phase and its epoch."""

    phase: Phase
    epoch: int


@dataclass(slots=True)
class _Member:
    acked_epoch: int
    acked_phase: Phase
    lease_expires: int


class Coordinator:
    """Publishes phases and tracks which epoch each app instance has acknowledged.

    `publish` refuses (with the names of the instances it waits for) while some live instance
    has not acknowledged the current epoch. An instance's acknowledgement renews its lease.
    """

    def __init__(
        self,
        phase: Phase = Phase.OLD_ONLY,
        epoch: int = 0,
        lease_ns: int = 5_000_000_000,
        bind_leases: bool = True,
    ) -> None:
        """`bind_leases=False` is the ablation `lease-epoch-binding`: a lapsed lease is
        renewed whatever epoch the instance acknowledges."""
        self.published = Published(phase, epoch)
        self.lease_ns = lease_ns
        self.bind_leases = bind_leases
        self._members: dict[str, _Member] = {}
        self._previous: Phase = phase

    # -- instances ---------------------------------------------------------------------------

    def join(self, instance: str, now: int) -> Published:
        """An instance starts (or restarts): it learns the current phase and holds a lease."""
        self._members[instance] = _Member(
            self.published.epoch, self.published.phase, now + self.lease_ns
        )
        return self.published

    def ack(self, instance: str, seen: Published, now: int) -> bool:
        """An instance reports the phase it now runs and asks to renew its lease. Returns
        whether the lease was granted; an instance may serve only under a granted lease.

        A lease is bound to the epoch it was granted under. While it holds, renewing it is
        granted whatever the instance acknowledges (the coordinator waits for it). Once it has
        lapsed, the coordinator may have counted the instance out and published past it, so a
        new lease is granted only to an instance that acknowledges the current epoch: one that
        comes back with an older phase (a late config, a partition from the store) must catch
        up before it serves again, or two non-adjacent phases would be live at once."""
        member = self._members.get(instance)
        lapsed = member is None or member.lease_expires <= now
        if lapsed and self.bind_leases and seen.epoch != self.published.epoch:
            return False
        if member is None:
            self._members[instance] = _Member(seen.epoch, seen.phase, now + self.lease_ns)
            return True
        if seen.epoch >= member.acked_epoch or lapsed:
            member.acked_epoch, member.acked_phase = seen.epoch, seen.phase
        member.lease_expires = now + self.lease_ns
        return True

    def leave(self, instance: str) -> None:
        self._members.pop(instance, None)

    # -- the state, for a config store that keeps it -----------------------------------------

    def to_json(self) -> dict[str, Any]:
        """Everything the coordinator knows, as JSON: a config store keeps this and runs each
        decision (`ack`, `publish`, ...) on a copy restored from it, inside one transaction
        and on the store's clock, so that every process takes the same decisions."""
        return {
            "phase": self.published.phase.value,
            "epoch": self.published.epoch,
            "previous": self._previous.value,
            "lease_ns": self.lease_ns,
            "bind_leases": self.bind_leases,
            "members": {
                name: [m.acked_epoch, m.acked_phase.value, m.lease_expires]
                for name, m in sorted(self._members.items())
            },
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Coordinator:
        """The coordinator `to_json` described. Raises `ValueError` naming what is wrong."""
        try:
            coordinator = cls(
                Phase(data["phase"]),
                int(data["epoch"]),
                lease_ns=int(data["lease_ns"]),
                bind_leases=bool(data["bind_leases"]),
            )
            coordinator._previous = Phase(data.get("previous", data["phase"]))
            for name, (epoch, phase, expires) in dict(data["members"]).items():
                coordinator._members[str(name)] = _Member(int(epoch), Phase(phase), int(expires))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a coordinator's state ({type(exc).__name__}: {exc})") from None
        return coordinator

    def live_instances(self, now: int) -> dict[str, Published]:
        """Instances whose lease has not expired, with the phase each acknowledged."""
        return {
            name: Published(m.acked_phase, m.acked_epoch)
            for name, m in self._members.items()
            if m.lease_expires > now
        }

    def waiting_for(self, now: int) -> list[str]:
        """Live instances that have not yet acknowledged the current epoch."""
        return sorted(
            name
            for name, seen in self.live_instances(now).items()
            if seen.epoch < self.published.epoch
        )

    # -- publishing --------------------------------------------------------------------------

    def can_publish(self, now: int) -> tuple[bool, str]:
        waiting = self.waiting_for(now)
        if waiting:
            return False, (
                f"waiting for {len(waiting)} instance(s) to acknowledge "
                f"{self.published.phase.value} (epoch {self.published.epoch}): "
                + ", ".join(waiting[:5])
                + (" ..." if len(waiting) > 5 else "")
            )
        return True, "every live instance runs the current epoch"

    def publish(self, step: Step, now: int, *, wait_for_acks: bool = True) -> Published:
        """Move to the phase `step` leads to, as a new epoch.

        With `wait_for_acks` (the safe protocol) this refuses while an instance still runs an
        older epoch; the naive plan flips the config value without waiting.
        """
        target = next_phase(self.published.phase, step)
        if wait_for_acks:
            ok, why = self.can_publish(now)
            if not ok:
                raise PhaseError(f"cannot {step.value} to {target.value}: {why}")
        self._previous = self.published.phase
        self.published = Published(target, self.published.epoch + 1)
        return self.published

    def adjacency_violations(self, now: int) -> list[str]:
        """Live instances more than one step behind the published phase: always empty under
        the safe protocol, since each step waits for every acknowledgement of the last one.
        (Epochs, not phase names, decide: after an ABORT, OLD_ONLY and BACKFILL are one step
        apart and may be live together; before the backfill starts they may not.)"""
        published = self.published
        return [
            f"{name} runs {seen.phase.value} (epoch {seen.epoch}) while "
            f"{published.phase.value} (epoch {published.epoch}) is published"
            for name, seen in sorted(self.live_instances(now).items())
            if seen.epoch < published.epoch - 1
        ]


# ---------------------------------------------------------------------------------------------
# The instance's side of the protocol.


@dataclass(slots=True)
class InstanceView:
    """What one app instance believes: the phase it runs and how long its lease holds.

    The lease is trusted only until `lease_expires - margin_ns` on the instance's own clock.
    The margin covers what may still land after the instance stops issuing requests (every
    request is bounded by a timeout below the margin) and how far the instance's clock may
    jump back meanwhile (clock skew): see `lease_rules`.
    """

    name: str
    phase: Phase
    epoch: int
    lease_expires: int
    margin_ns: int = 500_000_000

    def learn(self, published: Published) -> bool:
        """Take a phase from the config store. Returns True if the phase changed. Learning a
        phase does not renew the lease: only the coordinator grants that (`renew`)."""
        changed = published.epoch > self.epoch
        if changed:
            self.phase, self.epoch = published.phase, published.epoch
        return changed

    def renew(self, now: int, lease_ns: int) -> None:
        """The coordinator granted a lease to an acknowledgement sent at `now` (this instance's
        clock, taken before the request left, so the lease never outlives the coordinator's)."""
        self.lease_expires = max(self.lease_expires, now + lease_ns)

    def may_serve(self, now: int) -> bool:
        return now < self.lease_expires - self.margin_ns

    @property
    def route(self) -> Route:
        return ROUTES[self.phase]


def lease_rules(
    *, lease_ns: int, poll_ns: int, margin_ns: int, request_timeout_ns: int, max_skew_ns: int
) -> list[str]:
    """What the lease protocol needs of its settings, as the broken rules (empty: safe).

    * A request issued just before an instance stops serving must land before the coordinator
      counts the instance out, even if the instance's clock jumps back by up to twice the skew
      bound meanwhile (from +bound to -bound): margin >= request timeout + 2 x max skew.
    * An instance that polls on time must renew its lease before it stops serving, even if
      its clock jumps ahead by up to twice the skew bound between two polls (from -bound to
      +bound; the instance counts its lease on its own clock): lease > poll interval + margin
      + 2 x max skew, or it refuses work between polls and its readiness check fails. A
      BUGGIFY sweep found that run (node-lost-cutover, seed 1323: a clock-skew fault of
      -250 ms ended, the lone instance's clock jumped 250 ms ahead, and its 264 ms of lease
      past the margin no longer covered the 100 ms poll: a read found no instance ready).
    """
    broken = []
    if margin_ns < request_timeout_ns + 2 * max_skew_ns:
        broken.append(
            f"the lease margin ({margin_ns / 1e6:g} ms) must be at least the request timeout "
            f"({request_timeout_ns / 1e6:g} ms) plus twice the clock-skew bound "
            f"({max_skew_ns / 1e6:g} ms): a write sent just before the instance stops serving "
            "could land after the coordinator counted it out"
        )
    if lease_ns <= poll_ns + margin_ns + 2 * max_skew_ns:
        broken.append(
            f"the lease ({lease_ns / 1e6:g} ms) must exceed the poll interval "
            f"({poll_ns / 1e6:g} ms) plus the lease margin ({margin_ns / 1e6:g} ms) plus twice "
            f"the clock-skew bound ({max_skew_ns / 1e6:g} ms): an instance polling on time "
            "would stop serving between polls once its clock jumped ahead within the bound"
        )
    return broken
