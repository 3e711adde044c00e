"""How fast the fake cluster takes vector updates, against raw hnswlib, in one run.

Why it exists: hnswlib's in-place update of an existing label re-links the graph and is an
order of magnitude slower than an insert, so the fake cluster marks the old label deleted and
inserts a fresh one. This prints the three rates so the choice can be re-checked on any
machine:

    python bench/bench_fake_updates.py [--n 5000] [--updates 2000] [--dim 32]

All indexes run single-threaded, as the fake cluster does (for deterministic graphs).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import hnswlib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vecmig.harness.catalog import Catalog
from vecmig.harness.clusters.base import Record
from vecmig.harness.clusters.fake import FakeCluster


def _index(dim: int, capacity: int) -> hnswlib.Index:
    index = hnswlib.Index(space="cosine", dim=dim)
    index.init_index(max_elements=capacity, M=16, ef_construction=100, random_seed=1)
    index.set_num_threads(1)
    return index


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="records loaded first")
    parser.add_argument("--updates", type=int, default=2000, help="vector updates timed")
    parser.add_argument("--dim", type=int, default=32)
    args = parser.parse_args()
    n, updates, dim = args.n, min(args.updates, args.n), args.dim

    catalog = Catalog.generate(n, dim, categories=20, seed=1)
    records = catalog.records()
    rng = np.random.default_rng(2)
    base = np.stack([r.vector for r in records])
    fresh = np.stack([catalog.reembed(r.id, rng) for r in records[:updates]])

    # 1. raw hnswlib: one add_items per new label (one write per call, as clients send them).
    index = _index(dim, 2 * n + updates)
    start = time.perf_counter()
    for i in range(n):
        index.add_items(base[i : i + 1], [i], num_threads=1)
    insert_rate = _rate(n, time.perf_counter() - start)

    # 2. raw hnswlib: in-place update of existing labels.
    start = time.perf_counter()
    for i in range(updates):
        index.add_items(fresh[i : i + 1], [i], num_threads=1)
    inplace_rate = _rate(updates, time.perf_counter() - start)

    # 3. raw hnswlib: mark_deleted + a fresh label (what the fake cluster does underneath).
    index = _index(dim, 2 * n + updates)
    index.add_items(base, np.arange(n), num_threads=1)
    start = time.perf_counter()
    for i in range(updates):
        index.mark_deleted(i)
        index.add_items(fresh[i : i + 1], [n + i], num_threads=1)
    relabel_rate = _rate(updates, time.perf_counter() - start)

    # 4. FakeCluster (2 shards x 2 replicas: each update lands on two indexes), one id per call.
    cluster = FakeCluster(dim, shards=2, replicas=2, capacity=n)
    for i in range(0, n, 1000):
        cluster.upsert(records[i : i + 1000])
    changed = [Record(r.id, fresh[i], r.metadata, 2) for i, r in enumerate(records[:updates])]
    start = time.perf_counter()
    for record in changed:
        cluster.upsert([record])
    fake_rate = _rate(updates, time.perf_counter() - start)

    # 5. FakeCluster metadata-only updates (same vector): the index is not touched.
    restocked = [Record(r.id, r.vector, {**r.metadata, "in_stock": False}, 3) for r in changed]
    start = time.perf_counter()
    for record in restocked:
        cluster.upsert([record])
    metadata_rate = _rate(updates, time.perf_counter() - start)

    print(f"n={n} updates={updates} dim={dim} (single-threaded)")
    print(f"  hnswlib add_items, new labels        {insert_rate:10.0f} ops/s")
    print(f"  hnswlib in-place update              {inplace_rate:10.0f} ops/s")
    print(f"  hnswlib mark_deleted + new label     {relabel_rate:10.0f} ops/s")
    print(f"  FakeCluster upsert, new vector       {fake_rate:10.0f} ops/s  (2 replicas each)")
    print(f"  FakeCluster upsert, metadata only    {metadata_rate:10.0f} ops/s")
    print(f"  ratio insert / in-place              {insert_rate / inplace_rate:10.1f}x")
    print(f"  ratio FakeCluster update / in-place  {fake_rate / inplace_rate:10.1f}x")
    print(f"  ratio FakeCluster update / insert    {fake_rate / insert_rate:10.2f}x")


if __name__ == "__main__":
    main()
