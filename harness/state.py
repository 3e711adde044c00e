"""Stores for the migration's durable state: in memory (tests, the simulator) and SQLite (the
embedded default for the live service, which must resume exactly where it was after a kill).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from vecmig.harness.clusters.base import Side
from vecmig.harness.core.phases import Phase
from vecmig.harness.core.state import Checkpoint, MigrationState, RecentWrite, RepairEntry


class MemoryStore:
    """The state in memory: survives a crash of the layer's operations, not of the process."""

    def __init__(self, recent_keep_ns: int = 60_000_000_000) -> None:
        self._phase, self._epoch = Phase.OLD_ONLY, 0
        self._checkpoint = Checkpoint()
        self._repairs: dict[tuple[str, Side], RepairEntry] = {}
        """(id, side) -> the entry as queued last, oldest first."""
        self._seq = 0
        self._recent: dict[Side, deque[RecentWrite]] = {Side.OLD: deque(), Side.NEW: deque()}
        self._recent_keep_ns = recent_keep_ns

    def load(self) -> MigrationState:
        return MigrationState(self._phase, self._epoch, self._checkpoint, len(self._repairs))

    def save_phase(self, phase: Phase, epoch: int) -> None:
        self._phase, self._epoch = phase, epoch

    def load_checkpoint(self) -> Checkpoint:
        return self._checkpoint

    def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        self._checkpoint = checkpoint

    def add_repairs(self, entries: Sequence[RepairEntry]) -> list[RepairEntry]:
        queued = []
        for entry in entries:
            self._seq += 1
            merged = requeued(self._repairs.pop(entry.key, None), entry, self._seq)
            self._repairs[entry.key] = merged
            queued.append(merged)
        return queued

    def next_repairs(self, limit: int, now: int | None = None) -> list[RepairEntry]:
        out: list[RepairEntry] = []
        for entry in self._repairs.values():
            if len(out) >= limit:
                break
            if now is None or entry.hold_until <= now:
                out.append(entry)
        return out

    def pending_for(self, keys: Iterable[tuple[str, Side]]) -> dict[tuple[str, Side], bool]:
        repairs = self._repairs
        return {k: repairs[k].indeterminate for k in keys if k in repairs}

    def remove_repairs(self, entries: Sequence[RepairEntry]) -> None:
        for entry in entries:
            held = self._repairs.get(entry.key)
            if held is not None and held.seq == entry.seq:
                del self._repairs[entry.key]

    def repair_backlog(self, now: int | None = None) -> int:
        if now is None:
            return len(self._repairs)
        return sum(1 for entry in self._repairs.values() if entry.hold_until <= now)

    def note_recent(self, side: Side, writes: Sequence[RecentWrite]) -> None:
        window = self._recent[side]
        window.extend(writes)
        if window:
            horizon = window[-1].time - self._recent_keep_ns
            while window and window[0].time < horizon:
                window.popleft()

    def recent_since(self, side: Side, since: int) -> tuple[RecentWrite, ...]:
        return tuple(w for w in self._recent[side] if w.time >= since)


def requeued(pending: RepairEntry | None, entry: RepairEntry, seq: int) -> RepairEntry:
    """`entry` queued again over what is `pending` for its key: a new seq, indeterminate only
    if both are, held only as long as both are (a repair due now is not held by an intent)."""
    if pending is None:
        return replace(entry, seq=seq)
    return replace(
        entry,
        seq=seq,
        indeterminate=entry.indeterminate and pending.indeterminate,
        hold_until=min(entry.hold_until, pending.hold_until),
    )


class SQLiteStore:
    """The state in one SQLite file (WAL mode). Safe to share between threads of one process."""

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS phase (one INTEGER PRIMARY KEY CHECK (one = 1), phase TEXT, epoch INTEGER);
    CREATE TABLE IF NOT EXISTS checkpoint (one INTEGER PRIMARY KEY CHECK (one = 1),
        cursor TEXT, copied INTEGER, done INTEGER, attempt INTEGER NOT NULL DEFAULT -1);
    CREATE TABLE IF NOT EXISTS repairs (id TEXT, side TEXT, seq INTEGER,
        indeterminate INTEGER NOT NULL DEFAULT 0, hold_until INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (id, side));
    CREATE INDEX IF NOT EXISTS repairs_seq ON repairs (seq);
    CREATE TABLE IF NOT EXISTS recent (side TEXT, time INTEGER, id TEXT, version INTEGER,
        deleted INTEGER, vector TEXT, metadata TEXT);
    CREATE INDEX IF NOT EXISTS recent_time ON recent (side, time);
    CREATE TABLE IF NOT EXISTS seq (one INTEGER PRIMARY KEY CHECK (one = 1), value INTEGER);
    """

    def __init__(self, path: str | Path, recent_keep_ns: int = 60_000_000_000) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(self.SCHEMA)
        for table, column, default in (
            ("repairs", "indeterminate", 0),
            ("repairs", "hold_until", 0),
            ("checkpoint", "attempt", -1),
        ):
            columns = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in columns:  # a state file from vecmig 0.1
                self._db.execute(
                    f"ALTER TABLE {table} ADD COLUMN {column} INTEGER NOT NULL DEFAULT {default}"
                )
        self._recent_keep_ns = recent_keep_ns

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def load(self) -> MigrationState:
        with self._lock:
            row = self._db.execute("SELECT phase, epoch FROM phase").fetchone()
            backlog = self._db.execute("SELECT COUNT(*) FROM repairs").fetchone()[0]
        phase, epoch = (Phase(row[0]), int(row[1])) if row else (Phase.OLD_ONLY, 0)
        return MigrationState(phase, epoch, self.load_checkpoint(), int(backlog))

    def save_phase(self, phase: Phase, epoch: int) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO phase (one, phase, epoch) VALUES (1, ?, ?)",
                (phase.value, epoch),
            )

    def load_checkpoint(self) -> Checkpoint:
        with self._lock:
            row = self._db.execute(
                "SELECT cursor, copied, done, attempt FROM checkpoint"
            ).fetchone()
        return Checkpoint(row[0], int(row[1]), bool(row[2]), int(row[3])) if row else Checkpoint()

    def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO checkpoint (one, cursor, copied, done, attempt) "
                "VALUES (1, ?, ?, ?, ?)",
                (checkpoint.cursor, checkpoint.copied, int(checkpoint.done), checkpoint.attempt),
            )

    def add_repairs(self, entries: Sequence[RepairEntry]) -> list[RepairEntry]:
        if not entries:
            return []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT value FROM seq").fetchone()
                seq = int(row[0]) if row else 0
                queued = []
                for entry in entries:
                    seq += 1
                    merged = requeued(self._entry(entry.id, entry.side), entry, seq)
                    self._db.execute(
                        "INSERT OR REPLACE INTO repairs (id, side, seq, indeterminate, hold_until) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (
                            merged.id,
                            merged.side.value,
                            seq,
                            int(merged.indeterminate),
                            merged.hold_until,
                        ),
                    )
                    queued.append(merged)
                self._db.execute("INSERT OR REPLACE INTO seq (one, value) VALUES (1, ?)", (seq,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return queued

    def _entry(self, record_id: str, side: Side) -> RepairEntry | None:
        row = self._db.execute(
            "SELECT seq, indeterminate, hold_until FROM repairs WHERE id = ? AND side = ?",
            (record_id, side.value),
        ).fetchone()
        if row is None:
            return None
        return RepairEntry(record_id, side, int(row[0]), bool(row[1]), int(row[2]))

    def next_repairs(self, limit: int, now: int | None = None) -> list[RepairEntry]:
        held = "" if now is None else "WHERE hold_until <= ? "
        params: tuple[int, ...] = (limit,) if now is None else (now, limit)
        with self._lock:
            rows = self._db.execute(
                "SELECT id, side, seq, indeterminate, hold_until FROM repairs "
                f"{held}ORDER BY seq LIMIT ?",
                params,
            ).fetchall()
        return [RepairEntry(r[0], Side(r[1]), int(r[2]), bool(r[3]), int(r[4])) for r in rows]

    # SQLite allows 999 host parameters in older builds; two per key.
    _KEYS_PER_QUERY = 400

    def pending_for(self, keys: Iterable[tuple[str, Side]]) -> dict[tuple[str, Side], bool]:
        """The keys among `keys` with a pending repair, each with whether its entry is
        indeterminate: one query per 400 keys (a search's ten hits are one query, not ten)."""
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}
        found: dict[tuple[str, Side], bool] = {}
        with self._lock:
            for start in range(0, len(wanted), self._KEYS_PER_QUERY):
                chunk = wanted[start : start + self._KEYS_PER_QUERY]
                pairs = " OR ".join(["(id = ? AND side = ?)"] * len(chunk))
                params = [v for record_id, side in chunk for v in (record_id, side.value)]
                rows = self._db.execute(
                    f"SELECT id, side, indeterminate FROM repairs WHERE {pairs}", params
                ).fetchall()
                found.update(((r[0], Side(r[1])), bool(r[2])) for r in rows)
        return found

    def pending_entries(self) -> list[RepairEntry]:
        """Every pending entry (to load a cache of the log)."""
        return self.next_repairs(1 << 62)

    def remove_repairs(self, entries: Sequence[RepairEntry]) -> None:
        with self._lock:
            self._db.executemany(
                "DELETE FROM repairs WHERE id = ? AND side = ? AND seq = ?",
                [(e.id, e.side.value, e.seq) for e in entries],
            )

    def repair_backlog(self, now: int | None = None) -> int:
        with self._lock:
            if now is None:
                return int(self._db.execute("SELECT COUNT(*) FROM repairs").fetchone()[0])
            return int(
                self._db.execute(
                    "SELECT COUNT(*) FROM repairs WHERE hold_until <= ?", (now,)
                ).fetchone()[0]
            )

    def note_recent(self, side: Side, writes: Sequence[RecentWrite]) -> None:
        if not writes:
            return
        rows = [
            (
                side.value,
                w.time,
                w.id,
                w.version,
                int(w.deleted),
                None if w.vector is None else json.dumps([float(x) for x in w.vector]),
                json.dumps(dict(w.metadata)),
            )
            for w in writes
        ]
        horizon = max(w.time for w in writes) - self._recent_keep_ns
        with self._lock:
            self._db.executemany("INSERT INTO recent VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            self._db.execute(
                "DELETE FROM recent WHERE side = ? AND time < ?", (side.value, horizon)
            )

    def recent_since(self, side: Side, since: int) -> tuple[RecentWrite, ...]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, version, deleted, time, vector, metadata FROM recent "
                "WHERE side = ? AND time >= ? ORDER BY time",
                (side.value, since),
            ).fetchall()
        return tuple(
            RecentWrite(
                r[0],
                int(r[1]),
                bool(r[2]),
                int(r[3]),
                None if r[4] is None else np.asarray(json.loads(r[4]), dtype=np.float32),
                json.loads(r[5]),
            )
            for r in rows
        )
