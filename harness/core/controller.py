"""The migration controller and the worker loops, as operations the drivers run.

The controller walks a plan of steps (advance, rollback, abort) through the gates: it waits
out each phase's minimum hold, gathers the gate's inputs (running the verification diff when
SHADOW is next), and publishes the next phase only when the gate opens and every live
instance acknowledged the current epoch. Every refusal is logged with its reasons, so a run
can say why and how long a gate held. The naive strategy flips the phase after the hold, with
no gate and no waiting for acknowledgements, except that it lets the backfill finish first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vecmig.harness.clusters.base import Side, Vector
from vecmig.harness.core import gates
from vecmig.harness.core.layer import Shared
from vecmig.harness.core.phases import Coordinator, Phase, PhaseError, Step, next_phase
from vecmig.harness.core.requests import (
    AnnouncePhase,
    LoadCheckpoint,
    NextRepairs,
    Now,
    Operation,
    Outcome,
    RecordEvent,
    RepairBacklog,
    SaveCheckpoint,
    Sleep,
    Steps,
    Sub,
)
from vecmig.harness.core.state import Checkpoint, RepairEntry
from vecmig.harness.core.strategy import Strategy
from vecmig.harness.core.workers import Backfill, calibrate_noise_floor, repair_pass, verify

MS = 1_000_000
SECOND = 1_000_000_000

TO_DECOMMISSIONED: tuple[Step, ...] = (Step.ADVANCE,) * 5


@dataclass(frozen=True, slots=True)
class Plan:
    steps: tuple[Step, ...] = TO_DECOMMISSIONED
    hold_ns: Mapping[Phase, int] = field(default_factory=dict)
    """Minimum time to stay in a phase before stepping on."""
    retry_ns: int = 250 * MS
    verify_buckets: int = 64
    stall_ns: int | None = None
    """How long a gate may hold before the run counts as stalled (recorded with the plan, for
    the checker); None: only a plan left unfinished is a stall."""

    def problems(self, start: Phase) -> list[str]:
        """Why the steps cannot be walked from `start` by the transition table (empty: they
        can)."""
        phase = start
        for number, step in enumerate(self.steps, 1):
            try:
                phase = next_phase(phase, step)
            except PhaseError as exc:
                return [f"step {number} ({step.value}): {exc}"]
        return []

    def to_json(self) -> dict[str, Any]:
        return {
            "steps": [step.value for step in self.steps],
            "hold_s": {phase.value: ns / SECOND for phase, ns in self.hold_ns.items()},
            "stall_after_s": None if self.stall_ns is None else self.stall_ns / SECOND,
        }


@dataclass(frozen=True, slots=True)
class GateWait:
    time: int
    target: Phase
    reasons: tuple[str, ...]


class Controller:
    def __init__(
        self,
        coordinator: Coordinator,
        strategy: Strategy,
        backfill: Backfill,
        shared: Shared,
        policy: gates.GatePolicy | None = None,
        new_p99_ms: Callable[[], float | None] = lambda: None,
        calibration_queries: Sequence[Vector] = (),
        k: int = 10,
        lagged_sides: frozenset[Side] = frozenset(),
    ) -> None:
        self.coordinator = coordinator
        self.strategy = strategy
        self.backfill = backfill
        self.shared = shared
        self.policy = policy or gates.GatePolicy()
        self.new_p99_ms = new_p99_ms
        self.calibration_queries = tuple(calibration_queries)
        self.k = k
        self.lagged_sides = lagged_sides
        self.waits: list[GateWait] = []
        self.transitions: list[tuple[int, Phase, int]] = []
        self.verification: gates.Verification | None = None
        self.backfill_done_at: int | None = None
        self.cutover_at: int | None = None
        self.phase_since: int | None = None
        """When the published phase began, as far as this controller knows."""
        self.since_epoch: int | None = None
        """The epoch whose start `phase_since` (and `cutover_at`) describe: this controller's
        last publish. Another publisher (a second controller process, one paused through a
        step and woken) makes both stale."""
        self._last_recorded: tuple[Phase, tuple[str, ...], int] | None = None
        """The last gate refusal recorded in the history: target, reasons, time."""

    def run(self, plan: Plan) -> Operation:
        return Operation(None, None, self._run(plan), kind="controller")

    def attempt(self, step: Step, plan: Plan | None = None) -> Operation:
        """One try at `step`: evaluate the gate once and publish if it opens. The outcome is
        ok or fail, with the `GateResult` as its value."""
        return Operation(None, None, self._attempt(step, plan or Plan()), kind="controller")

    def _attempt(self, step: Step, plan: Plan) -> Steps:
        now: int = yield Now()
        basis = self.coordinator.published
        try:
            target = next_phase(basis.phase, step)
        except PhaseError as exc:
            return Outcome("fail", gates.GateResult(basis.phase, False, (str(exc),)))
        result = yield from self._gate(target, step, now, plan)
        if result.ok:
            try:
                # The gate was judged on `basis`: if another controller (a plan's walk and an
                # operator's step in one fleet controller) published meanwhile, `publish`
                # would step on from the phase it moved to, past a gate nobody judged.
                moved = self.coordinator.published
                if moved != basis:
                    raise PhaseError(
                        f"cannot {step.value} to {target.value}: the phase moved to "
                        f"{moved.phase.value} (epoch {moved.epoch}) while the gate was judged "
                        f"on {basis.phase.value} (epoch {basis.epoch})"
                    )
                published = self.coordinator.publish(
                    step, now, wait_for_acks=self.strategy.adjacency_wait
                )
            except PhaseError as exc:
                result = gates.GateResult(target, False, (str(exc),))
            else:
                yield AnnouncePhase(published.phase, published.epoch, step.value, str(result))
                self.transitions.append((now, published.phase, published.epoch))
                self.phase_since, self.since_epoch = now, published.epoch
                if step is Step.ABORT:
                    # new is abandoned: a later attempt must copy again from the start (a new
                    # BACKFILL epoch, see `Checkpoint.attempt`), and be verified again, since
                    # new missed every write made after the abort.
                    yield SaveCheckpoint(Checkpoint())
                    self.backfill.reset()
                    self.backfill_done_at = None
                    self.verification = None
                if published.phase is Phase.SHADOW and self.calibration_queries:
                    yield from self._measure_noise_floor()
                if published.phase is Phase.CUTOVER:
                    self.cutover_at = now
                return Outcome("ok", result)
        self.waits.append(GateWait(now, target, result.reasons))
        yield from self._record_refusal(target, result.reasons, now)
        return Outcome("fail", result)

    def _record_refusal(self, target: Phase, reasons: tuple[str, ...], now: int) -> Sub[None]:
        """Record a gate refusal in the history: the first one for a target, then whenever
        the reasons change, at most once a second (a held gate retries every few hundred ms)."""
        last = self._last_recorded
        if (
            last is not None
            and last[0] is target
            and (last[1] == reasons or now - last[2] < SECOND)
        ):
            return
        self._last_recorded = (target, reasons, now)
        yield RecordEvent("gate", {"target": target.value, "open": False, "reasons": list(reasons)})

    def _run(self, plan: Plan) -> Steps:
        entered: int = yield Now()
        start = self.coordinator.published.phase
        problems = plan.problems(start)
        yield RecordEvent(
            "plan",
            {**plan.to_json(), "from": start.value, **({"invalid": problems} if problems else {})},
        )
        if problems:
            return Outcome("fail", {"phase": start.value}, error="; ".join(problems))
        for step in plan.steps:
            while True:
                now: int = yield Now()
                hold = plan.hold_ns.get(self.coordinator.published.phase, 0)
                if step is Step.ADVANCE and now - entered < hold:
                    yield Sleep(entered + hold - now)
                    continue
                outcome = yield from self._attempt(step, plan)
                if outcome.type == "ok":
                    entered = now
                    break
                yield Sleep(plan.retry_ns)
        return Outcome("ok", {"phase": self.coordinator.published.phase.value})

    def _gate(self, target: Phase, step: Step, now: int, plan: Plan) -> Sub[gates.GateResult]:
        strategy = self.strategy
        if step is not Step.ADVANCE:
            return (yield from self._step_back_gate(target, step, now))
        published = self.coordinator.published
        checkpoint: Checkpoint = (
            (yield LoadCheckpoint()) if strategy.durable_checkpoint else self.backfill.checkpoint
        )
        if published.phase is Phase.BACKFILL and checkpoint.attempt != published.epoch:
            checkpoint = Checkpoint(attempt=published.epoch)  # a copy of an earlier attempt
        if checkpoint.done and self.backfill_done_at is None:
            self.backfill_done_at = now
        backlog: int = yield RepairBacklog(now)
        if self.since_epoch != published.epoch:  # None until this controller knows an epoch
            # Restarted mid-phase, or another controller published since this one last did
            # (it slept through a ROLLBACK and a new CUTOVER, say): when this epoch began is
            # unknown, so count from now, and forget a CUTOVER of an earlier epoch.
            self.phase_since, self.since_epoch = now, published.epoch
            self.cutover_at = None
        if published.phase is Phase.CUTOVER and self.cutover_at is None:
            # A controller restarted in CUTOVER lost when it began: the soak starts again now.
            self.cutover_at = now
        if target is Phase.CUTOVER and self.shared.noise is None and self.calibration_queries:
            # The noise floor is measured on entering SHADOW; a controller that died before
            # it was (mid-calibration) and was restarted in SHADOW measures it now, or the
            # gate would judge mirrored reads against an allowance of zero, not the floor.
            yield from self._measure_noise_floor()
        inputs = gates.GateInputs(
            now=now,
            published=published,
            waiting_for=tuple(self.coordinator.waiting_for(now)),
            checkpoint=checkpoint,
            backfill_done_at=self.backfill_done_at,
            repair_backlog=backlog,
            verification=self.verification,
            mirror=self.shared.mirror,
            noise=self.shared.noise,
            new_p99_ms=self.new_p99_ms(),
            cutover_at=self.cutover_at,
            last_fallback_to_old=self.shared.last_fallback_to_old,
            phase_since=self.phase_since,
        )
        skip = frozenset(strategy.off)
        verification = gates.VERIFICATION.get(target)
        if verification is None or verification in skip:
            return gates.check(target, inputs, self.policy, verified=True, skip=skip)
        # The verification diff reads every record of both sides: take it only when the rest
        # of the gate is open, then judge again with its result. It runs before SHADOW (after
        # the backfill), again before CUTOVER (a write new acknowledged and lost in SHADOW
        # shows up only here) and before DECOMMISSIONED (the last look at old before it
        # retires).
        if not gates.check(target, inputs, self.policy, verified=True, skip=skip).ok:
            return gates.check(target, inputs, self.policy, skip=skip)
        failed = yield from self._verify_and_repair(plan)
        if failed is not None:
            # Judge only a diff taken by this try: an older one cannot vouch for what a side
            # lost since (new's lost writes in SHADOW, for the gate to CUTOVER).
            return gates.GateResult(
                target, False, (f"the verification diff failed ({failed}); the gate waits for one",)
            )
        backlog = yield RepairBacklog(now)
        inputs = dataclasses.replace(inputs, repair_backlog=backlog, verification=self.verification)
        return gates.check(target, inputs, self.policy, skip=skip)

    def _step_back_gate(self, target: Phase, step: Step, now: int) -> Sub[gates.GateResult]:
        """The gate of a ROLLBACK or an ABORT: the instances' adjacency, and for an ABORT
        every repair toward old applied."""
        strategy = self.strategy
        reasons = []
        ok, why = self.coordinator.can_publish(now)
        if not ok and strategy.adjacency_wait:
            reasons.append(why)
        if step is Step.ABORT and strategy.abort_repairs_old:
            # After ABORT old is the only side, and OLD_ONLY reads trust it: a write that
            # reached new but not old (in CUTOVER, new is primary) must be on old first.
            # Only repairs toward old count, so a new that is down cannot block the abort.
            behind = yield from self._repairs_toward(Side.OLD)
            if behind:
                yield from repair_pass(1024, self.lagged_sides).steps
                behind = yield from self._repairs_toward(Side.OLD)
            if behind:
                reasons.append(
                    f"{behind} repair(s) toward old still pending: old would serve older "
                    "versions as the only side"
                )
        return gates.GateResult(target, not reasons, tuple(reasons))

    def _measure_noise_floor(self) -> Sub[None]:
        floor = yield from calibrate_noise_floor(self.calibration_queries, self.k).steps
        self.shared.noise = floor.value

    def _repairs_toward(self, side: Side) -> Sub[int]:
        entries: list[RepairEntry] = yield NextRepairs(1 << 30)
        return sum(1 for e in entries if e.side is side)

    def _verify_and_repair(self, plan: Plan) -> Sub[str | None]:
        """Take a verification diff and repair what it found; why it failed, if it did."""
        outcome = yield from verify(plan.verify_buckets).steps
        if outcome.type != "ok":
            return outcome.error or outcome.type
        self.verification = outcome.value
        if self.verification and self.verification.differences:
            yield from repair_pass(1024, self.lagged_sides).steps
        return None

    def report(self) -> dict[str, Any]:
        return {
            "transitions": [
                {"time": t, "phase": p.value, "epoch": e} for t, p, e in self.transitions
            ],
            "gate_waits": [
                {"time": w.time, "target": w.target.value, "reasons": list(w.reasons)}
                for w in self.waits
            ],
            "noise_floor": None if self.shared.noise is None else self.shared.noise.to_json(),
            "mirror": self.shared.mirror.to_json(),
            "verification": None
            if self.verification is None
            else {
                "differences": self.verification.differences,
                "differing_buckets": self.verification.differing_buckets,
                "old_count": self.verification.old_count,
                "new_count": self.verification.new_count,
            },
        }


# ---------------------------------------------------------------------------------------------
# Worker loops.


def backfill_worker(
    backfill: Backfill, coordinator: Coordinator, poll_ns: int = 100 * MS
) -> Operation:
    """Copies batches whenever BACKFILL is published and its copy is not done, and waits
    otherwise; it never returns (the driver stops it). It outlives any one phase, because an
    ABORT and a later advance need a new copy."""
    return Operation(None, None, _backfill_worker(backfill, coordinator, poll_ns), kind="backfill")


def _backfill_worker(backfill: Backfill, coordinator: Coordinator, poll_ns: int) -> Steps:
    while True:
        published = coordinator.published
        if published.phase is not Phase.BACKFILL:
            yield Sleep(poll_ns)
            continue
        outcome = yield from backfill.batch(published.epoch).steps
        if outcome.type == "ok" and outcome.value["done"]:
            yield Sleep(poll_ns)
            continue
        pause = (
            backfill.throttle.pause_ns
            if outcome.type == "ok"
            else max(poll_ns, backfill.throttle.pause_ns)
        )
        if pause:
            yield Sleep(pause)


def repair_worker(
    coordinator: Coordinator,
    interval_ns: int = 200 * MS,
    limit: int = 256,
    lagged: frozenset[Side] = frozenset(),
) -> Operation:
    """Drains the repair log forever; the driver stops it when the run ends. Pass the
    layer's lagged sides, so that repairs there are noted in the visibility window. Once
    DECOMMISSIONED is published it only clears the log (see `repair_pass`)."""
    return Operation(
        None, None, _repair_worker(coordinator, interval_ns, limit, lagged), kind="repair"
    )


def _repair_worker(
    coordinator: Coordinator, interval_ns: int, limit: int, lagged: frozenset[Side]
) -> Steps:
    while True:
        retired = coordinator.published.phase is Phase.DECOMMISSIONED
        outcome = yield from repair_pass(limit, lagged, retired).steps
        if not outcome.value or not (outcome.value.get("repaired") or outcome.value.get("dropped")):
            yield Sleep(interval_ns)
