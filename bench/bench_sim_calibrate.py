"""Measure what a search, a get and an upsert cost on a fake cluster shard, so that the
simulator's default service times (`sim/scenario.py`, `LatencyConfig`) rest on numbers.

Run: python bench/bench_sim_calibrate.py [--records 20000] [--dim 128]
The figures are CPU time of one in-process call; a real engine adds its own overheads, which
the scenario's network latency stands for.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from vecmig.harness.catalog import Catalog
from vecmig.harness.clusters.base import Record
from vecmig.harness.clusters.fake import FakeCluster


def measure(records: int, dim: int, reps: int = 2000) -> dict[str, float]:
    catalog = Catalog.generate(records, dim, categories=8, seed=1)
    cluster = FakeCluster(dim, shards=1, replicas=1, seed=1, capacity=records + reps)
    cluster.upsert(catalog.records(), fenced=False)
    rng = np.random.default_rng(2)
    queries = [catalog.query_vector(rng) for _ in range(reps)]
    ids = [r.id for r in catalog.records()]
    out: dict[str, float] = {}

    start = time.perf_counter()
    for q in queries:
        cluster.search(q, 10)
    out["search_us"] = (time.perf_counter() - start) / reps * 1e6

    start = time.perf_counter()
    for q in queries:
        cluster.search(q, 10, {"in_stock": True})
    out["filtered_search_us"] = (time.perf_counter() - start) / reps * 1e6

    start = time.perf_counter()
    for i in range(reps):
        cluster.get([ids[i % len(ids)]])
    out["get_us"] = (time.perf_counter() - start) / reps * 1e6

    start = time.perf_counter()
    for i in range(reps):
        record_id = ids[i % len(ids)]
        cluster.upsert([Record(record_id, queries[i], {"category": 0}, 2 + i)])
    out["upsert_us"] = (time.perf_counter() - start) / reps * 1e6
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=128)
    args = parser.parse_args()
    figures = measure(args.records, args.dim)
    print(f"{args.records} records, dim {args.dim}, one shard, one replica:")
    for name, value in figures.items():
        print(f"  {name:20s} {value:8.1f}")


if __name__ == "__main__":
    main()
