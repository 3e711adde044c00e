"""The layer's durable state as a fleet shares it: a SQLite file every process of one machine
opens (WAL; a shared lock keeps a standalone service off it), or PostgreSQL for a fleet across
machines. Neither is cached in a process: a read on one instance must see the repair pending
because of a write on another (see `service.repairs` for the standalone service's cache)."""

from __future__ import annotations

from typing import Any

from .base import is_postgres


def open_shared_state(url: str, *, init: bool = False, holder: str = "") -> Any:
    """The state at `url` (`postgresql://...`, `sqlite:///PATH` or a path). Refusals are
    `vecmig.harness.state.StateError`, naming the place."""
    if is_postgres(url):
        from .pgstate import PostgresStateStore

        return PostgresStateStore.open(url, init=init)
    from vecmig.harness.state import SQLiteStore

    path = url.partition("://")[2] if url.startswith("sqlite://") else url
    return SQLiteStore.open(path, init=init, holder=holder, shared=True)
