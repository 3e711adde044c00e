"""The load test against real engines: the real-engine chaos schedule (fast), what the engines
must survive for it to be honest -- a PostgreSQL crashed and restarted keeps what it
acknowledged, Qdrant local mode reopens after a SIGKILL mid-write -- and a real migration,
pgvector -> Qdrant local mode, under load and chaos with zero anomalies (slow; CI runs it and,
under CI=true, fails rather than skips when PostgreSQL cannot start)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_report_schema import assert_valid_report

from vecmig.harness.clusters.pgserver import INSTALL_HINT, find_postgres_bindir
from vecmig.harness.clusters.registry import open_cluster
from vecmig.harness.history.checker import ANOMALIES, PHASES
from vecmig.harness.service.driver import LAYER_FAULT_FAMILIES
from vecmig.loadtests.chaos import RunPlan, default_schedule, real_engine_schedule, schedule_for
from vecmig.loadtests.sides import PostgresNemesis, refusal


def engine_missing(what: str) -> None:
    """As tests/conformance/engines.py: fail under CI, skip elsewhere, saying why."""
    message = f"{what}; {INSTALL_HINT}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def require_postgres() -> None:
    try:
        find_postgres_bindir()
        import psycopg  # noqa: F401
    except (LookupError, ImportError) as exc:
        engine_missing(f"cannot start PostgreSQL with pgvector: {exc}")


# -- the schedule (fast) -----------------------------------------------------------------------


@pytest.mark.parametrize("restartable", [(), ("old",), ("new",), ("old", "new")])
def test_real_engine_schedule_fits_its_run_and_crashes_postgres_only_while_secondary(
    restartable: tuple[str, ...],
) -> None:
    schedule = real_engine_schedule(60, can_restart=True, restartable=restartable)
    assert sum(step[1] for step in schedule if step[0] == "wait") < 0.6 * 60
    phase = "OLD_ONLY"
    started: set[tuple[str, str, str]] = set()
    crashed: list[tuple[str, str]] = []
    for step in schedule:
        if step[0] == "advance":
            assert PHASES.index(step[1]) > PHASES.index(phase), step
            phase = step[1]
        if step[0] in ("start", "stop"):
            target, family = step[1], step[2]
            if target == "layer":
                assert family in LAYER_FAULT_FAMILIES, step
            else:  # a side: only a PostgreSQL this run started takes faults, only crashes
                assert target in restartable and family in PostgresNemesis.FAMILIES, step
                if step[0] == "start":
                    crashed.append((target, phase))
            key = (target, family, step[3].get("side", ""))
            (started.add if step[0] == "start" else started.discard)(key)
    assert not started, f"faults left on: {started}"
    secondary = {"old": "CUTOVER", "new": "DUAL_WRITE"}
    assert crashed == [(side, secondary[side]) for side in ("new", "old") if side in restartable]
    assert ("kill-service",) in schedule
    assert ("kill-service",) not in real_engine_schedule(60, can_restart=False)


def test_fake_cluster_servers_keep_the_default_schedule_and_real_engines_get_theirs() -> None:
    def plan(old: str, new: str, **extra: object) -> RunPlan:
        return RunPlan(service="http://s", admin_token="t", old=old, new=new, **extra)  # type: ignore[arg-type]

    fakes = plan("http://127.0.0.1:1", "http://127.0.0.1:2", lagged=["old"], restart_argv=["x"])
    assert schedule_for(fakes, 60) == default_schedule(60, ["old"], can_restart=True)
    real = plan("pgvector://pg/db", "qdrant+local:///q", servers={"old": "/pg"})
    assert schedule_for(real, 60) == real_engine_schedule(60, False, ["old"])


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("fake://?shards=2", "Leave --old/--new out"),
        ("qdrant://:memory:", "qdrant+local://auto"),
        ("redis://localhost", "should start with one of"),
        ("qdrant://auto", "'auto' works for pgvector://auto"),
    ],
)
def test_sides_a_load_test_cannot_use_are_refused_with_the_fix(url: str, says: str) -> None:
    assert says in (refusal(url) or "")
    done = subprocess.run(
        [sys.executable, "-m", "vecmig", "loadtest", "--old", url, "--out", "/nonexistent/x"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and says in done.stderr, done.stderr


def test_usable_sides_are_not_refused() -> None:
    for url in ("pgvector://auto", "qdrant+local://auto", "milvus+lite:///tmp/m.db", "http://h:1"):
        assert refusal(url) is None, url


@pytest.mark.parametrize("url", ["pgvector://auto", "qdrant+local://auto?collection=c"])
def test_auto_sides_are_only_for_the_load_test(url: str) -> None:
    with pytest.raises(ValueError, match="only it does that"):
        open_cluster(url, 8)


def test_a_postgres_side_takes_only_a_crash_without_data_loss(tmp_path: Path) -> None:
    (tmp_path / "server.json").write_text(
        json.dumps(
            {"root": str(tmp_path), "bindir": "/x", "source": "t", "port": 1, "user": None}
            | {"settings": {}}
        )
    )
    nemesis = PostgresNemesis(tmp_path)
    with pytest.raises(ValueError, match="layer's faults"):
        nemesis.start_fault("error-rate", rate=0.3)
    with pytest.raises(ValueError, match="no data loss"):
        nemesis.start_fault("node-crash", node="postgres", lose_data=True)


# -- what the engines must survive (slow) -------------------------------------------------------

QDRANT_WRITER = """
import sys
import numpy as np
from vecmig.harness.clusters.base import Record
from vecmig.harness.clusters.registry import open_cluster
side = open_cluster(sys.argv[1], 8)
rng = np.random.default_rng(0)
for batch in range(1, 10**6):
    side.upsert([Record(f"p{i}", rng.standard_normal(8).astype(np.float32), {}, batch)
                 for i in range(50)])
    print(batch, flush=True)
"""


@pytest.mark.slow
def test_qdrant_local_mode_reopens_after_a_sigkill_mid_write(tmp_path: Path) -> None:
    """The service's SIGKILL is how an in-process Qdrant is crashed: its directory lock goes
    with the process, and every batch the writer saw acknowledged is there on reopening."""
    url = f"qdrant+local://{tmp_path}/q"
    writer = subprocess.Popen(
        [sys.executable, "-c", QDRANT_WRITER, url], stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout is not None
    acknowledged = 0
    deadline = time.monotonic() + 60
    while acknowledged < 5 and time.monotonic() < deadline:
        acknowledged = int(writer.stdout.readline() or 0)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert acknowledged >= 5, "the writer never got going"
    side = open_cluster(url, 8)  # raises if the dead writer's lock were still held
    got = side.get([f"p{i}" for i in range(50)])
    assert len(got) == 50 and min(stored.version for stored in got.values()) >= acknowledged


@pytest.mark.slow
def test_a_crashed_postgres_restarts_on_its_port_with_what_it_acknowledged() -> None:
    require_postgres()
    import psycopg

    from vecmig.harness.clusters.pgserver import CRASH_SAFE_SETTINGS, PostgresServer

    with PostgresServer.create(CRASH_SAFE_SETTINGS) as server:
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (n int)")
            for n in range(200):
                conn.execute("INSERT INTO t VALUES (%s)", (n,))
        other = PostgresServer.attach(server.root)  # as the chaos controller does
        other.crash()
        assert not server.running()
        other.start()
        with psycopg.connect(server.dsn) as conn:
            assert conn.execute("SELECT count(*) FROM t").fetchone() == (200,)
    assert not server.root.exists()


# -- a real migration under load and chaos (slow) ------------------------------------------------


@pytest.mark.slow
def test_pgvector_to_qdrant_under_load_and_chaos_with_zero_anomalies(tmp_path: Path) -> None:
    require_postgres()
    out = tmp_path / "pg-qdrant"
    command = [
        sys.executable, "-m", "vecmig", "loadtest",
        "--old", "pgvector://auto", "--new", "qdrant+local://auto",
        "--duration", "45", "--users", "8", "--catalog", "1000", "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=170, check=False)
    output = done.stdout + done.stderr
    assert (out / "report.json").exists(), output
    report = json.loads((out / "report.json").read_text())
    assert done.returncode == 0, output
    assert_valid_report(report, "loadtest")
    verdict = report["verdict"]
    assert verdict["valid"] is True and all(verdict[k] == 0 for k in ANOMALIES), output
    assert [p["phase"] for p in report["phases"]][-1] == "CUTOVER", output
    faults = {(f["family"], f["target"], f["stop_s"] is not None) for f in report["faults"]}
    assert {("node-crash", "old", True), ("service-crash", "layer", True)} <= faults, output
    assert {("partition", "layer"), ("latency", "layer")} <= {f[:2] for f in faults}
    assert "resumed at BACKFILL" in output and "so that new can be scanned" in output
    ops = report["ops"]
    assert all(ops[f]["ok"] > 30 for f in ("upsert", "delete", "get", "search")), ops
