"""Gates: the conditions a phase change must meet, each refusing with its reasons.

| to             | needs                                                                 |
|----------------|-----------------------------------------------------------------------|
| DUAL_WRITE     | (only the acknowledgement rule)                                       |
| BACKFILL       | every live instance on DUAL_WRITE                                     |
| SHADOW         | backfill complete, repair log empty, a verification diff with no      |
|                | differences taken after the backfill completed                        |
| CUTOVER        | enough mirrored reads, mismatch rate within the noise floor, recall   |
|                | parity, new's p99 latency within the SLO, repair log empty, and a     |
|                | fresh verification diff with no differences                           |
| DECOMMISSIONED | a soak period in CUTOVER with no read fallback to old, no repair      |
|                | backlog (a fallback starts the soak again), and a verification diff   |
|                | with no differences taken since CUTOVER began                         |

ROLLBACK and ABORT are emergency steps: they pass no gate but the acknowledgement rule.
Every live instance must have acknowledged the current epoch before any step (see `phases`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from vecmig.harness.core.compare import MirrorStats, NoiseFloor
from vecmig.harness.core.phases import Phase, Published
from vecmig.harness.core.state import Checkpoint


@dataclass(frozen=True, slots=True)
class Verification:
    """The result of a verification diff (see `workers.verify`)."""

    differences: int
    differing_buckets: int
    old_count: int
    new_count: int
    time: int
    examples: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class GatePolicy:
    min_mirrored_reads: int = 200
    recall_parity_tolerance: float = 0.02
    slo_p99_ms: float = 50.0
    soak_ns: int = 10_000_000_000


@dataclass(frozen=True, slots=True)
class GateInputs:
    now: int
    published: Published
    waiting_for: tuple[str, ...] = ()
    checkpoint: Checkpoint = Checkpoint()
    backfill_done_at: int | None = None
    repair_backlog: int = 0
    verification: Verification | None = None
    mirror: MirrorStats | None = None
    noise: NoiseFloor | None = None
    new_p99_ms: float | None = None
    cutover_at: int | None = None
    last_fallback_to_old: int | None = None
    phase_since: int | None = None
    """When the published phase began (the CUTOVER gate wants a verification from SHADOW)."""


@dataclass(frozen=True, slots=True)
class GateResult:
    target: Phase
    ok: bool
    reasons: tuple[str, ...] = field(default_factory=tuple)

    def __str__(self) -> str:
        if self.ok:
            return f"gate to {self.target.value}: open"
        return f"gate to {self.target.value}: held: " + "; ".join(self.reasons)


VERIFICATION: dict[Phase, str] = {
    Phase.SHADOW: "verify-before-shadow",
    Phase.CUTOVER: "verify-before-cutover",
    Phase.DECOMMISSIONED: "verify-before-decommission",
}
"""The protection (see `strategy.PROTECTIONS`) that asks for each target's verification diff."""


class _Reasons(list[str]):
    """The reasons a gate holds, leaving out those of the protections switched off."""

    def __init__(self, skip: frozenset[str]) -> None:
        super().__init__()
        self.skip = skip

    def add(self, protection: str, reason: str) -> None:
        if protection not in self.skip:
            self.append(reason)


def check(
    target: Phase,
    inputs: GateInputs,
    policy: GatePolicy | None = None,
    *,
    verified: bool = False,
    skip: frozenset[str] = frozenset(),
) -> GateResult:
    """Whether the migration may move to `target` now, and if not, every reason why not.

    `verified`: judge as if a fresh verification diff had found no differences (the
    controller asks so first, and takes the costly diff only when the rest is open).
    `skip`: the protections whose conditions are switched off (an ablated strategy's)."""
    policy = policy or GatePolicy()
    if verified:
        inputs = replace(
            inputs, verification=Verification(0, 0, 0, 0, inputs.now), backfill_done_at=None
        )
    reasons = _Reasons(skip)
    if inputs.waiting_for:
        reasons.add(
            "adjacency-wait",
            f"{len(inputs.waiting_for)} instance(s) still run an older epoch: "
            + ", ".join(inputs.waiting_for[:5]),
        )
    if target is Phase.SHADOW:
        _shadow_gate(inputs, reasons)
    elif target is Phase.CUTOVER:
        _cutover_gate(inputs, policy, reasons)
    elif target is Phase.DECOMMISSIONED:
        _decommission_gate(inputs, policy, reasons)
    # BACKFILL: the acknowledgement rule above is the whole gate (everyone dual-writes).
    return GateResult(target, not reasons, tuple(reasons))


def _backlog(inputs: GateInputs, reasons: _Reasons) -> None:
    if inputs.repair_backlog:
        reasons.add("repair-backlog-gate", f"repair log holds {inputs.repair_backlog} entries")


def _differences(v: Verification, target: Phase, reasons: _Reasons) -> None:
    if v.differences:
        reasons.add(
            VERIFICATION[target],
            f"verification found {v.differences} differing id(s) in {v.differing_buckets} "
            f"bucket(s) (e.g. {', '.join(v.examples[:3])}); repairs queued",
        )


def _shadow_gate(inputs: GateInputs, reasons: _Reasons) -> None:
    if not inputs.checkpoint.done:
        reasons.add(
            "backfill-gate",
            f"backfill not complete ({inputs.checkpoint.copied} copied, "
            f"cursor at {inputs.checkpoint.cursor!r})",
        )
    _backlog(inputs, reasons)
    v = inputs.verification
    if v is None:
        reasons.add("verify-before-shadow", "no verification diff yet")
    elif inputs.backfill_done_at is not None and v.time < inputs.backfill_done_at:
        reasons.add(
            "verify-before-shadow", "the last verification diff predates the end of the backfill"
        )
    else:
        _differences(v, Phase.SHADOW, reasons)


def _cutover_gate(inputs: GateInputs, policy: GatePolicy, reasons: _Reasons) -> None:
    _backlog(inputs, reasons)
    v = inputs.verification
    if v is None or (inputs.phase_since is not None and v.time < inputs.phase_since):
        reasons.add("verify-before-cutover", "no verification diff since SHADOW began")
    else:
        _differences(v, Phase.CUTOVER, reasons)
    m = inputs.mirror
    n = m.compared if m else 0
    if n < policy.min_mirrored_reads:
        reasons.add(
            "mirror-gate", f"only {n} of {policy.min_mirrored_reads} mirrored reads compared"
        )
    elif m is not None:
        allowed = inputs.noise.allowed_rate(n, m.live_noise_rate) if inputs.noise else 0.0
        if m.mismatch_rate > allowed:
            reasons.add(
                "mirror-gate",
                f"mismatch rate {m.mismatch_rate:.3f} exceeds the noise floor's allowance "
                f"{allowed:.3f} over {n} mirrored reads",
            )
        parity = m.recall_parity
        if parity is not None and parity < -policy.recall_parity_tolerance:
            reasons.add(
                "mirror-gate",
                f"new's recall trails old's by {-parity:.3f} (tolerance "
                f"{policy.recall_parity_tolerance:.3f})",
            )
    if inputs.new_p99_ms is not None and inputs.new_p99_ms > policy.slo_p99_ms:
        reasons.add(
            "mirror-gate",
            f"new's p99 {inputs.new_p99_ms:.1f} ms exceeds the SLO {policy.slo_p99_ms:.1f} ms",
        )


def _decommission_gate(inputs: GateInputs, policy: GatePolicy, reasons: _Reasons) -> None:
    if inputs.cutover_at is None:
        reasons.append("not in CUTOVER")
        return
    since, what = inputs.cutover_at, "since cutover"
    fell_back = inputs.last_fallback_to_old
    if fell_back is not None and fell_back > since:
        since, what = fell_back, "since the last read fallback to old"
    soaked = inputs.now - since
    if soaked < policy.soak_ns:
        reasons.add(
            "decommission-soak",
            f"soaked {soaked / 1e9:.1f} s of {policy.soak_ns / 1e9:.1f} s {what}",
        )
    _backlog(inputs, reasons)
    v = inputs.verification
    if v is None or v.time < inputs.cutover_at:
        reasons.add("verify-before-decommission", "no verification diff since CUTOVER began")
    else:
        _differences(v, Phase.DECOMMISSIONED, reasons)
