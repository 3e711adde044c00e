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


def test_a_lost_ack_in_shadow_must_be_over_before_the_diff_that_gates_cutover() -> None:
    """In SHADOW, new's lost writes are found by the diff before CUTOVER, which runs only once
    SHADOW's hold is over: a lost-ack there must end before that hold does."""
    held = dataclasses.replace(LIMITS, shadow_hold_s=25.0)
    inside = FaultSpec("lost-ack", side="new", rate=0.1, phase="SHADOW", after_s=9, duration_s=8)
    assert _problems(inside, held) == []
    (problem,) = _problems(dataclasses.replace(inside, duration_s=16.0), held)
    assert "migration.hold_s.SHADOW (25 s)" in problem and "duration_s = 16.0" in problem, problem
    (problem,) = _problems(dataclasses.replace(inside, side="old"), held)
    assert 'side = "new"' in problem, problem


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
