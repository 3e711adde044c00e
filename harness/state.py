"""Stores for the migration's durable state: in memory (tests, the simulator) and SQLite (the
embedded default for the live service, which must resume exactly where it was after a kill).

The service opens its SQLite state with `SQLiteStore.open`, which never creates one silently
(a mistyped path used to start the migration over at OLD_ONLY), refuses a file that is not a
vecmig state with `StateError` naming the path, and holds an exclusive lock on it for the life
of the process, so that a second service on the same state refuses to start.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
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
        self._intents: dict[int, tuple[str, Side, int]] = {}
        """intent -> (id, side, hold_until), oldest first."""
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

    def add_repairs(self, entries: Sequence[RepairEntry]) -> None:
        for entry in entries:
            self._seq += 1
            pending = self._repairs.pop(entry.key, None)
            indeterminate = entry.indeterminate and (pending is None or pending.indeterminate)
            self._repairs[entry.key] = RepairEntry(entry.id, entry.side, self._seq, indeterminate)

    def add_intent(self, record_id: str, side: Side, hold_until: int) -> int:
        self._seq += 1
        self._intents[self._seq] = (record_id, side, hold_until)
        return self._seq

    def clear_intent(self, intent: int) -> None:
        self._intents.pop(intent, None)

    def next_repairs(self, limit: int, now: int | None = None) -> list[RepairEntry]:
        out = list(itertools.islice(self._repairs.values(), limit))
        for intent, (record_id, side, hold_until) in self._intents.items():
            if len(out) >= limit:
                break
            if now is None or hold_until <= now:
                out.append(RepairEntry(record_id, side, intent, True, intent))
        return out

    def pending_for(self, keys: Iterable[tuple[str, Side]]) -> dict[tuple[str, Side], bool]:
        wanted = set(keys)
        found = {k: self._repairs[k].indeterminate for k in wanted if k in self._repairs}
        if self._intents:
            for record_id, side, _ in self._intents.values():
                found.setdefault((record_id, side), True)
            found = {k: v for k, v in found.items() if k in wanted}
        return found

    def remove_repairs(self, entries: Sequence[RepairEntry]) -> None:
        for entry in entries:
            if entry.intent is not None:
                self._intents.pop(entry.intent, None)
                continue
            held = self._repairs.get(entry.key)
            if held is not None and held.seq == entry.seq:
                del self._repairs[entry.key]

    def repair_backlog(self, now: int | None = None) -> int:
        if now is None:
            return len(self._repairs) + len(self._intents)
        return len(self._repairs) + sum(1 for *_, hold in self._intents.values() if hold <= now)

    def note_recent(self, side: Side, writes: Sequence[RecentWrite]) -> None:
        window = self._recent[side]
        window.extend(writes)
        if window:
            horizon = window[-1].time - self._recent_keep_ns
            while window and window[0].time < horizon:
                window.popleft()

    def recent_since(self, side: Side, since: int) -> tuple[RecentWrite, ...]:
        return tuple(w for w in self._recent[side] if w.time >= since)


class StateError(Exception):
    """The state store cannot be used as asked: the message names the path and what to do."""


class StateLock:
    """An exclusive lock on a state file, held by one process at a time (`flock` on a file
    beside it, released by the kernel when the process dies, SIGKILL included). The holder
    writes who it is into the lock file, so that the refusal can name it."""

    def __init__(self, path: str | Path, holder: str = "") -> None:
        self.path = Path(f"{path}.lock")
        try:
            self._file = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held till release
        except OSError as exc:
            raise StateError(f"cannot create the state lock {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            who = self._file.read().strip() or "another process"
            self._file.close()
            raise StateError(
                f"the state {path} is in use by {who}; one service per state file (stop that "
                "one first, or give this one a state of its own)"
            ) from None
        self._file.seek(0)
        self._file.truncate()
        since = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self._file.write(f"pid {os.getpid()} on {socket.gethostname()} ({holder}) since {since}\n")
        self._file.flush()

    def release(self) -> None:
        if not self._file.closed:
            self._file.close()  # closing lets go of the flock


class SQLiteStore:
    """The state in one SQLite file (WAL mode). Safe to share between threads of one process."""

    FORMAT = 1
    SCHEMA = """
    CREATE TABLE IF NOT EXISTS meta (one INTEGER PRIMARY KEY CHECK (one = 1), migration TEXT,
        created INTEGER, format INTEGER);
    CREATE TABLE IF NOT EXISTS phase (one INTEGER PRIMARY KEY CHECK (one = 1), phase TEXT,
        epoch INTEGER);
    CREATE TABLE IF NOT EXISTS checkpoint (one INTEGER PRIMARY KEY CHECK (one = 1),
        cursor TEXT, copied INTEGER, done INTEGER, attempt INTEGER NOT NULL DEFAULT -1);
    CREATE TABLE IF NOT EXISTS repairs (id TEXT, side TEXT, seq INTEGER,
        indeterminate INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (id, side));
    CREATE TABLE IF NOT EXISTS intents (intent INTEGER PRIMARY KEY, id TEXT, side TEXT,
        hold_until INTEGER);
    CREATE INDEX IF NOT EXISTS intents_key ON intents (id, side);
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
            ("checkpoint", "attempt", -1),
        ):
            columns = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in columns:  # a state file from vecmig 0.1
                self._db.execute(
                    f"ALTER TABLE {table} ADD COLUMN {column} INTEGER NOT NULL DEFAULT {default}"
                )
        self._recent_keep_ns = recent_keep_ns
        self.state_lock: StateLock | None = None
        row = self._db.execute("SELECT migration FROM meta").fetchone()
        if row is None:
            self.migration_id = uuid.uuid4().hex
            self._db.execute(
                "INSERT INTO meta (one, migration, created, format) VALUES (1, ?, ?, ?)",
                (self.migration_id, time.time_ns(), self.FORMAT),
            )
        else:
            self.migration_id = str(row[0])

    @classmethod
    def open(cls, path: str | Path, *, init: bool = False, holder: str = "") -> SQLiteStore:
        """The state at `path`, locked for this process. With `init`, a new migration's state
        (refused if `path` already holds one); without, an existing one (refused if there is
        none). Every refusal is a `StateError` naming the path."""
        where = Path(path)
        if where.is_dir():
            raise StateError(f"the state path {where} is a directory; give a file path")
        if not where.parent.is_dir():
            raise StateError(f"the state's directory {where.parent} does not exist")
        lock = StateLock(where, holder)
        try:
            store = cls._checked(where, init)
        except BaseException:
            lock.release()
            raise
        store.state_lock = lock
        return store

    @classmethod
    def _checked(cls, where: Path, init: bool) -> SQLiteStore:
        exists = where.exists()
        size = where.stat().st_size if exists else 0
        if not init and not exists:
            raise StateError(
                f"no migration state at {where}. To start a new migration there, pass --init; "
                "to resume one, give the path of its state file"
            )
        if not init and size == 0:
            raise StateError(f"the state file {where} is empty: not a vecmig state")
        if init and size > 0:
            raise StateError(
                f"--init: {where} already exists and may hold a migration; drop --init to resume "
                "it, or choose a new path"
            )
        if exists and not os.access(where, os.R_OK | os.W_OK):
            raise StateError(f"the state file {where} is not readable and writable by this user")
        try:
            store = cls(where)
            store.load()
        except sqlite3.DatabaseError as exc:
            raise StateError(f"cannot use the state file {where}: {exc}") from None
        return store

    def close(self) -> None:
        with self._lock:
            self._db.close()
        if self.state_lock is not None:
            self.state_lock.release()

    def load(self) -> MigrationState:
        with self._lock:
            row = self._db.execute("SELECT phase, epoch FROM phase").fetchone()
            backlog = self._db.execute("SELECT COUNT(*) FROM repairs").fetchone()[0]
        phase, epoch = (Phase(row[0]), int(row[1])) if row else (Phase.OLD_ONLY, 0)
        return MigrationState(phase, epoch, self.load_checkpoint(), int(backlog))

    def save_phase(self, phase: Phase, epoch: int) -> None:
        """Saved and checkpointed into the main file at once: a copy of the file taken without
        its `-wal` file still holds the current phase (it used to resume one phase back)."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO phase (one, phase, epoch) VALUES (1, ?, ?)",
                (phase.value, epoch),
            )
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

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

    def add_repairs(self, entries: Sequence[RepairEntry]) -> None:
        if not entries:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                seq = self._next_seq(len(entries))
                # Queued again: a new seq; indeterminate only if the pending entry was too.
                self._db.executemany(
                    "INSERT INTO repairs (id, side, seq, indeterminate) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (id, side) DO UPDATE SET seq = excluded.seq, "
                    "indeterminate = repairs.indeterminate AND excluded.indeterminate",
                    [
                        (e.id, e.side.value, seq + n, int(e.indeterminate))
                        for n, e in enumerate(entries, 1)
                    ],
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _next_seq(self, count: int) -> int:
        """Reserve `count` sequence numbers (inside a transaction); returns the one before."""
        row = self._db.execute("SELECT value FROM seq").fetchone()
        seq = int(row[0]) if row else 0
        self._db.execute("INSERT OR REPLACE INTO seq (one, value) VALUES (1, ?)", (seq + count,))
        return seq

    def add_intent(self, record_id: str, side: Side, hold_until: int) -> int:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                intent = self._next_seq(1) + 1
                self._db.execute(
                    "INSERT INTO intents (intent, id, side, hold_until) VALUES (?, ?, ?, ?)",
                    (intent, record_id, side.value, hold_until),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return intent

    def clear_intent(self, intent: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM intents WHERE intent = ?", (intent,))

    def next_repairs(self, limit: int, now: int | None = None) -> list[RepairEntry]:
        due = "" if now is None else "WHERE hold_until <= ? "
        with self._lock:
            rows = self._db.execute(
                "SELECT id, side, seq, indeterminate FROM repairs ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
            entries = [RepairEntry(r[0], Side(r[1]), int(r[2]), bool(r[3])) for r in rows]
            if len(entries) < limit:
                params: tuple[int, ...] = (limit - len(entries),)
                if now is not None:
                    params = (now, *params)
                rows = self._db.execute(
                    f"SELECT intent, id, side FROM intents {due}ORDER BY intent LIMIT ?", params
                ).fetchall()
                entries += [RepairEntry(r[1], Side(r[2]), int(r[0]), True, int(r[0])) for r in rows]
        return entries

    def pending_for(self, keys: Iterable[tuple[str, Side]]) -> dict[tuple[str, Side], bool]:
        """The keys among `keys` with a pending repair or intent, each with whether it is
        indeterminate: two queries per 400 keys (a search's ten hits are not ten queries)."""
        return self._lookup(keys, intents=True)

    def repairs_for(self, keys: Iterable[tuple[str, Side]]) -> dict[tuple[str, Side], bool]:
        """As `pending_for`, but repairs only (not intents)."""
        return self._lookup(keys, intents=False)

    # SQLite allows 999 host parameters in older builds; two per key.
    _KEYS_PER_QUERY = 400

    def _lookup(
        self, keys: Iterable[tuple[str, Side]], intents: bool
    ) -> dict[tuple[str, Side], bool]:
        wanted = list(dict.fromkeys(keys))
        found: dict[tuple[str, Side], bool] = {}
        if not wanted:
            return found
        with self._lock:
            for start in range(0, len(wanted), self._KEYS_PER_QUERY):
                chunk = wanted[start : start + self._KEYS_PER_QUERY]
                pairs = " OR ".join(["(id = ? AND side = ?)"] * len(chunk))
                params = [v for record_id, side in chunk for v in (record_id, side.value)]
                rows = self._db.execute(
                    f"SELECT id, side, indeterminate FROM repairs WHERE {pairs}", params
                ).fetchall()
                found.update(((r[0], Side(r[1])), bool(r[2])) for r in rows)
                if intents:
                    rows = self._db.execute(
                        f"SELECT DISTINCT id, side FROM intents WHERE {pairs}", params
                    ).fetchall()
                    for r in rows:
                        found.setdefault((r[0], Side(r[1])), True)
        return found

    def pending_entries(self) -> tuple[list[RepairEntry], dict[int, tuple[str, Side, int]]]:
        """Every pending repair, and every intent with its (id, side, hold_until): to load a
        cache of the log."""
        with self._lock:
            rows = self._db.execute("SELECT id, side, seq, indeterminate FROM repairs").fetchall()
            intents = self._db.execute(
                "SELECT intent, id, side, hold_until FROM intents"
            ).fetchall()
        return (
            [RepairEntry(r[0], Side(r[1]), int(r[2]), bool(r[3])) for r in rows],
            {int(r[0]): (r[1], Side(r[2]), int(r[3])) for r in intents},
        )

    def remove_repairs(self, entries: Sequence[RepairEntry]) -> None:
        with self._lock:
            self._db.executemany(
                "DELETE FROM repairs WHERE id = ? AND side = ? AND seq = ?",
                [(e.id, e.side.value, e.seq) for e in entries if e.intent is None],
            )
            self._db.executemany(
                "DELETE FROM intents WHERE intent = ?",
                [(e.intent,) for e in entries if e.intent is not None],
            )

    def repair_backlog(self, now: int | None = None) -> int:
        with self._lock:
            repairs = int(self._db.execute("SELECT COUNT(*) FROM repairs").fetchone()[0])
            if now is None:
                row = self._db.execute("SELECT COUNT(*) FROM intents").fetchone()
            else:
                row = self._db.execute(
                    "SELECT COUNT(*) FROM intents WHERE hold_until <= ?", (now,)
                ).fetchone()
        return repairs + int(row[0])

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
