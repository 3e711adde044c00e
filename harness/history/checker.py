"""The checker: one judge for the histories of all three engines, in a single linear pass.

Theory of operation. Events are visited in (time, index) order; the input is sorted only if
it is not in that order already. Per id the pass keeps the highest version of an upsert (or
load) and of a delete that completed ok so far (`max_up`, `max_del`), each change logged with
its position so that a read can be judged against the state *at its invoke* when it completes
("completed before R was invoked" = the completion precedes R's invoke in that order). It also
keeps the highest version of any delete invoked so far (a concurrent delete may explain a
not-found get), the highest version of any delete that ended indeterminate (it may have taken
effect, so it may explain a missing id in the final state), and every (id, version) that a
load or upsert carried, with the fields it carried (the metadata filters match), so that
garbage reads are resolved at the end against the whole run and every hit of a filtered
search is judged against the fields of the version it returned. Lost writes, resurrected
deletes and divergence are judged at the end against the `final` scans. Malformed input
raises `MalformedHistory` naming the line.

Clock bounds. An event may carry `error`, a bound on how far its time may be from the
reference clock's (see `ops`). Before the pass such a history is widened (`widen`): an
invoke moves `error` earlier and every other event `error` later, so an op's interval holds
every time it may truly have taken, and "completed before R was invoked" holds only when it
does whatever the clocks' errors within their bounds. Widening only makes more ops
concurrent: a history judged exactly (every bound 0) is judged as before, and a bound too
large hides anomalies rather than inventing them. A `clock` event whose `drift_ns` exceeds
its `error_ns` says a clock left its bound; then the verdict is unknown.

Counting: a failed read is one get or search; a stale, garbage or filter-violating read is
one returned (id, version) pair, so a search can count several; lost writes, resurrected
deletes and divergence count ids. A hit is judged for each property apart: a stale hit whose
version does not match the filter counts both as stale and as a filter violation.
"""

from __future__ import annotations

import bisect
import gc
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from vecmig.harness.history.liveness import Progress, Stall
from vecmig.harness.history.ops import CLIENT_FS, Event, MalformedHistory

Version = int | float
Fields = Mapping[str, Any]
"""The metadata a write carried, the fields filters match: {"category": 3, "in_stock": true}."""

PHASES: tuple[str, ...] = (
    "OLD_ONLY",
    "DUAL_WRITE",
    "BACKFILL",
    "SHADOW",
    "CUTOVER",
    "DECOMMISSIONED",
)
# After these phases the new side serves reads; before them the old side does.
NEW_SERVES: frozenset[str] = frozenset({"CUTOVER", "DECOMMISSIONED"})
# In these phases both sides are meant to be current and complete, so they must agree.
BOTH_CURRENT: frozenset[str] = frozenset({"SHADOW", "CUTOVER"})
SIDES: tuple[str, ...] = ("old", "new")
ANOMALIES: tuple[str, ...] = (
    "failed_reads",
    "stale_reads",
    "garbage_reads",
    "filter_violations",
    "lost_writes",
    "resurrected_deletes",
    "divergence",
)
MAX_EXAMPLES = 5

_NUMBER = (int, float)  # compared with `type(x) in`, which keeps bools out
_UNCARRIED: Any = object()  # `carried.get(key, _UNCARRIED)`: no load or upsert carried key


@dataclass(frozen=True)
class Verdict:
    """What the checker found. `valid` only if every count is zero and nothing was unjudged.

    `unjudged_filtered_hits`: hits of filtered searches whose version's fields no write
    recorded (an older history), so their filter could not be judged; not an anomaly."""

    valid: bool
    failed_reads: int = 0
    stale_reads: int = 0
    garbage_reads: int = 0
    filter_violations: int = 0
    lost_writes: int = 0
    resurrected_deletes: int = 0
    divergence: int = 0
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    recall: float | None = None
    ops: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    unknown: bool = False
    stall: Stall | None = None
    """Set when the migration stopped making progress (see `liveness`)."""
    unjudged_filtered_hits: int = 0

    @property
    def stalled(self) -> bool:
        return self.stall is not None

    def counts(self) -> dict[str, int]:
        return {name: int(getattr(self, name)) for name in ANOMALIES}

    def to_json(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            **self.counts(),
            "unknown": self.unknown,
            "stalled": self.stalled,
            "stall": None if self.stall is None else self.stall.to_json(),
            "unjudged_filtered_hits": self.unjudged_filtered_hits,
            "recall": self.recall,
            "ops": dict(self.ops),
            "examples": {kind: list(found) for kind, found in self.examples.items()},
            "notes": list(self.notes),
        }


def check(
    events: Iterable[Event], *, lines: Sequence[int] | None = None, source: str = "history"
) -> Verdict:
    """Judge a history. `lines[i]` is the file line of the i-th event, for error messages
    (without it, an event's line is its 1-based position). Raises `MalformedHistory`."""
    with gc_paused():
        history = events if isinstance(events, list) else list(events)
        if lines is not None and len(lines) != len(history):
            raise ValueError(f"got {len(lines)} line numbers for {len(history)} events")
        widened = widen(history, lines, source)
        if widened is None:
            judge = _Judge(history, lines, source)
            judge.run()
            return judge.verdict()
        history, lines, processes = widened
        judge = _Judge(history, lines, source)
        judge.notes.append(
            f"times carry clock-error bounds (up to {max(e.error for e in history) / 1e6:g} ms): "
            "ops that overlap within their bounds are judged concurrent, and the times in "
            "examples are the widened ones"
        )
        judge.run()
        for examples in judge.examples.values():
            for example in examples:
                if "process" in example:
                    example["process"] = processes.get(example["process"], example["process"])
        return judge.verdict()


def check_safely(
    events: Iterable[Event], *, lines: Sequence[int] | None = None, source: str = "history"
) -> Verdict:
    """Like `check`, but a checker that crashes says "unknown", never "valid".

    Malformed input still raises `MalformedHistory`: that is the input's fault, not ours.
    """
    try:
        return check(events, lines=lines, source=source)
    except MalformedHistory:
        raise
    except Exception as exc:  # noqa: BLE001 - any crash must become an unknown verdict
        return Verdict(
            valid=False,
            unknown=True,
            notes=[f"the checker crashed, so the verdict is unknown: {type(exc).__name__}: {exc}"],
        )


def fields_match(fields: Fields, wanted: tuple[tuple[str, Any], ...]) -> bool:
    """Whether a version's fields satisfy a filter, given as its items: every field equal, a
    missing field equal to nothing. The semantics of `harness.clusters.base.matches`, which
    every cluster applies; here on the filter's items, computed once per search."""
    return all(fields.get(key) == want for key, want in wanted)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building millions of small acyclic objects
    (events, tuples): otherwise it rescans them again and again, which halves the speed."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def time_order(history: Sequence[Event]) -> list[int] | None:
    """Positions of the events in (time, index) order, or None if they are in order already."""
    previous = (-(2**63), -(2**63))
    for event in history:
        key = (event.time, event.index)
        if key < previous:
            break
        previous = key
    else:
        return None
    return sorted(range(len(history)), key=lambda p: (history[p].time, history[p].index))


def widen(
    history: Sequence[Event], lines: Sequence[int] | None, source: str
) -> tuple[list[Event], list[int], dict[int | str, int | str]] | None:
    """A history some of whose events carry clock-error bounds, widened for the pass: each
    invoke `error` earlier, every other event `error` later, in (time, index) order, with the
    file line of each event and each client op on a process of its own (two ops of one
    process may overlap once widened; they ran one after the other on one clock, which the
    checks here make sure of first). Returns (events, lines, {new process: the original}),
    or None when every bound is 0 (the history is judged as it is)."""
    if not any(e.error for e in history):
        return None
    line_of = (lambda p: lines[p]) if lines is not None else (lambda p: p + 1)
    order = time_order(history) or range(len(history))
    open_op: dict[int | str, Event] = {}
    crashed: set[int | str] = set()
    processes: dict[int | str, int | str] = {}
    renamed: dict[int | str, int | str] = {}
    widened: list[tuple[int, int, int, Event]] = []
    for pos in order:
        e = history[pos]
        process = e.process
        if e.f in CLIENT_FS:
            if e.type == "invoke":
                if process in open_op or process in crashed:
                    why = "is still open" if process in open_op else "got info"
                    raise MalformedHistory(
                        line_of(pos),
                        f"process {process!r} invokes {e.f} while an earlier op of it {why}",
                        source,
                    )
                open_op[process] = e
                renamed[process] = f"{process}~{e.index}"
                processes[renamed[process]] = process
            elif open_op.pop(process, None) is None:
                raise MalformedHistory(
                    line_of(pos),
                    f"{e.type} {e.f} on process {process!r} has no open invoke",
                    source,
                )
            elif e.type == "info":
                crashed.add(process)
            process = renamed.get(process, process)
        shift = -e.error if e.type == "invoke" and e.f in CLIENT_FS else e.error
        moved = Event(e.index, process, e.type, e.f, e.value, e.time + shift, e.error)
        widened.append((moved.time, e.index, pos, moved))
    widened.sort(key=lambda t: (t[0], t[1]))
    return [t[3] for t in widened], [line_of(t[2]) for t in widened], processes


# An op in flight on a process: (seq of its invoke, position, the invoke event, id, version).
_Open = tuple[int, int, Event, str | None, Version | None]


class _Judge:
    """The state of one pass. `seq` is an event's rank in (time, index) order, `pos` its
    position in the input (which names its line)."""

    def __init__(self, history: list[Event], lines: Sequence[int] | None, source: str) -> None:
        self.history = history
        self.lines = lines
        self.source = source
        self.max_up: dict[str, Version] = {}
        self.max_del: dict[str, Version] = {}
        # id -> [(seq, max_up, max_del) after each change], in seq order.
        self.changes: dict[str, list[tuple[int, Version | None, Version | None]]] = {}
        # id -> max_up while it is newer than max_del: the version a fresh read returns.
        self.live: dict[str, Version] = {}
        self.del_invoked: dict[str, Version] = {}
        self.del_indeterminate: dict[str, Version] = {}
        # (id, version) -> the fields its load or upsert carried; None if unknown (no fields
        # recorded, or two writes of that version recorded different ones). The dicts are the
        # events' own, so fields cost the checker a reference per version, not a copy.
        self.carried: dict[tuple[str, Version], Fields | None] = {}
        self.conflicting: set[tuple[str, Version]] = set()
        # Filtered hits of a version not carried yet: judged at the end (or garbage).
        self.filtered_later: list[tuple[str, Version, Fields, int, int]] = []
        self.unjudged_filtered_hits = 0
        self.open: dict[int | str, _Open] = {}
        self.crashed: dict[int | str, int] = {}  # process -> pos of its info
        self.counts: dict[str, int] = dict.fromkeys(ANOMALIES, 0)
        self.examples: dict[str, list[dict[str, Any]]] = {}
        self.garbage_candidates: list[tuple[str, Version, int, int]] = []  # id, v, iseq, seq
        self.ops: dict[str, int] = {}
        self.notes: list[str] = []
        self.unknown = False
        self.recall_sum = 0.0
        self.recall_n = 0
        self.phase: str | None = None
        self.faults: dict[str, int] = {}
        self.finals: dict[str, Mapping[str, Version]] = {}
        self.order: Sequence[int] = range(len(history))
        self.progress = Progress()
        self.stall: Stall | None = None
        self.clocks_unchecked: set[str] = set()  # clocks set at the start, not checked at the end

    # -- errors and examples -----------------------------------------------------------------

    def bad(self, pos: int, problem: str) -> MalformedHistory:
        return MalformedHistory(self.line(pos), problem, self.source)

    def line(self, pos: int) -> int:
        return self.lines[pos] if self.lines is not None else pos + 1

    def found(self, kind: str, example: dict[str, Any], *, live: bool = True) -> None:
        """Count one anomaly; keep the first examples, with the phase and faults of the moment
        when found during the pass (`live`)."""
        self.counts[kind] += 1
        shown = self.examples.setdefault(kind, [])
        if len(shown) < MAX_EXAMPLES:
            if live:
                example["phase"] = self.phase
                example["faults"] = sorted(f for f, n in self.faults.items() if n > 0)
            shown.append(example)

    def read_example(self, iseq: int, seq: int, **what: Any) -> dict[str, Any]:
        invoke = self.history[self.order[iseq]]
        done = self.history[self.order[seq]]
        return {
            "f": invoke.f,
            **what,
            "process": invoke.process,
            "invoke_index": invoke.index,
            "complete_index": done.index,
            "invoke_time": invoke.time,
            "complete_time": done.time,
        }

    # -- the pass ----------------------------------------------------------------------------

    def run(self) -> None:
        order = time_order(self.history)
        if order is not None:
            self.order = order
            self.notes.append("events were not in (time, index) order; the checker sorted them")
        history, invoke, complete, other = self.history, self.invoke, self.complete, self.other
        for seq, pos in enumerate(self.order):
            event = history[pos]
            if event.f not in CLIENT_FS:
                other(seq, pos, event)
            elif event.type == "invoke":
                invoke(seq, pos, event)
            else:
                complete(seq, pos, event)
        self.finish()

    def invoke(self, seq: int, pos: int, event: Event) -> None:
        process, f, value = event.process, event.f, event.value
        if process in self.open:
            _, other_pos, other, _, _ = self.open[process]
            raise self.bad(
                pos,
                f"process {process!r} invokes {f} while its {other.f} invoked at line "
                f"{self.line(other_pos)} is still open; a process runs one op at a time, "
                "so complete that op (ok, fail or info) first",
            )
        if process in self.crashed:
            raise self.bad(
                pos,
                f"process {process!r} invokes {f} after it got info at line "
                f"{self.line(self.crashed[process])}; a process that got info never invokes "
                "again: give the next op a new process number",
            )
        self.ops[f] = self.ops.get(f, 0) + 1
        id_: str | None = None
        version: Version | None = None
        if f in {"upsert", "delete"}:
            id_, version = self.id_version(pos, event)
            if f == "upsert":
                fields = value.get("fields")
                if fields is not None and type(fields) is not dict:
                    raise self.bad(
                        pos,
                        'upsert "fields" must be an object (the record\'s metadata, as filters '
                        f"see it), got {fields!r}",
                    )
                if self.carried.setdefault((id_, version), fields) is not fields:
                    self.carry_again(id_, version, fields)
            else:
                invoked = self.del_invoked.get(id_)
                if invoked is None or version > invoked:
                    self.del_invoked[id_] = version
        elif f == "get":
            if not isinstance(value, dict) or type(value.get("id")) is not str:
                raise self.bad(pos, f'get invoke value must be {{"id": str}}, got {value!r}')
            id_ = value["id"]
        elif not isinstance(value, dict) or "k" not in value:
            raise self.bad(
                pos, f'search invoke value must hold "k" (and maybe "filter"), got {value!r}'
            )
        elif (filter := value.get("filter")) is not None and type(filter) is not dict:
            raise self.bad(
                pos,
                'a search "filter" is an object of field: value (every field must equal its '
                f"value), got {value['filter']!r}",
            )
        self.open[process] = (seq, pos, event, id_, version)

    def carry_again(self, id_: str, version: Version, fields: Fields | None) -> None:
        """A load or upsert carried `(id_, version)` again (the first carry is a `setdefault`
        on `carried`, inline where it happens), with `fields`."""
        key = (id_, version)
        known = self.carried[key]
        if known is None and key not in self.conflicting:
            learned = fields  # an earlier write of that version recorded no fields
        elif fields is not None and known is not None and fields != known:
            learned = None  # two writes recorded different fields: which are right is unknown
            self.conflicting.add(key)
        else:
            return
        self.carried[key] = learned

    def id_version(self, pos: int, event: Event) -> tuple[str, Version]:
        value = event.value
        if not isinstance(value, dict) or "id" not in value or "version" not in value:
            raise self.bad(
                pos, f'{event.f} invoke value must be {{"id", "version"}}, got {value!r}'
            )
        id_, version = value["id"], value["version"]
        if type(id_) is not str:
            raise self.bad(
                pos,
                f"{event.f} id must be a string (records maps key ids as JSON strings), "
                f"got {id_!r}",
            )
        if type(version) not in _NUMBER or version != version:  # noqa: PLR0124 - NaN, fast
            raise self.bad(pos, f"{event.f} version must be a number, got {version!r}")
        return id_, version

    def complete(self, seq: int, pos: int, event: Event) -> None:
        process, f, type_ = event.process, event.f, event.type
        opened = self.open.pop(process, None)
        if opened is None:
            why = (
                f" (it already got info at line {self.line(self.crashed[process])})"
                if process in self.crashed
                else ""
            )
            raise self.bad(
                pos,
                f"{type_} {f} on process {process!r} has no open invoke{why}; every completion "
                "follows its own invoke on the same process",
            )
        iseq, ipos, invoke, id_, version = opened
        if invoke.f != f:
            raise self.bad(
                pos,
                f"{type_} {f} on process {process!r} completes a {invoke.f} invoked at line "
                f"{self.line(ipos)}; a completion's f must match its invoke's",
            )
        if type_ == "info":
            self.crashed[process] = pos
        if f in {"upsert", "delete"}:
            assert id_ is not None and version is not None
            if type_ == "ok":
                self.acknowledge(seq, id_, version, f == "upsert")
            elif type_ == "info" and f == "delete":
                known = self.del_indeterminate.get(id_)
                if known is None or version > known:
                    self.del_indeterminate[id_] = version
            return
        if type_ != "ok":
            where = {"id": id_} if f == "get" else {}
            example = self.read_example(iseq, seq, **where, type=type_, error=event.value)
            self.found("failed_reads", example)
            return
        value = event.value
        if f == "get":
            self.judge_get(iseq, seq, pos, id_, value)
        else:
            self.judge_search(iseq, seq, pos, value, invoke.value.get("filter"))

    def acknowledge(self, seq: int, id_: str, version: Version, upsert: bool) -> None:
        newest = self.max_up if upsert else self.max_del
        known = newest.get(id_)
        if known is not None and version <= known:
            return
        newest[id_] = version
        up, dl = self.max_up.get(id_), self.max_del.get(id_)
        if up is not None and (dl is None or up > dl):
            self.live[id_] = up
        else:
            self.live.pop(id_, None)
        entry = (seq, up, dl)
        log = self.changes.get(id_)
        if log is None:
            self.changes[id_] = [entry]
        else:
            log.append(entry)

    def state_at(self, id_: str, seq: int) -> tuple[Version | None, Version | None]:
        """(max_up, max_del) of `id_` as of just before the event at `seq`."""
        log = self.changes.get(id_)
        if not log:
            return None, None
        if log[-1][0] < seq:
            return log[-1][1], log[-1][2]
        at = bisect.bisect_left(log, (seq,)) - 1
        return (log[at][1], log[at][2]) if at >= 0 else (None, None)

    def judge_get(self, iseq: int, seq: int, pos: int, id_: str | None, value: Any) -> None:
        assert id_ is not None
        if not isinstance(value, dict) or "version" not in value:
            raise self.bad(pos, f'get ok value must be {{"id", "version"}}, got {value!r}')
        if "id" in value and value["id"] != id_:
            raise self.bad(
                pos, f"get ok answers id {value['id']!r}, but the invoke asked for {id_!r}"
            )
        version = value["version"]
        if version is None:
            up, dl = self.state_at(id_, iseq)
            if up is None or (dl is not None and dl >= up):
                return
            invoked = self.del_invoked.get(id_)
            if invoked is not None and invoked >= up:
                # A delete at or above the upsert was in flight: it may explain this. At the
                # upsert's own version too: an acknowledged delete of that version hides it
                # (above), so one in flight may have.
                return
            example = self.read_example(
                iseq, seq, id=id_, returned=None, max_up=up, max_del=dl, why="not found"
            )
            self.found("stale_reads", example)
            return
        if type(version) not in _NUMBER:
            raise self.bad(pos, f"get ok version must be a number or null, got {version!r}")
        self.judge_returned(iseq, seq, id_, version)

    def judge_search(
        self, iseq: int, seq: int, pos: int, value: Any, filter: Fields | None
    ) -> None:
        results = value.get("results") if isinstance(value, dict) else None
        if not isinstance(results, list):
            raise self.bad(
                pos,
                f'search ok value must hold "results": [[id, version, score], ...], got {value!r}',
            )
        live_of, up_of, del_of = self.live.get, self.max_up.get, self.max_del.get
        carried = self.carried
        for entry in results:
            try:
                id_, version = entry[0], entry[1]
            except (TypeError, IndexError, KeyError):
                id_ = version = None
            if type(id_) is not str or type(version) not in _NUMBER:
                raise self.bad(
                    pos, f"a search result must be [id: str, version: number, score], got {entry!r}"
                )
            # The hot path, inlined: judge against the current state first. It only grows, so
            # a version fresh now was fresh at the invoke, and the current max_up was carried.
            if live_of(id_) == version:
                continue
            up = up_of(id_)
            dl = del_of(id_)
            if (up is not None and up > version) or (dl is not None and dl >= version):
                self.judge_returned(iseq, seq, id_, version)
            elif version != up and (id_, version) not in carried:
                self.garbage_candidates.append((id_, version, iseq, seq))
        if filter:
            self.judge_filtered(iseq, seq, results, filter)
        exact = value.get("exact")
        if exact is not None:
            if not isinstance(exact, list):
                raise self.bad(pos, f'search "exact" must be a list of ids, got {exact!r}')
            if exact:
                wanted = set(exact)
                hits = wanted.intersection([entry[0] for entry in results])
                self.recall_sum += len(hits) / len(wanted)
                self.recall_n += 1

    def judge_filtered(self, iseq: int, seq: int, results: list[Any], filter: Fields) -> None:
        """Judge each hit of a filtered search against the fields of the version it returned.

        Apart from staleness: a fresh version that does not match is a wrong result, and a
        stale version that matched when it was written is no filter violation."""
        wanted = tuple(filter.items())
        carried = self.carried
        unjudged = 0
        for entry in results:
            id_, version = entry[0], entry[1]
            fields = carried.get((id_, version), _UNCARRIED)
            if fields is _UNCARRIED:
                self.filtered_later.append((id_, version, filter, iseq, seq))
            elif fields is None:
                unjudged += 1
            elif not fields_match(fields, wanted):
                self.found_filter_violation(iseq, seq, id_, version, filter, fields, live=True)
        self.unjudged_filtered_hits += unjudged

    def found_filter_violation(
        self,
        iseq: int,
        seq: int,
        id_: str,
        version: Version,
        filter: Fields,
        fields: Fields,
        *,
        live: bool,
    ) -> None:
        example = self.read_example(
            iseq, seq, id=id_, returned=version, filter=dict(filter), fields=dict(fields)
        )
        self.found("filter_violations", example, live=live)

    def judge_returned(self, iseq: int, seq: int, id_: str, version: Version) -> None:
        """Judge one returned (id, version): stale against the state at the read's invoke,
        garbage (later) if no write carried it."""
        if self.live.get(id_) == version:
            return
        up, dl = self.max_up.get(id_), self.max_del.get(id_)
        if (up is not None and up > version) or (dl is not None and dl >= version):
            up, dl = self.state_at(id_, iseq)
            if (up is not None and up > version) or (dl is not None and dl >= version):
                example = self.read_example(
                    iseq,
                    seq,
                    id=id_,
                    returned=version,
                    max_up=up,
                    max_del=dl,
                    why="a newer upsert" if up is not None and up > version else "a delete",
                )
                self.found("stale_reads", example)
        elif version == up:
            return  # fresh, and carried by the upsert that set max_up
        if (id_, version) not in self.carried:
            self.garbage_candidates.append((id_, version, iseq, seq))

    # -- load, phase, fault, final -----------------------------------------------------------

    def other(self, seq: int, pos: int, event: Event) -> None:
        f = event.f
        expected = "info" if f in ("phase", "fault", "plan", "gate", "clock") else "ok"
        if event.type != expected:
            raise self.bad(pos, f"a {f} event has type {expected!r}, got {event.type!r}")
        handle = {
            "load": self.on_load,
            "phase": self.on_phase,
            "plan": self.on_plan,
            "gate": self.on_gate,
            "fault": self.on_fault,
            "final": self.on_final,
            "clock": self.on_clock,
        }[f]
        handle(seq, pos, event)

    def on_load(self, seq: int, pos: int, event: Event) -> None:
        records = self.records(pos, event)
        fields = self.load_fields(pos, event)
        carried = self.carried
        for id_, version in records.items():
            known = fields.get(id_)
            if carried.setdefault((id_, version), known) is not known:
                self.carry_again(id_, version, known)
            self.acknowledge(seq, id_, version, True)

    def on_phase(self, seq: int, pos: int, event: Event) -> None:
        value = event.value
        name = value.get("phase") if isinstance(value, dict) else None
        if name not in PHASES:
            raise self.bad(pos, f"phase must be one of {', '.join(PHASES)}, got {value!r}")
        self.phase = name
        self.progress.phase_published(event.time, name)

    def on_plan(self, seq: int, pos: int, event: Event) -> None:
        value = event.value
        steps = value.get("steps") if isinstance(value, dict) else None
        if not isinstance(steps, list):
            raise self.bad(pos, f'a plan value holds "steps": [step, ...], got {value!r}')
        self.progress.plan(event.time, value)

    def on_gate(self, seq: int, pos: int, event: Event) -> None:
        value = event.value
        if not isinstance(value, dict) or not isinstance(value.get("reasons", []), list):
            raise self.bad(pos, f'a gate value holds {{"target", "reasons": [...]}}, got {value!r}')
        self.progress.gate(event.time, value)

    def on_fault(self, seq: int, pos: int, event: Event) -> None:
        value = event.value
        if (
            not isinstance(value, dict)
            or type(value.get("family")) is not str
            or value.get("action") not in ("start", "stop")
        ):
            raise self.bad(
                pos,
                f'a fault value holds {{"family": str, "action": "start"|"stop"}}, got {value!r}',
            )
        family = value["family"]
        self.faults[family] = self.faults.get(family, 0) + (1 if value["action"] == "start" else -1)

    def on_clock(self, seq: int, pos: int, event: Event) -> None:
        value = event.value
        bound, drift = (
            value.get(k) if isinstance(value, dict) else None for k in ("error_ns", "drift_ns")
        )
        if (
            not isinstance(value, dict)
            or type(value.get("clock")) is not str
            or type(bound) is not int
        ):
            raise self.bad(
                pos, f'a clock value holds {{"clock": name, "error_ns": int, ...}}, got {value!r}'
            )
        if drift is None:
            self.clocks_unchecked.add(value["clock"])
            return
        self.clocks_unchecked.discard(value["clock"])
        if type(drift) is not int:
            raise self.bad(pos, f"a clock's drift_ns is an integer, got {drift!r}")
        if abs(drift) > bound:
            self.unknown = True
            self.notes.append(
                f"clock {value['clock']} moved {drift / 1e6:g} ms from the offset it used, beyond "
                f"its bound of {bound / 1e6:g} ms: the times it gave cannot be ordered against "
                "other clocks' within their bounds, so this history cannot be judged"
            )

    def finish_clocks(self) -> None:
        if self.clocks_unchecked:
            self.unknown = True
            self.notes.append(
                f"clock(s) {', '.join(sorted(self.clocks_unchecked))} were set at the start but "
                "never checked at the end: whether they stayed within their bounds is unknown, "
                "so this history cannot be judged"
            )

    def on_final(self, seq: int, pos: int, event: Event) -> None:
        value = event.value
        side = value.get("side") if isinstance(value, dict) else None
        if side not in SIDES:
            raise self.bad(pos, f'a final names its side, "old" or "new", got {side!r}')
        if side in self.finals:
            self.notes.append(f"more than one final of side {side!r}; the last one counts")
        self.finals[side] = self.records(pos, event)

    def records(self, pos: int, event: Event) -> Mapping[str, Version]:
        value = event.value
        records = value.get("records") if isinstance(value, dict) else None
        if not isinstance(records, dict):
            raise self.bad(
                pos, f'a {event.f} value holds "records": {{id: version}}, got {value!r}'
            )
        for id_, version in records.items():
            bad_version = type(version) not in _NUMBER or version != version  # noqa: PLR0124 - NaN
            if type(id_) is not str or bad_version:
                raise self.bad(
                    pos,
                    f"{event.f} records map string ids to numeric versions, "
                    f"got {id_!r}: {version!r}",
                )
        return records

    def load_fields(self, pos: int, event: Event) -> Mapping[str, Fields]:
        """The optional `"fields": {id: {...}}` of a load: each loaded record's metadata."""
        fields = event.value.get("fields")
        if fields is None:
            return {}
        if isinstance(fields, dict) and all(type(f) is dict for f in fields.values()):
            return fields
        raise self.bad(
            pos,
            "a load's \"fields\" maps ids to their record's metadata, {id: {field: value}}, "
            f"got {fields!r:.200}",
        )

    # -- the end of the run ------------------------------------------------------------------

    def finish(self) -> None:
        self.finish_clocks()
        if self.order:
            self.stall = self.progress.finish(self.history[self.order[-1]].time)
        open_reads = 0
        for _, _, invoke, id_, version in self.open.values():
            if invoke.f == "delete":
                assert id_ is not None and version is not None
                known = self.del_indeterminate.get(id_)
                if known is None or version > known:
                    self.del_indeterminate[id_] = version
            elif invoke.f in ("get", "search"):
                open_reads += 1
        if open_reads:
            self.notes.append(f"{open_reads} read(s) never completed; not counted as failed")
        for id_, version, iseq, seq in self.garbage_candidates:
            if (id_, version) not in self.carried:
                example = self.read_example(iseq, seq, id=id_, returned=version)
                self.found("garbage_reads", example, live=False)
        self.judge_filtered_later()
        serving = "new" if self.phase in NEW_SERVES else "old"
        final = self.finals.get(serving)
        if final is None:
            self.unknown = True
            self.notes.append(
                f"no final state of side {serving!r} (the side serving reads after phase "
                f"{self.phase or 'OLD_ONLY'}): lost writes and resurrected deletes cannot be "
                "judged; record a final scan of that side at the end of the run"
            )
        else:
            self.judge_final(serving, final)
        if len(self.finals) == 2:
            if self.phase in BOTH_CURRENT:
                self.judge_divergence()
            else:
                self.notes.append(
                    f"divergence not judged: the run ended in {self.phase or 'OLD_ONLY'}, where "
                    "old and new are not both meant to be current"
                )

    def judge_filtered_later(self) -> None:
        """Filtered hits of a version carried only later in the history (a version nothing
        carried is a garbage read, not judged again here); then say what went unjudged."""
        for id_, version, filter, iseq, seq in self.filtered_later:
            fields = self.carried.get((id_, version), _UNCARRIED)
            if fields is None:
                self.unjudged_filtered_hits += 1
            elif fields is not _UNCARRIED and not fields_match(fields, tuple(filter.items())):
                self.found_filter_violation(iseq, seq, id_, version, filter, fields, live=False)
        if self.unjudged_filtered_hits:
            self.notes.append(
                f"{self.unjudged_filtered_hits} hit(s) of filtered searches not judged against "
                "their filter: no write recorded the fields of the version returned (record "
                '"fields" in upsert invokes and the load to judge them)'
            )
        if self.conflicting:
            self.notes.append(
                f"{len(self.conflicting)} (id, version) pair(s) were carried by writes that "
                "recorded different fields; their fields are unknown"
            )

    def judge_final(self, side: str, final: Mapping[str, Version]) -> None:
        max_up, max_del = self.max_up, self.max_del
        # Dict order, not set order, so that the examples are the same on every run.
        ids = [*max_up, *(id_ for id_ in max_del if id_ not in max_up)]
        for id_ in ids:
            up = max_up.get(id_)
            dl = max_del.get(id_)
            held = final.get(id_)
            if dl is None or (up is not None and up > dl):
                assert up is not None
                if held is not None and held >= up:
                    continue
                if held is None:
                    maybe = self.del_indeterminate.get(id_)
                    if maybe is not None and maybe >= up:
                        continue  # an indeterminate delete at or above may have taken effect
                example = {"id": id_, "acknowledged_upsert": up, "final": held, "side": side}
                self.found("lost_writes", self.with_ack("lost_writes", example, id_, 1), live=False)
            elif held is not None and held <= dl:
                example = {"id": id_, "acknowledged_delete": dl, "final": held, "side": side}
                kind = "resurrected_deletes"
                self.found(kind, self.with_ack(kind, example, id_, 2), live=False)

    def with_ack(self, kind: str, example: dict[str, Any], id_: str, field: int) -> dict[str, Any]:
        """Name the event that acknowledged the newest op (`field` 1 of the change log for an
        upsert, 2 for a delete); only for the examples kept, since it walks the id's log."""
        if len(self.examples.get(kind, ())) >= MAX_EXAMPLES:
            return example
        log = self.changes[id_]
        newest = log[-1][field]
        seq = next(entry[0] for entry in log if entry[field] == newest)
        event = self.history[self.order[seq]]
        example.update(acked_by=event.f, process=event.process, index=event.index, time=event.time)
        return example

    def judge_divergence(self) -> None:
        old, new = self.finals["old"], self.finals["new"]
        for id_ in [*old, *(id_ for id_ in new if id_ not in old)]:
            if old.get(id_) != new.get(id_):
                self.found(
                    "divergence",
                    {"id": id_, "old": old.get(id_), "new": new.get(id_)},
                    live=False,
                )

    def verdict(self) -> Verdict:
        counts = self.counts
        return Verdict(
            valid=not self.unknown and not any(counts.values()) and self.stall is None,
            **counts,
            examples=self.examples,
            recall=self.recall_sum / self.recall_n if self.recall_n else None,
            ops=self.ops,
            notes=self.notes,
            unknown=self.unknown,
            stall=self.stall,
            unjudged_filtered_hits=self.unjudged_filtered_hits,
        )
