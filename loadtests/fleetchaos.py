"""Chaos aimed at a fleet: what the standalone schedule does to the sides, plus what a fleet
suffers -- one instance hearing its config late, one cut off from the config store, one
whose clock runs ahead and then behind (within the skew bound the leases allow), one SIGSTOPped
past its lease, one SIGKILLed and started again, the controller SIGKILLed mid-backfill, the
config store restarted, and every instance restarted one by one as a deploy does.

The controller (`vecmig control`) walks the plan to CUTOVER by itself; the schedule waits
for each phase (`("phase", NAME)`) and injects faults there. Layer faults go to one instance
by name, or to every instance (`"layer"`). Every fault is a history `fault` event.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from vecmig.harness.history.checker import PHASES
from vecmig.harness.history.ops import NEMESIS

from .chaos import Chaos, RunPlan, Step, _alive, _sleep_until
from .fleetrun import SPAWNED
from .history import now
from .sides import POSTGRES_NODE, is_cluster_server


def fleet_schedule(
    duration_s: float,
    instances: Sequence[str],
    *,
    lease_s: float,
    max_skew_ms: float = 200.0,
    lagged: Sequence[str] = (),
    fake_sides: bool = True,
    restartable: Sequence[str] = (),
) -> list[Step]:
    """The fleet's schedule for a run of `duration_s`. With fake cluster sides the sides take
    the standalone schedule's error rates, lost replicas and pauses; with real engines the
    layer is partitioned from them instead, and a PostgreSQL this run started crashes while
    it is the secondary side."""
    a, b, c = (instances[n % len(instances)] for n in range(3))
    run = _FleetRun(duration_s, a, b, c, lease_s, 0.9 * max_skew_ms, fake_sides, restartable)
    return [
        ("walk",),  # the controller begins its plan now that the load runs
        *run.into_dual_write(lagged),
        *run.through_backfill(),
        *run.into_shadow(),
        *run.through_cutover(),
    ]


@dataclass(frozen=True, slots=True)
class _FleetRun:
    """What `fleet_schedule` does in each phase, to instances a, b and c of a run of `d`
    seconds (clock skews of `skew` ms)."""

    d: float
    a: str
    b: str
    c: str
    lease_s: float
    skew: float
    fake_sides: bool
    restartable: Sequence[str]

    def side_fault(self, side: str, family: str, share: float, **params: Any) -> list[Step]:
        """A fault of the fake sides for `share` of the run; against real engines, the layer
        partitioned from the side as long."""
        if self.fake_sides:
            node = {k: v for k, v in params.items() if k == "node"}
            return [
                ("start", side, family, params),
                ("wait", share * self.d),
                ("stop", side, family, node),
            ]
        return [
            ("start", "layer", "partition", {"side": side}),
            ("wait", share * self.d),
            ("stop", "layer", "partition", {"side": side}),
        ]

    def pg_crash(self, side: str) -> list[Step]:
        """The PostgreSQL this run started on `side` crashed and restarted (nothing otherwise)."""
        if side not in self.restartable:
            return []
        node = {"node": POSTGRES_NODE}
        return [
            ("start", side, "node-crash", node),
            ("wait", 0.04 * self.d),
            ("stop", side, "node-crash", node),
        ]

    def into_dual_write(self, lagged: Sequence[str]) -> list[Step]:
        """Up to DUAL_WRITE and in it: c's config late, a partitioned from new, b's clock ahead,
        new failing (and old's visibility lag, new's PostgreSQL crashed)."""
        d, a, b, c = self.d, self.a, self.b, self.c
        steps: list[Step] = [
            # The late config: c hears nothing from before DUAL_WRITE until BACKFILL is out.
            # Safe: its lease lapses, it refuses work, and the controller counts it out. Naive:
            # it goes on writing old only while the backfill copies.
            ("wait", 0.03 * d),
            ("start", c, "config-lag", {"seconds": 0.6 * d}),
            ("phase", "DUAL_WRITE"),
            ("start", a, "partition", {"side": "new"}),
            ("wait", 0.03 * d),
            ("stop", a, "partition", {"side": "new"}),
            ("start", b, "clock-skew", {"ms": self.skew}),
        ]
        steps += self.side_fault("new", "error-rate", 0.04, rate=0.3)
        if self.fake_sides and "old" in lagged:
            steps += [
                ("start", "old", "visibility-lag", {}),
                ("wait", 0.02 * d),
                ("stop", "old", "visibility-lag", {}),
            ]
        return steps + self.pg_crash("new")

    def through_backfill(self) -> list[Step]:
        """BACKFILL: the controller and instance a SIGKILLed mid-copy, b SIGSTOPped past its
        lease, c's reads of old slowed."""
        a, b, c = self.a, self.b, self.c
        steps: list[Step] = [("phase", "BACKFILL"), ("wait", 1.0), ("stop", c, "config-lag", {})]
        if self.fake_sides:
            steps += [("start", "old", "node-crash", {"node": "s1r1", "lose_data": True})]
        steps += [
            ("backfill", 0.3),
            ("kill-control",),
            ("kill-instance", a),
            ("wait", 1.0),
            ("restart-control",),
            ("restart-instance", a),
        ]
        if self.fake_sides:
            steps += [("stop", "old", "node-crash", {"node": "s1r1"})]
        return steps + [
            ("pause-instance", b, self.lease_s + 2.0),
            ("start", c, "latency", {"side": "old", "ms": 20}),
            ("wait", 0.03 * self.d),
            ("stop", c, "latency", {"side": "old"}),
        ]

    def into_shadow(self) -> list[Step]:
        """SHADOW: the config store restarted, instance a cut off from it past its lease."""
        steps: list[Step] = [
            ("phase", "SHADOW"),
            ("config-store-restart", min(0.5 * self.lease_s, 3.0)),
            ("start", self.a, "config-cut", {"seconds": self.lease_s + 1.5}),
        ]
        steps += self.side_fault("new", "error-rate", 0.04, rate=0.3)
        return steps + [("wait", self.lease_s + 2.0)]

    def through_cutover(self) -> list[Step]:
        """CUTOVER: b's clock jumps back, old partitioned from a, a rolling restart."""
        a = self.a
        steps: list[Step] = [
            ("phase", "CUTOVER"),
            # from +0.9 to -0.9 of the bound: a jump back
            ("start", self.b, "clock-skew", {"ms": -self.skew}),
        ]
        steps += self.pg_crash("old")
        steps += self.side_fault("new", "node-pause", 0.03, node="s0r1")
        steps += [
            ("start", a, "partition", {"side": "old"}),
            ("wait", 0.03 * self.d),
            ("stop", a, "partition", {"side": "old"}),
            ("roll",),
            ("drained",),
        ]
        return steps + self.side_fault("new", "error-rate", 0.03, rate=0.2)


def schedule_for_fleet(plan: RunPlan, duration_s: float) -> list[Step]:
    names = [i["name"] for i in plan.instances]
    fake = is_cluster_server(plan.old) and is_cluster_server(plan.new)
    return fleet_schedule(
        duration_s,
        names,
        lease_s=plan.lease_s,
        lagged=plan.lagged,
        fake_sides=fake,
        restartable=sorted(plan.servers),
    )


class FleetChaos(Chaos):
    """The chaos controller of a fleet: `Chaos` for the sides and the controller's status,
    and the fleet's own faults."""

    def __init__(self, plan: RunPlan, recorder: Any, say: Any = print) -> None:
        super().__init__(plan, recorder, say)
        self.members = {i["name"]: i for i in plan.instances}
        self.paused: set[int] = set()
        self.spawned: dict[str, int] = {}  # the pid of each member started again, by name

    def _step(self, step: Step, deadline: float) -> None:
        kind = step[0]
        if kind == "walk":
            self.admin.post("/admin/walk").raise_for_status()
            self.say(f"the controller walks its plan from {self.elapsed():.1f}s")
        elif kind == "phase":
            self.wait_phase(step[1], deadline)
        elif kind == "kill-instance":
            self.kill(self.members[step[1]], "instance-crash", step[1])
        elif kind == "restart-instance":
            self.restart(self.members[step[1]], "instance-crash", step[1], deadline + 30)
        elif kind == "kill-control":
            self.kill(self.plan.control, "controller-crash", "controller")
        elif kind == "restart-control":
            self.restart(self.plan.control, "controller-crash", "controller", deadline + 30)
        elif kind == "pause-instance":
            self.pause(self.members[step[1]], step[2], deadline)
        elif kind == "config-store-restart":
            self.restart_config_store(step[1])
        elif kind == "roll":
            self.roll(deadline + 60)
        else:
            super()._step(step, deadline)

    # -- phases ----------------------------------------------------------------------------------

    def wait_phase(self, target: str, deadline: float) -> bool:
        """Wait until the controller's plan has published `target` (or a later phase)."""
        reasons: list[str] = []
        while time.monotonic() < deadline:
            try:
                status = self.status()
            except (httpx.HTTPError, ValueError):
                _sleep_until(min(deadline, time.monotonic() + 0.2))
                continue
            if PHASES.index(str(status["phase"])) >= PHASES.index(target):
                self.say(
                    f"phase {status['phase']} (epoch {status['epoch']}) at {self.elapsed():.1f}s"
                )
                return True
            reasons = list((status.get("last_gate") or {}).get("reasons") or [])
            _sleep_until(min(deadline, time.monotonic() + 0.2))
        self.say(f"chaos: {target} not reached in time (last reasons: {'; '.join(reasons)})")
        return False

    # -- faults ----------------------------------------------------------------------------------

    def fault(self, action: str, target: str, family: str, params: dict[str, Any]) -> None:
        if target not in self.members and target != "layer":
            super().fault(action, target, family, params)
            return
        names = list(self.members) if target == "layer" else [target]
        body = {"action": action, "family": family, **params}
        for name in names:
            response = self.admin.post(self.members[name]["url"] + "/admin/faults", json=body)
            response.raise_for_status()
        key = (target, family, str(params.get("side", "")))
        if action == "start":
            self.active[key] = params
        else:
            self.active.pop(key, None)
        self.note(family, action, target, **params)

    def note(self, family: str, action: str, target: str, **params: Any) -> None:
        value = {"family": family, "action": action, "target": target, **params}
        self.recorder.info(NEMESIS, "fault", value, now())
        self.say(f"fault {action} {family} on {target} {params or ''} at {self.elapsed():.1f}s")

    def kill(self, member: dict[str, Any], family: str, name: str) -> None:
        pid = int(Path(member["pid_file"]).read_text().strip())
        os.kill(pid, signal.SIGKILL)
        self.note(family, "start", name, pid=pid)

    def restart(self, member: dict[str, Any], family: str, name: str, deadline: float) -> None:
        self._spawn(member)
        self._wait_up(member, deadline)
        self.note(family, "stop", name)

    def pause(self, member: dict[str, Any], seconds: float, deadline: float) -> None:
        """SIGSTOP past the lease, then SIGCONT: the fleet counts it out meanwhile; on resume
        it must notice its lease lapsed, send nothing routed by the phase it knew, catch up."""
        pid = int(Path(member["pid_file"]).read_text().strip())
        os.kill(pid, signal.SIGSTOP)
        self.paused.add(pid)
        self.note("instance-pause", "start", member["name"], pid=pid, seconds=seconds)
        _sleep_until(min(deadline, time.monotonic() + seconds))
        os.kill(pid, signal.SIGCONT)
        self.paused.discard(pid)
        self.note("instance-pause", "stop", member["name"], pid=pid)

    def restart_config_store(self, seconds: float) -> None:
        """The config store goes away for `seconds` and comes back: a PostgreSQL this run
        started is crashed and restarted; a SQLite store is locked (no process can write:
        no lease is renewed meanwhile)."""
        store = self.plan.config_store
        self.note("config-store-restart", "start", "config-store", kind=store.get("kind"))
        if store.get("kind") == "postgres":
            from vecmig.harness.clusters.pgserver import PostgresServer

            server = PostgresServer.attach(store["server"])
            server.crash()
            _sleep_until(time.monotonic() + seconds)
            server.start()
        else:
            path = store["url"].partition("://")[2]
            db = sqlite3.connect(path, timeout=5.0, isolation_level=None)
            try:
                db.execute("BEGIN EXCLUSIVE")
                _sleep_until(time.monotonic() + seconds)
                db.execute("ROLLBACK")
            finally:
                db.close()
        self.note("config-store-restart", "stop", "config-store", kind=store.get("kind"))

    def roll(self, deadline: float) -> None:
        """Restart every instance, one after the other, as a deploy does: SIGTERM (it drains
        its requests), start it again, wait until it serves, then the next."""
        for name, member in self.members.items():
            pid = int(Path(member["pid_file"]).read_text().strip())
            self.note("rolling-restart", "start", name, pid=pid)
            os.kill(pid, signal.SIGTERM)
            stop_by = time.monotonic() + 10.0
            while _alive(pid) and time.monotonic() < stop_by:
                _sleep_until(time.monotonic() + 0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
            self._spawn(member)
            self._wait_up(member, deadline, ready=True)
            self.note("rolling-restart", "stop", name)

    def _spawn(self, member: dict[str, Any]) -> None:
        """Start a member again, in a session of its own; its pid goes to SPAWNED in the run's
        directory, so that `vecmig loadtest` stops it at the end whatever became of it."""
        with open(member.get("log") or os.devnull, "ab") as log:
            process = subprocess.Popen(
                member["argv"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.spawned[str(member.get("name") or "controller")] = process.pid
        with open(Path(self.plan.out_dir) / SPAWNED, "a", encoding="utf-8") as pids:
            pids.write(f"{process.pid}\n")

    def _wait_up(self, member: dict[str, Any], deadline: float, ready: bool = False) -> None:
        url = member.get("url") or self.plan.service
        path = "/ready" if ready else "/health"
        while time.monotonic() < deadline:
            try:
                if self.admin.get(url + path).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            _sleep_until(time.monotonic() + 0.1)
        raise RuntimeError(f"{url} did not come up in time")

    def _member_alive(self, name: str, member: dict[str, Any]) -> bool:
        pids = [self.spawned[name]] if name in self.spawned else []
        with contextlib.suppress(OSError, ValueError):
            pids.append(int(Path(member["pid_file"]).read_text().strip()))
        return any(_alive(pid) for pid in pids)

    # -- the end ---------------------------------------------------------------------------------

    def finish(self, drain_s: float = 30.0) -> dict[str, Any]:
        for pid in list(self.paused):
            os.kill(pid, signal.SIGCONT)
        # A member the schedule was cut off from starting again (the run ended mid-step) is
        # started again; one whose process lives (the pid it wrote, or the pid it was started
        # again with, if it has not written its own yet) is waited for, never doubled.
        for name, member in [*self.members.items(), ("controller", self.plan.control)]:
            if not self._member_alive(name, member):
                self.say(f"{name} is down at the end of the run: starting it again")
                self._spawn(member)
            self._wait_up(member, time.monotonic() + 60)
        for member in self.members.values():
            try:
                self.admin.post(member["url"] + "/admin/faults/heal").raise_for_status()
            except httpx.HTTPError as exc:
                self.say(f"could not heal {member['name']}'s layer faults: {exc}")
        return super().finish(drain_s)
