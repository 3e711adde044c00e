"""The Milvus adapter: one side of a migration kept in a Milvus collection (Milvus Lite in tests).

What Milvus does natively
  * Vector search (HNSW by default; cosine, inner product, squared L2) with boolean filter
    expressions over scalar and JSON fields: `deleted == false and metadata["category"] == 3`.
  * Upsert by primary key (the record id, a VARCHAR), and point reads by key (`get`).

What this layer does for it
  * Fencing: Milvus has no conditional write. The adapter reads the held versions, compares
    and writes under one lock, so fencing is atomic only among the writers of this process.
    Two layer processes writing the same id can race (an older version may land after a newer
    one); the layer's verify-and-repair pass (counts and per-range version checksums, then a
    fenced re-copy of what differs) is what covers that.
  * Tombstones: rows with `deleted = true`, empty metadata and a placeholder unit vector (a
    vector field cannot be NULL); every search filters them out.
  * Scan: Milvus cannot order a query by key, so a scan page reads every
    `(id, version, deleted)` with a query iterator, sorts, and fetches the page: O(n) per
    page, fine for test and staging catalogs. Checksums are `base.checksums_of` over that pass.
  * Scores: COSINE and IP answer a similarity, turned into `1 - s`; L2 is already squared.
  * Collections are created with Strong consistency, so a write is visible to the next read.
  * One lock around every call: MilvusClient over Milvus Lite is not meant for threads.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
from pymilvus import DataType, MilvusClient
from pymilvus.exceptions import (
    DataTypeNotMatchException,
    MilvusException,
    MilvusUnavailableException,
    ParamError,
)

from .base import (
    MAX_ID_LENGTH,
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

__all__ = ["MilvusCluster"]

METRICS = {Metric.COSINE: "COSINE", Metric.L2: "L2", Metric.INNER_PRODUCT: "IP"}
FIELDS = ["pk", "version", "deleted", "vec", "metadata"]
ITERATOR_BATCH = 1000

T = TypeVar("T")


class MilvusCluster:
    """A `ClusterPort` over one Milvus collection (created with its index if missing)."""

    def __init__(
        self,
        client: MilvusClient,
        dim: int,
        metric: Metric = Metric.COSINE,
        collection: str = "vecmig",
        *,
        ef: int = 128,
    ) -> None:
        self._client = client
        self._dim = dim
        self._metric = Metric(metric)
        self._collection = collection
        self._ef = ef
        self._lock = threading.RLock()
        self._placeholder = [1.0] + [0.0] * (dim - 1)
        self._owns_client = False
        self._call(self._ensure_collection, write=True)

    @classmethod
    def lite(
        cls, path: str, dim: int, metric: Metric = Metric.COSINE, *, collection: str = "vecmig"
    ) -> MilvusCluster:
        """A side in a Milvus Lite database file (embedded; started by pymilvus)."""
        try:
            client = MilvusClient(path)
        except MilvusException as exc:
            raise Unavailable(f"cannot open Milvus Lite at {path!r}: {exc}") from exc
        side = cls(client, dim, metric, collection)
        side._owns_client = True
        return side

    # -- the port -------------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def metric(self) -> Metric:
        return self._metric

    def upsert(self, records: Sequence[Record], *, fenced: bool = True) -> dict[str, bool]:
        checked = [validate_record(r, self._dim) for r in validate_batch(records, Record, "upsert")]
        return self._write([(r.id, r.version, r) for r in checked], fenced)

    def delete(self, tombstones: Sequence[Tombstone], *, fenced: bool = True) -> dict[str, bool]:
        items = validate_tombstones(tombstones)
        return self._write([(t.id, t.version, None) for t in items], fenced)

    def get(self, ids: Sequence[str]) -> dict[str, Stored]:
        wanted = [validate_id(i) for i in ids]
        if not wanted:
            return {}
        rows = self._call(
            lambda: self._client.get(
                self._collection, ids=sorted(set(wanted)), output_fields=FIELDS
            )
        )
        found = {row["pk"]: self._stored(row) for row in rows}
        return {i: found[i] for i in wanted if i in found}

    def search(self, vector: Vector, k: int, filter: Filter | None = None) -> list[Hit]:
        query = validate_vector(vector, self._dim)
        validate_k(k)
        expression = " and ".join(["deleted == false", *_filter_terms(filter)])
        results = self._call(
            lambda: self._client.search(
                self._collection,
                data=[query.tolist()],
                limit=k,
                filter=expression,
                output_fields=["version"],
                search_params={
                    "metric_type": METRICS[self._metric],
                    "params": {"ef": max(self._ef, k)},
                },
            )
        )
        hits = [
            Hit(
                str(r["pk"] if "pk" in r else r["id"]),
                int(r["entity"]["version"]),
                self._score(r["distance"]),
            )
            for r in (results[0] if results else [])
        ]
        hits.sort(key=lambda h: h.score)
        return hits[:k]

    def scan(self, cursor: str | None, limit: int) -> ScanPage:
        validate_scan_limit(limit)
        if cursor is not None and not isinstance(cursor, str):
            raise InvalidRequest(f"scan cursor must be a record id or None, got {cursor!r}")
        with self._lock:
            ahead = sorted(t[0] for t in self._triples() if cursor is None or t[0] > cursor)
            page_ids = ahead[:limit]
            found = self.get(page_ids) if page_ids else {}
        items = tuple(found[i] for i in page_ids if i in found)
        return ScanPage(items, page_ids[-1] if len(ahead) > limit else None)

    def count(self) -> Counts:
        def counted(deleted: bool) -> int:
            rows = self._client.query(
                self._collection,
                filter=f"deleted == {str(deleted).lower()}",
                output_fields=["count(*)"],
            )
            return int(rows[0]["count(*)"]) if rows else 0

        return self._call(lambda: Counts(live=counted(False), tombstones=counted(True)))

    def checksums(self, buckets: int) -> list[RangeChecksum]:
        validate_buckets(buckets)
        with self._lock:
            return checksums_of(self._triples(), buckets)

    def health(self) -> Health:
        try:
            exists = self._call(lambda: self._client.has_collection(self._collection))
        except ClusterError as exc:
            return Health(False, {"collection": self._collection, "error": str(exc)})
        return Health(bool(exists), {"collection": self._collection, "exists": str(bool(exists))})

    # -- helpers beyond the port ----------------------------------------------------------------

    def clear(self) -> None:
        """Remove every record and tombstone (tests reuse a collection this way)."""
        self._call(lambda: self._client.delete(self._collection, filter='pk != ""'), write=True)

    def drop(self) -> None:
        self._call(lambda: self._client.drop_collection(self._collection), write=True)

    def close(self) -> None:
        """Close the client if this side opened it (`lite`); a shared client stays open."""
        if self._owns_client:
            with self._lock:
                self._client.close()

    # -- internals ------------------------------------------------------------------------------

    def _write(self, items: list[tuple[str, int, Record | None]], fenced: bool) -> dict[str, bool]:
        result: dict[str, bool] = {}
        if not items:
            return result
        with self._lock:
            held = self._held_versions([i for i, _, _ in items]) if fenced else {}
            rows: dict[str, dict[str, Any]] = {}  # one row per id: the last one applied wins
            for record_id, version, rec in items:
                applied = not fenced or version > held.get(record_id, -1)
                result[record_id] = applied
                if applied:
                    held[record_id] = version
                    rows[record_id] = self._row(record_id, version, rec)
            if rows:
                self._call(
                    lambda: self._client.upsert(self._collection, list(rows.values())), write=True
                )
        return result

    def _row(self, record_id: str, version: int, rec: Record | None) -> dict[str, Any]:
        if rec is None:
            return {
                "pk": record_id,
                "version": version,
                "deleted": True,
                "vec": self._placeholder,
                "metadata": {},
            }
        return {
            "pk": record_id,
            "version": version,
            "deleted": False,
            "vec": rec.vector.tolist(),
            "metadata": dict(rec.metadata),
        }

    def _held_versions(self, ids: list[str]) -> dict[str, int]:
        rows = self._call(
            lambda: self._client.get(
                self._collection, ids=sorted(set(ids)), output_fields=["version"]
            )
        )
        return {row["pk"]: int(row["version"]) for row in rows}

    def _triples(self) -> Iterator[tuple[str, int, bool]]:
        iterator = self._call(
            lambda: self._client.query_iterator(
                self._collection,
                batch_size=ITERATOR_BATCH,
                filter='pk != ""',
                output_fields=["pk", "version", "deleted"],
            )
        )
        try:
            while True:
                batch = self._call(iterator.next)
                if not batch:
                    return
                for row in batch:
                    yield row["pk"], int(row["version"]), bool(row["deleted"])
        finally:
            iterator.close()

    def _stored(self, row: Mapping[str, Any]) -> Stored:
        if row["deleted"]:
            return Stored(row["pk"], int(row["version"]), True)
        vector = np.asarray(row["vec"], dtype=np.float32)
        return Stored(
            row["pk"], int(row["version"]), False, vector, dict(row.get("metadata") or {})
        )

    def _score(self, distance: float) -> float:
        if self._metric is Metric.L2:
            return float(distance)  # Milvus's L2 is already the squared distance
        return 1.0 - float(distance)  # COSINE and IP answer a similarity

    def _ensure_collection(self) -> None:
        if self._client.has_collection(self._collection):
            self._check_existing()
            # A collection another process created (or this one before a restart) starts out
            # released: searches and queries fail until it is loaded again.
            self._client.load_collection(self._collection)
            return
        schema = self._client.create_schema(auto_id=False, enable_dynamic_field=False)
        # max_length counts bytes: an id of MAX_ID_LENGTH characters may take 4 bytes each
        schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=4 * MAX_ID_LENGTH)
        schema.add_field("version", DataType.INT64)
        schema.add_field("deleted", DataType.BOOL)
        schema.add_field("vec", DataType.FLOAT_VECTOR, dim=self._dim)
        schema.add_field("metadata", DataType.JSON)
        index = self._client.prepare_index_params()
        index.add_index(
            field_name="vec",
            index_type="HNSW",
            metric_type=METRICS[self._metric],
            params={"M": 16, "efConstruction": 200},
        )
        self._client.create_collection(
            self._collection, schema=schema, index_params=index, consistency_level="Strong"
        )

    def _check_existing(self) -> None:
        info = self._client.describe_collection(self._collection)
        fields = {f["name"]: f for f in info.get("fields", [])}
        vec = fields.get("vec", {})
        dim = (vec.get("params") or {}).get("dim")
        if set(FIELDS) - set(fields) or int(dim or -1) != self._dim:
            raise InvalidRequest(
                f"Milvus collection {self._collection!r} exists with fields {sorted(fields)} and "
                f"vec dim {dim!r}; this side expects {FIELDS} with dim {self._dim}. "
                "Use another collection name or drop it."
            )

    def _call(self, fn: Callable[[], T], *, write: bool = False) -> T:
        """Run one client call, translating its errors into the port's three, once."""
        with self._lock:
            try:
                return fn()
            except ClusterError:
                raise
            except MilvusUnavailableException as exc:
                raise Unavailable(f"Milvus is unavailable: {exc}") from exc
            except (ParamError, DataTypeNotMatchException) as exc:
                raise InvalidRequest(f"Milvus rejected the request: {exc}") from exc
            except MilvusException as exc:
                text = str(exc).lower()
                if "deadline" in text or "timeout" in text:
                    raise Timeout(f"Milvus did not answer in time: {exc}") from exc
                if write:
                    raise Timeout(f"Milvus write failed; it may have taken effect: {exc}") from exc
                raise Unavailable(f"Milvus read failed: {exc}") from exc
            except Exception as exc:  # grpc errors and anything else: say what is known
                name = getattr(getattr(exc, "code", lambda: None)(), "name", "")
                if name == "UNAVAILABLE":
                    raise Unavailable(f"Milvus is unavailable: {exc}") from exc
                if name == "INVALID_ARGUMENT":
                    raise InvalidRequest(f"Milvus rejected the request: {exc}") from exc
                raise Timeout(f"Milvus call failed; it may have taken effect: {exc!r}") from exc


def _filter_terms(flt: Filter | None) -> list[str]:
    """Equality on each metadata key as Milvus expressions. Strings are written as JSON
    strings (quotes and backslashes escaped); non-ASCII characters are passed as they are."""
    if not flt:
        return []
    if not isinstance(flt, Mapping):
        raise InvalidRequest(f"a filter is a mapping of metadata key to value, got {flt!r}")
    terms = []
    for key, value in flt.items():
        if not isinstance(key, str) or not key or any(ord(c) < 32 for c in key):
            raise InvalidRequest(f"filter key must be a non-empty printable string, got {key!r}")
        field = f"metadata[{json.dumps(key, ensure_ascii=False)}]"
        if isinstance(value, bool):
            terms.append(f"{field} == {str(value).lower()}")
        elif isinstance(value, int | float):
            if not np.isfinite(value):
                raise InvalidRequest(f"filter value for {key!r} must be finite, got {value!r}")
            terms.append(f"{field} == {value!r}")
        elif isinstance(value, str):
            if any(ord(c) < 32 for c in value):
                raise InvalidRequest(f"filter value for {key!r} contains control characters")
            terms.append(f"{field} == {json.dumps(value, ensure_ascii=False)}")
        else:
            raise InvalidRequest(
                f"filter value for {key!r} must be a bool, int, float or str, got {value!r}"
            )
    return terms
