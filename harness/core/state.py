"""The migration's durable state: phase, epoch, backfill checkpoint, repair log and the
recent-writes window, behind a small store interface.

A layer that is killed and restarted loads this and resumes exactly where it was. The core
only describes the state and the interface; `vecmig.harness.state` implements it in memory and in
SQLite (the embedded default).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from vecmig.harness.clusters.base import Metadata, Side, Vector
from vecmig.harness.core.phases import Phase


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """How far the backfill has copied: every id <= `cursor` is on new (fenced).

    `attempt` is the epoch at which the BACKFILL phase of this copy was published. A copy
    belongs to one attempt: after an ABORT and a new BACKFILL (a new epoch) the copy starts
    over, and a batch of the old attempt that lands late cannot move the new one's cursor."""

    cursor: str | None = None
    copied: int = 0
    done: bool = False
    attempt: int = -1


@dataclass(frozen=True, slots=True)
class RepairEntry:
    """`side` may be missing the latest state of `id`: copy it there from the other side.

    `seq` is set by the store each time the entry is (re)queued; removing an entry removes it
    only if it was not queued again since it was read, so no failure is forgotten.
    """

    id: str
    side: Side
    seq: int = 0
    indeterminate: bool = False
    """True when every write this entry covers ended indeterminate for its client (a timeout
    on the primary): then `side` may miss only a write nobody was told succeeded, and a read
    may answer from it alone. A write acknowledged while its copy to `side` failed queues a
    determinate entry; so do the verification diff and mirrored reads, which cannot tell."""
    intent: int | None = None
    """Set when the entry stands for an *intent* whose hold ran out (see `StateStore`): the
    write it covered may have died between its two sides. Removing the entry clears it."""

    @property
    def key(self) -> tuple[str, Side]:
        return (self.id, self.side)


@dataclass(frozen=True, slots=True, eq=False)
class RecentWrite:
    """A write to a side whose searches lag, kept to correct search results."""

    id: str
    version: int
    deleted: bool
    time: int
    vector: Vector | None = None
    metadata: Metadata = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MigrationState:
    phase: Phase = Phase.OLD_ONLY
    epoch: int = 0
    checkpoint: Checkpoint = Checkpoint()
    repair_backlog: int = 0


class StateStore(Protocol):
    """Where the migration keeps what must survive a crash of the layer."""

    def load(self) -> MigrationState: ...

    def save_phase(self, phase: Phase, epoch: int) -> None: ...

    def load_checkpoint(self) -> Checkpoint: ...

    def save_checkpoint(self, checkpoint: Checkpoint) -> None: ...

    def add_repairs(self, entries: Sequence[RepairEntry]) -> None:
        """Durably queue repairs. Queuing a key already pending queues it again (a new `seq`,
        so a repair already under way does not remove it); the entry stays indeterminate only
        if both were."""
        ...

    def add_intent(self, record_id: str, side: Side, hold_until: int) -> int:
        """Durably note that a write of `record_id` is about to reach `side` second, and
        return the intent's number. Its writer clears it once both sides have the write; an
        intent still there at `hold_until` (its writer died between the sides) becomes a
        repair due then. Intents are kept apart from repairs, one per write: clearing one
        never clears another write's, nor a repair of the same id."""
        ...

    def clear_intent(self, intent: int) -> None: ...

    def next_repairs(self, limit: int, now: int | None = None) -> list[RepairEntry]:
        """The oldest pending repairs, at most `limit`, then the intents whose hold ran out by
        `now` (None: every intent), as entries with `intent` set."""
        ...

    def pending_for(self, keys: Iterable[tuple[str, Side]]) -> Mapping[tuple[str, Side], bool]:
        """The keys among `keys` with a pending repair or intent, each mapped to whether it
        is indeterminate (see `RepairEntry`; an intent is)."""
        ...

    def remove_repairs(self, entries: Sequence[RepairEntry]) -> None: ...

    def repair_backlog(self, now: int | None = None) -> int:
        """How many repairs are pending, counting the intents whose hold ran out by `now`
        (None: every intent)."""
        ...

    def note_recent(self, side: Side, writes: Sequence[RecentWrite]) -> None: ...

    def recent_since(self, side: Side, since: int) -> tuple[RecentWrite, ...]:
        """Writes noted at or after `since`; older ones may be forgotten."""
        ...
