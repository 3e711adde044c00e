"""The scaled fidelity: a catalog of millions of which a sample holds vectors, and service
times from a measured cost profile instead of the scenario's latency distributions.

`[clusters] fidelity = "scaled"` (or `vecmig simulate --fidelity scaled`) swaps three things
and nothing else, as SimPy's `RealtimeEnvironment` swaps only the clock:

* the sides are `ScaledCluster`s (`harness/clusters/scaled.py`): every `stride`-th product
  holds a vector in a real HNSW index, the rest are versions and tombstones only, under the
  same fencing, faults and catch-up;
* the catalog is `ScaledCatalog`: vectors only for the sample, ids of one fixed width;
* a side's service time is `ModelledService`: the profile's cost at the side's modelled index
  size per shard (every record counts, vectors or not) for the share of the request one shard
  does (shards work in parallel), times a lognormal jitter measured with it, times the
  slow-replica factor. Network legs, queues, timeouts and faults stay the scenario's.

The migration core, the layer, the workers, the traffic's arrival process and the checker
run unchanged on every record. Searches can only find sampled products, so search results,
recall and mirrored-read comparisons are judged on the sample; gets, writes, lost writes,
resurrected deletes and divergence on every id.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vecmig.harness.catalog import Catalog
from vecmig.harness.clusters.base import VECTORLESS, Record, Vector
from vecmig.harness.clusters.scaled import CatalogSample, ScaledCluster
from vecmig.harness.core import requests as rq
from vecmig.harness.costs import CostProfile

NS_PER_US = 1000


class ScaledCatalog:
    """A catalog of `sample.products` products of which only the sampled ones have vectors
    (generated exactly as `Catalog` generates that many products, then numbered every
    `stride`-th). With a stride of 1 and six-digit ids it is the exact catalog itself."""

    def __init__(self, sample: CatalogSample, dim: int, categories: int, seed: int) -> None:
        self.sample = sample
        inner = Catalog.generate(sample.size, dim, categories, seed=seed)
        records = [
            Record(sample.id_of(i * sample.stride), r.vector, r.metadata, r.version)
            for i, r in enumerate(inner.records())
        ]
        category_of = {
            renamed.id: inner.category_of(r.id)
            for renamed, r in zip(records, inner.records(), strict=True)
        }
        self._vectors = Catalog(inner.dim, inner.spread, inner.subcenters, records, category_of)

    @property
    def dim(self) -> int:
        return self._vectors.dim

    @property
    def categories(self) -> int:
        return self._vectors.categories

    def __len__(self) -> int:
        return self.sample.products

    def id_of(self, number: int) -> str:
        return self.sample.id_of(number)

    def records(self) -> list[Record]:
        """The sampled products (the initial load of the index), in id order."""
        return self._vectors.records()

    def is_sampled(self, record_id: str) -> bool:
        return self.sample.sampled(self.sample.number(record_id))

    def neighbour(self, record_id: str) -> str:
        """The sampled product nearest below `record_id`: whose vector a shopper's search for
        "similar products" uses when the product viewed has none."""
        return self.sample.id_of(self.sample.neighbour(self.sample.number(record_id)))

    def query_vector(self, rng: np.random.Generator, category: int | None = None) -> Vector:
        return self._vectors.query_vector(rng, category)

    def reembed(self, record_id: str, rng: np.random.Generator) -> Vector:
        """A new embedding for a sampled product; `VECTORLESS` for the others (no draws)."""
        if not self.is_sampled(record_id):
            return VECTORLESS
        return self._vectors.reembed(record_id, rng)

    def new_product(self, rng: np.random.Generator, record_id: str) -> Record:
        """A product a merchant adds: with a vector if its number is in the sample."""
        if not self.is_sampled(record_id):
            return Record(record_id, VECTORLESS, {}, 1)
        return self._vectors.new_product(rng, record_id)


@dataclass
class ModelledService:
    """Service times from a cost profile (see the module docstring); records the largest
    index size it costed, so the report can say whether it extrapolated."""

    profile: CostProfile
    normal: Any
    """A callable giving standard normal draws (the driver's `Draws.normal`)."""
    largest_index: float = 0.0
    charged_ns: dict[str, int] = field(default_factory=dict)

    def __call__(self, request: Any, op: str, port: ScaledCluster) -> int:
        size = port.shard_size()
        if size > self.largest_index:
            self.largest_index = size
        us = self.cost_us(request, op, size, port.shards)
        jitter = math.exp(self.profile.jitter_sigma * self.normal())
        ns = max(0, int(us * NS_PER_US * jitter * port.latency_multiplier(op)))
        self.charged_ns[op] = self.charged_ns.get(op, 0) + ns
        return ns

    def cost_us(self, request: Any, op: str, size: float, shards: int = 1) -> float:
        """The profile's median cost of `request` on a side of `shards` shards of `size`
        records each. The shards work in parallel (the profile measured one): a batch costs
        what its share on one shard costs, a search what one shard's top k costs."""
        profile = self.profile

        def share(n: int) -> int:
            return -(-n // shards)

        if isinstance(request, rq.Upsert):
            return profile.insert_us(size, share(len(request.records)))
        if isinstance(request, rq.Search):
            return profile.search_us(size, request.k)
        if isinstance(request, rq.Get):
            return profile.linear_us("get", share(len(request.ids)))
        if isinstance(request, rq.Delete):
            return profile.linear_us("delete", share(len(request.tombstones)))
        if isinstance(request, rq.Scan):
            return profile.linear_us("scan", request.limit)  # every shard pages `limit` ahead
        if isinstance(request, rq.Checksums):
            return profile.linear_us("checksums", size)  # the shards work in parallel
        return profile.linear_us("count", 0)

    def report(self) -> dict[str, Any]:
        return {
            "largest_index_per_shard": round(self.largest_index),
            "largest_index_measured": self.profile.largest_index,
            "extrapolated": self.profile.extrapolates(self.largest_index),
            "charged_s": {op: round(ns / 1e9, 3) for op, ns in sorted(self.charged_ns.items())},
        }


def load_event_value(catalog: ScaledCatalog, every_id: bool) -> dict[str, Any]:
    """The history's `load` event: every product at version 1 (or only the sampled ones), with
    the fields of the sampled ones (the only ones a filter can select)."""
    sample = catalog.sample
    sampled = catalog.records()
    return {
        "records": {sample.id_of(n): 1 for n in range(sample.products)}
        if every_id
        else {r.id: r.version for r in sampled},
        "fields": {r.id: dict(r.metadata) for r in sampled},
    }


def judges_sampled_ids(catalog: ScaledCatalog) -> Callable[[Mapping[str, Any]], bool]:
    """The driver's `judged` for `judge = "sample"`: every search, and ops on sampled ids."""
    sample = catalog.sample

    def judged(invoke_value: Mapping[str, Any]) -> bool:
        record_id = invoke_value.get("id")
        return record_id is None or sample.sampled(sample.number(record_id))

    return judged


def fidelity_report(
    catalog: ScaledCatalog,
    profiles: Mapping[str, CostProfile],
    service: Mapping[str, ModelledService],
    every_id: bool,
) -> dict[str, Any]:
    """report.json's `fidelity` for a scaled run: the catalog, the sample, which ids the
    checker judged for what, and the cost profiles with the machines they came from: under
    `profile` old's, under `profiles` each side's (old and new differ in a migration between
    two engines)."""
    sample = catalog.sample
    return {
        "mode": "scaled",
        "products": sample.products,
        "sampled": sample.size,
        "stride": sample.stride,
        "judged": {
            "gets, writes, lost writes, resurrected deletes, divergence": "every id"
            if every_id
            else f'the sampled ids only (clusters.judge = "sample"): ops on the other '
            f"{sample.products - sample.size:,} products ran but are not in the history",
            "search results, filters, recall, mirrored reads": (
                f"the {sample.size:,} sampled ids (every {sample.stride}th product) and "
                "sampled products added later: only they hold vectors"
            ),
        },
        "profile": _describe(profiles["old"]),
        "profiles": {side: _describe(profile) for side, profile in profiles.items()},
        "service": {side: model.report() for side, model in service.items()},
    }


def _describe(profile: CostProfile) -> dict[str, Any]:
    return {
        "name": profile.name,
        "source": profile.source,
        "engine": profile.engine,
        "clock": profile.clock,
        "machine": dict(profile.machine),
        "not_measured": list(profile.not_measured),
    }
