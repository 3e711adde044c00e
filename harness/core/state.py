"""The migration's durable state: phase, epoch, backfill checkpoint, repair log and the
recent-writes window, behind a small store interface.

A layer that is killed and restarted loads this and resumes exactly where it was. The core
only describes the state and the interface; `vecmig.harness.state` implements it in memory and in
SQLite (the embedded default).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from vecmig.harness.clusters.base import Metadata, Side, Vector
from vecmig.harness.core.phases import Phase


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """How far the backfill has copied: every id <= `cursor` is on new (fenced)."""

    cursor: str | None = None
    copied: int = 0
    done: bool = False


@dataclass(frozen=True, slots=True)
class RepairEntry:
    """`side` may be missing the latest state of `id`: copy it there from the other side.

    `seq` is set by the store each time the entry is (re)queued; removing an entry removes it
    only if it was not queued again since it was read, so no failure is forgotten.
    """

    id: str
    side: Side
    seq: int = 0

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
        """Durably queue repairs; queuing one already pending is a no-op."""
        ...

    def next_repairs(self, limit: int) -> list[RepairEntry]: ...

    def pending_for(self, keys: Iterable[tuple[str, Side]]) -> frozenset[tuple[str, Side]]: ...

    def remove_repairs(self, entries: Sequence[RepairEntry]) -> None: ...

    def repair_backlog(self) -> int: ...

    def note_recent(self, side: Side, writes: Sequence[RecentWrite]) -> None: ...

    def recent_since(self, side: Side, since: int) -> tuple[RecentWrite, ...]:
        """Writes noted at or after `since`; older ones may be forgotten."""
        ...
