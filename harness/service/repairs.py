"""The service's state store: SQLite, with the repair log's pending keys also held in memory.

In SHADOW and CUTOVER every read asks whether a repair (or a write's intent) is pending for the
ids it returns (a get one id, a search its ten hits). SQLite stays the durable truth and every
change goes to it first; the maps in memory only answer that question without a query. That is
exact because the service is the only writer of its migration's repair log, and it calls the
store from the event loop thread alone (`LiveDriver` carries out state requests inline), so
nothing changes the tables between a write and the update of the maps.
"""

from __future__ import annotations

from collections import Counter
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
        repairs, intents = store.pending_entries()
        self._pending: dict[Key, bool] = {e.key: e.indeterminate for e in repairs}
        """(id, side) -> whether its repair is indeterminate."""
        self._intents: dict[int, tuple[Key, int]] = {
            intent: ((record_id, side), hold) for intent, (record_id, side, hold) in intents.items()
        }
        """intent -> ((id, side), hold_until)."""
        self._intent_keys: Counter[Key] = Counter(key for key, _ in self._intents.values())

    # -- the repair log, through the cache --------------------------------------------------------

    def add_repairs(self, entries: Sequence[RepairEntry]) -> None:
        self.store.add_repairs(entries)
        pending = self._pending
        for entry in entries:
            pending[entry.key] = entry.indeterminate and pending.get(entry.key, True)

    def add_intent(self, record_id: str, side: Side, hold_until: int) -> int:
        intent = self.store.add_intent(record_id, side, hold_until)
        self._intents[intent] = ((record_id, side), hold_until)
        self._intent_keys[(record_id, side)] += 1
        return intent

    def clear_intent(self, intent: int) -> None:
        self.store.clear_intent(intent)
        self._forget_intent(intent)

    def _forget_intent(self, intent: int) -> None:
        held = self._intents.pop(intent, None)
        if held is not None:
            self._intent_keys[held[0]] -= 1
            if not self._intent_keys[held[0]]:
                del self._intent_keys[held[0]]

    def remove_repairs(self, entries: Sequence[RepairEntry]) -> None:
        """The store removes an entry only if it was not queued again since it was read (its
        seq still matches); ask it which of these repairs are still pending."""
        self.store.remove_repairs(entries)
        keys = [e.key for e in entries if e.intent is None]
        still = self.store.repairs_for(keys)
        for key in keys:
            if key in still:
                self._pending[key] = still[key]
            else:
                self._pending.pop(key, None)
        for entry in entries:
            if entry.intent is not None:
                self._forget_intent(entry.intent)

    def pending_for(self, keys: Iterable[Key]) -> dict[Key, bool]:
        pending, intents = self._pending, self._intent_keys
        if not pending and not intents:
            return {}
        found: dict[Key, bool] = {}
        for key in keys:
            if key in pending:
                found[key] = pending[key]
            elif key in intents:
                found[key] = True
        return found

    def repair_backlog(self, now: int | None = None) -> int:
        if now is None:
            return len(self._pending) + len(self._intents)
        return len(self._pending) + sum(1 for _, hold in self._intents.values() if hold <= now)

    def repair_backlog_durable(self) -> int:
        """The backlog as the store itself counts it: a query, so a store that stopped
        answering (disk gone, file locked) says so."""
        return self.store.repair_backlog()

    def next_repairs(self, limit: int, now: int | None = None) -> list[RepairEntry]:
        return self.store.next_repairs(limit, now)

    # -- the rest, straight to the store -----------------------------------------------------------

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
