"""The chaos controller of a load test: it loads the catalog, walks the migration through its
phases over the admin API (retrying while a gate holds), injects faults into the sides and
the layer -- including a SIGKILL of the migration service mid-backfill and a restart that must
resume from SQLite -- and at the end heals everything, lets the repair log drain, and records
the final state of both sides.

The schedules are data (`default_schedule` for fake cluster servers, `real_engine_schedule`
for real engines), apart from the code that applies them (`Chaos`). Every fault is a history
`fault` event and every phase a `phase` event, recorded here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from vecmig.harness.catalog import Catalog
from vecmig.harness.clusters.base import ClusterPort
from vecmig.harness.clusters.registry import open_cluster
from vecmig.harness.history.checker import PHASES
from vecmig.harness.history.ops import CONTROLLER, LOADER, NEMESIS, Recorder, load_value

from .history import now
from .sides import POSTGRES_NODE, PostgresNemesis, is_cluster_server, is_in_process

# ---------------------------------------------------------------------------------------------
# The run plan: everything the Locust processes and the chaos controller share.


@dataclass
class RunPlan:
    service: str
    admin_token: str
    old: str
    new: str
    dim: int = 32
    categories: int = 8
    seed: int = 0
    catalog: int = 3000
    history_dir: str = "history"
    out_dir: str = "."
    duration_s: float = 60.0
    chaos: bool = True
    restart_argv: list[str] = field(default_factory=list)
    """How to start the service again after killing it; empty: no kill."""
    service_pid_file: str = ""
    service_log: str = ""
    lagged: list[str] = field(default_factory=list)
    """Sides whose searches the service corrects for visibility lag: only those get that fault."""
    servers: dict[str, str] = field(default_factory=dict)
    """Sides whose PostgreSQL this run started (side -> its directory): crashed and restarted."""
    catalog_loaded: bool = False
    """The catalog is in old already (`vecmig loadtest` loads it before the service starts)."""

    @classmethod
    def load(cls, path: str | Path) -> RunPlan:
        """The plan in file `path` ("-": standard input)."""
        text = sys.stdin.read() if str(path) == "-" else Path(path).read_text()
        data = json.loads(text)
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown run plan key(s) {unknown}; known: {sorted(known)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    def catalog_records(self) -> Catalog:
        return Catalog.generate(self.catalog, self.dim, self.categories, self.seed)


# ---------------------------------------------------------------------------------------------
# The schedule: a list of steps, run in order. Waits are in seconds; `advance` retries while
# the gate holds; `backfill` waits until that share of the catalog is copied.

Step = tuple[Any, ...]


def default_schedule(
    duration_s: float, lagged: Sequence[str] = (), can_restart: bool = True
) -> list[Step]:
    """Faults chosen so that the safe strategy must absorb each one and the naive plan cannot:
    secondary writes fail during dual-write, backfill and shadow (naive forgets them), the
    service dies mid-backfill (naive copies again from the start, unfenced), and the cutover
    stops writing old in the naive plan (divergence)."""
    d = duration_s
    steps: list[Step] = [
        ("wait", 0.05 * d),
        ("advance", "DUAL_WRITE"),
        ("start", "new", "error-rate", {"rate": 0.3}),
        ("start", "layer", "partition", {"side": "new"}),
        ("wait", 0.03 * d),
        ("stop", "layer", "partition", {"side": "new"}),
    ]
    if "old" in lagged:
        steps += [
            ("start", "old", "visibility-lag", {}),
            ("wait", 0.03 * d),
            ("stop", "old", "visibility-lag", {}),
        ]
    else:
        steps += [("wait", 0.03 * d)]
    steps += [
        ("stop", "new", "error-rate", {}),
        ("advance", "BACKFILL"),
        ("start", "old", "node-crash", {"node": "s1r1", "lose_data": True}),
        ("backfill", 0.3),
        ("start", "new", "error-rate", {"rate": 0.15}),
    ]
    if can_restart:
        steps += [("kill-service",), ("wait", 1.0), ("restart-service",)]
    steps += [
        ("stop", "old", "node-crash", {"node": "s1r1"}),
        ("start", "layer", "latency", {"side": "old", "ms": 20}),
        ("wait", 0.05 * d),
        ("stop", "layer", "latency", {"side": "old"}),
        ("stop", "new", "error-rate", {}),
        ("advance", "SHADOW"),
        ("start", "new", "error-rate", {"rate": 0.3}),
        ("wait", 0.06 * d),
        ("stop", "new", "error-rate", {}),
        ("advance", "CUTOVER"),
        ("start", "new", "node-pause", {"node": "s0r1"}),
        ("wait", 0.03 * d),
        ("stop", "new", "node-pause", {"node": "s0r1"}),
        ("start", "layer", "partition", {"side": "old"}),
        ("wait", 0.03 * d),
        ("stop", "layer", "partition", {"side": "old"}),
        ("drained",),
        ("start", "new", "error-rate", {"rate": 0.2}),
        ("wait", 0.03 * d),
        ("stop", "new", "error-rate", {}),
    ]
    return steps


def real_engine_schedule(
    duration_s: float, can_restart: bool = True, restartable: Sequence[str] = ()
) -> list[Step]:
    """The default schedule's shape for real engines, which have no fault endpoints. Where the
    fake cluster fails or stalls calls (error rate, a paused replica), the layer is partitioned
    from the side or slowed down at its client instead. A PostgreSQL this run started
    (`restartable`) is crashed and restarted while it is the secondary side -- new before
    CUTOVER, old in CUTOVER -- which the safe strategy must absorb (while it serves reads no
    strategy could). The service's SIGKILL mid-backfill is also how an in-process engine (Qdrant
    local mode, Milvus Lite) is crashed."""
    d = duration_s

    def crash(side: str) -> list[Step]:
        node = {"node": POSTGRES_NODE}
        return [
            ("start", side, "node-crash", node),
            ("wait", 0.04 * d),
            ("stop", side, "node-crash", node),
        ]

    def layer(family: str, side: str, share: float, **params: Any) -> list[Step]:
        return [
            ("start", "layer", family, {"side": side, **params}),
            ("wait", share * d),
            ("stop", "layer", family, {"side": side}),
        ]

    steps: list[Step] = [("wait", 0.05 * d), ("advance", "DUAL_WRITE")]
    steps += layer("partition", "new", 0.04) + layer("latency", "new", 0.03, ms=20)
    if "new" in restartable:
        steps += crash("new")
    steps += [("advance", "BACKFILL"), ("backfill", 0.3)]
    steps += layer("partition", "new", 0.03)
    if can_restart:
        steps += [("kill-service",), ("wait", 1.0), ("restart-service",)]
    steps += layer("latency", "old", 0.05, ms=20)
    steps += [("advance", "SHADOW")] + layer("partition", "new", 0.04)
    steps += [("advance", "CUTOVER")]
    if "old" in restartable:  # first: the gates leave CUTOVER the least time of the run
        steps += crash("old")
    steps += layer("latency", "new", 0.03, ms=20) + layer("partition", "old", 0.03)
    steps += [("drained",)]
    return steps


def schedule_for(plan: RunPlan, duration_s: float) -> list[Step]:
    """The fake-cluster schedule when both sides are fake cluster servers, else the real one."""
    can_restart = bool(plan.restart_argv)
    if is_cluster_server(plan.old) and is_cluster_server(plan.new):
        return default_schedule(duration_s, plan.lagged, can_restart)
    return real_engine_schedule(duration_s, can_restart, sorted(plan.servers))


def load_catalog(old: ClusterPort, plan: RunPlan, recorder: Recorder) -> int:
    """Load the generated catalog into `old` (unfenced, as an initial import) and record it."""
    records = plan.catalog_records().records()
    for start in range(0, len(records), 500):
        old.upsert(records[start : start + 500], fenced=False)
    recorder.ok(LOADER, "load", load_value(records), now())
    return len(records)


class Chaos:
    """Runs a schedule against one service and its two sides, recording what it does."""

    def __init__(
        self, plan: RunPlan, recorder: Recorder, say: Callable[[str], None] = print
    ) -> None:
        self.plan = plan
        self.recorder = recorder
        self.say = say
        self.admin = httpx.Client(
            base_url=plan.service.rstrip("/"),
            headers={"Authorization": f"Bearer {plan.admin_token}"},
            timeout=httpx.Timeout(30.0, connect=2.0),
        )
        self._sides: dict[str, ClusterPort] = {}
        self._nemeses: dict[str, Any] = {}
        self.started = time.monotonic()
        self.completed_steps = 0
        self.active: dict[tuple[str, str, str], dict[str, Any]] = {}
        """Faults started and not stopped yet: (target, family, node) -> the start's params."""

    # -- the sides ---------------------------------------------------------------------------

    def url(self, name: str) -> str:
        return self.plan.old if name == "old" else self.plan.new

    def side(self, name: str) -> ClusterPort:
        """The side itself. An in-process engine can be opened only once the service let go."""
        if name not in self._sides:
            self._sides[name] = open_cluster(self.url(name), self.plan.dim)
        return self._sides[name]

    def nemesis(self, name: str) -> Any:
        """What injects faults into side `name` (`start_fault`, `stop_fault`, `heal_all`): a fake
        cluster server itself, a `PostgresNemesis` for a PostgreSQL this run started; else None.
        Never opens a real engine: an in-process one is held by the service."""
        if name not in self._nemeses:
            if is_cluster_server(self.url(name)):
                self._nemeses[name] = self.side(name)
            elif name in self.plan.servers:
                self._nemeses[name] = PostgresNemesis(self.plan.servers[name])
            else:
                self._nemeses[name] = None
        return self._nemeses[name]

    def load(self) -> None:
        """Load the generated catalog into old (unfenced, as an initial import) and record it."""
        count = load_catalog(self.side("old"), self.plan, self.recorder)
        self.say(f"loaded {count} products into old")

    # -- the schedule --------------------------------------------------------------------------

    def run(self, schedule: Sequence[Step], deadline: float) -> None:
        """Carry out `schedule` until it ends or the monotonic `deadline` passes."""
        for step in schedule:
            if time.monotonic() >= deadline:
                self.say(f"chaos: out of time before {step!r}; the rest of the schedule is skipped")
                return
            try:
                self._step(step, deadline)
            except Exception as exc:  # noqa: BLE001 - chaos goes on; the failure is reported
                self.say(f"chaos: step {step!r} failed: {type(exc).__name__}: {exc}")
            self.completed_steps += 1

    def _step(self, step: Step, deadline: float) -> None:
        kind = step[0]
        if kind == "wait":
            _sleep_until(min(deadline, time.monotonic() + step[1]))
        elif kind == "advance":
            self.advance(step[1], deadline)
        elif kind in ("start", "stop"):
            self.fault(kind, step[1], step[2], step[3])
        elif kind == "backfill":
            self.wait_backfill(step[1], deadline)
        elif kind == "drained":
            self.wait_drained(deadline)
        elif kind == "kill-service":
            self.kill_service()
        elif kind == "restart-service":
            self.restart_service(deadline + 30)
        else:
            raise ValueError(f"unknown chaos step {kind!r}")

    def status(self) -> dict[str, Any]:
        response = self.admin.get("/admin/status")
        response.raise_for_status()
        return dict(response.json())

    def advance(self, target: str, deadline: float, retry_s: float = 0.5) -> bool:
        """Step forward until the phase is `target`, retrying while the gate holds."""
        reasons: list[str] = []
        quiet_until = 0.0
        while time.monotonic() < deadline:
            try:
                phase = str(self.status()["phase"])
                if PHASES.index(phase) >= PHASES.index(target):
                    return phase == target
                response = self.admin.post("/admin/advance")
                body = response.json()
            except (httpx.HTTPError, ValueError) as exc:
                reasons = [f"service unreachable: {exc}"]
                _sleep_until(min(deadline, time.monotonic() + retry_s))
                continue
            if body.get("ok"):
                self.recorder.info(
                    CONTROLLER,
                    "phase",
                    {"phase": body["phase"], "epoch": body["epoch"], "step": "advance"},
                    now(),
                )
                self.say(f"phase {body['phase']} (epoch {body['epoch']}) at {self.elapsed():.1f}s")
                if body["phase"] == target:
                    return True
                continue
            reasons = body.get("reasons", [])
            if time.monotonic() >= quiet_until:
                self.say(f"gate to {target} holds: {'; '.join(reasons)}")
                quiet_until = time.monotonic() + 3.0
            _sleep_until(min(deadline, time.monotonic() + retry_s))
        self.say(f"chaos: {target} not reached in time (last reasons: {'; '.join(reasons)})")
        return False

    def fault(self, action: str, target: str, family: str, params: dict[str, Any]) -> None:
        if target == "layer":
            body = {"action": action, "family": family, **params}
            response = self.admin.post("/admin/faults", json=body)
            response.raise_for_status()
        else:
            nemesis = self.nemesis(target)
            if nemesis is None:
                self.say(
                    f"chaos: {target} ({self.url(target).partition('://')[0]}) takes no injected "
                    f"faults; skipped {family}"
                )
                return
            getattr(nemesis, f"{action}_fault")(family, **params)
        key = (target, family, str(params.get("node", params.get("side", ""))))
        if action == "start":
            self.active[key] = params
        else:
            self.active.pop(key, None)
        self.recorder.info(
            NEMESIS,
            "fault",
            {"family": family, "action": action, "target": target, **params},
            now(),
        )
        self.say(f"fault {action} {family} on {target} {params or ''} at {self.elapsed():.1f}s")

    def wait_backfill(self, share: float, deadline: float) -> None:
        wanted = int(share * self.plan.catalog)
        while time.monotonic() < deadline:
            try:
                backfill = self.status()["backfill"]
            except (httpx.HTTPError, ValueError):
                backfill = {"copied": 0, "done": False}
            if backfill["done"] or backfill["copied"] >= wanted:
                self.say(f"backfill at {backfill['copied']} copied ({self.elapsed():.1f}s)")
                return
            _sleep_until(min(deadline, time.monotonic() + 0.2))

    def wait_drained(self, deadline: float) -> bool:
        while time.monotonic() < deadline:
            try:
                if self.status()["repair_backlog"] == 0:
                    return True
            except (httpx.HTTPError, ValueError):
                pass
            _sleep_until(min(deadline, time.monotonic() + 0.2))
        return False

    # -- killing and restarting the service ------------------------------------------------------

    def kill_service(self) -> None:
        pid = int(Path(self.plan.service_pid_file).read_text().strip())
        status = self.status()
        os.kill(pid, signal.SIGKILL)
        self.recorder.info(
            NEMESIS,
            "fault",
            {"family": "service-crash", "action": "start", "target": "layer", "pid": pid},
            now(),
        )
        self.say(
            f"SIGKILL service pid {pid} in {status['phase']} with the backfill at "
            f"{status['backfill']['copied']} copied ({self.elapsed():.1f}s)"
        )

    def restart_service(self, deadline: float) -> None:
        with open(self.plan.service_log or os.devnull, "ab") as log:  # the child keeps it
            subprocess.Popen(
                self.plan.restart_argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        while time.monotonic() < deadline:
            try:
                status = self.status()
            except (httpx.HTTPError, ValueError):
                _sleep_until(time.monotonic() + 0.1)
                continue
            self.recorder.info(
                NEMESIS,
                "fault",
                {"family": "service-crash", "action": "stop", "target": "layer"},
                now(),
            )
            self.say(
                f"service restarted: resumed at {status['resumed_from']['phase']} (epoch "
                f"{status['resumed_from']['epoch']}), backfill checkpoint "
                f"{status['resumed_from']['checkpoint']['copied']} copied, repair log "
                f"{status['resumed_from']['repair_backlog']} ({self.elapsed():.1f}s)"
            )
            return
        raise RuntimeError("the restarted service did not come up in time")

    # -- the end ---------------------------------------------------------------------------------

    def finish(self, drain_s: float = 30.0) -> dict[str, Any]:
        """Heal every fault, let the layer's own repair worker drain its log (as it would in
        production, for at most `drain_s`), and record the final state of both sides. The
        harness never verifies, repairs or copies on the layer's behalf before the checker
        looks. Returns the service's last status."""
        for target in ("old", "new"):
            heal = getattr(self.nemesis(target), "heal_all", None)
            if heal is not None:
                heal()
        self.admin.post("/admin/faults/heal").raise_for_status()
        for (target, family, _), params in sorted(self.active.items()):
            value = {"family": family, "action": "stop", "target": target, **params}
            self.recorder.info(NEMESIS, "fault", value, now())
        self.active.clear()
        if not self.wait_drained(time.monotonic() + drain_s):
            self.say(
                f"the repair log did not drain in {drain_s:.0f}s; scanning the sides as they are"
            )
        status = self.status()
        in_process = [n for n in ("old", "new") if is_in_process(self.url(n))]
        if in_process:
            started = time.monotonic()
            how = self.stop_service()
            self.say(
                f"service stopped ({how} in {time.monotonic() - started:.1f}s), so that "
                f"{' and '.join(in_process)} can be scanned"
            )
        self.scan_sides()
        self.say(
            f"final: phase {status['phase']}, repair log {status['repair_backlog']}, "
            f"fallbacks {status['fallbacks']}, mirrored reads {status['mirror']['compared']}"
        )
        return status

    def stop_service(self, grace_s: float = 10.0) -> str:
        """Stop the service for good (SIGTERM, SIGKILL after `grace_s`), so that an in-process
        engine it holds can be opened by another process. Not a fault: the run is over. Says
        how it stopped."""
        if not self.plan.service_pid_file:
            raise RuntimeError(
                "an in-process side (qdrant+local, milvus+lite) can be scanned only after the "
                "service stops, and the run plan names no service_pid_file to stop it by"
            )
        pid = int(Path(self.plan.service_pid_file).read_text().strip())
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return "it had already exited"
        deadline = time.monotonic() + grace_s
        while _alive(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                return f"SIGKILL after SIGTERM went unanswered for {grace_s:.0f}s"
            time.sleep(0.1)
        return "SIGTERM"

    def scan_sides(self, timeout_s: float = 180.0) -> None:
        """Scan both sides for the history's `final` events, from a process of its own, as the
        loader: an engine's client may not run under Locust's gevent (Milvus Lite's gRPC
        server hangs there), and a new process opens an in-process engine cleanly."""
        done = subprocess.run(
            [sys.executable, "-m", "vecmig.loadtests.sides", "final", "-"],
            input=self.plan.to_json(),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"the final scan failed:\n{(done.stdout + done.stderr)[-2000:]}")
        for line in done.stdout.splitlines():
            self.say(line)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def close(self) -> None:
        self.admin.close()


def _alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie does not: it has let go of its files and locks)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def _sleep_until(deadline: float) -> None:
    # Under Locust, time.sleep is gevent's (monkey-patched): other greenlets keep running.
    remaining = deadline - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)
