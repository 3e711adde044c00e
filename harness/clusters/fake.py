"""The fake cluster: a real sharded, replicated in-memory HNSW store behind `ClusterPort`.

It is an adapter like the pgvector or Qdrant ones, not a mock: searches go through hnswlib,
scans page through sorted ids, fencing and tombstones are enforced natively. What makes it
fake is that faults can be switched on and off deterministically (see `faults.py`).

Theory of operation
-------------------
* Ids are hash-partitioned over `shards` with `bucket_of` (stable across processes). Each
  shard has `replicas` copies, one per node; node ids read "s{shard}r{replica}", e.g. "s0r1".
* Every shard has a write sequence number. A write goes to every *serving* replica of its
  shard and moves the shard's number and theirs forward. A replica serves when it is up and
  in sync (its number equals the shard's). A crashed or paused node falls behind; when it
  comes back, the shard reconciles: live replicas copy the state of the most advanced live
  one. If the newest writes now exist only on a node that is still down, the shard waits for
  it (Unavailable, or Timeout when that node is paused) rather than serve stale data. If no
  node holds them any more (every copy crashed with data loss), the shard carries on with what
  is left: the data is really gone, which is that fault's point.
* Reads of a shard go to one serving replica, round-robin; searches scatter to every shard
  and merge the top k. Scores are hnswlib distances (lower is closer), as `base.distance`.
* The cluster keeps no clock: drivers add latency, scaled by `latency_multiplier`.
* One re-entrant lock guards every public method: the live service calls from threads.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from . import faults
from ._node import Replica, node_id, parse_node_id
from .base import (
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
    brief,
    bucket_of,
    checksums_of,
    distance,
    validate_batch,
    validate_buckets,
    validate_id,
    validate_k,
    validate_scan_limit,
    validate_tombstones,
    validate_vector,
    validate_vectors,
    validate_version,
)
from .faults import CLUSTER_FAULT_FAMILIES, ActiveFaults, Dice

__all__ = ["CLUSTER_FAULT_FAMILIES", "FakeCluster", "node_id", "parse_node_id"]

READ_OPS = ("get", "search", "scan", "count", "checksums")
WRITE_OPS = ("upsert", "delete")

UP, CRASHED, PAUSED = "up", "crashed", "paused"


class FakeCluster:
    """An in-memory, sharded, replicated HNSW vector store with switchable faults.

    `capacity` is each replica's initial index size (it grows by doubling); `m`,
    `ef_construction` and `ef_search` are hnswlib's. `seed` fixes the HNSW graphs and every
    fault's dice. Stored vectors are read-only arrays shared with readers; stored metadata
    is a plain dict (JSON-friendly) that readers must not mutate.
    """

    def __init__(
        self,
        dim: int,
        metric: Metric = Metric.COSINE,
        shards: int = 2,
        replicas: int = 2,
        seed: int = 0,
        capacity: int = 1024,
        m: int = 16,
        ef_construction: int = 100,
        ef_search: int = 64,
        name: str = "cluster",
        catch_up: bool = True,
    ) -> None:
        """`catch_up=False` plants a bug, for `vecmig zoo`: a replica that comes back serves
        at once, as if in sync, without copying what it missed."""
        for label, value in (("dim", dim), ("shards", shards), ("replicas", replicas)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{label} must be a positive integer, got {value!r}")
        self.name = name
        self.catch_up = catch_up
        self._dim = dim
        self._metric = Metric(metric)
        self._shards = shards
        self._lock = threading.RLock()
        self._dice = Dice(seed)
        self._active = ActiveFaults()
        self._index_settings = (capacity, m, ef_construction, ef_search)
        self._replicas = [
            [self._new_replica(shard) for _ in range(replicas)] for shard in range(shards)
        ]
        self._node_ids = [[node_id(s, r) for r in range(replicas)] for s in range(shards)]
        self._status: dict[str, str] = {node: UP for node in self._node_names()}
        self._shard_seq = [0] * shards
        self._next_read = [0] * shards
        self._marker: dict[str, Any] | None = None

    # -----------------------------------------------------------------------------------------
    # The port.

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def metric(self) -> Metric:
        return self._metric

    def upsert(self, records: Sequence[Record], *, fenced: bool = True) -> dict[str, bool]:
        """Write records; per id, whether applied. Later duplicates of an id in one batch are
        applied after earlier ones and their answer wins."""
        batch = validate_batch(records, Record, "upsert")
        for record in batch:
            validate_id(record.id)
            validate_version(record.version)
            if not isinstance(record.metadata, Mapping):
                raise InvalidRequest(f"metadata of {record.id!r} must be a mapping")
        items = self._stored(batch)
        with self._lock:
            return self._write(items, fenced)

    def delete(self, tombstones: Sequence[Tombstone], *, fenced: bool = True) -> dict[str, bool]:
        items = [Stored(t.id, t.version, True) for t in validate_tombstones(tombstones)]
        with self._lock:
            return self._write(items, fenced)

    def get(self, ids: Sequence[str]) -> dict[str, Stored]:
        if isinstance(ids, str) or not isinstance(ids, Sequence):
            raise InvalidRequest(f"get takes a sequence of ids, got {brief(ids)}")
        for record_id in ids:
            validate_id(record_id)
        with self._lock:
            self._roll_error()
            placed = [(record_id, self._shard_of(record_id)) for record_id in ids]
            serving = {shard: self._pick_replica(shard) for shard in sorted({s for _, s in placed})}
            found = {}
            for record_id, shard in placed:
                stored = serving[shard].stored(record_id)
                if stored is not None:
                    found[record_id] = stored
            return found

    def search(self, vector: Vector, k: int, filter: Filter | None = None) -> list[Hit]:
        query = validate_vector(vector, self._dim)
        validate_k(k)
        _check_filter(filter)
        with self._lock:
            self._roll_error()
            if self._active.index_rebuild:
                raise Unavailable(f"{self.name}: the index is being rebuilt; search is unavailable")
            serving = [self._pick_replica(shard) for shard in range(self._shards)]
            # Every shard's top k, sorted together: ids live in one shard, so no two hits tie.
            found = [hit for replica in serving for hit in replica.search(query, k, filter)]
            found.sort()
            return [Hit(record_id, version, score) for score, record_id, version in found[:k]]

    def scan(self, cursor: str | None, limit: int) -> ScanPage:
        if cursor is not None:
            validate_id(cursor)
        validate_scan_limit(limit)
        with self._lock:
            self._roll_error()
            serving = [self._pick_replica(shard) for shard in range(self._shards)]
            # One more than asked, so we know whether anything follows without a second pass.
            merged = heapq.merge(
                *(r.scan_after(cursor, limit + 1) for r in serving), key=lambda stored: stored.id
            )
            items = list(itertools.islice(merged, limit + 1))
            if len(items) > limit:
                return ScanPage(tuple(items[:limit]), items[limit - 1].id)
            return ScanPage(tuple(items), None)

    def count(self) -> Counts:
        with self._lock:
            self._roll_error()
            serving = [self._pick_replica(shard) for shard in range(self._shards)]
            return Counts(sum(r.live_count for r in serving), sum(r.tombstones for r in serving))

    def checksums(self, buckets: int) -> list[RangeChecksum]:
        validate_buckets(buckets)
        with self._lock:
            self._roll_error()
            serving = [self._pick_replica(shard) for shard in range(self._shards)]
            return checksums_of(
                itertools.chain.from_iterable(r.triples() for r in serving), buckets
            )

    def health(self) -> Health:
        """Never raises: health is how an operator sees the faults."""
        with self._lock:
            detail = {node: self._describe(node) for node in self._node_names()}
            ok = not self._active.index_rebuild
            for shard in range(self._shards):
                if not self._serving(shard):
                    ok = False
                    detail[f"shard{shard}"] = "no replica in sync and up"
            if self._active.index_rebuild:
                detail["index"] = "rebuilding: search unavailable"
            return Health(ok, detail)

    # -----------------------------------------------------------------------------------------
    # Oracles and helpers for drivers and tests: they ignore faults and never raise them.

    def nodes(self) -> list[str]:
        """Node ids, shard-major: ["s0r0", "s0r1", "s1r0", ...]."""
        return self._node_names()

    def refresh(self) -> None:
        """Make every write so far searchable (a no-op without visibility lag)."""
        with self._lock:
            for shard in self._replicas:
                for replica in shard:
                    replica.publish()

    def exact_search(self, vector: Vector, k: int, filter: Filter | None = None) -> list[Hit]:
        """Ground truth: brute force over the live records the cluster holds (realtime, no
        lag), as it would serve them once healed."""
        query = validate_vector(vector, self._dim)
        validate_k(k)
        _check_filter(filter)
        with self._lock:
            replicas = self._authoritative()
            parts = [replica.live_matching(filter) for replica in replicas]
            slots = np.concatenate([slots for _, slots in parts])
            if not len(slots):
                return []
            owner = np.repeat(np.arange(len(parts)), [len(slots) for _, slots in parts])
            dists = distance(self._metric, query, np.concatenate([vectors for vectors, _ in parts]))
            # Only distances up to the k-th smallest can rank in the top k; ties there are all
            # kept, so that the sort below breaks them by id as a sort of everything would.
            near = range(len(slots)) if k >= len(slots) else _up_to_kth(dists, k)
            live = [(float(dists[i]), replicas[owner[i]].held(int(slots[i]))) for i in near]
        ranked = sorted((score, stored.id, stored.version) for score, stored in live)
        return [Hit(record_id, version, score) for score, record_id, version in ranked[:k]]

    def read_marker(self) -> dict[str, Any] | None:
        """The migration's note on this side (`MarkedSide`): kept apart from the records, and
        answered whatever faults are on, like `live_versions`."""
        with self._lock:
            return None if self._marker is None else dict(self._marker)

    def write_marker(self, marker: Mapping[str, Any]) -> None:
        with self._lock:
            self._marker = dict(marker)

    def live_versions(self) -> dict[str, int]:
        """id -> version of every live record, as the cluster will serve them once healed:
        the final scan a history's `final` event carries."""
        with self._lock:
            return {
                record_id: version
                for r in self._authoritative()
                for record_id, version, deleted in r.triples()
                if not deleted
            }

    def fault_state(self) -> dict[str, Any]:
        """The active faults, as plain data (for logs, health pages and tests)."""
        with self._lock:
            return {
                "crashed": sorted(n for n, s in self._status.items() if s == CRASHED),
                "paused": sorted(n for n, s in self._status.items() if s == PAUSED),
                "error_rate": self._active.error_rate,
                "lost_ack_rate": self._active.lost_ack_rate,
                "visibility_lag": self._active.visibility_lag,
                "index_rebuild": self._active.index_rebuild,
                "slow": dict(self._active.slow),
            }

    def latency_multiplier(self, op: str) -> float:
        """How much slower than usual the next call of `op` is (>= 1.0). A write waits for
        every replica, so a slow serving node slows it; a read is slowed when round-robin
        would send it to a slow node next."""
        if op not in READ_OPS + WRITE_OPS:
            raise ValueError(f"unknown op {op!r}; expected one of {READ_OPS + WRITE_OPS}")
        with self._lock:
            factor = 1.0
            for node, slowness in self._active.slow.items():
                shard, replica = parse_node_id(node)
                serving = self._serving(shard)
                target = self._replicas[shard][replica]
                if target not in serving:
                    continue
                if op in WRITE_OPS or serving[self._next_read[shard] % len(serving)] is target:
                    factor = max(factor, slowness)
            return factor

    # -----------------------------------------------------------------------------------------
    # Faults.

    def start_fault(self, family: str, **params: Any) -> None:
        """Start a fault by family name (see `CLUSTER_FAULT_FAMILIES`), e.g.
        `start_fault("node-crash", node="s0r1", lose_data=True)`."""
        checked = faults.start_params(family, params)
        getattr(self, "start_" + family.replace("-", "_"))(**checked)

    def heal_all(self) -> None:
        """Stop every active fault: restart crashed nodes, resume paused ones (each catching
        up), and switch off error rates, lost acks, lag (flushing it), rebuilds and slowness."""
        with self._lock:
            state = self.fault_state()
            for node in state["crashed"]:
                self.stop_node_crash(node)
            for node in state["paused"]:
                self.stop_node_pause(node)
            for node in list(state["slow"]):
                self.stop_slow_replica(node)
            self.stop_error_rate()
            self.stop_lost_ack()
            self.stop_visibility_lag()
            self.stop_index_rebuild()

    def stop_fault(self, family: str, **params: Any) -> None:
        """Stop a fault; the start's parameters may be repeated and are ignored if unneeded."""
        checked = faults.stop_params(family, params)
        getattr(self, "stop_" + family.replace("-", "_"))(**checked)

    def start_node_crash(self, node: str, lose_data: bool = False) -> None:
        with self._lock:
            replica = self._node(node)
            self._status[node] = CRASHED
            if lose_data:
                replica.wipe()

    def stop_node_crash(self, node: str) -> None:
        """Restart a crashed node; it catches up before it serves."""
        with self._lock:
            self._node(node)
            if self._status[node] == CRASHED:
                self._status[node] = UP
                self._reconcile(parse_node_id(node)[0])

    def start_node_pause(self, node: str) -> None:
        with self._lock:
            self._node(node)
            if self._status[node] == UP:
                self._status[node] = PAUSED

    def stop_node_pause(self, node: str) -> None:
        with self._lock:
            self._node(node)
            if self._status[node] == PAUSED:
                self._status[node] = UP
                self._reconcile(parse_node_id(node)[0])

    def start_error_rate(self, rate: float) -> None:
        with self._lock:
            self._active.error_rate = faults.check_rate(rate)

    def stop_error_rate(self) -> None:
        with self._lock:
            self._active.error_rate = 0.0

    def start_lost_ack(self, rate: float) -> None:
        with self._lock:
            self._active.lost_ack_rate = faults.check_rate(rate)

    def stop_lost_ack(self) -> None:
        with self._lock:
            self._active.lost_ack_rate = 0.0

    def start_visibility_lag(self) -> None:
        with self._lock:
            self._active.visibility_lag = True

    def stop_visibility_lag(self) -> None:
        with self._lock:
            self._active.visibility_lag = False
            self.refresh()

    def start_index_rebuild(self) -> None:
        with self._lock:
            self._active.index_rebuild = True

    def stop_index_rebuild(self) -> None:
        with self._lock:
            self._active.index_rebuild = False

    def start_slow_replica(self, node: str, factor: float) -> None:
        with self._lock:
            self._node(node)
            self._active.slow[node] = faults.check_factor(factor)

    def stop_slow_replica(self, node: str) -> None:
        with self._lock:
            self._node(node)
            self._active.slow.pop(node, None)

    # -----------------------------------------------------------------------------------------
    # Internals (called with the lock held, except the two a subclass may replace first).

    def _new_replica(self, shard: int) -> Replica:
        """A fresh replica of `shard` (called while the cluster is built)."""
        capacity, m, ef_construction, ef_search = self._index_settings
        return Replica(
            self._dim,
            self._metric,
            capacity,
            m,
            ef_construction,
            ef_search,
            self._dice.index_seed + shard,
        )

    def _stored(self, batch: Sequence[Record]) -> list[Stored]:
        """A checked upsert batch as what the replicas store (ids, versions and metadata are
        checked already)."""
        # One copy of the whole batch, checked at once; its rows are shared (read-only) with
        # every replica and every reader.
        matrix = np.array(
            validate_vectors([r.vector for r in batch], self._dim, [r.id for r in batch]),
            dtype=np.float32,
        )
        matrix.flags.writeable = False
        return [
            Stored(r.id, r.version, False, matrix[i], dict(r.metadata)) for i, r in enumerate(batch)
        ]

    def _write(self, items: list[Stored], fenced: bool) -> dict[str, bool]:
        self._roll_error()
        placed = [(item, self._shard_of(item.id)) for item in items]
        # Every shard must be writable before anything is applied: Unavailable promises
        # the call had no effect.
        targets = {shard: self._writable(shard) for shard in sorted({s for _, s in placed})}
        applied: dict[str, bool] = {}
        for item, shard in placed:
            replicas = targets[shard]
            if not replicas[0].would_apply(item, fenced):
                applied[item.id] = False
            elif self._dice.write_lost(self._active.lost_ack_rate):
                applied[item.id] = True  # acknowledged, never stored
            else:
                for replica in replicas:
                    replica.apply(item, fenced)
                applied[item.id] = True
        for shard, replicas in targets.items():
            self._shard_seq[shard] += 1
            for replica in replicas:
                replica.applied_seq = self._shard_seq[shard]
                if not self._active.visibility_lag:
                    replica.publish()
        return applied

    def _writable(self, shard: int) -> list[Replica]:
        serving = self._serving(shard)
        if not serving:
            self._raise_unreachable(shard)
        return serving

    def _pick_replica(self, shard: int) -> Replica:
        serving = self._serving(shard)
        if not serving:
            self._raise_unreachable(shard)
        replica = serving[self._next_read[shard] % len(serving)]
        self._next_read[shard] += 1
        return replica

    def _serving(self, shard: int) -> list[Replica]:
        seq, status = self._shard_seq[shard], self._status
        return [
            replica
            for node, replica in zip(self._node_ids[shard], self._replicas[shard], strict=True)
            if status[node] == UP and replica.applied_seq == seq
        ]

    def _raise_unreachable(self, shard: int) -> None:
        states = {
            node_id(shard, i): self._describe(node_id(shard, i))
            for i in range(len(self._replicas[shard]))
        }
        if any(self._status[node] == PAUSED for node in states):
            raise Timeout(f"{self.name}: shard {shard} did not answer: {states}")
        raise Unavailable(f"{self.name}: no replica of shard {shard} can serve: {states}")

    def _reconcile(self, shard: int) -> None:
        """Bring every live replica of `shard` to the most advanced live one (see the module
        docstring); give up on writes no surviving node holds."""
        replicas = self._replicas[shard]
        live = [r for i, r in enumerate(replicas) if self._status[node_id(shard, i)] == UP]
        if not live:
            return
        source = max(live, key=lambda r: r.applied_seq)  # first of the most advanced
        for replica in live:
            if replica.applied_seq < source.applied_seq:
                if self.catch_up:
                    replica.copy_from(source)
                else:
                    replica.applied_seq = source.applied_seq
        if source.applied_seq < self._shard_seq[shard]:
            newer_elsewhere = any(r.applied_seq > source.applied_seq for r in replicas)
            if not newer_elsewhere:
                self._shard_seq[shard] = source.applied_seq

    def _authoritative(self) -> list[Replica]:
        """Per shard, the most advanced replica whatever its status: what reconciliation
        would serve once every node is back."""
        return [max(shard, key=lambda r: r.applied_seq) for shard in self._replicas]

    def _roll_error(self) -> None:
        if self._dice.call_fails(self._active.error_rate):
            raise Unavailable(f"{self.name}: injected error (error-rate {self._active.error_rate})")

    def _shard_of(self, record_id: str) -> int:
        return bucket_of(record_id, self._shards)

    def _node_names(self) -> list[str]:
        return [node_id(s, r) for s in range(self._shards) for r in range(len(self._replicas[s]))]

    def _node(self, node: str) -> Replica:
        if node not in self._status:
            raise ValueError(
                f"unknown node {node!r} in {self.name}; nodes are {self._node_names()}"
            )
        shard, replica = parse_node_id(node)
        return self._replicas[shard][replica]

    def _describe(self, node: str) -> str:
        shard, replica = parse_node_id(node)
        status = self._status[node]
        behind = self._replicas[shard][replica].applied_seq != self._shard_seq[shard]
        return f"{status} (catching up)" if status == UP and behind else status


def _up_to_kth(dists: npt.NDArray[np.float32], k: int) -> list[int]:
    """Positions whose distance is at most the k-th smallest (every position if that is NaN)."""
    kth = np.partition(dists, k - 1)[k - 1]
    if np.isnan(kth):
        return list(range(len(dists)))
    found: list[int] = np.flatnonzero(dists <= kth).tolist()
    return found


def _check_filter(filter: object) -> None:
    if filter is not None and not isinstance(filter, Mapping):
        raise InvalidRequest(
            f"filter must be a mapping of metadata key to value, got {brief(filter)}"
        )
