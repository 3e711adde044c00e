"""`vecmig zoo`: what it runs, how a search decides that an engine caught an ablation (a safe
control run must pass the very same run, else it is a false alarm), how the machine's printed
counterexamples replay and shrink, and a small slice of the real zoo (slow)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vecmig.harness.cli import main
from vecmig.harness.core.strategy import PROTECTIONS, strategy_named
from vecmig.harness.testing.machine import MigrationMachine
from vecmig.harness.testing.shrink import minimize, replay, signature
from vecmig.harness.zoo import catalog
from vecmig.harness.zoo.catalog import COVERS, QUALITY, Row
from vecmig.harness.zoo.engines import CAUGHT, OUT_OF_TIME, STALLED, VALID
from vecmig.harness.zoo.matrix import (
    CAUGHT_ROW,
    COVERED,
    FALSE_ALARM,
    LIVE_ONLY,
    MISSED,
    PENDING,
    Matrix,
)
from vecmig.harness.zoo.search import Search, Settings


def settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = dict(
        engines=("sim", "machine"),
        scenarios=("default", "node-lost-cutover"),
        seeds=2,
        first_seed=1,
        jobs=1,
        budget_s=100.0,
        examples=10,
        steps=10,
        live_duration_s=20.0,
        live_users=2,
        live_catalog=100,
        out=Path("/nonexistent"),
    )
    return Settings(**{**base, **overrides})


def trial(scenario: str, seed: int, buggify: bool, outcome: str, seconds: float = 10.0) -> dict:
    return {
        "scenario": scenario,
        "seed": seed,
        "buggify": buggify,
        "outcome": outcome,
        "found": "stale reads 1" if outcome == CAUGHT else "",
        "replay": f"vecmig simulate {scenario} --seed {seed}",
        "seconds": seconds,
    }


# -- what the zoo runs -------------------------------------------------------------------------


def test_the_zoo_runs_the_naive_reference_and_every_protection_once() -> None:
    rows = catalog.rows()
    assert rows[0] == Row(("naive",), "reference")
    assert [r.name for r in rows[1:]] == list(PROTECTIONS)
    assert all(strategy_named(r.strategy) for r in rows)


def test_an_unknown_ablation_is_refused_naming_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="read-both"):
        catalog.rows(("read-bothh",))


def test_every_cover_and_quality_note_names_protections() -> None:
    catalog.check_catalog()
    for name, declared in COVERS.items():
        assert name not in declared.by and declared.why
        assert name not in QUALITY, f"{name} is declared both covered and quality"
    assert all(QUALITY.values())


def test_a_cover_row_switches_off_the_ablation_with_its_cover() -> None:
    for name, declared in COVERS.items():
        row = catalog.cover(Row((name,), "ablation"))
        assert row is not None and row.kind == "cover"
        assert strategy_named(row.strategy).off == tuple(
            p for p in PROTECTIONS if p in (name, *declared.by)
        )


# -- how a simulator search decides ------------------------------------------------------------


def drive(search: Search, results: dict[tuple[str, str, int | None, bool], dict]) -> list[tuple]:
    """Run a search against canned results keyed by (strategy, scenario, seed, buggify)."""
    asked = []
    while (task := search.next_task()) is not None:
        _, (strategy, scenario, seed, buggify, _budget) = task
        asked.append((strategy, scenario, seed, buggify))
        search.take(results[(strategy, scenario, seed, buggify)])
    return asked


def test_a_simulator_search_stops_at_its_first_catch_once_the_safe_control_passes() -> None:
    search = Search(Row(("read-both",), "ablation"), "sim", settings(), controls={})
    results = {
        ("safe-without:read-both", "default", None, False): trial("default", 1, False, VALID),
        ("safe-without:read-both", "node-lost-cutover", None, False): trial(
            "node-lost-cutover", 3, False, CAUGHT
        ),
        ("safe", "node-lost-cutover", 3, False): trial("node-lost-cutover", 3, False, VALID),
    }
    asked = drive(search, results)
    assert asked[-1] == ("safe", "node-lost-cutover", 3, False)  # the control
    assert search.outcome == CAUGHT and search.done
    answer = search.to_json()
    assert answer["tried_to_detection"] == 2 and answer["seconds_to_detection"] == 20.0
    assert answer["control"]["outcome"] == VALID


def test_a_catch_the_safe_strategy_shares_is_a_false_alarm_and_the_search_goes_on() -> None:
    controls: dict = {}
    search = Search(Row(("read-both",), "ablation"), "sim", settings(seeds=1), controls)
    results = {
        ("safe-without:read-both", "default", None, False): trial("default", 1, False, CAUGHT),
        ("safe", "default", 1, False): trial("default", 1, False, CAUGHT),
        ("safe-without:read-both", "node-lost-cutover", None, False): trial(
            "node-lost-cutover", 3, False, VALID
        ),
        ("safe-without:read-both", "default", 1, True): trial("default", 1, True, STALLED),
        ("safe", "default", 1, True): trial("default", 1, True, STALLED),
    }
    drive(search, results)
    assert search.outcome == VALID and len(search.false_alarms) == 2
    matrix = Matrix([search.row], ("sim",), {("read-both", "sim"): search})
    assert matrix.verdict(search.row) == FALSE_ALARM and not matrix.ok()
    # The controls are kept for the next row: it asks for no safe run again.
    other = Search(Row(("read-retry",), "ablation"), "sim", settings(seeds=0), controls)
    asked = drive(
        other,
        {
            ("safe-without:read-retry", "default", None, False): trial("default", 1, False, CAUGHT),
            ("safe-without:read-retry", "node-lost-cutover", None, False): trial(
                "node-lost-cutover", 3, False, VALID
            ),
        },
    )
    assert all(strategy != "safe" for strategy, *_ in asked)


def test_a_search_out_of_budget_says_so_rather_than_valid() -> None:
    search = Search(Row(("read-both",), "ablation"), "sim", settings(budget_s=15.0), {})
    results = {
        ("safe-without:read-both", "default", None, False): trial("default", 1, False, VALID, 20),
    }
    drive(search, results)
    assert search.outcome == OUT_OF_TIME and len(search.tried) == 1


def test_an_ablation_nothing_caught_is_covered_only_if_its_cover_row_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    declared = catalog.Cover(("read-retry",), "the retry goes to the same replica")
    monkeypatch.setitem(COVERS, "read-fallback", declared)
    row = Row(("read-fallback",), "ablation")
    covering = catalog.cover(row)
    assert covering is not None and covering.strategy == "safe-without:read-fallback,read-retry"
    alone = Search(row, "machine", settings(), {})
    alone.take({"outcome": VALID, "seconds": 1.0, "examples": 10})

    def matrix_with(cover_outcome: dict) -> Matrix:
        together = Search(covering, "machine", settings(), {})
        together.take(cover_outcome)
        searches = {(row.name, "machine"): alone, (covering.name, "machine"): together}
        return Matrix([row, covering], ("machine",), searches)

    assert matrix_with({"outcome": VALID, "seconds": 1.0}).verdict(row) == MISSED
    caught = matrix_with({"outcome": CAUGHT, "seconds": 1.0, "replays_safe": False})
    assert caught.verdict(row) == COVERED and caught.ok()
    assert "read-retry" in caught.markdown(META)


META = {
    "command": "vecmig zoo",
    "wall_s": 1.0,
    "jobs": 1,
    "budget_s": 1.0,
    "version": "test",
    "started": "now",
}


def test_a_catch_by_the_load_test_alone_is_not_enough() -> None:
    """The load test does not replay exactly: an ablation only it catches is a hole."""
    row = Row(("read-both",), "ablation")
    live = Search(row, "live", settings(engines=("sim", "live")), {})
    live.take({"outcome": CAUGHT, "seconds": 30.0, "found": "stale reads 1"})
    sim = Search(row, "sim", settings(engines=("sim", "live"), scenarios=(), seeds=0), {})
    assert sim.next_task() is None  # nothing to run: not caught
    matrix = Matrix([row], ("sim", "live"), {(row.name, "live"): live, (row.name, "sim"): sim})
    assert matrix.caught_by(row) == ["live"]
    assert matrix.verdict(row) == LIVE_ONLY and not matrix.ok()


def test_a_partial_matrix_says_pending_rather_than_missed() -> None:
    row = Row(("read-both",), "ablation")
    search = Search(row, "sim", settings(), {})
    search.take(trial("default", 1, False, VALID))  # one trial in, more to come
    matrix = Matrix([row], ("sim",), {(row.name, "sim"): search})
    assert matrix.verdict(row) == PENDING and "running (1 so far)" in matrix.markdown(META)
    while search.next_task() is not None:
        search.take(trial("default", 1, False, VALID))
    assert matrix.verdict(row) == MISSED


# -- the machine's counterexamples -------------------------------------------------------------

PRINTED = [
    "state = MigrationMachine.ablated('repair-on-timeout')()",
    "state.start_in(start='SHADOW', batches=0, lagged=frozenset(), skew_bound_ms=50, "
    "lease_ms=2000)",
    "state.add_instance()",
    *["state.crash(who='a')"] * 5,
    "state.delete(fail=(1, 'timeout-after-write'), instance='a', interleaved=False, "
    "record_id='p000000')",
    "state.node_fault(fault='crash', replica=0, side='old')",
    "state.teardown()",
]
"""Steps Hypothesis printed for the machine on safe-without:repair-on-timeout (cut from 23
crashes it could not shrink away)."""


def test_minimize_drops_the_steps_a_failure_does_not_need() -> None:
    ablated = MigrationMachine.ablated("repair-on-timeout")
    assert "divergence" in signature(replay(PRINTED, ablated))
    shortest = minimize(PRINTED, ablated)
    assert list(shortest) == [PRINTED[0], PRINTED[1], PRINTED[-3], PRINTED[-1]]
    assert replay(shortest, MigrationMachine) is None  # the safe layer passes the same steps


def test_a_machine_search_out_of_budget_is_out_of_time_not_an_error() -> None:
    """The budget stops a search while Hypothesis draws an example; Hypothesis reports that as
    inconsistent data generation, which must read as out of time, not as the engine failing."""
    from hypothesis import settings as hypothesis_settings

    from vecmig.harness.testing.shrink import TEETH, search

    config = hypothesis_settings(TEETH, max_examples=10_000, stateful_step_count=40)
    found = search(MigrationMachine, config, budget_s=2.0)
    assert found.error is None and found.out_of_time and found.examples >= 1


def test_a_replay_binds_no_operation_where_a_rule_started_fewer_than_printed() -> None:
    steps = [
        "state = MigrationMachine.ablated('oldest-epoch-ack')()",
        "state.start_in(start='OLD_ONLY', batches=0, lagged=frozenset(), skew_bound_ms=0, "
        "lease_ms=2000)",
        "state.delete(fail=None, instance='a', interleaved=False, record_id='p000000')",
        "ops_0, ops_1, ops_2 = state.progress(busy=('a', 'p000000'), phases=3)",
        "state.progress(busy=None, phases=2)",
        "state.advance(op=ops_0)",
        "state.get(fail=None, instance='a', interleaved=False, record_id='p000000')",
        "state.teardown()",
    ]
    assert "stale_reads" in signature(replay(steps, MigrationMachine.ablated("oldest-epoch-ack")))
    assert replay(steps, MigrationMachine) is None  # the safe layer starts one write, not three


CLOSED_BY_MACHINE_RULES = {
    # An instance cut off from the config store past its lease still takes a write (its
    # readiness check lags) under the route of a phase the migration left behind.
    "lease-check": [
        "state = MigrationMachine.ablated('lease-check')()",
        "state.start_in(start='OLD_ONLY', batches=0, lagged=frozenset(), skew_bound_ms=0, "
        "lease_ms=2000)",
        "state.cut_off(instance='b', phases=3, serving='p000000')",
        "state.teardown()",
    ],
    # The same instance reaches the coordinator again with a stale view of the config store.
    "lease-epoch-binding": [
        "state = MigrationMachine.ablated('lease-epoch-binding')()",
        "state.cut_off(instance='a', phases=2, serving=None)",
        "state.stale_sync(instance='a')",
        "state.teardown()",
    ],
    # A save whose secondary write was refused, then a view while the read side is down.
    "fallback-currency-check": [
        "state = MigrationMachine.ablated('fallback-currency-check')()",
        "state.start_in(start='SHADOW', batches=0, lagged=frozenset(), skew_bound_ms=0, "
        "lease_ms=2000)",
        "state.save_and_view(down=True, fail=(2, 'unavailable'), instance='a', "
        "record_id='p000000')",
        "state.teardown()",
    ],
    # In CUTOVER a delete misses old; the operator rolls back and aborts at once.
    "abort-repairs-old": [
        "state = MigrationMachine.ablated('abort-repairs-old')()",
        "state.start_in(start='CUTOVER', batches=0, lagged=frozenset(), skew_bound_ms=0, "
        "lease_ms=2000)",
        "state.delete(fail=(2, 'unavailable'), instance='a', interleaved=False, "
        "record_id='p000001')",
        "state.bail_out()",
        "state.get(fail=None, instance='a', interleaved=False, record_id='p000001')",
        "state.teardown()",
    ],
}


@pytest.mark.parametrize("ablation", sorted(CLOSED_BY_MACHINE_RULES))
def test_the_machine_rules_added_for_the_zoo_catch_their_ablation_and_pass_the_safe_layer(
    ablation: str,
) -> None:
    """cut_off, stale_sync, save_and_view and bail_out (issue 11): each row the zoo missed
    fails these steps with its protection off, and the safe machine passes them."""
    steps = CLOSED_BY_MACHINE_RULES[ablation]
    assert signature(replay(steps, MigrationMachine.ablated(ablation))), ablation
    assert replay(steps, MigrationMachine) is None


# -- a slice of the real zoo -------------------------------------------------------------------


@pytest.mark.slow
def test_a_slice_of_the_zoo_catches_its_ablations_and_writes_the_matrix(tmp_path: Path) -> None:
    """Two ablations through the simulator (one scenario) and the machine: each is caught by
    some engine, and what the matrix says replays."""
    code = main(
        [
            "zoo",
            "--only",
            "write-old-after-cutover,repair-on-timeout",
            "--scenarios",
            "default",
            "--seeds",
            "0",
            "--examples",
            "300",
            "--budget-s",
            "600",
            "--out",
            str(tmp_path),
            "--quiet",
        ]
    )
    report = json.loads((tmp_path / "zoo.json").read_text())
    assert code == 0 and report["ok"], report
    rows = {r["name"]: r for r in report["rows"]}
    assert set(rows) == {"write-old-after-cutover", "repair-on-timeout"}
    assert all(r["verdict"] == CAUGHT_ROW for r in rows.values())
    sim = rows["write-old-after-cutover"]["engines"]["sim"]
    assert sim["outcome"] == CAUGHT and sim["control"]["outcome"] == VALID
    assert sim["replay"].startswith("vecmig simulate default --seed 1 ")
    machine = rows["repair-on-timeout"]["engines"]["machine"]
    assert machine["outcome"] == CAUGHT and machine["replays_ablated"], machine
    assert replay(machine["steps"], MigrationMachine) is None
    assert "repair-on-timeout" in (tmp_path / "zoo.md").read_text()


def test_an_ablation_that_escapes_fails_the_run_for_ci(tmp_path: Path) -> None:
    """Exit 1 when an ablation escapes: here the machine gets one run of two steps, too few to
    reach CUTOVER, write and roll back, which is what it takes to catch this one."""
    code = main(
        [
            "zoo",
            "--only",
            "write-old-after-cutover",
            "--engines",
            "machine",
            "--examples",
            "1",
            "--steps",
            "2",
            "--out",
            str(tmp_path),
            "--quiet",
        ]
    )
    report = json.loads((tmp_path / "zoo.json").read_text())
    assert code == 1 and not report["ok"]
    assert [r["verdict"] for r in report["rows"]] == [MISSED]


def test_bad_input_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["zoo", "--engines", "sim,nope"]) == 2
    assert main(["zoo", "--only", "no-such-protection"]) == 2
    assert "read-both" in capsys.readouterr().err
