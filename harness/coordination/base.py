"""The config store's port: where a fleet of layer instances and its one controller keep the
coordinator's state (the published phase and epoch, each instance's acknowledgement and lease)
and the few figures the controller's gates read from every instance.

A backend keeps the coordinator as `Coordinator.to_json()` and runs every decision on a copy
restored from it, inside one transaction (`decide`): load, decide on the store's clock, save.
So the decisions are the core's own, taken atomically, and lease expiry is judged on one clock
for every process: the store's. Each backend says which clock that is (`clock`):

* `SQLiteConfigStore` (one machine): `CLOCK_MONOTONIC`, which every process of a Linux machine
  shares, read inside the write transaction; a reboot (a new boot id) lapses every lease;
* `PostgresConfigStore` (a fleet): the server's `clock_timestamp()`, read inside the
  transaction. The server's clock must not step by more than the skew bound the leases allow
  (run it slewed by NTP, as database servers are).

Every call may raise `ConfigStoreError` (unreachable, restarting, locked): the caller keeps
what it knew and tries again; an instance that cannot renew its lease stops serving when the
lease runs out, which is what makes an unreachable store safe.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from vecmig.harness.core.phases import Coordinator

T = TypeVar("T")

SCHEMES = ("sqlite", "postgresql", "postgres")


class ConfigStoreError(Exception):
    """The config store did not answer as asked: the message says which store and why. A
    decision that raised this was not taken, unless the message says it may have been."""


class ConfigStoreExists(ConfigStoreError):
    """`initialise` found a migration there already."""


class ConfigStoreMissing(ConfigStoreError):
    """The store holds no migration (nobody ran `vecmig control --init` against it)."""


class ConfigStore(Protocol):
    """One migration's coordination state, shared by every process of a fleet."""

    url: str
    """Where the store is, without secrets (for messages)."""
    clock: str
    """Which clock judges leases, in words (see the module's docstring)."""

    def initialise(self, coordinator: Coordinator, settings: Mapping[str, Any]) -> None:
        """Create the store for a new migration; `ConfigStoreExists` if it holds one."""
        ...

    def settings(self) -> dict[str, Any]:
        """What `initialise` was given besides the coordinator (strategy, lease rules...)."""
        ...

    def decide(self, decision: Callable[[Coordinator, int], T], *, announce: bool = False) -> T:
        """Run `decision(coordinator, now)` on the stored coordinator inside one transaction,
        `now` being the store's clock, save what it changed, and return its result. With
        `announce`, tell every waiting instance (`wait`) once it committed."""
        ...

    def snapshot(self) -> tuple[Coordinator, int]:
        """The coordinator as stored, and the store's clock now (no lock taken)."""
        ...

    def now(self) -> int:
        """The store's clock (ns)."""
        ...

    def put(self, key: str, value: Mapping[str, Any]) -> None:
        """Keep a small JSON value under `key` (an instance's figures, the noise floor)."""
        ...

    def values(self, prefix: str) -> dict[str, dict[str, Any]]:
        """Every value whose key starts with `prefix`, by key."""
        ...

    def wait(self, timeout_s: float) -> bool:
        """Block until a decision was announced or `timeout_s` passed; True if announced.
        A backend without pushes sleeps and returns False: its callers poll."""
        ...

    def close(self) -> None: ...


def open_config_store(url: str, *, timeout_s: float = 2.0) -> ConfigStore:
    """The config store at `url`: `sqlite:///PATH` (or a plain path) for one machine,
    `postgresql://USER@HOST:PORT/DB` for a fleet. `timeout_s` bounds every call."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() == "sqlite":
        from .sqlite import SQLiteConfigStore

        path = rest if sep else url
        if sep and path.startswith("/") is False:
            raise ConfigStoreError(f"{url!r}: a SQLite config store is sqlite:///ABSOLUTE/PATH")
        return SQLiteConfigStore(path, timeout_s=timeout_s)
    if scheme.lower() in ("postgresql", "postgres"):
        from .postgres import PostgresConfigStore

        return PostgresConfigStore(url, timeout_s=timeout_s)
    raise ConfigStoreError(
        f"{url!r} is not a config store URL; use sqlite:///PATH (one machine) or "
        "postgresql://USER@HOST:PORT/DB (a fleet)"
    )


def is_postgres(url: str) -> bool:
    return url.partition("://")[0].lower() in ("postgresql", "postgres")


def redact(url: str) -> str:
    """`url` without a password, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    credentials, _, host = rest.partition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}@{host}"
