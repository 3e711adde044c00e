"""The durable stores (`vecmig.harness.state`): both keep the repair log's rules alike."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from vecmig.harness.clusters.base import Side
from vecmig.harness.core.state import Checkpoint, RepairEntry, StateStore
from vecmig.harness.state import MemoryStore, SQLiteStore

Make = Callable[[], StateStore]


@pytest.fixture(params=["memory", "sqlite"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Make:
    if request.param == "memory":
        return MemoryStore
    return lambda: SQLiteStore(tmp_path / "state.db")


def test_queuing_a_key_again_gives_it_a_new_seq_and_an_old_removal_keeps_it(make: Make) -> None:
    store = make()
    (first,) = store.add_repairs([RepairEntry("p1", Side.NEW)])
    (again,) = store.add_repairs([RepairEntry("p1", Side.NEW)])
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
    (queued,) = store.add_repairs([RepairEntry("p1", Side.OLD, indeterminate=second)])
    assert queued.indeterminate is merged
    assert store.pending_for([("p1", Side.OLD), ("p2", Side.OLD)]) == {("p1", Side.OLD): merged}
    assert store.next_repairs(10)[0].indeterminate is merged


def test_a_held_intent_is_pending_for_readers_but_not_due_for_the_worker_or_the_gates(
    make: Make,
) -> None:
    store = make()
    store.add_repairs([RepairEntry("due", Side.NEW)])
    (intent,) = store.add_repairs(
        [RepairEntry("held", Side.NEW, indeterminate=True, hold_until=1_000)]
    )
    assert intent.hold_until == 1_000
    assert store.pending_for([("held", Side.NEW)]) == {("held", Side.NEW): True}
    assert [e.id for e in store.next_repairs(10, now=999)] == ["due"]
    assert store.repair_backlog(999) == 1
    assert store.repair_backlog() == 2
    assert [e.id for e in store.next_repairs(10, now=1_000)] == ["due", "held"]
    assert store.repair_backlog(1_000) == 2


def test_a_repair_due_now_is_not_held_back_by_an_intent_for_the_same_key(make: Make) -> None:
    store = make()
    store.add_repairs([RepairEntry("p1", Side.NEW, indeterminate=True, hold_until=5_000)])
    (failed,) = store.add_repairs([RepairEntry("p1", Side.NEW)])
    assert (failed.hold_until, failed.indeterminate) == (0, False)
    assert store.repair_backlog(0) == 1
    store.add_repairs([RepairEntry("p1", Side.NEW, indeterminate=True, hold_until=9_000)])
    assert store.next_repairs(10, now=0)[0].hold_until == 0


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
    assert store.next_repairs(10) == [RepairEntry("p1", Side.NEW, 7, False, 0)]
    assert store.load_checkpoint() == Checkpoint("p000009", 10, False, -1)
