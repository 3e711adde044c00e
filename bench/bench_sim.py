"""How fast the simulator runs: simulated client ops per wall second on a scenario, against a
bare loop of SimPy + hnswlib doing the same number of searches (with the same share of
filtered ones) and writes, in the same process.

Two bare loops:
* hnswlib: one `hnswlib.Index` of the catalog, one SimPy timeout per op, filters as
  hnswlib filter callbacks: the least any simulator of this traffic could do;
* fake cluster: the same ops straight on one `FakeCluster` (sharded, replicated HNSW),
  one SimPy timeout per op: what the harness adds over its own store.

Run: python bench/bench_sim.py [SCENARIO] [--seed N] [--strategy safe|naive]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import hnswlib
import numpy as np
import simpy

from vecmig.harness.catalog import Catalog
from vecmig.harness.clusters.base import Record, Tombstone
from vecmig.harness.clusters.fake import FakeCluster
from vecmig.sim.scenario import load
from vecmig.sim.simulation import Simulation


def simulate(
    scenario_name: str, seed: int, strategy: str
) -> tuple[float, float, Counter[str], int]:
    scenario = load(scenario_name)
    started, cpu = time.perf_counter(), time.process_time()
    result = Simulation(scenario, strategy, seed).run()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    mix: Counter[str] = Counter(c.f for c in result.completed)
    filtered = sum(
        1 for e in result.events if e.f == "search" and e.type == "invoke" and "filter" in e.value
    )
    return wall, cpu, mix, filtered


def _plan(mix: Counter[str], filtered: int, seed: int) -> list[str]:
    ops = (
        ["search"] * (mix["search"] - filtered)
        + ["filtered"] * filtered
        + ["get"] * mix["get"]
        + ["upsert"] * mix["upsert"]
        + ["delete"] * mix["delete"]
    )
    order = np.random.default_rng(seed).permutation(len(ops))
    return [ops[i] for i in order]


def bare_hnswlib(catalog: Catalog, plan: list[str], seed: int) -> tuple[float, float]:
    records = catalog.records()
    index = hnswlib.Index(space="cosine", dim=catalog.dim)
    index.init_index(
        max_elements=len(records) + len(plan) + 16, M=16, ef_construction=100, random_seed=seed
    )
    index.set_ef(64)
    index.set_num_threads(1)
    index.add_items(np.stack([r.vector for r in records]), np.arange(len(records)), num_threads=1)
    label_of = {r.id: i for i, r in enumerate(records)}
    meta = {i: r.metadata for i, r in enumerate(records)}
    ids = [r.id for r in records]
    rng = np.random.default_rng(seed)
    queries = [catalog.query_vector(rng) for _ in range(256)]
    env = simpy.Environment()
    next_label = len(records)

    def loop():  # type: ignore[no-untyped-def]
        nonlocal next_label
        for n, op in enumerate(plan):
            yield env.timeout(1_000)
            q = queries[n % len(queries)]
            record_id = ids[n % len(ids)]
            if op == "search":
                index.knn_query(q, k=10, num_threads=1)
            elif op == "filtered":
                index.knn_query(
                    q, k=10, num_threads=1, filter=lambda label: bool(meta[label].get("in_stock"))
                )
            elif op == "get":
                label_of.get(record_id)
            elif op == "upsert":
                old = label_of.get(record_id)
                if old is not None:
                    index.mark_deleted(old)
                index.add_items(q[np.newaxis, :], np.asarray([next_label]), num_threads=1)
                label_of[record_id] = next_label
                meta[next_label] = meta.get(old, {}) if old is not None else {}
                next_label += 1
            else:
                old = label_of.pop(record_id, None)
                if old is not None:
                    index.mark_deleted(old)

    env.process(loop())
    started, cpu = time.perf_counter(), time.process_time()
    env.run()
    return time.perf_counter() - started, time.process_time() - cpu


def bare_fake(catalog: Catalog, plan: list[str], seed: int) -> tuple[float, float]:
    cluster = FakeCluster(catalog.dim, shards=2, replicas=2, seed=seed)
    records = catalog.records()
    cluster.upsert(records, fenced=False)
    ids = [r.id for r in records]
    rng = np.random.default_rng(seed)
    queries = [catalog.query_vector(rng) for _ in range(256)]
    env = simpy.Environment()
    version = 1

    def loop():  # type: ignore[no-untyped-def]
        nonlocal version
        for n, op in enumerate(plan):
            yield env.timeout(1_000)
            q = queries[n % len(queries)]
            record_id = ids[n % len(ids)]
            if op == "search":
                cluster.search(q, 10)
            elif op == "filtered":
                cluster.search(q, 10, {"in_stock": True})
            elif op == "get":
                cluster.get([record_id])
            elif op == "upsert":
                version += 1
                cluster.upsert([Record(record_id, q, {"category": 0, "in_stock": True}, version)])
            else:
                version += 1
                cluster.delete([Tombstone(record_id, version)])

    env.process(loop())
    started, cpu = time.perf_counter(), time.process_time()
    env.run()
    return time.perf_counter() - started, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scenario", nargs="?", default="default")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--strategy", default="safe")
    args = parser.parse_args()
    scenario = load(args.scenario)
    wall, cpu, mix, filtered = simulate(args.scenario, args.seed, args.strategy)
    ops = sum(mix.values())
    print(
        f"simulate {args.scenario} ({args.strategy}, seed {args.seed}): {ops} client ops "
        f"({', '.join(f'{f} {n}' for f, n in sorted(mix.items()))}; {filtered} filtered searches) "
        f"over {scenario.duration_s:.0f} simulated s in {wall:.2f} s wall ({cpu:.2f} s CPU): "
        f"{ops / wall:,.0f} ops per wall s, {ops / cpu:,.0f} per CPU s"
    )
    catalog = Catalog.generate(
        scenario.catalog.products, scenario.catalog.dim, scenario.catalog.categories, seed=args.seed
    )
    plan = _plan(mix, filtered, args.seed)
    for name, bare in (("hnswlib", bare_hnswlib), ("fake cluster", bare_fake)):
        bare_wall, bare_cpu = bare(catalog, plan, args.seed)
        print(
            f"bare SimPy + {name}: the same {len(plan)} ops in {bare_wall:.2f} s wall "
            f"({bare_cpu:.2f} s CPU); ratio simulator / bare: {bare_wall / wall:.2f} by wall "
            f"time, {bare_cpu / cpu:.2f} by CPU time"
        )


if __name__ == "__main__":
    main()
