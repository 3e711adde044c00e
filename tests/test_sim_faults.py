"""Fault schedules (`vecmig.sim.faults`): every fault the loader accepts is one the protocol can
survive, and the swarm draws only faults the loader accepts for the scenario at hand."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest

from vecmig.sim.faults import (
    NODE_FAMILIES,
    SWARM_FAMILIES,
    FaultLimits,
    FaultSpec,
    SwarmConfig,
    fault_problems,
    schedule_problems,
    swarm_schedule,
)

LIMITS = FaultLimits(instances=3, shards=2, replicas=2, lagged_sides=(), max_skew_ms=300.0)


def _problems(spec: FaultSpec, limits: FaultLimits = LIMITS) -> list[str]:
    return fault_problems(spec, limits, "faults[0]")


def test_a_node_fault_needs_a_second_replica() -> None:
    """With one replica the shard's only copy is down, lost or slow: reads fail or go stale
    whatever the layer does."""
    one = FaultLimits(instances=3, shards=2, replicas=1, lagged_sides=(), max_skew_ms=300.0)
    for family in NODE_FAMILIES:
        spec = FaultSpec(family, side="new", node="s0r0", factor=2.0, at_s=1.0)
        assert _problems(spec) == []
        (problem,) = _problems(spec, one)
        assert problem.startswith("faults[0]: ") and "clusters.replicas >= 2" in problem, problem


def test_an_app_instance_crash_needs_a_second_instance() -> None:
    alone = FaultLimits(instances=1, shards=2, replicas=2, lagged_sides=(), max_skew_ms=300.0)
    spec = FaultSpec("app-instance-crash", at_s=1.0, duration_s=2.0)
    assert _problems(spec) == []
    (problem,) = _problems(spec, alone)
    assert "instances.count >= 2" in problem and "got 1" in problem, problem


def test_a_late_config_delay_below_zero_is_refused() -> None:
    """Finding 8: SimPy raised "Negative delay" mid-run."""
    (problem,) = _problems(FaultSpec("late-config", delay_s=-1.0, at_s=1.0))
    assert problem.startswith("faults[0].delay_s"), problem
    assert "-1" in problem


def test_a_clock_skew_beyond_the_declared_bound_is_refused() -> None:
    assert _problems(FaultSpec("clock-skew", offset_ms=-300.0, at_s=1.0)) == []
    (problem,) = _problems(FaultSpec("clock-skew", offset_ms=-1e12, at_s=1.0))
    assert problem.startswith("faults[0].offset_ms"), problem
    assert "instances.max_clock_skew_ms" in problem and "300" in problem, problem


def test_visibility_lag_only_on_a_side_declared_lagged() -> None:
    """The layer corrects searches only on the sides in migration.lagged_sides."""
    spec = FaultSpec("visibility-lag", side="old", at_s=1.0)
    (problem,) = _problems(spec)
    assert "migration.lagged_sides" in problem and "'old'" in problem, problem
    lagged = FaultLimits(
        instances=3, shards=2, replicas=2, lagged_sides=("old",), max_skew_ms=300.0
    )
    assert _problems(spec, lagged) == []


@pytest.mark.parametrize(
    "spec",
    [
        FaultSpec("lost-ack", side="old", rate=0.1, phase="DUAL_WRITE", until_phase="BACKFILL"),
        FaultSpec("lost-ack", side="new", rate=0.1, at_s=3.0, until_phase="BACKFILL"),
        FaultSpec("lost-ack", side="new", rate=0.1, phase="SHADOW", until_phase="CUTOVER"),
        FaultSpec("lost-ack", side="new", rate=0.1, phase="DUAL_WRITE", duration_s=5.0),
    ],
    ids=["primary", "at_s", "after-the-diff", "no-until_phase"],
)
def test_a_lost_ack_only_on_the_secondary_before_the_verification_diff(spec: FaultSpec) -> None:
    (problem,) = _problems(spec)
    assert problem.startswith("faults[0]: a 'lost-ack' fault"), problem
    assert 'side = "new"' in problem and "until_phase" in problem, problem


@pytest.mark.parametrize(
    ("phase", "until"),
    [
        ("DUAL_WRITE", "BACKFILL"),
        ("DUAL_WRITE", "SHADOW"),
        ("BACKFILL", "SHADOW"),
    ],
)
def test_a_lost_ack_on_new_that_ends_by_shadow_is_accepted(phase: str, until: str) -> None:
    spec = FaultSpec("lost-ack", side="new", rate=0.1, phase=phase, until_phase=until)
    assert _problems(spec) == []


# The plan of the old-outage-in-shadow scenario: no diff before SHADOW starts before 30 s, and
# none before CUTOVER before 55 s.
HELD = dataclasses.replace(
    LIMITS, start_s=5.0, hold_s={"DUAL_WRITE": 5.0, "BACKFILL": 20.0, "SHADOW": 25.0}
)


def test_the_earliest_diffs_are_the_plan_start_plus_the_holds_before_them() -> None:
    assert (HELD.shadow_diff_s, HELD.cutover_diff_s) == (30.0, 55.0)
    assert HELD.earliest_gate_s("DUAL_WRITE") == 5.0
    assert (LIMITS.shadow_diff_s, LIMITS.cutover_diff_s) == (0.0, 0.0)


def test_a_lost_ack_timed_by_at_s_must_be_over_before_the_earliest_diff_before_cutover() -> None:
    """Phase-anchored timing cannot say when a diff runs (a gate's diff and its wait for the
    instances come before the phase it leads to is published); absolute time can: no diff
    before CUTOVER starts before the plan's start plus the holds of the phases before it."""
    inside = FaultSpec("lost-ack", side="new", rate=0.1, at_s=43.0, duration_s=11.0)
    assert _problems(inside, HELD) == []
    (problem,) = _problems(dataclasses.replace(inside, duration_s=12.0), HELD)
    assert "(55 s: migration.start_s plus migration.hold_s" in problem, problem
    assert "at_s = 43.0, duration_s = 12.0" in problem, problem
    (problem,) = _problems(dataclasses.replace(inside, duration_s=None), HELD)
    assert "at_s = 43.0" in problem, problem
    (problem,) = _problems(dataclasses.replace(inside, side="old"), HELD)
    assert 'side = "new"' in problem, problem


def test_a_lost_ack_in_shadow_counted_from_the_phase_is_refused() -> None:
    """The form the zoo's first old-outage-in-shadow used (SHADOW, over before SHADOW's hold):
    the hold counts from the try that published SHADOW, so the diff before CUTOVER can start
    before such a fault ends."""
    spec = FaultSpec("lost-ack", side="new", rate=0.1, phase="SHADOW", after_s=9, duration_s=8)
    (problem,) = _problems(spec, HELD)
    assert problem.startswith("faults[0]: a 'lost-ack' fault"), problem


def _schedule(*specs: FaultSpec, limits: FaultLimits = HELD) -> list[str]:
    return schedule_problems(list(specs), limits)


OLD_DOWN_IN_SHADOW = FaultSpec("partition", side="old", phase="SHADOW", after_s=2, duration_s=6)


def test_a_lost_ack_until_shadow_with_old_failing_in_shadow_is_refused() -> None:
    """What new dropped after the diff before SHADOW read its bucket and before SHADOW was
    published is unrepaired until the diff before CUTOVER; while old fails in SHADOW, reads
    fall back to new and any layer answers stale or fails (the safe layer fails them:
    `test_the_refused_pair_fails_reads_of_the_safe_layer`)."""
    loss = FaultSpec("lost-ack", side="new", rate=0.1, phase="BACKFILL", until_phase="SHADOW")
    (problem,) = _schedule(loss, OLD_DOWN_IN_SHADOW)
    assert problem.startswith("faults[0] and faults[1]: "), problem
    assert "'partition' fault on old" in problem and "2 s into SHADOW for 6 s" in problem
    assert 'until_phase = "BACKFILL" or at_s + duration_s < 30 s' in problem, problem
    assert _schedule(dataclasses.replace(loss, until_phase="BACKFILL"), OLD_DOWN_IN_SHADOW) == []
    assert _schedule(loss, dataclasses.replace(OLD_DOWN_IN_SHADOW, side="new")) == []
    lag = FaultSpec("visibility-lag", side="old", phase="SHADOW")
    assert _schedule(loss, lag) == []


@pytest.mark.parametrize(
    ("other", "refused"),
    [
        (FaultSpec("node-pause", side="old", node="s0r0", at_s=20.0, duration_s=5.0), False),
        (FaultSpec("node-pause", side="old", node="s0r0", at_s=20.0, duration_s=10.5), True),
        (FaultSpec("latency-spike", side="old", factor=4.0, at_s=60.0, duration_s=5.0), True),
        (FaultSpec("error-rate", side="old", rate=0.1, phase="BACKFILL", duration_s=5.0), True),
        (
            FaultSpec("error-rate", side="old", rate=0.1, phase="BACKFILL", until_phase="SHADOW"),
            False,
        ),
        (FaultSpec("partition", side="old", phase="CUTOVER", until_phase="DECOMMISSIONED"), False),
        (FaultSpec("partition", side="old", phase="CUTOVER", duration_s=3.0), True),
    ],
    ids=[
        "over-before-shadow",
        "into-shadow",
        "at-60s",
        "no-end",
        "until-shadow",
        "cutover",
        "cutover-outlasting-a-rollback",
    ],
)
def test_which_faults_on_old_may_meet_an_unrepaired_loss_in_shadow(
    other: FaultSpec, refused: bool
) -> None:
    """A fault on old counts when it may be active in SHADOW: timed by at_s and ending after
    the earliest diff before SHADOW, or started in a phase up to SHADOW and not ended by
    SHADOW's publication. One started in CUTOVER counts only when it has no until_phase and the
    plan may roll back into SHADOW."""
    loss = FaultSpec("lost-ack", side="new", rate=0.1, phase="DUAL_WRITE", until_phase="SHADOW")
    assert bool(_schedule(loss, other)) is refused
    forward = dataclasses.replace(HELD, steps_back=False)
    if other.phase == "CUTOVER":
        assert _schedule(loss, other, limits=forward) == []


def test_a_lost_ack_at_s_in_shadow_needs_old_faults_over_before_the_loss_starts() -> None:
    """The old-outage-in-shadow schedule: old is down from 36 s to 42 s and new drops writes
    from 43 s; the outage's fallback reads see only what the diff before SHADOW repaired."""
    loss = FaultSpec("lost-ack", side="new", rate=0.2, at_s=43.0, duration_s=11.0)
    outage = FaultSpec("partition", side="old", at_s=36.0, duration_s=6.0)
    assert _schedule(loss, outage) == []
    (problem,) = _schedule(loss, dataclasses.replace(outage, duration_s=7.5))
    assert "from 43 s to 54 s" in problem and "before the loss starts" in problem, problem
    (problem,) = _schedule(loss, OLD_DOWN_IN_SHADOW)
    assert "faults[1]" in problem, problem
    early = FaultSpec("lost-ack", side="new", rate=0.2, at_s=6.0, duration_s=23.0)
    assert _schedule(early, OLD_DOWN_IN_SHADOW) == []


@pytest.mark.parametrize(("phase", "until"), [("BACKFILL", "BACKFILL"), ("SHADOW", "BACKFILL")])
def test_a_fault_that_would_end_before_it_starts_is_refused(phase: str, until: str) -> None:
    spec = FaultSpec("error-rate", side="new", rate=0.1, phase=phase, until_phase=until)
    (problem,) = _problems(spec)
    assert "must come after" in problem and "never run" in problem, problem


def test_every_problem_of_a_fault_is_reported() -> None:
    spec = FaultSpec("slow-replica", side="middle", factor=0.5, at_s=-1.0)
    problems = _problems(spec)
    assert len(problems) == 3, problems
    assert any(p.startswith("faults[0].side") for p in problems)
    assert any(p.startswith("faults[0].factor") for p in problems)
    assert any(p.startswith("faults[0].at_s") for p in problems)


# ---------------------------------------------------------------------------------------------
# Swarm mode.


@pytest.mark.parametrize(
    "limits",
    [
        LIMITS,
        FaultLimits(instances=1, shards=3, replicas=1, lagged_sides=("new",), max_skew_ms=0.0),
        FaultLimits(instances=2, shards=1, replicas=3, lagged_sides=("new",), max_skew_ms=40.0),
    ],
    ids=["default", "one-of-each", "tight-skew"],
)
def test_the_swarm_draws_only_faults_the_loader_accepts(limits: FaultLimits) -> None:
    """Finding 8: with one replica the swarm drew node faults on 's0r1' (ValueError: unknown
    node) or on the shard's only copy."""
    config = SwarmConfig(enabled=True, families=[*SWARM_FAMILIES, "visibility-lag"])
    drawn: set[str] = set()
    for seed in range(60):
        schedule = swarm_schedule(
            config,
            np.random.default_rng(seed),
            duration_s=100,
            lagged_sides=limits.lagged_sides,
            shards=limits.shards,
            replicas=limits.replicas,
            instances=limits.instances,
            max_skew_ms=limits.max_skew_ms,
        )
        for i, spec in enumerate(schedule):
            assert fault_problems(spec, limits, f"swarm[{i}]") == [], (seed, spec)
            drawn.add(spec.family)
    if limits.replicas < 2:
        assert not drawn & set(NODE_FAMILIES), drawn
    if limits.instances < 2:
        assert "app-instance-crash" not in drawn
    assert "clock-skew" in drawn and "lost-ack" in drawn, drawn


def test_the_swarm_draws_what_it_drew_before_where_the_scenario_allows_every_family() -> None:
    """Swarm seeds replay as before: with two replicas, three instances and the default skew
    bound, the schedules of seeds 0-39 are the ones drawn before the loader's rules existed
    (the fingerprint was taken from the code at commit 18d7fd6)."""
    config = SwarmConfig(enabled=True, families=[*SWARM_FAMILIES, "visibility-lag"])
    drawn = [
        [
            dataclasses.asdict(spec)
            for spec in swarm_schedule(
                config,
                np.random.default_rng(seed),
                duration_s=100,
                lagged_sides=["new"],
                shards=2,
                replicas=2,
                instances=3,
                max_skew_ms=300.0,
            )
        ]
        for seed in range(40)
    ]
    fingerprint = hashlib.sha256(json.dumps(drawn, sort_keys=True).encode()).hexdigest()
    assert fingerprint == "e646c875f91c7c043d56e4a62293d5477ab9e79b647c72aa9f14162fcbc2884f"


@pytest.mark.slow
def test_the_refused_pair_fails_reads_of_the_safe_layer() -> None:
    """The pair `schedule_problems` refuses, run past the loader: new drops a tenth of its
    acknowledged writes until SHADOW is published, and old is unreachable for the first 20 s
    of SHADOW. Writes dropped after the diff before SHADOW read their bucket are unrepaired;
    the safe layer knows some of them (a mirrored read or a later diff queued their repair) and
    fails those reads rather than answer from new. No layer does better, which is why the
    loader refuses the schedule (and why the rule is not vacuous)."""
    from vecmig.sim.scenario import load
    from vecmig.sim.simulation import Simulation

    base = load("old-outage-in-shadow")
    loss = FaultSpec("lost-ack", side="new", rate=0.1, phase="DUAL_WRITE", until_phase="SHADOW")
    outage = FaultSpec("partition", side="old", phase="SHADOW", duration_s=20.0)
    scenario = dataclasses.replace(
        base,
        faults=[loss, outage],
        traffic=dataclasses.replace(base.traffic, rate=150.0),
    )
    verdict = Simulation(scenario, "safe", seed=1).run().verdict
    assert verdict.failed_reads > 0 or verdict.stale_reads > 0, verdict
