"""One simulated migration: two fake clusters, N app instances, traffic, the controller and its
workers, and the nemesis, wired together in a SimPy environment; then the end of the run
(heal, drain, verify, final scans) and the checker's verdict.

`Simulation(scenario, strategy, seed).run()` returns a `RunResult`; nothing here prints or
writes files (that is `vecmig.sim.report` and `vecmig.sim.command`).
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import simpy

from vecmig.harness.catalog import Catalog
from vecmig.harness.clusters.base import Side
from vecmig.harness.clusters.fake import FakeCluster
from vecmig.harness.clusters.scaled import CatalogSample, ScaledCluster
from vecmig.harness.core.controller import Controller, Plan, backfill_worker, repair_worker
from vecmig.harness.core.gates import GatePolicy
from vecmig.harness.core.layer import LayerConfig, Shared
from vecmig.harness.core.phases import Coordinator, Phase, Published, Step
from vecmig.harness.core.requests import Outcome
from vecmig.harness.core.state import Checkpoint
from vecmig.harness.core.strategy import Strategy, strategy_named
from vecmig.harness.core.workers import Backfill, Throttle
from vecmig.harness.costs import load_profile
from vecmig.harness.drive.step import live_versions
from vecmig.harness.history.checker import Verdict, check
from vecmig.harness.history.ops import CHECKER, LOADER, Event, Recorder
from vecmig.harness.state import MemoryStore
from vecmig.sim.driver import Draws, Flight, SimDriver, SimProcess
from vecmig.sim.faults import FaultSpec, swarm_schedule
from vecmig.sim.fleet import Fleet
from vecmig.sim.nemesis import Nemesis
from vecmig.sim.scaled import (
    ModelledService,
    ScaledCatalog,
    fidelity_report,
    judges_sampled_ids,
    load_event_value,
)
from vecmig.sim.scenario import MS, SECOND, Scenario, profile_name
from vecmig.sim.traffic import Traffic

STREAMS = ("traffic", "content", "latency", "instances", "faults", "exact", "calibration", "swarm")
DRAIN_LIMIT_NS = 600 * SECOND
"""How long the end of a run may take to drain in-flight work and the repair log."""
ETA_WINDOW_NS = 10 * SECOND
"""The backfill's ETA counts its rate over this much of the recent past: long enough to ride
over one slow batch, short enough to see a crashed node or a tighter throttle within seconds."""


def backfill_eta_s(
    times: Sequence[int], copied: Sequence[int], started: int, total: int
) -> float | None:
    """How many seconds the backfill still needs, at the rate it copied over the last
    `ETA_WINDOW_NS` of samples (`times` ascending, in ns, with `copied` at each) since it
    started at `started`; `total` is what it counts down from. None when the window holds no
    earlier sample to measure a rate against, or the backfill made no progress in it."""
    since = max(started, times[-1] - ETA_WINDOW_NS)
    first = bisect.bisect_left(times, since)
    if first >= len(times) - 1:
        return None
    rate = (copied[-1] - copied[first]) / ((times[-1] - times[first]) / SECOND)
    if rate <= 0:
        return None
    return round(max(0, total - copied[-1]) / rate, 3)


ETA_POINTS = 60
"""At most this many [time_s, eta_s] points of the backfill's ETA go into report.json."""


def eta_points(
    series: dict[str, list[Any]], limit: int = ETA_POINTS
) -> list[tuple[float, float | None]]:
    """The backfill's ETA over time as (time_s, eta_s) points, from a run's `series`: from its
    first estimate to the first sample that found it done (eta 0), or to the end of the run;
    None where no rate could be measured (no progress over the window). Thinned evenly to at
    most `limit` points, always keeping the first and the last."""
    points = [
        (round(t / SECOND, 3), eta)
        for t, eta in zip(series["time"], series.get("backfill_eta_s", []), strict=False)
    ]
    first = next((i for i, (_, eta) in enumerate(points) if eta is not None), None)
    if first is None:
        return []
    last = next((i for i in range(first, len(points)) if points[i][1] == 0), len(points) - 1)
    kept = points[first : last + 1]
    if len(kept) <= limit:
        return kept
    picks = np.linspace(0, len(kept) - 1, limit).round().astype(int)
    return [kept[i] for i in dict.fromkeys(picks.tolist())]


RESTART_S = {"backfill-worker-crash": 1.0, "controller-crash": 2.0}
"""How long a crashed migration process stays down when its fault gives no duration: its
supervisor restarts it. (An app instance takes the scenario's `instances.restart_s`.)"""


class PacedThrottle(Throttle):
    """The core's throttle under an operator's rate cap (records per second): the pause
    between batches never drops below what the cap asks for."""

    __slots__ = ("rate",)
    rate: float

    def observe(self, live_p99_ms: float | None, error: bool = False) -> None:
        super().observe(live_p99_ms, error)
        rate = getattr(self, "rate", 0.0)
        if rate:
            self.pause_ns = max(self.pause_ns, int(self.batch_size / rate * SECOND))


@dataclass
class RunResult:
    scenario: Scenario
    strategy: str
    seed: int
    swarm: bool
    buggify: bool
    events: list[Event]
    verdict: Verdict
    schedule: list[FaultSpec]
    faults: list[dict[str, Any]]
    phases: list[dict[str, Any]]
    controller: dict[str, Any]
    completed: list[Any]
    backfill: dict[str, Any]
    series: dict[str, list[Any]]
    end_phase: str
    sim_end_ns: int
    bugs: list[str]
    notes: list[str] = field(default_factory=list)
    fidelity: dict[str, Any] = field(default_factory=lambda: {"mode": "exact"})
    """How faithful the run was: exact, or scaled with its sample, judged ids and profile."""


class Simulation:
    def __init__(
        self,
        scenario: Scenario,
        strategy: str | Strategy = "safe",
        seed: int | None = None,
        swarm: bool | None = None,
        buggify: bool = False,
    ) -> None:
        """`buggify`: draw the scenario's settings and faults from the seed first (see
        `sim.buggify`); the run then replays from the same scenario, seed and flag."""
        if buggify:
            from vecmig.sim.buggify import buggify as draw_settings

            scenario = draw_settings(scenario, scenario.seed if seed is None else seed)
        self.buggify = buggify
        self.scenario = scenario
        self.strategy = strategy if isinstance(strategy, Strategy) else strategy_named(strategy)
        self.seed = scenario.seed if seed is None else seed
        self.swarm = scenario.swarm.enabled if swarm is None else swarm
        rngs = dict(
            zip(
                STREAMS,
                (
                    np.random.default_rng(s)
                    for s in np.random.SeedSequence(self.seed).spawn(len(STREAMS))
                ),
                strict=True,
            )
        )
        self.env = simpy.Environment()
        self.recorder = Recorder()
        self._build_sides(scenario)
        self._build_fleet(scenario, rngs)
        self._build_migration(scenario, rngs)
        s = scenario
        self.traffic = Traffic(
            self.env,
            self.fleet,
            self.catalog,
            s.traffic,
            int(s.duration_s * SECOND),
            rngs["traffic"],
            rngs["content"],
        )
        self.schedule = self._schedule(rngs["swarm"])
        self.nemesis = Nemesis(
            self.env,
            self.schedule,
            self.clusters,
            self.driver,
            self.fleet,
            self.recorder,
            rngs["faults"],
            self._crash_backfill_worker,
            self._start_backfill_worker,
            self._crash_controller,
            self._restart_controller,
        )
        self.phases: list[dict[str, Any]] = []
        self.series: dict[str, list[Any]] = {
            "time": [],
            "backfill_copied": [],
            "mismatch_rate": [],
            "repair_backlog": [],
            "batch_size": [],
            "backfill_eta_s": [],
        }
        self._backfill_flight: Flight | None = None
        self._repair_flight: Flight | None = None
        self._controller_flight: Flight | None = None
        self.backfill_started: int | None = None
        self.backfill_finished: int | None = None
        self.final_backlog = 0
        self._ending = False

    def _build_sides(self, s: Scenario) -> None:
        """The catalog and the two fake clusters it migrates between."""
        self.scaled = s.clusters.fidelity == "scaled"
        if self.scaled:
            self._build_scaled_sides(s)
            return
        self.catalog: Catalog | ScaledCatalog = Catalog.generate(
            s.catalog.products, s.catalog.dim, s.catalog.categories, seed=self.seed
        )
        capacity = max(1024, 2 * s.catalog.products // s.clusters.shards)
        self.clusters: dict[Side, FakeCluster] = self._two_sides(
            s, partial(FakeCluster, s.catalog.dim), capacity
        )

    def _build_scaled_sides(self, s: Scenario) -> None:
        """A catalog of which a sample holds vectors, and two scaled clusters over it."""
        sample = CatalogSample.of(s.catalog.products, s.clusters.sample)
        self.catalog = ScaledCatalog(sample, s.catalog.dim, s.catalog.categories, self.seed)
        self.profiles = {side: load_profile(profile_name(s, side.value)) for side in Side}
        capacity = max(1024, 2 * sample.size // s.clusters.shards)
        self.clusters = self._two_sides(s, partial(ScaledCluster, s.catalog.dim, sample), capacity)

    def _two_sides(
        self, s: Scenario, make: Callable[..., FakeCluster], capacity: int
    ) -> dict[Side, FakeCluster]:
        """Old and new, made by `make` alike but for their seeds and names."""
        return {
            side: make(
                shards=s.clusters.shards,
                replicas=s.clusters.replicas,
                seed=self.seed * 2 + offset,
                capacity=capacity,
                ef_search=s.clusters.ef_search,
                name=side.value,
                catch_up=self.strategy.replica_catch_up,
            )
            for offset, side in enumerate((Side.OLD, Side.NEW))
        }

    def _build_fleet(self, s: Scenario, rngs: dict[str, np.random.Generator]) -> None:
        """The config store, the coordinator, the layer's settings, the driver, the instances."""
        self.store = MemoryStore()
        self.coordinator = Coordinator(
            lease_ns=int(s.instances.lease_ms * MS),
            bind_leases=self.strategy.lease_epoch_binding,
        )
        self.shared = Shared()
        lagged = frozenset(Side(x) for x in s.migration.lagged_sides)
        self.lagged = lagged
        self.layer_config = LayerConfig(
            strategy=self.strategy,
            metric=self.clusters[Side.OLD].metric,
            lagged_sides=lagged,
            visibility_window_ns=int(s.migration.visibility_window_ms * MS),
            max_clock_skew_ns=int(s.instances.max_clock_skew_ms * MS),
            lease_margin_ns=int(s.instances.lease_margin_ms * MS),
            # A write must be sent with at least a margin of its intent's hold left (see
            # MigrationLayer._too_late_to_write): the hold outlasts a long margin too.
            intent_hold_ns=max(5_000_000_000, 3 * int(s.instances.lease_margin_ms * MS)),
            mirror_sample_rate=s.migration.mirror_sample_rate,
        )
        latency_draws = Draws(rngs["latency"])
        self.service: dict[Side, ModelledService] = (
            {
                side: ModelledService(self.profiles[side], latency_draws.normal)
                for side in self.clusters
            }
            if self.scaled
            else {}
        )
        self.driver = SimDriver(
            self.env,
            self.clusters,
            self.store,
            self.recorder,
            s.latency,
            s.clusters.concurrency_per_node * s.clusters.shards * s.clusters.replicas,
            latency_draws,
            Draws(rngs["exact"]),
            s.traffic.exact_sample_rate,
            size_hint=lambda: s.catalog.products,
            phase_now=lambda: self.coordinator.published.phase.value,
            on_phase=self._on_phase,
            service=self.service,
            judged=judges_sampled_ids(self.catalog)
            if isinstance(self.catalog, ScaledCatalog) and s.clusters.judge == "sample"
            else None,
        )
        self.fleet = Fleet(
            self.env,
            self.driver,
            self.coordinator,
            s.instances,
            self.layer_config,
            self.shared,
            Draws(rngs["instances"]),
        )

    def _build_migration(self, s: Scenario, rngs: dict[str, np.random.Generator]) -> None:
        """The backfill (with its throttle) and the controller that walks the plan."""
        self.throttle = PacedThrottle(
            slo_p99_ms=s.migration.slo_p99_ms,
            batch_size=s.migration.batch_size,
            max_batch=max(
                s.migration.batch_size,
                2048 if not s.migration.backfill_rate else s.migration.batch_size,
            ),
        )
        self.throttle.rate = s.migration.backfill_rate
        self.throttle.observe(None)
        self.backfill = Backfill(self.strategy, self.throttle)
        self._calibration = [
            self.catalog.query_vector(rngs["calibration"])
            for _ in range(s.migration.calibration_queries)
        ]
        self.controller = self._new_controller()
        self._crashed_controllers: list[Controller] = []
        """Controllers a controller-crash killed, oldest first (their reports are merged)."""
        self._controller_due = False  # the plan's start time has come
        self._controller_down = False  # a controller-crash is active
        self._plan_finished = False

    def _new_controller(self) -> Controller:
        """A controller that knows only what the coordinator and the state store hold: a
        restarted one (controller-crash) starts from here too."""
        m = self.scenario.migration
        return Controller(
            self.coordinator,
            self.strategy,
            self.backfill,
            self.shared,
            GatePolicy(
                min_mirrored_reads=m.min_mirrored_reads,
                recall_parity_tolerance=m.recall_parity_tolerance,
                slo_p99_ms=m.slo_p99_ms,
                soak_ns=int(m.soak_s * SECOND),
            ),
            new_p99_ms=lambda: self.driver.side_p99_ms(Side.NEW),
            calibration_queries=self._calibration,
            lagged_sides=self.lagged,
        )

    def _schedule(self, rng: np.random.Generator) -> list[FaultSpec]:
        s = self.scenario
        specs = list(s.faults) if not self.swarm or s.swarm.keep_scenario_faults else []
        if self.swarm:
            specs += swarm_schedule(
                s.swarm,
                rng,
                duration_s=s.duration_s,
                lagged_sides=s.migration.lagged_sides,
                shards=s.clusters.shards,
                replicas=s.clusters.replicas,
                instances=s.instances.count,
                max_skew_ms=s.instances.max_clock_skew_ms,
            )
        filled = []
        for given in specs:
            spec = given
            if spec.duration_s is None and spec.family == "app-instance-crash":
                spec = dataclasses.replace(spec, duration_s=s.instances.restart_s)
            if spec.duration_s is None and spec.family in RESTART_S:
                spec = dataclasses.replace(spec, duration_s=RESTART_S[spec.family])
            filled.append(spec)
        return filled

    # -- the run -------------------------------------------------------------------------------

    def run(self, progress: Callable[[int, int], None] | None = None) -> RunResult:
        s = self.scenario
        env = self.env
        loaded = self.catalog.records()
        old = self.clusters[Side.OLD]
        old.upsert(loaded, fenced=False)
        if isinstance(old, ScaledCluster) and isinstance(self.catalog, ScaledCatalog):
            old.load_beyond_sample(len(self.catalog))
            load = load_event_value(self.catalog, self.scenario.clusters.judge == "all")
        else:
            load = {
                "records": {r.id: r.version for r in loaded},
                "fields": {r.id: dict(r.metadata) for r in loaded},
            }
        self.recorder.ok(LOADER, "load", load, 0)
        self.phases.append({"phase": Phase.OLD_ONLY.value, "time": 0, "epoch": 0})
        for side in self.layer_config.lagged_sides:
            self.clusters[side].start_fault("visibility-lag")
            env.process(self._refresher(side))
        traffic = env.process(self.traffic.run())
        env.process(self._controller(int(s.migration.start_s * SECOND)))
        self._start_backfill_worker()
        self._repair_flight = self.driver.start(
            repair_worker(
                self.coordinator, int(s.migration.repair_interval_ms * MS), lagged=self.lagged
            )
        )
        env.process(self._sampler())
        end = int(s.duration_s * SECOND)
        step = max(SECOND, end // 200)
        t = 0
        while t < end and traffic.is_alive:
            t = min(end, t + step)
            env.run(until=t)
            if progress is not None:
                progress(t, end)
        if traffic.is_alive:
            env.run(until=traffic)
        self._finish()
        verdict = check(self.recorder.events)
        return self._result(verdict)

    def _controller(self, start_ns: int) -> SimProcess:
        yield self.env.timeout(start_ns)
        self._controller_due = True
        if not self._controller_down:
            self._start_controller()

    def _start_controller(self) -> None:
        """Run the plan's steps not yet taken. Only the controller publishes, one step a
        publish, so the coordinator's epoch counts the steps taken, by any controller."""
        m = self.scenario.migration
        steps = tuple(Step(x) for x in m.steps)[self.coordinator.published.epoch :]
        if not steps:
            return
        plan = Plan(
            steps=steps,
            hold_ns={Phase(k): int(v * SECOND) for k, v in m.hold_s.items()},
            retry_ns=int(m.retry_ms * MS),
            stall_ns=int(m.stall_after_s * SECOND),
        )
        self._controller_flight = self.driver.start(
            self.controller.run(plan), on_done=self._plan_done
        )

    def _crash_controller(self) -> None:
        """The controller process dies wherever it is (in a hold, a gate, a verification
        diff, a calibration): what it kept in memory is gone."""
        self._controller_down = True
        flight = self._controller_flight
        if flight is not None and not flight.finished:
            self.driver.crash(flight)
            self._controller_flight = None
        if not self._plan_finished:
            self._crashed_controllers.append(self.controller)
            self.controller = self._new_controller()

    def _restart_controller(self) -> None:
        self._controller_down = False
        if self._controller_due and not self._plan_finished and not self._ending:
            self._start_controller()

    def _controller_report(self) -> dict[str, Any]:
        """The report of every controller of the run, crashed ones first: their transitions
        and gate waits in time order, the last verification any of them took."""
        reports = [c.report() for c in (*self._crashed_controllers, self.controller)]
        merged = dict(reports[-1])
        merged["transitions"] = [t for r in reports for t in r["transitions"]]
        merged["gate_waits"] = [w for r in reports for w in r["gate_waits"]]
        verifications = [r["verification"] for r in reports if r["verification"] is not None]
        merged["verification"] = verifications[-1] if verifications else None
        if self._crashed_controllers:
            merged["restarts"] = len(self._crashed_controllers)
        return merged

    def _plan_done(self, flight: Flight, outcome: Outcome) -> None:
        if outcome.type == "ok":
            self._plan_finished = True
        linger = self.scenario.migration.end_after_plan_s
        if outcome.type == "ok" and linger is not None:
            end = int(self.env.now) + int(linger * SECOND)
            self.traffic.duration_ns = min(self.traffic.duration_ns, end)

    def _on_phase(self, published: Published, step: str) -> None:
        now = int(self.env.now)
        self.phases.append(
            {"phase": published.phase.value, "time": now, "epoch": published.epoch, "step": step}
        )
        if published.phase is Phase.BACKFILL and self.backfill_started is None:
            self.backfill_started = now
        self.fleet.on_publish(published)
        self.nemesis.on_phase(published.phase)

    def _start_backfill_worker(self) -> None:
        if self._ending:
            return  # healing a backfill-worker-crash at the end of the run restarts nothing
        poll = 100 * MS
        self._backfill_flight = self.driver.start(
            backfill_worker(self.backfill, self.coordinator, poll)
        )

    def _note_backfill_done(self) -> None:
        """The backfill's last completion so far (an ABORT and a new BACKFILL copy again)."""
        done_at = self.backfill.done_at
        if done_at is not None and (self.backfill_finished or -1) < done_at:
            self.backfill_finished = done_at

    def _crash_backfill_worker(self) -> None:
        flight = self._backfill_flight
        if flight is not None and not flight.finished:
            self.driver.crash(flight)
            self._backfill_flight = None
        self._note_backfill_done()
        # The naive backfill keeps its cursor only in the worker's memory: a new worker
        # starts from the beginning. The safe one reloads its durable checkpoint.
        self.backfill = Backfill(self.strategy, self.throttle)
        self.controller.backfill = self.backfill

    def _refresher(self, side: Side) -> SimProcess:
        interval = int(self.scenario.migration.refresh_interval_ms * MS)
        while True:
            yield self.env.timeout(interval)
            self.clusters[side].refresh()

    def _sampler(self) -> SimProcess:
        """Once a second: feed the backfill throttle and take the series the plots show.
        Only reads state: sampling draws nothing, so the history stays what it was."""
        while True:
            yield self.env.timeout(SECOND)
            self._note_backfill_done()
            self.throttle.observe(self.driver.client_p99_ms())
            checkpoint = self._checkpoint()
            self.series["time"].append(int(self.env.now))
            self.series["backfill_copied"].append(checkpoint.copied)
            self.series["backfill_eta_s"].append(self._backfill_eta(checkpoint))
            self.series["mismatch_rate"].append(
                self.shared.mirror.mismatch_rate if self.shared.mirror.compared else None
            )
            self.series["repair_backlog"].append(self.store.repair_backlog())
            self.series["batch_size"].append(self.throttle.batch_size)

    def _backfill_eta(self, checkpoint: Checkpoint) -> float | None:
        """The backfill's ETA now: 0 once it is done, None while no backfill runs (before
        BACKFILL, after an ABORT), else the seconds left at its recent rate, counting down
        the catalog's size at load (adds and tombstones make the copy a little longer)."""
        if self.backfill_started is None:
            return None
        if checkpoint.done:
            return 0.0
        if self.coordinator.published.phase is not Phase.BACKFILL:
            return None
        return backfill_eta_s(
            self.series["time"],
            self.series["backfill_copied"],
            self.backfill_started,
            self.scenario.catalog.products,
        )

    def _checkpoint(self) -> Checkpoint:
        """How far the backfill got: the durable checkpoint, or the naive worker's memory."""
        if self.strategy.durable_checkpoint:
            return self.store.load_checkpoint()
        return self.backfill.checkpoint

    # -- the end of the run ------------------------------------------------------------------

    def _finish(self) -> None:
        """The end of the run: the traffic's last sessions finish, the controller and the
        backfill stop, every fault heals, and the layer's own repair worker keeps draining its
        log as it would in production, until nothing is in flight. Then both sides' final
        scans, of what they hold: the harness never verifies, repairs or copies on the layer's
        behalf before the checker looks."""
        env = self.env
        deadline = int(env.now) + DRAIN_LIMIT_NS
        self._wait(lambda: self.traffic.active == 0, deadline)
        self._note_backfill_done()
        self._ending = True
        for flight in (self._controller_flight, self._backfill_flight):
            if flight is not None and not flight.finished:
                self.driver.crash(flight)
        self.nemesis.heal_all()
        for side in self.layer_config.lagged_sides:
            self.clusters[side].stop_fault("visibility-lag")
        repairing = self._repair_flight is not None and not self._repair_flight.finished
        self._wait(
            lambda: (
                self.driver.requests_in_flight() == 0
                and self.driver.active <= int(repairing)
                and not self.store.repair_backlog()
            ),
            deadline,
        )
        if self._repair_flight is not None and not self._repair_flight.finished:
            self.driver.crash(self._repair_flight)
        self._wait(lambda: self.driver.requests_in_flight() == 0, deadline)
        self.final_backlog = self.store.repair_backlog()
        for side in (Side.OLD, Side.NEW):
            cluster = self.clusters[side]
            cluster.refresh()
            if isinstance(cluster, ScaledCluster) and self.scenario.clusters.judge == "sample":
                final = cluster.sampled_live_versions()
            else:
                final = live_versions(cluster)
            self.recorder.ok(CHECKER, "final", {"side": side.value, "records": final}, int(env.now))

    def _wait(self, done: Callable[[], bool], deadline: int) -> None:
        while not done() and self.env.now < deadline:
            self.env.run(until=int(self.env.now) + 10 * MS)

    # -- the result ----------------------------------------------------------------------------

    def _result(self, verdict: Verdict) -> RunResult:
        faults = [
            {
                "family": f.spec.family,
                **f.detail,
                "start": f.started,
                "stop": f.stopped,
            }
            for f in self.nemesis.log
        ]
        checkpoint = self._checkpoint()
        backfill = {
            "started": self.backfill_started,
            "finished": self.backfill_finished,
            "duration_s": None
            if self.backfill_started is None or self.backfill_finished is None
            else (self.backfill_finished - self.backfill_started) / SECOND,
            "copied": checkpoint.copied,
            "done": checkpoint.done,
        }
        notes = []
        if self.final_backlog:
            notes.append(
                f"the repair log still held {self.final_backlog} entries at the final scans"
            )
        if self.traffic.dropped:
            notes.append(f"{self.traffic.dropped} session(s) found no live app instance")
        return RunResult(
            scenario=self.scenario,
            strategy=self.strategy.name,
            seed=self.seed,
            swarm=self.swarm,
            buggify=self.buggify,
            events=list(self.recorder.events),
            verdict=verdict,
            schedule=self.schedule,
            faults=faults,
            phases=self.phases,
            controller=self._controller_report(),
            completed=self.driver.completed,
            backfill=backfill,
            series=self.series,
            end_phase=self.coordinator.published.phase.value,
            sim_end_ns=int(self.env.now),
            bugs=list(self.driver.bugs),
            notes=notes,
            fidelity=self._fidelity(),
        )

    def _fidelity(self) -> dict[str, Any]:
        if not isinstance(self.catalog, ScaledCatalog):
            return {"mode": "exact"}
        return fidelity_report(
            self.catalog,
            {side.value: p for side, p in self.profiles.items()},
            {side.value: m for side, m in self.service.items()},
            every_id=self.scenario.clusters.judge == "all",
        )
