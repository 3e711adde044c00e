"""Backfill throughput against raw hnswlib, side by side in one run.

    python bench/bench_backfill.py [--records 20000] [--dim 32] [--batch 1000]

Copies a catalog from one FakeCluster to another with the core's safe backfill (fenced
upserts, tombstones, a durable checkpoint after every batch, unthrottled) and times it
against `hnswlib.Index.add_items` of the same vectors into an index built with the same
parameters. The target cluster has one shard and one replica, so both do the same ANN work;
a 2x2 target is reported as well (it builds four graphs, so expect about a quarter).
"""

from __future__ import annotations

import argparse
import time

import hnswlib
import numpy as np

from vecmig.harness.catalog import Catalog
from vecmig.harness.clusters.base import Side
from vecmig.harness.clusters.fake import FakeCluster
from vecmig.harness.core.strategy import SAFE
from vecmig.harness.core.workers import Backfill, Throttle
from vecmig.harness.drive.step import StepDriver
from vecmig.harness.state import MemoryStore


def raw_hnswlib(vectors: np.ndarray, m: int, ef_construction: int) -> float:
    index = hnswlib.Index(space="cosine", dim=vectors.shape[1])
    index.init_index(max_elements=len(vectors), M=m, ef_construction=ef_construction, random_seed=0)
    index.set_num_threads(1)
    start = time.perf_counter()
    index.add_items(vectors, np.arange(len(vectors)))
    return time.perf_counter() - start


def backfill(catalog: Catalog, shards: int, replicas: int, batch: int) -> float:
    old = FakeCluster(catalog.dim, shards=1, replicas=1, capacity=len(catalog), name="old")
    old.upsert(catalog.records(), fenced=False)
    new = FakeCluster(
        catalog.dim, shards=shards, replicas=replicas, capacity=len(catalog), name="new"
    )
    driver = StepDriver({Side.OLD: old, Side.NEW: new}, MemoryStore())
    worker = Backfill(SAFE, Throttle(batch_size=batch, max_batch=batch, unthrottled=True))
    start = time.perf_counter()
    while not driver.run_op(worker.batch(attempt=0)).value["done"]:
        pass
    elapsed = time.perf_counter() - start
    assert new.count().live == len(catalog), new.count()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    catalog = Catalog.generate(args.records, args.dim, categories=20, seed=0)
    vectors = np.stack([r.vector for r in catalog.records()])
    rows = []
    for _ in range(args.repeat):
        raw = raw_hnswlib(vectors, m=16, ef_construction=100)
        one = backfill(catalog, 1, 1, args.batch)
        four = backfill(catalog, 2, 2, args.batch)
        rows.append((raw, one, four))
    raw, one, four = (min(col) for col in zip(*rows, strict=True))
    n = args.records
    print(f"records={n} dim={args.dim} batch={args.batch} (best of {args.repeat})")
    print(f"raw hnswlib add_items      {n / raw:10.0f} records/s")
    print(f"safe backfill -> 1x1 fake  {n / one:10.0f} records/s   ratio {raw / one:.2f}x raw")
    print(
        f"safe backfill -> 2x2 fake  {n / four:10.0f} records/s   "
        f"ratio {raw / four:.2f}x raw (4 graphs)"
    )


if __name__ == "__main__":
    main()
