"""The sim driver: runs the core's operations in SimPy time against two fake clusters.

Each request an operation yields to a side becomes a small SimPy process: network latency
out, a place in the side's queue (a `simpy.Resource` whose capacity is nodes x concurrency),
service time (scaled by the cluster's `latency_multiplier`), the call itself, network
latency back. A latency spike multiplies the network legs (a slow cluster is the cluster's
own slow-replica fault). The operation waits for it at most the op timeout; past that a
`Timeout` is thrown into the operation while the request carries on and may still take
effect later, exactly the indeterminacy a real client sees. Partitions fail a request fast
(`Unavailable`) or drop it (`Timeout`). Requests to the durable state store take a fixed
small time; time, sleeps, ground truth and phase announcements are answered by the driver.

Every client operation is recorded in the history. When its app instance crashes, a write
ends `info` and its process number is never used again; a read moves to another instance
(see `vecmig.sim.fleet`).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import simpy

from vecmig.harness.clusters.base import ClusterError, Side, Timeout, Unavailable
from vecmig.harness.clusters.fake import FakeCluster
from vecmig.harness.core import requests as rq
from vecmig.harness.core.phases import Published
from vecmig.harness.core.requests import Operation, Outcome
from vecmig.harness.core.state import StateStore
from vecmig.harness.drive.execute import execute
from vecmig.harness.history.ops import CONTROLLER, Recorder
from vecmig.sim.scenario import MS, Distribution, LatencyConfig

Clock = Callable[[int], int]
SimProcess = Generator[simpy.Event, Any, None]
"""A SimPy process: a generator of events to wait for."""

_OP_NAME: Mapping[type, str] = {
    rq.Upsert: "upsert",
    rq.Delete: "delete",
    rq.Get: "get",
    rq.Search: "search",
    rq.Scan: "scan",
    rq.Checksums: "checksums",
    rq.Count: "count",
}
_READS = (rq.Get, rq.Search)
_SIDE_REQUESTS = tuple(_OP_NAME)
UNJUDGED = "unjudged"
"""The process of a client op left out of the history (a scaled run judging its sample only)."""
_HANG = ("hang", None)
_TIMED_OUT = ("timeout", None)


class Draws:
    """Deterministic draws from one seeded generator, fetched in blocks (a numpy call per
    draw would cost more than the rest of a simulated request)."""

    BLOCK = 4096

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._normals: list[float] = []
        self._uniforms: list[float] = []

    def normal(self) -> float:
        if not self._normals:
            self._normals = self._rng.standard_normal(self.BLOCK).tolist()
        return self._normals.pop()

    def uniform(self) -> float:
        if not self._uniforms:
            self._uniforms = self._rng.random(self.BLOCK).tolist()
        return self._uniforms.pop()


class Sampler:
    """Draws nanoseconds from a `Distribution` (given in milliseconds)."""

    def __init__(self, dist: Distribution, draws: Draws) -> None:
        self.dist = dist
        self.draws = draws
        kind = dist.dist
        if kind == "constant":
            fixed = dist.ms * MS
            self._draw: Callable[[], float] = lambda: fixed
        elif kind == "lognormal":
            median, sigma = dist.median_ms * MS, dist.sigma
            self._draw = lambda: median * math.exp(sigma * draws.normal())
        elif kind == "exponential":
            mean = dist.mean_ms * MS
            self._draw = lambda: -mean * math.log1p(-draws.uniform())
        else:
            low, span = dist.low_ms * MS, (dist.high_ms - dist.low_ms) * MS
            self._draw = lambda: low + span * draws.uniform()

    def __call__(self, scale: float = 1.0) -> int:
        return max(0, int(self._draw() * scale))


class LatencyWindow:
    """Recent latencies (ms) with their times, for p99s over a sliding window."""

    def __init__(self, window_ns: int) -> None:
        self.window_ns = window_ns
        self._items: deque[tuple[int, float]] = deque()

    def add(self, now: int, ms: float) -> None:
        self._items.append((now, ms))

    def p99(self, now: int) -> float | None:
        items = self._items
        while items and items[0][0] < now - self.window_ns:
            items.popleft()
        if not items:
            return None
        return float(np.percentile([ms for _, ms in items], 99))


ServiceModel = Callable[[Any, str, Any], int]
"""Service time in ns of (request, op name, the side's port): the scaled fidelity's hook."""


class SideModel:
    """One side as the layer reaches it: network, queue, service time, faults of the path."""

    def __init__(
        self,
        env: simpy.Environment,
        side: Side,
        port: FakeCluster,
        latency: LatencyConfig,
        draws: Draws,
        concurrency: int,
        size_hint: Callable[[], int],
        modelled: ServiceModel | None = None,
    ) -> None:
        self.env = env
        self.side = side
        self.port = port
        self.ports = {side: port}
        self.resource = simpy.Resource(env, capacity=concurrency)
        self.network = Sampler(latency.network, draws)
        self._service = {
            "search": Sampler(latency.search, draws),
            "get": Sampler(latency.get, draws),
            "upsert": Sampler(latency.upsert_per_record, draws),
            "delete": Sampler(latency.upsert_per_record, draws),
            "scan": Sampler(latency.scan_per_item, draws),
            "checksums": Sampler(latency.checksums_per_record, draws),
            "count": Sampler(latency.count, draws),
        }
        self.size_hint = size_hint
        self.modelled = modelled
        """The scaled fidelity's service times (`vecmig.sim.scaled`), in place of the samplers."""
        self.spike = 1.0
        """Latency-spike fault: a factor on the network legs between the layer and the side."""
        self.partition: str | None = None
        """Partition fault: None, "unavailable" (fail fast) or "timeout" (dropped)."""
        self.in_flight = 0

    def service_ns(self, request: Any, op: str) -> int:
        if self.modelled is not None:
            return self.modelled(request, op, self.port)
        sampler = self._service[op]
        if op in ("upsert",):
            n = len(request.records)
        elif op == "delete":
            n = len(request.tombstones)
        elif op == "scan":
            n = request.limit
        elif op == "checksums":
            n = self.size_hint()
        else:
            n = 1
        return sampler(n * self.port.latency_multiplier(op))

    # one branch per request kind; issue 12's shared driver helper takes them (C901)
    def serve(self, request: Any, reply: simpy.Event, deadline: int) -> Any:  # noqa: C901
        """A SimPy process: carry out one request and answer `reply` with (status, result),
        or with a timeout at `deadline` if the answer is not back by then. The request goes
        on regardless, and may take effect after the caller gave up.

        The deadline's timer is armed only when a wait would cross it (a full queue, a long
        service, a dropped answer): most requests need no timer event at all."""
        env = self.env
        self.in_flight += 1
        armed = False

        def arm() -> None:
            nonlocal armed
            if not armed and not reply.triggered:
                armed = True
                timer = env.timeout(max(0, deadline - int(env.now)))
                timer.callbacks.append(time_out)

        def time_out(_: simpy.Event) -> None:
            if not reply.triggered:
                reply.succeed(_TIMED_OUT)

        def wait(ns: int) -> simpy.Timeout:
            if int(env.now) + ns > deadline:
                arm()
            return env.timeout(ns)

        try:
            yield wait(self.network(self.spike))
            if self.partition == "unavailable":
                result: tuple[str, Any] = (
                    "err",
                    Unavailable(f"{self.side.value}: partitioned from the layer"),
                )
            elif self.partition == "timeout":
                result = _HANG
            else:
                op = _OP_NAME[type(request)]
                with self.resource.request() as slot:
                    if not slot.triggered:
                        arm()  # queued: how long for is unknown
                    yield slot
                    yield wait(self.service_ns(request, op))
                    try:
                        result = ("ok", execute(request, self.ports, None))  # type: ignore[arg-type]
                    except Timeout:
                        result = _HANG
                    except ClusterError as exc:
                        result = ("err", exc)
                yield wait(self.network(self.spike))
                if self.partition == "timeout":
                    result = _HANG  # the answer is lost on the way back
            if result is _HANG:
                arm()
            elif not reply.triggered:
                reply.succeed(result)
        finally:
            self.in_flight -= 1


@dataclass(eq=False)
class Flight:
    """One operation in flight."""

    op: Operation
    process: int | str
    clock: Clock
    on_done: Callable[[Flight, Outcome], None] | None
    invoked: int
    proc: simpy.Process | None = None
    started: bool = False
    finished: bool = False
    crashed: bool = False
    phase: str = ""
    owner: Any = None
    """The app instance running the op (None for workers)."""
    reissue: Callable[[Any], Operation] | None = None
    """For reads: the same read on another instance, which the load balancer retries on when
    the op's instance dies (reads are idempotent; writes are not retried)."""


@dataclass(frozen=True, slots=True)
class Completed:
    """A client op as the report sees it."""

    f: str
    type: str
    invoked: int
    latency_ns: int
    phase: str


class SimDriver:
    def __init__(
        self,
        env: simpy.Environment,
        ports: Mapping[Side, FakeCluster],
        store: StateStore,
        recorder: Recorder,
        latency: LatencyConfig,
        concurrency: int,
        draws: Draws,
        exact_draws: Draws,
        exact_sample_rate: float,
        size_hint: Callable[[], int],
        phase_now: Callable[[], str],
        on_phase: Callable[[Published, str], None] = lambda published, step: None,
        service: Mapping[Side, ServiceModel] | None = None,
        judged: Callable[[Mapping[str, Any]], bool] | None = None,
    ) -> None:
        """`service`: per side, service times in place of `latency`'s (the scaled fidelity).
        `judged`: which client ops (by invoke value) the history records; None, all of them.
        The others run alike and count in the latency figures, as process `UNJUDGED`."""
        self.env = env
        self.ports = ports
        self.store = store
        self.recorder = recorder
        service = service or {}
        self.sides = {
            side: SideModel(
                env, side, port, latency, draws, concurrency, size_hint, service.get(side)
            )
            for side, port in ports.items()
        }
        self.timeout_ns = int(latency.op_timeout_ms * MS)
        self.store_latency = Sampler(latency.store, draws)
        self.exact_draws = exact_draws
        self.exact_sample_rate = exact_sample_rate
        self.phase_now = phase_now
        self.on_phase = on_phase
        self.judged = judged
        self.completed: list[Completed] = []
        self.side_reads = {side: LatencyWindow(10_000 * MS) for side in ports}
        self.client_reads = LatencyWindow(5_000 * MS)
        self.bugs: list[str] = []
        self.refusals: dict[str, int] = {}
        """Client requests no instance took, by reason."""
        self.reroutes = 0
        self.active = 0
        self._free: list[int] = []
        self._next_process = 0

    # -- starting and crashing -----------------------------------------------------------------

    def start(
        self,
        op: Operation,
        clock: Clock | None = None,
        on_done: Callable[[Flight, Outcome], None] | None = None,
    ) -> Flight:
        """Invoke `op` now (recorded at once, for client ops) and run it as a SimPy process."""
        now = int(self.env.now)
        process: int | str
        if op.f is None:
            process = "worker"
        elif self.judged is not None and not self.judged(op.invoke_value):
            process = UNJUDGED
        else:
            process = self._take_process()
        flight = Flight(op, process, clock or _identity, on_done, now, phase=self.phase_now())
        if op.f is not None and process != UNJUDGED:
            self.recorder.invoke(process, op.f, op.invoke_value, now)
        self.active += 1
        flight.proc = self.env.process(self._run(flight))
        return flight

    def refuse(self, f: str, invoke_value: Any, error: str) -> None:
        """A client request no instance took: invoked and failed at once, in the history."""
        now = int(self.env.now)
        if self.judged is None or self.judged(invoke_value):
            process = self._take_process()
            self.recorder.invoke(process, f, invoke_value, now)
            self.recorder.complete(process, "fail", f, invoke_value, now)
            heapq.heappush(self._free, process)
        self.refusals[error] = self.refusals.get(error, 0) + 1
        self.completed.append(Completed(f, "fail", now, 0, self.phase_now()))

    def crash(self, flight: Flight) -> None:
        """The app instance running `flight` died: the op's effect is indeterminate."""
        if flight.finished or flight.crashed:
            return
        flight.crashed = True
        if flight.started and flight.proc is not None and flight.proc.is_alive:
            flight.proc.interrupt("crash")
        else:
            self._end_crashed(flight)

    def reroute(self, flight: Flight, op: Operation, clock: Clock) -> None:
        """Carry on with `op` (the same read, on another instance) in place of the flight's
        op, whose instance died: one client op in the history, answered by the retry."""
        if flight.finished or flight.crashed:
            return
        if flight.started and flight.proc is not None and flight.proc.is_alive:
            flight.proc.interrupt(("reroute", op, clock))
        else:
            flight.op.steps.close()
            flight.op, flight.clock = op, clock
        self.reroutes += 1

    # -- running -------------------------------------------------------------------------------
    # one branch per request kind; issue 12's shared driver helper takes them (C901)
    def _run(self, flight: Flight) -> Any:  # noqa: C901
        if flight.crashed:
            return
        flight.started = True
        op = flight.op
        env = self.env
        advance: Callable[[], Any] = op.steps.__next__
        while True:
            try:
                try:
                    request = advance()
                except StopIteration as stop:
                    self._finish(flight, stop.value)
                    return
                if isinstance(request, _SIDE_REQUESTS):
                    status, value = yield from self._side_call(request)
                    advance = _sender(op, value) if status == "ok" else _thrower(op, value)
                elif isinstance(request, rq.Now):
                    advance = _sender(op, flight.clock(int(env.now)))
                elif isinstance(request, rq.Sleep):
                    yield env.timeout(max(0, int(request.ns)))
                    advance = _sender(op, None)
                elif isinstance(request, rq.Exact):
                    advance = _sender(op, self._exact(request, op.kind))
                elif isinstance(request, rq.AnnouncePhase):
                    self._announce(request)
                    advance = _sender(op, None)
                elif isinstance(request, rq.RecordEvent):
                    self.recorder.info(
                        CONTROLLER, request.f, dict(request.value), int(self.env.now)
                    )
                    advance = _sender(op, None)
                else:
                    yield env.timeout(self.store_latency())
                    advance = _sender(op, execute(request, self.ports, self.store))
            except simpy.Interrupt as interrupt:
                cause = interrupt.cause
                if isinstance(cause, tuple) and cause[0] == "reroute":
                    op.steps.close()
                    op = flight.op = cause[1]
                    flight.clock = cause[2]
                    advance = op.steps.__next__
                    continue
                self._end_crashed(flight)
                return
            except Exception as exc:  # noqa: BLE001 - a bug in an operation must not vanish
                self.bugs.append(f"{op.kind} raised {type(exc).__name__}: {exc}")
                self._finish(flight, Outcome("info", error=f"{type(exc).__name__}: {exc}"))
                return

    def _side_call(self, request: Any) -> Any:
        env = self.env
        started = int(env.now)
        reply = env.event()
        env.process(self.sides[request.side].serve(request, reply, started + self.timeout_ns))
        status, value = yield reply
        if isinstance(request, _READS):
            self.side_reads[request.side].add(int(env.now), (int(env.now) - started) / MS)
        if status == "timeout":
            return "err", Timeout(f"{request.side.value}: no answer in {self.timeout_ns // MS} ms")
        return status, value

    def _exact(self, request: rq.Exact, kind: str) -> tuple[str, ...] | None:
        # Brute force costs a millisecond of wall time: client searches get it on a sample;
        # the noise-floor calibration and mirrored reads always do.
        if kind == "search" and self.exact_draws.uniform() >= self.exact_sample_rate:
            return None
        hits = self.ports[request.side].exact_search(request.vector, request.k, request.filter)
        return tuple(h.id for h in hits)

    def _announce(self, request: rq.AnnouncePhase) -> None:
        self.store.save_phase(request.phase, request.epoch)
        self.recorder.info(
            CONTROLLER,
            "phase",
            {"phase": request.phase.value, "epoch": request.epoch, "step": request.step},
            int(self.env.now),
        )
        self.on_phase(Published(request.phase, request.epoch), request.step)

    def _finish(self, flight: Flight, outcome: Any) -> None:
        flight.finished = True
        self.active -= 1
        outcome = outcome if isinstance(outcome, Outcome) else Outcome("ok", outcome)
        op = flight.op
        now = int(self.env.now)
        if op.f is not None:
            value = outcome.value if outcome.value is not None else op.invoke_value
            if flight.process != UNJUDGED:
                self.recorder.complete(flight.process, outcome.type, op.f, value, now)
            self.completed.append(
                Completed(op.f, outcome.type, flight.invoked, now - flight.invoked, flight.phase)
            )
            if op.f in ("get", "search"):
                self.client_reads.add(now, (now - flight.invoked) / MS)
            # A process whose op ended indeterminate never invokes again: its number retires.
            if outcome.type != "info" and isinstance(flight.process, int):
                heapq.heappush(self._free, flight.process)
        if flight.on_done is not None:
            flight.on_done(flight, outcome)

    def _end_crashed(self, flight: Flight) -> None:
        flight.finished = True
        self.active -= 1
        try:
            flight.op.steps.close()
        except Exception as exc:  # noqa: BLE001 - a generator that refuses to close is a bug
            self.bugs.append(f"{flight.op.kind} did not close cleanly: {exc}")
        op = flight.op
        now = int(self.env.now)
        if op.f is not None:
            if flight.process != UNJUDGED:
                self.recorder.info(flight.process, op.f, op.invoke_value, now)
            self.completed.append(
                Completed(op.f, "info", flight.invoked, now - flight.invoked, flight.phase)
            )
        if flight.on_done is not None:
            flight.on_done(flight, Outcome("info", error="crashed"))

    def _take_process(self) -> int:
        if self._free:
            return heapq.heappop(self._free)
        self._next_process += 1
        return self._next_process - 1

    # -- figures -----------------------------------------------------------------------------

    def side_p99_ms(self, side: Side) -> float | None:
        return self.side_reads[side].p99(int(self.env.now))

    def client_p99_ms(self) -> float | None:
        return self.client_reads.p99(int(self.env.now))

    def requests_in_flight(self) -> int:
        return sum(model.in_flight for model in self.sides.values())


def _identity(now: int) -> int:
    return now


def _sender(op: Operation, value: Any) -> Callable[[], Any]:
    return lambda: op.steps.send(value)


def _thrower(op: Operation, exc: Any) -> Callable[[], Any]:
    return lambda: op.steps.throw(exc)
