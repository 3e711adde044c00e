"""The whole migration as a Hypothesis state machine: interleavings, crashes, faults and phase
changes chosen step by step, judged by the checker and the adjacent-phase rule, and shrunk to a
minimal replay when something breaks. It lives in the package so that `vecmig zoo` can run it
on every ablation of the safe strategy without a checkout; tests/test_stateful_migration.py
runs it in CI and keeps every failure it found as a `test_replay_*` function.

Each rule is one thing that happens in production. A client operation (upsert, delete, get,
search) runs on an app instance either at once or `interleaved`: then it stays in flight and
advances one request at a time when the machine picks it (`advance`, `finish`), so that every
request to a side or to the state store is a point where other work may run first. The
backfill, the repair worker and the controller's phase steps run the same two ways; `progress`
is the controller's loop (poll, copy, repair, advance) in one step. Faults hit either side (node
crash with or without data loss, node pause, visibility lag, index rebuild) or one request (the
`fail` argument of a client operation, or `fail_request` on anything in flight). App instances
crash and restart from the durable state, join, lag behind the config store and let their
leases run out while time passes (a request left pending over the rig's request timeout, below
the lease margin, times out).

The fault model keeps some way to serve every read, as the design promises ("reads never fail
while one side can serve them correctly"): at most one replica of a side down at a time, at most
one injected failure per client read (the layer retries), and an index rebuild only where every
live phase can search the other side. So a failed read is an anomaly here, unless its
app instance crashed under it or a second of its requests failed too: a timeout while time
passed, or a side unreachable for the whole read (`"down"`), which is how a read meets a side
that cannot answer it while the other may miss an acknowledged write (a pending repair): then
failing is right, and answering from that other side alone is a stale read.

Invariants, after every step: no failed, stale or garbage read in the history so far; no
instance more than one epoch behind the published phase while it may serve; the durable phase is
the published one. At the end (teardown): heal every fault, finish every operation in flight,
drain repairs, verify, record the final scans, and the checker must find the history valid;
then, with every instance keeping up, the controller's loop must reach DECOMMISSIONED.

`MigrationMachine` runs the safe strategy; `MigrationMachine.ablated(NAME)` the same machine with
one protection switched off (`vecmig.harness.core.strategy.PROTECTIONS`). To run it against your
adapters, subclass it and override `make_sides`, or use the pytest plugin's `AdapterMigrationTest`
(`vecmig.harness.testing.migration`, docs/property-tests.md).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import event
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    multiple,
    precondition,
    rule,
)

from vecmig.harness.catalog import product_id
from vecmig.harness.clusters.base import (
    ClusterError,
    ClusterPort,
    Side,
    Timeout,
    Unavailable,
)
from vecmig.harness.clusters.fake import FakeCluster
from vecmig.harness.core import requests as rq
from vecmig.harness.core.controller import Controller, Plan
from vecmig.harness.core.gates import GatePolicy
from vecmig.harness.core.layer import MigrationLayer
from vecmig.harness.core.phases import (
    ROUTES,
    TRANSITIONS,
    InstanceView,
    Phase,
    Published,
    Step,
    lease_rules,
)
from vecmig.harness.core.requests import Operation, Outcome
from vecmig.harness.core.strategy import SAFE, Strategy
from vecmig.harness.core.workers import Backfill, Throttle, repair_pass
from vecmig.harness.drive.execute import execute
from vecmig.harness.drive.rig import REQUEST_TIMEOUT_NS, Rig
from vecmig.harness.history.checker import Verdict, check

RECORDS = 24
DIM = 8
BATCH = 8
K = 8
MS = 1_000_000
REFRESH_NS = 1_000 * MS
"""How often a side under visibility lag refreshes: within the layer's visibility window (2 s)."""
POLL_NS = 250 * MS
"""How often instances that are not lagging poll the config store while time passes."""
SKEW_BOUNDS_MS = (0, 50, 150)
LEASES_MS = (2_000, 10_000)
"""The settings `vecmig sweep --buggify` draws, as the machine draws them: which sides lag,
the clock-skew bound (each instance's skew moves within it), and the lease; the lease margin
follows from them by `phases.lease_rules` (request timeout plus twice the bound, plus slack)."""

IDS = (*(product_id(i) for i in range(3)), "p000099")
"""The ids clients touch: three catalog products and one a client adds. Few ids make operations
on the same id collide often, which is where the races are."""

INSTANCES = ("a", "b", "c")
FIRST_INSTANCES = ("a", "b")
STARTS = ("OLD_ONLY", "DUAL_WRITE", "BACKFILL", "SHADOW", "CUTOVER")
READS = frozenset({"get", "search"})
BACKGROUND = ("controller", "backfill", "repair")
ERRORS = ("unavailable", "timeout", "timeout-after-write")
"""How an injected request failure looks: refused (certainly no effect), no answer in time
(no effect), or no answer in time although the side applied it."""

instances = st.sampled_from(INSTANCES)
sides = st.sampled_from(("old", "new"))
failures = st.none() | st.tuples(st.sampled_from((1, 2)), st.sampled_from(ERRORS))
"""`(n, error)`: the operation's n-th request to a side fails so (for a write, 1 is the primary
and 2 the secondary; for a read, 1 is the first attempt)."""
DOWN = "down"
"""A read's failure `(n, "down")` (see `save_and_view`): the side of its n-th request is
unreachable for the whole read, so that request and the retry right after it both fail."""


@dataclass(slots=True)
class Flight:
    """What the machine knows of one operation it started."""

    kind: str
    instance: str | None = None
    phase: Phase | None = None
    """The phase whose route a client operation took when it started; for a phase step, the
    phase it may publish (a fault must leave a side to serve that one's reads too)."""
    epoch: int | None = None
    fail: tuple[int, str] | None = None
    side_requests: int = 0
    injected: int = 0
    """Failed requests so far: injected, or timed out because time passed while pending."""
    crashed: bool = False


def checked(step: Callable[..., Any]) -> Callable[..., Any]:
    """Run the step, then the invariants: inline rather than as @invariant, so that a failing
    run prints only its steps."""

    @functools.wraps(step)
    def run_and_check(self: MigrationMachine, *args: Any, **kwargs: Any) -> Any:
        result = step(self, *args, **kwargs)
        self.run_mirrored_reads()
        self.check_so_far()
        return result

    return run_and_check


class MigrationMachine(RuleBasedStateMachine):
    """The safe strategy between two fake clusters of one shard and two replicas each."""

    strategy: Strategy = SAFE
    judge_phases: bool = True
    """Check the adjacent-phase invariants (`NaivePlanByChecker` turns them off to show that
    the checker alone also catches the naive plan)."""

    faults: bool = True
    ops = Bundle("ops")

    @classmethod
    def ablated(cls, *protections: str) -> type[MigrationMachine]:
        """This machine with `protections` of the safe strategy switched off (`SAFE.without`).
        The class is named as the call that makes it, so that the steps Hypothesis prints for
        a failure (`state = MigrationMachine.ablated('read-both')()`) replay as they are."""
        key = (cls, protections)
        if key not in _ABLATED:
            name = f"{cls.__name__}.ablated({', '.join(map(repr, protections))})"
            attributes = {"strategy": SAFE.without(*protections), "__qualname__": name}
            _ABLATED[key] = type(name, (cls,), attributes)
        return _ABLATED[key]

    def make_sides(self) -> tuple[ClusterPort, ClusterPort]:
        """Fresh, empty old and new sides for one example. Override to test your adapters;
        fault rules only touch sides that are `FakeCluster`s."""
        return (
            FakeCluster(
                DIM,
                shards=1,
                replicas=2,
                seed=0,
                capacity=64,
                name="old",
                catch_up=self.strategy.replica_catch_up,
            ),
            FakeCluster(
                DIM,
                shards=1,
                replicas=2,
                seed=1,
                capacity=64,
                name="new",
                catch_up=self.strategy.replica_catch_up,
            ),
        )

    def __init__(self) -> None:
        super().__init__()
        old, new = self.make_sides()
        self.rig = Rig(
            self.strategy,
            records=RECORDS,
            dim=DIM,
            seed=0,
            old=old,
            new=new,
            lagged=frozenset(Side),
            policy=GatePolicy(min_mirrored_reads=0),
            batch_size=BATCH,
            request_timeout_ns=REQUEST_TIMEOUT_NS,
        )
        self.driver = self.rig.driver
        self.flights: dict[int, Flight] = {}
        self.versions = {r.id: r.version for r in self.rig.catalog.records()}
        self.query_of = {i: self.rig.record(i, 0).vector for i in IDS}
        # The noise floor of mirrored reads is measured on entering SHADOW, from these queries.
        self.rig.controller.calibration_queries = tuple(self.query_of.values())
        self.lagging: set[str] = set()
        self.skew_bound_ns = 0
        self.down: dict[Side, tuple[int, str]] = {}
        """side -> (replica, fault family) of the one node that is down there."""
        self.lag_on: set[Side] = set()
        self.rebuilding: set[Side] = set()
        self.refreshed_at = 0
        for name in FIRST_INSTANCES:
            self.rig.add_instance(name)

    # -- starting and running operations -------------------------------------------------------

    @property
    def now(self) -> int:
        return self.driver.time

    def _start(self, op: Operation, flight: Flight) -> int:
        clock = self.rig.clock(flight.instance) if flight.instance is not None else None
        handle = self.driver.start(op, clock=clock)
        self.flights[handle] = flight
        return handle

    def _step(self, handle: int) -> None:
        """Carry out `handle`'s pending request, failing it if it is the armed one. (A side
        request pending longer than the rig's request timeout times out instead.)"""
        flight = self.flights[handle]
        if rq.is_side_request(self.driver.pending(handle)):
            flight.side_requests += 1
            if self.faults and flight.fail is not None and self._armed(flight):
                self._inject(handle, flight.fail[1])
                return
            waited = self.now + self.driver.tick_ns - self.driver.in_flight[handle].since
            flight.injected += waited > REQUEST_TIMEOUT_NS
        self.driver.step(handle)

    @staticmethod
    def _armed(flight: Flight) -> bool:
        """Whether the flight's armed failure hits the request it is about to make."""
        assert flight.fail is not None
        n, error = flight.fail
        return flight.side_requests == n or (error == DOWN and flight.side_requests == n + 1)

    def _run(self, handle: int) -> Outcome:
        for _ in range(10_000):
            if handle not in self.driver.in_flight:
                return self.driver.outcomes[handle]
            self._step(handle)
        raise AssertionError(f"{self.flights[handle].kind} operation {handle} never finished")

    def _inject(self, handle: int, error: str) -> bool:
        """Fail `handle`'s pending side request with `error`; False if that is not fair."""
        flight = self.flights[handle]
        request = self.driver.pending(handle)
        if not rq.is_side_request(request):
            return False
        if flight.kind in READS and flight.injected >= 1 and error != DOWN:
            return False  # a read retries once: a second failure is no longer fair
        flight.injected += 1
        if error in ("unavailable", DOWN):
            self.driver.step(handle, error=Unavailable(f"injected: {error}"))
            return True
        waited = self.now + self.driver.tick_ns - self.driver.in_flight[handle].since
        if error == "timeout-after-write" and waited <= REQUEST_TIMEOUT_NS:
            # Applied late, but within its timeout: a request pending longer than that has
            # timed out with no effect (every request is bounded below the lease margin, which
            # is what lets the coordinator count out an instance whose lease lapsed).
            try:
                execute(request, self.driver.sides, self.driver.store)
            except ClusterError as exc:
                self.driver.step(handle, error=exc)
                return True
        self.driver.step(handle, error=Timeout("injected: no answer in time"))
        return True

    def _launch(self, op: Operation, flight: Flight, interleaved: bool) -> Any:
        """Start `op`; unless `interleaved`, run it to its end at once."""
        handle = self._start(op, flight)
        if interleaved:
            return handle
        self._run(handle)
        return multiple()

    def _in_flight(self, kind: str) -> bool:
        return any(self.flights[h].kind == kind for h in self.driver.in_flight)

    def _client(self, instance: str, reads: bool) -> MigrationLayer | None:
        layer = self.rig.instances.get(instance)
        # An instance that lost its lease refuses reads; the app's health check sends it none.
        if layer is None or (
            reads and not layer.view.may_serve(self.rig.clock(instance)(self.now))
        ):
            return None
        return layer

    def run_mirrored_reads(self) -> None:
        """Mirrored reads run off the critical path; here, right after the search that sampled
        them."""
        for name, layer in sorted(self.rig.instances.items()):
            while layer.background:
                self._run(self._start(layer.background.popleft(), Flight("mirror", name)))

    # -- client operations ---------------------------------------------------------------------

    @rule(
        target=ops,
        instance=instances,
        record_id=st.sampled_from(IDS),
        fail=failures,
        interleaved=st.booleans(),
    )
    @checked
    def upsert(
        self, instance: str, record_id: str, fail: tuple[int, str] | None, interleaved: bool
    ) -> Any:
        """A merchant changes a product; the app supplies the next version (its updated_at)."""
        layer = self._client(instance, reads=False)
        if layer is None:
            return multiple()
        record = self.rig.record(record_id, self._next_version(record_id))
        flight = Flight("upsert", instance, layer.view.phase, layer.view.epoch, fail)
        return self._launch(layer.upsert(record), flight, interleaved)

    @rule(
        target=ops,
        instance=instances,
        record_id=st.sampled_from(IDS),
        fail=failures,
        interleaved=st.booleans(),
    )
    @checked
    def delete(
        self, instance: str, record_id: str, fail: tuple[int, str] | None, interleaved: bool
    ) -> Any:
        layer = self._client(instance, reads=False)
        if layer is None:
            return multiple()
        op = layer.delete(record_id, self._next_version(record_id))
        return self._launch(
            op, Flight("delete", instance, layer.view.phase, layer.view.epoch, fail), interleaved
        )

    @rule(
        target=ops,
        instance=instances,
        record_id=st.sampled_from(IDS),
        fail=failures,
        interleaved=st.booleans(),
    )
    @checked
    def get(
        self, instance: str, record_id: str, fail: tuple[int, str] | None, interleaved: bool
    ) -> Any:
        layer = self._client(instance, reads=True)
        if layer is None:
            return multiple()
        flight = Flight("get", instance, layer.view.phase, layer.view.epoch, fail)
        return self._launch(layer.get(record_id), flight, interleaved)

    @rule(
        instance=instances,
        record_id=st.sampled_from(IDS),
        fail=st.none() | st.tuples(st.just(2), st.sampled_from(("unavailable", "timeout"))),
        down=st.booleans(),
    )
    @checked
    def save_and_view(
        self, instance: str, record_id: str, fail: tuple[int, str] | None, down: bool
    ) -> None:
        """A merchant saves a product and views it right away (the admin page reloads after a
        save). With `down`, the side the view asks first is unreachable meanwhile (a
        partition, both replicas down), so both its tries fail: the layer may answer from the
        other side only if that side misses no acknowledged write of the id (no repair of it
        pending there, as after a secondary write that `fail` refused); otherwise failing is
        right, and the failed read is excused (two of its requests failed). `fail` is the save's
        secondary write refused or timed out, if any."""
        self.upsert(instance, record_id, fail, interleaved=False)
        layer = self._client(instance, reads=True)
        if layer is None:
            return
        flight = Flight(
            "get", instance, layer.view.phase, layer.view.epoch, (1, DOWN) if down else None
        )
        self._launch(layer.get(record_id), flight, interleaved=False)

    @rule(
        target=ops,
        instance=instances,
        near=st.sampled_from(IDS),
        category=st.none() | st.integers(0, 3),
        mirrored=st.booleans(),
        fail=failures,
        interleaved=st.booleans(),
    )
    @checked
    def search(
        self,
        instance: str,
        near: str,
        category: int | None,
        mirrored: bool,
        fail: tuple[int, str] | None,
        interleaved: bool,
    ) -> Any:
        """Products similar to `near` (maybe within a category); `mirrored` samples the search
        for a mirrored read when its instance runs SHADOW."""
        layer = self._client(instance, reads=True)
        if layer is None:
            return multiple()
        op = layer.search(
            self.query_of[near],
            K,
            {"category": category} if category is not None else None,
            mirror_draw=0.0 if mirrored else 0.99,
        )
        return self._launch(
            op, Flight("search", instance, layer.view.phase, layer.view.epoch, fail), interleaved
        )

    def _next_version(self, record_id: str) -> int:
        self.versions[record_id] = self.versions.get(record_id, 0) + 1
        return self.versions[record_id]

    # -- the scheduler -------------------------------------------------------------------------

    @rule(op=ops)
    @checked
    def advance(self, op: int) -> None:
        """Carry out `op`'s pending request and run it to its next one."""
        if op in self.driver.in_flight:
            self._step(op)

    @rule(op=ops)
    @checked
    def finish(self, op: int) -> None:
        """Run `op` to its end with nothing else in between."""
        if op in self.driver.in_flight:
            self._run(op)

    @precondition(lambda self: self.faults)
    @rule(op=ops, error=st.sampled_from(ERRORS))
    @checked
    def fail_request(self, op: int, error: str) -> None:
        """`op`'s pending request to a side fails (any operation: client, backfill, repair,
        the controller's verification)."""
        if op in self.driver.in_flight:
            self._inject(op, error)

    # -- background work and phases ------------------------------------------------------------

    @initialize(
        start=st.sampled_from(STARTS),
        batches=st.integers(0, 3),
        lagged=st.frozensets(sides),
        skew_bound_ms=st.sampled_from(SKEW_BOUNDS_MS),
        lease_ms=st.sampled_from(LEASES_MS),
    )
    @checked
    def start_in(
        self,
        start: str,
        batches: int,
        lagged: frozenset[str] = frozenset({"old", "new"}),
        skew_bound_ms: int = 0,
        lease_ms: int = 10_000,
    ) -> None:
        """Draw the settings (which sides lag, the skew bound, the lease), then walk the happy
        path to `start`, every instance in step, so that a run of a few dozen steps reaches
        every phase. In BACKFILL, `batches` of the copy are done."""
        self._configure(frozenset(Side(s) for s in lagged), skew_bound_ms * MS, lease_ms * MS)
        rig = self.rig
        for phase in STARTS[1 : STARTS.index(start) + 1]:
            if phase == "SHADOW":
                rig.finish_backfill()
                rig.drain_repairs()
            outcome = rig.step_phase()
            assert outcome.type == "ok", f"the happy path to {start} stopped: {outcome.value}"
            rig.sync_all()
        if start == "BACKFILL":
            for _ in range(batches):
                rig.run(rig.backfill.batch(rig.coordinator.published.epoch))

    def _configure(self, lagged: frozenset[Side], skew_bound_ns: int, lease_ns: int) -> None:
        rig = self.rig
        rig.config.lagged_sides = lagged
        rig.controller.lagged_sides = lagged
        rig.config.max_clock_skew_ns = skew_bound_ns
        rig.config.lease_margin_ns = REQUEST_TIMEOUT_NS + 2 * skew_bound_ns + 100 * MS
        assert not lease_rules(
            lease_ns=lease_ns,
            poll_ns=POLL_NS,
            margin_ns=rig.config.lease_margin_ns,
            request_timeout_ns=REQUEST_TIMEOUT_NS,
            max_skew_ns=skew_bound_ns,
        )
        rig.lease_ns = rig.coordinator.lease_ns = lease_ns
        # The instances joined under the rig's default lease: grant them the drawn one afresh,
        # at the coordinator and in each view alike. (A view only ever extends its lease, so
        # without this it would keep the longer default while the coordinator counts the
        # drawn one, and a lagging instance would serve after the coordinator counted it out.)
        for name, layer in rig.instances.items():
            rig.coordinator.join(name, self.now)
            layer.view.lease_expires = rig.clock(name)(self.now) + lease_ns
            layer.view.margin_ns = rig.config.lease_margin_ns
        self.skew_bound_ns = skew_bound_ns

    @precondition(lambda self: self.skew_bound_ns > 0)
    @rule(instance=instances, percent=st.integers(-100, 100))
    @checked
    def skew(self, instance: str, percent: int) -> None:
        """The instance's clock moves to `percent` of the skew bound ahead (behind, if
        negative) of true time, as NTP slews and steps it."""
        self.rig.skews[instance] = self.skew_bound_ns * percent // 100

    @precondition(lambda self: self.rig.coordinator.published.phase is Phase.BACKFILL)
    @rule(target=ops, interleaved=st.booleans())
    @checked
    def backfill_batch(self, interleaved: bool) -> Any:
        """The backfill worker copies its next batch (it runs only while BACKFILL is published)."""
        if self._in_flight("backfill"):
            return multiple()  # one worker
        return self._launch(
            self.rig.backfill.batch(self.rig.coordinator.published.epoch),
            Flight("backfill"),
            interleaved,
        )

    @rule(target=ops, interleaved=st.booleans())
    @checked
    def repair(self, interleaved: bool) -> Any:
        """The repair worker's next pass over the repair log."""
        if self._in_flight("repair"):
            return multiple()
        return self._launch(self._repair_pass(), Flight("repair"), interleaved)

    def _repair_pass(self) -> Operation:
        retired = self.rig.coordinator.published.phase is Phase.DECOMMISSIONED
        return repair_pass(lagged=self.rig.config.lagged_sides, retired=retired)

    @rule(target=ops, step=st.sampled_from([s.value for s in Step]), interleaved=st.booleans())
    @checked
    def phase_step(self, step: str, interleaved: bool) -> Any:
        """The controller tries one phase step (advance, rollback, abort) through its gate."""
        wanted = Step(step)
        if self._in_flight("controller") or not self._may_step(wanted):
            return multiple()
        attempt = self.rig.controller.attempt(wanted, Plan())
        target = TRANSITIONS[self.rig.coordinator.published.phase][wanted]
        return self._launch(attempt, Flight("controller", phase=target), interleaved)

    @rule()
    @checked
    def bail_out(self) -> None:
        """The operator abandons the migration: from CUTOVER a ROLLBACK to SHADOW first, then,
        once the instances that keep up have learned it, an ABORT to OLD_ONLY, each through
        its gate (ABORT's applies the repairs old still needs, since old becomes the only
        side). Nothing else runs in between: no repair pass, no backfill."""
        steps = [Step.ABORT]
        if self.rig.coordinator.published.phase is Phase.CUTOVER:
            steps.insert(0, Step.ROLLBACK)
        for step in steps:
            if self._in_flight("controller") or not self._may_step(step):
                return
            target = TRANSITIONS[self.rig.coordinator.published.phase][step]
            attempt = self.rig.controller.attempt(step, Plan())
            if self._run(self._start(attempt, Flight("controller", phase=target))).type != "ok":
                return
            for name in sorted(self.rig.instances):
                if name not in self.lagging:
                    self.poll(name)

    @rule(
        target=ops,
        phases=st.integers(1, 4),
        busy=st.none() | st.tuples(instances, st.sampled_from(IDS)),
    )
    @checked
    def progress(self, phases: int, busy: tuple[str, str] | None = None) -> Any:
        """The controller's loop, up to `phases` turns: instances that are not lagging poll the
        config store, the backfill copies to its end, the repair log drains, and the controller
        tries to advance. Operations in flight stay in flight.

        `busy=(instance, id)`: that instance is a busy one, as app instances are: each time it
        learns a phase it starts another write of `id` under it before its older operations
        return (and polls again before the controller looks), so that it runs operations from
        several epochs at once, all left in flight."""
        started: list[int] = []
        for _ in range(phases):
            if any(self._in_flight(kind) for kind in BACKGROUND) or not self._may_step(
                Step.ADVANCE
            ):
                break
            for name in sorted(self.rig.instances):
                if name not in self.lagging:
                    self.poll(name)
            if busy is not None and (write := self._busy_write(*busy)):
                started.append(write)
                self.poll(busy[0])  # it acknowledges again before the controller looks
            if self.rig.coordinator.published.phase is Phase.BACKFILL:
                for _ in range(RECORDS):
                    batch = self._start(
                        self.rig.backfill.batch(self.rig.coordinator.published.epoch),
                        Flight("backfill"),
                    )
                    copied = self._run(batch)
                    if copied.type == "ok" and copied.value["done"]:
                        break
            for _ in range(3):
                if not self.rig.store.repair_backlog(self.now):
                    break
                self._run(self._start(self._repair_pass(), Flight("repair")))
            attempt = self.rig.controller.attempt(Step.ADVANCE, Plan())
            if self._run(self._start(attempt, Flight("controller"))).type != "ok":
                break
        return multiple(*started)

    def _busy_write(self, instance: str, record_id: str) -> int | None:
        """A write of `record_id` by `instance`, left in flight, if the instance learned a
        phase that none of its operations in flight runs under yet."""
        layer = self._client(instance, reads=False)
        if layer is None or any(
            self.flights[h].instance == instance and self.flights[h].epoch == layer.view.epoch
            for h in self.driver.in_flight
        ):
            return None
        record = self.rig.record(record_id, self._next_version(record_id))
        flight = Flight("upsert", instance, layer.view.phase, layer.view.epoch)
        return self._start(layer.upsert(record), flight)

    def _may_step(self, step: Step) -> bool:
        published = self.rig.coordinator.published.phase
        if step not in TRANSITIONS[published]:
            return False
        # The fault model: some side must still serve every live phase's searches.
        return self._searchable(
            self._live_phases() | {TRANSITIONS[published][step]}, self.rebuilding
        )

    # -- app instances and time ----------------------------------------------------------------

    @precondition(lambda self: len(self.rig.instances) < len(INSTANCES))
    @rule()
    @checked
    def add_instance(self) -> None:
        """A new app instance starts, running the published phase."""
        self.rig.add_instance(next(n for n in INSTANCES if n not in self.rig.instances))

    @rule(instance=instances)
    @checked
    def sync(self, instance: str) -> None:
        """The instance polls the config store now: learns the phase and renews its lease."""
        if instance in self.rig.instances:
            self.lagging.discard(instance)
            self.poll(instance)

    def poll(self, name: str) -> None:
        """Instance `name` reads the config store, learns the phase, renews its lease and
        acknowledges the oldest phase it still runs an operation under (the rig's `sync`).
        Override to model how your driver acknowledges."""
        self.rig.sync(name)

    @rule(instance=instances)
    @checked
    def lag(self, instance: str) -> None:
        """The instance stops hearing from the config store (late propagation, a partition)."""
        if instance in self.rig.instances:
            self.lagging.add(instance)

    @rule(
        instance=instances,
        phases=st.integers(0, 4),
        serving=st.none() | st.sampled_from(IDS),
    )
    @checked
    def cut_off(self, instance: str, phases: int, serving: str | None) -> None:
        """The instance loses the config store (a network partition) for longer than its
        lease while the others keep polling: its lease lapses, the coordinator counts it out,
        and the controller's loop takes up to `phases` steps without it. It stays cut off until
        it syncs. The load balancer's readiness check lags, so clients still reach it: with
        `serving`, it is sent an upsert of that id, which only the layer's own lease check
        refuses."""
        if instance not in self.rig.instances:
            return
        self.lagging.add(instance)
        self.let_time_pass((self.rig.lease_ns + POLL_NS) // MS)
        if phases:
            self.progress(phases=phases)
        if serving is not None:
            self.upsert(instance, serving, fail=None, interleaved=False)

    @rule(instance=instances)
    @checked
    def stale_sync(self, instance: str) -> None:
        """The instance reaches the coordinator, but its view of the config store is behind
        (a watch that delivers late, a stale cache: the simulator's late-config): it
        acknowledges the phase it runs and asks to renew its lease, without learning a newer
        one. It stays lagging."""
        if instance in self.rig.instances:
            self.stale_poll(instance)

    def stale_poll(self, name: str) -> None:
        """Instance `name` acknowledges what it already runs and renews its lease if the
        coordinator grants it (a lapsed lease is renewed only for the current epoch).
        Override to model how your driver acknowledges."""
        layer = self.rig.instances[name]
        now = self.now
        local = self.rig.clock(name)(now)
        layer.learn(Published(layer.view.phase, layer.view.epoch), local)
        if self.rig.coordinator.ack(name, layer.acknowledgement(local), now):
            layer.renew(local, self.rig.lease_ns)

    @rule(ms=st.sampled_from((1, 1_000, 11_000)))
    @checked
    def let_time_pass(self, ms: int) -> None:
        """Time passes: instances that are not lagging poll the config store every
        `POLL_NS` meanwhile, lagged sides refresh, and a lagging instance's lease may run out."""
        left = ms * MS
        while left > 0:
            chunk = min(left, POLL_NS)
            self.driver.advance_time(chunk)
            left -= chunk
            for name in sorted(self.rig.instances):
                if name not in self.lagging:
                    self.poll(name)
            if self.now - self.refreshed_at >= REFRESH_NS:
                for side in sorted(self.lag_on):
                    self._faulty(side).refresh()  # type: ignore[union-attr]
                self.refreshed_at = self.now

    @rule(who=st.sampled_from((*INSTANCES, "everything")))
    @checked
    def crash(self, who: str) -> None:
        """An app instance dies mid-operation and restarts, reading the phase from the config
        store; its operations in flight end indeterminate. "everything": every process of the
        migration (instances, backfill, repair worker, controller) dies and restarts from the
        durable state: the backfill from its checkpoint, the repair log from the store."""
        if who != "everything" and who not in self.rig.instances:
            return
        for handle in sorted(self.driver.in_flight):
            if who == "everything" or self.flights[handle].instance == who:
                self._crash(handle)
        for name in sorted(self.rig.instances):
            if who in (name, "everything"):
                self._restart(name)
        if who == "everything":
            rig = self.rig
            rig.backfill = Backfill(self.strategy, Throttle(batch_size=BATCH, unthrottled=True))
            rig.controller = Controller(
                rig.coordinator,
                self.strategy,
                rig.backfill,
                rig.shared,
                rig.controller.policy,
                calibration_queries=rig.controller.calibration_queries,
                lagged_sides=rig.config.lagged_sides,
            )

    def _crash(self, handle: int) -> None:
        self.driver.crash(handle)
        self.flights[handle].crashed = True

    def _restart(self, name: str) -> None:
        node = self.rig.instances[name].clock.node
        published = self.rig.coordinator.join(name, self.now)
        local = self.rig.clock(name)(self.now)
        view = InstanceView(name, published.phase, published.epoch, local + self.rig.lease_ns)
        self.rig.instances[name] = MigrationLayer(view, self.rig.config, self.rig.shared, node)

    # -- faults on the sides -------------------------------------------------------------------

    def _faulty(self, side: Side) -> FakeCluster | None:
        """The side, if faults can be injected into it (a fake cluster), else None."""
        port = self.rig.sides[side]
        return port if isinstance(port, FakeCluster) else None

    @precondition(lambda self: self.faults)
    @rule(
        side=sides,
        replica=st.sampled_from((0, 1)),
        fault=st.sampled_from(("crash", "crash-losing-data", "pause", "heal")),
    )
    @checked
    def node_fault(self, side: str, replica: int, fault: str) -> None:
        """A replica of the side crashes (maybe losing its data), pauses, or comes back and
        catches up. One replica per side at most is down, so that the side still serves."""
        which = Side(side)
        port = self._faulty(which)
        node = f"s0r{replica}"
        if port is None or node not in port.nodes() or "s0r1" not in port.nodes():
            return  # a side without a second replica could not serve with one down
        if fault == "heal":
            if self.down.get(which, (None, ""))[0] == replica:
                _, family = self.down.pop(which)
                port.stop_fault(family, node=node)
                self.driver.record_fault(family, "stop", side=side, node=node)
            return
        if which in self.down:
            return
        family = "node-pause" if fault == "pause" else "node-crash"
        params = {} if fault == "pause" else {"lose_data": fault == "crash-losing-data"}
        port.start_fault(family, node=node, **params)
        self.down[which] = (replica, family)
        self.driver.record_fault(family, "start", side=side, node=node, **params)

    @precondition(lambda self: self.faults)
    @rule(side=sides, fault=st.sampled_from(("visibility-lag", "index-rebuild", "heal")))
    @checked
    def side_fault(self, side: str, fault: str) -> None:
        """Writes to the side become searchable only at its next refresh (visibility-lag), or
        its searches are unavailable (index-rebuild), or both end (heal)."""
        which = Side(side)
        port = self._faulty(which)
        if port is None:
            return
        if fault == "heal":
            for family, active in (
                ("visibility-lag", self.lag_on),
                ("index-rebuild", self.rebuilding),
            ):
                if which in active:
                    active.discard(which)
                    port.stop_fault(family)
                    self.driver.record_fault(family, "stop", side=side)
            return
        active = self.lag_on if fault == "visibility-lag" else self.rebuilding
        if which in active:
            return
        if fault == "visibility-lag" and which not in self.rig.config.lagged_sides:
            return  # the layer corrects searches only on sides declared lagged (the loader's rule)
        if fault == "index-rebuild" and not self._searchable(
            self._live_phases(), self.rebuilding | {which}
        ):
            return  # the fault model: some side must still serve every live phase's searches
        port.start_fault(fault)
        active.add(which)
        self.driver.record_fault(fault, "start", side=side)

    def _live_phases(self) -> set[Phase]:
        """Every phase a read may still be routed by: published, instances', in flight."""
        phases = {self.rig.coordinator.published.phase}
        phases |= {layer.view.phase for layer in self.rig.instances.values()}
        phases |= {p for h in self.driver.in_flight if (p := self.flights[h].phase) is not None}
        return phases

    def _searchable(self, phases: set[Phase], rebuilding: set[Side]) -> bool:
        for phase in phases:
            route = ROUTES[phase]
            fallback = route.fallback if self.strategy.read_fallback else None
            if route.reads in rebuilding and (fallback is None or fallback in rebuilding):
                return False
        return True

    # -- invariants and the end of a run -------------------------------------------------------

    def check_so_far(self) -> None:
        """The invariants, after every step."""
        if self.judge_phases:
            self.phases_stay_adjacent()
        self.reads_so_far_are_correct()

    def phases_stay_adjacent(self) -> None:
        coordinator = self.rig.coordinator
        violations = coordinator.adjacency_violations(self.now)
        assert not violations, "; ".join(violations)
        published = coordinator.published
        for name, layer in sorted(self.rig.instances.items()):
            if layer.view.may_serve(self.rig.clock(name)(self.now)):  # on its own clock
                assert published.epoch - layer.view.epoch <= 1, (
                    f"{name} serves {layer.view.phase.value} (epoch {layer.view.epoch}) while "
                    f"{published.phase.value} (epoch {published.epoch}) is published"
                )
        durable = self.rig.store.load()
        assert (durable.phase, durable.epoch) == (published.phase, published.epoch)

    def excused_failed_reads(self) -> int:
        """Reads that may fail: their instance crashed under them, or two of their requests
        failed (one injected and one timed out while time passed, or both tries of a side that
        was down)."""
        return sum(
            1
            for handle, flight in self.flights.items()
            if flight.kind in READS
            and handle in self.driver.outcomes
            and self.driver.outcomes[handle].type != "ok"
            and (flight.crashed or flight.injected >= 2)
        )

    def reads_so_far_are_correct(self) -> None:
        """No stale, garbage or filter-violating read, and no failed read but those whose
        instance crashed."""
        verdict = check(list(self.rig.recorder.events))
        excused = self.excused_failed_reads()
        assert verdict.failed_reads == excused, describe(verdict, excused)
        assert verdict.stale_reads == verdict.garbage_reads == 0, describe(verdict, excused)
        assert verdict.filter_violations == 0, describe(verdict, excused)

    def teardown(self) -> None:
        if sys.exc_info()[0] is not None:
            return  # a step failed already: that is the failure to report
        if currently_in_test_context():
            event(f"ended in {self.rig.coordinator.published.phase.value}")
        for side in ("old", "new"):
            if Side(side) in self.down:
                self.node_fault(side, self.down[Side(side)][0], "heal")
            self.side_fault(side, "heal")
        for handle in sorted(self.driver.in_flight):
            if handle in self.driver.in_flight:
                self._run(handle)
        self.run_mirrored_reads()
        self.check_so_far()
        self.rig.heal_and_finish()
        verdict = self.rig.verdict()
        excused = self.excused_failed_reads()
        counts = {**verdict.counts(), "failed_reads": verdict.failed_reads - excused}
        assert not verdict.unknown and not any(counts.values()), describe(verdict, excused)
        self.migration_can_finish()

    def _mirrored_traffic(self, *, window: bool = False) -> None:
        """Searches sampled for mirrored reads, by the first instance: every id, with and
        without its category; with `window`, round after round until they fill the gate's
        window (once the faults have healed, the CUTOVER gate opens on one window of clean
        reads, whatever came before)."""
        policy = self.rig.controller.policy
        reads = max(policy.mirror_window, policy.min_mirrored_reads) if window else 1
        for _ in range(-(-reads // (2 * len(IDS)))):
            for near in IDS:
                for category in (None, self.rig.record(near, 0).metadata["category"]):
                    self.search("a", near, category, mirrored=True, fail=None, interleaved=False)

    def migration_can_finish(self) -> None:
        """Liveness: once the faults are healed and every instance keeps up, the controller's
        loop takes the migration to DECOMMISSIONED from wherever the run left it (rolling back
        and cutting over again, as an operator would, when read fallbacks spoiled the soak)."""
        self.lagging.clear()
        published = self.rig.coordinator.published
        for _ in range(12):
            if published.phase is Phase.DECOMMISSIONED:
                return
            self.let_time_pass(11_000)  # every instance polls; a CUTOVER soak completes
            if published.phase is Phase.SHADOW:
                waits = self.rig.controller.waits
                refused = bool(waits) and "mirrored reads" in str(waits[-1].reasons)
                self._mirrored_traffic(window=refused)  # what the CUTOVER gate measures
            self.progress(phases=4)
            published = self.rig.coordinator.published
            waits = self.rig.controller.waits
            if published.phase is Phase.CUTOVER and waits and "fallback" in str(waits[-1].reasons):
                self.phase_step("rollback", interleaved=False)
        reasons = self.rig.controller.waits[-1].reasons if self.rig.controller.waits else ()
        if currently_in_test_context():
            event("stuck: " + "; ".join(reasons))
        raise AssertionError(
            f"the migration cannot finish: stuck in {published.phase.value}, "
            f"the gate says {reasons}"
        )


_ABLATED: dict[tuple[type[MigrationMachine], tuple[str, ...]], type[MigrationMachine]] = {}


def describe(verdict: Verdict, excused: int = 0) -> str:
    """The anomalies with their first examples, for a failure message."""
    found = {k: v for k, v in verdict.counts().items() if v}
    lines = [
        f"the checker found {found or 'no anomaly'}"
        + (
            f"; {excused} failed read(s) excused: their instance crashed, or two requests failed"
            if excused
            else ""
        )
        + ("; verdict unknown" if verdict.unknown else "")
    ]
    for kind, examples in verdict.examples.items():
        lines += [f"  {kind}: {example}" for example in examples[:2]]
    lines += [f"  note: {note}" for note in verdict.notes]
    return "\n".join(lines)
