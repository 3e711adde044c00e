"""The scaled fake cluster: the fake cluster's shards, replicas, fencing and faults over a
catalog of which only a sample holds vectors, for simulating catalogs of millions.

Theory of operation
-------------------
* Catalog ids have one fixed form, a prefix and a fixed number of digits ("p000042"), so that
  an id is a number and id order is number order. Every `stride`-th number is in the
  *sample*: its records are held exactly as the fake cluster holds them, vector, metadata and
  HNSW index included. Those are the only records a search can find.
* Every other record is held as two numpy columns per replica, a version and a tombstone
  flag per catalog number, nothing else: no vector, no metadata. It is written, fenced,
  lost, wiped, caught up, scanned, counted and checksummed like any other record, because
  `ScaledReplica` keeps it under the same shard sequence numbers and the cluster's write path,
  faults and reconciliation are the fake cluster's own (`FakeCluster`, unchanged).
* Upserts of such a record carry `base.VECTORLESS` (or any vector, which is dropped); reads
  give it back with `VECTORLESS`, so that a copy (backfill, repair) can write it on as a
  record, and the layer never treats it as a search hit (`base.searchable`).
* Shards are the number modulo the shard count (not `bucket_of`): each replica's columns then
  cover only its own shard's numbers, and a catalog of millions loads without hashing every
  id. Checksums still bucket with `bucket_of` and fold with `fold`, as every adapter does.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt

from ._node import Replica
from .base import (
    VECTORLESS,
    InvalidRequest,
    Metric,
    Record,
    Stored,
    validate_vectors,
)
from .fake import FakeCluster

__all__ = ["CatalogSample", "ScaledCluster", "ScaledReplica"]

_NO_FIELDS: Any = MappingProxyType({})
_SCAN_WINDOW = 4096


@dataclass(frozen=True)
class CatalogSample:
    """The form of a catalog's ids and which of them hold vectors.

    `products` is the catalog's size at load; numbers past it are products added later, in
    the sample on the same rule. Ids have `width` digits, room for ten times the catalog."""

    products: int
    stride: int
    width: int = 6
    prefix: str = "p"

    @classmethod
    def of(cls, products: int, sample: int) -> CatalogSample:
        """Every n-th of `products` in the sample, so that about `sample` of them are."""
        if products < 1 or sample < 1:
            raise ValueError(f"products and sample must be positive, got {products}, {sample}")
        stride = max(1, products // sample)
        return cls(products, stride, max(6, len(str(products * 10))))

    @property
    def size(self) -> int:
        """How many of the catalog's products (at load) are in the sample."""
        return -(-self.products // self.stride)

    def id_of(self, number: int) -> str:
        return f"{self.prefix}{number:0{self.width}d}"

    def number(self, record_id: str) -> int:
        """The catalog number of an id; `InvalidRequest` for an id of another form."""
        digits = record_id[len(self.prefix) :]
        if (
            not record_id.startswith(self.prefix)
            or len(digits) != self.width
            or not digits.isascii()
            or not digits.isdigit()
        ):
            raise InvalidRequest(
                f"{record_id!r} is not an id of this scaled catalog: ids are {self.prefix!r} "
                f"and {self.width} digits, e.g. {self.id_of(42)!r}"
            )
        return int(digits)

    def sampled(self, number: int) -> bool:
        return number % self.stride == 0

    def neighbour(self, number: int) -> int:
        """The sampled number nearest below `number` (itself, if sampled)."""
        return number - number % self.stride


class ScaledReplica(Replica):
    """A replica of one shard: the sampled records as `Replica` holds them, every other
    record of the shard as (version, tombstone) columns indexed by number // shards."""

    def __init__(
        self,
        sample: CatalogSample,
        shard: int,
        shards: int,
        dim: int,
        metric: Metric,
        capacity: int,
        m: int,
        ef_construction: int,
        ef_search: int,
        index_seed: int,
    ) -> None:
        self.sample = sample
        self.shard = shard
        self.shards = shards
        super().__init__(dim, metric, capacity, m, ef_construction, ef_search, index_seed)

    def wipe(self) -> None:
        super().wipe()
        rows = -(-self.sample.products // self.shards) + 16
        self._versions: npt.NDArray[np.int64] = np.full(rows, -1, dtype=np.int64)
        """-1: nothing held for that number."""
        self._deleted: npt.NDArray[np.bool_] = np.zeros(rows, dtype=bool)
        self._beyond = 0
        """Numbers outside the sample that hold a record or a tombstone."""

    def copy_from(self, source: Replica) -> None:
        super().copy_from(source)
        assert isinstance(source, ScaledReplica)
        self._versions, self._deleted, self._beyond = source.columns()

    def columns(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_], int]:
        """Copies of the version and tombstone columns, and how many numbers they hold."""
        return self._versions.copy(), self._deleted.copy(), self._beyond

    def load(self, numbers: npt.NDArray[np.int64], version: int) -> None:
        """Hold a live record at `version` for each of `numbers` (this shard's, outside the
        sample, none held yet): the initial load of a large catalog in one step."""
        rows = numbers // self.shards
        self._grow(int(rows.max()) + 1 if len(rows) else 0)
        self._versions[rows] = version
        self._deleted[rows] = False
        self._beyond += len(rows)

    # -- writes ---------------------------------------------------------------------------------

    def would_apply(self, item: Stored, fenced: bool) -> bool:
        number = self.sample.number(item.id)
        if self.sample.sampled(number):
            return super().would_apply(item, fenced)
        if not fenced:
            return True
        row = number // self.shards
        held = int(self._versions[row]) if row < len(self._versions) else -1
        return item.version > held

    def apply(self, item: Stored, fenced: bool) -> bool:
        number = self.sample.number(item.id)
        if self.sample.sampled(number):
            return super().apply(item, fenced)
        if not self.would_apply(item, fenced):
            return False
        row = number // self.shards
        self._grow(row + 1)
        if self._versions[row] < 0:
            self._beyond += 1
        elif self._deleted[row]:
            self.tombstones -= 1
        if item.deleted:
            self.tombstones += 1
        self._versions[row] = item.version
        self._deleted[row] = item.deleted
        return True

    def _grow(self, rows: int) -> None:
        if rows <= len(self._versions):
            return
        size = max(rows, 2 * len(self._versions))
        versions = np.full(size, -1, dtype=np.int64)
        versions[: len(self._versions)] = self._versions
        deleted = np.zeros(size, dtype=bool)
        deleted[: len(self._deleted)] = self._deleted
        self._versions, self._deleted = versions, deleted

    # -- reads ----------------------------------------------------------------------------------

    @property
    def live_count(self) -> int:
        return len(self.records) + self._beyond - self.tombstones

    def stored(self, record_id: str) -> Stored | None:
        number = self.sample.number(record_id)
        if self.sample.sampled(number):
            return self.records.get(record_id)
        row = number // self.shards
        if row >= len(self._versions) or self._versions[row] < 0:
            return None
        return self._version_only(record_id, int(self._versions[row]), bool(self._deleted[row]))

    def triples(self) -> Iterator[tuple[str, int, bool]]:
        yield from super().triples()
        rows = np.flatnonzero(self._versions >= 0)
        versions = self._versions[rows].tolist()
        deleted = self._deleted[rows].tolist()
        id_of, shards, shard = self.sample.id_of, self.shards, self.shard
        for row, version, gone in zip(rows.tolist(), versions, deleted, strict=True):
            yield id_of(row * shards + shard), version, gone

    def scan_after(self, cursor: str | None, limit: int) -> Iterator[Stored]:
        beyond = self._scan_beyond(cursor, limit)
        merged = heapq.merge(super().scan_after(cursor, limit), beyond, key=_by_id)
        return itertools.islice(merged, limit)

    def _scan_beyond(self, cursor: str | None, limit: int) -> Iterator[Stored]:
        """Up to `limit` records outside the sample with ids after `cursor`, in id order."""
        # The first row whose number (row * shards + shard) is above the cursor's.
        row = 0 if cursor is None else (self.sample.number(cursor) - self.shard) // self.shards + 1
        found = 0
        versions, deleted = self._versions, self._deleted
        while found < limit and row < len(versions):
            window = np.flatnonzero(versions[row : row + _SCAN_WINDOW] >= 0)[: limit - found]
            for offset in window.tolist():
                at = row + offset
                number = at * self.shards + self.shard
                yield self._version_only(
                    self.sample.id_of(number), int(versions[at]), bool(deleted[at])
                )
            found += len(window)
            row += _SCAN_WINDOW

    @staticmethod
    def _version_only(record_id: str, version: int, deleted: bool) -> Stored:
        if deleted:
            return Stored(record_id, version, True)
        return Stored(record_id, version, False, VECTORLESS, _NO_FIELDS)


def _by_id(stored: Stored) -> str:
    return stored.id


class ScaledCluster(FakeCluster):
    """A `FakeCluster` over a `CatalogSample`: see the module docstring. Ids of any other form
    are refused (`InvalidRequest`)."""

    def __init__(self, dim: int, sample: CatalogSample, **settings: Any) -> None:
        self.sample = sample
        super().__init__(dim, **settings)

    @property
    def shards(self) -> int:
        return self._shards

    def _new_replica(self, shard: int) -> Replica:
        capacity, m, ef_construction, ef_search = self._index_settings
        return ScaledReplica(
            self.sample,
            shard,
            self._shards,
            self.dim,
            self.metric,
            capacity,
            m,
            ef_construction,
            ef_search,
            self._dice.index_seed + shard,
        )

    def _shard_of(self, record_id: str) -> int:
        return self.sample.number(record_id) % self._shards

    def _stored(self, batch: Sequence[Record]) -> list[Stored]:
        """Sampled records as the fake cluster stores them; the rest version-only."""
        sampled = [r for r in batch if self.sample.sampled(self.sample.number(r.id))]
        matrix = np.array(
            validate_vectors([r.vector for r in sampled], self.dim, [r.id for r in sampled]),
            dtype=np.float32,
        )
        matrix.flags.writeable = False
        rows = iter(range(len(sampled)))
        return [
            Stored(r.id, r.version, False, matrix[next(rows)], dict(r.metadata))
            if self.sample.sampled(self.sample.number(r.id))
            else Stored(r.id, r.version, False, VECTORLESS, _NO_FIELDS)
            for r in batch
        ]

    # -- oracles for the simulator (no faults rolled, nothing raised) ---------------------------

    def load_beyond_sample(self, count: int, version: int = 1) -> int:
        """Hold a live record at `version` for every catalog number below `count` outside the
        sample, on every replica (the initial load, in one step); returns how many."""
        numbers = np.arange(count, dtype=np.int64)
        numbers = numbers[numbers % self.sample.stride != 0]
        with self._lock:
            for shard, replicas in enumerate(self._replicas):
                mine = numbers[numbers % self._shards == shard]
                for replica in replicas:
                    assert isinstance(replica, ScaledReplica)
                    replica.load(mine, version)
        return len(numbers)

    def sampled_live_versions(self) -> dict[str, int]:
        """`live_versions` of the sampled ids only, in id order (the final scan of a run that
        judges its sample), without walking the rest of the catalog."""
        with self._lock:
            return dict(
                sorted(
                    (record_id, version)
                    for r in self._authoritative()
                    for record_id, version, deleted in Replica.triples(r)
                    if not deleted
                )
            )

    def shard_size(self) -> float:
        """Live records per shard, as the cluster will serve them once healed: the index size
        a real engine holding every vector would search and insert into."""
        with self._lock:
            replicas = self._authoritative()
            return sum(r.live_count for r in replicas) / len(replicas)
