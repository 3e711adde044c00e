"""The service's state store: SQLite, with the repair log's pending keys also held in memory.

In SHADOW and CUTOVER every read asks whether a repair is pending for the ids it returns (a
get one id, a search its ten hits). SQLite stays the durable truth and every change goes to it
first; the set in memory only answers that question without a query. That is exact because the
service is the only writer of its migration's repair log, and it calls the store from the
event loop thread alone (`LiveDriver` carries out state requests inline), so nothing changes
the table between a write and the update of the set.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from vecmig.harness.clusters.base import Side
from vecmig.harness.core.phases import Phase
from vecmig.harness.core.state import Checkpoint, MigrationState, RecentWrite, RepairEntry
from vecmig.harness.state import SQLiteStore

Key = tuple[str, Side]


class CachedRepairLog:
    """A `StateStore`: `store` with `pending_for` and `repair_backlog` answered from memory."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        self._pending: set[Key] = set(store.pending_keys())

    # -- the repair log, through the cache --------------------------------------------------------

    def add_repairs(self, entries: Sequence[RepairEntry]) -> None:
        self.store.add_repairs(entries)
        self._pending.update(e.key for e in entries)

    def remove_repairs(self, entries: Sequence[RepairEntry]) -> None:
        """The store removes an entry only if it was not queued again since it was read (its
        seq still matches); ask it which of these keys are still pending."""
        self.store.remove_repairs(entries)
        keys = [e.key for e in entries]
        still = self.store.pending_for(keys)
        self._pending.difference_update(k for k in keys if k not in still)

    def pending_for(self, keys: Iterable[Key]) -> frozenset[Key]:
        pending = self._pending
        if not pending:
            return frozenset()
        return frozenset(k for k in keys if k in pending)

    def repair_backlog(self) -> int:
        return len(self._pending)

    def repair_backlog_durable(self) -> int:
        """The backlog as the store itself counts it: a query, so a store that stopped
        answering (disk gone, file locked) says so."""
        return self.store.repair_backlog()

    def next_repairs(self, limit: int) -> list[RepairEntry]:
        return self.store.next_repairs(limit)

    # -- the rest, straight to the store ------------------------------------------------------------

    def load(self) -> MigrationState:
        return self.store.load()

    def save_phase(self, phase: Phase, epoch: int) -> None:
        self.store.save_phase(phase, epoch)

    def load_checkpoint(self) -> Checkpoint:
        return self.store.load_checkpoint()

    def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        self.store.save_checkpoint(checkpoint)

    def note_recent(self, side: Side, writes: Sequence[RecentWrite]) -> None:
        self.store.note_recent(side, writes)

    def recent_since(self, side: Side, since: int) -> tuple[RecentWrite, ...]:
        return self.store.recent_since(side, since)
