"""The migration as a live process: one app instance of the layer, the coordinator and the
controller, and the background loops (config polling, backfill, repair, mirrored reads),
wired to real sides through the live driver, with durable state in SQLite.

That is the *standalone* service. In a fleet (`role` "instance" or "controller", see
`service.fleet`) the coordinator lives in a config store shared by every process: an instance
serves clients and hears the store; the controller runs the gates, the backfill and the repair
worker, and serves no client. The layer's durable state is then shared, and never cached.

A process killed and restarted resumes exactly where it was: the phase and epoch, the backfill
checkpoint and the repair log are in the store; what lives only in memory (mirrored-read
figures, the noise floor, the soak clock) is measured again. This process is both the
controller and one instance that acknowledges phases: the instance hears the config store
(the coordinator) on its own poll, and acknowledges an epoch only once no operation it
started under an older one is still in flight, so the adjacent-phase rule holds for it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from vecmig.harness.clusters.base import (
    ClusterError,
    ClusterPort,
    Filter,
    MarkedSide,
    Record,
    Side,
    Vector,
)
from vecmig.harness.core import gates
from vecmig.harness.core import requests as rq
from vecmig.harness.core.controller import Controller, Plan, backfill_worker
from vecmig.harness.core.layer import LayerConfig, MigrationLayer, Shared
from vecmig.harness.core.phases import (
    Coordinator,
    InstanceView,
    Phase,
    PhaseError,
    Published,
    Step,
    lease_rules,
    next_phase,
)
from vecmig.harness.core.requests import Operation, Outcome
from vecmig.harness.core.state import MigrationState
from vecmig.harness.core.strategy import Strategy
from vecmig.harness.core.workers import Backfill, Throttle, repair_pass, verify
from vecmig.harness.history.ops import Recorder

from .bulkhead import Bulkhead
from .driver import LayerFaults, LiveDriver
from .inputs import VersionPolicy
from .metrics import ServiceMetrics
from .repairs import CachedRepairLog
from .resume import marker_for

log = logging.getLogger("vecmig.service")

SECOND = 1_000_000_000


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    strategy: Strategy
    dim: int
    instance: str = "svc-0"
    lease_s: float = 5.0
    poll_s: float = 0.1
    """How often the instance hears the config store (the coordinator)."""
    backfill_batch: int = 256
    backfill_slo_ms: float = 50.0
    backfill_pause_s: float = 0.0
    """A floor for the pause between backfill batches (staging: spread the copy out)."""
    mirror_rate: float = 0.2
    mirror_concurrency: int = 4
    mirror_exact_rate: float = 1.0
    """The share of mirrored reads that also ask old for the exact top-k (recall figures);
    each costs an exact search on old."""
    lagged: frozenset[Side] = frozenset()
    visibility_window_s: float = 2.0
    policy: gates.GatePolicy = field(default_factory=gates.GatePolicy)
    max_k: int = 100
    exact_searches: bool = False
    """Ask the side for the exact top-k of every client search (recall in the history);
    doubles a search's cost, so off by default. Mirrored reads always ask when they can."""
    op_log: str | None = None
    versions: VersionPolicy = field(default_factory=VersionPolicy)
    side_threads: int = 8
    """Threads carrying out each side's requests (the ports are synchronous): per side."""
    side_queue: int = 64
    """Calls that may wait for one of a side's threads; past that they are refused at once."""
    side_deadline_s: float = 2.0
    """How long a side call may take before it ends `Timeout` (or `Unavailable` if it never
    started). The instance's lease margin is set above it, so every request is bounded below
    the margin, as the layer's acknowledgement rule assumes."""
    health_interval_s: float = 1.0
    """How often the sides' health is checked (logged when it changes; `vecmig_side_up`)."""
    role: str = "standalone"
    """standalone (one process: instance and controller), instance or controller (a fleet)."""
    max_skew_s: float = 0.0
    """The bound on how far this process's clock may stray from the fleet's (lease rules)."""
    store_timeout_s: float = 2.0
    """How long one call to the config store may take."""


@dataclass(frozen=True, slots=True)
class StepResult:
    ok: bool
    phase: Phase
    epoch: int
    reasons: tuple[str, ...]


class Migration:
    def __init__(
        self,
        config: ServiceConfig,
        sides: Mapping[Side, ClusterPort],
        store: Any,
        coordination: Any = None,
    ) -> None:
        """`store`: a `SQLiteStore` (standalone, cached here) or a fleet's shared state;
        `coordination`: the fleet's `StoreCoordinator` (None: standalone)."""
        self.config = config
        self.sides = dict(sides)
        self.fleet = coordination is not None
        if self.fleet and config.role not in ("instance", "controller"):
            raise ValueError(f"a fleet member's role is instance or controller, not {config.role}")
        self.store: Any = store if self.fleet else CachedRepairLog(store)
        self.migration_id: str = store.migration_id
        self._store_pool = (
            ThreadPoolExecutor(4, thread_name_prefix="vecmig-state")
            if getattr(store, "dsn", None)
            else None
        )
        self.metrics = ServiceMetrics()
        self.bulkheads = {
            side: Bulkhead(side, config.side_threads, config.side_queue, config.side_deadline_s)
            for side in Side
        }
        self.faults = LayerFaults()
        # The layer's clock. A fleet's processes may run on several machines: they count on
        # the wall clock (NTP keeps it within the skew bound), a standalone service on the
        # monotonic one. Either moves by the clock-skew fault.
        base = time.time_ns if self.fleet else time.monotonic_ns
        self.now: Callable[[], int] = lambda: base() + self.faults.clock_skew_ns
        self.driver = self._driver()
        self.lease_ns = coordination.lease_ns if self.fleet else int(config.lease_s * SECOND)
        margin_ns = self._lease_margin_ns()
        state = self._resumed_state(store, coordination)
        now = self.now()
        self.started = now
        self._join(state, coordination, now, margin_ns)
        self.shared = Shared()
        self.layer = self._layer()
        self.backfill = self._backfill()
        self.controller = Controller(
            self.coordinator,
            config.strategy,
            self.backfill,
            self.shared,
            config.policy,
            new_p99_ms=self._new_p99_ms,
            lagged_sides=config.lagged,
        )
        self._link_fleet(coordination)
        if state.phase is Phase.CUTOVER:
            self.controller.cutover_at = now  # the soak starts again after a restart
        self._open_bookkeeping()
        self._read_counters()
        self.update_gauges()

    def _driver(self) -> LiveDriver:
        config = self.config
        return LiveDriver(
            self.sides,
            self.store,
            self.bulkheads,
            faults=self.faults,
            exact=self._exact,
            exact_kinds=frozenset(
                {"mirror", "calibrate"} | ({"search"} if config.exact_searches else set())
            ),
            exact_rate={"mirror": config.mirror_exact_rate},
            on_phase=self._on_phase,
            clock=self.now,
            store_calls=self._store_call if self._store_pool is not None else None,
        )

    def _lease_margin_ns(self) -> int:
        """The instance's lease margin, once the lease is checked against it and the poll: a
        `ValueError` names the rule a configuration breaks."""
        config = self.config
        skew_ns = int(config.max_skew_s * SECOND)
        margin_ns = int((config.side_deadline_s + 0.1) * SECOND) + 2 * skew_ns
        if self.lease_ns <= 2 * margin_ns:
            raise ValueError(
                f"the lease ({self.lease_ns / SECOND:g} s) must be more than twice the lease "
                f"margin (the side deadline plus 0.1 s plus twice the skew bound: "
                f"{margin_ns / SECOND:g} s): a lease shorter than that lapses between two polls "
                "of a busy instance"
            )
        broken = lease_rules(
            lease_ns=self.lease_ns,
            poll_ns=int(config.poll_s * SECOND),
            margin_ns=margin_ns,
            request_timeout_ns=int(config.side_deadline_s * SECOND),
            max_skew_ns=skew_ns,
        )
        if broken:
            raise ValueError("; ".join(broken))
        return margin_ns

    def _resumed_state(self, store: Any, coordination: Any) -> MigrationState:
        """The state this process resumes from (a fleet's phase and epoch are the config
        store's), also kept in `resumed_from` for the status page."""
        state: MigrationState = store.load()
        if self.fleet:
            published = coordination.published
            state = replace(state, phase=published.phase, epoch=published.epoch)
        self.resumed_from = {
            "phase": state.phase.value,
            "epoch": state.epoch,
            "checkpoint": _checkpoint_json(state.checkpoint),
            "repair_backlog": state.repair_backlog,
        }
        return state

    def _join(self, state: MigrationState, coordination: Any, now: int, margin_ns: int) -> None:
        """The coordinator (a fleet's config store, or one of this process's own) and this
        instance's view of it."""
        self.coordinator: Any = coordination or Coordinator(
            state.phase,
            state.epoch,
            lease_ns=self.lease_ns,
            bind_leases=self.config.strategy.lease_epoch_binding,
        )
        if not self.fleet:
            self.coordinator.join(self.config.instance, now)
        # A fleet instance holds no lease until it joined (`joined`); the controller none.
        expires = now + self.lease_ns if not self.fleet else now
        self.view = InstanceView(self.config.instance, state.phase, state.epoch, expires, margin_ns)
        self._acked = Published(state.phase, state.epoch)

    def _link_fleet(self, coordination: Any) -> None:
        """A fleet member's link to the config store: an instance's or the controller's."""
        self.instance_link: Any = None
        self.controller_link: Any = None
        self.plan: Plan | None = None
        """The plan the controller walks once it starts (`vecmig control --plan-to`)."""
        self.plan_waits = False
        if self.fleet:
            from .fleet import ControllerLink, InstanceLink

            if self.config.role == "instance":
                self.instance_link = InstanceLink(self, coordination)
            else:
                self.controller_link = ControllerLink(self, coordination)
                self.driver.on_event = self.controller_link.record_event

    def _open_bookkeeping(self) -> None:
        """What this process keeps only in memory (and its op log), measured again after a
        restart."""
        config = self.config
        self.phase_changes: list[dict[str, Any]] = []
        self.step_lock = asyncio.Lock()
        self.in_flight: dict[int, int] = {}
        """epoch -> client operations started under it and not yet finished."""
        self.live_latency: deque[tuple[int, float]] = deque(maxlen=8192)
        self._oplog_file = (
            open(config.op_log, "a", encoding="utf-8")  # noqa: SIM115 - open for the service's life
            if config.op_log
            else None
        )
        self.oplog = Recorder(self._oplog_file, keep=False) if self._oplog_file else None
        # Op-log process numbers start from this process's start second, so that a restarted
        # service appending to the same log never reuses one (an op cut off by a kill stays open).
        self._op_process = time.time_ns() // SECOND * 1_000_000
        self._tasks: list[asyncio.Task[None]] = []
        self._last_gate: dict[str, Any] | None = None
        self.side_health: dict[Side, dict[str, Any]] = {}
        """Each side's last health check: ok, detail, since when (monotonic ns)."""
        self._stamped: dict[Side, int] = {}
        """The epoch each side's marker last carried (written by this process)."""

    def _layer(self) -> MigrationLayer:
        config = self.config
        return MigrationLayer(
            self.view,
            LayerConfig(
                strategy=config.strategy,
                metric=self.sides[Side.OLD].metric,
                lagged_sides=config.lagged,
                visibility_window_ns=int(config.visibility_window_s * SECOND),
                lease_margin_ns=self.view.margin_ns,
                max_clock_skew_ns=int(config.max_skew_s * SECOND),
                # A write makes a handful of side calls, each bounded by the side deadline.
                intent_hold_ns=int(4 * config.side_deadline_s * SECOND) + self.view.margin_ns,
                mirror_sample_rate=config.mirror_rate,
            ),
            self.shared,
            node=random.randrange(1024),
        )

    def _backfill(self) -> Backfill:
        config = self.config
        backfill = Backfill(
            config.strategy,
            Throttle(
                slo_p99_ms=config.backfill_slo_ms,
                batch_size=config.backfill_batch,
                min_batch=min(16, config.backfill_batch),
                max_batch=config.backfill_batch,
            ),
        )
        backfill.throttle.pause_ns = int(config.backfill_pause_s * SECOND)
        return backfill

    def _read_counters(self) -> None:
        counters = self.metrics.read_counters
        counters.add(
            "vecmig_backfill_copied_records",
            "Records the backfill has copied (its durable checkpoint)",
            lambda: self._checkpoint().copied,
        )
        counters.add(
            "vecmig_mirrored_reads_compared",
            "Mirrored reads compared since this process started",
            lambda: self.shared.mirror.compared,
        )
        counters.add(
            "vecmig_operation_crashes",
            "Operations that raised a non-side error (bugs)",
            lambda: self.driver.crashes,
        )
        counters.add_labelled(
            "vecmig_side_calls_cut",
            "Side calls a side's bulkhead refused (full) or cut off (past the side deadline)",
            ("side", "reason"),
            lambda: {
                (side.value, reason): float(getattr(bulkhead, reason))
                for side, bulkhead in self.bulkheads.items()
                for reason in ("refused", "timed_out")
            },
        )

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        instance, controller = self.instance_link, self.controller_link
        loops: list[Callable[[], Any]] = [self._gauge_loop, self._side_watch_loop]
        if instance is not None:
            await instance.join(self.config.store_timeout_s * 5)
            loops += [instance.loop, instance.report_loop, self._mirror_loop]
        elif controller is not None:
            loops += [controller.telemetry_loop, self._backfill_loop, self._repair_loop]
        else:
            loops += [self._config_loop, self._backfill_loop, self._repair_loop, self._mirror_loop]
        self._tasks = [asyncio.create_task(loop(), name=loop.__name__) for loop in loops]
        if controller is not None and self.plan is not None:
            self.run_plan(self.plan)
        standalone_shadow = controller is None and instance is None
        if (
            self.view.phase is Phase.SHADOW
            and self.config.strategy.adjacency_wait
            and (standalone_shadow or controller is not None)
        ):
            self._tasks.append(asyncio.create_task(self._recalibrate(), name="recalibrate"))

    def run_plan(self, plan: Plan) -> None:
        """The controller walks `plan` in the background (`vecmig control --plan-to`), at
        once or, with `plan_waits`, once told to (`POST /admin/walk`)."""
        if self.controller_link is None:
            raise ValueError("only the controller (vecmig control) walks a plan")
        walk = self.controller_link.walk(plan, self.plan_waits)
        task = asyncio.create_task(walk, name="plan")
        self._tasks.append(task)

    def joined(self, published: Published, local: int) -> None:
        """A fleet instance joined at `published`, holding a lease asked for at `local`."""
        self.layer.learn(published, local)
        self.layer.renew(local, self.lease_ns)
        log.info(
            "joined the fleet as %s at %s (epoch %d)",
            self.view.name,
            published.phase.value,
            published.epoch,
        )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for bulkhead in self.bulkheads.values():
            bulkhead.shutdown()
        if self._oplog_file is not None:
            self._oplog_file.close()
        if self.controller_link is not None:
            self.controller_link.close()
        if self._store_pool is not None:
            self._store_pool.shutdown(wait=False, cancel_futures=True)

    async def _store_call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A state request on the store's threads (a store across the network)."""
        assert self._store_pool is not None
        return await asyncio.get_running_loop().run_in_executor(self._store_pool, fn, *args)

    def _new_p99_ms(self) -> float | None:
        if self.controller_link is not None:
            return self.controller_link.new_p99_ms  # type: ignore[no-any-return]
        return self.driver.read_latency.p99_ms(Side.NEW)

    # -- client operations ---------------------------------------------------------------------

    async def upsert(self, record: Record) -> Outcome:
        return await self._client(self.layer.upsert(record))

    async def delete(self, record_id: str, version: int) -> Outcome:
        return await self._client(self.layer.delete(record_id, version))

    async def get(self, record_id: str) -> Outcome:
        return await self._client(self.layer.get(record_id))

    async def search(self, vector: Vector, k: int, filter: Filter | None) -> Outcome:
        return await self._client(self.layer.search(vector, k, filter, mirror_draw=random.random()))

    def next_version(self) -> int:
        """A version for a write that brings none: the layer's hybrid logical clock on wall time
        (so versions keep growing across restarts)."""
        return self.layer.next_version(time.time_ns())

    async def _client(self, op: Operation) -> Outcome:
        if self.controller_link is not None:
            op.steps.close()
            return Outcome(
                "fail",
                error="this is the fleet's controller (vecmig control): send requests to an "
                "instance (vecmig serve --config-store)",
                notes={"refused": "lease"},
            )
        phase, epoch = self.view.phase, self.view.epoch
        self.in_flight[epoch] = self.in_flight.get(epoch, 0) + 1
        process = self._op_process
        self._op_process += 1
        start = time.monotonic_ns()
        # No write of this op leaves once the lease it was admitted under stops being
        # trusted (the lease's end less the margin, on the layer's clock, here in monotonic
        # terms): a process paused in between (SIGSTOP) must not send it late on resume.
        writes_by = start + (self.view.lease_expires - self.view.margin_ns - self.now())
        if self.oplog is not None and op.f is not None:
            self.oplog.invoke(process, op.f, op.invoke_value, start)
        try:
            outcome = await self.driver.run(op, writes_by=writes_by)
        finally:
            left = self.in_flight[epoch] - 1
            if left:
                self.in_flight[epoch] = left
            else:
                del self.in_flight[epoch]
        end = time.monotonic_ns()
        if op.f in ("upsert", "delete") and outcome.type == "ok":
            # The history records what the client is told: applied, or superseded by a newer
            # version that fencing kept.
            result = "superseded" if outcome.notes.get("superseded") else "applied"
            outcome = replace(outcome, value={**outcome.value, "result": result})
            self.metrics.writes.labels(op.f, result).inc()
        if self.oplog is not None and op.f is not None:
            value = outcome.value if outcome.value is not None else op.invoke_value
            self.oplog.complete(process, outcome.type, op.f, value, end)
        seconds = (end - start) / 1e9
        self.metrics.latency.labels(op.kind, phase.value).observe(seconds)
        self.metrics.outcomes.labels(op.kind, phase.value, outcome.type).inc()
        if op.kind in ("get", "search") and outcome.type == "ok":
            self.live_latency.append((end, seconds * 1000.0))
        notes = outcome.notes
        if "fallback_side" in notes:
            self.metrics.fallbacks.inc()
        if "repair_queued" in notes:
            self.metrics.repairs_queued.inc()
        if "secondary_lost" in notes:
            self.metrics.secondary_lost.inc()
        return outcome

    # -- the controller ------------------------------------------------------------------------

    async def step(self, step: Step) -> StepResult:
        """One try at a phase step through its gate (`Controller.attempt`)."""
        if self.instance_link is not None:
            raise PhaseError(
                "this is an instance of a fleet: its controller (vecmig control) walks the phases"
            )
        async with self.step_lock:
            target = next_phase(self.coordinator.published.phase, step)  # PhaseError: caller's 409
            if target is Phase.SHADOW and self.config.strategy.adjacency_wait:
                self.controller.calibration_queries = tuple(await self.calibration_queries())
            outcome = await self.driver.run(self.controller.attempt(step, Plan()))
            result = outcome.value
            if not isinstance(result, gates.GateResult):
                reasons: tuple[str, ...] = (str(outcome.error or "the controller crashed"),)
                ok = False
            else:
                reasons, ok = result.reasons, result.ok and outcome.type == "ok"
            published = self.coordinator.published
            self._last_gate = {
                "step": step.value,
                "target": target.value,
                "ok": ok,
                "reasons": list(reasons),
                "time": time.monotonic_ns(),
            }
            self.update_gauges()
            return StepResult(ok, published.phase, published.epoch, reasons)

    async def verify_and_repair(self) -> dict[str, Any]:
        """A verification diff (queuing repairs both ways for what differs) and one repair pass."""
        outcome = await self.driver.run(verify())
        if outcome.type != "ok":
            return {"ok": False, "error": outcome.error}
        result = outcome.value
        retired = self.coordinator.published.phase is Phase.DECOMMISSIONED
        repaired = await self.driver.run(repair_pass(4096, self.config.lagged, retired))
        return {
            "ok": True,
            "differences": result.differences,
            "differing_buckets": result.differing_buckets,
            "old_count": result.old_count,
            "new_count": result.new_count,
            "examples": list(result.examples),
            "repaired": (repaired.value or {}).get("repaired") if repaired.type == "ok" else None,
        }

    def _on_phase(self, published: Published, announce: rq.AnnouncePhase) -> None:
        if self.controller_link is not None:
            self.controller_link.record_phase(published, announce.step)
        now = time.monotonic_ns()
        self.phase_changes.append(
            {
                "phase": published.phase.value,
                "epoch": published.epoch,
                "step": announce.step,
                "time": now,
            }
        )
        log.info(
            "published %s (epoch %d): %s", published.phase.value, published.epoch, announce.reason
        )

    async def calibration_queries(self, n: int = 32) -> list[Vector]:
        """Queries for the noise floor: stored vectors of old, nudged, so that they look like
        real queries of this data without the service knowing its distribution."""
        try:
            page = await self.bulkheads[Side.OLD].call(self.sides[Side.OLD].scan, None, 512)
        except Exception:  # no calibration queries means no noise floor, not a crash
            log.warning("could not sample calibration queries from old", exc_info=True)
            return []
        vectors = [s.vector for s in page.items if not s.deleted and s.vector is not None]
        rng = np.random.default_rng()
        picks = [vectors[i] for i in rng.permutation(len(vectors))[:n]]
        return [
            (v + rng.standard_normal(v.shape).astype(np.float32) * 0.05).astype(np.float32)
            for v in picks
        ]

    async def _recalibrate(self) -> None:
        from vecmig.harness.core.workers import calibrate_noise_floor

        queries = await self.calibration_queries()
        outcome = await self.driver.run(calibrate_noise_floor(queries, 10))
        if outcome.type == "ok":
            self.shared.noise = outcome.value

    # -- background loops ----------------------------------------------------------------------

    async def _config_loop(self) -> None:
        """The instance hears the config store and acknowledges what it runs."""
        while True:
            now, local = time.monotonic_ns(), self.now()
            if now >= self.faults.config_lag_until:
                self.layer.learn(self.coordinator.published, local)
                oldest = min(self.in_flight, default=self.view.epoch)
                if oldest >= self.view.epoch:
                    self._acked = Published(self.view.phase, self.view.epoch)
                # Acknowledging the last epoch it may (again) renews the lease; the
                # coordinator grants it only as `Coordinator.ack` allows.
                if self.coordinator.ack(self.config.instance, self._acked, now):
                    self.layer.renew(local, self.lease_ns)
            await asyncio.sleep(self.config.poll_s)

    async def _backfill_loop(self) -> None:
        """Runs the backfill worker (it copies whenever BACKFILL is published); a worker that
        ends (a crash) is started again, resuming from the durable checkpoint."""
        while True:
            outcome = await self.driver.run(backfill_worker(self.backfill, self.coordinator))
            if outcome.type != "ok":
                log.warning("backfill worker ended %s: %s", outcome.type, outcome.error)
            await asyncio.sleep(0.5)

    async def _repair_loop(self, interval_s: float = 0.2) -> None:
        """Drains the repair log, pass after pass, but not while a side is down: a repair reads
        one side and writes the other, so with one side hung every pass would only load the
        healthy side with reads (one per entry) that cannot lead anywhere."""
        if not self.config.strategy.repairs:
            return
        while True:
            down = [s.value for s, h in self.side_health.items() if not h["ok"]]
            if not down:
                retired = self.coordinator.published.phase is Phase.DECOMMISSIONED
                outcome = await self.driver.run(repair_pass(256, self.config.lagged, retired))
                if outcome.type != "ok":
                    log.warning("repair pass ended %s: %s", outcome.type, outcome.error)
                elif outcome.value.get("repaired") or outcome.value.get("dropped"):
                    continue
            await asyncio.sleep(interval_s)

    async def _mirror_loop(self) -> None:
        """Mirrored reads, off the critical path, a few at a time; a backlog past 1000 is
        dropped (a sample is a sample)."""
        background = self.layer.background
        running: set[asyncio.Task[Outcome]] = set()
        while True:
            while len(background) > 1000:
                background.popleft()
            while background and len(running) < self.config.mirror_concurrency:
                task = asyncio.create_task(self.driver.run(background.popleft()))
                running.add(task)
                task.add_done_callback(running.discard)
            await asyncio.sleep(0.01)

    async def _gauge_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.backfill.throttle.observe(self._live_p99_ms())
            if self.config.backfill_pause_s:
                floor = int(self.config.backfill_pause_s * SECOND)
                self.backfill.throttle.pause_ns = max(self.backfill.throttle.pause_ns, floor)
            self.update_gauges()

    def _live_p99_ms(self, window_s: float = 2.0) -> float | None:
        horizon = time.monotonic_ns() - int(window_s * SECOND)
        recent = sorted(ms for t, ms in self.live_latency if t >= horizon)
        if len(recent) < 20:
            return None
        return recent[min(len(recent) - 1, int(len(recent) * 0.99))]

    def update_gauges(self) -> None:
        m = self.metrics
        m.repair_backlog.set(self.store.repair_backlog())
        m.backfill_batch.set(self.backfill.throttle.batch_size)
        m.mismatch_ratio.set(self.shared.mirror.mismatch_rate)
        m.epoch.set(self.coordinator.published.epoch)
        for phase in Phase:
            m.phase.labels(phase.value).set(1 if phase is self.coordinator.published.phase else 0)
        for side, health in self.side_health.items():
            m.side_up.labels(side.value).set(1 if health["ok"] else 0)

    # -- the sides' health, readiness and markers --------------------------------------------

    async def _side_watch_loop(self) -> None:
        """Checks each side's health on its own bulkhead, logs every change (a side going down
        used to leave no trace in the log), and keeps the sides' markers current."""
        while True:
            await asyncio.gather(*(self._watch(side) for side in Side))
            self.update_gauges()
            await asyncio.sleep(self.config.health_interval_s)

    async def _watch(self, side: Side) -> None:
        health = await self._health(side)
        last = self.side_health.get(side)
        if last is None or last["ok"] != health["ok"]:
            health["since"] = time.monotonic_ns()
            if not health["ok"]:
                log.warning("side %s is down: %s", side.value, health["detail"])
            elif last is not None:
                log.warning("side %s is back up", side.value)
        else:
            health["since"] = last["since"]
        self.side_health[side] = health
        if health["ok"]:
            await self._stamp(side)

    async def _health(self, side: Side, deadline_s: float = 1.0) -> dict[str, Any]:
        port = self.sides[side]
        try:
            health = await self.bulkheads[side].call(port.health, deadline_s=deadline_s)
        except ClusterError as exc:
            return {"ok": False, "detail": str(exc)}
        detail = {str(k): str(v)[:200] for k, v in dict(health.detail).items()}
        return {"ok": bool(health.ok), "detail": detail}

    async def _stamp(self, side: Side) -> None:
        """Write the migration's marker on `side` if it is behind the published epoch (once the
        state holds the epoch: a crash between the two leaves the marker behind, never ahead)."""
        port = self.sides[side]
        published = self.coordinator.published
        if not isinstance(port, MarkedSide) or self._stamped.get(side) == published.epoch:
            return
        marker = marker_for(self.migration_id, published.phase, published.epoch)
        try:
            await self.bulkheads[side].call(port.write_marker, marker)
        except ClusterError as exc:
            log.warning("cannot write the migration marker on %s: %s", side.value, exc)
            return
        self._stamped[side] = published.epoch

    async def readiness(self) -> dict[str, dict[str, Any]]:
        """What `/ready` reports: each side's health (now), the state store, the lease."""
        old, new = await asyncio.gather(self._health(Side.OLD), self._health(Side.NEW))
        checks: dict[str, dict[str, Any]] = {"old": old, "new": new}
        if self.coordinator.published.phase is Phase.DECOMMISSIONED:
            checks["old"] = {"ok": True, "detail": "retired (DECOMMISSIONED)", "was": old}
        try:
            durable = getattr(self.store, "repair_backlog_durable", self.store.repair_backlog)
            await asyncio.to_thread(durable) if self.fleet else durable()
            checks["state"] = {"ok": True, "detail": "answers"}
        except Exception as exc:  # noqa: BLE001 - any failure of the store means not ready
            checks["state"] = {"ok": False, "detail": f"{type(exc).__name__}: {exc}"}
        if self.controller_link is not None:
            return checks  # the controller serves no client: it holds no lease
        may_serve = self.view.may_serve(self.now())
        checks["lease"] = {
            "ok": may_serve,
            "detail": "held" if may_serve else "lapsed: not hearing the config store",
        }
        return checks

    # -- status ----------------------------------------------------------------------------------

    def _checkpoint(self) -> Any:
        if self.config.strategy.durable_checkpoint:
            return self.store.load_checkpoint()
        return self.backfill.checkpoint

    def status(self) -> dict[str, Any]:
        now = self.now()
        published = self.coordinator.published
        return {
            "strategy": self.config.strategy.name,
            "role": self.config.role,
            "fleet": self._fleet_status(),
            "phase": published.phase.value,
            "epoch": published.epoch,
            "instance": {
                "name": self.view.name,
                "phase": self.view.phase.value,
                "epoch": self.view.epoch,
                "may_serve": self.view.may_serve(now),
            },
            "waiting_for": self.coordinator.waiting_for(now),
            "adjacency_violations": self.coordinator.adjacency_violations(now),
            "backfill": {
                **_checkpoint_json(self._checkpoint()),
                "batch_size": self.backfill.throttle.batch_size,
                "pause_s": self.backfill.throttle.pause_ns / 1e9,
            },
            "repair_backlog": self.store.repair_backlog(),
            "last_gate": self._last_gate,
            "mirror": self.shared.mirror.to_json(),
            "noise_floor": None if self.shared.noise is None else self.shared.noise.to_json(),
            "fallbacks": self.shared.fallbacks,
            "new_p99_ms": self.driver.read_latency.p99_ms(Side.NEW),
            "layer_faults": self.faults.to_json(),
            "sides": {
                side.value: {
                    "health": self.side_health.get(side),
                    "bulkhead": self.bulkheads[side].to_json(),
                    "read_p99_ms": self.driver.read_latency.p99_ms(side),
                }
                for side in Side
            },
            "migration": self.migration_id,
            "versions": self.config.versions.describe(),
            "phase_changes": list(self.phase_changes),
            "resumed_from": self.resumed_from,
            "uptime_s": round((now - self.started) / 1e9, 3),
            "operation_crashes": self.driver.crashes,
            "time": now,
        }

    def _fleet_status(self) -> dict[str, Any] | None:
        if self.instance_link is not None:
            return {"config_store": self.instance_link.store.url, **self.instance_link.last_sync}
        if self.controller_link is not None:
            link = self.controller_link
            return {
                "config_store": link.store.url,
                "lease_clock": link.store.clock,
                "live": sorted(self.coordinator.live_instances(0)),
                "reports": {
                    name: {"epoch": r.get("epoch"), "compared": r["mirror"].get("compared")}
                    for name, r in sorted(link.instances.items())
                },
            }
        return None

    def _exact(self, side: Side, vector: Any, k: int, filter: Any) -> tuple[str, ...] | None:
        exact = getattr(self.sides[side], "exact_search", None)
        if exact is None:
            return None
        return tuple(h.id for h in exact(vector, k, filter))


def _checkpoint_json(checkpoint: Any) -> dict[str, Any]:
    return {"cursor": checkpoint.cursor, "copied": checkpoint.copied, "done": checkpoint.done}
