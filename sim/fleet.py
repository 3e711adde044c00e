"""The app instances: N migration layers that learn phases late, ack, crash and come back.

Each instance is a `MigrationLayer` with its own `InstanceView`. A published phase reaches an
instance through the config store after a propagation delay drawn per instance and per
publish (the late-config fault adds a long one); on learning, the instance acknowledges to the
coordinator. Every `poll_interval` it re-reads what the config store has delivered to it and
acknowledges again, which renews its lease. A crashed instance stops polling; every write it
had in flight ends `info` (its generator is closed wherever it was, between the primary and
the secondary write perhaps), while a read in flight is retried by the load balancer on the
next live instance, as gateways retry idempotent requests; after a while the instance
restarts, re-joins and serves again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import simpy

from vecmig.harness.core.layer import LayerConfig, MigrationLayer, Shared
from vecmig.harness.core.phases import Coordinator, InstanceView, Published
from vecmig.harness.core.requests import Operation, Outcome
from vecmig.sim.driver import Draws, Flight, Sampler, SimDriver, SimProcess
from vecmig.sim.scenario import MS, InstancesConfig


@dataclass(eq=False)
class AppInstance:
    index: int
    name: str
    layer: MigrationLayer
    known: Published
    """What the config store has delivered to this instance so far."""
    alive: bool = True
    incarnation: int = 0
    skew_ns: int = 0
    extra_delay_ns: int = 0
    flights: dict[int, Flight] = field(default_factory=dict)
    crashes: int = 0

    def clock(self, now: int) -> int:
        return now + self.skew_ns


class Fleet:
    def __init__(
        self,
        env: simpy.Environment,
        driver: SimDriver,
        coordinator: Coordinator,
        config: InstancesConfig,
        layer_config: LayerConfig,
        shared: Shared,
        draws: Draws,
    ) -> None:
        self.env = env
        self.driver = driver
        self.coordinator = coordinator
        self.config = config
        self.layer_config = layer_config
        self.shared = shared
        self.lease_ns = int(config.lease_ms * MS)
        self.poll_ns = int(config.poll_interval_ms * MS)
        self.delay = Sampler(config.config_delay, draws)
        self.draws = draws
        self.instances: list[AppInstance] = []
        for index in range(config.count):
            name = f"app-{index}"
            published = coordinator.join(name, 0)
            view = InstanceView(name, published.phase, published.epoch, self.lease_ns)
            layer = MigrationLayer(view, layer_config, shared, node=index)
            self.instances.append(AppInstance(index, name, layer, published))
        for instance in self.instances:
            env.process(self._poll(instance, instance.incarnation))

    # -- the config store ------------------------------------------------------------------------

    def on_publish(self, published: Published) -> None:
        for instance in self.instances:
            if instance.alive:
                delay = self.delay() + instance.extra_delay_ns
                self.env.process(self._deliver(instance, instance.incarnation, published, delay))

    def _deliver(
        self, instance: AppInstance, incarnation: int, published: Published, delay: int
    ) -> SimProcess:
        yield self.env.timeout(delay)
        if instance.alive and instance.incarnation == incarnation:
            self.deliver_now(instance, published)

    def deliver_now(self, instance: AppInstance, published: Published) -> None:
        if published.epoch > instance.known.epoch:
            instance.known = published
        self._sync(instance)

    def _sync(self, instance: AppInstance) -> None:
        """The instance reads what the config store delivered, acknowledges the oldest epoch
        it still runs an operation under (not necessarily the one it learned), and renews its
        lease if the coordinator grants it."""
        now = int(self.env.now)
        layer, clock = instance.layer, instance.clock(now)
        layer.learn(instance.known, clock)
        if self.coordinator.ack(instance.name, layer.acknowledgement(clock), now):
            layer.renew(clock, self.lease_ns)

    def _poll(self, instance: AppInstance, incarnation: int) -> SimProcess:
        # Instances start their polling at different offsets, as real ones do.
        yield self.env.timeout(int(self.draws.uniform() * self.poll_ns))
        while instance.alive and instance.incarnation == incarnation:
            self._sync(instance)
            yield self.env.timeout(self.poll_ns)

    # -- traffic ---------------------------------------------------------------------------------

    def pick(self, draw: float) -> AppInstance | None:
        """A ready instance for a request (the load balancer), by a uniform draw. Ready: alive
        and holding its lease; an instance that lost its lease fails its readiness check, as
        it refuses work until it catches up with the config store."""
        now = int(self.env.now)
        ready = [i for i in self.instances if i.alive and i.layer.view.may_serve(i.clock(now))]
        if not ready:
            return None
        return ready[min(len(ready) - 1, int(draw * len(ready)))]

    def run(
        self,
        instance: AppInstance,
        op: Operation,
        on_done: Callable[[Flight, Outcome], None] | None = None,
        reissue: Callable[[AppInstance], Operation] | None = None,
    ) -> Flight:
        """Run a client op on an instance; its mirrored reads follow off the critical path.
        `reissue` makes the same read on another instance, should this one die."""

        def done(flight: Flight, outcome: Outcome) -> None:
            owner: AppInstance = flight.owner
            owner.flights.pop(id(flight), None)
            if not flight.crashed and owner.alive:
                background = owner.layer.background
                while background:
                    self._start(owner, background.popleft())
            if on_done is not None:
                on_done(flight, outcome)

        flight = self.driver.start(op, clock=instance.clock, on_done=done)
        flight.owner, flight.reissue = instance, reissue
        instance.flights[id(flight)] = flight
        return flight

    def _start(self, instance: AppInstance, op: Operation) -> Flight:
        def done(flight: Flight, outcome: Outcome) -> None:
            instance.flights.pop(id(flight), None)

        flight = self.driver.start(op, clock=instance.clock, on_done=done)
        flight.owner = instance
        instance.flights[id(flight)] = flight
        return flight

    # -- faults ----------------------------------------------------------------------------------

    def crash(self, instance: AppInstance) -> None:
        if not instance.alive:
            return
        instance.alive = False
        instance.crashes += 1
        flights = list(instance.flights.values())
        instance.flights.clear()
        for flight in flights:
            other = self._next_alive(instance)
            if flight.reissue is not None and other is not None:
                # The load balancer retries an idempotent read on another instance.
                self.driver.reroute(flight, flight.reissue(other), other.clock)
                flight.owner = other
                other.flights[id(flight)] = flight
            else:
                self.driver.crash(flight)
        instance.layer.background.clear()

    def _next_alive(self, instance: AppInstance) -> AppInstance | None:
        n = len(self.instances)
        for step in range(1, n):
            other = self.instances[(instance.index + step) % n]
            if other.alive:
                return other
        return None

    def restart(self, instance: AppInstance) -> None:
        if instance.alive:
            return
        now = int(self.env.now)
        instance.incarnation += 1
        published = self.coordinator.join(instance.name, now)
        view = InstanceView(
            instance.name, published.phase, published.epoch, instance.clock(now) + self.lease_ns
        )
        instance.layer = MigrationLayer(view, self.layer_config, self.shared, node=instance.index)
        instance.known = published
        instance.alive = True
        self.env.process(self._poll(instance, instance.incarnation))
