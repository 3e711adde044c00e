"""Fault schedules as data: which fault, where, and when it starts and stops.

A `FaultSpec` is one line of a schedule. It starts at a simulated time (`at_s`) or when the
controller publishes a phase (`phase`, plus `after_s`), and stops after `duration_s`, when a
later phase is published (`until_phase`), or at the end of the run (every fault is healed
before the final scans). Applying a schedule is `vecmig.sim.nemesis`'s job; this module only says
what a valid schedule is, and draws random ones (swarm mode).

Families are the fake cluster's (`CLUSTER_FAULT_FAMILIES`, applied to one side) and the
driver's own: latency-spike and partition (between the layer and a side), app-instance-crash,
late-config and clock-skew (one app instance), and backfill-worker-crash.

Lost-ack (an acknowledged write the cluster never stored) on the *primary* side is a real data
loss that no migration layer can prevent or even notice; the default schedules and the swarm
put it only on the secondary side, before the verification diff that precedes SHADOW.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
FAULT_FAMILIES: tuple[str, ...] = CLUSTER_FAULT_FAMILIES + DRIVER_FAULT_FAMILIES

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
}
REQUIRED: Mapping[str, tuple[str, ...]] = {
    "error-rate": ("side", "rate"),
    "lost-ack": ("side", "rate"),
    "slow-replica": ("side", "factor"),
    "latency-spike": ("side", "factor"),
}
PARTITION_MODES = ("unavailable", "timeout")
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


def check_fault(spec: FaultSpec, *, instances: int, shards: int, replicas: int) -> None:
    """Check a spec against the scenario's sizes. Raises ValueError naming the problem."""
    family = spec.family
    if family not in FAMILY_KEYS:
        raise ValueError(unknown_family(family))
    keys = FAMILY_KEYS[family]
    if "side" in keys and spec.side not in ("old", "new"):
        raise ValueError(f"side must be old or new for {family!r}, got {spec.side!r}")
    if spec.node:
        from vecmig.harness.clusters._node import parse_node_id

        shard, replica = parse_node_id(spec.node)
        if shard >= shards or replica >= replicas:
            raise ValueError(
                f"node {spec.node!r} does not exist with {shards} shard(s) of {replicas} replica(s)"
            )
    if "instance" in keys and spec.instance >= instances:
        raise ValueError(
            f"instance {spec.instance} does not exist; there are {instances} (0-based)"
        )
    if family in ("error-rate", "lost-ack") and not 0.0 <= spec.rate <= 1.0:
        raise ValueError(f"rate must be from 0 to 1, got {spec.rate!r}")
    if family in ("slow-replica", "latency-spike") and spec.factor < 1.0:
        raise ValueError(f"factor must be >= 1, got {spec.factor!r}")
    if family == "partition" and spec.mode not in PARTITION_MODES:
        raise ValueError(f"mode must be one of {', '.join(PARTITION_MODES)}, got {spec.mode!r}")
    if (spec.at_s is None) == (not spec.phase):
        raise ValueError(f"fault {family!r} needs exactly one of at_s or phase (when it starts)")
    for name in ("phase", "until_phase"):
        value = getattr(spec, name)
        if value and value not in PHASES:
            raise ValueError(f"{name} must be one of {', '.join(PHASES)}, got {value!r}")
    if spec.at_s is not None and spec.at_s < 0 or spec.after_s < 0:
        raise ValueError("at_s and after_s must not be negative")
    if spec.duration_s is not None and spec.duration_s < 0:
        raise ValueError("duration_s must not be negative")


# ---------------------------------------------------------------------------------------------
# Swarm mode: a random subset of families per seed, with random timings.

SWARM_FAMILIES: tuple[str, ...] = (
    "node-crash",
    "node-pause",
    "slow-replica",
    "error-rate",
    "lost-ack",
    "index-rebuild",
    "latency-spike",
    "partition",
    "app-instance-crash",
    "late-config",
    "clock-skew",
    "backfill-worker-crash",
)


@dataclass(frozen=True)
class SwarmConfig:
    """Swarm mode: a random subset of `families` per seed, with random timings, instead of the
    scenario's own [[faults]] (or besides them, with `keep_scenario_faults`: then make sure
    the two never leave both sides unable to serve a read at once)."""

    enabled: bool = False
    keep_scenario_faults: bool = False
    families: list[str] = field(default_factory=lambda: list(SWARM_FAMILIES))
    min_families: int = 2
    max_families: int = 6
    window_s: list[float] = field(default_factory=list)
    """[start, end] of timed faults; empty: the middle 80% of the run."""


def swarm_schedule(
    config: SwarmConfig,
    rng: np.random.Generator,
    *,
    duration_s: float,
    lagged_sides: Sequence[str],
    shards: int,
) -> list[FaultSpec]:
    """Random faults that a correct migration layer must survive without an anomaly.

    Node faults all hit the same replica number, so every shard keeps a serving copy. A side
    is made unreachable, erroneous or unsearchable only while it serves no reads (new before
    CUTOVER, old in CUTOVER), so at any moment one side can answer every read (see the
    module docstring for lost-ack).
    """
    families = [f for f in config.families if f in SWARM_FAMILIES]
    if "visibility-lag" in config.families and "new" in lagged_sides:
        families.append("visibility-lag")
    if not families:
        return []
    low = min(config.min_families, len(families))
    high = min(config.max_families, len(families))
    chosen = sorted(
        rng.choice(len(families), size=int(rng.integers(low, high + 1)), replace=False).tolist()
    )
    if len(config.window_s) >= 2:
        start, end = config.window_s[0], config.window_s[1]
    else:
        start, end = 0.1 * duration_s, 0.9 * duration_s
    victim = int(rng.integers(0, 2))  # replica number every node fault hits
    out: list[FaultSpec] = []

    def at() -> float:
        return round(float(rng.uniform(start, end)), 3)

    def lasting(low_s: float, high_s: float) -> float:
        return round(float(rng.uniform(low_s, high_s)), 3)

    for index in chosen:
        family = families[index]
        node = f"s{int(rng.integers(0, shards))}r{victim}"
        if family == "node-crash":
            out.append(
                FaultSpec(
                    family,
                    side=_side(rng),
                    node=node,
                    lose_data=bool(rng.random() < 0.5),
                    at_s=at(),
                    duration_s=lasting(2, 15),
                )
            )
        elif family == "node-pause":
            out.append(
                FaultSpec(family, side=_side(rng), node=node, at_s=at(), duration_s=lasting(1, 10))
            )
        elif family == "slow-replica":
            out.append(
                FaultSpec(
                    family,
                    side=_side(rng),
                    node=node,
                    factor=round(float(rng.uniform(2, 10)), 2),
                    at_s=at(),
                    duration_s=lasting(2, 20),
                )
            )
        elif family == "error-rate":
            # New before CUTOVER (it serves no reads yet), old during CUTOVER (new serves).
            if rng.random() < 0.5:
                out.append(
                    FaultSpec(
                        family,
                        side="new",
                        rate=round(float(rng.uniform(0.01, 0.2)), 3),
                        phase=_pick(rng, ("DUAL_WRITE", "BACKFILL", "SHADOW")),
                        after_s=lasting(0, 5),
                        duration_s=lasting(2, 20),
                        until_phase="CUTOVER",
                    )
                )
            else:
                out.append(
                    FaultSpec(
                        family,
                        side="old",
                        rate=round(float(rng.uniform(0.01, 0.2)), 3),
                        phase="CUTOVER",
                        after_s=lasting(0, 5),
                        duration_s=lasting(2, 20),
                    )
                )
        elif family == "lost-ack":
            out.append(
                FaultSpec(
                    family,
                    side="new",
                    rate=round(float(rng.uniform(0.01, 0.1)), 3),
                    phase="DUAL_WRITE",
                    after_s=lasting(0, 2),
                    duration_s=lasting(1, 10),
                    until_phase="BACKFILL",
                )
            )
        elif family == "index-rebuild":
            # Searches fail on the rebuilding side: new before CUTOVER (it serves no reads
            # yet), or old during CUTOVER (new serves); never both, so a fallback exists.
            if rng.random() < 0.5:
                out.append(
                    FaultSpec(
                        family,
                        side="new",
                        phase=_pick(rng, ("DUAL_WRITE", "BACKFILL", "SHADOW")),
                        after_s=lasting(0, 5),
                        duration_s=lasting(1, 8),
                        until_phase="CUTOVER",
                    )
                )
            else:
                out.append(
                    FaultSpec(
                        family,
                        side="old",
                        phase="CUTOVER",
                        after_s=lasting(0, 5),
                        duration_s=lasting(1, 8),
                    )
                )
        elif family == "latency-spike":
            out.append(
                FaultSpec(
                    family,
                    side=_side(rng),
                    factor=round(float(rng.uniform(2, 8)), 2),
                    at_s=at(),
                    duration_s=lasting(1, 10),
                )
            )
        elif family == "partition":
            mode = _pick(rng, PARTITION_MODES)
            if rng.random() < 0.5:
                out.append(
                    FaultSpec(
                        family,
                        side="new",
                        mode=mode,
                        phase=_pick(rng, ("DUAL_WRITE", "BACKFILL", "SHADOW")),
                        after_s=lasting(0, 5),
                        duration_s=lasting(1, 8),
                        until_phase="CUTOVER",
                    )
                )
            else:
                out.append(
                    FaultSpec(
                        family,
                        side="old",
                        mode=mode,
                        phase="CUTOVER",
                        after_s=lasting(0, 3),
                        duration_s=lasting(1, 8),
                    )
                )
        elif family == "app-instance-crash":
            out.append(FaultSpec(family, at_s=at(), duration_s=lasting(1, 10)))
        elif family == "late-config":
            out.append(
                FaultSpec(
                    family,
                    delay_s=lasting(3, 30),
                    phase=_pick(rng, ("DUAL_WRITE", "BACKFILL", "SHADOW")),
                    duration_s=lasting(10, 40),
                )
            )
        elif family == "clock-skew":
            out.append(
                FaultSpec(
                    family,
                    offset_ms=round(float(rng.uniform(-300, 300)), 1),
                    at_s=at(),
                    duration_s=lasting(5, 30),
                )
            )
        elif family == "backfill-worker-crash":
            out.append(
                FaultSpec(
                    family, phase="BACKFILL", after_s=lasting(0.2, 5), duration_s=lasting(0.5, 3)
                )
            )
        elif family == "visibility-lag":
            out.append(FaultSpec(family, side="new", at_s=0.0))
    return out


def _side(rng: np.random.Generator) -> str:
    return "old" if rng.random() < 0.5 else "new"


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(0, len(options)))]
