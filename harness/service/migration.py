"""The migration as a live process: one app instance of the layer, the coordinator and the
controller, and the background loops (config polling, backfill, repair, mirrored reads),
wired to real sides through the live driver, with durable state in SQLite.

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
from collections.abc import Mapping
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
from vecmig.harness.core.phases import Coordinator, InstanceView, Phase, Published, Step, next_phase
from vecmig.harness.core.requests import Operation, Outcome
from vecmig.harness.core.strategy import Strategy
from vecmig.harness.core.workers import Backfill, Throttle, repair_pass, verify
from vecmig.harness.history.ops import Recorder
from vecmig.harness.state import SQLiteStore

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


@dataclass(frozen=True, slots=True)
class StepResult:
    ok: bool
    phase: Phase
    epoch: int
    reasons: tuple[str, ...]


class Migration:
    def __init__(
        self, config: ServiceConfig, sides: Mapping[Side, ClusterPort], store: SQLiteStore
    ) -> None:
        self.config = config
        self.sides = dict(sides)
        self.store = CachedRepairLog(store)
        self.migration_id: str = store.migration_id
        self.metrics = ServiceMetrics()
        self.bulkheads = {
            side: Bulkhead(side, config.side_threads, config.side_queue, config.side_deadline_s)
            for side in Side
        }
        self.faults = LayerFaults()
        self.driver = LiveDriver(
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
        )
        self.lease_ns = int(config.lease_s * SECOND)
        margin_ns = int((config.side_deadline_s + 0.1) * SECOND)
        if self.lease_ns <= 2 * margin_ns:
            raise ValueError(
                f"the lease ({config.lease_s:g} s) must be more than twice the side deadline "
                f"plus 0.1 s ({margin_ns / SECOND:g} s): a lease shorter than that lapses "
                "between two polls of a busy instance"
            )
        state = store.load()
        now = time.monotonic_ns()
        self.started = now
        self.resumed_from = {
            "phase": state.phase.value,
            "epoch": state.epoch,
            "checkpoint": _checkpoint_json(state.checkpoint),
            "repair_backlog": state.repair_backlog,
        }
        self.coordinator = Coordinator(
            state.phase,
            state.epoch,
            lease_ns=self.lease_ns,
            bind_leases=config.strategy.lease_epoch_binding,
        )
        self.coordinator.join(config.instance, now)
        self.view = InstanceView(
            config.instance, state.phase, state.epoch, now + self.lease_ns, margin_ns
        )
        self._acked = Published(state.phase, state.epoch)
        self.shared = Shared()
        self.layer = self._layer()
        self.backfill = self._backfill()
        self.controller = Controller(
            self.coordinator,
            config.strategy,
            self.backfill,
            self.shared,
            config.policy,
            new_p99_ms=lambda: self.driver.read_latency.p99_ms(Side.NEW),
            lagged_sides=config.lagged,
        )
        if state.phase is Phase.CUTOVER:
            self.controller.cutover_at = now  # the soak starts again after a restart
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
        self._read_counters()
        self.update_gauges()

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
        loops = [
            self._config_loop,
            self._backfill_loop,
            self._repair_loop,
            self._mirror_loop,
            self._gauge_loop,
            self._side_watch_loop,
        ]
        self._tasks = [asyncio.create_task(loop(), name=loop.__name__) for loop in loops]
        if self.view.phase is Phase.SHADOW and self.config.strategy.adjacency_wait:
            self._tasks.append(asyncio.create_task(self._recalibrate(), name="recalibrate"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for bulkhead in self.bulkheads.values():
            bulkhead.shutdown()
        if self._oplog_file is not None:
            self._oplog_file.close()

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
        phase, epoch = self.view.phase, self.view.epoch
        self.in_flight[epoch] = self.in_flight.get(epoch, 0) + 1
        process = self._op_process
        self._op_process += 1
        start = time.monotonic_ns()
        if self.oplog is not None and op.f is not None:
            self.oplog.invoke(process, op.f, op.invoke_value, start)
        try:
            outcome = await self.driver.run(op)
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
        async with self.step_lock:
            target = next_phase(self.coordinator.published.phase, step)  # PhaseError: caller's 409
            if target is Phase.SHADOW and self.config.strategy.adjacency_wait:
                self.controller.calibration_queries = tuple(await self._calibration_queries())
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

    async def _calibration_queries(self, n: int = 32) -> list[Vector]:
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

        queries = await self._calibration_queries()
        outcome = await self.driver.run(calibrate_noise_floor(queries, 10))
        if outcome.type == "ok":
            self.shared.noise = outcome.value

    # -- background loops ----------------------------------------------------------------------

    async def _config_loop(self) -> None:
        """The instance hears the config store and acknowledges what it runs."""
        while True:
            now = time.monotonic_ns()
            if now >= self.faults.config_lag_until:
                self.layer.learn(self.coordinator.published, now)
                oldest = min(self.in_flight, default=self.view.epoch)
                if oldest >= self.view.epoch:
                    self._acked = Published(self.view.phase, self.view.epoch)
                # Acknowledging the last epoch it may (again) renews the lease; the
                # coordinator grants it only as `Coordinator.ack` allows.
                if self.coordinator.ack(self.config.instance, self._acked, now):
                    self.layer.renew(now, self.lease_ns)
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
            self.store.repair_backlog_durable()
            checks["state"] = {"ok": True, "detail": "answers"}
        except Exception as exc:  # noqa: BLE001 - any failure of the store means not ready
            checks["state"] = {"ok": False, "detail": f"{type(exc).__name__}: {exc}"}
        may_serve = self.view.may_serve(time.monotonic_ns())
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
        now = time.monotonic_ns()
        published = self.coordinator.published
        return {
            "strategy": self.config.strategy.name,
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

    def _exact(self, side: Side, vector: Any, k: int, filter: Any) -> tuple[str, ...] | None:
        exact = getattr(self.sides[side], "exact_search", None)
        if exact is None:
            return None
        return tuple(h.id for h in exact(vector, k, filter))


def _checkpoint_json(checkpoint: Any) -> dict[str, Any]:
    return {"cursor": checkpoint.cursor, "copied": checkpoint.copied, "done": checkpoint.done}
