"""Fault schedules as data: which fault, where, and when it starts and stops.

A `FaultSpec` is one line of a schedule. It starts at a simulated time (`at_s`) or when the
controller publishes a phase (`phase`, plus `after_s`), and stops after `duration_s`, when a
later phase is published (`until_phase`), or at the end of the run (every fault is healed
before the final scans). Applying a schedule is `vecmig.sim.nemesis`'s job; this module only says
what a valid schedule is, and draws random ones (swarm mode).

Families are the fake cluster's (`CLUSTER_FAULT_FAMILIES`, applied to one side) and the
driver's own: latency-spike and partition (between the layer and a side), app-instance-crash,
late-config and clock-skew (one app instance), and backfill-worker-crash; and the control
process's: controller-crash (the controller dies mid-step, in a gate, a diff or a calibration,
and a new one starts when the fault stops, knowing only what the coordinator and the state
store hold).

`fault_problems` refuses the faults no layer can survive in a given scenario (`FaultLimits`):
a node fault with one replica per shard, an app-instance crash with one instance, a clock skew
beyond the declared bound, visibility lag on a side the layer was not told lags, and lost-ack
(an acknowledged write the cluster never stored) anywhere but on the secondary side before a
copy or a verification diff finds it: elsewhere it is a data loss no layer can even notice.
`schedule_problems` refuses what two faults do together: a lost-ack whose losses only the
diff before CUTOVER finds, with a fault on old that may send reads to new before that diff.
The swarm draws only faults that `fault_problems` accepts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from vecmig.harness.clusters.faults import CLUSTER_FAULT_FAMILIES

DRIVER_FAULT_FAMILIES: tuple[str, ...] = (
    "latency-spike",
    "partition",
    "app-instance-crash",
    "late-config",
    "clock-skew",
    "backfill-worker-crash",
)
CONTROL_FAULT_FAMILIES: tuple[str, ...] = ("controller-crash",)
"""Faults of the migration's own control process. Not in the swarm's default families (adding
them there would change every recorded swarm seed's draw); scenarios name them, and BUGGIFY
draws them from a stream of their own."""
FAULT_FAMILIES: tuple[str, ...] = (
    CLUSTER_FAULT_FAMILIES + DRIVER_FAULT_FAMILIES + CONTROL_FAULT_FAMILIES
)

TIMING_KEYS = ("family", "at_s", "phase", "after_s", "duration_s", "until_phase")

# The keys (besides timing) each family takes; the first group of `required` must be given.
FAMILY_KEYS: Mapping[str, tuple[str, ...]] = {
    "node-crash": ("side", "node", "lose_data"),
    "node-pause": ("side", "node"),
    "error-rate": ("side", "rate"),
    "lost-ack": ("side", "rate"),
    "visibility-lag": ("side",),
    "index-rebuild": ("side",),
    "slow-replica": ("side", "node", "factor"),
    "latency-spike": ("side", "factor"),
    "partition": ("side", "mode"),
    "app-instance-crash": ("instance",),
    "late-config": ("instance", "delay_s"),
    "clock-skew": ("instance", "offset_ms"),
    "backfill-worker-crash": (),
    "controller-crash": (),
}
REQUIRED: Mapping[str, tuple[str, ...]] = {
    "error-rate": ("side", "rate"),
    "lost-ack": ("side", "rate"),
    "slow-replica": ("side", "factor"),
    "latency-spike": ("side", "factor"),
}
PARTITION_MODES = ("unavailable", "timeout")
SIDES = ("old", "new")
PHASES = ("OLD_ONLY", "DUAL_WRITE", "BACKFILL", "SHADOW", "CUTOVER", "DECOMMISSIONED")


@dataclass(frozen=True)
class FaultSpec:
    """One fault of a schedule. Unset parameters are picked from the fault seed where they
    name a target (`node`, `instance`); otherwise they take the defaults below."""

    family: str = ""
    side: str = ""
    """old or new (cluster families, latency-spike, partition)."""
    node: str = ""
    """e.g. "s0r1"; empty: a node picked from the seed."""
    lose_data: bool = False
    rate: float = 0.0
    factor: float = 1.0
    mode: str = "unavailable"
    """partition: requests fail fast (unavailable) or are dropped and time out (timeout)."""
    instance: int = -1
    """An app instance by number (0-based); -1: one picked from the seed."""
    delay_s: float = 30.0
    """late-config: extra delay before the instance learns a phase."""
    offset_ms: float = 0.0
    """clock-skew: how far the instance's clock runs ahead (negative: behind)."""
    at_s: float | None = None
    phase: str = ""
    after_s: float = 0.0
    duration_s: float | None = None
    until_phase: str = ""

    @classmethod
    def check_raw(cls, raw: Mapping[str, Any], path: str) -> None:
        """Refuse keys the family does not take (before defaults hide what was written)."""
        family = raw.get("family")
        if not isinstance(family, str) or family not in FAMILY_KEYS:
            raise ValueError(unknown_family(family, path))
        allowed = set(TIMING_KEYS) | set(FAMILY_KEYS[family])
        valid = [f.name for f in fields(cls)]
        for key in raw:
            if key not in valid:
                raise ValueError(f"unknown key {path}.{key!s}; valid keys: {', '.join(valid)}")
            if key not in allowed:
                raise ValueError(
                    f"{path}.{key}: fault {family!r} does not take {key!r}; it takes "
                    f"{', '.join(sorted(allowed - {'family'}))}"
                )
        missing = [k for k in REQUIRED.get(family, ()) if k not in raw]
        if missing:
            raise ValueError(f"{path}: fault {family!r} needs {', '.join(missing)}")


def unknown_family(family: object, path: str = "faults") -> str:
    return (
        f"{path}.family: unknown fault family {family!r}; valid families: "
        f"{', '.join(FAULT_FAMILIES)}"
    )


NODE_FAMILIES: tuple[str, ...] = ("node-crash", "node-pause", "slow-replica")
"""Faults of one node: with a single replica they take down, lose or slow a shard's only copy."""
LOST_ACK_STARTS = ("DUAL_WRITE", "BACKFILL")
LOST_ACK_UNTILS = ("BACKFILL", "SHADOW")
"""Where a lost-ack may start (`phase`) and what ends it in time (`until_phase`); the timing
rules also refuse an `until_phase` that is not after `phase` (such a fault never starts). A
lost-ack timed by `at_s` must end (`at_s + duration_s`) before the earliest moment a diff can
start: the one before SHADOW (`FaultLimits.shadow_diff_s`) or the one before CUTOVER
(`FaultLimits.cutover_diff_s`). See `schedule_problems` for what else the later forms need."""
FALLBACK_FAMILIES: tuple[str, ...] = (
    "node-crash",
    "node-pause",
    "error-rate",
    "index-rebuild",
    "slow-replica",
    "latency-spike",
    "partition",
)
"""Faults of a side that can fail or slow a request to it, so that a SHADOW read may fall back
from old to new (visibility lag only delays what searches show, and the layer re-reads by id
on the same side)."""


@dataclass(frozen=True)
class FaultLimits:
    """What a scenario lets its faults do: its sizes and the bounds the protocol was told."""

    instances: int
    shards: int
    replicas: int
    lagged_sides: Sequence[str]
    max_skew_ms: float
    start_s: float = 0.0
    """When the controller starts its plan (`migration.start_s`)."""
    hold_s: Mapping[str, float] = field(default_factory=dict)
    """How long the plan waits in each phase before it tries to advance (`migration.hold_s`)."""
    steps_back: bool = True
    """Whether the plan may step back (ROLLBACK or ABORT), so that a fault started in a later
    phase with no `until_phase` may last into an earlier one."""

    @staticmethod
    def plan_steps_back(steps: Sequence[str]) -> bool:
        """Whether a plan's steps (`migration.steps`) include a ROLLBACK or an ABORT."""
        return any(step in ("rollback", "abort") for step in steps)

    def earliest_gate_s(self, target: str) -> float:
        """The earliest simulated time at which the controller can start the gate (and the
        verification diff) that leads into `target` from OLD_ONLY: every ADVANCE waits its
        phase's hold, counted from the moment the step before it was tried, so no gate to
        `target` runs before the plan's start plus the holds of the phases before it."""
        before = PHASES[: PHASES.index(target)]
        return self.start_s + sum(self.hold_s.get(phase, 0.0) for phase in before)

    @property
    def shadow_diff_s(self) -> float:
        return self.earliest_gate_s("SHADOW")

    @property
    def cutover_diff_s(self) -> float:
        return self.earliest_gate_s("CUTOVER")


def fault_problems(spec: FaultSpec, limits: FaultLimits, path: str) -> list[str]:
    """Every reason `spec` (at `path`, e.g. "faults[3]") cannot run, or cannot be survived by a
    correct layer, in this scenario; one message per problem, each naming its key."""
    if spec.family not in FAMILY_KEYS:
        return [unknown_family(spec.family, path)]
    problems = _target_problems(spec, limits, path) + _parameter_problems(spec, limits, path)
    if spec.family == "lost-ack":
        problems += _lost_ack_problems(spec, limits, path)
    return problems + _timing_problems(spec, path)


def _target_problems(spec: FaultSpec, limits: FaultLimits, path: str) -> list[str]:
    """What the fault hits: a side, a node, an instance, and whether a second one is left."""
    family, keys = spec.family, FAMILY_KEYS[spec.family]
    problems = []
    if "side" in keys and spec.side not in SIDES:
        problems.append(f"{path}.side must be old or new for {family!r}, got {spec.side!r}")
    if spec.node:
        problems += _node_problems(spec.node, limits, f"{path}.node")
    if family in NODE_FAMILIES and limits.replicas < 2:
        problems.append(
            f"{path}: a {family!r} fault needs clusters.replicas >= 2, got {limits.replicas}: "
            "with one replica it hits the shard's only copy, and reads fail or go stale "
            "whatever the layer does; set clusters.replicas = 2 or drop the fault"
        )
    if "instance" in keys and not -1 <= spec.instance < limits.instances:
        problems.append(
            f"{path}.instance must be from 0 to {limits.instances - 1} (instances.count is "
            f"{limits.instances}), or -1 for one picked from the seed; got {spec.instance}"
        )
    if family == "app-instance-crash" and limits.instances < 2:
        problems.append(
            f"{path}: an 'app-instance-crash' fault needs instances.count >= 2, got "
            f"{limits.instances}: with one instance every read fails while it restarts; "
            "set instances.count = 2 or more"
        )
    if family == "visibility-lag" and spec.side in SIDES and spec.side not in limits.lagged_sides:
        problems.append(
            f"{path}.side = {spec.side!r}: a 'visibility-lag' fault needs its side in "
            f"migration.lagged_sides (now {list(limits.lagged_sides)}): the layer corrects "
            f"searches only on sides declared lagged; add {spec.side!r} there"
        )
    return problems


def _parameter_problems(spec: FaultSpec, limits: FaultLimits, path: str) -> list[str]:
    family = spec.family
    problems = []
    if family in ("error-rate", "lost-ack") and not 0.0 <= spec.rate <= 1.0:
        problems.append(f"{path}.rate must be from 0 to 1, got {spec.rate!r}")
    if family in ("slow-replica", "latency-spike") and spec.factor < 1.0:
        problems.append(f"{path}.factor must be at least 1 (a slowdown), got {spec.factor!r}")
    if family == "partition" and spec.mode not in PARTITION_MODES:
        problems.append(
            f"{path}.mode must be one of {', '.join(PARTITION_MODES)}, got {spec.mode!r}"
        )
    if family == "late-config" and spec.delay_s < 0:
        problems.append(
            f"{path}.delay_s must not be negative, got {spec.delay_s!r}: it is the extra time "
            "the instance takes to learn a published phase"
        )
    if family == "clock-skew" and abs(spec.offset_ms) > limits.max_skew_ms:
        problems.append(
            f"{path}.offset_ms = {spec.offset_ms:g} is beyond the declared clock-skew bound, "
            f"instances.max_clock_skew_ms = {limits.max_skew_ms:g}: the lease margin and the "
            "freshness window are sized for that bound; keep offset_ms within "
            f"±{limits.max_skew_ms:g}, or raise instances.max_clock_skew_ms (and "
            "instances.lease_margin_ms with it)"
        )
    return problems


def _node_problems(node: str, limits: FaultLimits, path: str) -> list[str]:
    from vecmig.harness.clusters.fake import parse_node_id

    try:
        shard, replica = parse_node_id(node)
    except ValueError as exc:
        return [f"{path}: {exc}"]
    if shard < limits.shards and replica < limits.replicas:
        return []
    return [
        f"{path}: node {node!r} does not exist with clusters.shards = {limits.shards} and "
        f"clusters.replicas = {limits.replicas} (nodes s0r0 to "
        f"s{limits.shards - 1}r{limits.replicas - 1})"
    ]


def _lost_ack_problems(spec: FaultSpec, limits: FaultLimits, path: str) -> list[str]:
    # A lost ack is data the layer was told was stored and never hears of again: only a copy
    # or a verification diff taken after the loss finds it. So the fault must be on new while
    # it is the secondary, and over before a copy or a diff that comes before new serves a
    # read: the backfill (until_phase = BACKFILL), the diff before SHADOW (until_phase =
    # SHADOW, or at_s with an end before the earliest such diff) or the diff before CUTOVER
    # (at_s, ending before the earliest such diff). The later forms leave losses that reads
    # falling back to new in SHADOW could see; `schedule_problems` refuses the faults on old
    # that would send them there.
    by_phase = spec.phase in LOST_ACK_STARTS and spec.until_phase in LOST_ACK_UNTILS
    by_time = (
        spec.at_s is not None
        and spec.duration_s is not None
        and not spec.until_phase
        and spec.at_s + spec.duration_s < limits.cutover_diff_s
    )
    if spec.side == "new" and ((spec.at_s is None and by_phase) or by_time):
        return []
    got = ", ".join(
        f"{key} = {value!r}"
        for key, value in (
            ("side", spec.side),
            ("phase", spec.phase),
            ("at_s", spec.at_s),
            ("duration_s", spec.duration_s),
            ("until_phase", spec.until_phase),
        )
        if value not in ("", None)
    )
    return [
        f"{path}: a 'lost-ack' fault (the cluster acknowledges a write, then drops it) is "
        "survivable only on the secondary side before a copy or a verification diff finds it: "
        'set side = "new", phase = "DUAL_WRITE" or "BACKFILL" and until_phase = "BACKFILL" or '
        '"SHADOW"; or side = "new", at_s and a duration_s that end it before the earliest diff '
        f"before CUTOVER can start ({limits.cutover_diff_s:g} s: migration.start_s plus "
        f"migration.hold_s of every phase before CUTOVER); got {got}"
    ]


def schedule_problems(specs: Sequence[FaultSpec], limits: FaultLimits) -> list[str]:
    """The rules between faults. A lost-ack that may still drop writes after the diff before
    SHADOW has read their bucket (until_phase = "SHADOW", or at_s ending after
    `limits.shadow_diff_s`) leaves new missing acknowledged writes in SHADOW, which only the
    diff before CUTOVER repairs. Reads see new in SHADOW only when they fall back from old, so
    such a lost-ack is refused together with any fault on old that can make a read fall back
    while a loss may be unrepaired: one that may be active in SHADOW (for at_s lost-acks, at or
    after the loss starts). Any layer would then have to answer stale or fail."""
    problems = []
    for i, j in unrepaired_in_shadow(specs, limits):
        spec, other = specs[i], specs[j]
        problems.append(
            f"faults[{i}] and faults[{j}]: new may still drop acknowledged writes after the "
            f"verification diff before SHADOW (faults[{i}], {_when_text(spec)}), and only the "
            f"diff before CUTOVER finds them; a {other.family!r} fault on old that may be "
            f"active in SHADOW (faults[{j}], {_when_text(other)}) sends reads to new before "
            "that diff, where any layer answers stale or fails. End the lost-ack with "
            f'until_phase = "BACKFILL" or at_s + duration_s < {limits.shadow_diff_s:g} s '
            f"(migration.start_s plus the holds before SHADOW), or keep faults[{j}] out of "
            "SHADOW" + (" and before the loss starts" if spec.at_s is not None else "")
        )
    return problems


def unrepaired_in_shadow(specs: Sequence[FaultSpec], limits: FaultLimits) -> list[tuple[int, int]]:
    """The pairs (lost-ack, fault on old) that `schedule_problems` refuses, by position."""
    return [
        (i, j)
        for i, spec in enumerate(specs)
        if spec.family == "lost-ack" and spec.side == "new" and _survives_shadow_diff(spec, limits)
        for j, other in enumerate(specs)
        if other.family in FALLBACK_FAMILIES
        and other.side == "old"
        and _may_meet_in_shadow(spec, other, limits)
    ]


def _survives_shadow_diff(spec: FaultSpec, limits: FaultLimits) -> bool:
    """Whether a lost-ack on new may drop writes after the diff before SHADOW read them."""
    if spec.at_s is not None:
        return spec.duration_s is None or spec.at_s + spec.duration_s >= limits.shadow_diff_s
    return spec.until_phase != "BACKFILL"


def _may_meet_in_shadow(loss: FaultSpec, other: FaultSpec, limits: FaultLimits) -> bool:
    """Whether `other` (a fault on old) may be active in SHADOW while a write `loss` dropped
    is still unrepaired (from the loss's start, for a lost-ack timed by at_s)."""
    if other.at_s is not None:
        end = float("inf") if other.duration_s is None else other.at_s + other.duration_s
        if end <= limits.shadow_diff_s:
            return False  # over before SHADOW can be published
        return loss.at_s is None or end > loss.at_s
    if other.phase not in PHASES:
        return False  # refused on its own
    start = PHASES.index(other.phase)
    shadow = PHASES.index("SHADOW")
    if start > shadow:
        # With an until_phase it ends when the plan steps back before its phase
        # (nemesis.within); without one, it outlasts a ROLLBACK from CUTOVER.
        return not other.until_phase and limits.steps_back
    # Unless it is over when SHADOW is published.
    return not (other.until_phase in PHASES and PHASES.index(other.until_phase) <= shadow)


def _when_text(spec: FaultSpec) -> str:
    if spec.at_s is not None:
        end = "" if spec.duration_s is None else f" to {spec.at_s + spec.duration_s:g} s"
        return f"from {spec.at_s:g} s{end}"
    until = f" until {spec.until_phase}" if spec.until_phase else ""
    length = f" for {spec.duration_s:g} s" if spec.duration_s is not None else ""
    return f"{spec.after_s:g} s into {spec.phase}{length}{until}"


def _timing_problems(spec: FaultSpec, path: str) -> list[str]:
    problems = []
    if (spec.at_s is None) == (not spec.phase):
        problems.append(
            f"{path}: fault {spec.family!r} needs exactly one of at_s or phase (when it starts)"
        )
    for name in ("phase", "until_phase"):
        value = getattr(spec, name)
        if value and value not in PHASES:
            problems.append(f"{path}.{name} must be one of {', '.join(PHASES)}, got {value!r}")
    if (
        spec.phase in PHASES
        and spec.until_phase in PHASES
        and PHASES.index(spec.until_phase) <= PHASES.index(spec.phase)
    ):
        problems.append(
            f"{path}.until_phase ({spec.until_phase}) must come after {path}.phase "
            f"({spec.phase}): the fault would end before it starts, so it would never run"
        )
    for name in ("at_s", "after_s", "duration_s"):
        value = getattr(spec, name)
        if value is not None and value < 0:
            problems.append(f"{path}.{name} must not be negative, got {value!r}")
    return problems


# ---------------------------------------------------------------------------------------------
# Swarm mode: a random subset of families per seed, with random timings.

SWARM_FAMILIES: tuple[str, ...] = (
    "node-crash",
    "node-pause",
    "slow-replica",
    "error-rate",
    "lost-ack",
    "index-rebuild",
    *DRIVER_FAULT_FAMILIES,
)
SWARM_CHOICES: tuple[str, ...] = (*SWARM_FAMILIES, "visibility-lag")
"""What `swarm.families` may name; visibility-lag (on new) only when new is declared lagged."""


@dataclass(frozen=True)
class SwarmConfig:
    """Swarm mode: a random subset of `families` per seed, with random timings, instead of the
    scenario's own [[faults]] (or besides them, with `keep_scenario_faults`: then make sure
    the two never leave both sides unable to serve a read at once)."""

    enabled: bool = False
    keep_scenario_faults: bool = False
    families: list[str] = field(default_factory=lambda: list(SWARM_FAMILIES))
    """Left out of a scenario file: every family the scenario can survive (no node faults
    with one replica, no app-instance crash with one instance)."""
    min_families: int = field(default=2, metadata={"min": 0})
    max_families: int = field(default=6, metadata={"min": 0})
    window_s: list[float] = field(default_factory=list)
    """[start, end] of timed faults; empty: the middle 80% of the run."""


def survivable(families: Sequence[str], *, replicas: int, instances: int) -> list[str]:
    """`families` without those no layer survives at these sizes (see `fault_problems`)."""
    return [
        family
        for family in families
        if not (family in NODE_FAMILIES and replicas < 2)
        and not (family == "app-instance-crash" and instances < 2)
    ]


def swarm_problems(config: SwarmConfig, limits: FaultLimits) -> list[str]:
    """Every reason the swarm settings cannot run in this scenario, naming the key."""
    problems = []
    kept = survivable(config.families, replicas=limits.replicas, instances=limits.instances)
    for i, family in enumerate(config.families):
        path = f"swarm.families[{i}]"
        if family not in SWARM_CHOICES:
            problems.append(
                f"{path}: unknown swarm family {family!r}; valid families: "
                f"{', '.join(SWARM_CHOICES)}"
            )
        elif family not in kept:
            needs = (
                f"clusters.replicas >= 2, got {limits.replicas}"
                if family in NODE_FAMILIES
                else f"instances.count >= 2, got {limits.instances}"
            )
            problems.append(
                f"{path}: {family!r} needs {needs}: no layer can keep reads right through it; "
                "drop it (left out, swarm.families is every family this scenario survives)"
            )
        elif family == "visibility-lag" and "new" not in limits.lagged_sides:
            problems.append(
                f"{path}: 'visibility-lag' lags new, so it needs \"new\" in "
                "migration.lagged_sides: the layer corrects searches only on sides declared "
                "lagged"
            )
    if config.min_families > config.max_families:
        problems.append(
            f"swarm.min_families ({config.min_families}) must not exceed swarm.max_families "
            f"({config.max_families})"
        )
    window = config.window_s
    if window and not (len(window) == 2 and 0 <= window[0] < window[1]):
        problems.append(
            f"swarm.window_s must be [start, end] in seconds with 0 <= start < end (or left "
            f"out, for the middle 80% of the run); got {window!r}"
        )
    return problems


# per-family draws; the per-family fault registry (issue 12) takes them (C901)
def swarm_schedule(
    config: SwarmConfig,
    rng: np.random.Generator,
    *,
    duration_s: float,
    lagged_sides: Sequence[str],
    shards: int,
    replicas: int = 2,
    instances: int = 2,
    max_skew_ms: float = 300.0,
) -> list[FaultSpec]:
    """Random faults that a correct migration layer must survive without an anomaly, and that
    `fault_problems` accepts for a scenario of these sizes and this clock-skew bound.

    Node faults all hit the same replica number, so every shard keeps a serving copy; with one
    replica there are none, and with one app instance no instance crashes. A side is made
    unreachable, erroneous or unsearchable only while it serves no reads (new before
    CUTOVER, old in CUTOVER), so at any moment one side can answer every read (see the
    module docstring for lost-ack). Clock skews stay within `max_skew_ms`.
    """
    families = survivable(
        [f for f in config.families if f in SWARM_FAMILIES], replicas=replicas, instances=instances
    )
    if "visibility-lag" in config.families and "new" in lagged_sides:
        families.append("visibility-lag")
    if not families:
        return []
    low = min(config.min_families, len(families))
    high = min(config.max_families, len(families))
    chosen = sorted(
        rng.choice(len(families), size=int(rng.integers(low, high + 1)), replace=False).tolist()
    )
    start, end = config.window_s or (0.1 * duration_s, 0.9 * duration_s)
    draw = _SwarmDraw(rng, (start, end), victim=int(rng.integers(0, 2)), max_skew_ms=max_skew_ms)
    out: list[FaultSpec] = []
    for index in chosen:
        family = families[index]
        draw.node = f"s{int(rng.integers(0, shards))}r{draw.victim}"
        out.append(_SWARM_DRAWERS[family](draw, family))
    return out


@dataclass
class _SwarmDraw:
    """What one swarm fault is drawn from. The draws happen in the order the drawers make
    them, which fixes a seed's schedule: reorder nothing, or every recorded replay changes."""

    rng: np.random.Generator
    window: tuple[float, float]
    victim: int  # the replica number every node fault hits
    max_skew_ms: float
    node: str = ""

    def at(self) -> float:
        return round(float(self.rng.uniform(*self.window)), 3)

    def lasting(self, low_s: float, high_s: float) -> float:
        return round(float(self.rng.uniform(low_s, high_s)), 3)

    def factor(self, low: float, high: float) -> float:
        return round(float(self.rng.uniform(low, high)), 2)

    def rate(self, high: float) -> float:
        return round(float(self.rng.uniform(0.01, high)), 3)

    def side(self) -> str:
        return _side(self.rng)

    def pick(self, options: Sequence[str]) -> str:
        return _pick(self.rng, options)

    def while_other_serves(
        self,
        family: str,
        *,
        old_after_s: float,
        lasting_s: tuple[float, float],
        **keys: Callable[[], Any],
    ) -> FaultSpec:
        """An availability fault on a side that serves no reads meanwhile: new before CUTOVER
        (stopped by CUTOVER), or old during CUTOVER (new serves); never both, so a read
        always has a side to fall back to."""
        on_new = self.rng.random() < 0.5
        values = {key: value() for key, value in keys.items()}
        if on_new:
            return FaultSpec(
                family,
                side="new",
                **values,
                phase=self.pick(("DUAL_WRITE", "BACKFILL", "SHADOW")),
                after_s=self.lasting(0, 5),
                duration_s=self.lasting(*lasting_s),
                until_phase="CUTOVER",
            )
        return FaultSpec(
            family,
            side="old",
            **values,
            phase="CUTOVER",
            after_s=self.lasting(0, old_after_s),
            duration_s=self.lasting(*lasting_s),
        )


def _node_crash(d: _SwarmDraw, family: str) -> FaultSpec:
    side = d.side()
    lose_data = bool(d.rng.random() < 0.5)
    return FaultSpec(
        family,
        side=side,
        node=d.node,
        lose_data=lose_data,
        at_s=d.at(),
        duration_s=d.lasting(2, 15),
    )


def _node_pause(d: _SwarmDraw, family: str) -> FaultSpec:
    return FaultSpec(family, side=d.side(), node=d.node, at_s=d.at(), duration_s=d.lasting(1, 10))


def _slow_replica(d: _SwarmDraw, family: str) -> FaultSpec:
    side = d.side()
    factor = d.factor(2, 10)
    return FaultSpec(
        family, side=side, node=d.node, factor=factor, at_s=d.at(), duration_s=d.lasting(2, 20)
    )


def _error_rate(d: _SwarmDraw, family: str) -> FaultSpec:
    return d.while_other_serves(family, old_after_s=5, lasting_s=(2, 20), rate=lambda: d.rate(0.2))


def _index_rebuild(d: _SwarmDraw, family: str) -> FaultSpec:
    return d.while_other_serves(family, old_after_s=5, lasting_s=(1, 8))


def _partition(d: _SwarmDraw, family: str) -> FaultSpec:
    mode = d.pick(PARTITION_MODES)
    return d.while_other_serves(family, old_after_s=3, lasting_s=(1, 8), mode=lambda: mode)


def _lost_ack(d: _SwarmDraw, family: str) -> FaultSpec:
    return FaultSpec(
        family,
        side="new",
        rate=d.rate(0.1),
        phase="DUAL_WRITE",
        after_s=d.lasting(0, 2),
        duration_s=d.lasting(1, 10),
        until_phase="BACKFILL",
    )


def _latency_spike(d: _SwarmDraw, family: str) -> FaultSpec:
    side = d.side()
    factor = d.factor(2, 8)
    return FaultSpec(family, side=side, factor=factor, at_s=d.at(), duration_s=d.lasting(1, 10))


def _app_instance_crash(d: _SwarmDraw, family: str) -> FaultSpec:
    return FaultSpec(family, at_s=d.at(), duration_s=d.lasting(1, 10))


def _late_config(d: _SwarmDraw, family: str) -> FaultSpec:
    delay_s = d.lasting(3, 30)
    phase = d.pick(("DUAL_WRITE", "BACKFILL", "SHADOW"))
    return FaultSpec(family, delay_s=delay_s, phase=phase, duration_s=d.lasting(10, 40))


def _clock_skew(d: _SwarmDraw, family: str) -> FaultSpec:
    offset = _within(round(float(d.rng.uniform(-d.max_skew_ms, d.max_skew_ms)), 1), d.max_skew_ms)
    return FaultSpec(family, offset_ms=offset, at_s=d.at(), duration_s=d.lasting(5, 30))


def _backfill_worker_crash(d: _SwarmDraw, family: str) -> FaultSpec:
    after_s = d.lasting(0.2, 5)
    return FaultSpec(family, phase="BACKFILL", after_s=after_s, duration_s=d.lasting(0.5, 3))


def _visibility_lag(d: _SwarmDraw, family: str) -> FaultSpec:
    return FaultSpec(family, side="new", at_s=0.0)


_SWARM_DRAWERS: dict[str, Callable[[_SwarmDraw, str], FaultSpec]] = {
    "node-crash": _node_crash,
    "node-pause": _node_pause,
    "slow-replica": _slow_replica,
    "error-rate": _error_rate,
    "lost-ack": _lost_ack,
    "index-rebuild": _index_rebuild,
    "latency-spike": _latency_spike,
    "partition": _partition,
    "app-instance-crash": _app_instance_crash,
    "late-config": _late_config,
    "clock-skew": _clock_skew,
    "backfill-worker-crash": _backfill_worker_crash,
    "visibility-lag": _visibility_lag,
}
"""One drawer per family swarm mode draws (SWARM_FAMILIES, and visibility-lag)."""


def _within(value: float, bound: float) -> float:
    """`value` clamped to [-bound, bound] (rounding may step past the bound)."""
    return min(bound, max(-bound, value))


def _side(rng: np.random.Generator) -> str:
    return "old" if rng.random() < 0.5 else "new"


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(0, len(options)))]
