"""One report for every engine: what `vecmig simulate` and `vecmig loadtest` write as
report.json and what `vecmig check --json` prints, built from a history and its verdict.

The shape is versioned (`SCHEMA_VERSION`) and described by docs/report.schema.json, which a
test validates every engine's report against. The common part is the same for all three:

    schema_version, engine      1, and "simulate" | "loadtest" | "check"
    verdict                     valid, unknown, stalled, stall and every anomaly count
    recall, examples, notes     the checker's quality figure, first examples, notes
    ops                         client ops by kind: {"get": {"invoke": n, "ok": n, ...}}
    phases, faults              from the history's phase and fault events, in seconds since
                                the history's first event; a fault's start and stop paired
    events                      how many events the history holds

Each engine adds its own fields at the top level (the simulator its seed, replay command and
latencies; the load test its run's settings); the schema lists which.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

from vecmig.harness.history.checker import ANOMALIES, Verdict
from vecmig.harness.history.ops import CLIENT_FS, Event

__all__ = [
    "ENGINES",
    "SCHEMA_VERSION",
    "VERDICT_FIELDS",
    "Engine",
    "build",
    "faults_of",
    "ops_of",
    "phases_of",
    "verdict_of",
]

SCHEMA_VERSION = 1
"""Bumped when a field changes meaning or disappears; new optional fields keep the version."""

Engine = Literal["simulate", "loadtest", "check"]
ENGINES: tuple[Engine, ...] = ("simulate", "loadtest", "check")

VERDICT_FIELDS = ("valid", "unknown", "stalled", "stall", *ANOMALIES, "unjudged_filtered_hits")
"""The report's `verdict` object: what decides the exit code, and nothing else."""

NS_PER_S = 1e9
OP_TYPES = ("invoke", "ok", "fail", "info")


def build(
    engine: Engine, verdict: Verdict, events: Sequence[Event], **fields: Any
) -> dict[str, Any]:
    """The report of a run whose history is `events`, judged `verdict`; `fields` are the
    engine's own (they may not reuse a common field's name)."""
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r} is not one of {ENGINES}")
    origin = events[0].time if events else 0
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "engine": engine,
        "verdict": verdict_of(verdict),
        "recall": verdict.recall,
        "examples": {kind: list(found) for kind, found in verdict.examples.items()},
        "notes": list(verdict.notes),
        "ops": ops_of(events),
        "phases": phases_of(events, origin),
        "faults": faults_of(events, origin),
        "events": len(events),
    }
    clash = sorted(set(report) & set(fields))
    if clash:
        raise ValueError(f"engine fields {clash} would overwrite the report's common fields")
    return {**report, **fields}


def verdict_of(verdict: Verdict) -> dict[str, Any]:
    """The report's `verdict` object (`VERDICT_FIELDS` of the checker's whole answer)."""
    answer = verdict.to_json()
    return {name: answer[name] for name in VERDICT_FIELDS}


def ops_of(events: Iterable[Event]) -> dict[str, dict[str, int]]:
    """Client operations by kind, counted by event type (`invoke`, `ok`, `fail`, `info`)."""
    counts: dict[str, dict[str, int]] = {}
    for e in events:
        if e.f in CLIENT_FS:
            by_type = counts.setdefault(e.f, dict.fromkeys(OP_TYPES, 0))
            by_type[e.type] += 1
    return dict(sorted(counts.items()))


def phases_of(events: Iterable[Event], origin: int = 0) -> list[dict[str, Any]]:
    """Every phase event's value (phase, epoch, step), with `time_s` since `origin` (ns)."""
    return [{**e.value, "time_s": (e.time - origin) / NS_PER_S} for e in events if e.f == "phase"]


def faults_of(events: Iterable[Event], origin: int = 0) -> list[dict[str, Any]]:
    """Every fault that started, in the order they started: its family and parameters, with
    `start_s` and `stop_s` since `origin` (ns). A stop closes the earliest open fault of its
    family that agrees with every parameter the stop names (a stop may name fewer, as the load
    test's service-crash stop leaves out the pid); `stop_s` is None for a fault never stopped."""
    faults: list[dict[str, Any]] = []
    open_by_family: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        if e.f != "fault" or not isinstance(e.value, dict):
            continue
        params = {k: v for k, v in e.value.items() if k != "action"}
        at = (e.time - origin) / NS_PER_S
        still_open = open_by_family.setdefault(str(params.get("family")), [])
        if e.value.get("action") == "stop":
            match = next(
                (f for f in still_open if all(f.get(k) == v for k, v in params.items())), None
            )
            if match is not None:
                match["stop_s"] = at
                still_open.remove(match)
            continue
        fault = {**params, "start_s": at, "stop_s": None}
        faults.append(fault)
        still_open.append(fault)
    return faults
