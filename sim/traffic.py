"""E-commerce traffic: shoppers who view a product and look for similar ones, merchants who
change prices and stock, add, re-embed, delist and list again products, and an optional bulk
re-embedding job, arriving on a diurnal curve with flash-sale spikes.

Clients supply the version of every write (as an app passes a product's `updated_at`): the
generator keeps a counter per id, so versions strictly increase per id whatever the
interleaving. All randomness comes from the `numpy.random.Generator` streams it is given.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import numpy as np
import simpy

from vecmig.harness.catalog import Catalog, product_id
from vecmig.harness.clusters.base import VECTORLESS, Record, Vector, searchable
from vecmig.harness.core.requests import Operation, Outcome
from vecmig.sim.driver import Draws, Flight, SimProcess
from vecmig.sim.fleet import AppInstance, Fleet
from vecmig.sim.scaled import ScaledCatalog
from vecmig.sim.scenario import MERCHANT_ACTIONS, SECOND, TrafficConfig

SESSION_KINDS = ("shopper", *MERCHANT_ACTIONS)


@dataclass
class Product:
    """What the merchants believe a product is: its last written vector and metadata."""

    vector: Vector
    metadata: dict[str, object]
    listed: bool = True


class Traffic:
    def __init__(
        self,
        env: simpy.Environment,
        fleet: Fleet,
        catalog: Catalog | ScaledCatalog,
        config: TrafficConfig,
        duration_ns: int,
        rng: np.random.Generator,
        content_rng: np.random.Generator,
    ) -> None:
        self.env = env
        self.fleet = fleet
        self.catalog = catalog
        self.config = config
        self.duration_ns = duration_ns
        self.rng = rng
        self.draws = Draws(rng)
        self.content = content_rng
        """Vectors and prices: a separate stream, so the schedule of arrivals does not depend
        on the sizes of the things drawn."""
        self.products: dict[str, Product] = {}
        """What the merchants believe of each product. A scaled catalog's products beyond its
        sample enter only when first written (see `_product`)."""
        for record in catalog.records():
            self.products[record.id] = Product(record.vector, dict(record.metadata))
        self.id_of: Callable[[int], str] = (
            catalog.id_of if isinstance(catalog, ScaledCatalog) else product_id
        )
        """The n-th product's id: products are numbered in the order they were created."""
        self.count = len(catalog)
        """How many products exist, delisted ones included."""
        self.versions: dict[str, int] = {i: 1 for i in self.products}
        """The last version written per id; an id missing here is at version 1."""
        self.delisted: list[str] = []
        """Products a merchant delisted, in no particular order: what `relist` draws from."""
        weights = [config.merchant.get(a, 0.0) for a in SESSION_KINDS[1:]]
        total = sum(weights) or 1.0
        self._merchant_cdf = np.cumsum([w / total for w in weights]).tolist()
        self.sessions = 0
        self.dropped = 0
        """Sessions that found no live instance to serve them."""
        self.active = 0

    # -- the arrival process ---------------------------------------------------------------------

    def rate(self, t_ns: int) -> float:
        """Sessions per second at simulated time t: the diurnal curve times any spike."""
        c = self.config
        t = t_ns / SECOND
        rate = c.rate * (
            1.0 + c.diurnal_amplitude * math.sin(2 * math.pi * t / c.diurnal_period_s - math.pi / 2)
        )
        for spike in c.spikes:
            if spike.start_s <= t < spike.start_s + spike.duration_s:
                rate *= spike.factor
        return max(rate, 0.0)

    def run(self) -> SimProcess:
        """The arrivals (a SimPy process): ends when the traffic's duration is over."""
        env = self.env
        if self.config.bulk_reembed is not None and self.config.bulk_reembed.count:
            env.process(self._bulk_reembed())
        while True:
            rate = self.rate(int(env.now))
            # Thinned Poisson arrivals: at most one second between re-reads of the rate.
            gap = -math.log1p(-self.draws.uniform()) / rate if rate > 0 else 1.0
            if gap > 1.0:
                yield env.timeout(SECOND)
            else:
                yield env.timeout(max(1, int(gap * SECOND)))
                if int(env.now) >= self.duration_ns:
                    return
                self._arrive()
            if int(env.now) >= self.duration_ns:
                return

    def _arrive(self) -> None:
        instance = self.fleet.pick(self.draws.uniform())
        kind_draw = self.draws.uniform()
        if instance is None:
            # No instance can serve: a shopper sees an error page, which the history records
            # as a failed read (a merchant's write is simply not sent, and so not recorded).
            self.dropped += 1
            if kind_draw < self.config.shopper_share:
                record_id = self._some_id()
                self.fleet.driver.refuse(
                    "get", {"id": record_id}, "no app instance is ready to serve"
                )
            return
        self.sessions += 1
        if kind_draw < self.config.shopper_share:
            self._shopper(instance)
        else:
            self._merchant(instance)

    # -- sessions --------------------------------------------------------------------------------

    def _shopper(self, instance: AppInstance) -> None:
        """View a product, then ask for similar ones (k=10, sometimes filtered)."""
        record_id = self._some_id()
        product = self._query_product(record_id)
        filter_draw = self.draws.uniform()
        mirror_draw = self.draws.uniform()
        if filter_draw < self.config.filtered_share / 2:
            flt: dict[str, object] | None = {"category": product.metadata.get("category", 0)}
        elif filter_draw < self.config.filtered_share:
            flt = {"in_stock": True}
        else:
            flt = None

        def then_search(flight: Flight, outcome: Outcome) -> None:
            owner: AppInstance = flight.owner
            if flight.crashed or not owner.alive:
                self.active -= 1
                return

            def search(on: AppInstance) -> Operation:
                return on.layer.search(product.vector, self.config.k, flt, mirror_draw=mirror_draw)

            self._run(owner, search(owner), last=True, reissue=search)

        def get(on: AppInstance) -> Operation:
            return on.layer.get(record_id)

        self.active += 1
        self.fleet.run(instance, get(instance), then_search, reissue=get)

    def _merchant(self, instance: AppInstance) -> None:
        draw = self.draws.uniform()
        action = SESSION_KINDS[
            1
            + next(
                i
                for i, c in enumerate(self._merchant_cdf)
                if draw <= c or i == len(self._merchant_cdf) - 1
            )
        ]
        op = self.write(instance, action)
        if op is not None:
            self.active += 1
            self._run(instance, op, last=True)

    def write(self, instance: AppInstance, action: str) -> Operation | None:
        """The op for one merchant action, with the next version of its product."""
        if action == "add":
            record_id = self.id_of(self.count)
            self.count += 1
            record = self.catalog.new_product(self.content, record_id)
            self.products[record_id] = Product(record.vector, dict(record.metadata))
            self.versions[record_id] = 1
            return instance.layer.upsert(record)
        if action == "relist":
            return self._relist(instance)
        listed = self._listed_id()
        if listed is None:
            return None
        record_id = listed
        product = self._product(record_id)
        version = self.versions.get(record_id, 1) + 1
        self.versions[record_id] = version
        if action == "delist":
            product.listed = False
            self.delisted.append(record_id)
            return instance.layer.delete(record_id, version)
        metadata = dict(product.metadata)
        if action == "price":
            price = cast(float, metadata.get("price", 10.0))
            metadata["price"] = round(price * float(self.content.uniform(0.8, 1.2)), 2)
        elif action == "stock":
            metadata["in_stock"] = not metadata.get("in_stock", True)
        vector = product.vector
        if action == "reembed":
            vector = self.catalog.reembed(record_id, self.content)
        product.vector, product.metadata = vector, metadata
        return instance.layer.upsert(Record(record_id, vector, metadata, version))

    def _some_id(self) -> str:
        """A product for a session: one of the first `hot_ids` products for a `hot_share` of
        sessions (a best seller, a product on the front page), otherwise any."""
        hot = self.config.hot_ids
        if hot and self.draws.uniform() < self.config.hot_share:
            return self.id_of(int(self.draws.uniform() * min(hot, self.count)))
        return self.id_of(int(self.draws.uniform() * self.count))

    def _product(self, record_id: str) -> Product:
        """What merchants believe of a product, entered on first use for a scaled catalog's
        products beyond its sample (listed, no vector, no fields; at version 1 until written)."""
        product = self.products.get(record_id)
        if product is None:
            product = self.products[record_id] = Product(VECTORLESS, {})
        return product

    def _query_product(self, record_id: str) -> Product:
        """The product whose vector and category a shopper's "similar products" search uses:
        the one viewed, or, for a scaled catalog's product without a vector, the sampled one
        numbered just below it."""
        product = self.products.get(record_id)
        if product is not None and searchable(product.vector):
            return product
        assert isinstance(self.catalog, ScaledCatalog)
        return self.products[self.catalog.neighbour(record_id)]

    def _listed(self, record_id: str) -> bool:
        product = self.products.get(record_id)
        return product is None or product.listed

    def _relist(self, instance: AppInstance) -> Operation | None:
        """List a delisted product again, back in stock, with the version after its delete's:
        an upsert of an id whose tombstone every side holds (or should)."""
        if not self.delisted:
            return None
        at = int(self.draws.uniform() * len(self.delisted))
        record_id = self.delisted[at]
        self.delisted[at] = self.delisted[-1]
        self.delisted.pop()
        product = self.products[record_id]
        product.listed = True
        product.metadata = {**product.metadata, "in_stock": True}
        version = self.versions[record_id] + 1
        self.versions[record_id] = version
        return instance.layer.upsert(
            Record(record_id, product.vector, dict(product.metadata), version)
        )

    def _listed_id(self) -> str | None:
        for _ in range(8):
            record_id = self._some_id()
            if self._listed(record_id):
                return record_id
        return None

    def _run(
        self,
        instance: AppInstance,
        op: Operation,
        last: bool,
        reissue: Callable[[AppInstance], Operation] | None = None,
    ) -> None:
        def done(flight: Flight, outcome: Outcome) -> None:
            if last:
                self.active -= 1

        self.fleet.run(instance, op, done, reissue)

    # -- the bulk job ------------------------------------------------------------------------------

    def _bulk_reembed(self) -> SimProcess:
        """Re-embed products in id order at a steady rate (a new embedding model rolls out)."""
        job = self.config.bulk_reembed
        assert job is not None
        env = self.env
        yield env.timeout(int(job.start_s * SECOND))
        gap = int(SECOND / job.rate) if job.rate > 0 else SECOND
        done = 0
        position = 0
        while done < job.count and int(env.now) < self.duration_ns and position < self.count:
            record_id = self.id_of(position)
            position += 1
            if not self._listed(record_id):
                continue
            instance = self.fleet.pick(self.draws.uniform())
            if instance is not None:
                op = self._reembed(instance, record_id)
                self.active += 1
                finished = env.event()

                def done_cb(
                    flight: Flight, outcome: Outcome, finished: simpy.Event = finished
                ) -> None:
                    self.active -= 1
                    finished.succeed()

                self.fleet.run(instance, op, done_cb)
                yield finished
                done += 1
            yield env.timeout(gap)

    def _reembed(self, instance: AppInstance, record_id: str) -> Operation:
        product = self._product(record_id)
        version = self.versions.get(record_id, 1) + 1
        self.versions[record_id] = version
        product.vector = self.catalog.reembed(record_id, self.content)
        return instance.layer.upsert(
            Record(record_id, product.vector, dict(product.metadata), version)
        )
