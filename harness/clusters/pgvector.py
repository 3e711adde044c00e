"""The pgvector adapter: one side of a migration kept in a PostgreSQL table with pgvector.

What PostgreSQL + pgvector do natively
  * Fencing, atomically per row and across any number of writers:
    `INSERT ... ON CONFLICT (id) DO UPDATE ... WHERE stored.version < excluded.version
    RETURNING id` applies a write only if it is newer, and the returned ids say which were
    applied. Tombstones are rows of the same table (`deleted`, embedding NULL), so the same
    fence covers them. A batch is one statement: it applies whole or not at all.
  * HNSW search (`vector_cosine_ops`, `vector_l2_ops`, `vector_ip_ops`); tombstones have no
    embedding, so they are never in the index. `hnsw.ef_search` is raised to k per query and
    `hnsw.iterative_scan` (pgvector >= 0.8) keeps filtered searches from coming back short.
  * Metadata filters: `metadata @> filter` on a jsonb column (equality of each key), with a
    GIN index.
  * Scan: `WHERE id > cursor ORDER BY id LIMIT n` on the primary key. The id column is
    `COLLATE "C"`, so the order is the code-point order every other side uses.

What this layer does for it
  * Checksums: PostgreSQL has no blake2b, so `base.checksums_of` runs over a streamed
    `(id, version, deleted)` read (one pass, server-side cursor).
  * Scores: `<->` is the Euclidean distance, squared here to match `base.distance`; `<#>`
    is the negative inner product, turned into `1 - ip`.
  * Errors: translated once in `_translate` (connection errors -> Unavailable before the
    statement was sent, Timeout after; cancelled statements -> Timeout; data errors ->
    InvalidRequest). A broken connection is reopened on the next call.
  * One connection per side, used under a lock (the live service calls from threads).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from typing import Any, TypeVar

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql
from psycopg.types.json import Jsonb

from .base import (
    ClusterError,
    Counts,
    Filter,
    Health,
    Hit,
    InvalidRequest,
    Metric,
    RangeChecksum,
    Record,
    ScanPage,
    Stored,
    Timeout,
    Tombstone,
    Unavailable,
    Vector,
    checksums_of,
    validate_batch,
    validate_buckets,
    validate_id,
    validate_k,
    validate_record,
    validate_scan_limit,
    validate_tombstones,
    validate_vector,
)

__all__ = ["PgVectorCluster"]

OPCLASS = {
    Metric.COSINE: ("vector_cosine_ops", "<=>"),
    Metric.L2: ("vector_l2_ops", "<->"),
    Metric.INNER_PRODUCT: ("vector_ip_ops", "<#>"),
}
TABLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,50}$")

T = TypeVar("T")


class PgVectorCluster:
    """A `ClusterPort` over one PostgreSQL table (created with its indexes if missing)."""

    def __init__(
        self,
        dsn: str,
        dim: int,
        metric: Metric = Metric.COSINE,
        table: str = "vecmig_items",
        *,
        timeout: float = 10.0,
        ef_search: int = 64,
    ) -> None:
        if not TABLE_NAME.match(table):
            raise InvalidRequest(
                f"table name {table!r} must be lower-case letters, digits and '_' (at most 51)"
            )
        self._dsn = dsn
        self._dim = dim
        self._metric = Metric(metric)
        self._table = table
        self._timeout = timeout
        self._ef_search = ef_search
        self._lock = threading.RLock()
        self._conn: psycopg.Connection[Any] | None = None
        self._op = sql.SQL(OPCLASS[self._metric][1])
        self._t = sql.Identifier(table)
        self._call(self._ensure_table, write=True)

    @classmethod
    def connect(
        cls, dsn: str, dim: int, metric: Metric = Metric.COSINE, *, table: str = "vecmig_items"
    ) -> PgVectorCluster:
        return cls(dsn, dim, metric, table)

    # -- the port -------------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def metric(self) -> Metric:
        return self._metric

    def upsert(self, records: Sequence[Record], *, fenced: bool = True) -> dict[str, bool]:
        checked = [validate_record(r, self._dim) for r in validate_batch(records, Record, "upsert")]
        return self._write(
            [(r.id, r.version, False, r.vector, Jsonb(dict(r.metadata))) for r in checked], fenced
        )

    def delete(self, tombstones: Sequence[Tombstone], *, fenced: bool = True) -> dict[str, bool]:
        items = validate_tombstones(tombstones)
        return self._write([(t.id, t.version, True, None, Jsonb({})) for t in items], fenced)

    def get(self, ids: Sequence[str]) -> dict[str, Stored]:
        wanted = [validate_id(i) for i in ids]
        if not wanted:
            return {}
        query = sql.SQL(
            "SELECT id, version, deleted, embedding, metadata FROM {} WHERE id = ANY(%s)"
        ).format(self._t)
        rows = self._call(lambda c: c.execute(query, (wanted,)).fetchall())
        found = {row[0]: _stored(row) for row in rows}
        return {i: found[i] for i in wanted if i in found}

    def search(self, vector: Vector, k: int, filter: Filter | None = None) -> list[Hit]:
        query_vector = validate_vector(vector, self._dim)
        validate_k(k)
        where = sql.SQL("")
        params: list[Any] = [query_vector]
        if filter:
            where = sql.SQL("AND metadata @> %s")
            params.append(Jsonb(_check_filter(filter)))
        params.append(query_vector)
        params.append(k)
        query = sql.SQL(
            "SELECT id, version, embedding {op} %s AS d FROM {t} "
            "WHERE embedding IS NOT NULL {where} ORDER BY embedding {op} %s LIMIT %s"
        ).format(op=self._op, t=self._t, where=where)

        def run(c: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
            with c.transaction():
                # SET LOCAL: these last only for this transaction
                c.execute(
                    "SELECT set_config('hnsw.ef_search', %s, true), "
                    "set_config('hnsw.iterative_scan', 'strict_order', true)",
                    (str(min(max(self._ef_search, k), 1000)),),
                )
                return c.execute(query, params).fetchall()

        rows = self._call(run)
        return [Hit(row[0], int(row[1]), self._score(float(row[2]))) for row in rows]

    def scan(self, cursor: str | None, limit: int) -> ScanPage:
        validate_scan_limit(limit)
        if cursor is not None and not isinstance(cursor, str):
            raise InvalidRequest(f"scan cursor must be a record id or None, got {cursor!r}")
        after = sql.SQL("") if cursor is None else sql.SQL("WHERE id > %(cursor)s")
        query = sql.SQL(
            "SELECT id, version, deleted, embedding, metadata FROM {t} {after} "
            "ORDER BY id LIMIT %(limit)s"
        ).format(t=self._t, after=after)
        # one row past the page says whether another page follows
        params = {"cursor": cursor, "limit": limit + 1}
        rows = self._call(lambda c: c.execute(query, params).fetchall())
        items = tuple(_stored(row) for row in rows[:limit])
        return ScanPage(items, items[-1].id if len(rows) > limit else None)

    def count(self) -> Counts:
        query = sql.SQL(
            "SELECT count(*) FILTER (WHERE NOT deleted), count(*) FILTER (WHERE deleted) FROM {}"
        ).format(self._t)
        row = self._call(lambda c: c.execute(query).fetchone())
        live, tombstones = row if row is not None else (0, 0)
        return Counts(live=int(live), tombstones=int(tombstones))

    def checksums(self, buckets: int) -> list[RangeChecksum]:
        validate_buckets(buckets)
        query = sql.SQL("SELECT id, version, deleted FROM {}").format(self._t)

        def run(c: psycopg.Connection[Any]) -> list[RangeChecksum]:
            with c.transaction(), c.cursor(name="vecmig_checksums") as cur:
                cur.itersize = 10_000
                cur.execute(query)
                triples: Iterator[tuple[str, int, bool]] = (
                    (row[0], int(row[1]), bool(row[2])) for row in cur
                )
                return checksums_of(triples, buckets)

        return self._call(run)

    def health(self) -> Health:
        try:
            exists = self._call(
                lambda c: c.execute("SELECT to_regclass(%s) IS NOT NULL", (self._table,)).fetchone()
            )
        except ClusterError as exc:
            return Health(False, {"table": self._table, "error": str(exc)})
        ok = bool(exists and exists[0])
        return Health(ok, {"table": self._table, "status": "ok" if ok else "table missing"})

    # -- helpers beyond the port ----------------------------------------------------------------

    def drop(self) -> None:
        """Drop this side's table (tests and teardown)."""
        self._call(
            lambda c: c.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(self._t)), write=True
        )

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- internals ------------------------------------------------------------------------------

    def _write(self, rows: list[tuple[Any, ...]], fenced: bool) -> dict[str, bool]:
        result: dict[str, bool] = {}
        # ON CONFLICT cannot touch one row twice in a statement: a batch naming an id more
        # than once goes in rounds, in order, each with distinct ids
        for batch in _rounds(rows):
            applied = self._call(partial(self._insert, rows=batch, fenced=fenced), write=True)
            for row in batch:
                result[row[0]] = row[0] in applied
        return result

    def _insert(
        self, c: psycopg.Connection[Any], rows: list[tuple[Any, ...]], fenced: bool
    ) -> set[str]:
        guard = sql.SQL("WHERE stored.version < excluded.version") if fenced else sql.SQL("")
        query = sql.SQL(
            "INSERT INTO {t} AS stored (id, version, deleted, embedding, metadata) "
            "SELECT * FROM unnest("
            "%s::text[], %s::bigint[], %s::boolean[], %s::vector[], %s::jsonb[]) "
            "ON CONFLICT (id) DO UPDATE SET "
            "version = excluded.version, deleted = excluded.deleted, "
            "embedding = excluded.embedding, metadata = excluded.metadata {guard} "
            "RETURNING id"
        ).format(t=self._t, guard=guard)
        columns = [list(col) for col in zip(*rows, strict=True)]
        return {row[0] for row in c.execute(query, columns).fetchall()}

    def _score(self, d: float) -> float:
        if self._metric is Metric.L2:
            return d * d  # pgvector gives the Euclidean distance; base.distance its square
        if self._metric is Metric.INNER_PRODUCT:
            return 1.0 + d  # <#> is -ip; base.distance is 1 - ip
        return d

    def _ensure_table(self, c: psycopg.Connection[Any]) -> None:
        opclass = OPCLASS[self._metric][0]
        with c.transaction():
            c.execute("CREATE EXTENSION IF NOT EXISTS vector")
            c.execute(
                sql.SQL(
                    'CREATE TABLE IF NOT EXISTS {t} (id text COLLATE "C" PRIMARY KEY, '
                    "version bigint NOT NULL, deleted boolean NOT NULL, "
                    "embedding vector({dim}), metadata jsonb NOT NULL DEFAULT '{{}}', "
                    "CHECK (deleted = (embedding IS NULL)))"
                ).format(t=self._t, dim=sql.Literal(self._dim))
            )
            held = c.execute(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = %s::regclass AND attname = 'embedding'",
                (self._table,),
            ).fetchone()
            if held is None or held[0] != f"vector({self._dim})":
                raise InvalidRequest(
                    f"table {self._table!r} exists with embedding {held and held[0]!r}; this side "
                    f"expects vector({self._dim}). Use another table or drop it."
                )
            c.execute(
                sql.SQL(
                    "CREATE INDEX IF NOT EXISTS {i} ON {t} USING hnsw (embedding {ops})"
                ).format(
                    i=sql.Identifier(f"{self._table}_hnsw_{self._metric.value}"),
                    t=self._t,
                    ops=sql.SQL(opclass),
                )
            )
            c.execute(
                sql.SQL(
                    "CREATE INDEX IF NOT EXISTS {i} ON {t} USING gin (metadata jsonb_path_ops)"
                ).format(i=sql.Identifier(f"{self._table}_metadata"), t=self._t)
            )

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            ms = int(self._timeout * 1000)
            conn = psycopg.connect(
                self._dsn,
                autocommit=True,
                connect_timeout=max(1, int(self._timeout)),
                options=f"-c statement_timeout={ms} -c lock_timeout={ms}",
            )
            try:
                register_vector(conn)
            except psycopg.ProgrammingError:
                # the extension is not there yet: create it, then register its types
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
                register_vector(conn)
            self._conn = conn
        return self._conn

    def _call(self, fn: Callable[[psycopg.Connection[Any]], T], *, write: bool = False) -> T:
        """Run `fn` on the connection, translating its errors into the port's three, once."""
        with self._lock:
            try:
                conn = self._connection()
            except ClusterError:
                raise
            except psycopg.Error as exc:
                raise Unavailable(f"cannot connect to PostgreSQL: {exc}") from exc
            try:
                return fn(conn)
            except ClusterError:
                raise
            except psycopg.Error as exc:
                raise _translate(exc, write) from exc


def _translate(exc: psycopg.Error, write: bool) -> ClusterError:
    state = exc.sqlstate or ""
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return Timeout(f"PostgreSQL cancelled the statement (timeout): {exc}")
    if state.startswith(("22", "23", "42")):
        return InvalidRequest(f"PostgreSQL rejected the request ({state}): {exc}")
    if state.startswith("08") or state in ("57P01", "57P02", "57P03", "53300"):
        return Unavailable(f"PostgreSQL is unavailable ({state}): {exc}")
    if isinstance(exc, psycopg.OperationalError) and write:
        # the connection broke mid-statement: the write may or may not have committed
        return Timeout(f"PostgreSQL connection failed mid-write; it may have applied: {exc}")
    if isinstance(exc, psycopg.OperationalError):
        return Unavailable(f"PostgreSQL connection failed: {exc}")
    if write:
        return Timeout(
            f"PostgreSQL write failed ({state or type(exc).__name__}); effect unknown: {exc}"
        )
    return Unavailable(f"PostgreSQL read failed ({state or type(exc).__name__}): {exc}")


def _stored(row: tuple[Any, ...]) -> Stored:
    record_id, version, deleted, embedding, metadata = row
    if deleted:
        return Stored(record_id, int(version), True)
    vector = np.asarray(
        embedding.to_numpy() if hasattr(embedding, "to_numpy") else embedding, dtype=np.float32
    )
    return Stored(record_id, int(version), False, vector, dict(metadata or {}))


def _rounds(rows: list[tuple[Any, ...]]) -> Iterator[list[tuple[Any, ...]]]:
    batch: list[tuple[Any, ...]] = []
    ids: set[str] = set()
    for row in rows:
        if row[0] in ids:
            yield batch
            batch, ids = [], set()
        batch.append(row)
        ids.add(row[0])
    if batch:
        yield batch


def _check_filter(flt: Filter) -> dict[str, Any]:
    """A filter as jsonb containment: equality of scalar values only (containment of a list or
    object is not equality, so those are refused rather than answered differently)."""
    if not isinstance(flt, Mapping):
        raise InvalidRequest(f"a filter is a mapping of metadata key to value, got {flt!r}")
    for key, value in flt.items():
        if not isinstance(key, str) or not key:
            raise InvalidRequest(f"filter key must be a non-empty string, got {key!r}")
        if not isinstance(value, bool | int | float | str):
            raise InvalidRequest(
                f"filter value for {key!r} must be a bool, int, float or str, got {value!r}"
            )
    return dict(flt)
