"""One replica of one shard of the fake cluster: the records it holds and its HNSW index.

A replica keeps two views of its data on purpose. `records` is the realtime truth that `get`
and `scan` read (tombstones included). The index, with the `Stored` each label stands for,
is what `search` sees; it catches up with `records` only on `publish()`. The cluster
publishes after every write unless it runs with visibility lag, in which case the index
lags as an Elasticsearch shard does between refreshes -- search answers from a consistent
older snapshot (old versions, deleted ids) while get and scan are already current.

Vector changes never update an HNSW node in place: hnswlib's in-place update re-links the
graph and was measured ~10x slower than marking the old label deleted and inserting a fresh
one (see bench/bench_fake_updates.py). Deleted labels are compacted away by a rebuild once
they outnumber the live ones.

Both views are also kept as numpy `Columns` (vectors, and codes of the metadata keys filters
name): the labels search sees, and the live records `exact_search` reads. Brute force over a
filter is then a mask and one matrix product instead of a Python loop over every record
(measured on a 2,000-record cluster: ~1 ms -> 50-95 us per filtered search; bench/README.md).
"""

from __future__ import annotations

import bisect
import math
import pickle
import re
from collections.abc import Callable, Iterable, Iterator

import hnswlib
import numpy as np
import numpy.typing as npt

from .base import Filter, Metadata, Metric, Stored, Vector, distance, matches

NODE_ID = re.compile(r"^s(\d+)r(\d+)$")

EXACT_FILTER_LIMIT = 2048
"""A filter matching at most this many records of a shard is answered by brute force: cheap at
that size, exact, and immune to HNSW's habit of returning fewer than k hits under a filter."""

MAX_FILTER_EF = 4096
COMPACT_MIN_DELETED = 1024


def node_id(shard: int, replica: int) -> str:
    """The name of a node, e.g. "s0r1" (shard 0, replica 1): plain text, so it fits TOML
    fault schedules, JSON histories and URLs as is."""
    return f"s{shard}r{replica}"


def parse_node_id(node: str) -> tuple[int, int]:
    found = NODE_ID.match(node) if isinstance(node, str) else None
    if found is None:
        raise ValueError(f"node id must look like 's0r1' (shard 0, replica 1), got {node!r}")
    return int(found.group(1)), int(found.group(2))


class Columns:
    """Records by row number as numpy columns, so that brute force and filters are array
    operations instead of a Python loop over records.

    A row holds one record: its vector in `vectors` (float32, grown by doubling), `present`
    set, and the `Stored` itself in `stored`. Every metadata key a filter has named gets a code
    column, built on first use and kept up to date from then on: one integer per row, equal
    codes for equal values. A dict hands the codes out, so "equal" is Python's `==`, as in
    `matches` (1, 1.0 and True share a code). Values a dict cannot stand for safely -- other
    types than str, int, float, bool and None, or NaN -- get no code and are compared with
    `==` row by row.
    """

    def __init__(self, dim: int, capacity: int, keys: Iterable[str] = ()) -> None:
        self.vectors: npt.NDArray[np.float32] = np.zeros((capacity, dim), dtype=np.float32)
        self.present: npt.NDArray[np.bool_] = np.zeros(capacity, dtype=bool)
        self.stored: list[Stored] = [_EMPTY] * capacity
        self.count = 0
        self.end = 0
        """One past the highest row ever used: columns are read up to here."""
        self._codes = {key: _CodeColumn(key, capacity) for key in keys}

    def keys(self) -> list[str]:
        """The metadata keys that have a code column."""
        return list(self._codes)

    def copy(self) -> Columns:
        twin = Columns(self.vectors.shape[1], 0)
        twin.vectors = self.vectors.copy()
        twin.present = self.present.copy()
        twin.stored = list(self.stored)
        twin.count = self.count
        twin.end = self.end
        twin._codes = {key: column.copy() for key, column in self._codes.items()}
        return twin

    def put(self, row: int, stored: Stored) -> None:
        """Hold `stored` (live, with a vector) in `row`, replacing what the row held."""
        if row >= len(self.present):
            self._grow(max(row + 1, 2 * len(self.present)))
        self.vectors[row] = stored.vector
        if not self.present[row]:
            self.present[row] = True
            self.count += 1
        self.stored[row] = stored
        if row >= self.end:
            self.end = row + 1
        for column in self._codes.values():
            column.set(row, stored.metadata)

    def drop(self, row: int) -> None:
        if row < self.end and self.present[row]:
            self.present[row] = False
            self.count -= 1
            self.stored[row] = _EMPTY
            for column in self._codes.values():
                column.clear(row)

    def rows(self) -> npt.NDArray[np.intp]:
        """Every row that holds a record, ascending."""
        return np.flatnonzero(self.present[: self.end])

    def matching(self, filter: Filter) -> npt.NDArray[np.intp]:
        """The rows whose metadata `matches` the filter, ascending."""
        if not all(_codable(value) for value in filter.values()):
            stored = self.stored
            return np.asarray(
                [r for r in self.rows().tolist() if matches(stored[r].metadata, filter)],
                dtype=np.intp,
            )
        found = self.present[: self.end].copy()
        for key, value in filter.items():
            column = self._codes.get(key)
            if column is None:
                column = self._codes[key] = _CodeColumn(key, len(self.present))
                for row in self.rows().tolist():
                    column.set(row, self.stored[row].metadata)
            found &= column.equal_to(value, self.end, self.stored)
        return np.flatnonzero(found)

    def _grow(self, capacity: int) -> None:
        vectors = np.zeros((capacity, self.vectors.shape[1]), dtype=np.float32)
        vectors[: len(self.vectors)] = self.vectors
        present = np.zeros(capacity, dtype=bool)
        present[: len(self.present)] = self.present
        self.stored.extend([_EMPTY] * (capacity - len(self.stored)))
        self.vectors, self.present = vectors, present
        for column in self._codes.values():
            column.grow(capacity)


class _CodeColumn:
    """One metadata key of a `Columns`: a code per row, -1 for an empty row or a value without
    a code; rows of the latter are listed in `uncoded`."""

    __slots__ = ("codes", "key", "of_value", "uncoded")

    def __init__(self, key: str, capacity: int) -> None:
        self.key = key
        self.of_value: dict[object, int] = {}
        self.codes: npt.NDArray[np.int32] = np.full(capacity, -1, dtype=np.int32)
        self.uncoded: set[int] = set()

    def copy(self) -> _CodeColumn:
        twin = _CodeColumn(self.key, 0)
        twin.of_value = dict(self.of_value)
        twin.codes = self.codes.copy()
        twin.uncoded = set(self.uncoded)
        return twin

    def grow(self, capacity: int) -> None:
        codes = np.full(capacity, -1, dtype=np.int32)
        codes[: len(self.codes)] = self.codes
        self.codes = codes

    def set(self, row: int, metadata: Metadata) -> None:
        value = metadata.get(self.key)
        if _codable(value):
            self.codes[row] = self.of_value.setdefault(value, len(self.of_value))
            if self.uncoded:
                self.uncoded.discard(row)
        else:
            self.codes[row] = -1
            self.uncoded.add(row)

    def clear(self, row: int) -> None:
        self.codes[row] = -1
        if self.uncoded:
            self.uncoded.discard(row)

    def equal_to(self, value: object, end: int, stored: list[Stored]) -> npt.NDArray[np.bool_]:
        """Which rows below `end` hold a value == `value` (a codable one)."""
        code = self.of_value.get(value)
        found = self.codes[:end] == code if code is not None else np.zeros(end, dtype=bool)
        for row in self.uncoded:
            if row < end and stored[row].metadata.get(self.key) == value:
                found[row] = True
        return found


_EMPTY = Stored("", -1, True)
"""What an empty row of a `Columns` holds (a list of Stored is simpler to type than Optional)."""

_CODABLE = (str, int, bool, type(None))


def _codable(value: object) -> bool:
    """Whether dict lookup finds exactly the values == `value`: true of str, int, float, bool
    and None, whose hashes agree with ==, except NaN (found by identity, never equal)."""
    kind = type(value)
    return kind in _CODABLE or (kind is float and value == value)  # noqa: PLR0124 - not NaN


def smallest(dists: npt.NDArray[np.float32], k: int) -> npt.NDArray[np.intp]:
    """Positions of the k smallest distances, ties at the boundary going to the earliest
    positions: the first k of a stable argsort, in any order, without sorting them all."""
    if k >= len(dists):
        return np.arange(len(dists))
    kth = np.partition(dists, k - 1)[k - 1]
    if np.isnan(kth):
        return np.argsort(dists, kind="stable")[:k]
    below = np.flatnonzero(dists < kth)
    ties = np.flatnonzero(dists == kth)[: k - len(below)]
    return np.concatenate((below, ties))


class Replica:
    """The state of one shard on one node. Not thread-safe: the cluster holds the lock."""

    def __init__(
        self,
        dim: int,
        metric: Metric,
        capacity: int,
        m: int,
        ef_construction: int,
        ef_search: int,
        index_seed: int,
    ) -> None:
        self.dim = dim
        self.metric = metric
        self._capacity = max(capacity, 16)
        self._m = m
        self._ef_construction = ef_construction
        self._ef_search = ef_search
        self._index_seed = index_seed
        self.wipe()

    # -----------------------------------------------------------------------------------------
    # State.

    def wipe(self) -> None:
        """Forget everything, as a node that lost its disk."""
        self.records: dict[str, Stored] = {}
        self.ids: list[str] = []  # sorted, so that scans page by bisection
        self.tombstones = 0
        self.applied_seq = 0
        """The shard's write sequence number this replica has applied up to (see fake.py)."""
        # The live records by slot, realtime (what `live_matching` reads). An id's slot is its
        # position in `records`: brute force over them stacks rows in the same order as a
        # walk of `records` would, hence gives bit-identical distances.
        self._slot_of: dict[str, int] = {}
        self._held = Columns(self.dim, self._capacity)
        # Insertion-ordered (a dict, not a set: set order of strings is salted per process,
        # and label order must be the same on every run for the graph to be).
        self._pending: dict[str, None] = {}
        # What search sees: the index, and by label the record each label stands for.
        self._index = self._new_index(self._capacity)
        self._label_of: dict[str, int] = {}
        self._shown = Columns(self.dim, self._capacity)
        self._next_label = 0
        self._deleted_labels = 0

    def copy_from(self, source: Replica) -> None:
        """Become an exact copy of `source` (catch-up from a peer). Stored values are
        immutable, so shallow copies of the maps are enough; the index is copied whole."""
        self.records = dict(source.records)
        self.ids = list(source.ids)
        self.tombstones = source.tombstones
        self.applied_seq = source.applied_seq
        self._slot_of = dict(source._slot_of)
        self._held = source._held.copy()
        self._pending = dict(source._pending)
        self._index = pickle.loads(pickle.dumps(source._index))
        self._index.set_num_threads(1)
        self._label_of = dict(source._label_of)
        self._shown = source._shown.copy()
        self._next_label = source._next_label
        self._deleted_labels = source._deleted_labels

    def _new_index(self, capacity: int) -> hnswlib.Index:
        index = hnswlib.Index(space=str(self.metric), dim=self.dim)
        index.init_index(
            max_elements=capacity,
            M=self._m,
            ef_construction=self._ef_construction,
            random_seed=self._index_seed,
        )
        index.set_ef(self._ef_search)
        # One thread: a multi-threaded build links the graph in a racy order, and the same
        # seed must give the same graph, hence the same search results.
        index.set_num_threads(1)
        return index

    # -----------------------------------------------------------------------------------------
    # Writes.

    def would_apply(self, item: Stored, fenced: bool) -> bool:
        if not fenced:
            return True
        current = self.records.get(item.id)
        return current is None or item.version > current.version

    def apply(self, item: Stored, fenced: bool) -> bool:
        """Store `item` unless fencing refuses it; searchable only after `publish()`."""
        if not self.would_apply(item, fenced):
            return False
        current = self.records.get(item.id)
        if current is None:
            bisect.insort(self.ids, item.id)
            self._slot_of[item.id] = len(self._slot_of)
        elif current.deleted:
            self.tombstones -= 1
        if item.deleted:
            self.tombstones += 1
        self.records[item.id] = item
        if item.deleted or item.vector is None:
            self._held.drop(self._slot_of[item.id])
        else:
            self._held.put(self._slot_of[item.id], item)
        self._pending[item.id] = None
        return True

    @property
    def live_count(self) -> int:
        return len(self.records) - self.tombstones

    def publish(self) -> None:
        """Make every write so far visible to search (a refresh)."""
        if not self._pending:
            return
        shown = self._shown
        first_new = self._next_label
        for record_id in self._pending:
            stored = self.records.get(record_id)
            label = self._label_of.get(record_id)
            if label is not None:
                if (
                    stored is not None
                    and not stored.deleted
                    and _same(shown.stored[label].vector, stored.vector)
                ):
                    shown.put(label, stored)  # metadata or version only: index untouched
                    continue
                self._index.mark_deleted(label)
                shown.drop(label)
                del self._label_of[record_id]
                self._deleted_labels += 1
            if stored is None or stored.deleted or stored.vector is None:
                continue
            label = self._next_label
            self._next_label += 1
            self._label_of[record_id] = label
            shown.put(label, stored)
        self._pending.clear()
        if self._next_label > first_new:
            needed = self._index.element_count + self._next_label - first_new
            if needed > self._index.get_max_elements():
                self._index.resize_index(max(needed, 2 * self._index.get_max_elements()))
            # New labels are consecutive, so their vectors are one slice of the label matrix.
            self._index.add_items(
                shown.vectors[first_new : self._next_label],
                np.arange(first_new, self._next_label),
                num_threads=1,
            )
        if self._deleted_labels > max(COMPACT_MIN_DELETED, shown.count):
            self._compact()

    def _compact(self) -> None:
        """Rebuild the index without its deleted labels (what a segment merge does)."""
        kept = [self._shown.stored[label] for label in self._shown.rows().tolist()]
        capacity = max(self._capacity, 2 * len(kept))
        self._index = self._new_index(capacity)
        self._shown = Columns(self.dim, capacity, self._shown.keys())
        for label, stored in enumerate(kept):
            self._shown.put(label, stored)
        self._label_of = {stored.id: label for label, stored in enumerate(kept)}
        self._next_label = len(kept)
        self._deleted_labels = 0
        if kept:
            self._index.add_items(
                self._shown.vectors[: len(kept)], np.arange(len(kept)), num_threads=1
            )

    # -----------------------------------------------------------------------------------------
    # Reads.

    def stored(self, record_id: str) -> Stored | None:
        """What this replica holds for `record_id` (tombstones included), realtime."""
        return self.records.get(record_id)

    def triples(self) -> Iterator[tuple[str, int, bool]]:
        """(id, version, deleted) of everything this replica holds, tombstones included."""
        for stored in self.records.values():
            yield stored.id, stored.version, stored.deleted

    def scan_after(self, cursor: str | None, limit: int) -> Iterator[Stored]:
        start = 0 if cursor is None else bisect.bisect_right(self.ids, cursor)
        for record_id in self.ids[start : start + limit]:
            yield self.records[record_id]

    def live_matching(
        self, filter: Filter | None
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.intp]]:
        """The live records that match `filter`, realtime (no lag), in `records` order: their
        vectors as one matrix, and their slots (see `held`)."""
        slots = self._held.matching(filter) if filter else self._held.rows()
        return self._held.vectors[slots], slots

    def held(self, slot: int) -> Stored:
        """The live record in `slot` (see `live_matching`)."""
        return self._held.stored[slot]

    def search(self, query: Vector, k: int, filter: Filter | None) -> list[tuple[float, str, int]]:
        """Top-k visible records as (distance, id, version), ascending."""
        shown = self._shown
        if not shown.count:
            return []
        if not filter:
            found = self._ann(query, min(k, shown.count), self._ef_search, None)
            return found if found is not None else self._exact(query, k, shown.rows())
        allowed = shown.matching(filter)
        if len(allowed) <= EXACT_FILTER_LIMIT:
            return self._exact(query, k, allowed)
        # Fewer allowed labels means fewer candidates per visited node: widen the beam in
        # proportion, so that k of them survive the filter.
        ef = min(MAX_FILTER_EF, math.ceil(self._ef_search * shown.count / len(allowed)))
        found = self._ann(query, k, ef, set(allowed.tolist()).__contains__)
        return found if found is not None else self._exact(query, k, allowed)

    def _ann(
        self, query: Vector, k: int, ef: int, accept: Callable[[int], bool] | None
    ) -> list[tuple[float, str, int]] | None:
        """hnswlib's answer, or None when it cannot give k hits (then the caller goes exact)."""
        ef = max(ef, k)
        if ef != self._ef_search:
            self._index.set_ef(ef)
        try:
            labels, dists = self._index.knn_query(query, k=k, num_threads=1, filter=accept)
        except RuntimeError:
            return None
        finally:
            if ef != self._ef_search:
                self._index.set_ef(self._ef_search)
        stored = [self._shown.stored[label] for label in labels[0].tolist()]
        hits = [(dist, s.id, s.version) for dist, s in zip(dists[0].tolist(), stored, strict=True)]
        hits.sort()
        return hits

    def _exact(
        self, query: Vector, k: int, labels: npt.NDArray[np.intp]
    ) -> list[tuple[float, str, int]]:
        """Brute force over `labels` (ascending): the k nearest, ties to the lower label."""
        if not len(labels):
            return []
        dists = distance(self.metric, query, self._shown.vectors[labels])
        picked = smallest(dists, k)
        stored = self._shown.stored
        return sorted(
            (dist, stored[label].id, stored[label].version)
            for dist, label in zip(dists[picked].tolist(), labels[picked].tolist(), strict=True)
        )


def _same(a: Vector | None, b: Vector | None) -> bool:
    return a is b or (a is not None and b is not None and np.array_equal(a, b))
