"""`vecmig simulate --what-if KNOB=V1,V2,...`: one run per value of one knob, same seed; each
variant is the scenario with only that knob changed, a slower backfill takes longer to reach
DECOMMISSIONED, what-if.json is the same bytes for the same command, a run that cannot finish
makes the exit code 4, and an unknown knob or a value the loader refuses exits 2 naming it
before anything runs."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from vecmig.harness.cli import EXIT_BAD_INPUT, EXIT_STALLED, EXIT_VALID, main
from vecmig.sim.report import history_bytes
from vecmig.sim.scenario import Scenario, ScenarioError, load
from vecmig.sim.simulation import Simulation
from vecmig.sim.whatif import KNOBS, parse

SHOP = Path(__file__).parent / "data" / "small_shop.toml"
"""300 products, every phase in about 20 simulated seconds, backfill_rate = 60, no faults."""


def what_if(out: Path, *argv: str) -> int:
    return main(["simulate", str(SHOP), *argv, "--out", str(out), "--quiet"])


def rows(out: Path) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads((out / "what-if.json").read_text())["rows"]
    return found


@pytest.fixture(scope="module")
def backfill_rates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small shop at a backfill of 30 and of 120 records a second: its output folder."""
    out = tmp_path_factory.mktemp("what-if") / "rates"
    assert what_if(out, "--what-if", "migration.backfill_rate=30,120") == EXIT_VALID
    return out


def test_each_value_gets_a_row_and_a_folder_with_its_own_run(backfill_rates: Path) -> None:
    table = json.loads((backfill_rates / "what-if.json").read_text())
    assert (table["knob"], table["seed"], table["exit_code"]) == ("migration.backfill_rate", 1, 0)
    assert [r["value"] for r in table["rows"]] == [30, 120]
    for r in table["rows"]:
        assert r["verdict"] == "VALID" and r["exit_code"] == EXIT_VALID and r["stall"] is None
        report = json.loads((backfill_rates / r["run"] / "report.json").read_text())
        assert r["history_sha256"] == report["history_sha256"]
        assert r["reads_p99_ms"] == report["latency_overall_ms"]["reads"]["p99"] > 0
        assert (
            r["reads_p99_ms_by_phase"]["BACKFILL"]
            == (report["latency_ms"]["BACKFILL"]["reads"]["p99"])
        )
        assert r["gate_waits"]["SHADOW"]["refusals"] > 0  # the backfill holds SHADOW back
        assert r["replay"] == (
            f"vecmig simulate {SHOP} --what-if migration.backfill_rate={r['value']} "
            "--seed 1 --strategy safe"
        )
    plotted = (backfill_rates / "what-if.png").is_file()
    assert plotted or importlib.util.find_spec("matplotlib") is None


def test_a_slower_backfill_takes_longer_to_decommission(backfill_rates: Path) -> None:
    slow, fast = rows(backfill_rates)
    assert slow["backfill_s"] > 3 * fast["backfill_s"]
    assert slow["time_to_decommissioned_s"] > fast["time_to_decommissioned_s"] + 5


def test_the_same_command_writes_the_same_what_if_json(
    backfill_rates: Path, tmp_path: Path
) -> None:
    """Nothing in what-if.json depends on the machine or the wall clock: two runs of one
    command can be compared by their bytes."""
    again = tmp_path / "rates"
    assert what_if(again, "--what-if", "migration.backfill_rate=30,120") == EXIT_VALID
    first = (backfill_rates / "what-if.json").read_text()
    assert (again / "what-if.json").read_text() == first.replace(str(backfill_rates), str(again))


def test_a_variant_is_the_scenario_with_only_its_knob_changed(tmp_path: Path) -> None:
    """A what-if of the file's own value (small_shop's backfill_rate is 60) runs exactly the
    scenario the file describes: the same history bytes as a plain simulation."""
    out = tmp_path / "same"
    assert what_if(out, "--what-if", "migration.backfill_rate=60") == EXIT_VALID
    plain = history_bytes(Simulation(load(str(SHOP)), "safe").run())
    assert (out / "migration.backfill_rate=60" / "history.jsonl").read_bytes() == plain


def test_a_value_that_keeps_the_plan_from_finishing_exits_4(tmp_path: Path) -> None:
    """No run of 40 s gets 100,000 mirrored reads: the CUTOVER gate holds, the plan does not
    finish, and the row says so instead of a time to DECOMMISSIONED."""
    out = tmp_path / "stall"
    assert what_if(out, "--what-if", "migration.min_mirrored_reads=100000") == EXIT_STALLED
    (row,) = rows(out)
    assert row["verdict"] == "STALLED" and row["exit_code"] == EXIT_STALLED
    assert row["time_to_decommissioned_s"] is None and row["end_phase"] == "SHADOW"
    assert row["stall"] and "CUTOVER" in row["gate_waits"]


# ---------------------------------------------------------------------------------------------
# Bad input: exit 2, naming the knob, before anything runs.


@pytest.mark.parametrize(
    ("argument", "says"),
    [
        (
            "migration.backfil_rate=1,2",
            "unknown knob 'migration.backfil_rate'; knobs: migration.backfill_rate, "
            "migration.batch_size, migration.mirror_sample_rate",
        ),
        ("clusters.shards", "--what-if clusters.shards: give its values after '='"),
        ("clusters.shards=1,,2", "--what-if clusters.shards: give its values after '='"),
        ("clusters.shards=2,2", "--what-if clusters.shards: the value 2 is given twice"),
        ("migration.batch_size=16,0", "--what-if migration.batch_size=0: "),
        ("migration.batch_size=1.5", "migration.batch_size must be an integer, got 1.5"),
        ("migration.mirror_sample_rate=0.5,high", "mirror_sample_rate must be a number"),
        ("clusters.shards=65", "clusters.shards must be from 1 to 64, got 65"),
    ],
)
def test_a_bad_knob_or_value_exits_2_naming_it_and_runs_nothing(
    argument: str, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert what_if(out, "--what-if", argument) == EXIT_BAD_INPUT
    assert says in capsys.readouterr().err
    assert not out.exists()


def test_a_value_is_held_to_the_rules_between_keys_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One app instance cannot survive the crash of an instance: the loader's rule between
    keys refuses the value as it would refuse the file."""
    crashing = tmp_path / "crash.toml"
    crashing.write_text(
        SHOP.read_text() + '\n[[faults]]\nfamily = "app-instance-crash"\ninstance = 0\nat_s = 5\n'
    )
    code = main(["simulate", str(crashing), "--what-if", "instances.count=3,1", "--quiet"])
    assert code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "--what-if instances.count=1: " in err and "faults[0]" in err


def test_what_if_and_buggify_are_refused_together(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert what_if(out, "--what-if", "clusters.shards=1,2", "--buggify") == EXIT_BAD_INPUT
    assert "--what-if cannot run with --buggify" in capsys.readouterr().err


def test_values_are_read_as_toml_reads_them() -> None:
    assert parse("migration.mirror_sample_rate=0.1, 0.5").values == (("0.1", 0.1), ("0.5", 0.5))
    assert parse(" clusters.shards = 1,4 ").values == (("1", 1), ("4", 4))
    with pytest.raises(ScenarioError, match="unknown knob 'shards'"):
        parse("shards=1,2")


def test_every_knob_is_a_key_of_the_scenario_schema() -> None:
    scenario = Scenario()
    for knob in KNOBS:
        section, key = knob.split(".")
        assert key in {f.name for f in dataclasses.fields(getattr(scenario, section))}, knob


def test_the_help_teaches_what_if_with_an_example_and_every_knob(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    text = capsys.readouterr().out
    assert "vecmig simulate scaled-shop --what-if migration.backfill_rate=250,500,1000,2000" in text
    assert all(knob in text for knob in KNOBS)
