"""A migration rig for the step driver: two sides, the state store, the coordinator, app
instances, the backfill and the controller, all wired together, with a history recorder.

The race tests and the Hypothesis state machine build on it; users can too, with their own
adapters as the sides (`Rig(old=..., new=...)`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from vecmig.harness.catalog import Catalog
from vecmig.harness.clusters.base import ClusterPort, Filter, Record, Side, Vector
from vecmig.harness.clusters.fake import FakeCluster
from vecmig.harness.core.controller import Controller, Plan
from vecmig.harness.core.gates import GatePolicy
from vecmig.harness.core.layer import LayerConfig, MigrationLayer, Shared
from vecmig.harness.core.phases import Coordinator, InstanceView, Phase, Step
from vecmig.harness.core.requests import Operation, Outcome
from vecmig.harness.core.state import StateStore
from vecmig.harness.core.strategy import SAFE, Strategy
from vecmig.harness.core.workers import Backfill, Throttle, repair_pass, verify
from vecmig.harness.drive.step import StepDriver
from vecmig.harness.history.checker import Verdict, check
from vecmig.harness.history.ops import Recorder
from vecmig.harness.state import MemoryStore

LEASE_NS = 10_000_000_000
REQUEST_TIMEOUT_NS = 400_000_000
"""Below the instances' lease margin (0.5 s): a request still unanswered when a lease may have
run out has timed out, so no write routed by a forgotten phase lands after the coordinator
counted its instance out."""


class Rig:
    def __init__(
        self,
        strategy: Strategy = SAFE,
        *,
        records: int = 40,
        dim: int = 8,
        seed: int = 0,
        old: ClusterPort | None = None,
        new: ClusterPort | None = None,
        store: StateStore | None = None,
        lagged: frozenset[Side] = frozenset(),
        policy: GatePolicy | None = None,
        batch_size: int = 16,
        request_timeout_ns: int | None = None,
        lease_ns: int = LEASE_NS,
    ) -> None:
        """`request_timeout_ns`: a side request pending longer than this times out instead of
        being carried out (see `StepDriver`); give one below the lease margin (e.g.
        `REQUEST_TIMEOUT_NS`) to model the bounded delay that leases rely on."""
        self.strategy = strategy
        self.catalog = Catalog.generate(records, dim, categories=4, seed=seed)
        self.old = (
            old
            if old is not None
            else FakeCluster(
                dim, shards=2, replicas=2, seed=seed, name="old", catch_up=strategy.replica_catch_up
            )
        )
        self.new = (
            new
            if new is not None
            else FakeCluster(
                dim,
                shards=2,
                replicas=2,
                seed=seed + 1,
                name="new",
                catch_up=strategy.replica_catch_up,
            )
        )
        self.sides: dict[Side, ClusterPort] = {Side.OLD: self.old, Side.NEW: self.new}
        self.store: StateStore = store if store is not None else MemoryStore()
        self.recorder = Recorder()
        self.driver = StepDriver(
            self.sides,
            self.store,
            self.recorder,
            exact=self._exact,
            request_timeout_ns=request_timeout_ns,
        )
        self.lease_ns = lease_ns
        self.coordinator = Coordinator(lease_ns=lease_ns, bind_leases=strategy.lease_epoch_binding)
        self.skews: dict[str, int] = {}
        """Instance name -> how far its clock runs ahead of the driver's (ns; negative: behind)."""
        self.shared = Shared()
        self.config = LayerConfig(strategy=strategy, metric=self.old.metric, lagged_sides=lagged)
        self.instances: dict[str, MigrationLayer] = {}
        self.backfill = Backfill(strategy, Throttle(batch_size=batch_size, unthrottled=True))
        self.controller = Controller(
            self.coordinator,
            strategy,
            self.backfill,
            self.shared,
            policy or GatePolicy(min_mirrored_reads=0),
            lagged_sides=lagged,
        )
        loaded = self.catalog.records()
        self.old.upsert(loaded, fenced=False)
        self.driver.record_load(loaded)

    # -- instances ---------------------------------------------------------------------------

    def add_instance(self, name: str) -> MigrationLayer:
        now = self.driver.time
        published = self.coordinator.join(name, now)
        local = self.clock(name)(now)
        view = InstanceView(name, published.phase, published.epoch, local + self.lease_ns)
        layer = MigrationLayer(view, self.config, self.shared, node=len(self.instances) % 1024)
        self.instances[name] = layer
        return layer

    def sync(self, name: str) -> bool:
        """Instance `name` reads the config store now, acknowledges what it runs, and renews
        its lease if the coordinator grants it (the instance counts time on its own clock)."""
        layer = self.instances[name]
        now = self.driver.time
        local = self.clock(name)(now)
        changed = layer.learn(self.coordinator.published, local)
        if self.coordinator.ack(name, layer.acknowledgement(local), now):
            layer.renew(local, self.lease_ns)
        return changed

    def clock(self, name: str) -> Callable[[int], int]:
        """Instance `name`'s clock: the driver's time plus its skew (read when asked)."""
        return lambda now: now + self.skews.get(name, 0)

    def sync_all(self) -> None:
        for name in self.instances:
            self.sync(name)

    # -- operations --------------------------------------------------------------------------

    def run(
        self,
        op: Operation,
        process: int | str | None = None,
        clock: Callable[[int], int] | None = None,
    ) -> Outcome:
        return self.driver.run_op(op, process, clock)

    def step_phase(self, step: Step = Step.ADVANCE) -> Outcome:
        """One try at a phase step through its gate (see `Controller.attempt`)."""
        return self.run(self.controller.attempt(step, Plan()))

    def advance_to_shadow(self) -> None:
        """DUAL_WRITE, BACKFILL to completion, repairs, verification, SHADOW, with every
        instance synced in between: the happy path, for tests that start later."""
        for _ in range(2):
            self._must(self.step_phase(), "advance")
            self.sync_all()
        self.finish_backfill()
        self.drain_repairs()
        self._must(self.step_phase(), "advance to SHADOW")
        self.sync_all()

    def finish_backfill(self, max_batches: int = 10_000) -> None:
        for _ in range(max_batches):
            outcome = self.run(self.backfill.batch(self.coordinator.published.epoch))
            if outcome.type == "ok" and outcome.value["done"]:
                return
        raise RuntimeError("backfill did not finish")

    def drain_repairs(self, max_passes: int = 100, *, wait_for_holds: bool = False) -> None:
        """Run repair passes until no repair is due. With `wait_for_holds`, let time pass
        until the intents of writes that may still be under way are due too, and repair them
        (the end of a run: whatever a crashed writer left behind)."""
        for _ in range(max_passes):
            if wait_for_holds and self.store.repair_backlog() > self.store.repair_backlog(
                self.driver.time
            ):
                # Only intents are left, held: let time pass until the next one is due.
                self.driver.advance_time(self.config.intent_hold_ns)
            if not self.store.repair_backlog(self.driver.time):
                return
            retired = self.coordinator.published.phase is Phase.DECOMMISSIONED
            self.run(repair_pass(lagged=self.config.lagged_sides, retired=retired))
        raise RuntimeError(f"repair log still holds {self.store.repair_backlog()} entries")

    def verify(self) -> Outcome:
        return self.run(verify())

    # -- client helpers ----------------------------------------------------------------------

    def record(self, record_id: str, version: int, rng_seed: int = 0) -> Record:
        """A version of `record_id` with a fresh vector near its category."""
        rng = np.random.default_rng(rng_seed + version)
        if record_id in self.catalog:
            vector = self.catalog.reembed(record_id, rng)
            category = self.catalog.category_of(record_id)
        else:
            vector = self.catalog.query_vector(rng)
            category = 0
        return Record(
            record_id, vector, {"category": category, "in_stock": True, "price": 1.0}, version
        )

    def query(self, seed: int = 0) -> Vector:
        return self.catalog.query_vector(np.random.default_rng(seed))

    # -- judging -----------------------------------------------------------------------------

    def heal_and_finish(self) -> None:
        """End of a run: heal faults, let the layer's repair worker drain its log (as it would
        in production), and record what each side holds. Nothing here verifies or copies on
        the layer's behalf: the checker judges the sides as the layer left them."""
        for side in (self.old, self.new):
            heal = getattr(side, "heal_all", None)
            if callable(heal):
                heal()
        self.drain_repairs(wait_for_holds=True)
        self.driver.record_finals()

    def verdict(self) -> Verdict:
        return check(list(self.recorder.events))

    def _exact(
        self, side: Side, vector: Vector, k: int, filter: Filter | None
    ) -> tuple[str, ...] | None:
        port = self.sides[side]
        exact = getattr(port, "exact_search", None)
        if exact is None:
            return None
        return tuple(h.id for h in exact(vector, k, filter))

    @staticmethod
    def _must(outcome: Outcome, what: str) -> None:
        if outcome.type != "ok":
            raise RuntimeError(f"could not {what}: {outcome.value}")
