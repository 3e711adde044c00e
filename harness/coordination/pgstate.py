"""The layer's durable state in PostgreSQL, shared by every instance of a fleet and its
controller: phase and epoch (for the resume checks), backfill checkpoint, repair log,
write-ahead intents and the recent-writes window. The same contract as `state.SQLiteStore`
(`core.state.StateStore`), over the network.

Intents and repair entries are numbered by one sequence, so numbers are unique across
processes; a repair queued again takes a new number, and removing an entry removes it only
if its number still matches (no failure is forgotten). Nothing is cached: a read on one
instance sees a repair queued by a write on another as soon as it committed.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from vecmig.harness.clusters.base import Side
from vecmig.harness.core.phases import Phase
from vecmig.harness.core.state import Checkpoint, MigrationState, RecentWrite, RepairEntry
from vecmig.harness.state import StateError, vector_bytes, vector_of

from .base import redact

T = TypeVar("T")

SCHEMA = """
CREATE SEQUENCE IF NOT EXISTS vecmig_seq;
CREATE TABLE IF NOT EXISTS vecmig_meta (one INTEGER PRIMARY KEY CHECK (one = 1),
    migration TEXT NOT NULL, created BIGINT NOT NULL, format INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS vecmig_phase (one INTEGER PRIMARY KEY CHECK (one = 1),
    phase TEXT NOT NULL, epoch INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS vecmig_checkpoint (one INTEGER PRIMARY KEY CHECK (one = 1),
    cursor TEXT, copied BIGINT NOT NULL, done BOOLEAN NOT NULL, attempt INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS vecmig_repairs (id TEXT NOT NULL, side TEXT NOT NULL,
    seq BIGINT NOT NULL, indeterminate BOOLEAN NOT NULL, PRIMARY KEY (id, side));
CREATE INDEX IF NOT EXISTS vecmig_repairs_seq ON vecmig_repairs (seq);
CREATE TABLE IF NOT EXISTS vecmig_intents (intent BIGINT PRIMARY KEY, id TEXT NOT NULL,
    side TEXT NOT NULL, hold_until BIGINT NOT NULL);
CREATE INDEX IF NOT EXISTS vecmig_intents_key ON vecmig_intents (id, side);
CREATE TABLE IF NOT EXISTS vecmig_recent (seq BIGINT PRIMARY KEY DEFAULT nextval('vecmig_seq'),
    side TEXT NOT NULL, time BIGINT NOT NULL, id TEXT NOT NULL, version BIGINT NOT NULL,
    deleted BOOLEAN NOT NULL, vector BYTEA, metadata TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS vecmig_recent_time ON vecmig_recent (side, time);
"""
FORMAT = 1


class PostgresStateStore:
    """A `StateStore` in PostgreSQL. Thread-safe: a small pool of connections, one per
    concurrent caller; a connection that broke is replaced on the next call."""

    def __init__(self, dsn: str, *, connections: int = 4, timeout_s: float = 5.0) -> None:
        self.dsn = dsn
        self.path = redact(dsn)
        self.timeout_s = timeout_s
        self._pool: queue.LifoQueue[Any] = queue.LifoQueue()
        for _ in range(connections):
            self._pool.put(None)
        self._recent_keep_ns = 60_000_000_000
        self._recent_cache: dict[int, RecentWrite] = {}
        self._cache_lock = threading.Lock()
        self.migration_id = ""

    @classmethod
    def open(cls, dsn: str, *, init: bool = False) -> PostgresStateStore:
        """The state at `dsn`: with `init` a new migration's (refused if one is there),
        without it an existing one (refused if there is none). Refusals are `StateError`."""
        store = cls(dsn)
        store._open(init)
        return store

    def _open(self, init: bool) -> None:
        def work(conn: Any) -> str:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('vecmig_state'))")
            exists = conn.execute("SELECT to_regclass('vecmig_meta')").fetchone()[0]
            row = conn.execute("SELECT migration FROM vecmig_meta").fetchone() if exists else None
            if init and row is not None:
                raise StateError(
                    f"--init: {self.path} already holds migration {row[0]}; drop --init to "
                    "resume it, or use another database"
                )
            if not init and row is None:
                raise StateError(
                    f"no migration state in {self.path}. To start one there, pass --init"
                )
            if row is not None:
                return str(row[0])
            for statement in filter(str.strip, SCHEMA.split(";")):
                conn.execute(statement)
            migration = uuid.uuid4().hex
            conn.execute(
                "INSERT INTO vecmig_meta VALUES (1, %s, %s, %s)",
                (migration, time.time_ns(), FORMAT),
            )
            return migration

        self.migration_id = self._tx(work)

    # -- connections -----------------------------------------------------------------------------

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        import psycopg

        conn = self._pool.get()
        try:
            if conn is None or conn.closed:
                try:
                    conn = psycopg.connect(
                        self.dsn,
                        autocommit=True,
                        connect_timeout=max(1, int(self.timeout_s)),
                        options=f"-c statement_timeout={int(self.timeout_s * 1000)}",
                    )
                except psycopg.Error as exc:
                    conn = None
                    raise StateError(f"cannot reach the state store {self.path}: {exc}") from None
            try:
                yield conn
            except psycopg.Error as exc:
                with contextlib.suppress(Exception):  # broken already
                    conn.close()
                conn = None
                raise StateError(f"the state store {self.path}: {exc}") from None
        finally:
            self._pool.put(conn)

    def _tx(self, work: Callable[[Any], T]) -> T:
        with self._connection() as conn, conn.transaction():
            return work(conn)

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        with self._connection() as conn:
            return conn.execute(sql, params).fetchone()

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._connection() as conn:
            return list(conn.execute(sql, params).fetchall())

    def close(self) -> None:
        while not self._pool.empty():
            conn = self._pool.get_nowait()
            if conn is not None:
                conn.close()

    # -- the state ---------------------------------------------------------------------------

    def load(self) -> MigrationState:
        row = self._one("SELECT phase, epoch FROM vecmig_phase")
        backlog = self._one("SELECT COUNT(*) FROM vecmig_repairs")[0]
        phase, epoch = (Phase(row[0]), int(row[1])) if row else (Phase.OLD_ONLY, 0)
        return MigrationState(phase, epoch, self.load_checkpoint(), int(backlog))

    def save_phase(self, phase: Phase, epoch: int) -> None:
        self._one(
            "INSERT INTO vecmig_phase VALUES (1, %s, %s) ON CONFLICT (one) DO UPDATE "
            "SET phase = excluded.phase, epoch = excluded.epoch RETURNING one",
            (phase.value, epoch),
        )

    def load_checkpoint(self) -> Checkpoint:
        row = self._one("SELECT cursor, copied, done, attempt FROM vecmig_checkpoint")
        return Checkpoint(row[0], int(row[1]), bool(row[2]), int(row[3])) if row else Checkpoint()

    def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        self._one(
            "INSERT INTO vecmig_checkpoint VALUES (1, %s, %s, %s, %s) ON CONFLICT (one) DO UPDATE "
            "SET cursor = excluded.cursor, copied = excluded.copied, done = excluded.done, "
            "attempt = excluded.attempt RETURNING one",
            (checkpoint.cursor, checkpoint.copied, checkpoint.done, checkpoint.attempt),
        )

    def add_repairs(self, entries: Sequence[RepairEntry]) -> None:
        if not entries:
            return
        with self._connection() as conn, conn.transaction():
            # Queued again: a new seq; indeterminate only if the pending entry was too.
            conn.cursor().executemany(
                "INSERT INTO vecmig_repairs (id, side, seq, indeterminate) "
                "VALUES (%s, %s, nextval('vecmig_seq'), %s) ON CONFLICT (id, side) DO UPDATE "
                "SET seq = excluded.seq, "
                "indeterminate = vecmig_repairs.indeterminate AND excluded.indeterminate",
                [(e.id, e.side.value, e.indeterminate) for e in entries],
            )

    def add_intent(self, record_id: str, side: Side, hold_until: int) -> int:
        row = self._one(
            "INSERT INTO vecmig_intents (intent, id, side, hold_until) "
            "VALUES (nextval('vecmig_seq'), %s, %s, %s) RETURNING intent",
            (record_id, side.value, hold_until),
        )
        return int(row[0])

    def clear_intent(self, intent: int) -> None:
        self._one("DELETE FROM vecmig_intents WHERE intent = %s RETURNING intent", (intent,))

    def next_repairs(self, limit: int, now: int | None = None) -> list[RepairEntry]:
        rows = self._all(
            "SELECT id, side, seq, indeterminate FROM vecmig_repairs ORDER BY seq LIMIT %s",
            (limit,),
        )
        entries = [RepairEntry(r[0], Side(r[1]), int(r[2]), bool(r[3])) for r in rows]
        if len(entries) < limit:
            due = "" if now is None else "WHERE hold_until <= %s "
            params: tuple[int, ...] = (limit - len(entries),)
            if now is not None:
                params = (now, *params)
            rows = self._all(
                f"SELECT intent, id, side FROM vecmig_intents {due}ORDER BY intent LIMIT %s",
                params,
            )
            entries += [RepairEntry(r[1], Side(r[2]), int(r[0]), True, int(r[0])) for r in rows]
        return entries

    def pending_for(self, keys: Iterable[tuple[str, Side]]) -> dict[tuple[str, Side], bool]:
        return self._lookup(keys, intents=True)

    def repairs_for(self, keys: Iterable[tuple[str, Side]]) -> dict[tuple[str, Side], bool]:
        return self._lookup(keys, intents=False)

    def _lookup(
        self, keys: Iterable[tuple[str, Side]], intents: bool
    ) -> dict[tuple[str, Side], bool]:
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}
        ids = [k[0] for k in wanted]
        sides = [k[1].value for k in wanted]
        pairs = "(id, side) IN (SELECT * FROM unnest(%s::text[], %s::text[]))"
        found: dict[tuple[str, Side], bool] = {}
        with self._connection() as conn:
            for r in conn.execute(
                f"SELECT id, side, indeterminate FROM vecmig_repairs WHERE {pairs}", (ids, sides)
            ).fetchall():
                found[(r[0], Side(r[1]))] = bool(r[2])
            if intents:
                for r in conn.execute(
                    f"SELECT DISTINCT id, side FROM vecmig_intents WHERE {pairs}", (ids, sides)
                ).fetchall():
                    found.setdefault((r[0], Side(r[1])), True)
        return found

    def pending_entries(self) -> tuple[list[RepairEntry], dict[int, tuple[str, Side, int]]]:
        rows = self._all("SELECT id, side, seq, indeterminate FROM vecmig_repairs")
        intents = self._all("SELECT intent, id, side, hold_until FROM vecmig_intents")
        return (
            [RepairEntry(r[0], Side(r[1]), int(r[2]), bool(r[3])) for r in rows],
            {int(r[0]): (r[1], Side(r[2]), int(r[3])) for r in intents},
        )

    def remove_repairs(self, entries: Sequence[RepairEntry]) -> None:
        repairs = [(e.id, e.side.value, e.seq) for e in entries if e.intent is None]
        intents = [(e.intent,) for e in entries if e.intent is not None]
        with self._connection() as conn, conn.transaction():
            cursor = conn.cursor()
            if repairs:
                cursor.executemany(
                    "DELETE FROM vecmig_repairs WHERE id = %s AND side = %s AND seq = %s", repairs
                )
            if intents:
                cursor.executemany("DELETE FROM vecmig_intents WHERE intent = %s", intents)

    def repair_backlog(self, now: int | None = None) -> int:
        with self._connection() as conn:
            repairs = int(conn.execute("SELECT COUNT(*) FROM vecmig_repairs").fetchone()[0])
            if now is None:
                row = conn.execute("SELECT COUNT(*) FROM vecmig_intents").fetchone()
            else:
                row = conn.execute(
                    "SELECT COUNT(*) FROM vecmig_intents WHERE hold_until <= %s", (now,)
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
                w.deleted,
                None if w.vector is None else vector_bytes(w.vector),
                json.dumps(dict(w.metadata)),
            )
            for w in writes
        ]
        horizon = max(w.time for w in writes) - self._recent_keep_ns
        with self._connection() as conn, conn.transaction():
            conn.cursor().executemany(
                "INSERT INTO vecmig_recent (side, time, id, version, deleted, vector, metadata) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                rows,
            )
            conn.execute(
                "DELETE FROM vecmig_recent WHERE side = %s AND time < %s", (side.value, horizon)
            )

    def recent_since(self, side: Side, since: int) -> tuple[RecentWrite, ...]:
        """As `SQLiteStore.recent_since`: the window's light columns, and the vectors and
        metadata only of rows this process has not decoded yet (rows never change)."""
        rows = self._all(
            "SELECT seq FROM vecmig_recent WHERE side = %s AND time >= %s ORDER BY time, seq",
            (side.value, since),
        )
        with self._cache_lock:
            missing = [r[0] for r in rows if r[0] not in self._recent_cache]
        fetched = {}
        if missing:
            for r in self._all(
                "SELECT seq, id, version, deleted, time, vector, metadata FROM vecmig_recent "
                "WHERE seq = ANY(%s)",
                (missing,),
            ):
                vector = None if r[5] is None else vector_of(bytes(r[5]))
                fetched[int(r[0])] = RecentWrite(
                    r[1], int(r[2]), bool(r[3]), int(r[4]), vector, json.loads(r[6])
                )
        with self._cache_lock:
            cache = self._recent_cache
            cache.update(fetched)
            if len(cache) > 2 * max(len(rows), 1000):
                keep = {r[0] for r in rows}
                self._recent_cache = cache = {k: v for k, v in cache.items() if k in keep}
            return tuple(cache[r[0]] for r in rows if r[0] in cache)
