"""The Qdrant adapter: one side of a migration kept in a Qdrant collection.

What Qdrant does natively
  * HNSW search with cosine, dot or Euclidean distance; payload filters for metadata.
  * Conditional writes (server >= 1.16, and local mode): an upsert carrying `update_filter`
    overwrites an existing point only if the point matches the filter. Each fenced write
    carries `version < new version` as its guard, so the engine itself never lets an older
    version replace a newer one -- tombstones included, because they are points too.

What this layer does for it
  * Ids: Qdrant point ids are integers or UUIDs, so a record id maps to `uuid5(NAMESPACE, id)`
    and the original id travels in the payload (`record_id`), with `version` and `deleted`.
    Metadata sits under `metadata`, so a product's own keys cannot collide with ours.
  * Tombstones are points with no search vector (`deleted: true`): they never show in a
    search, but `get`, `scan` and the fence see them.
  * Applied or skipped: an upsert does not say whether its guard let it through, so the
    adapter reads the held versions first and decides, under a lock. That answer is exact
    within one process. With several writer processes a write may be reported applied while
    the engine's guard refused it (a newer version landed in between): the stored state is
    still correct, and the layer's verify-and-repair pass reconciles what was reported.
    Against a Qdrant server older than 1.16 the guard is not enforced and fencing is only
    read-compare-write under this process's lock.
  * Cosine: Qdrant normalises vectors stored under cosine distance, so with that metric the
    original vector is also stored, unindexed, under a second name (`raw`) and `get` returns it.
  * Scores: converted to `base.distance` (1 - similarity; squared Euclidean for L2).
  * Scan order: Qdrant pages by point id (the UUID), not by record id, and cannot order by a
    keyword. A scan page therefore reads every `(record_id, version, deleted)` (payload only)
    and sorts them: O(n) per page, fine for test and staging catalogs, not for billions.
  * Checksums are `base.checksums_of` over that same payload-only pass.
  * Local mode (`QdrantClient(":memory:")` or a path) is not thread-safe, so there every call
    takes the lock; against a server only writes do.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from typing import Any, TypeVar

import httpx
import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

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

__all__ = ["QdrantCluster", "point_id"]

#: uuid5 namespace of record ids; fixed forever, or existing collections stop resolving.
NAMESPACE = uuid.UUID("6f0c1c52-51b6-4d41-9a51-8f5ed3f0a7c1")
SEARCH_VECTOR = "v"
RAW_VECTOR = "raw"
SCROLL_PAGE = 1024

DISTANCES = {
    Metric.COSINE: models.Distance.COSINE,
    Metric.L2: models.Distance.EUCLID,
    Metric.INNER_PRODUCT: models.Distance.DOT,
}

T = TypeVar("T")


def point_id(record_id: str) -> str:
    """The Qdrant point id of a record id: stable across processes and engines."""
    return str(uuid.uuid5(NAMESPACE, record_id))


class QdrantCluster:
    """A `ClusterPort` over one Qdrant collection (created if missing)."""

    def __init__(
        self,
        client: QdrantClient,
        dim: int,
        metric: Metric = Metric.COSINE,
        collection: str = "vecmig",
        *,
        hnsw_ef: int = 128,
    ) -> None:
        self._client = client
        self._dim = dim
        self._metric = Metric(metric)
        self._collection = collection
        self._hnsw_ef = hnsw_ef
        self._lock = threading.RLock()
        options = getattr(client, "init_options", {}) or {}
        self._local = options.get("location") == ":memory:" or bool(options.get("path"))
        self._read_lock: AbstractContextManager[Any] = self._lock if self._local else nullcontext()
        self._call(self._ensure_collection, write=True)

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
        with self._read_lock:
            points = self._call(
                lambda: self._client.retrieve(
                    self._collection,
                    ids=[point_id(i) for i in wanted],
                    with_payload=True,
                    with_vectors=[self._vector_name_for_get()],
                )
            )
        found = {}
        for p in points:
            stored = self._stored(p.payload or {}, p.vector)
            found[stored.id] = stored
        return {i: found[i] for i in wanted if i in found}

    def search(self, vector: Vector, k: int, filter: Filter | None = None) -> list[Hit]:
        query = validate_vector(vector, self._dim)
        validate_k(k)
        must: list[models.Condition] = [
            models.FieldCondition(key="deleted", match=models.MatchValue(value=False))
        ]
        must.extend(_filter_conditions(filter))
        # local mode searches exactly and warns about search parameters
        search_params = None if self._local else models.SearchParams(hnsw_ef=max(self._hnsw_ef, k))
        with self._read_lock:
            response = self._call(
                lambda: self._client.query_points(
                    self._collection,
                    query=query.tolist(),
                    using=SEARCH_VECTOR,
                    query_filter=models.Filter(must=must),
                    search_params=search_params,
                    limit=k,
                    with_payload=["record_id", "version"],
                )
            )
        hits = [
            Hit(p.payload["record_id"], int(p.payload["version"]), self._distance(p.score))
            for p in response.points
            if p.payload
        ]
        hits.sort(key=lambda h: h.score)
        return hits[:k]

    def scan(self, cursor: str | None, limit: int) -> ScanPage:
        validate_scan_limit(limit)
        if cursor is not None and not isinstance(cursor, str):
            raise InvalidRequest(f"scan cursor must be a record id or None, got {cursor!r}")
        with self._read_lock:
            ahead = sorted(t for t in self._triples() if cursor is None or t[0] > cursor)
            page_ids = [t[0] for t in ahead[:limit]]
            found = self.get(page_ids) if page_ids else {}
        # an id deleted from the collection between the two reads is simply not in this page
        items = tuple(found[i] for i in page_ids if i in found)
        more = len(ahead) > limit
        return ScanPage(items, page_ids[-1] if more else None)

    def count(self) -> Counts:
        def counted(deleted: bool) -> int:
            flt = models.Filter(
                must=[models.FieldCondition(key="deleted", match=models.MatchValue(value=deleted))]
            )
            return int(self._client.count(self._collection, count_filter=flt, exact=True).count)

        with self._read_lock:
            return self._call(lambda: Counts(live=counted(False), tombstones=counted(True)))

    def checksums(self, buckets: int) -> list[RangeChecksum]:
        validate_buckets(buckets)
        with self._read_lock:
            return checksums_of(self._triples(), buckets)

    def health(self) -> Health:
        try:
            with self._read_lock:
                info = self._call(lambda: self._client.get_collection(self._collection))
        except ClusterError as exc:
            return Health(False, {"collection": self._collection, "error": str(exc)})
        status = str(getattr(info.status, "value", info.status))
        ok = status in ("green", "yellow", "grey")
        return Health(ok, {"collection": self._collection, "status": status})

    # -- writes ---------------------------------------------------------------------------------

    def _write(self, items: list[tuple[str, int, Record | None]], fenced: bool) -> dict[str, bool]:
        result: dict[str, bool] = {}
        if not items:
            return result
        with self._lock:
            held = self._held_versions([i for i, _, _ in items]) if fenced else {}
            operations = []
            for record_id, version, rec in items:
                applied = not fenced or version > held.get(record_id, -1)
                result[record_id] = applied
                if not applied:
                    continue
                held[record_id] = version
                guard = None
                if fenced:
                    guard = models.Filter(
                        must=[models.FieldCondition(key="version", range=models.Range(lt=version))]
                    )
                operations.append(
                    models.UpsertOperation(
                        upsert=models.PointsList(
                            points=[self._point(record_id, version, rec)], update_filter=guard
                        )
                    )
                )
            if operations:
                self._call(
                    lambda: self._client.batch_update_points(
                        self._collection, operations, wait=True
                    ),
                    write=True,
                )
        return result

    def _point(self, record_id: str, version: int, rec: Record | None) -> models.PointStruct:
        payload: dict[str, Any] = {
            "record_id": record_id,
            "version": version,
            "deleted": rec is None,
        }
        vectors: dict[str, Any] = {}
        if rec is not None:
            payload["metadata"] = dict(rec.metadata)
            vectors[SEARCH_VECTOR] = rec.vector.tolist()
            if self._metric is Metric.COSINE:
                vectors[RAW_VECTOR] = rec.vector.tolist()
        return models.PointStruct(id=point_id(record_id), vector=vectors, payload=payload)

    def _held_versions(self, ids: list[str]) -> dict[str, int]:
        points = self._call(
            lambda: self._client.retrieve(
                self._collection,
                ids=sorted({point_id(i) for i in ids}),
                with_payload=["record_id", "version"],
                with_vectors=False,
            )
        )
        return {p.payload["record_id"]: int(p.payload["version"]) for p in points if p.payload}

    # -- reads ----------------------------------------------------------------------------------

    def _triples(self) -> Iterator[tuple[str, int, bool]]:
        """Every `(record_id, version, deleted)` in the collection, in point-id order."""
        offset: Any = None
        while True:
            points, offset = self._call(
                partial(
                    self._client.scroll,
                    self._collection,
                    limit=SCROLL_PAGE,
                    offset=offset,
                    with_payload=["record_id", "version", "deleted"],
                    with_vectors=False,
                )
            )
            for p in points:
                pl = p.payload or {}
                yield pl["record_id"], int(pl["version"]), bool(pl["deleted"])
            if offset is None:
                return

    def _stored(self, payload: Mapping[str, Any], vectors: Any) -> Stored:
        record_id, version = payload["record_id"], int(payload["version"])
        if payload.get("deleted"):
            return Stored(record_id, version, True)
        raw = (vectors or {}).get(self._vector_name_for_get())
        vector = None if raw is None else np.asarray(raw, dtype=np.float32)
        return Stored(record_id, version, False, vector, dict(payload.get("metadata") or {}))

    def _vector_name_for_get(self) -> str:
        return RAW_VECTOR if self._metric is Metric.COSINE else SEARCH_VECTOR

    def _distance(self, score: float) -> float:
        if self._metric is Metric.L2:
            return float(score) ** 2  # Qdrant answers the Euclidean distance; base uses its square
        return 1.0 - float(score)  # cosine and dot answer a similarity

    # -- setup and errors -----------------------------------------------------------------------

    def _ensure_collection(self) -> None:
        if self._client.collection_exists(self._collection):
            self._check_existing()
            return
        vectors = {
            SEARCH_VECTOR: models.VectorParams(size=self._dim, distance=DISTANCES[self._metric])
        }
        if self._metric is Metric.COSINE:
            # stored only to give back the exact vector: never searched, so never indexed
            vectors[RAW_VECTOR] = models.VectorParams(
                size=self._dim,
                distance=models.Distance.DOT,
                hnsw_config=models.HnswConfigDiff(m=0),
                on_disk=True,
            )
        self._client.create_collection(self._collection, vectors_config=vectors)
        if not self._local:
            for field, schema in (
                ("record_id", models.PayloadSchemaType.KEYWORD),
                ("version", models.PayloadSchemaType.INTEGER),
                ("deleted", models.PayloadSchemaType.BOOL),
            ):
                self._client.create_payload_index(self._collection, field, schema, wait=True)

    def _check_existing(self) -> None:
        params = self._client.get_collection(self._collection).config.params.vectors
        search = params.get(SEARCH_VECTOR) if isinstance(params, dict) else None
        if search is None or search.size != self._dim or search.distance != DISTANCES[self._metric]:
            raise InvalidRequest(
                f"Qdrant collection {self._collection!r} exists with vectors {params!r}; this side "
                f"expects a {SEARCH_VECTOR!r} vector of size {self._dim} and distance "
                f"{DISTANCES[self._metric].value}. Use another collection name or drop it."
            )

    def _call(self, fn: Callable[[], T], *, write: bool = False) -> T:
        """Run one client call, translating its errors into the port's three, once."""
        try:
            return fn()
        except ClusterError:
            raise
        except UnexpectedResponse as exc:
            code = exc.status_code or 0
            if code in (400, 404, 409, 422):
                raise InvalidRequest(f"Qdrant rejected the request: {exc}") from exc
            if code in (502, 503, 429):
                raise Unavailable(f"Qdrant is unavailable ({code}): {exc}") from exc
            raise Timeout(f"Qdrant answered {code}; the call may have taken effect: {exc}") from exc
        except ResponseHandlingException as exc:
            raise _transport_error(exc.source, write) from exc
        except httpx.HTTPError as exc:
            raise _transport_error(exc, write) from exc
        except (ValueError, KeyError) as exc:  # local mode reports bad requests this way
            raise InvalidRequest(f"Qdrant rejected the request: {exc}") from exc
        except Exception as exc:  # grpc and anything else unforeseen: effect unknown
            name = getattr(getattr(exc, "code", lambda: None)(), "name", "")
            if name == "UNAVAILABLE":
                raise Unavailable(f"Qdrant is unavailable: {exc}") from exc
            if name == "INVALID_ARGUMENT":
                raise InvalidRequest(f"Qdrant rejected the request: {exc}") from exc
            raise Timeout(f"Qdrant call failed; it may have taken effect: {exc!r}") from exc


def _transport_error(exc: BaseException, write: bool) -> ClusterError:
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return Unavailable(f"cannot reach Qdrant: {exc!r}")
    if isinstance(exc, httpx.TimeoutException):
        return Timeout(f"Qdrant did not answer in time: {exc!r}")
    if write:
        return Timeout(f"Qdrant call failed mid-way; it may have taken effect: {exc!r}")
    return Unavailable(f"Qdrant call failed: {exc!r}")


def _filter_conditions(flt: Filter | None) -> list[models.Condition]:
    """Equality on each metadata key, as `base.matches` defines a filter."""
    if not flt:
        return []
    if not isinstance(flt, Mapping):
        raise InvalidRequest(f"a filter is a mapping of metadata key to value, got {flt!r}")
    conditions: list[models.Condition] = []
    for key, value in flt.items():
        if not isinstance(key, str) or not key or any(c in key for c in ".[]"):
            raise InvalidRequest(f"filter key must be a plain metadata name, got {key!r}")
        field = f"metadata.{key}"
        if isinstance(value, bool | int | str):
            conditions.append(
                models.FieldCondition(key=field, match=models.MatchValue(value=value))
            )
        elif isinstance(value, float):
            conditions.append(
                models.FieldCondition(key=field, range=models.Range(gte=value, lte=value))
            )
        else:
            raise InvalidRequest(
                f"filter value for {key!r} must be a bool, int, float or str, got {value!r}"
            )
    return conditions
