"""The load test: its history plumbing and schedule (fast), and two real runs of one
standalone service (slow; a fleet's are in test_loadtest_fleet): the safe strategy under the
default chaos -- faults in every phase, the service SIGKILLed mid-backfill
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
from vecmig.loadtests import history
from vecmig.loadtests.chaos import RunPlan, default_schedule
from vecmig.loadtests.history import (
    DRIFT_ALLOWANCE_NS,
    ProcessHistory,
    VersionClock,
    clock_value,
    collect,
    judge,
    measure_offset,
    set_clock,
)

MS = 1_000_000


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


class FakeClocks:
    """A reference clock and a worker's clock `skew` ns ahead of it; every reading advances
    true time by `step` ns, so a round trip (read, reference, read) takes 2 steps."""

    def __init__(self, skew: int, step: int = 1 * MS) -> None:
        self.true, self.skew, self.step = 0, skew, step

    def reference(self) -> int:
        self.true += self.step
        return self.true

    def worker(self) -> int:
        self.true += self.step
        return self.true + self.skew


@pytest.fixture
def clock_restored() -> Any:
    saved = vars(history.CLOCK).copy()
    yield history.CLOCK
    vars(history.CLOCK).update(saved)


def test_an_offset_is_measured_within_half_the_round_trip() -> None:
    clocks = FakeClocks(skew=37 * MS)
    offset, error = measure_offset(clocks.reference, clocks.worker)
    assert abs(offset - (-37 * MS)) <= error and error == 1 * MS + 1


def test_a_skewed_worker_set_to_the_reference_is_judged_exactly_enough(
    tmp_path: Path, clock_restored: Any
) -> None:
    """A worker 37 ms ahead measures its offset, records a read that truly began 2 ms before
    an upsert's acknowledgement (concurrent: v1 is fair) and one 40 ms after (stale); the
    merged history keeps the fair one and finds the stale one. Measured again 20 ms ahead at
    the end, the clock left its bound: the verdict is unknown."""
    clocks = FakeClocks(skew=37 * MS)
    set_clock("w1", clocks.reference, clocks.worker)
    assert clock_restored.error_ns == 1 * MS + 1 + DRIFT_ALLOWANCE_NS
    reference = ProcessHistory(tmp_path, "master")  # made before: bound 0
    reference.recorder.error = 0
    worker = ProcessHistory(tmp_path, "worker")
    worker.recorder.info("w1", "clock", clock_value(), 0)
    reference.recorder.ok("loader", "load", {"records": {"p1": 1}}, 0)
    reference.recorder.invoke(1, "upsert", {"id": "p1", "version": 2}, 100 * MS)
    reference.recorder.ok(1, "upsert", {"id": "p1", "version": 2}, 110 * MS)

    def worker_time(true_ns: int) -> int:  # what the worker records: its clock set back
        return true_ns + clocks.skew + clock_restored.offset_ns

    for process, true_ns in ((2, 108 * MS), (3, 150 * MS)):
        worker.recorder.invoke(process, "get", {"id": "p1"}, worker_time(true_ns))
        answer = {"id": "p1", "version": 1}
        worker.recorder.ok(process, "get", answer, worker_time(true_ns + MS))
    worker.recorder.info("w1", "clock", clock_value(clocks.reference), 200 * MS)
    final = {"side": "old", "records": {"p1": 2}}
    reference.recorder.ok("checker", "final", final, 300 * MS)
    reference.recorder.ok("checker", "final", {**final, "side": "new"}, 300 * MS)
    reference.close()
    worker.close()
    verdict, report = judge(tmp_path, tmp_path / "out")
    assert verdict.stale_reads == 1 and not verdict.unknown, report["notes"]
    assert report["examples"]["stale_reads"][0]["process"] == 3
    assert_valid_report(report, "loadtest")

    clocks.skew += 20 * MS  # the worker's clock steps: the end check sees it
    late = tmp_path / "late"
    again = ProcessHistory(late, "worker")
    again.recorder.info("w1", "clock", clock_value(), 0)
    again.recorder.info("w1", "clock", clock_value(clocks.reference), 200 * MS)
    again.recorder.ok("checker", "final", final, 300 * MS)
    again.recorder.ok("checker", "final", {**final, "side": "new"}, 300 * MS)
    again.close()
    verdict, report = judge(late, late / "out")
    assert verdict.unknown and any("beyond its bound" in n for n in verdict.notes)


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
        tmp_path / "safe", "--instances", "0", "--duration", "60", "--users", "8", timeout=170
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
        tmp_path / "naive",
        *("--instances", "0", "--duration", "45", "--users", "8", "--strategy", "naive"),
        timeout=150,
    )
    assert code == 1, output
    assert_valid_report(report, "loadtest")
    verdict = report["verdict"]
    assert verdict["valid"] is False and not verdict["unknown"], output
    assert verdict["lost_writes"] + verdict["stale_reads"] + verdict["divergence"] > 0, output
    assert "vecmig check" in output and "--strategy naive" in output
