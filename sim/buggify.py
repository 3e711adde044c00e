"""BUGGIFY: draw the settings of a run from its seed, as FoundationDB's simulator does.

Swarm mode (`sim.faults.swarm_schedule`) draws faults for a fixed scenario. Bugs hide in the
settings too: a short lease, many instances with a slow config store, one replica, a lagged
side with a tight window, a plan that aborts and starts again. `buggify(scenario, seed)`
returns the scenario with its settings drawn from the seed, within what the loader accepts
(the result goes through `scenario.from_dict`, so every draw obeys every rule the loader
enforces, and a draw the loader refuses is a bug here), and with faults of every family at
random times in any phase, within the fault model a correct layer must survive:

* a side's availability faults (error rate, partition, index rebuild) hit it only while the
  other side can serve every read: new before CUTOVER, old during CUTOVER;
* node faults need two replicas, and all hit the same replica number, so each shard keeps a
  serving copy;
* lost acknowledgements hit only new, before the verification diff that precedes SHADOW;
* at least one app instance is never crashed;
* clock skews stay within the declared bound;
* the controller may die anywhere, and is restarted (its draws come from their own stream).

The same scenario and seed always give the same draw, so a failing seed replays with
`vecmig simulate SCENARIO --buggify --seed N`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from vecmig.harness.clusters.fake import parse_node_id
from vecmig.harness.core.phases import Phase, Step, next_phase
from vecmig.sim.faults import (
    FAMILY_KEYS,
    TIMING_KEYS,
    FaultLimits,
    FaultSpec,
    fault_problems,
    unrepaired_in_shadow,
)
from vecmig.sim.scenario import Scenario, from_dict

STREAM = 0xB0661F7
"""Mixed into the seed, so that the settings drawn do not correlate with the run's streams."""

ROLE_PHASES = {"new": ("DUAL_WRITE", "BACKFILL", "SHADOW"), "old": ("CUTOVER",)}
"""Where a side's availability faults may start: while the other side can serve reads."""
ROLE_UNTIL = {"new": "CUTOVER", "old": "DECOMMISSIONED"}

MIX_VARIANTS: tuple[dict[str, float], ...] = (
    {"price": 0.45, "stock": 0.2, "add": 0.1, "reembed": 0.1, "delist": 0.1, "relist": 0.05},
    {"price": 0.15, "stock": 0.1, "add": 0.1, "reembed": 0.05, "delist": 0.4, "relist": 0.2},
    # delete-heavy, products listed again (a delete then a re-insert of the same id)
    {"price": 0.1, "stock": 0.1, "add": 0.1, "reembed": 0.6, "delist": 0.1},  # re-embeds
    {"price": 0.3, "stock": 0.5, "add": 0.05, "reembed": 0.05, "delist": 0.1},  # stock churn
)


def buggify(base: Scenario, seed: int) -> Scenario:
    """`base` with its settings and faults drawn from `seed` (see the module docstring)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, STREAM]))
    draw = _Draw(rng)
    table = _as_table(base)
    table.pop("faults", None)
    table["swarm"] = {"enabled": False}
    table["seed"] = seed
    table["name"] = base.name
    table["description"] = f"{base.description} (buggify seed {seed})".strip()
    _catalog(draw, table["catalog"])
    if base.clusters.fidelity == "scaled":
        # A scaled scenario's cost profile was measured at its dimension: keep it (the draw
        # is still made, so that every other draw is the same as an exact scenario's).
        table["catalog"]["dim"] = base.catalog.dim
    _clusters(draw, table["clusters"])
    _latency(draw, table["latency"])
    _instances(draw, table["instances"], table["latency"])
    _traffic(draw, table["traffic"])
    keep_lagged = draw.chance(0.5)
    _migration(draw, table)
    if keep_lagged:
        # The base scenario's own lag (e.g. eventually-consistent's), half of the time.
        table["migration"]["lagged_sides"] = list(base.migration.lagged_sides)
    victim = draw.integer(0, 1)  # the replica number every node fault hits
    table["faults"] = _base_faults(draw, base, table, victim) + _faults(draw, table, victim)
    _fit_lost_acks(table)
    table["faults"] += _controller_crashes(seed)
    return from_dict(table, source=base.source)


CONTROL_STREAM = 0xC0117
"""controller-crash came after the other families: its draws have a stream of their own, so
that every other draw of a seed is what it was before."""


def _controller_crashes(seed: int) -> list[dict[str, Any]]:
    """Up to three deaths of the controller, a third of the time: at a random time, or some
    time into a phase, half of the time within 50 ms of its publish (mid-calibration on
    entering SHADOW, mid-checkpoint reset after an ABORT), each restarted after a while."""
    draw = _Draw(np.random.default_rng(np.random.SeedSequence([seed, STREAM, CONTROL_STREAM])))
    if not draw.chance(1 / 3):
        return []
    crashes = []
    for _ in range(draw.integer(1, 3)):
        when: dict[str, Any]
        if draw.chance(0.3):
            when = {"at_s": draw.uniform(0.0, 120.0)}
        else:
            phase = draw.pick(("DUAL_WRITE", "BACKFILL", "SHADOW", "CUTOVER", "OLD_ONLY"))
            soon = draw.chance(0.5)
            when = {"phase": phase, "after_s": draw.uniform(0.0, 0.05 if soon else 8.0, 4)}
        crashes.append(
            {"family": "controller-crash", **when, "duration_s": draw.uniform(0.05, 5.0)}
        )
    return crashes


def _fit_lost_acks(table: dict[str, Any]) -> None:
    """End a lost-ack with BACKFILL (where the copy repairs what it dropped) instead of SHADOW
    when the schedule also has a fault on old that may send SHADOW reads to new before the
    diff before CUTOVER (`faults.schedule_problems`): no layer survives that pair. One that
    starts in BACKFILL cannot end there, and is dropped. No number is drawn, so every seed
    without such a pair draws exactly as before."""
    migration, instances, clusters = table["migration"], table["instances"], table["clusters"]
    limits = FaultLimits(
        instances=instances["count"],
        shards=clusters["shards"],
        replicas=clusters["replicas"],
        lagged_sides=migration["lagged_sides"],
        max_skew_ms=instances["max_clock_skew_ms"],
        start_s=migration["start_s"],
        hold_s=migration["hold_s"],
        steps_back=FaultLimits.plan_steps_back(migration["steps"]),
    )
    specs = [FaultSpec(**fault) for fault in table["faults"]]
    unsafe = {i for i, _ in unrepaired_in_shadow(specs, limits)}
    for i in unsafe:
        table["faults"][i]["until_phase"] = "BACKFILL"
    table["faults"] = [
        fault
        for i, fault in enumerate(table["faults"])
        if i not in unsafe or fault.get("phase") == "DUAL_WRITE"
    ]


def _base_faults(
    draw: _Draw, base: Scenario, table: dict[str, Any], victim: int
) -> list[dict[str, Any]]:
    """Half of the time, the base scenario's own faults (its character), those of them that
    the drawn settings still let run (a node fault needs two replicas, and so on).

    The base's node faults move to the replica number `victim` that the drawn ones hit: the
    base spaced them out in time for its own plan, and under a drawn plan a crash of `s1r0`
    and a pause of `s1r1` can overlap, leaving a shard of that side with no serving copy
    while the other side is partitioned (seed 2 of `default`), which no layer survives."""
    if not base.faults or not draw.chance(0.5):
        return []
    limits = FaultLimits(
        instances=table["instances"]["count"],
        shards=table["clusters"]["shards"],
        replicas=table["clusters"]["replicas"],
        lagged_sides=table["migration"]["lagged_sides"],
        max_skew_ms=table["instances"]["max_clock_skew_ms"],
    )
    kept = []
    for spec in base.faults:
        fitted = _fit_base_fault(draw, spec, table, victim)
        if fitted is not None and not fault_problems(fitted, limits, "faults[0]"):
            kept.append(_fault_table(fitted))
    return kept


def _fit_base_fault(
    draw: _Draw, spec: FaultSpec, table: dict[str, Any], victim: int
) -> FaultSpec | None:
    """A base fault fitted to the fault model of the module docstring, or None to drop it."""
    if spec.family in ("error-rate", "partition", "index-rebuild"):
        # Written for the base's own plan: bound it to where the other side serves reads,
        # since the drawn plan may step back (ROLLBACK, ABORT) while it lasts.
        if spec.phase not in ROLE_PHASES[spec.side]:
            return None
        return dataclasses.replace(spec, until_phase=ROLE_UNTIL[spec.side])
    if spec.family in ("node-crash", "node-pause", "slow-replica"):
        shards, replicas = table["clusters"]["shards"], table["clusters"]["replicas"]
        shard = draw.integer(0, shards - 1)
        if spec.node:
            shard = min(parse_node_id(spec.node)[0], shards - 1)
        return dataclasses.replace(spec, node=f"s{shard}r{min(victim, replicas - 1)}")
    return spec


def _fault_table(spec: FaultSpec) -> dict[str, Any]:
    """A fault as the TOML table the loader reads back: its family's keys and its timing."""
    keys = ("family", *FAMILY_KEYS[spec.family], *TIMING_KEYS[1:])
    defaults = FaultSpec()
    return {
        key: getattr(spec, key)
        for key in keys
        if key == "family" or getattr(spec, key) != getattr(defaults, key)
    }


class _Draw:
    """Small helpers over one generator."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def integer(self, low: int, high: int) -> int:
        """From low to high, both included."""
        return int(self.rng.integers(low, high + 1))

    def uniform(self, low: float, high: float, digits: int = 3) -> float:
        return round(float(self.rng.uniform(low, high)), digits)

    def pick(self, options: Any) -> Any:
        options = list(options)
        return options[int(self.rng.integers(0, len(options)))]


def _as_table(value: Any) -> Any:
    """A dataclass as the TOML table the loader reads back (None values dropped)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _as_table(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if not f.metadata.get("internal") and getattr(value, f.name) is not None
        }
    if isinstance(value, list):
        return [_as_table(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_table(v) for k, v in value.items()}
    return value


# ---------------------------------------------------------------------------------------------
# Settings.


def _catalog(draw: _Draw, catalog: dict[str, Any]) -> None:
    catalog["products"] = draw.pick((200, 400, 800, 1500, 2500))
    catalog["dim"] = draw.pick((8, 16, 32, 64))
    catalog["categories"] = draw.integer(2, 12)


def _clusters(draw: _Draw, clusters: dict[str, Any]) -> None:
    clusters["shards"] = draw.integer(1, 4)
    clusters["replicas"] = draw.pick((1, 2, 2, 3))
    clusters["concurrency_per_node"] = draw.integer(2, 16)


def _latency(draw: _Draw, latency: dict[str, Any]) -> None:
    latency["op_timeout_ms"] = draw.pick((100.0, 250.0, 500.0))
    latency["network"] = {
        "dist": "lognormal",
        "median_ms": draw.uniform(0.1, 2.0),
        "sigma": draw.uniform(0.2, 0.8),
    }


def _instances(draw: _Draw, instances: dict[str, Any], latency: dict[str, Any]) -> None:
    """Lease settings drawn to the edge of what `phases.lease_rules` allows."""
    instances["count"] = draw.integer(1, 8)
    skew = draw.pick((0.0, 50.0, 300.0, 500.0))
    poll = draw.pick((100.0, 500.0, 1000.0, 3000.0))
    margin = latency["op_timeout_ms"] + 2 * skew + draw.uniform(1.0, 500.0)
    instances["max_clock_skew_ms"] = skew
    instances["poll_interval_ms"] = poll
    instances["lease_margin_ms"] = round(margin, 3)
    slack = draw.uniform(1.0, 5000.0)
    # Past the margin, the lease must cover a poll and a clock jump of twice the skew bound.
    # Only a draw that would not is moved (by that jump), so every other seed draws as before.
    jump = 2 * skew if slack <= 2 * skew else 0.0
    instances["lease_ms"] = round(poll + margin + jump + slack, 3)
    instances["config_delay"] = {
        "dist": "lognormal",
        "median_ms": draw.pick((5.0, 50.0, 200.0, 1000.0, 2000.0)),
        "sigma": draw.uniform(0.2, 1.0),
    }
    instances["restart_s"] = draw.uniform(0.5, 8.0)


def _traffic(draw: _Draw, traffic: dict[str, Any]) -> None:
    traffic["rate"] = draw.pick((15.0, 30.0, 60.0, 100.0))
    traffic["diurnal_amplitude"] = draw.uniform(0.0, 0.5)
    traffic["shopper_share"] = draw.uniform(0.3, 0.9)
    traffic["filtered_share"] = draw.uniform(0.0, 0.5)
    traffic["merchant"] = dict(draw.pick(MIX_VARIANTS))
    if draw.chance(0.4):
        traffic["hot_ids"] = draw.integer(1, 20)
        traffic["hot_share"] = draw.uniform(0.1, 0.7)
    if draw.chance(0.2):
        traffic["bulk_reembed"] = {
            "start_s": draw.uniform(0.0, 60.0),
            "rate": draw.uniform(5.0, 50.0),
            "count": draw.integer(50, 500),
        }


def _plan(draw: _Draw) -> list[str]:
    """A walk of the phase table: mostly forward, with up to two ROLLBACKs or ABORTs, ending
    in SHADOW, CUTOVER or (most often) DECOMMISSIONED."""
    phase, back = Phase.OLD_ONLY, 0
    steps: list[str] = []
    while phase is not Phase.DECOMMISSIONED and len(steps) < 16:
        if phase in (Phase.SHADOW, Phase.CUTOVER) and draw.chance(0.06):
            break
        backward = [s for s in (Step.ROLLBACK, Step.ABORT) if s in _allowed(phase)]
        step = Step.ADVANCE
        if backward and back < 2 and draw.chance(0.15):
            step, back = draw.pick(backward), back + 1
        phase = next_phase(phase, step)
        steps.append(step.value)
    return steps


def _allowed(phase: Phase) -> tuple[Step, ...]:
    allowed = []
    for step in Step:
        try:
            next_phase(phase, step)
        except Exception:  # noqa: BLE001 - PhaseError: not allowed from here
            continue
        allowed.append(step)
    return tuple(allowed)


def _migration(draw: _Draw, table: dict[str, Any]) -> None:
    m, traffic = table["migration"], table["traffic"]
    products = table["catalog"]["products"]
    m["start_s"] = draw.uniform(1.0, 10.0)
    m["steps"] = _plan(draw)
    m["hold_s"] = {
        "DUAL_WRITE": draw.uniform(0.0, 8.0),
        "SHADOW": draw.uniform(2.0, 25.0),
        "CUTOVER": draw.uniform(0.0, 15.0),
    }
    m["retry_ms"] = draw.pick((100.0, 250.0, 500.0, 1000.0))
    m["batch_size"] = draw.pick((8, 32, 128, 512))
    m["backfill_rate"] = draw.pick((0.0, 50.0, 200.0, 1000.0))
    m["mirror_sample_rate"] = draw.uniform(0.05, 1.0)
    # Enough mirrored reads to gather in about 15 s of SHADOW at the trough of the day.
    searches = traffic["rate"] * (1 - traffic["diurnal_amplitude"]) * traffic["shopper_share"]
    m["min_mirrored_reads"] = max(0, int(searches * m["mirror_sample_rate"] * 15 * 0.5))
    m["soak_s"] = draw.uniform(0.0, 15.0)
    m["slo_p99_ms"] = draw.pick((50.0, 100.0, 200.0))
    m["calibration_queries"] = draw.integer(10, 40)
    m["repair_interval_ms"] = draw.pick((50.0, 200.0, 1000.0))
    lagged = [side for side in ("old", "new") if draw.chance(0.3)]
    m["lagged_sides"] = lagged
    refresh = draw.pick((200.0, 1000.0, 2500.0))
    m["refresh_interval_ms"] = refresh
    m["visibility_window_ms"] = round(refresh * draw.uniform(1.05, 3.0), 3)
    copy_s = products / (m["backfill_rate"] or 300.0)
    m["stall_after_s"] = round(max(120.0, 2 * copy_s + 60.0), 3)
    m["end_after_plan_s"] = draw.uniform(3.0, 15.0)
    table["duration_s"] = 900.0
    """A cap: the run ends a little after its plan (or is stalled long before the cap)."""


# ---------------------------------------------------------------------------------------------
# Faults.

FAMILIES = (
    "node-crash",
    "node-pause",
    "slow-replica",
    "error-rate",
    "partition",
    "index-rebuild",
    "lost-ack",
    "latency-spike",
    "app-instance-crash",
    "late-config",
    "clock-skew",
    "backfill-worker-crash",
)


def _faults(draw: _Draw, table: dict[str, Any], victim: int) -> list[dict[str, Any]]:
    count = draw.pick((0, 1, 2, 3, 4, 6, 8, 10))
    return [
        fault
        for _ in range(count)
        if (fault := _fault(draw, table, draw.pick(FAMILIES), victim)) is not None
    ]


def _when(draw: _Draw, table: dict[str, Any]) -> dict[str, Any]:
    """At a random time, or some time into a random phase of the plan."""
    if draw.chance(0.4):
        return {"at_s": draw.uniform(0.0, 120.0)}
    phases = {"DUAL_WRITE", "BACKFILL", "SHADOW", "CUTOVER", "DECOMMISSIONED"}
    return {"phase": draw.pick(sorted(phases)), "after_s": draw.uniform(0.0, 8.0)}


# one branch per fault family; the per-family fault registry (issue 12) takes them (C901)
def _fault(draw: _Draw, table: dict[str, Any], family: str, victim: int) -> dict[str, Any] | None:  # noqa: C901
    clusters, instances = table["clusters"], table["instances"]
    count = instances["count"]
    fault: dict[str, Any] = {"family": family}
    if family in ("node-crash", "node-pause", "slow-replica"):
        if clusters["replicas"] < 2:
            return None
        replica = min(victim, clusters["replicas"] - 1)
        fault["side"] = draw.pick(("old", "new"))
        fault["node"] = f"s{draw.integer(0, clusters['shards'] - 1)}r{replica}"
        if family == "node-crash":
            fault["lose_data"] = draw.chance(0.5)
        if family == "slow-replica":
            fault["factor"] = draw.uniform(2.0, 10.0, 2)
        return {**fault, **_when(draw, table), "duration_s": draw.uniform(1.0, 15.0)}
    if family in ("error-rate", "partition", "index-rebuild"):
        side = draw.pick(("old", "new"))
        fault["side"] = side
        if family == "error-rate":
            fault["rate"] = draw.uniform(0.01, 0.4)
        if family == "partition":
            fault["mode"] = draw.pick(("unavailable", "timeout"))
        return {
            **fault,
            "phase": draw.pick(ROLE_PHASES[side]),
            "after_s": draw.uniform(0.0, 5.0),
            "duration_s": draw.uniform(1.0, 15.0),
            "until_phase": ROLE_UNTIL[side],
        }
    if family == "lost-ack":
        start = draw.pick(("DUAL_WRITE", "BACKFILL"))
        return {
            **fault,
            "side": "new",
            "rate": draw.uniform(0.01, 0.2),
            "phase": start,
            "after_s": draw.uniform(0.0, 3.0),
            "duration_s": draw.uniform(1.0, 10.0),
            "until_phase": "SHADOW" if start == "BACKFILL" else draw.pick(("BACKFILL", "SHADOW")),
        }
    if family == "latency-spike":
        fault["side"] = draw.pick(("old", "new"))
        fault["factor"] = draw.uniform(2.0, 8.0, 2)
        return {**fault, **_when(draw, table), "duration_s": draw.uniform(1.0, 10.0)}
    if family == "app-instance-crash":
        if count < 2:
            return None
        fault["instance"] = draw.integer(1, count - 1)  # instance 0 never dies
        return {**fault, **_when(draw, table), "duration_s": draw.uniform(0.5, 10.0)}
    if family == "late-config":
        fault["instance"] = draw.integer(0, count - 1)
        fault["delay_s"] = draw.uniform(1.0, 30.0)
        return {**fault, **_when(draw, table), "duration_s": draw.uniform(5.0, 40.0)}
    if family == "clock-skew":
        bound = instances["max_clock_skew_ms"]
        if not bound:
            return None
        fault["instance"] = draw.integer(0, count - 1)
        fault["offset_ms"] = draw.uniform(-bound, bound, 1)
        return {**fault, **_when(draw, table), "duration_s": draw.uniform(2.0, 30.0)}
    # backfill-worker-crash
    return {
        **fault,
        "phase": "BACKFILL",
        "after_s": draw.uniform(0.0, 5.0),
        "duration_s": draw.uniform(0.2, 3.0),
    }
