"""The history: one JSON line per event, in the style of Jepsen, shared by all three engines.

```
{"index": 17, "process": 3, "type": "invoke", "f": "upsert",
 "value": {"id": "p42", "version": 9}, "time": 123456789}
{"index": 18, "process": 3, "type": "ok", "f": "upsert",
 "value": {"id": "p42", "version": 9}, "time": 123459999}
```
(one line each in a file; wrapped here).

`type` is `invoke`, `ok`, `fail` (certainly no effect) or `info` (indeterminate). Each
completion follows its own invoke on the same `process`; a process that got `info` never
invokes again. `time` is nanoseconds on a clock shared by every process. Besides client ops
(`upsert`, `delete`, `get`, `search`) there are `load`, `phase`, `fault` and `final` events,
and the controller's `plan` and `gate` events (see `liveness`); their process is a name
(`"loader"`, `"controller"`, `"nemesis"`, `"checker"`).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from vecmig.harness.clusters.base import Record

EventType = Literal["invoke", "ok", "fail", "info"]
EVENT_TYPES: frozenset[str] = frozenset({"invoke", "ok", "fail", "info"})
CLIENT_FS: frozenset[str] = frozenset({"upsert", "delete", "get", "search"})
OTHER_FS: frozenset[str] = frozenset({"load", "phase", "fault", "final", "plan", "gate"})
READ_FS: frozenset[str] = frozenset({"get", "search"})
WRITE_FS: frozenset[str] = frozenset({"upsert", "delete"})

# Non-client events are issued by these named processes.
LOADER, CONTROLLER, NEMESIS, CHECKER = "loader", "controller", "nemesis", "checker"


class MalformedHistory(ValueError):
    """A history line that does not follow the format. Names the line and the problem."""

    def __init__(self, line: int, problem: str, source: str = "history") -> None:
        super().__init__(f"{source}:{line}: {problem}")
        self.line = line
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Event:
    index: int
    process: int | str
    type: EventType
    f: str
    value: Any
    time: int

    def to_json(self) -> str:
        return json.dumps(
            {
                "index": self.index,
                "process": self.process,
                "type": self.type,
                "f": self.f,
                "value": self.value,
                "time": self.time,
            },
            separators=(", ", ": "),
            allow_nan=False,
        )


def load_value(records: Iterable[Record]) -> dict[str, Any]:
    """The value of a `load` event: each record's version, and its fields (its metadata, what
    filters match), so that the checker can judge filtered hits of the loaded versions."""
    loaded = list(records)
    return {
        "records": {r.id: r.version for r in loaded},
        "fields": {r.id: dict(r.metadata) for r in loaded},
    }


class Recorder:
    """Appends events with consecutive indexes; optionally streams them to a file.

    Thread-safe, so that a live driver's worker threads and an event loop can share it.
    """

    def __init__(self, sink: IO[str] | None = None, keep: bool = True) -> None:
        self._events: list[Event] = []
        self._sink = sink
        self._keep = keep
        self._lock = threading.Lock()
        self._next_index = 0

    @property
    def events(self) -> list[Event]:
        return self._events

    def record(self, process: int | str, type: EventType, f: str, value: Any, time: int) -> Event:
        with self._lock:
            event = Event(self._next_index, process, type, f, value, int(time))
            self._next_index += 1
            if self._keep:
                self._events.append(event)
            if self._sink is not None:
                self._sink.write(event.to_json() + "\n")
            return event

    def invoke(self, process: int | str, f: str, value: Any, time: int) -> Event:
        return self.record(process, "invoke", f, value, time)

    def complete(self, process: int | str, type: EventType, f: str, value: Any, time: int) -> Event:
        if type == "invoke":
            raise ValueError("complete() takes ok, fail or info, not invoke")
        return self.record(process, type, f, value, time)

    def info(self, process: int | str, f: str, value: Any, time: int) -> Event:
        return self.record(process, "info", f, value, time)

    def ok(self, process: int | str, f: str, value: Any, time: int) -> Event:
        return self.record(process, "ok", f, value, time)


# ---------------------------------------------------------------------------------------------
# Reading and writing.


def write_jsonl(events: Iterable[Event], path: str | Path) -> None:
    with open(path, "w", encoding="utf-8") as out:
        for event in events:
            out.write(event.to_json() + "\n")


def parse_event(data: Mapping[str, Any], line: int, source: str = "history") -> Event:
    """Validate one decoded JSON object as an event."""

    def bad(problem: str) -> MalformedHistory:
        return MalformedHistory(line, problem, source)

    if not isinstance(data, Mapping):
        raise bad(f"expected a JSON object, got {type(data).__name__}")
    missing = [k for k in ("index", "process", "type", "f", "value", "time") if k not in data]
    if missing:
        raise bad(f"missing key(s) {', '.join(missing)}")
    index, process, type_, f, time = (data[k] for k in ("index", "process", "type", "f", "time"))
    if isinstance(index, bool) or not isinstance(index, int):
        raise bad(f"index must be an integer, got {index!r}")
    if isinstance(process, bool) or not isinstance(process, int | str):
        raise bad(f"process must be an integer or a name, got {process!r}")
    if type_ not in EVENT_TYPES:
        raise bad(f"type must be one of {sorted(EVENT_TYPES)}, got {type_!r}")
    if not isinstance(f, str) or f not in CLIENT_FS | OTHER_FS:
        raise bad(f"f must be one of {sorted(CLIENT_FS | OTHER_FS)}, got {f!r}")
    if isinstance(time, bool) or not isinstance(time, int):
        raise bad(f"time must be integer nanoseconds, got {time!r}")
    return Event(index, process, type_, f, data["value"], time)


def iter_numbered(path: str | Path) -> Iterator[tuple[int, Event]]:
    """(line number, event) of a history file, validated line by line; blank lines skipped."""
    source = str(path)
    number = 0
    with open(path, encoding="utf-8") as lines:
        try:
            for number, text in enumerate(lines, start=1):
                if not text.strip():
                    continue
                try:
                    data = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise MalformedHistory(number, f"not valid JSON ({exc.msg})", source) from None
                yield number, parse_event(data, number, source)
        except UnicodeDecodeError:
            raise MalformedHistory(number + 1, "not UTF-8 text", source) from None


def iter_jsonl(path: str | Path) -> Iterator[Event]:
    """Events of a history file, validated line by line (blank lines are skipped)."""
    for _, event in iter_numbered(path):
        yield event


def read_jsonl(path: str | Path) -> list[Event]:
    return list(iter_jsonl(path))


def merge(histories: Iterable[Iterable[Event]]) -> list[Event]:
    """Merge per-process histories by time (ties keep each file's order) and renumber."""
    tagged = [
        (event.time, source, position, event)
        for source, events in enumerate(histories)
        for position, event in enumerate(events)
    ]
    tagged.sort(key=lambda t: (t[0], t[1], t[2]))
    return [
        Event(i, e.process, e.type, e.f, e.value, e.time) for i, (_, _, _, e) in enumerate(tagged)
    ]
