"""The config store for a fleet: PostgreSQL, reached over the network by the controller and
every instance, wherever they run.

Why PostgreSQL (and not etcd): the fleet needs a networked home for the layer's durable state
too (repair log, write-ahead intents, backfill checkpoint, recent writes), with transactions
and ordered, keyed queries that etcd's key space does not give (`pgstate.PostgresStateStore`);
one server does both, the load tests already start one (`harness.clusters.pgserver`, with a
crash-and-restart nemesis), and LISTEN/NOTIFY pushes a published phase to every instance.

Each decision is one transaction: `SELECT ... FOR UPDATE` of the coordinator's row, the
server's `clock_timestamp()` read after the lock is granted (the lease clock), the decision,
the update, and `NOTIFY vecmig_config` when it publishes. Every statement is bounded by
`statement_timeout`; a connection that broke is opened again on the next call.
"""

from __future__ import annotations

import contextlib
import json
import select
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from vecmig.harness.core.phases import Coordinator

from .base import ConfigStoreError, ConfigStoreExists, ConfigStoreMissing, redact

T = TypeVar("T")

CHANNEL = "vecmig_config"
SCHEMA = """
CREATE TABLE IF NOT EXISTS vecmig_config (one INTEGER PRIMARY KEY CHECK (one = 1),
    state TEXT NOT NULL, settings TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS vecmig_config_shared (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
NOW_NS = "(extract(epoch from clock_timestamp()) * 1000000000)::bigint"


class PostgresConfigStore:
    clock = "the PostgreSQL server's clock_timestamp(), read in the deciding transaction"

    def __init__(self, dsn: str, *, timeout_s: float = 2.0) -> None:
        self.dsn = dsn
        self.url = redact(dsn)
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._conn: Any = None
        self._listener: Any = None
        self._listen_lock = threading.Lock()

    # -- connections -----------------------------------------------------------------------------

    def _connect(self, autocommit: bool = False) -> Any:
        import psycopg

        ms = int(self.timeout_s * 1000)
        try:
            conn = psycopg.connect(
                self.dsn,
                autocommit=autocommit,
                connect_timeout=max(1, int(self.timeout_s + 0.999)),
                options=f"-c statement_timeout={ms} -c lock_timeout={ms} "
                f"-c idle_in_transaction_session_timeout={4 * ms}",
            )
        except psycopg.Error as exc:
            raise ConfigStoreError(f"cannot reach the config store {self.url}: {exc}") from None
        return conn

    def _run(self, work: Callable[[Any], T], *, write: bool) -> T:
        """Run `work(connection)` in a transaction, opening the connection if needed; any
        database error becomes `ConfigStoreError` (and drops the connection)."""
        import psycopg

        with self._lock:
            if self._conn is None or self._conn.closed:
                self._conn = self._connect()
            conn = self._conn
            committing = False
            try:
                with conn.transaction():
                    result = work(conn)
                    committing = write
                return result
            except psycopg.Error as exc:
                self._drop()
                error = ConfigStoreError(f"the config store {self.url}: {exc}")
                error.maybe_taken = committing  # type: ignore[attr-defined]
                raise error from None

    def _drop(self) -> None:
        try:
            if self._conn is not None:
                self._conn.close()
        except Exception:  # noqa: BLE001 - a broken connection may fail to close too
            pass
        self._conn = None

    # -- the port --------------------------------------------------------------------------------

    def initialise(self, coordinator: Coordinator, settings: Mapping[str, Any]) -> None:
        def work(conn: Any) -> None:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('vecmig_config'))")
            for statement in filter(str.strip, SCHEMA.split(";")):
                conn.execute(statement)
            if conn.execute("SELECT 1 FROM vecmig_config").fetchone():
                raise ConfigStoreExists(f"{self.url} holds a migration already")
            conn.execute(
                "INSERT INTO vecmig_config (one, state, settings) VALUES (1, %s, %s)",
                (json.dumps(coordinator.to_json()), json.dumps(dict(settings))),
            )

        self._run(work, write=True)

    def settings(self) -> dict[str, Any]:
        row = self._run(lambda c: self._row(c, "SELECT settings FROM vecmig_config"), write=False)
        return dict(json.loads(row[0]))

    def decide(self, decision: Callable[[Coordinator, int], T], *, announce: bool = False) -> T:
        def work(conn: Any) -> T:
            (state,) = self._row(conn, "SELECT state FROM vecmig_config FOR UPDATE")
            now = int(conn.execute(f"SELECT {NOW_NS}").fetchone()[0])  # once the lock is ours
            coordinator = Coordinator.from_json(json.loads(state))
            result = decision(coordinator, now)
            conn.execute(
                "UPDATE vecmig_config SET state = %s", (json.dumps(coordinator.to_json()),)
            )
            if announce:
                conn.execute(f"NOTIFY {CHANNEL}")
            return result

        return self._run(work, write=True)

    def snapshot(self) -> tuple[Coordinator, int]:
        state, now = self._run(
            lambda c: self._row(c, f"SELECT state, {NOW_NS} FROM vecmig_config"), write=False
        )
        return Coordinator.from_json(json.loads(state)), int(now)

    def now(self) -> int:
        return int(self._run(lambda c: c.execute(f"SELECT {NOW_NS}").fetchone()[0], write=False))

    def put(self, key: str, value: Mapping[str, Any]) -> None:
        self._run(
            lambda c: c.execute(
                "INSERT INTO vecmig_config_shared (key, value) VALUES (%s, %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, json.dumps(dict(value))),
            ),
            write=True,
        )

    def values(self, prefix: str) -> dict[str, dict[str, Any]]:
        rows = self._run(
            lambda c: c.execute(
                "SELECT key, value FROM vecmig_config_shared WHERE left(key, %s) = %s",
                (len(prefix), prefix),
            ).fetchall(),
            write=False,
        )
        return {key: json.loads(value) for key, value in rows}

    def wait(self, timeout_s: float) -> bool:
        """LISTEN on a connection of its own: True as soon as a decision is announced. If the
        server cannot be reached, sleep out the timeout (the caller polls anyway)."""
        import psycopg

        deadline = time.monotonic() + timeout_s
        with self._listen_lock:
            try:
                if self._listener is None or self._listener.closed:
                    self._listener = self._connect(autocommit=True)
                    self._listener.execute(f"LISTEN {CHANNEL}")
                listener = self._listener
                if any(True for _ in listener.notifies(timeout=0, stop_after=64)):
                    return True
                remaining = deadline - time.monotonic()
                if remaining > 0:
                    ready, _, _ = select.select([listener.fileno()], [], [], remaining)
                    if ready:
                        return any(True for _ in listener.notifies(timeout=0, stop_after=64))
                return False
            except (psycopg.Error, ConfigStoreError, OSError, ValueError):
                if self._listener is not None:
                    with contextlib.suppress(Exception):  # it is broken already
                        self._listener.close()
                self._listener = None
        time.sleep(max(0.0, deadline - time.monotonic()))
        return False

    def close(self) -> None:
        with self._lock:
            self._drop()
        with self._listen_lock:
            if self._listener is not None:
                self._listener.close()
                self._listener = None

    # -- internals -------------------------------------------------------------------------------

    def _row(self, conn: Any, sql: str) -> tuple[Any, ...]:
        import psycopg

        try:
            row = conn.execute(sql).fetchone()
        except psycopg.errors.UndefinedTable:
            row = None
        if row is None:
            raise ConfigStoreMissing(
                f"{self.url} holds no migration: start the controller with --init first "
                "(`vecmig control --init`)"
            )
        return tuple(row)
