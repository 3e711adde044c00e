"""The load test's history: one file per Locust process (and one for the chaos controller),
merged by time at the end, judged by the same checker as every other engine.

Every simulated user is a history process; a process whose op ended indeterminate (`info`)
never invokes again, so its user takes a new process number. Process numbers are unique
across the Locust processes of one machine (pid-based), and `time` is `time.monotonic_ns()`,
the clock every process of the machine shares.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from vecmig.harness.history.checker import Verdict, check_safely
from vecmig.harness.history.ops import (
    Event,
    MalformedHistory,
    Recorder,
    iter_jsonl,
    merge,
    write_jsonl,
)
from vecmig.harness.history.report import build as build_report

PART_GLOB = "part-*.jsonl"

_NUMBERS = itertools.count((os.getpid() % 20_000) * 100_000)
_NUMBERS_LOCK = threading.Lock()


class ProcessHistory:
    """This Locust process's part of the history, streamed line by line to `dir`."""

    def __init__(self, directory: str | Path, name: str | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.name = name or f"{os.getpid()}"
        self.path = self.directory / f"part-{self.name}.jsonl"
        self._file = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - close()
        self.recorder = Recorder(self._file, keep=False)

    @staticmethod
    def new_process() -> int:
        """A process number no other user on this machine holds (pid-based, one counter per
        Locust process, whichever part records it)."""
        with _NUMBERS_LOCK:
            return next(_NUMBERS)

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
    return time.monotonic_ns()


def collect(directory: str | Path) -> list[Event]:
    """Every part in `directory`, merged by time and renumbered."""
    parts = sorted(Path(directory).glob(PART_GLOB))
    return merge(list(iter_jsonl(p)) for p in parts)


def judge(directory: str | Path, out: str | Path, **run: Any) -> tuple[Verdict, dict[str, Any]]:
    """Merge the parts, write `out`/history.jsonl and `out`/report.json (the report every
    engine writes, with the run's settings `run`), return the verdict and the report."""
    events = collect(directory)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(events, out / "history.jsonl")
    try:
        verdict = check_safely(events, source=str(out / "history.jsonl"))
    except MalformedHistory as exc:  # our own recording is wrong: say so, never "valid"
        verdict = Verdict(valid=False, unknown=True, notes=[f"the history is malformed: {exc}"])
    report = build_report("loadtest", verdict, events, **run)
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
