"""Every engine's report has one shape: docs/report.schema.json (version 1). The simulator's
report.json (valid, anomalous and stalled runs), the load test's report.json and
`vecmig check --json` validate against it, and reports in the old shapes do not.

The load test's full run is slow; tests/test_loadtest.py validates its report too.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from test_sim_run import TINY

from vecmig.harness.cli import main
from vecmig.harness.history.checker import ANOMALIES, Verdict
from vecmig.harness.history.ops import Event, write_jsonl
from vecmig.harness.history.report import SCHEMA_VERSION, VERDICT_FIELDS, faults_of, phases_of
from vecmig.harness.history.report import build as build_report
from vecmig.loadtests.history import ProcessHistory, judge

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "docs" / "report.schema.json").read_text())
EXAMPLE = ROOT / "tests" / "data" / "example_history.jsonl"


def schema_errors(report: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(SCHEMA)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(report)]


def assert_valid_report(report: dict[str, Any], engine: str) -> None:
    """`report` keeps docs/report.schema.json and comes from `engine`."""
    assert schema_errors(report) == []
    assert report["engine"] == engine and report["schema_version"] == SCHEMA_VERSION


def test_the_schema_is_a_valid_json_schema_of_this_version() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["properties"]["schema_version"]["const"] == SCHEMA_VERSION
    verdict = SCHEMA["$defs"]["verdict"]
    assert verdict["required"] == list(VERDICT_FIELDS)
    assert SCHEMA["$defs"]["anomaly"]["enum"] == list(ANOMALIES)


# ---------------------------------------------------------------------------------------------
# The simulator.


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def simulate(tmp_path: Path, *argv: str) -> tuple[int, dict[str, Any]]:
    out = tmp_path / "out"
    code = main(["simulate", *argv, "--out", str(out), "--quiet"])
    return code, json.loads((out / "report.json").read_text())


def test_a_valid_simulation_writes_a_report_of_the_schema(tiny: Path, tmp_path: Path) -> None:
    code, report = simulate(tmp_path, str(tiny))
    assert code == 0, report["verdict"]
    assert_valid_report(report, "simulate")
    assert report["verdict"]["valid"] and report["faults"] and report["phases"]


def test_an_anomalous_simulation_writes_a_report_of_the_schema(tiny: Path, tmp_path: Path) -> None:
    code, report = simulate(tmp_path, str(tiny), "--strategy", "naive")
    assert code == 1, report["verdict"]
    assert_valid_report(report, "simulate")
    assert any(report["verdict"][k] for k in ANOMALIES) and report["examples"]


def test_a_stalled_simulation_writes_a_report_of_the_schema(tiny: Path, tmp_path: Path) -> None:
    code, report = simulate(tmp_path, str(tiny), "--duration", "6")
    assert code == 4, report["verdict"]
    assert_valid_report(report, "simulate")
    assert report["verdict"]["stall"]["why"] == "unfinished"


# ---------------------------------------------------------------------------------------------
# The load test (its judge, as the Locust master calls it) and `vecmig check --json`.


def test_the_load_tests_judge_writes_a_report_of_the_schema(tmp_path: Path) -> None:
    part = ProcessHistory(tmp_path / "parts", "one")
    r = part.recorder
    r.ok("loader", "load", {"records": {"p1": 1}}, 10)
    r.info("controller", "phase", {"phase": "DUAL_WRITE", "epoch": 1}, 15)
    r.info("nemesis", "fault", {"family": "service-crash", "action": "start", "pid": 7}, 16)
    p = part.new_process()
    r.invoke(p, "upsert", {"id": "p1", "version": 5}, 20)
    r.ok(p, "upsert", {"id": "p1", "version": 5}, 25)
    r.info("nemesis", "fault", {"family": "service-crash", "action": "stop"}, 26)
    r.invoke(p, "get", {"id": "p1"}, 30)
    r.ok(p, "get", {"id": "p1", "version": 1}, 40)
    r.ok("checker", "final", {"side": "old", "records": {"p1": 5}}, 50)
    part.close()
    verdict, report = judge(tmp_path / "parts", tmp_path / "out", seed=0, catalog=100, dim=8)
    assert_valid_report(json.loads((tmp_path / "out" / "report.json").read_text()), "loadtest")
    assert report["verdict"]["stale_reads"] == 1 and not verdict.valid
    assert report["ops"]["get"] == {"invoke": 1, "ok": 1, "fail": 0, "info": 0}
    assert report["faults"] == [
        {"family": "service-crash", "pid": 7, "start_s": 6e-9, "stop_s": 1.6e-8}
    ]


@pytest.mark.parametrize("history", [EXAMPLE], ids=["example"])
def test_vecmig_check_json_prints_a_report_of_the_schema(history: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "vecmig", "check", str(history), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert_valid_report(report, "check")
    assert report["faults"] == [
        {"family": "latency_spike", "target": "new", "start_s": 3.5e-6, "stop_s": 5.5e-6}
    ]


def test_vecmig_check_json_of_a_history_without_events_is_a_report_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "empty.jsonl"
    write_jsonl([], path)
    assert main(["check", str(path), "--json"]) == 1  # unknown: no final state
    report = json.loads(capsys.readouterr().out)
    assert_valid_report(report, "check")
    assert report["verdict"]["unknown"] and report["events"] == 0


# ---------------------------------------------------------------------------------------------
# The schema has teeth.


@pytest.fixture(scope="module")
def checked() -> dict[str, Any]:
    from vecmig.harness.history.checker import check
    from vecmig.harness.history.ops import read_jsonl

    events = read_jsonl(EXAMPLE)
    return build_report("check", check(events), events, history=str(EXAMPLE))


def broken(report: dict[str, Any], edit: str) -> dict[str, Any]:
    bad = copy.deepcopy(report)
    if edit == "flat verdict (the old load test)":
        bad.update(bad.pop("verdict"))
    elif edit == "no version":
        del bad["schema_version"]
    elif edit == "valid with a stale read":
        bad["verdict"]["stale_reads"] = 1
    elif edit == "verdict without filter_violations":
        del bad["verdict"]["filter_violations"]
    elif edit == "stalled without a stall":
        bad["verdict"].update(valid=False, stalled=True)
    elif edit == "unpaired fault event":
        bad["faults"] = [{"family": "partition", "action": "start", "start_s": 1, "stop_s": None}]
    elif edit == "check without its history":
        del bad["history"]
    return bad


@pytest.mark.parametrize(
    "edit",
    [
        "flat verdict (the old load test)",
        "no version",
        "valid with a stale read",
        "verdict without filter_violations",
        "stalled without a stall",
        "unpaired fault event",
        "check without its history",
    ],
)
def test_a_report_out_of_shape_is_refused(checked: dict[str, Any], edit: str) -> None:
    assert schema_errors(checked) == []
    assert schema_errors(broken(checked, edit)), edit


def test_a_fault_stop_closes_the_earliest_open_fault_it_agrees_with() -> None:
    from vecmig.harness.history.ops import Event

    def fault(action: str, t: int, **params: Any) -> Event:
        return Event(t, "nemesis", "info", "fault", {"action": action, **params}, t * 10**9)

    faults = faults_of(
        [
            fault("start", 1, family="partition", side="old"),
            fault("start", 2, family="partition", side="new"),
            fault("stop", 3, family="partition", side="new"),
            fault("start", 4, family="service-crash", pid=1),
            fault("stop", 5, family="service-crash"),
        ]
    )
    assert [(f["family"], f["start_s"], f["stop_s"]) for f in faults] == [
        ("partition", 1, None),
        ("partition", 2, 3),
        ("service-crash", 4, 5),
    ]


# ---------------------------------------------------------------------------------------------
# The report's parts, from a history and its verdict.


def _event(index: int, type_: Any, f: str, value: Any, time: int) -> Event:
    return Event(index, 1, type_, f, value, time)


def test_a_report_counts_client_ops_by_type_and_times_phases_and_faults_from_the_first_event() -> (
    None
):
    """Times are seconds since the history's first event, whatever its clock reads."""
    events = [
        _event(0, "ok", "load", {"records": {}}, 5 * 10**9),
        _event(1, "info", "phase", {"phase": "DUAL_WRITE", "epoch": 1}, 6 * 10**9),
        _event(2, "invoke", "upsert", {"id": "a", "version": 2}, 7 * 10**9),
        _event(3, "info", "upsert", {"id": "a", "version": 2}, 8 * 10**9),
        _event(4, "invoke", "get", {"id": "a"}, 9 * 10**9),
        _event(5, "fail", "get", {"id": "a"}, 10 * 10**9),
        _event(8, "invoke", "get", {"id": "a"}, 10 * 10**9),
        _event(9, "ok", "get", {"id": "a", "version": 2}, 10 * 10**9),
        _event(6, "info", "fault", {"family": "partition", "action": "start"}, 11 * 10**9),
        _event(7, "info", "fault", "not an object", 12 * 10**9),
    ]
    verdict = Verdict(valid=False, failed_reads=1, examples={"failed_reads": [{"id": "a"}]})
    verdict.notes.append("a note")
    report = build_report("simulate", verdict, events, seed=3)
    assert report["ops"] == {
        "get": {"invoke": 2, "ok": 1, "fail": 1, "info": 0},
        "upsert": {"invoke": 1, "ok": 0, "fail": 0, "info": 1},
    }
    assert list(report["ops"]) == ["get", "upsert"]
    assert report["phases"] == [{"phase": "DUAL_WRITE", "epoch": 1, "time_s": 1.0}]
    assert report["faults"] == [{"family": "partition", "start_s": 6.0, "stop_s": None}]
    assert report["events"] == 10 and report["seed"] == 3
    assert report["verdict"]["failed_reads"] == 1 and report["verdict"]["valid"] is False
    assert list(report["verdict"]) == list(VERDICT_FIELDS)
    assert report["examples"] == {"failed_reads": [{"id": "a"}]}
    assert report["notes"] == ["a note"] and report["recall"] is None
    assert report["schema_version"] == SCHEMA_VERSION and report["engine"] == "simulate"


def test_a_report_of_no_events_has_no_phases_faults_or_ops() -> None:
    report = build_report("check", Verdict(valid=True), [], history="h")
    assert (report["ops"], report["phases"], report["faults"], report["events"]) == ({}, [], [], 0)


def test_a_report_refuses_an_unknown_engine_and_an_engine_field_that_hides_a_common_one() -> None:
    with pytest.raises(ValueError, match=r"engine 'replay' is not one of \('simulate', "):
        build_report("replay", Verdict(valid=True), [])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"engine fields \['notes', 'ops'\] would overwrite"):
        build_report("check", Verdict(valid=True), [], ops={}, notes=[], history="h")


def test_a_fault_stop_that_agrees_with_no_open_fault_closes_nothing() -> None:
    def fault(action: str, t: int, **params: Any) -> Event:
        return Event(t, "nemesis", "info", "fault", {"action": action, **params}, t * 10**9)

    faults = faults_of(
        [
            fault("start", 1, family="partition", side="old"),
            fault("stop", 2, family="partition", side="new"),
            fault("stop", 3, family="latency"),
            fault("stop", 4, family="partition", side="old"),
            fault("stop", 5, family="partition", side="old"),
        ],
        origin=10**9,
    )
    assert faults == [{"family": "partition", "side": "old", "start_s": 0.0, "stop_s": 3.0}]


def test_phase_times_count_from_zero_unless_given_an_origin() -> None:
    phase = Event(0, "controller", "info", "phase", {"phase": "SHADOW"}, 3 * 10**9)
    assert phases_of([phase]) == [{"phase": "SHADOW", "time_s": 3.0}]
    assert phases_of([phase], origin=10**9) == [{"phase": "SHADOW", "time_s": 2.0}]
