"""Locust users for the live migration service: shoppers who view products and ask for similar
ones, merchants who change prices and stock, re-embed, add, delist and list again products
(a delete, then a re-insert of the same id). Every request
is recorded in the shared history format; a chaos controller walks the phases and injects
faults from the master (or the only) Locust process, and the same checker judges the run.

    locust -f loadtests/locustfile.py --headless -u 12 -r 12 -t 60s --vecmig-run run.json

The run plan (`vecmig.loadtests.chaos.RunPlan`, JSON) names the service, its admin token, the two
sides, the catalog and where histories and the verdict go; `vecmig loadtest` writes one and
starts everything. The process exits 1 when the checker finds any anomaly (or cannot judge).

Client behaviour, as a real app's: a request the service never received (connection refused,
as while it restarts) is sent again until `RETRY_WINDOW_S` passes; a read is also retried
when the connection breaks, since reading twice has no effect. A write whose connection
breaks, or that times out, is `info` (indeterminate), and that user continues as a new
history process.

With a fleet (the run plan's `instances`), each user sticks to one instance, as an app session
does, and a request that instance never took -- refused before it was sent (`not_ready`: its
lease lapsed), or a connection refused (it is down) -- goes to the next instance, as a load
balancer's health check would send it; so does a read whose connection broke or whose answer
was cut short (the instance died mid-answer), or that certainly failed (503: a side's bulkhead
of that instance was full, say), since reading again has no effect.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar

import gevent
import gevent.event
import httpx
import numpy as np
from locust import FastHttpUser, between, constant_throughput, events, task
from locust.env import Environment
from locust.runners import WorkerRunner

from vecmig.harness.catalog import product_id
from vecmig.harness.history.ops import EventType
from vecmig.loadtests.chaos import Chaos, RunPlan, schedule_for
from vecmig.loadtests.fleetchaos import FleetChaos, schedule_for_fleet
from vecmig.loadtests.history import (
    ProcessHistory,
    VersionClock,
    clock_value,
    judge,
    now,
    set_clock,
)

# httpcore (under httpx, which the chaos controller uses) probes for trio when it is first used;
# once gevent has patched `select` (Locust does so on import) trio fails with AttributeError rather
# than ImportError. Nothing here runs trio: make the probe fail the way httpcore expects.
sys.modules.setdefault("trio", None)  # type: ignore[arg-type]

RETRY_WINDOW_S = 30.0
HOT_IDS = 50
READS = ("get", "search")
"""Merchants write the first HOT_IDS products often, so that writes to one id race."""


class _Process:
    """What this Locust process shares between its users."""

    ready = gevent.event.Event()
    """Set once `_init` is done: with a wall clock, measuring it yields to other greenlets,
    and a user may be spawned meanwhile; it waits for the clock before recording anything."""
    plan: RunPlan
    history: ProcessHistory
    versions: VersionClock
    catalog: Any
    vectors: dict[str, Any]
    new_ids: ClassVar[deque[str]] = deque(maxlen=500)
    delisted: ClassVar[deque[str]] = deque(maxlen=500)
    """Products a merchant of this process delisted, for `relist`."""
    chaos: Chaos | None = None
    chaos_history: ProcessHistory | None = None
    chaos_greenlet: Any = None
    targets: ClassVar[list[str]] = []
    """The instances users stick to (a fleet), or the one service."""
    pace: Any = None
    """`constant_throughput` at the plan's user rate, or None (think times)."""


P = _Process()


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument(
        "--vecmig-run",
        env_var="VECMIG_RUN",
        default="",
        help="the run plan (JSON) that vecmig loadtest writes: service, token, sides, catalog",
    )
    parser.add_argument(
        "--vecmig-no-chaos",
        action="store_true",
        default=False,
        help="walk no phases, inject no faults",
    )


@events.init.add_listener
def _init(environment: Environment, **_: Any) -> None:
    path = _options_of(environment).vecmig_run
    if not path:
        sys.exit(
            "locustfile: pass --vecmig-run PLAN.json (or set VECMIG_RUN); "
            "vecmig loadtest writes one"
        )
    P.plan = RunPlan.load(path)
    role = "worker" if isinstance(environment.runner, WorkerRunner) else "main"
    name = f"{role}-{id(environment):x}-{time.time_ns()}"
    if P.plan.clock == "wall":
        with httpx.Client(timeout=10.0) as client:
            set_clock(name, lambda: _reference_clock(client), time.time_ns)
    P.history = ProcessHistory(P.plan.history_dir, name=name)
    if P.plan.clock == "wall":
        P.history.recorder.info(name, "clock", clock_value(), now())
    P.versions = VersionClock()
    P.catalog = P.plan.catalog_records()
    P.vectors = {r.id: r for r in P.catalog.records()}
    P.targets[:] = [i["url"] for i in P.plan.instances] or [environment.host or P.plan.service]
    P.pace = constant_throughput(P.plan.user_rate) if P.plan.user_rate > 0 else None
    P.ready.set()


def _reference_clock(client: httpx.Client) -> int:
    """The reference clock's reading: the controller's history clock, from its /health."""
    response = client.get(P.plan.service + "/health")
    response.raise_for_status()
    return int(response.json()["clock_ns"])


def _options_of(environment: Environment) -> argparse.Namespace:
    """The parsed command line (Locust parses it before any of these hooks runs)."""
    options: argparse.Namespace | None = environment.parsed_options
    if options is None:
        raise RuntimeError("Locust gave the vecmig hooks no parsed options")
    return options


@events.test_start.add_listener
def _test_start(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return
    P.ready.wait()
    P.chaos_history = ProcessHistory(P.plan.history_dir, name="chaos")
    fleet = bool(P.plan.instances)
    P.chaos = (FleetChaos if fleet else Chaos)(P.plan, P.chaos_history.recorder, say=_say)
    if P.plan.catalog and not P.plan.catalog_loaded:
        P.chaos.load()
    options = _options_of(environment)
    if P.plan.chaos and not options.vecmig_no_chaos:
        run_time = options.run_time or P.plan.duration_s
        deadline = time.monotonic() + max(1.0, run_time - 3.0)
        schedule = (schedule_for_fleet if fleet else schedule_for)(P.plan, run_time)
        P.chaos_greenlet = gevent.spawn(P.chaos.run, schedule, deadline)


@events.quitting.add_listener
def _quitting(environment: Environment, **_: Any) -> None:
    if P.plan.clock == "wall":
        with httpx.Client(timeout=10.0) as client:
            end = clock_value(lambda: _reference_clock(client))
        P.history.recorder.info(P.history.name, "clock", end, now())
    P.history.close()
    if isinstance(environment.runner, WorkerRunner) or P.chaos is None:
        return
    if P.chaos_greenlet is not None:
        P.chaos_greenlet.kill(block=True)
    try:
        P.chaos.finish()
    finally:
        P.chaos.close()
        if P.chaos_history is not None:
            P.chaos_history.close()
    plan = P.plan
    verdict, report = judge(
        plan.history_dir,
        plan.out_dir,
        seed=plan.seed,
        catalog=plan.catalog,
        dim=plan.dim,
        duration_s=plan.duration_s,
        chaos=plan.chaos,
    )
    counts = ", ".join(f"{k} {v}" for k, v in verdict.counts().items())
    _say(
        f"verdict: {'valid' if verdict.valid else 'ANOMALIES'} ({counts}); "
        f"{report['events']} events"
    )
    for note in verdict.notes:
        _say(f"checker note: {note}")
    environment.process_exit_code = 0 if verdict.valid else 1


def _say(message: str) -> None:
    print(f"[vecmig] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------


class MigrationUser(FastHttpUser):
    """A user is a history process; its requests record invoke and completion events."""

    abstract = True
    network_timeout = 10.0
    connection_timeout = 2.0
    think: Any = between(0.05, 0.3)

    def wait_time(self) -> float:
        """The plan's pace when it sets one (a fleet's load), else the role's think time."""
        pace = P.pace if P.pace is not None else type(self).think
        return float(pace(self))

    def on_start(self) -> None:
        P.ready.wait()
        self.process = P.history.new_process()
        seed = self.process
        self.rng = random.Random(seed)
        self.np_rng = np.random.default_rng(seed)
        self.home = seed % len(P.targets)
        """The instance this user sticks to (its index in `P.targets`)."""

    def call(
        self,
        f: str,
        invoke: dict[str, Any],
        path: str,
        body: dict[str, Any],
        result: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> None:
        recorder = P.history.recorder
        recorder.invoke(self.process, f, invoke, now())
        try:
            outcome, value = self._send(f, invoke, path, body, result)
        except gevent.GreenletExit:
            # The run ended mid-request: the op never completed, and the history says just
            # that (an open read is not a failed read; an open write may or may not land).
            raise
        except Exception as exc:
            recorder.info(
                self.process, f, {**invoke, "error": repr(exc)} if f in READS else invoke, now()
            )
            self.process = P.history.new_process()
            raise
        recorder.complete(self.process, outcome, f, value, now())
        if outcome == "info":
            self.process = P.history.new_process()

    def _send(
        self,
        f: str,
        invoke: dict[str, Any],
        path: str,
        body: dict[str, Any],
        result: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> tuple[EventType, Any]:
        read = f in READS
        give_up = time.monotonic() + RETRY_WINDOW_S
        targets, tries = P.targets, 0
        while True:
            if tries and tries % len(targets) == 0:
                gevent.sleep(0.1)  # every instance turned it down once: wait before the next round
            url = targets[(self.home + tries) % len(targets)] + path
            tries += 1
            with self.client.post(url, json=body, catch_response=True, name=f) as response:
                status = response.status_code
                if status == 200:
                    try:
                        answer = response.json()
                    except ValueError as exc:
                        # The instance died mid-answer (a body cut short): as a broken
                        # connection, a read goes to the next instance, a write is `info`.
                        response.failure(f"HTTP 200 with a body cut short: {exc!r}")
                        if read and time.monotonic() < give_up:
                            continue
                        return "info", _failed(invoke, read, f"a body cut short: {exc!r}")
                    response.success()
                    return "ok", result(answer)
                if status == 0:
                    error = response.error
                    refused = isinstance(error, ConnectionRefusedError)
                    response.failure(f"{type(error).__name__}: {error}")
                    if (refused or read) and time.monotonic() < give_up:
                        continue
                    failed: EventType = "fail" if refused else "info"
                    return failed, _failed(invoke, read, f"{type(error).__name__}: {error}")
                answer = _body_of(response)
                message = str(answer.get("error", "")) or (response.text or "")[:200]
                response.failure(f"HTTP {status}: {message}")
                if (
                    status == 503
                    and (read or answer.get("not_ready"))
                    and time.monotonic() < give_up
                ):
                    # That instance sent nothing (its lease lapsed), or the read certainly failed
                    # (a side's bulkhead was full, say): the next instance, as an app's client does.
                    continue
                outcome: EventType = "info" if status == 504 else "fail"
                return outcome, _failed(invoke, read, message)


def _failed(invoke: dict[str, Any], read: bool, message: str) -> dict[str, Any]:
    return {**invoke, "error": message} if read else invoke


def _body_of(response: Any) -> dict[str, Any]:
    try:
        body = response.json()
    except Exception:  # noqa: BLE001 - whatever the body is, the status says enough
        return {}
    return body if isinstance(body, dict) else {}


class Shopper(MigrationUser):
    weight = 3
    think = between(0.02, 0.2)

    @task(5)
    def view(self) -> None:
        record_id = self._pick()
        self.call(
            "get",
            {"id": record_id},
            "/v1/get",
            {"id": record_id},
            lambda r: {"id": r["id"], "version": r["version"]},
        )

    @task(4)
    def similar(self) -> None:
        category = self.rng.randrange(P.plan.categories)
        vector = P.catalog.query_vector(self.np_rng, category)
        body: dict[str, Any] = {"vector": vector.tolist(), "k": 10}
        roll = self.rng.random()
        if roll < 0.25:
            body["filter"] = {"category": category}
        elif roll < 0.5:
            body["filter"] = {"in_stock": True}
        invoke = {"k": 10, **({"filter": body["filter"]} if "filter" in body else {})}
        self.call("search", invoke, "/v1/search", body, _search_value)

    def _pick(self) -> str:
        roll = self.rng.random()
        if roll < 0.1 and P.new_ids:
            return self.rng.choice(P.new_ids)
        if roll < 0.3:
            return product_id(self.rng.randrange(min(HOT_IDS, P.plan.catalog)))
        return product_id(self.rng.randrange(P.plan.catalog))


def _written(invoke: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    """A write's completion, with what the service told the client: applied or superseded."""
    return {**invoke, "result": response.get("result")}


def _search_value(response: dict[str, Any]) -> dict[str, Any]:
    value = {"results": response["results"]}
    if "exact" in response:
        value["exact"] = response["exact"]
    return value


class Merchant(MigrationUser):
    weight = 1
    think = between(0.05, 0.3)

    def on_start(self) -> None:
        super().on_start()
        self.added = 0

    @task(5)
    def change_price_or_stock(self) -> None:
        record_id = self._pick()
        base = P.vectors.get(record_id)
        vector = base.vector if base is not None else P.catalog.reembed(record_id, self.np_rng)
        metadata = {
            "category": P.catalog.category_of(record_id),
            "in_stock": self.rng.random() < 0.8,
            "price": round(self.rng.uniform(1, 500), 2),
        }
        self._upsert(record_id, vector, metadata)

    @task(2)
    def reembed(self) -> None:
        record_id = self._pick()
        vector = P.catalog.reembed(record_id, self.np_rng)
        metadata = {"category": P.catalog.category_of(record_id), "in_stock": True, "price": 9.99}
        self._upsert(record_id, vector, metadata)

    @task(2)
    def add_product(self) -> None:
        self.added += 1
        record_id = f"n{self.process}-{self.added}"
        record = P.catalog.new_product(self.np_rng, record_id)
        self._upsert(record_id, record.vector, dict(record.metadata))
        P.new_ids.append(record_id)

    @task(2)
    def delist(self) -> None:
        record_id = self._pick()
        version = P.versions.next()
        invoke = {"id": record_id, "version": version}
        self.call("delete", invoke, "/v1/delete", invoke, lambda r: _written(invoke, r))
        P.delisted.append(record_id)

    @task(1)
    def relist(self) -> None:
        """List a delisted product again, back in stock, with a version above its tombstone's:
        the re-insert a tombstone must not block, and a resurrection must not be mistaken for."""
        if not P.delisted:
            return
        at = self.rng.randrange(len(P.delisted))
        record_id = P.delisted[at]
        del P.delisted[at]
        base = P.vectors.get(record_id)
        vector = base.vector if base is not None else P.catalog.reembed(record_id, self.np_rng)
        metadata = {
            "category": P.catalog.category_of(record_id),
            "in_stock": True,
            "price": round(self.rng.uniform(1, 500), 2),
        }
        self._upsert(record_id, vector, metadata)

    def _upsert(self, record_id: str, vector: Any, metadata: dict[str, Any]) -> None:
        """The history's invoke carries the metadata as the version's fields, so that the
        checker can judge filtered searches that return this version."""
        version = P.versions.next()
        done = {"id": record_id, "version": version}
        invoke = {**done, "fields": dict(metadata)}
        body = {
            "id": record_id,
            "vector": np.asarray(vector).tolist(),
            "metadata": metadata,
            "version": version,
        }
        self.call("upsert", invoke, "/v1/upsert", body, lambda r: _written(invoke, r))

    def _pick(self) -> str:
        if self.rng.random() < 0.3:
            return product_id(self.rng.randrange(min(HOT_IDS, P.plan.catalog)))
        return product_id(self.rng.randrange(P.plan.catalog))
