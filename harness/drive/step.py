"""The step driver: runs the core's operations one request at a time, in an order the caller
chooses, against real cluster objects. It is the deterministic scheduler behind the race tests
and the Hypothesis state machine: every interleaving point of production (each request to a
side or to the state store) is a point where the caller may switch to another operation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from vecmig.harness.clusters.base import ClusterError, ClusterPort, Record, Side, Timeout
from vecmig.harness.core import requests as rq
from vecmig.harness.core.phases import Published
from vecmig.harness.core.requests import Operation, Outcome
from vecmig.harness.core.state import StateStore
from vecmig.harness.drive.execute import execute
from vecmig.harness.history.ops import CONTROLLER, LOADER, Recorder, load_value

ExactFn = Callable[[Side, Any, int, Any], "tuple[str, ...] | None"]


@dataclass(slots=True)
class InFlight:
    handle: int
    op: Operation
    process: int | str
    pending: Any
    """The request the operation waits on: carried out by the next `step`."""
    since: int = 0
    """When `pending` was issued."""
    clock: Callable[[int], int] | None = None
    """The clock of the app instance running the op (its skew): answers `Now`."""


class StepDriver:
    def __init__(
        self,
        sides: Mapping[Side, ClusterPort],
        store: StateStore,
        recorder: Recorder | None = None,
        tick_ns: int = 1_000,
        exact: ExactFn | None = None,
        on_phase: Callable[[Published], None] | None = None,
        request_timeout_ns: int | None = None,
    ) -> None:
        self.sides = sides
        self.store = store
        self.recorder = recorder if recorder is not None else Recorder()
        self.time = 0
        self.tick_ns = tick_ns
        self.exact = exact
        self.on_phase = on_phase
        self.request_timeout_ns = request_timeout_ns
        """A side request still pending after this long times out instead of being carried out
        (it never reached the side): drivers bound every request, and leases rely on it."""
        self.in_flight: dict[int, InFlight] = {}
        self.outcomes: dict[int, Outcome] = {}
        self._next_handle = 0
        self._next_process = 0

    # -- starting and advancing -------------------------------------------------------------------

    def start(
        self,
        op: Operation,
        process: int | str | None = None,
        clock: Callable[[int], int] | None = None,
    ) -> int:
        """Invoke `op` and run it up to its first request. Returns its handle. `clock` maps
        the driver's time to the clock of the instance running the op (default: the same)."""
        handle = self._next_handle
        self._next_handle += 1
        if process is None:
            process = self._next_process
            self._next_process += 1
        self._tick()
        if op.f is not None:
            self.recorder.invoke(process, op.f, op.invoke_value, self.time)
        flight = InFlight(handle, op, process, None, clock=clock)
        self.in_flight[handle] = flight
        self._resume(flight, lambda: next(flight.op.steps))
        return handle

    def pending(self, handle: int) -> Any:
        """The request `handle` waits on."""
        return self.in_flight[handle].pending

    def step(self, handle: int, error: ClusterError | None = None) -> Outcome | None:
        """Carry out `handle`'s pending request (or make it fail with `error`) and run the
        operation up to its next request. Returns its outcome if it finished."""
        flight = self.in_flight[handle]
        self._tick()
        request = flight.pending
        if (
            error is None
            and self.request_timeout_ns is not None
            and rq.is_side_request(request)
            and self.time - flight.since > self.request_timeout_ns
        ):
            error = Timeout(f"no answer in {self.request_timeout_ns // 1_000_000} ms")
        if error is not None:
            self._resume(flight, lambda: flight.op.steps.throw(error))
        elif isinstance(request, rq.Sleep):
            self._resume(flight, lambda: flight.op.steps.send(None))
        else:
            try:
                result = execute(request, self.sides, self.store)
            except ClusterError as exc:
                self._resume(flight, partial(flight.op.steps.throw, exc))
            else:
                self._resume(flight, lambda: flight.op.steps.send(result))
        return self.outcomes.get(handle)

    def run(self, handle: int, max_steps: int = 100_000) -> Outcome:
        for _ in range(max_steps):
            if handle not in self.in_flight:
                return self.outcomes[handle]
            self.step(handle)
        raise RuntimeError(f"operation {handle} did not finish in {max_steps} steps")

    def run_op(
        self,
        op: Operation,
        process: int | str | None = None,
        clock: Callable[[int], int] | None = None,
    ) -> Outcome:
        return self.run(self.start(op, process, clock))

    def run_until(
        self, handle: int, predicate: Callable[[Any], bool], max_steps: int = 10_000
    ) -> Any:
        """Step `handle` until its pending request satisfies `predicate`; return that request."""
        for _ in range(max_steps):
            if handle not in self.in_flight:
                raise RuntimeError(f"operation {handle} finished before the awaited request")
            if predicate(self.in_flight[handle].pending):
                return self.in_flight[handle].pending
            self.step(handle)
        raise RuntimeError(f"operation {handle} never reached the awaited request")

    def crash(self, handle: int) -> None:
        """The process running `handle` dies mid-operation: the op's effect is indeterminate."""
        flight = self.in_flight.pop(handle)
        flight.op.steps.close()
        self._tick()
        if flight.op.f is not None:
            self.recorder.info(flight.process, flight.op.f, flight.op.invoke_value, self.time)
        self.outcomes[handle] = Outcome("info", error="crashed")

    def advance_time(self, ns: int) -> None:
        self.time += ns

    # -- history helpers ---------------------------------------------------------------------

    def record_load(self, records: Sequence[Record]) -> None:
        """The initial catalog: each record's version and fields (its metadata)."""
        self._tick()
        self.recorder.ok(LOADER, "load", load_value(records), self.time)

    def record_fault(self, family: str, action: str, **detail: Any) -> None:
        self._tick()
        self.recorder.info(
            "nemesis", "fault", {"family": family, "action": action, **detail}, self.time
        )

    def record_finals(self, sides: tuple[Side, ...] = (Side.OLD, Side.NEW)) -> None:
        for side in sides:
            self._tick()
            self.recorder.ok(
                "checker",
                "final",
                {"side": side.value, "records": live_versions(self.sides[side])},
                self.time,
            )

    # -- internals ---------------------------------------------------------------------------

    def _tick(self) -> None:
        self.time += self.tick_ns

    def _resume(self, flight: InFlight, advance: Callable[[], Any]) -> None:
        """Run the generator until it yields a request that needs a scheduling decision."""
        while True:
            try:
                request = advance()
            except StopIteration as stop:
                self._finish(flight, stop.value)
                return
            immediate, value = self._immediate(request, flight)
            if not immediate:
                flight.pending = request
                flight.since = self.time
                return
            advance = partial(flight.op.steps.send, value)

    def _immediate(self, request: Any, flight: InFlight) -> tuple[bool, Any]:
        """Requests that are no interleaving point: the driver answers them at once."""
        if isinstance(request, rq.Now):
            return True, self.time if flight.clock is None else flight.clock(self.time)
        if isinstance(request, rq.Exact):
            fn = self.exact
            return True, None if fn is None else fn(
                request.side, request.vector, request.k, request.filter
            )
        if isinstance(request, rq.AnnouncePhase):
            self.store.save_phase(request.phase, request.epoch)
            self.recorder.info(
                CONTROLLER,
                "phase",
                {"phase": request.phase.value, "epoch": request.epoch, "step": request.step},
                self.time,
            )
            if self.on_phase is not None:
                self.on_phase(Published(request.phase, request.epoch))
            return True, None
        if isinstance(request, rq.RecordEvent):
            self.recorder.info(CONTROLLER, request.f, dict(request.value), self.time)
            return True, None
        return False, None

    def _finish(self, flight: InFlight, outcome: Outcome | None) -> None:
        del self.in_flight[flight.handle]
        outcome = outcome if isinstance(outcome, Outcome) else Outcome("ok", outcome)
        self.outcomes[flight.handle] = outcome
        if flight.op.f is not None:
            self._tick()
            value = outcome.value if outcome.value is not None else flight.op.invoke_value
            self.recorder.complete(flight.process, outcome.type, flight.op.f, value, self.time)


def live_versions(port: ClusterPort, page: int = 1000) -> dict[str, int]:
    """id -> version of every live record on a side, by a full scan (any adapter)."""
    out: dict[str, int] = {}
    cursor: str | None = None
    while True:
        result = port.scan(cursor, page)
        for item in result.items:
            if not item.deleted:
                out[item.id] = item.version
        if result.next_cursor is None:
            return dict(sorted(out.items()))
        cursor = result.next_cursor
