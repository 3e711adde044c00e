"""Scenario files are checked at load time: an unknown key, a bad value or an unknown fault
family fails before anything runs, with a message that names the key and the valid values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vecmig.harness.cli import main
from vecmig.sim.faults import FAULT_FAMILIES, SWARM_FAMILIES, SwarmConfig, swarm_schedule
from vecmig.sim.scenario import SCENARIO_DIR, ScenarioError, from_dict, load, scenario_names


def _error(data: dict[str, Any]) -> str:
    with pytest.raises(ScenarioError) as info:
        from_dict(data)
    return str(info.value)


def test_every_scenario_file_loads() -> None:
    names = scenario_names()
    for required in (
        "default",
        "black-friday",
        "eventually-consistent",
        "late-config",
        "node-lost-cutover",
        "old-outage-in-shadow",
        "new-flaps-in-cutover",
        "abort-after-cutover",
    ):
        assert required in names
    for name in names:
        scenario = load(name)
        assert scenario.name == name
        assert scenario.source == str(SCENARIO_DIR / f"{name}.toml")


def test_a_scenario_loads_by_path_as_well_as_by_name() -> None:
    assert load(str(SCENARIO_DIR / "default.toml")) == load("default")


def test_an_unknown_top_level_key_is_named_with_the_valid_ones() -> None:
    message = _error({"durtion_s": 10})
    assert "durtion_s" in message
    assert "duration_s" in message and "migration" in message


def test_an_unknown_nested_key_is_named_by_its_path() -> None:
    message = _error({"migration": {"hold": {}}})
    assert "migration.hold" in message
    assert "hold_s" in message


def test_an_unknown_phase_in_a_table_of_phases_names_the_phases() -> None:
    message = _error({"migration": {"hold_s": {"SHADOWING": 3}}})
    assert "migration.hold_s.SHADOWING" in message
    assert "SHADOW" in message and "CUTOVER" in message


def test_a_value_of_the_wrong_type_names_the_key() -> None:
    message = _error({"traffic": {"rate": "fast"}})
    assert "traffic.rate must be a number" in message


def test_a_value_out_of_range_names_the_bounds() -> None:
    message = _error({"traffic": {"shopper_share": 1.5}})
    assert "traffic.shopper_share" in message and "from 0.0 to 1.0" in message


def test_a_bad_choice_names_the_valid_values() -> None:
    message = _error({"migration": {"lagged_sides": ["middle"]}})
    assert "migration.lagged_sides[0]" in message
    assert "old, new" in message


def test_a_bad_distribution_names_the_distributions() -> None:
    message = _error({"latency": {"network": {"dist": "pareto"}}})
    assert "latency.network.dist" in message
    assert "lognormal" in message and "exponential" in message


def test_an_unknown_fault_family_names_every_valid_family() -> None:
    message = _error({"faults": [{"family": "meteor-strike", "at_s": 3}]})
    assert "meteor-strike" in message
    for family in FAULT_FAMILIES:
        assert family in message


def test_a_fault_parameter_its_family_does_not_take_is_refused() -> None:
    message = _error(
        {"faults": [{"family": "lost-ack", "side": "new", "rate": 0.1, "node": "s0r0", "at_s": 1}]}
    )
    assert "faults[0].node" in message
    assert "'lost-ack' does not take 'node'" in message


def test_a_fault_needs_a_start() -> None:
    message = _error({"faults": [{"family": "index-rebuild", "side": "new"}]})
    assert "exactly one of at_s or phase" in message


def test_a_fault_on_a_node_that_does_not_exist_is_refused() -> None:
    message = _error(
        {"faults": [{"family": "node-crash", "side": "old", "node": "s9r0", "at_s": 1}]}
    )
    assert "s9r0" in message and "does not exist" in message


def test_a_fault_on_a_missing_side_names_the_sides() -> None:
    message = _error({"faults": [{"family": "node-pause", "side": "both", "at_s": 1}]})
    assert "old or new" in message


def test_the_visibility_window_must_outlast_the_refresh_interval() -> None:
    message = _error(
        {
            "migration": {
                "lagged_sides": ["new"],
                "visibility_window_ms": 500,
                "refresh_interval_ms": 1000,
            }
        }
    )
    assert "visibility_window_ms" in message


def test_simulate_exits_2_on_a_malformed_scenario_and_names_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[traffic]\nrate = 10\nflash = true\n")
    assert main(["simulate", str(bad), "--quiet", "--out", str(tmp_path / "out")]) == 2
    assert "traffic.flash" in capsys.readouterr().err


def test_simulate_exits_2_on_an_unknown_scenario_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "no-such-scenario", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no-such-scenario" in err and "default" in err


def test_simulate_exits_2_on_invalid_toml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "broken.toml"
    bad.write_text("[traffic\n")
    assert main(["simulate", str(bad), "--quiet"]) == 2
    assert "not valid TOML" in capsys.readouterr().err


def test_swarm_schedules_are_valid_deterministic_and_keep_a_replica_of_every_shard() -> None:
    config = SwarmConfig(enabled=True)
    for seed in range(30):
        schedule = swarm_schedule(
            config, np.random.default_rng(seed), duration_s=100, lagged_sides=[], shards=2
        )
        again = swarm_schedule(
            config, np.random.default_rng(seed), duration_s=100, lagged_sides=[], shards=2
        )
        assert schedule == again
        assert {spec.family for spec in schedule} <= set(SWARM_FAMILIES)
        replicas = {spec.node[-1] for spec in schedule if spec.node}
        assert len(replicas) <= 1, "node faults must all hit the same replica number"
        for spec in schedule:
            if spec.family == "lost-ack":
                assert spec.side == "new" and spec.until_phase == "BACKFILL"


# ---------------------------------------------------------------------------------------------
# Issue 10, finding 8: every bad input exits 2 with a message that names the key or the path.


def _simulate_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["simulate", *args, "--quiet"]) == 2
    return capsys.readouterr().err


def test_a_scenario_file_that_is_not_utf8_exits_2_naming_the_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    latin = tmp_path / "latin.toml"
    latin.write_bytes('name = "café"\n'.encode("latin-1"))
    err = _simulate_error([str(latin)], capsys)
    assert str(latin) in err and "UTF-8" in err, err


def test_a_missing_scenario_file_exits_2_naming_the_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "plans" / "missing.toml"
    err = _simulate_error([str(missing)], capsys)
    assert str(missing) in err and "no such file" in err, err


@pytest.mark.parametrize("name", ["plans", "plans.toml"])
def test_a_directory_exits_2_naming_the_path(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / name
    folder.mkdir()
    err = _simulate_error([str(folder)], capsys)
    assert str(folder) in err and "is a directory" in err, err


def test_a_scenario_file_loads_whatever_its_suffix(tmp_path: Path) -> None:
    """A file that exists is the scenario (it used to be 'not a file' without `.toml`)."""
    plan = tmp_path / "default.plan"
    plan.write_text((SCENARIO_DIR / "default.toml").read_text())
    loaded = load(str(plan))
    assert loaded.faults == load("default").faults and loaded.source == str(plan)


def test_a_late_config_delay_below_zero_is_refused_at_load() -> None:
    message = _error(
        {"faults": [{"family": "late-config", "instance": 0, "delay_s": -5, "at_s": 1}]}
    )
    assert "faults[0].delay_s" in message and "-5" in message, message


@pytest.mark.parametrize(
    ("swarm", "key"),
    [
        ({"min_families": 5, "max_families": 2}, "swarm.min_families"),
        ({"min_families": -1}, "swarm.min_families"),
        ({"max_families": -3}, "swarm.max_families"),
    ],
)
def test_swarm_family_counts_are_refused_unless_0_le_min_le_max(
    swarm: dict[str, Any], key: str
) -> None:
    message = _error({"swarm": swarm})
    assert key in message, message


def test_an_unknown_swarm_family_is_refused_naming_the_valid_ones() -> None:
    """It used to draw no fault at all for a typo, and call the run VALID."""
    message = _error({"swarm": {"enabled": True, "families": ["node-crash", "node-crsh"]}})
    assert "swarm.families[1]" in message and "'node-crsh'" in message, message
    for family in SWARM_FAMILIES:
        assert family in message


@pytest.mark.parametrize("window", [[5.0], [1.0, 2.0, 3.0], [10.0, 5.0], [-1.0, 5.0], [3.0, 3.0]])
def test_a_swarm_window_must_be_start_and_end_with_0_le_start_lt_end(
    window: list[float],
) -> None:
    message = _error({"swarm": {"window_s": window}})
    assert "swarm.window_s" in message and "[start, end]" in message, message


def test_a_swarm_window_of_start_and_end_loads() -> None:
    assert from_dict({"swarm": {"window_s": [0, 30]}}).swarm.window_s == [0.0, 30.0]


def test_the_swarm_leaves_out_node_faults_with_one_replica_and_crashes_with_one_instance() -> None:
    """Finding 8: swarm mode with one replica crashed (ValueError: unknown node 's0r1')."""
    scenario = from_dict({"clusters": {"replicas": 1}, "instances": {"count": 1}})
    drawable = set(scenario.swarm.families)
    assert drawable == set(SWARM_FAMILIES) - {
        "node-crash",
        "node-pause",
        "slow-replica",
        "app-instance-crash",
    }


def test_swarm_node_faults_named_with_one_replica_are_refused() -> None:
    message = _error({"clusters": {"replicas": 1}, "swarm": {"families": ["node-pause"]}})
    assert "swarm.families" in message and "clusters.replicas >= 2" in message, message


def test_swarm_visibility_lag_needs_new_declared_lagged() -> None:
    message = _error({"swarm": {"families": ["visibility-lag"]}})
    assert "swarm.families" in message and "migration.lagged_sides" in message, message
    loaded = from_dict(
        {"swarm": {"families": ["visibility-lag"]}, "migration": {"lagged_sides": ["new"]}}
    )
    assert loaded.swarm.families == ["visibility-lag"]


def test_a_clock_skew_beyond_the_declared_bound_is_refused_at_load() -> None:
    fault = {"family": "clock-skew", "instance": 0, "offset_ms": -1e12, "at_s": 1}
    message = _error({"faults": [fault]})
    assert "faults[0].offset_ms" in message and "instances.max_clock_skew_ms" in message
    fault["offset_ms"] = -300
    assert from_dict({"faults": [fault]}).faults[0].offset_ms == -300


# ---------------------------------------------------------------------------------------------
# Issue 10: configuration the protocol cannot keep safe is refused, naming the keys and the rule.


def test_a_lease_that_does_not_outlast_a_poll_and_the_margin_is_refused() -> None:
    """Finding 5: with polls every 3 s and 2 s leases the coordinator counted a lagging
    instance out, and the instance then renewed its lease while still on OLD_ONLY."""
    message = _error({"instances": {"poll_interval_ms": 3000, "lease_ms": 2000}})
    assert "instances.lease_ms" in message and "instances.poll_interval_ms" in message
    assert "instances.lease_margin_ms" in message, message
    assert "2000" in message and "3000" in message


def test_a_lease_that_does_not_outlast_a_poll_the_margin_and_a_clock_jump_is_refused() -> None:
    """A BUGGIFY sweep (node-lost-cutover, seed 1323): an instance counts its lease on its own
    clock, and a clock-skew fault that ends moves that clock ahead within the bound; its lease
    past the margin must still cover a poll then, or it refuses work between polls."""
    message = _error(
        {
            "instances": {
                "poll_interval_ms": 100,
                "lease_ms": 1613.226,
                "lease_margin_ms": 1349.176,
                "max_clock_skew_ms": 500,
            },
            "latency": {"op_timeout_ms": 250},
        }
    )
    assert "instances.lease_ms" in message and "instances.max_clock_skew_ms" in message, message
    assert "twice the clock-skew bound" in message, message


def test_a_lease_margin_shorter_than_a_request_and_twice_the_skew_is_refused() -> None:
    message = _error({"instances": {"lease_margin_ms": 500}})
    for key in (
        "instances.lease_margin_ms",
        "latency.op_timeout_ms",
        "instances.max_clock_skew_ms",
    ):
        assert key in message, message
    assert "850" in message, "names the margin that would do: 250 + 2 x 300"


def test_a_node_fault_with_one_replica_is_refused_at_load() -> None:
    message = _error(
        {
            "clusters": {"replicas": 1},
            "faults": [{"family": "node-crash", "side": "new", "phase": "BACKFILL"}],
        }
    )
    assert "faults[0]" in message and "clusters.replicas >= 2" in message, message


def test_a_lost_ack_on_the_primary_is_refused_at_load() -> None:
    fault = {"family": "lost-ack", "side": "old", "rate": 0.1, "phase": "DUAL_WRITE"}
    message = _error({"faults": [{**fault, "until_phase": "BACKFILL"}]})
    assert "faults[0]" in message and "lost-ack" in message and 'side = "new"' in message


def test_an_app_instance_crash_with_one_instance_is_refused_at_load() -> None:
    message = _error(
        {"instances": {"count": 1}, "faults": [{"family": "app-instance-crash", "at_s": 3}]}
    )
    assert "faults[0]" in message and "instances.count >= 2" in message, message


def test_a_plan_the_phase_table_cannot_walk_is_refused() -> None:
    """Finding 7: `["advance", "rollback"]` failed mid-run with a PhaseError."""
    message = _error({"migration": {"steps": ["advance", "rollback"]}})
    assert "migration.steps" in message and "step 2 (rollback)" in message, message
    assert "DUAL_WRITE" in message and "abort -> OLD_ONLY" in message, message


def test_every_problem_is_reported_at_once_one_per_line() -> None:
    message = _error(
        {
            "instances": {"count": 1, "lease_ms": 1500},
            "migration": {"steps": ["rollback"]},
            "faults": [{"family": "app-instance-crash", "at_s": 3}],
        }
    )
    lines = message.splitlines()
    assert lines[0].endswith("3 problems:"), message
    assert [line.strip().split(":")[0] for line in lines[1:]] == [
        "faults[0]",
        "instances.lease_ms, instances.poll_interval_ms, instances.lease_margin_ms, "
        "instances.max_clock_skew_ms",
        "migration.steps",
    ], message
    assert "set instances.lease_ms above 2600" in message, "poll 1000 + margin 1000 + 2 x 300"


def test_a_lost_ack_left_unrepaired_while_old_fails_in_shadow_is_refused_naming_both() -> None:
    """The loader's rule between faults (`faults.schedule_problems`), through the loader."""
    message = _error(
        {
            "migration": {"start_s": 5, "hold_s": {"DUAL_WRITE": 5, "BACKFILL": 20}},
            "faults": [
                {
                    "family": "lost-ack",
                    "side": "new",
                    "rate": 0.1,
                    "phase": "BACKFILL",
                    "until_phase": "SHADOW",
                },
                {"family": "partition", "side": "old", "at_s": 36, "duration_s": 6},
            ],
        }
    )
    assert "faults[0] and faults[1]" in message, message
    assert "at_s + duration_s < 30 s" in message, message
