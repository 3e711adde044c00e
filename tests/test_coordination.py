"""The config store and the shared layer state of a fleet (harness/coordination), on both
backends: SQLite (one machine) and PostgreSQL (a fleet). The coordinator's decisions must be
the core's, taken atomically across processes and judged on the store's clock; the layer's
durable state must be shared: what one process queues, every other sees at once."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from conformance.engines import engine_missing, postgres_server

from vecmig.harness.clusters.base import Side
from vecmig.harness.coordination import (
    ConfigStoreError,
    ConfigStoreExists,
    ConfigStoreMissing,
    StoreCoordinator,
    open_config_store,
    open_shared_state,
)
from vecmig.harness.coordination import sqlite as sqlite_backend
from vecmig.harness.core.phases import Coordinator, Phase, PhaseError, Published, Step
from vecmig.harness.core.state import RepairEntry

LEASE_NS = 300_000_000


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    with ExitStack() as stack:
        try:
            dsn = stack.enter_context(postgres_server())
        except Exception as exc:  # whatever stopped the start, it is reported the same way
            engine_missing(f"cannot start PostgreSQL: {exc}")
            raise
        yield dsn


def _fresh_database(dsn: str, name: str) -> str:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    return dsn.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(params=["sqlite", "postgres"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], str]:
    """A function giving a fresh store URL per name, on the backend under test."""
    if request.param == "sqlite":
        return lambda name: f"sqlite://{tmp_path / (name + '.sqlite')}"
    dsn = request.getfixturevalue("postgres")
    return lambda name: _fresh_database(dsn, f"t_{name}_{time.monotonic_ns() % 10**9}")


def _initialised(url: str, lease_ns: int = LEASE_NS) -> StoreCoordinator:
    store = open_config_store(url)
    store.initialise(Coordinator(lease_ns=lease_ns), {"strategy": "safe"})
    return StoreCoordinator(store)


def test_decisions_are_the_core_coordinators(where: Callable[[str], str]) -> None:
    """Publish waits for every live acknowledgement; a lapsed lease is bound to its epoch
    (issue 10, finding 5), exactly as `Coordinator` decides in memory."""
    url = where("decisions")
    coordinator = _initialised(url)
    with pytest.raises(ConfigStoreExists):
        open_config_store(url).initialise(Coordinator(), {})
    assert open_config_store(url).settings() == {"strategy": "safe"}
    old_only = coordinator.join("a")
    coordinator.join("late")
    dual_write = coordinator.publish(Step.ADVANCE, 0)
    assert dual_write == Published(Phase.DUAL_WRITE, 1)
    assert coordinator.waiting_for(0) == ["a", "late"]
    with pytest.raises(PhaseError, match="waiting for 2 instance"):
        coordinator.publish(Step.ADVANCE, 0)
    assert coordinator.ack("a", dual_write)
    assert coordinator.ack("late", old_only), "a live instance renews while behind"
    assert coordinator.waiting_for(0) == ["late"]
    deadline = time.monotonic() + 5
    while coordinator.waiting_for(0) and time.monotonic() < deadline:
        coordinator.ack("a", dual_write)  # a keeps its lease; late's lapses
        time.sleep(0.05)
    assert coordinator.waiting_for(0) == []
    backfill = coordinator.publish(Step.ADVANCE, 0)
    assert not coordinator.ack("late", old_only), "lapsed and two epochs behind"
    assert not coordinator.ack("late", dual_write), "lapsed and one epoch behind"
    assert coordinator.ack("late", backfill), "caught up: a new lease"
    other = StoreCoordinator(open_config_store(url))
    assert other.published == backfill, "every process reads the same phase"


def test_leases_are_judged_on_the_stores_clock_not_the_callers(
    where: Callable[[str], str],
) -> None:
    coordinator = _initialised(where("clock"))
    coordinator.join("skewed", now=10**30)  # a caller's clock far ahead changes nothing
    assert "skewed" in coordinator.live_instances(now=-(10**30))
    time.sleep(LEASE_NS / 1e9 + 0.1)
    assert coordinator.live_instances(now=0) == {}, "lapsed on the store's clock"


def test_two_controllers_cannot_both_publish_from_one_phase(where: Callable[[str], str]) -> None:
    """Each judged its gate on OLD_ONLY (epoch 0); only one may publish from it."""
    url = where("cas")
    first = _initialised(url)
    second = StoreCoordinator(open_config_store(url))
    assert first.published == second.published == Published(Phase.OLD_ONLY, 0)
    first.publish(Step.ADVANCE, 0)
    with pytest.raises(PhaseError, match="moved to DUAL_WRITE"):
        second.publish(Step.ADVANCE, 0)
    assert second.published == Published(Phase.DUAL_WRITE, 1)


def _join_many(url: str, worker: int, count: int) -> None:
    coordinator = StoreCoordinator(open_config_store(url, timeout_s=30))
    for n in range(count):
        coordinator.join(f"w{worker}-{n}")


def test_decisions_from_many_processes_lose_none(where: Callable[[str], str]) -> None:
    """Each decision is a read-modify-write of the whole coordinator: without a transaction
    around it, concurrent joins would overwrite each other."""
    url = where("joins")
    coordinator = _initialised(url, lease_ns=60_000_000_000)
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_join_many, args=(url, w, 25)) for w in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(120)
        assert process.exitcode == 0
    assert len(coordinator.live_instances(0)) == 100


class _Flaky:
    """A config store that fails as asked: before a decision, or after it committed."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.url = store.url
        self.down = False
        self.lose_answer = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def snapshot(self) -> tuple[Coordinator, int]:
        if self.down:
            raise ConfigStoreError("down")
        return self.store.snapshot()  # type: ignore[no-any-return]

    def decide(self, decision: Any, *, announce: bool = False) -> Any:
        if self.down:
            raise ConfigStoreError("down")
        result = self.store.decide(decision, announce=announce)
        if self.lose_answer:
            self.lose_answer = False
            error = ConfigStoreError("the connection broke during COMMIT")
            error.maybe_taken = True  # type: ignore[attr-defined]
            raise error
        return result


def test_an_unreachable_store_holds_every_gate_and_refuses_to_publish(tmp_path: Path) -> None:
    store = open_config_store(f"sqlite://{tmp_path / 'c.sqlite'}")
    store.initialise(Coordinator(lease_ns=LEASE_NS), {})
    flaky = _Flaky(store)
    coordinator = StoreCoordinator(flaky)  # type: ignore[arg-type]
    flaky.down = True
    assert coordinator.published == Published(Phase.OLD_ONLY, 0), "the last phase seen"
    assert coordinator.waiting_for(0) and "does not answer" in coordinator.waiting_for(0)[0]
    assert not coordinator.can_publish(0)[0]
    with pytest.raises(PhaseError, match="did not answer"):
        coordinator.publish(Step.ADVANCE, 0)
    with pytest.raises(ConfigStoreError):
        coordinator.ack("a", Published(Phase.OLD_ONLY, 0))
    flaky.down = False
    assert coordinator.publish(Step.ADVANCE, 0) == Published(Phase.DUAL_WRITE, 1)


def test_a_publish_whose_answer_was_lost_is_settled_by_reading_the_store(tmp_path: Path) -> None:
    """Otherwise the controller would take it for a refusal and step once more than planned."""
    store = open_config_store(f"sqlite://{tmp_path / 'c.sqlite'}")
    store.initialise(Coordinator(lease_ns=LEASE_NS), {})
    flaky = _Flaky(store)
    coordinator = StoreCoordinator(flaky)  # type: ignore[arg-type]
    flaky.lose_answer = True
    assert coordinator.publish(Step.ADVANCE, 0) == Published(Phase.DUAL_WRITE, 1)
    assert StoreCoordinator(store).published == Published(Phase.DUAL_WRITE, 1)


def test_a_reboot_lapses_every_lease_of_a_sqlite_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The monotonic clock starts again at boot: leases granted before it mean nothing."""
    url = f"sqlite://{tmp_path / 'c.sqlite'}"
    coordinator = _initialised(url, lease_ns=3600 * 10**9)
    coordinator.join("a")
    assert coordinator.live_instances(0)
    monkeypatch.setattr(sqlite_backend, "boot_id", lambda: "another boot")
    assert StoreCoordinator(open_config_store(url)).live_instances(0) == {}


def test_a_missing_store_says_to_initialise_it(where: Callable[[str], str]) -> None:
    with pytest.raises(ConfigStoreMissing, match="--init"):
        StoreCoordinator(open_config_store(where("missing")))


# -- the layer's durable state, shared ----------------------------------------------------------


def _state_url(where: Callable[[str], str], name: str) -> str:
    url = where(name)
    return url if not url.startswith("sqlite://") else url.replace(".sqlite", "-state.sqlite")


def test_a_repair_queued_in_one_process_is_pending_for_every_other(
    where: Callable[[str], str],
) -> None:
    """A read on instance B must read both sides when a write on instance A left a repair or
    an intent behind: nothing may answer from a cache of one process's writes."""
    url = _state_url(where, "pending")
    a = open_shared_state(url, init=True)
    b = open_shared_state(url)
    assert a.migration_id == b.migration_id
    a.add_repairs([RepairEntry("p1", Side.NEW)])
    intent = a.add_intent("p2", Side.NEW, hold_until=10)
    assert b.pending_for([("p1", Side.NEW), ("p2", Side.NEW), ("p3", Side.NEW)]) == {
        ("p1", Side.NEW): False,
        ("p2", Side.NEW): True,
    }
    assert b.repair_backlog(now=5) == 1 and b.repair_backlog(now=10) == 2
    entries = b.next_repairs(10, now=10)
    a.add_repairs([RepairEntry("p1", Side.NEW)])  # queued again while b repairs it
    b.remove_repairs(entries)
    assert a.pending_for([("p1", Side.NEW), ("p2", Side.NEW)]) == {("p1", Side.NEW): False}
    a.clear_intent(intent)
    with pytest.raises(Exception, match="--init"):
        open_shared_state(url, init=True)


def _add_intents(url: str, count: int, out: Any) -> None:
    store = open_shared_state(url)
    out.put([store.add_intent(f"p{n}", Side.NEW, 0) for n in range(count)])


def test_intents_are_numbered_uniquely_across_processes(where: Callable[[str], str]) -> None:
    url = _state_url(where, "intents")
    open_shared_state(url, init=True)
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    workers = [context.Process(target=_add_intents, args=(url, 40, results)) for _ in range(3)]
    for process in workers:
        process.start()
    numbers = [n for _ in workers for n in results.get(timeout=120)]
    for process in workers:
        process.join(60)
    assert len(numbers) == len(set(numbers)) == 120


def test_the_recent_window_is_shared_and_read_back_whole(where: Callable[[str], str]) -> None:
    """Searches on a lagged side correct their hits with the writes of the window, whoever
    wrote them; the reader keeps what it decoded, and must still see every new row."""
    import numpy as np

    from vecmig.harness.core.state import RecentWrite

    url = _state_url(where, "recent")
    a = open_shared_state(url, init=True)
    b = open_shared_state(url)
    vector = np.arange(8, dtype=np.float32) / 7
    a.note_recent(Side.OLD, [RecentWrite("p1", 5, False, 100, vector, {"category": 2})])
    first = b.recent_since(Side.OLD, 50)
    a.note_recent(Side.OLD, [RecentWrite("p2", 6, True, 200)])
    second = b.recent_since(Side.OLD, 50)
    assert [(w.id, w.version, w.deleted, w.time) for w in second] == [
        ("p1", 5, False, 100),
        ("p2", 6, True, 200),
    ]
    assert second[0] is first[0], "a row decoded once is not decoded again"
    assert np.array_equal(second[0].vector, vector) and second[0].metadata == {"category": 2}
    assert second[1].vector is None
    assert [w.id for w in b.recent_since(Side.OLD, 150)] == ["p2"]
    assert b.recent_since(Side.NEW, 0) == ()


def test_the_gates_window_of_mirrored_reads_reaches_the_controller_through_json() -> None:
    """Each instance reports its latest mirrored reads one by one (as JSON, through the config
    store) and the controller's window holds the latest of every instance. (Before, the
    report carried the window's deque along with the counters: it was not JSON, the report
    loop died, and a fleet's CUTOVER gate saw 0 mirrored reads.)"""
    import json

    from vecmig.harness.core.compare import MirrorStats, compare
    from vecmig.harness.service.fleet import COUNTERS, RECENT_REPORTED, interleaved, summed

    stats = [MirrorStats(), MirrorStats()]
    same = compare([], [], 10)
    for _ in range(RECENT_REPORTED + 50):
        stats[0].add(same, True)  # one instance saw a burst of discrepancies long ago ...
    for _ in range(60):
        stats[0].add(same, False)  # ... and clean reads since
        stats[1].add(same, False)
    reports = [
        json.loads(
            json.dumps(
                {
                    "mirror": {name: getattr(one, name) for name in COUNTERS},
                    "recent": [list(read) for read in list(one.recent)[-RECENT_REPORTED:]],
                }
            )
        )
        for one in stats
    ]
    merged = summed(r["mirror"] for r in reports)
    merged.recent.extend(interleaved(r["recent"] for r in reports))
    assert merged.compared == RECENT_REPORTED + 170
    assert merged.window(120).discrepancies == 0  # the last 60 of each: clean
    assert merged.window(130).discrepancies == 10
