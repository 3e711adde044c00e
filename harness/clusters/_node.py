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
"""

from __future__ import annotations

import bisect
import math
import pickle
import re
from collections.abc import Callable, Iterator

import hnswlib
import numpy as np
import numpy.typing as npt

from .base import Filter, Metric, Stored, Vector, distance, matches

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
        # Insertion-ordered (a dict, not a set: set order of strings is salted per process,
        # and label order must be the same on every run for the graph to be).
        self._pending: dict[str, None] = {}
        self._index = self._new_index(self._capacity)
        self._label_of: dict[str, int] = {}
        self._visible: dict[int, Stored] = {}
        self._next_label = 0
        self._deleted_labels = 0

    def copy_from(self, source: Replica) -> None:
        """Become an exact copy of `source` (catch-up from a peer). Stored values are
        immutable, so shallow copies of the maps are enough; the index is copied whole."""
        self.records = dict(source.records)
        self.ids = list(source.ids)
        self.tombstones = source.tombstones
        self.applied_seq = source.applied_seq
        self._pending = dict(source._pending)
        self._index = pickle.loads(pickle.dumps(source._index))
        self._index.set_num_threads(1)
        self._label_of = dict(source._label_of)
        self._visible = dict(source._visible)
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
        elif current.deleted:
            self.tombstones -= 1
        if item.deleted:
            self.tombstones += 1
        self.records[item.id] = item
        self._pending[item.id] = None
        return True

    @property
    def live_count(self) -> int:
        return len(self.records) - self.tombstones

    def publish(self) -> None:
        """Make every write so far visible to search (a refresh)."""
        if not self._pending:
            return
        vectors: list[Vector] = []
        labels: list[int] = []
        for record_id in self._pending:
            stored = self.records.get(record_id)
            label = self._label_of.get(record_id)
            if label is not None:
                shown = self._visible[label]
                if stored is not None and not stored.deleted and _same(shown.vector, stored.vector):
                    self._visible[label] = stored  # metadata or version only: index untouched
                    continue
                self._index.mark_deleted(label)
                del self._visible[label]
                del self._label_of[record_id]
                self._deleted_labels += 1
            if stored is None or stored.deleted or stored.vector is None:
                continue
            label = self._next_label
            self._next_label += 1
            self._label_of[record_id] = label
            self._visible[label] = stored
            vectors.append(stored.vector)
            labels.append(label)
        self._pending.clear()
        if labels:
            needed = self._index.element_count + len(labels)
            if needed > self._index.get_max_elements():
                self._index.resize_index(max(needed, 2 * self._index.get_max_elements()))
            self._index.add_items(np.stack(vectors), np.asarray(labels), num_threads=1)
        if self._deleted_labels > max(COMPACT_MIN_DELETED, len(self._visible)):
            self._compact()

    def _compact(self) -> None:
        """Rebuild the index without its deleted labels (what a segment merge does)."""
        shown = [self._visible[label] for label in sorted(self._visible)]
        self._index = self._new_index(max(self._capacity, 2 * len(shown)))
        self._label_of = {stored.id: label for label, stored in enumerate(shown)}
        self._visible = dict(enumerate(shown))
        self._next_label = len(shown)
        self._deleted_labels = 0
        if shown:
            self._index.add_items(
                np.stack([s.vector for s in shown if s.vector is not None]),
                np.arange(len(shown)),
                num_threads=1,
            )

    # -----------------------------------------------------------------------------------------
    # Reads.

    def scan_after(self, cursor: str | None, limit: int) -> Iterator[Stored]:
        start = 0 if cursor is None else bisect.bisect_right(self.ids, cursor)
        for record_id in self.ids[start : start + limit]:
            yield self.records[record_id]

    def search(self, query: Vector, k: int, filter: Filter | None) -> list[tuple[float, str, int]]:
        """Top-k visible records as (distance, id, version), ascending."""
        if not self._visible:
            return []
        if not filter:
            found = self._ann(query, min(k, len(self._visible)), self._ef_search, None)
            return found if found is not None else self._exact(query, k, list(self._visible))
        allowed = [label for label, s in self._visible.items() if matches(s.metadata, filter)]
        if len(allowed) <= EXACT_FILTER_LIMIT:
            return self._exact(query, k, allowed)
        # Fewer allowed labels means fewer candidates per visited node: widen the beam in
        # proportion, so that k of them survive the filter.
        ef = min(MAX_FILTER_EF, math.ceil(self._ef_search * len(self._visible) / len(allowed)))
        allowed_set = set(allowed)
        found = self._ann(query, k, ef, allowed_set.__contains__)
        return found if found is not None else self._exact(query, k, allowed)

    def _ann(
        self, query: Vector, k: int, ef: int, accept: Callable[[int], bool] | None
    ) -> list[tuple[float, str, int]] | None:
        """hnswlib's answer, or None when it cannot give k hits (then the caller goes exact)."""
        self._index.set_ef(max(ef, k))
        try:
            labels, dists = self._index.knn_query(query, k=k, num_threads=1, filter=accept)
        except RuntimeError:
            return None
        finally:
            self._index.set_ef(self._ef_search)
        hits = []
        for label, dist in zip(labels[0].tolist(), dists[0].tolist(), strict=True):
            stored = self._visible[int(label)]
            hits.append((float(dist), stored.id, stored.version))
        return sorted(hits)

    def _exact(self, query: Vector, k: int, labels: list[int]) -> list[tuple[float, str, int]]:
        if not labels:
            return []
        shown = [self._visible[label] for label in labels]
        matrix: npt.NDArray[np.float32] = np.stack(
            [s.vector for s in shown if s.vector is not None]
        )
        dists = distance(self.metric, query, matrix)
        order = (
            np.argsort(dists, kind="stable")[:k]
            if k < len(shown)
            else np.argsort(dists, kind="stable")
        )
        return sorted((float(dists[i]), shown[i].id, shown[i].version) for i in order.tolist())


def _same(a: Vector | None, b: Vector | None) -> bool:
    return a is b or (a is not None and b is not None and np.array_equal(a, b))
