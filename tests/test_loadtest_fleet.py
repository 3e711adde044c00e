"""A fleet under load, sized for CI: three `vecmig serve` instances and a `vecmig control`
sharing a SQLite config store, distributed Locust (a master and one worker), and the fleet's
chaos -- late config on one instance, the controller and one instance SIGKILLed and started
again, one SIGSTOPped past its lease, the config store restarted, one cut off from it, a
rolling restart. The safe strategy ends valid, timed on wall clocks set to the controller's
(the path workers on other machines take); the naive strategy under the same chaos does not."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_loadtest import run_loadtest
from test_report_schema import assert_valid_report

from vecmig.harness.history.checker import ANOMALIES

FLEET = ("--instances", "3", "--processes", "1", "--rate", "60", "--catalog", "600")
FLEET_FAULTS = {
    "config-lag",
    "instance-crash",
    "controller-crash",
    "instance-pause",
    "config-store-restart",
    "config-cut",
    "rolling-restart",
}


@pytest.mark.slow
def test_a_fleet_under_its_chaos_stays_valid_for_safe(tmp_path: Path) -> None:
    out = tmp_path / "fleet"
    code, report, output = run_loadtest(
        out, *FLEET, "--duration", "70", "--clock", "wall", timeout=420
    )
    assert code == 0, output
    assert_valid_report(report, "loadtest")
    verdict = report["verdict"]
    assert verdict["valid"] is True and all(verdict[k] == 0 for k in ANOMALIES), output
    assert [p["phase"] for p in report["phases"]][-1] == "CUTOVER", output
    stopped = {f["family"] for f in report["faults"] if f["stop_s"] is not None}
    assert not FLEET_FAULTS - stopped, f"never injected and stopped: {FLEET_FAULTS - stopped}"
    rolled = {f["target"] for f in report["faults"] if f["family"] == "rolling-restart"}
    assert rolled == {"app-0", "app-1", "app-2"}, report["faults"]
    assert all(report["ops"][f]["ok"] > 20 for f in ("upsert", "delete", "get", "search"))
    assert report["throughput"] and report["ops_per_s"] > 0, report["throughput"]
    # The wall-clock path: every Locust process set its clock and checked it at the end.
    assert any("clock-error bounds" in note for note in report["notes"]), report["notes"]
    parts = list((out / "history").glob("part-*.jsonl"))
    clocks = sum(1 for p in parts for line in p.open() if '"f": "clock"' in line)
    assert clocks >= 4, clocks  # master and worker, start and end


@pytest.mark.slow
def test_a_fleet_under_the_same_chaos_breaks_naive(tmp_path: Path) -> None:
    code, report, output = run_loadtest(
        tmp_path / "naive", *FLEET, "--duration", "70", "--strategy", "naive", timeout=420
    )
    assert code == 1, output
    assert_valid_report(report, "loadtest")
    verdict = report["verdict"]
    assert verdict["valid"] is False and not verdict["unknown"], output
    assert verdict["lost_writes"] + verdict["stale_reads"] + verdict["divergence"] > 0, output
    assert "--instances 3" in output and "--strategy naive" in output
