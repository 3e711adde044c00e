"""The nemesis: applies a fault schedule (`vecmig.sim.faults`) in simulated time and records every
start and stop as a history `fault` event (process "nemesis", type info).

Cluster families go to the side's `FakeCluster`; latency spikes and partitions to the
driver's model of the path to a side; the instance families to the fleet; a backfill worker
crash to the simulation, which closes the worker and starts a new one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import simpy

from vecmig.harness.clusters.base import Side
from vecmig.harness.clusters.fake import FakeCluster
from vecmig.harness.clusters.faults import CLUSTER_FAULT_FAMILIES
from vecmig.harness.core.phases import ORDER, Phase
from vecmig.harness.history.ops import NEMESIS, Recorder
from vecmig.sim.driver import SimDriver, SimProcess
from vecmig.sim.faults import FaultSpec
from vecmig.sim.fleet import Fleet
from vecmig.sim.scenario import SECOND


def within(spec: FaultSpec, phase: Phase) -> bool:
    """Whether a fault may be active while `phase` is published. A fault that `until_phase`
    bounds lasts until that phase, or a later one, is published; a fault started by a phase
    also ends when the migration steps back before that phase (a ROLLBACK or an ABORT), so
    that it never outlives the stretch of the migration it was written for."""
    at = ORDER.index(phase)
    if spec.until_phase and at >= ORDER.index(Phase(spec.until_phase)):
        return False
    return not (spec.phase and spec.until_phase and at < ORDER.index(Phase(spec.phase)))


@dataclass(eq=False)
class ActiveFault:
    spec: FaultSpec
    detail: dict[str, Any]
    started: int
    stopped: int | None = None


class Nemesis:
    def __init__(
        self,
        env: simpy.Environment,
        schedule: list[FaultSpec],
        clusters: dict[Side, FakeCluster],
        driver: SimDriver,
        fleet: Fleet,
        recorder: Recorder,
        rng: np.random.Generator,
        crash_backfill_worker: Callable[[], None],
        restart_backfill_worker: Callable[[], None],
        crash_controller: Callable[[], None],
        restart_controller: Callable[[], None],
    ) -> None:
        self.env = env
        self.schedule = schedule
        self.clusters = clusters
        self.driver = driver
        self.fleet = fleet
        self.recorder = recorder
        self.rng = rng
        self.processes: dict[str, tuple[Callable[[], None], Callable[[], None]]] = {
            "backfill-worker-crash": (crash_backfill_worker, restart_backfill_worker),
            "controller-crash": (crash_controller, restart_controller),
        }
        """The migration's own processes a fault kills and restarts: (crash, restart)."""
        self.active: list[ActiveFault] = []
        self.log: list[ActiveFault] = []
        self._phase_started: set[int] = set()
        self.phase = Phase.OLD_ONLY
        for position, spec in enumerate(schedule):
            if spec.at_s is not None:
                env.process(self._timed(position, spec, int(spec.at_s * SECOND)))

    # -- triggers ----------------------------------------------------------------------------

    def on_phase(self, phase: Phase) -> None:
        self.phase = phase
        for position, spec in enumerate(self.schedule):
            if spec.phase == phase.value and position not in self._phase_started:
                self._phase_started.add(position)
                self.env.process(
                    self._timed(position, spec, int(self.env.now) + int(spec.after_s * SECOND))
                )
        for fault in list(self.active):
            if not within(fault.spec, phase):
                self.stop(fault)

    def _timed(self, position: int, spec: FaultSpec, at: int) -> SimProcess:
        if at > self.env.now:
            yield self.env.timeout(at - int(self.env.now))
        if spec.phase and not within(spec, self.phase):
            return  # the migration left the fault's stretch before it was due to start
        fault = self.start(spec)
        if fault is None or spec.duration_s is None:
            return
        yield self.env.timeout(int(spec.duration_s * SECOND))
        self.stop(fault)

    # -- start and stop ----------------------------------------------------------------------

    # one branch per fault family; the per-family fault registry (issue 12) takes them (C901)
    def start(self, spec: FaultSpec) -> ActiveFault | None:  # noqa: C901
        family = spec.family
        detail: dict[str, Any] = {}
        if family in CLUSTER_FAULT_FAMILIES:
            side = Side(spec.side)
            cluster = self.clusters[side]
            params: dict[str, Any] = {}
            if family in ("node-crash", "node-pause", "slow-replica"):
                params["node"] = spec.node or self._pick_node(cluster)
            if family == "node-crash":
                params["lose_data"] = spec.lose_data
            if family in ("error-rate", "lost-ack"):
                params["rate"] = spec.rate
            if family == "slow-replica":
                params["factor"] = spec.factor
            cluster.start_fault(family, **params)
            detail = {"side": side.value, **params}
        elif family == "latency-spike":
            self.driver.sides[Side(spec.side)].spike = spec.factor
            detail = {"side": spec.side, "factor": spec.factor}
        elif family == "partition":
            self.driver.sides[Side(spec.side)].partition = spec.mode
            detail = {"side": spec.side, "mode": spec.mode}
        elif family in ("app-instance-crash", "late-config", "clock-skew"):
            instance = self.fleet.instances[self._pick_instance(spec)]
            detail = {"instance": instance.name}
            if family == "app-instance-crash":
                if not instance.alive:
                    return None
                self.fleet.crash(instance)
            elif family == "late-config":
                instance.extra_delay_ns = int(spec.delay_s * SECOND)
                detail["delay_s"] = spec.delay_s
            else:
                instance.skew_ns = int(spec.offset_ms * 1_000_000)
                detail["offset_ms"] = spec.offset_ms
        elif family in self.processes:
            crash, _ = self.processes[family]
            crash()
        fault = ActiveFault(spec, detail, int(self.env.now))
        self.active.append(fault)
        self.log.append(fault)
        self._record(family, "start", detail)
        return fault

    def stop(self, fault: ActiveFault) -> None:
        if fault not in self.active:
            return
        self.active.remove(fault)
        fault.stopped = int(self.env.now)
        spec, detail = fault.spec, fault.detail
        family = spec.family
        if family in CLUSTER_FAULT_FAMILIES:
            params = {k: v for k, v in detail.items() if k in ("node",)}
            self.clusters[Side(spec.side)].stop_fault(family, **params)
        elif family == "latency-spike":
            if not any(f.spec.family == family and f.spec.side == spec.side for f in self.active):
                self.driver.sides[Side(spec.side)].spike = 1.0
        elif family == "partition":
            if not any(f.spec.family == family and f.spec.side == spec.side for f in self.active):
                self.driver.sides[Side(spec.side)].partition = None
        elif family in ("app-instance-crash", "late-config", "clock-skew"):
            instance = next(i for i in self.fleet.instances if i.name == detail["instance"])
            if family == "app-instance-crash":
                self.fleet.restart(instance)
            elif family == "late-config":
                instance.extra_delay_ns = 0
                if instance.alive:
                    # The stuck watch comes back: the instance catches up at once.
                    self.fleet.deliver_now(instance, self.fleet.coordinator.published)
            else:
                instance.skew_ns = 0
        elif family in self.processes:
            _, restart = self.processes[family]
            restart()
        self._record(family, "stop", detail)

    def heal_all(self) -> None:
        """Stop every active fault (newest first), as the end of a run does."""
        for fault in reversed(list(self.active)):
            self.stop(fault)

    # -- helpers -----------------------------------------------------------------------------

    def _record(self, family: str, action: str, detail: dict[str, Any]) -> None:
        self.recorder.info(
            NEMESIS, "fault", {"family": family, "action": action, **detail}, int(self.env.now)
        )

    def _pick_node(self, cluster: FakeCluster) -> str:
        nodes = cluster.nodes()
        return nodes[int(self.rng.integers(0, len(nodes)))]

    def _pick_instance(self, spec: FaultSpec) -> int:
        if spec.instance >= 0:
            return spec.instance
        return int(self.rng.integers(0, len(self.fleet.instances)))
