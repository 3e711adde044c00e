"""Where a sweep's results live as they arrive: one SQLite file, one row per task, committed
before the next result is read. A sweep killed halfway loses only the seeds still running;
`vecmig sweep --resume` asks the store which tasks of its list have a row and runs the rest.

The key is `Task.key(fingerprint)`: scenario name and content digest, strategy, seed, swarm,
buggify, duration. One file may hold several sweeps (say safe and naive); a sweep reads back
only the rows of its own task list.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vecmig.sim.sweep_task import SeedResult, Signature, Task

SCHEMA_VERSION = 1
"""`PRAGMA user_version` of the file; a change of columns is a new version."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    key         TEXT PRIMARY KEY,
    scenario    TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    strategy    TEXT NOT NULL,
    seed        INTEGER NOT NULL,
    swarm       INTEGER NOT NULL,
    buggify     INTEGER NOT NULL,
    duration    REAL,
    outcome     TEXT NOT NULL,
    stalled     INTEGER NOT NULL,
    counts      TEXT NOT NULL,
    signature   TEXT,
    end_phase   TEXT NOT NULL,
    families    TEXT NOT NULL,
    replay      TEXT NOT NULL,
    report      TEXT NOT NULL,
    history     TEXT,
    wall_s      REAL NOT NULL,
    cpu_s       REAL NOT NULL,
    worker      TEXT NOT NULL,
    raised      TEXT,
    stored_at   REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS results_outcome ON results (outcome);
"""


class StoreError(Exception):
    """The results file cannot be used as it is; the message says what to do."""


class ResultStore:
    """The results of one or more sweeps in a SQLite file. `history` is the path (relative to
    the file's folder) of a failing seed's history.jsonl; passing seeds keep only `report`."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path)
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        fresh = not self.db.execute(
            "SELECT name FROM sqlite_master WHERE name = 'results'"
        ).fetchone()
        if not fresh and version != SCHEMA_VERSION:
            self.db.close()
            raise StoreError(
                f"{path} holds results in another layout (schema {version}, this vecmig writes "
                f"{SCHEMA_VERSION}): give the sweep another --out, or move the file away"
            )
        self.db.executescript(SCHEMA)
        self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self.db.commit()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    def keys(self) -> set[str]:
        return {row[0] for row in self.db.execute("SELECT key FROM results")}

    def put(self, result: SeedResult, fingerprint: str, history: str | None) -> None:
        """Store one result (replacing an older row of the same task) and commit."""
        t = result.task
        self.db.execute(
            "INSERT OR REPLACE INTO results VALUES "
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                t.key(fingerprint),
                t.scenario,
                fingerprint,
                t.strategy,
                t.seed,
                int(t.swarm),
                int(t.buggify),
                t.duration,
                result.outcome,
                int(result.stalled),
                json.dumps(result.counts),
                None if result.signature is None else json.dumps(result.signature.to_json()),
                result.end_phase,
                json.dumps(list(result.families)),
                result.replay,
                json.dumps(result.report, default=str),
                history,
                result.wall_s,
                result.cpu_s,
                result.worker,
                result.raised,
                time.time(),
            ),
        )
        self.db.commit()

    def forget(self, keys: Iterable[str]) -> None:
        """Drop these tasks' rows: a sweep that does not resume starts its seeds afresh."""
        self.db.executemany("DELETE FROM results WHERE key = ?", ((k,) for k in keys))
        self.db.commit()

    def rows(self, keys: Iterable[str]) -> Iterator[StoredResult]:
        """The stored rows of these tasks, in seed order."""
        wanted = set(keys)
        cursor = self.db.execute(
            "SELECT key, scenario, strategy, seed, swarm, buggify, duration, outcome, stalled, "
            "counts, signature, end_phase, families, replay, history, wall_s, cpu_s, worker, "
            "raised, stored_at "
            "FROM results ORDER BY seed"
        )
        for row in cursor:
            if row[0] in wanted:
                yield StoredResult.from_row(row)


@dataclass(frozen=True)
class StoredResult:
    """A result as the store gives it back (its report stays in the file)."""

    key: str
    task: Task
    outcome: str
    stalled: bool
    counts: dict[str, int]
    signature: Signature | None
    end_phase: str
    families: tuple[str, ...]
    replay: str
    history: str | None
    wall_s: float
    cpu_s: float
    worker: str
    raised: str | None
    stored_at: float

    @property
    def failed(self) -> bool:
        return self.outcome != "valid"

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> StoredResult:
        key, scenario, strategy, seed, swarm, buggify, duration, outcome, stalled = row[:9]
        counts, signature, end_phase, families, replay, history = row[9:15]
        wall_s, cpu_s, worker, raised, at = row[15:]
        return cls(
            key=key,
            task=Task(scenario, seed, strategy, bool(buggify), duration, bool(swarm)),
            outcome=outcome,
            stalled=bool(stalled),
            counts=json.loads(counts),
            signature=None if signature is None else Signature.from_json(json.loads(signature)),
            end_phase=end_phase,
            families=tuple(json.loads(families)),
            replay=replay,
            history=history,
            wall_s=wall_s,
            cpu_s=cpu_s,
            worker=worker,
            raised=raised,
            stored_at=at,
        )
