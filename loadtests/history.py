"""The load test's history: one file per Locust process (and one for the chaos controller),
merged by time at the end, judged by the same checker as every other engine.

Every simulated user is a history process; a process whose op ended indeterminate (`info`)
never invokes again, so its user takes a new process number. Process numbers are unique
across the Locust processes of one machine (pid-based), and `time` is `time.monotonic_ns()`,
the clock every process of the machine shares.

Across machines (`vecmig loadtest --clock wall`, or a run plan whose `clock` is `wall`), each
Locust process reads its wall clock and sets it to the reference's -- the controller's
history clock, read from its /health -- by an offset measured as NTP does: of a few round
trips, the shortest's midpoint, so the true offset lies within half that round trip. Every
event then carries `error`, that half plus `DRIFT_ALLOWANCE_NS`; at the end the process
measures again and records how far the offset moved (a `clock` event with `drift_ns`, the
worst case). The checker judges ops that overlap within their bounds as concurrent, and a
clock that moved beyond its bound makes the verdict unknown (see `vecmig.harness.history.ops`).
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vecmig.harness.history.checker import Verdict, check_safely
from vecmig.harness.history.ops import (
    CLIENT_FS,
    Event,
    MalformedHistory,
    Recorder,
    iter_jsonl,
    merge,
    write_jsonl,
)
from vecmig.harness.history.report import build as build_report

PART_GLOB = "part-*.jsonl"
DRIFT_ALLOWANCE_NS = 5_000_000
"""What a measured clock's bound allows beyond half its round trip: its drift over a run and
the end measurement's own error (a loaded machine's loopback answers within a few ms)."""


class HistoryClock:
    """How this process times its events: `read() + offset_ns`, within `error_ns` of the
    reference (0 and 0 on one machine, where every process reads the same monotonic clock)."""

    def __init__(self) -> None:
        self.read: Callable[[], int] = time.monotonic_ns
        self.offset_ns = 0
        self.error_ns = 0
        self.name = ""

    def now(self) -> int:
        return self.read() + self.offset_ns


CLOCK = HistoryClock()


def measure_offset(
    reference: Callable[[], int], read: Callable[[], int], samples: int = 8
) -> tuple[int, int]:
    """(offset, error): the reference's reading minus `read`'s, taken from the sample with the
    shortest round trip, and half that round trip, within which the true offset lies."""
    best: tuple[int, int] | None = None
    for _ in range(samples):
        sent = read()
        theirs = reference()
        back = read()
        if best is None or back - sent < best[1]:
            best = (theirs - (sent + back) // 2, back - sent)
    assert best is not None
    return best[0], best[1] // 2 + 1


def set_clock(name: str, reference: Callable[[], int], read: Callable[[], int]) -> None:
    """Time this process's events on `read`, set to `reference` (see the module's note)."""
    offset, error = measure_offset(reference, read)
    CLOCK.name, CLOCK.read, CLOCK.offset_ns = name, read, offset
    CLOCK.error_ns = error + DRIFT_ALLOWANCE_NS


def clock_value(reference: Callable[[], int] | None = None) -> dict[str, Any]:
    """The value of this process's `clock` event: at the start (no `reference`), or at the end,
    measured again against `reference` (`drift_ns`: how far the offset may have moved, the
    measured move plus the new measurement's error, signed)."""
    value: dict[str, Any] = {"clock": CLOCK.name, "error_ns": CLOCK.error_ns}
    value["offset_ns"] = CLOCK.offset_ns
    if reference is None:
        return {**value, "at": "start"}
    offset, error = measure_offset(reference, CLOCK.read)
    moved = offset - CLOCK.offset_ns
    drift = abs(moved) + error
    return {**value, "at": "end", "drift_ns": drift if moved >= 0 else -drift}


_NUMBERS_LOCK = threading.Lock()
_NUMBERS: dict[int, itertools.count[int]] = {}
"""A counter per pid: begun again in a child that Locust forked (`--processes`), which
inherits the parent's counter otherwise."""


class ProcessHistory:
    """This Locust process's part of the history, streamed line by line to `dir`."""

    def __init__(self, directory: str | Path, name: str | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.name = name or f"{os.getpid()}"
        self.path = self.directory / f"part-{self.name}.jsonl"
        self._file = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - close()
        self.recorder = Recorder(self._file, keep=False, error=CLOCK.error_ns)

    @staticmethod
    def new_process() -> int:
        """A process number no other user on this machine holds (pid-based, one counter per
        Locust process, whichever part records it)."""
        with _NUMBERS_LOCK:
            pid = os.getpid()
            if pid not in _NUMBERS:
                _NUMBERS.clear()
                _NUMBERS[pid] = itertools.count((pid % 20_000) * 100_000)
            return next(_NUMBERS[pid])

    def close(self) -> None:
        self._file.close()


class VersionClock:
    """Versions for one Locust process: wall-clock microseconds with the process's slot in the
    last three digits, strictly increasing here, and distinct from every other process's, so
    a write's version is known at invoke and later writes carry higher ones (as updated_at)."""

    def __init__(self, slot: int | None = None) -> None:
        self.slot = (os.getpid() if slot is None else slot) % 1000
        self._last = 0

    def next(self) -> int:
        version = (time.time_ns() // 1000) * 1000 + self.slot
        if version <= self._last:
            version = self._last + 1000
        self._last = version
        return version


def now() -> int:
    """The time of a history event: this process's clock (see `HistoryClock`)."""
    return CLOCK.now()


def collect(directory: str | Path) -> list[Event]:
    """Every part in `directory`, merged by time and renumbered."""
    parts = sorted(Path(directory).glob(PART_GLOB))
    return merge(list(iter_jsonl(p)) for p in parts)


def throughput(events: Sequence[Event]) -> list[dict[str, Any]]:
    """Client operations per phase: how many completed (and how many ok) per second of the
    phase, and their latency (p50, p99), from the history alone. A phase runs from its
    `phase` event to the next (the first from the first client invoke); an op counts in the
    phase it completed in. Open ops (cut off by the end of the run) are not counted."""
    windows: list[tuple[str, int]] = []
    invoked: dict[Any, int] = {}
    per: dict[int, list[tuple[str, int]]] = {}
    first = last = None
    for event in events:
        if event.f == "phase":
            windows.append((str(event.value.get("phase")), event.time))
            continue
        if event.f not in CLIENT_FS:
            continue
        if event.type == "invoke":
            invoked[event.process] = event.time
            first = event.time if first is None else first
            continue
        started = invoked.pop(event.process, None)
        if started is None:
            continue
        last = event.time
        per.setdefault(len(windows), []).append((event.type, event.time - started))
    if first is None or last is None:
        return []
    bounds = [("OLD_ONLY", first), *windows]
    rows = []
    for n, (phase, begin) in enumerate(bounds):
        end = bounds[n + 1][1] if n + 1 < len(bounds) else last
        done = per.get(n, [])
        seconds = max(end - max(begin, first), 1) / 1e9
        latencies = sorted(ns for _, ns in done)
        ok = sum(1 for kind, _ in done if kind == "ok")
        rows.append(
            {
                "phase": phase,
                "seconds": round(seconds, 3),
                "ops": len(done),
                "ok": ok,
                "ops_per_s": round(len(done) / seconds, 1),
                "ok_per_s": round(ok / seconds, 1),
                "p50_ms": _percentile_ms(latencies, 0.5),
                "p99_ms": _percentile_ms(latencies, 0.99),
            }
        )
    return rows


def _percentile_ms(sorted_ns: Sequence[int], share: float) -> float | None:
    if not sorted_ns:
        return None
    return round(sorted_ns[min(len(sorted_ns) - 1, int(len(sorted_ns) * share))] / 1e6, 2)


def judge(directory: str | Path, out: str | Path, **run: Any) -> tuple[Verdict, dict[str, Any]]:
    """Merge the parts, write `out`/history.jsonl and `out`/report.json (the report every
    engine writes, with the run's settings `run` and the throughput per phase), return the
    verdict and the report."""
    events = collect(directory)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(events, out / "history.jsonl")
    try:
        verdict = check_safely(events, source=str(out / "history.jsonl"))
    except MalformedHistory as exc:  # our own recording is wrong: say so, never "valid"
        verdict = Verdict(valid=False, unknown=True, notes=[f"the history is malformed: {exc}"])
    rows = throughput(events)
    client_s = sum(r["seconds"] for r in rows)
    ops_per_s = round(sum(r["ops"] for r in rows) / client_s, 1) if client_s else None
    report = build_report("loadtest", verdict, events, throughput=rows, ops_per_s=ops_per_s, **run)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return verdict, report


def main(argv: list[str] | None = None) -> int:
    """`python -m vecmig.loadtests.history PARTS_DIR [OUT_DIR]`: judge parts gathered by hand (e.g.
    from several Locust worker machines, see docs/loadtest.md)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if not args or len(args) > 2:
        print("usage: python -m vecmig.loadtests.history PARTS_DIR [OUT_DIR]", file=sys.stderr)
        return 2
    verdict, report = judge(args[0], args[1] if len(args) == 2 else args[0])
    print(json.dumps({k: report[k] for k in ("verdict", "ops")}, indent=2))
    return 0 if verdict.valid else 1


if __name__ == "__main__":
    raise SystemExit(main())
