"""The load test: its history plumbing and schedule (fast), and two real runs (slow): the safe
strategy under the default chaos -- faults in every phase, the service SIGKILLed mid-backfill
and restarted -- ends with zero anomalies; the naive strategy under the same chaos does not."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_report_schema import assert_valid_report

from vecmig.harness.clusters.faults import CLUSTER_FAULT_FAMILIES
from vecmig.harness.history.checker import ANOMALIES, PHASES
from vecmig.harness.service.cluster_server import SERVER_FAULT_FAMILIES
from vecmig.harness.service.driver import LAYER_FAULT_FAMILIES
from vecmig.loadtests.chaos import RunPlan, default_schedule
from vecmig.loadtests.history import ProcessHistory, VersionClock, collect, judge


def test_versions_strictly_increase_and_differ_between_processes() -> None:
    a, b = VersionClock(slot=1), VersionClock(slot=2)
    seen = [a.next() for _ in range(1000)]
    assert seen == sorted(set(seen))
    assert not set(seen) & {b.next() for _ in range(1000)}


def test_parts_merge_by_time_and_are_judged(tmp_path: Path) -> None:
    first, second = ProcessHistory(tmp_path, "one"), ProcessHistory(tmp_path, "two")
    first.recorder.ok("loader", "load", {"records": {"p1": 1}}, 10)
    p, q = first.new_process(), second.new_process()
    assert p != q
    second.recorder.invoke(q, "get", {"id": "p1"}, 30)
    first.recorder.invoke(p, "upsert", {"id": "p1", "version": 5}, 20)
    first.recorder.ok(p, "upsert", {"id": "p1", "version": 5}, 25)
    second.recorder.ok(q, "get", {"id": "p1", "version": 1}, 40)
    first.recorder.ok("checker", "final", {"side": "old", "records": {"p1": 5}}, 50)
    first.close()
    second.close()
    assert [e.time for e in collect(tmp_path)] == [10, 20, 25, 30, 40, 50]
    verdict, report = judge(tmp_path, tmp_path / "out", seed=3)
    assert not verdict.valid and report["verdict"]["stale_reads"] == 1
    assert (tmp_path / "out" / "history.jsonl").exists()
    written = json.loads((tmp_path / "out" / "report.json").read_text())
    assert written == report and written["engine"] == "loadtest" and written["seed"] == 3
    assert set(ANOMALIES) <= set(written["verdict"])


def test_the_default_schedule_fits_its_run_and_names_real_faults() -> None:
    families = {
        "old": set(CLUSTER_FAULT_FAMILIES + SERVER_FAULT_FAMILIES),
        "new": set(CLUSTER_FAULT_FAMILIES + SERVER_FAULT_FAMILIES),
        "layer": set(LAYER_FAULT_FAMILIES),
    }
    schedule = default_schedule(60, lagged=["old"])
    assert sum(step[1] for step in schedule if step[0] == "wait") < 0.6 * 60
    started: set[tuple[str, str]] = set()
    for step in schedule:
        if step[0] in ("start", "stop"):
            assert step[2] in families[step[1]], step
            key = (step[1], step[2])
            (started.add if step[0] == "start" else started.discard)(key)
        if step[0] == "advance":
            assert step[1] in PHASES
    assert not started, f"faults left on: {started}"
    assert ("kill-service",) in schedule and ("kill-service",) not in default_schedule(
        60, can_restart=False
    )


def test_a_run_plan_with_an_unknown_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text(
        json.dumps({"service": "x", "admin_token": "t", "old": "a", "new": "b", "users": 3})
    )
    with pytest.raises(ValueError, match=r"unknown run plan key\(s\) \['users'\]"):
        RunPlan.load(path)


def run_loadtest(out: Path, *args: str, timeout: float) -> tuple[int, dict[str, Any], str]:
    command = [sys.executable, "-m", "vecmig", "loadtest", "--out", str(out), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    report_path = out / "report.json"
    assert report_path.exists(), done.stdout + done.stderr
    return done.returncode, json.loads(report_path.read_text()), done.stdout


@pytest.mark.slow
def test_the_safe_strategy_survives_the_chaos_with_zero_anomalies(tmp_path: Path) -> None:
    code, report, output = run_loadtest(
        tmp_path / "safe", "--duration", "60", "--users", "8", timeout=170
    )
    assert code == 0, output
    assert_valid_report(report, "loadtest")
    verdict = report["verdict"]
    assert verdict["valid"] is True and all(verdict[k] == 0 for k in ANOMALIES), output
    phases = [p["phase"] for p in report["phases"]]
    assert phases[-1] == "CUTOVER", output
    crashes = [f for f in report["faults"] if f["family"] == "service-crash"]
    assert crashes and all(f["stop_s"] is not None for f in crashes), report["faults"]
    ops = report["ops"]
    assert all(ops[f]["ok"] > 50 for f in ("upsert", "delete", "get", "search")), ops
    assert "resumed at BACKFILL" in output


@pytest.mark.slow
def test_the_naive_strategy_breaks_under_the_same_chaos(tmp_path: Path) -> None:
    code, report, output = run_loadtest(
        tmp_path / "naive", "--duration", "45", "--users", "8", "--strategy", "naive", timeout=150
    )
    assert code == 1, output
    assert_valid_report(report, "loadtest")
    verdict = report["verdict"]
    assert verdict["valid"] is False and not verdict["unknown"], output
    assert verdict["lost_writes"] + verdict["stale_reads"] + verdict["divergence"] > 0, output
    assert "vecmig check" in output and "--strategy naive" in output
