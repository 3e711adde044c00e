"""What the core's operations ask the world to do, and how an operation looks to a driver.

Every operation of the migration (a client write, a read, a backfill batch, a repair, a
mirrored read, a verification pass) is a generator: it yields one request at a time, is sent
the result, or has the side's error (`Unavailable`, `Timeout`, `InvalidRequest`) thrown into
it, and finally returns its `Outcome`. Drivers decide when and how each request is carried out
-- in simulated time, over HTTP, or one step at a time chosen by a test -- and so decide how
operations interleave. Nothing in the core performs the request itself.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from vecmig.harness.clusters.base import Filter, Record, Side, Tombstone, Vector
from vecmig.harness.core.phases import Phase
from vecmig.harness.core.state import Checkpoint, RecentWrite, RepairEntry

# -- requests to a side (carried out through the ClusterPort) ---------------------------------


@dataclass(frozen=True, slots=True)
class Upsert:
    side: Side
    records: tuple[Record, ...]
    fenced: bool = True


@dataclass(frozen=True, slots=True)
class Delete:
    side: Side
    tombstones: tuple[Tombstone, ...]
    fenced: bool = True


@dataclass(frozen=True, slots=True)
class Get:
    side: Side
    ids: tuple[str, ...]


@dataclass(frozen=True, slots=True, eq=False)
class Search:
    side: Side
    vector: Vector
    k: int
    filter: Filter | None = None


@dataclass(frozen=True, slots=True)
class Scan:
    side: Side
    cursor: str | None
    limit: int


@dataclass(frozen=True, slots=True)
class Checksums:
    side: Side
    buckets: int


@dataclass(frozen=True, slots=True)
class Count:
    side: Side


SideRequest = Upsert | Delete | Get | Search | Scan | Checksums | Count

# -- requests to the durable migration state (carried out through the StateStore) ------------


@dataclass(frozen=True, slots=True)
class AddRepairs:
    entries: tuple[RepairEntry, ...]


@dataclass(frozen=True, slots=True)
class AddIntent:
    """Note a write about to reach `side` second (see `StateStore.add_intent`). Answer: the
    intent's number, for `ClearIntent`."""

    id: str
    side: Side
    hold_until: int


@dataclass(frozen=True, slots=True)
class ClearIntent:
    intent: int


@dataclass(frozen=True, slots=True)
class NextRepairs:
    """The oldest pending repairs, at most `limit`, then the intents whose hold ran out by
    `now` (None: every intent)."""

    limit: int
    now: int | None = None


@dataclass(frozen=True, slots=True)
class PendingFor:
    """Which of these (id, side) pairs have a repair pending. Answer: a mapping of each such
    pair to whether its entry is indeterminate (see `RepairEntry`)."""

    keys: tuple[tuple[str, Side], ...]


@dataclass(frozen=True, slots=True)
class RepairBacklog:
    """How many repairs are pending, with the intents whose hold ran out by `now` (None:
    every intent). Answer: an int."""

    now: int | None = None


@dataclass(frozen=True, slots=True)
class RemoveRepairs:
    entries: tuple[RepairEntry, ...]


@dataclass(frozen=True, slots=True)
class LoadCheckpoint:
    """The backfill checkpoint. Answer: a `Checkpoint`."""


@dataclass(frozen=True, slots=True)
class SaveCheckpoint:
    checkpoint: Checkpoint


@dataclass(frozen=True, slots=True)
class NoteRecent:
    """Remember writes to a side whose searches lag (see `freshness`)."""

    side: Side
    writes: tuple[RecentWrite, ...]


@dataclass(frozen=True, slots=True)
class RecentSince:
    """Writes noted for `side` at or after `since` (ns). Answer: a tuple of `RecentWrite`."""

    side: Side
    since: int


@dataclass(frozen=True, slots=True)
class AnnouncePhase:
    """Make a newly published phase durable and known: the driver saves it in the store,
    records a `phase` event in the history and hands it to the config store."""

    phase: Phase
    epoch: int
    step: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RecordEvent:
    """Record one of the controller's own events in the history (process "controller", type
    info): its `plan` when it starts walking one, and each `gate` refusal, so that the checker
    can judge whether the migration kept making progress (see `controller`)."""

    f: str
    value: Mapping[str, Any]


StateRequest = (
    AddRepairs
    | AddIntent
    | ClearIntent
    | NextRepairs
    | PendingFor
    | RepairBacklog
    | RemoveRepairs
    | LoadCheckpoint
    | SaveCheckpoint
    | NoteRecent
    | RecentSince
    | AnnouncePhase
    | RecordEvent
)

# -- requests to the driver itself -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Now:
    """The driver's current time in nanoseconds. Answer: an int."""


@dataclass(frozen=True, slots=True)
class Sleep:
    """Let `ns` nanoseconds pass before resuming. Answer: None."""

    ns: int


@dataclass(frozen=True, slots=True, eq=False)
class Exact:
    """The exact top-k ids for a query, if the driver knows the ground truth. Answer: a tuple
    of ids, or None when it does not."""

    side: Side
    vector: Vector
    k: int
    filter: Filter | None = None


DriverRequest = Now | Sleep | Exact

Request = SideRequest | StateRequest | DriverRequest

# -- operations --------------------------------------------------------------------------------

OutcomeType = Literal["ok", "fail", "info"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an operation ended. `value` is what the history records on completion."""

    type: OutcomeType
    value: Any = None
    error: str | None = None
    notes: Mapping[str, Any] = field(default_factory=dict)
    """Side facts a driver may count (e.g. {"fallback": "old"}, {"repairs_queued": 1})."""


T = TypeVar("T")
Sub = Generator[Request, Any, T]
"""A piece of an operation, used with `yield from`, that returns a T."""
Steps = Sub[Outcome]


@dataclass(slots=True)
class Operation:
    """A named generator of requests, plus what the history records when it is invoked.

    `f` is the history's op name for client operations (upsert, delete, get, search) and None
    for background work (backfill, repair, mirror, verify), which the history does not record.
    """

    f: str | None
    invoke_value: Any
    steps: Steps
    kind: str = ""

    def __post_init__(self) -> None:
        if not self.kind:
            self.kind = self.f or "background"


def is_side_request(request: object) -> bool:
    return isinstance(request, Upsert | Delete | Get | Search | Scan | Checksums | Count)


def side_of(request: object) -> Side | None:
    return getattr(request, "side", None) if is_side_request(request) else None
