"""A hung side slows only the calls that need it (issue 13, finding 5): each side has its own
threads, queue and deadline. The tests stop a side -- a port that blocks, then a cluster
server under SIGSTOP -- and check that reads of the healthy side are answered while writes
that wait for the hung side are still pending. (Ordering, not timing: no clock thresholds.)"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from vecmig.harness.catalog import Catalog
from vecmig.harness.clusters.base import ClusterPort, Record, Side, Timeout, Unavailable
from vecmig.harness.clusters.fake import FakeCluster
from vecmig.harness.clusters.remote import RemoteCluster
from vecmig.harness.core.gates import GatePolicy
from vecmig.harness.core.phases import Phase, Step
from vecmig.harness.core.strategy import SAFE
from vecmig.harness.service.bulkhead import Bulkhead
from vecmig.harness.service.migration import Migration, ServiceConfig
from vecmig.harness.state import SQLiteStore

DIM = 8


def test_a_call_past_its_deadline_is_a_timeout_and_one_never_started_is_unavailable() -> None:
    release = threading.Event()

    async def scenario() -> None:
        bulkhead = Bulkhead(Side.NEW, threads=1, queue=1, deadline_s=0.2)
        try:
            running = asyncio.ensure_future(bulkhead.call(release.wait))
            queued = asyncio.ensure_future(bulkhead.call(release.wait))
            await asyncio.sleep(0)  # both are submitted: one runs, one waits for the thread
            with pytest.raises(Unavailable, match="calls already in flight"):
                await bulkhead.call(release.wait)  # full: refused at once, never sent
            with pytest.raises(Timeout, match="may still take effect"):
                await running
            with pytest.raises(Unavailable, match="no thread free"):
                await queued
            assert bulkhead.to_json()["refused"] == 1 and bulkhead.to_json()["timed_out"] == 2
        finally:
            release.set()
            bulkhead.shutdown()

    asyncio.run(scenario())


class Hung:
    """A side whose writes block until released (a stopped server, seen from the caller)."""

    def __init__(self, side: FakeCluster) -> None:
        self.side = side
        self.release = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.side, name)

    def upsert(self, records: Sequence[Record], *, fenced: bool = True) -> dict[str, bool]:
        self.release.wait()
        return self.side.upsert(records, fenced=fenced)


async def advance_to(migration: Migration, phase: Phase) -> None:
    while migration.coordinator.published.phase is not phase:
        result = await migration.step(Step.ADVANCE)
        if not result.ok:
            await asyncio.sleep(0.05)
    while migration.view.epoch != migration.coordinator.published.epoch:
        await asyncio.sleep(0.02)


async def reads_while_writes_hang(migration: Migration, writes: int, reads: int) -> None:
    """Start `writes` upserts (they wait on the hung new), then read old `reads` times: every
    read must be answered while every write is still pending."""
    vector = Catalog.generate(1, DIM, categories=1, seed=9).records()[0].vector
    pending = [
        asyncio.ensure_future(migration.upsert(Record(f"w{i}", vector, {}, 10 + i)))
        for i in range(writes)
    ]
    await asyncio.sleep(0.2)  # the writes reach new and take its threads
    for i in range(reads):
        outcome = await migration.get(f"p{i % 20:06d}")
        assert outcome.type == "ok" and outcome.value["version"] is not None, outcome
    assert not any(task.done() for task in pending), "a write finished while new was hung"


def config(**extra: Any) -> ServiceConfig:
    settings: dict[str, Any] = {
        "strategy": SAFE,
        "dim": DIM,
        "poll_s": 0.01,
        "policy": GatePolicy(min_mirrored_reads=0),
        "side_threads": 4,
        "side_queue": 64,
        "side_deadline_s": 30.0,
        "lease_s": 120.0,
        **extra,
    }
    return ServiceConfig(**settings)


def test_a_hung_secondary_leaves_the_primarys_reads_their_own_threads(tmp_path: Path) -> None:
    old = FakeCluster(DIM, shards=1, replicas=1, name="old")
    old.upsert(Catalog.generate(20, DIM, categories=2, seed=0).records(), fenced=False)
    new = Hung(FakeCluster(DIM, shards=1, replicas=1, name="new"))

    async def scenario() -> None:
        sides: dict[Side, ClusterPort] = {Side.OLD: old, Side.NEW: new}  # type: ignore[dict-item]
        migration = Migration(config(), sides, SQLiteStore(tmp_path / "s.sqlite"))
        await migration.start()
        try:
            await advance_to(migration, Phase.DUAL_WRITE)
            # More writes than the 16 threads the sides once shared: then the reads queued
            # behind them until new came back.
            await reads_while_writes_hang(migration, writes=24, reads=40)
        finally:
            new.release.set()
            await migration.stop()

    asyncio.run(scenario())


# -- the same with real processes and SIGSTOP ------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def servers(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, tuple[int, str]]]:
    monkeypatch.setenv("VECMIG_CLUSTER_TOKEN", "bulkhead-test")
    started: dict[str, tuple[int, str]] = {}
    processes = []
    for name in ("old", "new"):
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "vecmig", "cluster", "serve", "--dim", str(DIM)]
            + ["--port", str(port), "--name", name, "--log-level", "warning"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        processes.append(process)
        started[name] = (process.pid, f"http://127.0.0.1:{port}")
    try:
        for _, url in started.values():
            wait_up(url)
        yield started
    finally:
        for process in processes:
            os.kill(process.pid, signal.SIGCONT)
            process.terminate()
            process.wait(timeout=30)


def wait_up(url: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            RemoteCluster(url, DIM, "cosine", token="bulkhead-test").count()
            return
        except Unavailable:
            assert time.monotonic() < deadline, f"{url} did not come up"
            time.sleep(0.1)


def test_a_sigstopped_secondary_leaves_reads_of_the_primary_answered(
    tmp_path: Path, servers: dict[str, tuple[int, str]]
) -> None:
    token = "bulkhead-test"
    old = RemoteCluster(servers["old"][1], DIM, "cosine", timeout_s=60, token=token)
    new = RemoteCluster(servers["new"][1], DIM, "cosine", timeout_s=60, token=token)
    old.upsert(Catalog.generate(20, DIM, categories=2, seed=0).records(), fenced=False)

    async def scenario() -> None:
        migration = Migration(
            config(), {Side.OLD: old, Side.NEW: new}, SQLiteStore(tmp_path / "s.sqlite")
        )
        await migration.start()
        stopped = False
        try:
            await advance_to(migration, Phase.DUAL_WRITE)
            os.kill(servers["new"][0], signal.SIGSTOP)
            stopped = True
            await reads_while_writes_hang(migration, writes=24, reads=40)
        finally:
            if stopped:
                os.kill(servers["new"][0], signal.SIGCONT)
            await migration.stop()

    asyncio.run(scenario())


class Counting:
    """A side that counts its `get` calls."""

    def __init__(self, side: FakeCluster) -> None:
        self.side = side
        self.gets = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.side, name)

    def get(self, ids: Sequence[str]) -> Any:
        self.gets += 1
        return self.side.get(ids)


def test_repairs_wait_while_a_side_is_down_instead_of_loading_the_other(tmp_path: Path) -> None:
    base = FakeCluster(DIM, shards=1, replicas=1, name="old")
    base.upsert(Catalog.generate(20, DIM, categories=2, seed=0).records(), fenced=False)
    old = Counting(base)
    new = FakeCluster(DIM, shards=1, replicas=1, name="new")
    vector = Catalog.generate(1, DIM, categories=1, seed=9).records()[0].vector

    async def scenario() -> None:
        sides: dict[Side, ClusterPort] = {Side.OLD: old, Side.NEW: new}  # type: ignore[dict-item]
        cfg = config(side_deadline_s=2.0, lease_s=10.0, health_interval_s=0.05)
        migration = Migration(cfg, sides, SQLiteStore(tmp_path / "s.sqlite"))
        await migration.start()
        try:
            await advance_to(migration, Phase.DUAL_WRITE)
            new.start_fault("node-crash", node="s0r0")
            while migration.side_health[Side.NEW]["ok"]:
                await asyncio.sleep(0.02)
            for i in range(10):
                outcome = await migration.upsert(Record(f"r{i}", vector, {}, 5))
                assert outcome.type == "ok" and "repair_queued" in outcome.notes
            gets = old.gets
            await asyncio.sleep(1.0)  # many repair intervals
            assert old.gets == gets and migration.store.repair_backlog() == 10
            new.stop_fault("node-crash", node="s0r0")
            while migration.store.repair_backlog():
                await asyncio.sleep(0.05)
            assert all(new.get([f"r{i}"])[f"r{i}"].version == 5 for i in range(10))
        finally:
            await migration.stop()

    asyncio.run(scenario())
