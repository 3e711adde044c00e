"""The config store for one machine: a SQLite file in WAL mode, shared by the controller and
every instance on the machine.

Decisions run in `BEGIN IMMEDIATE` transactions, which SQLite serialises across processes. The
lease clock is `CLOCK_MONOTONIC` (`time.monotonic_ns()`), read once the transaction holds the
write lock: on Linux every process of the machine reads the same clock, which never jumps with
the wall clock. An instance whose *layer* clock is skewed (a fault) still passes this clock to
the store, as in the simulator, where the coordinator judges on the true time. The store keeps
the boot id with the leases; after a reboot the monotonic clock starts again from zero, so
every lease is lapsed then (the instances restarted anyway).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from vecmig.harness.core.phases import Coordinator

from .base import ConfigStoreError, ConfigStoreExists, ConfigStoreMissing

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS coordinator (one INTEGER PRIMARY KEY CHECK (one = 1),
    state TEXT NOT NULL, settings TEXT NOT NULL, boot TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS shared (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


class SQLiteConfigStore:
    clock = "CLOCK_MONOTONIC of this machine (time.monotonic_ns), read in the write transaction"

    def __init__(self, path: str | Path, *, timeout_s: float = 2.0) -> None:
        self.path = Path(path)
        self.url = f"sqlite://{self.path}"
        if not self.path.parent.is_dir():
            raise ConfigStoreError(f"the config store's directory {self.path.parent} is missing")
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(
                str(self.path), timeout=timeout_s, check_same_thread=False, isolation_level=None
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise ConfigStoreError(f"cannot open the config store {self.path}: {exc}") from None
        self._boot = boot_id()

    # -- the port --------------------------------------------------------------------------------

    def initialise(self, coordinator: Coordinator, settings: Mapping[str, Any]) -> None:
        with self._transaction():
            if self._db.execute("SELECT 1 FROM coordinator").fetchone():
                raise ConfigStoreExists(f"{self.url} holds a migration already")
            self._db.execute(
                "INSERT INTO coordinator (one, state, settings, boot) VALUES (1, ?, ?, ?)",
                (json.dumps(coordinator.to_json()), json.dumps(dict(settings)), self._boot),
            )

    def settings(self) -> dict[str, Any]:
        row = self._read("SELECT settings FROM coordinator")
        return dict(json.loads(row[0]))

    def decide(self, decision: Callable[[Coordinator, int], T], *, announce: bool = False) -> T:
        with self._transaction():
            row = self._db.execute("SELECT state, boot FROM coordinator").fetchone()
            if row is None:
                raise self._missing()
            coordinator = self._restore(row[0], row[1])
            now = time.monotonic_ns()  # under the write lock: one clock, in one order
            result = decision(coordinator, now)
            self._db.execute(
                "UPDATE coordinator SET state = ?, boot = ?",
                (json.dumps(coordinator.to_json()), self._boot),
            )
        return result

    def snapshot(self) -> tuple[Coordinator, int]:
        row = self._read("SELECT state, boot FROM coordinator")
        return self._restore(row[0], row[1]), time.monotonic_ns()

    def now(self) -> int:
        return time.monotonic_ns()

    def put(self, key: str, value: Mapping[str, Any]) -> None:
        with self._transaction():
            self._db.execute(
                "INSERT INTO shared (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, json.dumps(dict(value))),
            )

    def values(self, prefix: str) -> dict[str, dict[str, Any]]:
        with self._lock:
            try:
                rows = self._db.execute(
                    "SELECT key, value FROM shared WHERE substr(key, 1, ?) = ?",
                    (len(prefix), prefix),
                ).fetchall()
            except sqlite3.Error as exc:
                raise ConfigStoreError(f"{self.url}: {exc}") from None
        return {key: json.loads(value) for key, value in rows}

    def wait(self, timeout_s: float) -> bool:
        time.sleep(timeout_s)  # no pushes in SQLite: the caller polls
        return False

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- internals -------------------------------------------------------------------------------

    def _restore(self, state: str, boot: str) -> Coordinator:
        data = json.loads(state)
        if boot != self._boot:
            # The machine rebooted: the monotonic clock began again, and no lease survives.
            data["members"] = {name: [m[0], m[1], 0] for name, m in data["members"].items()}
        return Coordinator.from_json(data)

    def _read(self, sql: str) -> tuple[Any, ...]:
        with self._lock:
            try:
                row = self._db.execute(sql).fetchone()
            except sqlite3.Error as exc:
                raise ConfigStoreError(f"{self.url}: {exc}") from None
        if row is None:
            raise self._missing()
        return tuple(row)

    def _missing(self) -> ConfigStoreMissing:
        return ConfigStoreMissing(
            f"{self.url} holds no migration: start the controller with --init first "
            "(`vecmig control --init`)"
        )

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """`BEGIN IMMEDIATE` ... `COMMIT` under the connection's lock; any SQLite error (a
        lock held past the timeout, a file gone) becomes `ConfigStoreError`."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise ConfigStoreError(f"{self.url}: {exc}") from None
            try:
                yield
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise ConfigStoreError(f"{self.url}: {exc}") from None
                raise
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error as error:
                self._db.execute("ROLLBACK")
                raise ConfigStoreError(f"{self.url}: {error}") from None
