"""The live driver: runs the core's operations on an asyncio event loop against real sides.

Side requests go to the ports (synchronous, so they run on threads: each side in its own
`Bulkhead`, with its own deadline) through the layer's own faults (a partition refuses the
call, a latency spike delays it); state requests go to the
store inline (SQLite answers in microseconds, and keeping it on the loop thread means no
thread ever waits for the store's lock); `Now` is `time.monotonic_ns()`, `Sleep` is
`asyncio.sleep`, `AnnouncePhase` saves the phase durably and hands it to the config store.
Everything else follows docs/core-guide.md, as the step driver does.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from vecmig.harness.clusters.base import ClusterError, ClusterPort, Side, Unavailable
from vecmig.harness.core import requests as rq
from vecmig.harness.core.phases import Published
from vecmig.harness.core.requests import Operation, Outcome
from vecmig.harness.core.state import StateStore
from vecmig.harness.drive.execute import execute

from .bulkhead import Bulkhead

log = logging.getLogger("vecmig.service")

ExactFn = Callable[[Side, Any, int, Any], "tuple[str, ...] | None"]

LAYER_FAULT_FAMILIES = ("latency", "partition", "config-lag")


@dataclass(slots=True)
class LayerFaults:
    """Faults between the layer and its sides, switched by the admin API.

    `latency_ms[side]` delays every call to that side; a partitioned side refuses every call
    (`Unavailable`: the call never left); `config_lag_until` (monotonic ns) stops the instance
    from hearing the config store, as a late config propagation does.
    """

    latency_ms: dict[Side, float] = field(default_factory=dict)
    partitioned: set[Side] = field(default_factory=set)
    config_lag_until: int = 0

    def to_json(self) -> dict[str, Any]:
        lag = max(0.0, (self.config_lag_until - time.monotonic_ns()) / 1e9)
        return {
            "latency_ms": {side.value: ms for side, ms in self.latency_ms.items()},
            "partitioned": sorted(side.value for side in self.partitioned),
            "config_lag_s": round(lag, 3),
        }

    def heal(self) -> None:
        self.latency_ms.clear()
        self.partitioned.clear()
        self.config_lag_until = 0


class SideLatency:
    """Recent latencies of side reads, per side, for the CUTOVER gate's p99 and the throttle."""

    def __init__(self, window_s: float = 10.0, keep: int = 4096) -> None:
        self.window_ns = int(window_s * 1e9)
        self._samples: dict[Side, deque[tuple[int, float]]] = {
            Side.OLD: deque(maxlen=keep),
            Side.NEW: deque(maxlen=keep),
        }

    def add(self, side: Side, start_ns: int, ms: float) -> None:
        self._samples[side].append((start_ns, ms))

    def p99_ms(self, side: Side) -> float | None:
        horizon = time.monotonic_ns() - self.window_ns
        recent = sorted(ms for t, ms in self._samples[side] if t >= horizon)
        if len(recent) < 20:
            return None
        return recent[min(len(recent) - 1, int(len(recent) * 0.99))]


class LiveDriver:
    """Runs `Operation`s to completion with real I/O. One driver serves every concurrent
    operation of a service: operations interleave at each awaited request, as in production."""

    def __init__(
        self,
        sides: Mapping[Side, ClusterPort],
        store: StateStore,
        bulkheads: Mapping[Side, Bulkhead],
        *,
        faults: LayerFaults | None = None,
        exact: ExactFn | None = None,
        exact_kinds: frozenset[str] = frozenset({"mirror", "calibrate"}),
        exact_rate: Mapping[str, float] | None = None,
        on_phase: Callable[[Published, rq.AnnouncePhase], None] | None = None,
    ) -> None:
        self.sides = sides
        self.store = store
        self.bulkheads = bulkheads
        self.faults = faults if faults is not None else LayerFaults()
        self.exact = exact
        self.exact_kinds = exact_kinds
        self.exact_rate = dict(exact_rate or {})
        """kind -> the share of its `Exact` requests answered (ground truth costs an exact
        search on the side; recall is an average, so a sample of them estimates it)."""
        self.on_phase = on_phase
        self.read_latency = SideLatency()
        self.crashes = 0
        """Operations that raised something other than a ClusterError (bugs): counted, logged."""

    async def run(self, op: Operation) -> Outcome:
        """Drive `op` to its outcome. An exception that is not a side error ends a client
        operation as `info` (its effect is unknown) and is logged, never swallowed silently."""
        steps = op.steps
        try:
            request = next(steps)
            while True:
                try:
                    result = await self._carry_out(request, op.kind)
                except ClusterError as exc:
                    request = steps.throw(exc)
                else:
                    request = steps.send(result)
        except StopIteration as stop:
            outcome = stop.value
            return outcome if isinstance(outcome, Outcome) else Outcome("ok", outcome)
        except asyncio.CancelledError:
            steps.close()
            raise
        except Exception as exc:  # a crash of the op must be visible (logged), not silent
            steps.close()
            self.crashes += 1
            log.exception("operation %s crashed", op.kind)
            return Outcome("info", None, error=f"{op.kind} crashed: {type(exc).__name__}: {exc}")

    async def _carry_out(self, request: Any, kind: str) -> Any:
        if isinstance(request, rq.Now):
            return time.monotonic_ns()
        if isinstance(request, rq.Sleep):
            await asyncio.sleep(request.ns / 1e9)
            return None
        side = rq.side_of(request)
        if side is not None:
            return await self._side_call(side, request)
        if isinstance(request, rq.Exact):
            if self.exact is None or kind not in self.exact_kinds:
                return None
            if random.random() >= self.exact_rate.get(kind, 1.0):
                return None
            fn = self.exact
            try:
                return await self.bulkheads[request.side].call(
                    fn, request.side, request.vector, request.k, request.filter
                )
            except ClusterError:
                return None  # ground truth is a nicety: without it there is no recall figure
        if isinstance(request, rq.AnnouncePhase):
            self.store.save_phase(request.phase, request.epoch)
            if self.on_phase is not None:
                self.on_phase(Published(request.phase, request.epoch), request)
            return None
        if isinstance(request, rq.RecordEvent):
            # The service walks phases step by step (`/admin/advance`), so only a controller
            # running a plan records events; they go to the log, with the gate's reasons.
            log.info("controller %s: %s", request.f, dict(request.value))
            return None
        return execute(request, self.sides, self.store)

    async def _side_call(self, side: Side, request: Any) -> Any:
        delay = self.faults.latency_ms.get(side)
        if delay:
            await asyncio.sleep(delay / 1000.0)
        if side in self.faults.partitioned:
            raise Unavailable(f"{side.value}: partitioned from the layer (injected fault)")
        start = time.monotonic_ns()
        result = await self.bulkheads[side].call(execute, request, self.sides, self.store)
        if isinstance(request, rq.Search | rq.Get):
            self.read_latency.add(side, start, (time.monotonic_ns() - start) / 1e6)
        return result
