"""Simulated runs: the same seed gives the same history bytes; on a small faulty scenario the
safe strategy is valid and the naive one is not; every scenario file runs; the CLI writes its
files and exit codes as documented."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from vecmig.harness.cli import EXIT_ANOMALIES, EXIT_STALLED, EXIT_VALID, main
from vecmig.harness.history.checker import ANOMALIES, check
from vecmig.harness.history.command import read_history
from vecmig.sim.report import history_bytes
from vecmig.sim.scenario import from_dict, load, scenario_names
from vecmig.sim.simulation import Simulation

SMALL_SHOP = (Path(__file__).parent / "data" / "small_shop.toml").read_text()

# A small shop whose migration walks every phase in about 30 simulated seconds, with the
# faults that the naive plan cannot survive: lost acks on new before the backfill, and an
# app instance that learns of phases late.
TINY = (
    SMALL_SHOP
    + """
[[faults]]
family = "lost-ack"
side = "new"
rate = 0.3
phase = "DUAL_WRITE"
duration_s = 2
until_phase = "BACKFILL"

[[faults]]
family = "late-config"
instance = 2
delay_s = 3
at_s = 1
duration_s = 20

[[faults]]
family = "node-crash"
side = "new"
node = "s0r1"
lose_data = true
phase = "BACKFILL"
after_s = 1
duration_s = 3

[[faults]]
family = "app-instance-crash"
instance = 0
phase = "SHADOW"
after_s = 1
duration_s = 2

[[faults]]
family = "partition"
side = "old"
phase = "CUTOVER"
duration_s = 1
"""
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scenarios") / "tiny.toml"
    path.write_text(TINY)
    return path


def test_the_same_seed_gives_the_same_history_bytes(tiny: Path) -> None:
    scenario = load(str(tiny))
    first = history_bytes(Simulation(scenario, "safe", seed=5).run())
    second = history_bytes(Simulation(scenario, "safe", seed=5).run())
    assert first == second
    assert history_bytes(Simulation(scenario, "safe", seed=6).run()) != first


def test_the_same_seed_gives_the_same_swarm_history(tiny: Path) -> None:
    scenario = load(str(tiny))
    first = Simulation(scenario, "safe", seed=3, swarm=True).run()
    second = Simulation(scenario, "safe", seed=3, swarm=True).run()
    assert history_bytes(first) == history_bytes(second)
    assert first.schedule == second.schedule


def test_simulate_safe_is_valid_and_writes_its_files(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "safe"
    assert (
        main(
            [
                "simulate",
                str(tiny),
                "--seed",
                "1",
                "--strategy",
                "safe",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    for name in (
        "history.jsonl",
        "report.json",
        "report.html",
        "timeline.png",
        "backfill.png",
    ):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "report.json").read_text())
    for key in (
        "seed",
        "strategy",
        "scenario",
        "history_sha256",
        "verdict",
        "ops",
        "phases",
        "faults",
        "latency_ms",
        "recall",
    ):
        assert key in report
    assert (
        report["history_sha256"] == hashlib.sha256((out / "history.jsonl").read_bytes()).hexdigest()
    )
    assert report["verdict"]["valid"] is True
    assert set(report["verdict"]) >= {
        "valid",
        "failed_reads",
        "stale_reads",
        "garbage_reads",
        "lost_writes",
        "resurrected_deletes",
        "divergence",
    }
    assert report["end_phase"] in ("CUTOVER", "DECOMMISSIONED"), report["phases"]
    assert {f["family"] for f in report["faults"]} >= {
        "lost-ack",
        "late-config",
        "node-crash",
        "partition",
    }
    events, _ = read_history(out / "history.jsonl")
    assert check(events).valid
    assert "data:image/png;base64," in (out / "report.html").read_text()


def test_simulate_naive_finds_anomalies_and_prints_the_replay_command(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "naive"
    assert (
        main(
            [
                "simulate",
                str(tiny),
                "--seed",
                "1",
                "--strategy",
                "naive",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 1
    )
    printed = capsys.readouterr().out
    assert f"vecmig simulate {tiny} --seed 1 --strategy naive" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["verdict"]["valid"] is False


def test_history_records_faults_as_nemesis_info_events(tiny: Path) -> None:
    result = Simulation(load(str(tiny)), "safe", seed=1).run()
    faults = [e for e in result.events if e.f == "fault"]
    assert faults and all(e.process == "nemesis" and e.type == "info" for e in faults)
    starts = sum(e.value["action"] == "start" for e in faults)
    assert starts == sum(e.value["action"] == "stop" for e in faults), "every fault is healed"
    finals = [e for e in result.events if e.f == "final"]
    assert [e.value["side"] for e in finals] == ["old", "new"]


def test_a_crashed_instance_ends_its_writes_info_and_never_reuses_their_processes() -> None:
    scenario = from_dict(
        {
            "duration_s": 12,
            "catalog": {"products": 200, "dim": 8, "categories": 2},
            "traffic": {"rate": 400, "shopper_share": 0.5},
            "instances": {"count": 2},
            "migration": {
                "start_s": 1,
                "steps": ["advance", "advance"],
                "backfill_rate": 50,
                "batch_size": 8,
            },
            "latency": {"network": {"dist": "lognormal", "median_ms": 20, "sigma": 0.3}},
            "faults": [
                {"family": "app-instance-crash", "instance": 0, "at_s": s, "duration_s": 1}
                for s in (3, 6, 9)
            ],
        }
    )
    result = Simulation(scenario, "safe", seed=2).run()
    retired: set[object] = set()
    for event in result.events:
        if event.type == "invoke":
            assert event.process not in retired
        if event.type == "info" and event.f in ("upsert", "delete"):
            retired.add(event.process)
        assert not (event.type == "info" and event.f in ("get", "search")), (
            "reads move to a live instance"
        )
    assert retired, "some writes were in flight when the instance crashed"
    assert result.verdict.valid, result.verdict.counts()


@pytest.mark.parametrize("name", scenario_names())
def test_every_scenario_cut_short_finds_no_anomaly_and_reports_the_stall(
    name: str, tmp_path: Path
) -> None:
    """25 simulated seconds are too few for any shipped plan: safe serves every read right,
    and the run is reported stalled (exit 4), not valid: its plan did not finish."""
    out = tmp_path / name
    code = main(["simulate", name, "--duration", "25", "--quiet", "--out", str(out)])
    report = json.loads((out / "report.json").read_text())
    verdict = report["verdict"]
    assert not any(verdict[kind] for kind in ANOMALIES), verdict
    assert code == EXIT_STALLED and verdict["stalled"] and not verdict["valid"], verdict
    assert verdict["stall"]["why"] == "unfinished"
    assert report["ops"], "traffic ran"


def test_sweep_runs_seeds_in_parallel_and_summarises(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["sweep", str(tiny), "--seeds", "2", "--jobs", "2", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "of 2 seeds valid" in printed
    assert code in (EXIT_VALID, EXIT_ANOMALIES, EXIT_STALLED)
    if code != EXIT_VALID:
        assert f"vecmig simulate {tiny} --seed" in printed and "--swarm" in printed
