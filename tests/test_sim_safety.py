"""Scenarios nobody here had written that broke the safe layer or the harness (issue 10),
replayed in the simulator and judged by the checker. Each failed before its fix."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from vecmig.harness.cli import EXIT_STALLED, exit_code
from vecmig.sim.faults import FaultSpec
from vecmig.sim.scenario import ClustersConfig, Scenario, from_dict
from vecmig.sim.simulation import Simulation

LAGGED_NEW: dict[str, Any] = {"lagged_sides": ["new"], "backfill_rate": 200}


def scenario(**sections: Any) -> Scenario:
    return from_dict({"duration_s": 120, "seed": 1, **sections})


def test_repairs_into_a_lagged_side_do_not_serve_what_they_superseded() -> None:
    """Finding 2. new lags (refresh 1.5 s) and fails 30% of requests from SHADOW on, so many
    secondary writes are repaired, some just after cutover. The repair worker did not note
    its writes in the visibility window: a search on new then returned p001393 at version 1
    after version 2 had been acknowledged (1 stale read before the fix)."""
    run = scenario(
        instances={"config_delay": {"dist": "lognormal", "median_ms": 800, "sigma": 0.5}},
        migration={
            **LAGGED_NEW,
            "visibility_window_ms": 2000,
            "refresh_interval_ms": 1500,
            "hold_s": {"DUAL_WRITE": 5, "SHADOW": 15, "CUTOVER": 5},
        },
        traffic={
            "merchant": {"price": 0.3, "stock": 0.1, "add": 0.1, "reembed": 0.1, "delist": 0.4}
        },
        faults=[
            {
                "family": "error-rate",
                "side": "new",
                "rate": 0.3,
                "phase": "SHADOW",
                "duration_s": 40,
            }
        ],
    )
    result = Simulation(run, "safe", seed=1).run()
    assert result.verdict.valid, result.verdict.to_json()
    assert result.end_phase == "DECOMMISSIONED"


def test_skewed_clocks_over_a_lagged_side_do_not_drop_a_newer_write() -> None:
    """Finding 3. In CUTOVER one instance's clock runs 300 ms behind and another's 300 ms
    ahead; new lags with a window (1.6 s) barely over its refresh interval (1.5 s). Notes
    stamped by one clock and read by another aged out early, and the overlay kept the older
    version (2 stale reads before the fix). Searches now re-read their hits by id."""
    skew = {"family": "clock-skew", "phase": "CUTOVER"}
    run = scenario(
        migration={
            **LAGGED_NEW,
            "visibility_window_ms": 1600,
            "refresh_interval_ms": 1500,
            "hold_s": {"DUAL_WRITE": 5, "SHADOW": 15, "CUTOVER": 30},
            "soak_s": 20,
        },
        faults=[
            {**skew, "instance": 0, "offset_ms": -300},
            {**skew, "instance": 1, "offset_ms": 300},
        ],
    )
    result = Simulation(run, "safe", seed=1).run()
    assert result.verdict.valid, result.verdict.to_json()


def test_the_harness_does_not_repair_new_before_the_final_scans() -> None:
    """Finding 6. After DECOMMISSIONED, new (one replica per shard, which the loader refuses)
    loses a node's disk: those writes are gone, and no layer can bring them back. The
    simulator used to verify and copy old into new before taking its final scans, and called
    the run valid; the checker must see what new holds."""
    run = scenario(
        migration={"hold_s": {"DUAL_WRITE": 2, "SHADOW": 5, "CUTOVER": 2}, "soak_s": 2},
        catalog={"products": 400},
    )
    run = dataclasses.replace(
        run,
        clusters=ClustersConfig(shards=2, replicas=1),
        faults=[
            FaultSpec(
                "node-crash",
                side="new",
                node="s0r0",
                lose_data=True,
                phase="DECOMMISSIONED",
                after_s=2.0,
                duration_s=1.0,
            )
        ],
    )
    result = Simulation(run, "safe", seed=1).run()
    assert result.end_phase == "DECOMMISSIONED"
    assert result.verdict.lost_writes > 0, result.verdict.to_json()


def test_a_plan_that_aborts_and_advances_again_finishes() -> None:
    """Finding 7. ABORT then advance left the backfill worker stopped: the run sat in BACKFILL
    for the rest of its time, the gate refusing hundreds of times, and was called valid. The
    worker now outlives phases, and a copy belongs to its BACKFILL attempt."""
    advance = ["advance"] * 5
    run = scenario(
        migration={
            "steps": ["advance", "advance", "abort", *advance],
            "hold_s": {"DUAL_WRITE": 2, "SHADOW": 5, "CUTOVER": 2},
            "soak_s": 2,
            "backfill_rate": 400,
        },
        catalog={"products": 400},
    )
    result = Simulation(run, "safe", seed=1).run()
    steps = [p.get("step") for p in result.phases[1:]]
    assert steps == ["advance", "advance", "abort", *advance], result.phases
    assert result.verdict.valid, result.verdict.to_json()


def test_a_run_that_cannot_finish_its_plan_is_stalled_not_valid() -> None:
    """Finding 7 too. A CUTOVER gate that can never open (more mirrored reads than the run
    makes) holds the plan: the verdict is stalled, with the gate's reasons, exit 4."""
    run = scenario(
        duration_s=60,
        migration={"min_mirrored_reads": 1_000_000, "stall_after_s": 20, "backfill_rate": 400},
        catalog={"products": 400},
    )
    result = Simulation(run, "safe", seed=1).run()
    stall = result.verdict.stall
    assert stall is not None and stall.why == "unfinished" and stall.target == "CUTOVER"
    assert any("mirrored reads" in reason for reason in stall.reasons), stall
    assert not any(result.verdict.counts().values())
    assert exit_code(result.verdict) == EXIT_STALLED


def _controller_crash(**when: Any) -> Scenario:
    return scenario(
        migration={
            "hold_s": {"DUAL_WRITE": 2, "SHADOW": 5, "CUTOVER": 2},
            "soak_s": 2,
            "backfill_rate": 400,
        },
        catalog={"products": 400},
        faults=[{"family": "controller-crash", **when}],
    )


@pytest.mark.parametrize(
    ("phase", "after_s"),
    [("BACKFILL", 0.5), ("SHADOW", 0.001), ("CUTOVER", 0.001)],
    ids=["mid-copy", "mid-calibration", "entering-cutover"],
)
def test_a_controller_that_dies_mid_plan_is_restarted_and_the_plan_finishes(
    phase: str, after_s: float
) -> None:
    """controller-crash: the controller dies (in BACKFILL's gate polls, 1 ms into SHADOW
    while it calibrates the noise floor, 1 ms into CUTOVER), and a new one starts 1 s later
    knowing only what the coordinator and the state store hold. It walks the plan's steps
    not yet taken (a plan event of its own), and the run ends DECOMMISSIONED and valid."""
    result = Simulation(
        _controller_crash(phase=phase, after_s=after_s, duration_s=1), "safe", seed=1
    ).run()
    assert result.verdict.valid and result.end_phase == "DECOMMISSIONED", result.verdict.to_json()
    assert result.controller["restarts"] == 1
    plans = [e.value for e in result.events if e.f == "plan"]
    assert [p["from"] for p in plans] == ["OLD_ONLY", phase], plans
    taken = {"BACKFILL": 2, "SHADOW": 3, "CUTOVER": 4}[phase]
    assert len(plans[1]["steps"]) == 5 - taken
    assert [t["phase"] for t in result.controller["transitions"]] == [
        "DUAL_WRITE",
        "BACKFILL",
        "SHADOW",
        "CUTOVER",
        "DECOMMISSIONED",
    ]


def test_a_controller_restarted_in_shadow_measures_the_noise_floor_it_died_measuring() -> None:
    """Found by controller-crash: the noise floor is measured on entering SHADOW, so a
    controller that died mid-calibration left none, and its successor never took one: the
    gate to CUTOVER then judged mirrored reads against an allowance of zero instead of the
    floor (stricter, never unsafe, but a plan can hold where the floor would let it go).
    The gate to CUTOVER now calibrates first when no floor is known."""
    result = Simulation(
        _controller_crash(phase="SHADOW", after_s=0.001, duration_s=1), "safe", seed=1
    ).run()
    assert result.controller["noise_floor"] is not None


def test_a_controller_that_never_comes_back_leaves_the_run_stalled() -> None:
    """No progress is no pass: a controller that dies in SHADOW for longer than the run
    leaves the plan unfinished, a stall (exit 4), whatever the reads saw."""
    run = dataclasses.replace(
        _controller_crash(phase="SHADOW", after_s=0.5, duration_s=500), duration_s=40
    )
    result = Simulation(run, "safe", seed=1).run()
    assert result.end_phase == "SHADOW"
    stall = result.verdict.stall
    assert stall is not None and stall.why == "unfinished", result.verdict.to_json()
    assert exit_code(result.verdict) == EXIT_STALLED
