"""The durable stores (`vecmig.harness.state`): both keep the repair log's rules alike."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from vecmig.harness.clusters.base import Side
from vecmig.harness.core.state import Checkpoint, RepairEntry, StateStore
from vecmig.harness.service.repairs import CachedRepairLog
from vecmig.harness.state import MemoryStore, SQLiteStore

Make = Callable[[], StateStore]


@pytest.fixture(params=["memory", "sqlite", "cached"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Make:
    """Every store: in memory, SQLite, and SQLite behind the service's cache of the log."""
    if request.param == "memory":
        return MemoryStore
    if request.param == "sqlite":
        return lambda: SQLiteStore(tmp_path / "state.db")
    return lambda: CachedRepairLog(SQLiteStore(tmp_path / "state.db"))


def test_queuing_a_key_again_gives_it_a_new_seq_and_an_old_removal_keeps_it(make: Make) -> None:
    store = make()
    store.add_repairs([RepairEntry("p1", Side.NEW)])
    (first,) = store.next_repairs(10)
    store.add_repairs([RepairEntry("p1", Side.NEW)])
    (again,) = store.next_repairs(10)
    assert again.seq > first.seq
    store.remove_repairs([first])
    assert store.pending_for([("p1", Side.NEW)]) == {("p1", Side.NEW): False}
    store.remove_repairs([again])
    assert store.pending_for([("p1", Side.NEW)]) == {}
    assert store.repair_backlog() == 0


@pytest.mark.parametrize(
    ("first", "second", "merged"),
    [(True, True, True), (True, False, False), (False, True, False), (False, False, False)],
)
def test_an_entry_stays_indeterminate_only_if_every_cause_was(
    make: Make, first: bool, second: bool, merged: bool
) -> None:
    store = make()
    store.add_repairs([RepairEntry("p1", Side.OLD, indeterminate=first)])
    store.add_repairs([RepairEntry("p1", Side.OLD, indeterminate=second)])
    assert store.pending_for([("p1", Side.OLD), ("p2", Side.OLD)]) == {("p1", Side.OLD): merged}
    assert store.next_repairs(10)[0].indeterminate is merged


def test_an_intent_is_pending_for_readers_but_due_for_the_worker_only_after_its_hold(
    make: Make,
) -> None:
    store = make()
    store.add_repairs([RepairEntry("due", Side.NEW)])
    intent = store.add_intent("held", Side.NEW, hold_until=1_000)
    assert store.pending_for([("held", Side.NEW)]) == {("held", Side.NEW): True}
    assert [e.id for e in store.next_repairs(10, now=999)] == ["due"]
    assert store.repair_backlog(999) == 1
    assert store.repair_backlog() == 2
    due = store.next_repairs(10, now=1_000)
    assert [(e.id, e.intent) for e in due] == [("due", None), ("held", intent)]
    assert store.repair_backlog(1_000) == 2
    store.remove_repairs(due)
    assert store.repair_backlog() == 0 and store.pending_for([("held", Side.NEW)]) == {}


def test_clearing_an_intent_leaves_other_writes_intents_and_repairs_of_the_id(make: Make) -> None:
    """Two writes of one id under way, and a repair of it queued meanwhile (a write timed
    out): each write clears only its own intent, and the repair stays determinate."""
    store = make()
    first = store.add_intent("p1", Side.OLD, hold_until=5_000)
    second = store.add_intent("p1", Side.OLD, hold_until=6_000)
    store.add_repairs([RepairEntry("p1", Side.OLD)])
    assert first != second
    store.clear_intent(first)
    assert store.pending_for([("p1", Side.OLD)]) == {("p1", Side.OLD): False}
    store.clear_intent(second)
    assert store.pending_for([("p1", Side.OLD)]) == {("p1", Side.OLD): False}
    store.remove_repairs(store.next_repairs(10))
    assert store.pending_for([("p1", Side.OLD)]) == {}
    third = store.add_intent("p1", Side.OLD, hold_until=7_000)
    assert store.pending_for([("p1", Side.OLD)]) == {("p1", Side.OLD): True}
    store.clear_intent(third)
    assert store.repair_backlog() == 0


def test_the_checkpoint_keeps_its_attempt(make: Make) -> None:
    store = make()
    assert store.load_checkpoint() == Checkpoint()
    store.save_checkpoint(Checkpoint("p000041", 42, False, attempt=8))
    assert store.load_checkpoint() == Checkpoint("p000041", 42, False, 8)


def test_a_state_file_of_vecmig_0_1_gains_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE repairs (id TEXT, side TEXT, seq INTEGER, PRIMARY KEY (id, side));
        CREATE TABLE checkpoint (one INTEGER PRIMARY KEY CHECK (one = 1),
            cursor TEXT, copied INTEGER, done INTEGER);
        INSERT INTO repairs VALUES ('p1', 'new', 7);
        INSERT INTO checkpoint VALUES (1, 'p000009', 10, 0);
        """
    )
    db.commit()
    db.close()
    store = SQLiteStore(path)
    assert store.next_repairs(10) == [RepairEntry("p1", Side.NEW, 7, False)]
    assert store.load_checkpoint() == Checkpoint("p000009", 10, False, -1)
