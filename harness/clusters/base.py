"""The cluster port: what the migration core needs from any side of a migration.

Every side -- the fake HNSW cluster, a cluster server reached over HTTP, pgvector, Qdrant,
Milvus -- implements `ClusterPort`. It is small and synchronous on purpose: the sans-I/O core
never calls it directly; the drivers do, translating the core's requests into these calls.

Rules every adapter keeps:

* Versions are integers, strictly increasing per id. A tombstone `(id, version)` is a delete
  and is kept (and scanned) until the migration ends.
* `fenced=True` writes apply only if strictly newer than what the side holds for that id,
  tombstones included. `fenced=False` writes overwrite whatever is there (the naive plan).
* Errors leave the adapter only as `Unavailable`, `Timeout` or `InvalidRequest`, translated
  once, at the boundary. `Unavailable` means the call certainly had no effect; `Timeout`
  means it may or may not have taken effect.
* `checksums` uses `bucket_of` and `fold` below, so that two different engines holding the
  same `(id, version, deleted)` triples produce the same numbers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]
Metadata = Mapping[str, Any]
Filter = Mapping[str, Any]
"""A metadata filter: every key must equal the given value, e.g.
`{"category": 3, "in_stock": True}`."""

MAX_ID_LENGTH = 128
MAX_SCAN_LIMIT = 100_000
MAX_BUCKETS = 65_536
"""Verification buckets a checksum call may ask for: each costs two integers of memory, and the
verification pass asks for 64. Without a bound one request could ask for 10^8 (gigabytes)."""
MAX_GET_IDS = 10_000


class Side(StrEnum):
    """The two sides of a migration."""

    OLD = "old"
    NEW = "new"

    @property
    def other(self) -> Side:
        return Side.NEW if self is Side.OLD else Side.OLD


VECTORLESS: Vector = np.zeros(0, dtype=np.float32)
"""The vector of a record whose embedding is not modelled: the scaled simulator's catalog
beyond its sample (`clusters.scaled`). Such a record is stored, versioned, fenced, scanned and
checksummed like any other, and never searched."""
VECTORLESS.flags.writeable = False


def searchable(vector: Vector | None) -> bool:
    """Whether a record with this vector can be a search hit (not a tombstone's None, not
    `VECTORLESS`)."""
    return vector is not None and vector.size > 0


class Metric(StrEnum):
    COSINE = "cosine"
    L2 = "l2"
    INNER_PRODUCT = "ip"


# ---------------------------------------------------------------------------------------------
# Errors, translated once at the adapter boundary.


class ClusterError(Exception):
    """Base class of the three errors an adapter may raise."""


class Unavailable(ClusterError):
    """The side (or every replica that could serve the call) is down: the call had no effect."""


class Timeout(ClusterError):
    """The call did not answer in time: it may or may not have taken effect."""


class InvalidRequest(ClusterError):
    """The request itself is wrong (dimension, NaN, id, k); retrying cannot help."""


# ---------------------------------------------------------------------------------------------
# Records.


@dataclass(frozen=True, slots=True, eq=False)
class Record:
    """A live record: a product's embedding with its metadata, at a version."""

    id: str
    vector: Vector
    metadata: Metadata
    version: int

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Record):
            return NotImplemented
        return (
            self.id == other.id
            and self.version == other.version
            and dict(self.metadata) == dict(other.metadata)
            and np.array_equal(self.vector, other.vector)
        )

    def __hash__(self) -> int:
        return hash((self.id, self.version))


@dataclass(frozen=True, slots=True)
class Tombstone:
    """A delete of `id` at `version`: blocks every fenced upsert at or below that version."""

    id: str
    version: int


@dataclass(frozen=True, slots=True, eq=False)
class Stored:
    """What a side holds for one id: a live record, or a tombstone (`deleted`, no vector)."""

    id: str
    version: int
    deleted: bool
    vector: Vector | None = None
    metadata: Metadata = field(default_factory=dict)

    def as_record(self) -> Record:
        if self.deleted or self.vector is None:
            raise ValueError(f"{self.id!r} is a tombstone at version {self.version}, not a record")
        return Record(self.id, self.vector, self.metadata, self.version)

    def as_tombstone(self) -> Tombstone:
        return Tombstone(self.id, self.version)


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result. `score` is a distance: lower is closer, whatever the metric."""

    id: str
    version: int
    score: float


@dataclass(frozen=True, slots=True)
class ScanPage:
    """One page of a resumable scan in ascending id order, tombstones included.

    `next_cursor` is None when the scan is complete; otherwise pass it back to continue.
    """

    items: tuple[Stored, ...]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class Counts:
    live: int
    tombstones: int


@dataclass(frozen=True, slots=True)
class RangeChecksum:
    """The fold of every `(id, version, deleted)` in one id bucket."""

    bucket: int
    count: int
    checksum: int


@dataclass(frozen=True, slots=True)
class Health:
    ok: bool
    detail: Mapping[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# The port.


@runtime_checkable
class ClusterPort(Protocol):
    """What the migration needs from one side. All calls are synchronous and may raise
    `Unavailable`, `Timeout` or `InvalidRequest`."""

    @property
    def dim(self) -> int: ...

    @property
    def metric(self) -> Metric: ...

    def upsert(self, records: Sequence[Record], *, fenced: bool = True) -> dict[str, bool]:
        """Write records; return, per id, whether it was applied (False: fenced out)."""
        ...

    def delete(self, tombstones: Sequence[Tombstone], *, fenced: bool = True) -> dict[str, bool]:
        """Write tombstones; return, per id, whether it was applied (False: fenced out)."""
        ...

    def get(self, ids: Sequence[str]) -> dict[str, Stored]:
        """What the side holds for these ids, tombstones included; unknown ids are absent."""
        ...

    def search(self, vector: Vector, k: int, filter: Filter | None = None) -> list[Hit]:
        """Approximate top-k live records by distance, ascending; at most k hits."""
        ...

    def scan(self, cursor: str | None, limit: int) -> ScanPage:
        """Up to `limit` ids strictly after `cursor` in ascending order, tombstones included."""
        ...

    def count(self) -> Counts: ...

    def checksums(self, buckets: int) -> list[RangeChecksum]:
        """Per-bucket counts and version checksums over all ids, tombstones included."""
        ...

    def health(self) -> Health: ...


@runtime_checkable
class MarkedSide(Protocol):
    """An optional extension of the port: a side that keeps a small note of the migration it
    takes part in (its id, phase and epoch), apart from its records. A restarted service
    checks its state against these notes before it serves: a stale copy of the state file, a
    state of another migration or a side swapped for another are refused, not served."""

    def read_marker(self) -> Mapping[str, Any] | None: ...

    def write_marker(self, marker: Mapping[str, Any]) -> None: ...


# ---------------------------------------------------------------------------------------------
# Shared helpers, so every adapter validates and checksums the same way.


def bucket_of(record_id: str, buckets: int) -> int:
    """The verification bucket of an id: stable across processes and engines."""
    digest = hashlib.blake2b(record_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % buckets


def fold(record_id: str, version: int, deleted: bool) -> int:
    """A 64-bit fingerprint of one `(id, version, deleted)`; a bucket's checksum XORs them."""
    payload = f"{record_id}\x00{version}\x00{int(deleted)}".encode()
    return int.from_bytes(hashlib.blake2b(payload, digest_size=8).digest(), "big")


def checksums_of(items: Iterable[tuple[str, int, bool]], buckets: int) -> list[RangeChecksum]:
    """Checksums computed the portable way, for adapters whose engine cannot do it natively."""
    counts = [0] * buckets
    sums = [0] * buckets
    for record_id, version, deleted in items:
        b = bucket_of(record_id, buckets)
        counts[b] += 1
        sums[b] ^= fold(record_id, version, deleted)
    return [RangeChecksum(b, counts[b], sums[b]) for b in range(buckets)]


def brief(value: object, limit: int = 60) -> str:
    """`repr(value)` cut to about `limit` characters, for error messages: an error names the
    bad input without echoing a megabyte of it back."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def validate_batch(items: object, kind: type, call: str) -> list[Any]:
    """A write batch as a list, refused whole (nothing applied) if it is not a sequence of
    `kind`. Every adapter checks batches this one way, so errors read the same everywhere."""
    if isinstance(items, str | bytes) or not isinstance(items, Sequence):
        raise InvalidRequest(
            f"{call} takes a sequence of {kind.__name__}, got {type(items).__name__}"
        )
    for position, item in enumerate(items):
        if not isinstance(item, kind):
            raise InvalidRequest(
                f"{call} item {position} is a {type(item).__name__}, expected {kind.__name__}"
            )
    return list(items)


def validate_tombstones(tombstones: object) -> list[Tombstone]:
    """A delete batch, every id and version checked before anything is applied."""
    items: list[Tombstone] = validate_batch(tombstones, Tombstone, "delete")
    for tombstone in items:
        validate_id(tombstone.id)
        validate_version(tombstone.version)
    return items


def validate_scan_limit(limit: object) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_SCAN_LIMIT:
        raise InvalidRequest(
            f"scan limit must be an integer from 1 to {MAX_SCAN_LIMIT}, got {brief(limit)}"
        )
    return limit


def validate_buckets(buckets: object) -> int:
    if isinstance(buckets, bool) or not isinstance(buckets, int) or not 1 <= buckets <= MAX_BUCKETS:
        raise InvalidRequest(
            f"buckets must be an integer from 1 to {MAX_BUCKETS}, got {brief(buckets)}"
        )
    return buckets


def validate_id(record_id: object) -> str:
    if not isinstance(record_id, str) or not record_id or len(record_id) > MAX_ID_LENGTH:
        raise InvalidRequest(
            f"record id must be a non-empty string of at most {MAX_ID_LENGTH} characters, "
            f"got {brief(record_id)}"
        )
    if any(ord(c) < 32 for c in record_id):
        raise InvalidRequest(f"record id {record_id!r} contains control characters")
    if not record_id.isascii():
        try:
            record_id.encode("utf-8")
        except UnicodeEncodeError:
            # A lone surrogate ("\ud800" in JSON) is no text: it cannot be hashed into a bucket,
            # stored by a real engine or written back as UTF-8.
            raise InvalidRequest(
                f"record id {record_id!r} is not valid Unicode text (it holds a lone surrogate)"
            ) from None
    return record_id


MAX_VERSION = (1 << 63) - 1
"""Versions are stored as signed 64-bit integers by every real engine (PostgreSQL bigint)."""


def validate_version(version: object) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version <= MAX_VERSION:
        raise InvalidRequest(
            f"version must be a non-negative integer below 2**63, got {brief(version)}"
        )
    return version


def max_component(dim: int) -> float:
    """The largest magnitude a vector component may have in `dim` dimensions: below it every
    distance between two vectors (squared L2 of a difference, an inner product, a norm) stays
    finite in float32. Past it a search scored NaN, and a NaN cannot be answered in JSON."""
    return float(np.sqrt(np.finfo(np.float32).max / (4.0 * max(dim, 1))))


def _check_magnitude(array: npt.NDArray[np.float32], dim: int, where: str = "") -> None:
    limit = max_component(dim)
    if array.size and float(np.abs(array).max()) > limit:
        raise InvalidRequest(
            f"{where}vector has a component beyond +-{limit:.3g}, where distances in {dim} "
            "dimensions overflow float32"
        )


def validate_vector(vector: object, dim: int) -> Vector:
    """Return `vector` as float32 of shape (dim,), or raise InvalidRequest naming the problem."""
    try:
        array = np.asarray(vector, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"vector is not a list of numbers: {exc}") from None
    if array.ndim != 1:
        raise InvalidRequest(f"vector must be one-dimensional, got shape {array.shape}")
    if array.shape[0] != dim:
        raise InvalidRequest(f"vector has dimension {array.shape[0]}, this side expects {dim}")
    if not np.all(np.isfinite(array)):
        bad = int(np.flatnonzero(~np.isfinite(array))[0])
        raise InvalidRequest(f"vector has a non-finite value {array[bad]!r} at position {bad}")
    _check_magnitude(array, dim)
    return array


def validate_vectors(
    vectors: Sequence[object], dim: int, ids: Sequence[str] | None = None
) -> npt.NDArray[np.float32]:
    """A batch of vectors as one float32 matrix of shape (n, dim), checked in one pass; the
    error names the first bad row (by id when given)."""
    if len(vectors) == 0:
        return np.empty((0, dim), dtype=np.float32)
    try:
        matrix = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError):
        matrix = None
    if matrix is None or matrix.ndim != 2 or matrix.shape[1] != dim:
        for i, vector in enumerate(vectors):
            try:
                validate_vector(vector, dim)
            except InvalidRequest as exc:
                where = ids[i] if ids is not None else f"row {i}"
                raise InvalidRequest(f"{where}: {exc}") from None
        raise InvalidRequest(f"vectors must form an (n, {dim}) array")
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        where = ids[i] if ids is not None else f"row {i}"
        bad = int(np.flatnonzero(~np.isfinite(matrix[i]))[0])
        raise InvalidRequest(
            f"{where}: vector has a non-finite value {matrix[i][bad]!r} at position {bad}"
        )
    _check_magnitude(matrix, dim, "a ")
    return matrix


def validate_k(k: object, max_k: int = 1000) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= max_k:
        raise InvalidRequest(f"k must be an integer from 1 to {max_k}, got {brief(k)}")
    return k


def validate_record(record: Record, dim: int) -> Record:
    validate_id(record.id)
    validate_version(record.version)
    vector = validate_vector(record.vector, dim)
    if not isinstance(record.metadata, Mapping):
        raise InvalidRequest(f"metadata of {record.id!r} must be a mapping")
    return (
        record
        if vector is record.vector
        else Record(record.id, vector, record.metadata, record.version)
    )


def matches(metadata: Metadata, filter: Filter | None) -> bool:
    """Whether a record's metadata satisfies a filter (every key equal)."""
    if not filter:
        return True
    return all(metadata.get(key) == value for key, value in filter.items())


def distance(
    metric: Metric, query: Vector, vectors: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """Distances from `query` to each row of `vectors`, as hnswlib defines them (lower is
    closer)."""
    if metric is Metric.L2:
        diff = vectors - query
        squared: npt.NDArray[np.float32] = np.einsum("ij,ij->i", diff, diff).astype(np.float32)
        return squared
    if metric is Metric.INNER_PRODUCT:
        similarity: npt.NDArray[np.float32] = (1.0 - vectors @ query).astype(np.float32)
        return similarity
    qn = query / max(float(np.linalg.norm(query)), 1e-12)
    norms = np.linalg.norm(vectors, axis=1)
    norms[norms < 1e-12] = 1e-12
    cosine: npt.NDArray[np.float32] = (1.0 - (vectors @ qn) / norms).astype(np.float32)
    return cosine
