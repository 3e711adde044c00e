"""A service process as one member of a fleet: an app instance (`vecmig serve --config-store`)
or the fleet's one controller (`vecmig control`), the coordinator's state in a config store.

An instance hears the config store on its own poll (or at once, on a PostgreSQL push): it
learns the published phase, acknowledges the oldest epoch it still runs an operation under,
and renews its lease only if the store granted it, from its own clock's reading taken before
the acknowledgement left (`MigrationLayer.learn`, `acknowledgement`, `renew`: the flow of
sim/fleet.py and drive/rig.py). Every store call runs on a thread, bounded, so that a store
that hangs or restarts never stalls the event loop: the instance just stops renewing, and
stops serving when its lease runs out. It also reports its mirrored-read figures, fallbacks
and read latencies to the store, and takes the noise floor the controller published.

The controller sums the instances' reports into the figures its gates read (mirrored reads,
fallbacks, new's read p99), publishes the noise floor it calibrated, and, given a plan, walks
it and records the plan, each phase and each gate refusal in a history part of its own (the
checker judges liveness from them).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vecmig.harness.clusters.base import Side
from vecmig.harness.coordination import ConfigStoreError, StoreCoordinator
from vecmig.harness.core import requests as rq
from vecmig.harness.core.compare import MirrorStats, NoiseFloor
from vecmig.harness.core.controller import Plan
from vecmig.harness.core.phases import Published
from vecmig.harness.history.ops import CONTROLLER, Recorder

if TYPE_CHECKING:
    from .migration import Migration

log = logging.getLogger("vecmig.service")

REPORT_PREFIX = "instance/"
NOISE_KEY = "noise-floor"
WALK_KEY = "plan-began"
COUNTERS = tuple(
    f.name for f in dataclasses.fields(MirrorStats) if f.name not in ("log", "log_limit", "recent")
)
"""The mirrored-read figures an instance reports as numbers, which the controller sums."""
RECENT_REPORTED = 1024
"""How many of its most recent mirrored reads an instance reports, one by one, for the
CUTOVER gate's window (`MirrorStats.window`)."""


class InstanceLink:
    """One instance's side of the config store."""

    def __init__(self, migration: Migration, coordination: StoreCoordinator) -> None:
        self.migration = migration
        self.coordination = coordination
        self.store = coordination.store
        self.name = migration.config.instance
        self.last_sync: dict[str, Any] = {"ok": None}
        self._noise_seen: dict[str, Any] | None = None

    def _store_call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """On a thread: a call to the config store, unless this instance is cut off."""
        if self.migration.faults.config_cut_until > time.monotonic_ns():
            raise ConfigStoreError("cut off from the config store (an injected fault)")
        return fn(*args)

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        timeout = self.migration.config.store_timeout_s * 2
        return await asyncio.wait_for(asyncio.to_thread(self._store_call, fn, *args), timeout)

    async def join(self, deadline_s: float) -> Published:
        """Join the fleet (a lease at the current epoch), retrying until the deadline."""
        deadline = time.monotonic() + deadline_s
        while True:
            local = self.migration.now()
            try:
                published: Published = await self.call(self.coordination.join, self.name)
            except (ConfigStoreError, TimeoutError) as exc:
                if time.monotonic() > deadline:
                    raise ConfigStoreError(f"cannot join the fleet: {exc}") from None
                await asyncio.sleep(0.2)
                continue
            self.migration.joined(published, local)
            return published

    async def sync(self) -> None:
        """Learn, acknowledge, renew if granted."""
        m = self.migration
        local = m.now()  # before anything leaves: the lease never outlives the store's
        try:
            snapshot = await self.call(self.store.snapshot)
            m.layer.learn(snapshot[0].published, local)
            seen = m.layer.acknowledgement(local)
            granted = await self.call(self.coordination.ack, self.name, seen)
        except (ConfigStoreError, TimeoutError) as exc:
            if self.last_sync.get("ok") is not False:
                log.warning("cannot hear the config store: %s", exc or "timed out")
            self.last_sync = {"ok": False, "error": str(exc) or "timed out", "time": local}
            return
        if granted:
            m.layer.renew(local, m.lease_ns)
        elif self.last_sync.get("granted", True):
            log.warning(
                "the config store refused the lease for %s (epoch %d, published %d): catching up",
                self.name,
                seen.epoch,
                snapshot[0].published.epoch,
            )
        self.last_sync = {"ok": True, "granted": granted, "acked": seen.epoch, "time": local}

    async def loop(self) -> None:
        m = self.migration
        poll = m.config.poll_s
        while True:
            if time.monotonic_ns() >= m.faults.config_lag_until:
                await self.sync()
                # A push wakes the instance as soon as a phase is published (PostgreSQL's
                # LISTEN); without one this is a sleep of one poll interval.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.to_thread(self.store.wait, poll), poll + 2.0)
            else:
                await asyncio.sleep(poll)

    async def report_loop(self, interval_s: float = 1.0) -> None:
        """Report this instance's figures, and take the noise floor the controller published."""
        m = self.migration
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.call(self.store.put, REPORT_PREFIX + self.name, self.report())
                found = await self.call(self.store.values, NOISE_KEY)
            except (ConfigStoreError, TimeoutError):
                continue
            noise = found.get(NOISE_KEY)
            if noise is not None and noise != self._noise_seen:
                m.shared.noise = NoiseFloor(**noise)
                self._noise_seen = noise

    def report(self) -> dict[str, Any]:
        m = self.migration
        mirror = m.shared.mirror
        return {
            "mirror": {name: getattr(mirror, name) for name in COUNTERS},
            "recent": [list(read) for read in list(mirror.recent)[-RECENT_REPORTED:]],
            "fallbacks": m.shared.fallbacks,
            "last_fallback_to_old": m.shared.last_fallback_to_old,
            "read_p99_ms": {side.value: m.driver.read_latency.p99_ms(side) for side in Side},
            "epoch": m.view.epoch,
            "time": m.now(),
        }


class ControllerLink:
    """The controller's side: the instances' figures in, the noise floor out, the plan."""

    def __init__(self, migration: Migration, coordination: StoreCoordinator) -> None:
        self.migration = migration
        self.coordination = coordination
        self.store = coordination.store
        self.instances: dict[str, dict[str, Any]] = {}
        self.new_p99_ms: float | None = None
        self._noise_put: dict[str, Any] | None = None
        self.recorder: Recorder | None = None
        self._history: Any = None
        self.walk_now = asyncio.Event()

    async def telemetry_loop(self, interval_s: float = 0.5) -> None:
        while True:
            try:
                await self.gather()
            except (ConfigStoreError, TimeoutError) as exc:
                log.debug("instance figures not gathered: %s", exc)
            await asyncio.sleep(interval_s)

    async def gather(self) -> None:
        m = self.migration
        reports = await asyncio.to_thread(self.store.values, REPORT_PREFIX)
        self.instances = {k[len(REPORT_PREFIX) :]: v for k, v in reports.items()}
        merged = summed(r["mirror"] for r in self.instances.values())
        for name in COUNTERS:
            setattr(m.shared.mirror, name, getattr(merged, name))
        m.shared.mirror.recent.clear()
        m.shared.mirror.recent.extend(
            interleaved(r.get("recent", []) for r in self.instances.values())
        )
        m.shared.fallbacks = sum(int(r.get("fallbacks", 0)) for r in self.instances.values())
        lasts = [r["last_fallback_to_old"] for r in self.instances.values()]
        last = max((t for t in lasts if t is not None), default=None)
        if last is not None:
            m.shared.last_fallback_to_old = max(m.shared.last_fallback_to_old or last, last)
        p99s = [r["read_p99_ms"].get("new") for r in self.instances.values()]
        self.new_p99_ms = max((p for p in p99s if p is not None), default=None)
        noise = m.shared.noise
        if noise is not None and noise.to_json() != self._noise_put:
            await asyncio.to_thread(self.store.put, NOISE_KEY, noise.to_json())
            self._noise_put = noise.to_json()

    # -- the plan and its history --------------------------------------------------------------

    def open_history(self, path: str | Path, clock: Callable[[], int]) -> None:
        self._history = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - close()
        self.recorder = Recorder(self._history, keep=False)
        self._clock = clock

    def clock_ns(self) -> int:
        """The reading of the history's clock (the reference a fleet's Locust processes
        measure their own against, see `vecmig.loadtests.history`)."""
        return self._clock() if self.recorder is not None else time.monotonic_ns()

    def record_event(self, event: rq.RecordEvent) -> None:
        if self.recorder is not None:
            self.recorder.info(CONTROLLER, event.f, dict(event.value), self._clock())
        log.info("controller %s: %s", event.f, dict(event.value))

    def record_phase(self, published: Published, step: str) -> None:
        if self.recorder is not None:
            value = {"phase": published.phase.value, "epoch": published.epoch, "step": step}
            self.recorder.info(CONTROLLER, "phase", value, self._clock())

    def start_walk(self) -> bool:
        """Let a waiting plan begin (`POST /admin/walk`); False if there is no plan."""
        if self.migration.plan is None:
            return False
        self.walk_now.set()
        return True

    async def walk(self, plan: Plan, waits: bool = False) -> None:
        """Walk `plan` through the gates; the history says how far it got and why it held.
        With `waits`, begin only once told to (`start_walk`), or at once if the config store
        says the plan began before (this controller was restarted)."""
        m = self.migration
        while waits and not self.walk_now.is_set():
            try:
                if await asyncio.to_thread(self.store.values, WALK_KEY):
                    break
            except ConfigStoreError:
                pass
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.walk_now.wait(), 0.2)
        try:
            await asyncio.to_thread(self.store.put, WALK_KEY, {"time": time.time_ns()})
        except ConfigStoreError as exc:
            log.warning("could not note in the config store that the plan began: %s", exc)
        if not m.controller.calibration_queries:
            m.controller.calibration_queries = tuple(await m.calibration_queries())
        outcome = await m.driver.run(m.controller.run(plan))
        log.warning("the plan ended %s: %s", outcome.type, outcome.value or outcome.error)

    def close(self) -> None:
        if self._history is not None:
            self._history.close()


def summed(figures: Any) -> MirrorStats:
    total = MirrorStats()
    for one in figures:
        for name in COUNTERS:
            setattr(total, name, getattr(total, name) + one.get(name, 0))
    return total


def interleaved(recents: Any) -> list[tuple[bool, bool, float | None]]:
    """The instances' recent mirrored reads as one sequence, oldest first, taken in turn from
    each instance's newest backwards (the reports carry no common clock), so that the gate's
    window holds the latest reads of every instance rather than those of one."""
    lists = [list(recent) for recent in recents]
    out: list[tuple[bool, bool, float | None]] = []
    depth = max((len(one) for one in lists), default=0)
    for back in range(1, depth + 1):
        for one in lists:
            if back <= len(one):
                discrepancy, stray, gap = one[-back]
                out.append((bool(discrepancy), bool(stray), None if gap is None else float(gap)))
    out.reverse()
    return out


def plan_from(steps: str, holds: Mapping[str, float], stall_s: float | None) -> Plan:
    """A `Plan` from the command line: steps `advance,advance,...`, holds per phase in s."""
    from vecmig.harness.core.phases import Phase, Step

    try:
        parsed = tuple(Step(s.strip()) for s in steps.split(",") if s.strip())
        hold_ns = {Phase(p): int(s * 1e9) for p, s in holds.items()}
    except ValueError as exc:
        raise ValueError(f"a plan's steps are advance, rollback or abort: {exc}") from None
    return Plan(
        steps=parsed,
        hold_ns=hold_ns,
        stall_ns=None if stall_s is None else int(stall_s * 1e9),
    )
