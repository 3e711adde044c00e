"""Sweeps: seeds are data, every result is stored as it arrives, `--resume` runs only the
missing seeds, a lost worker costs only its task (local pool and Dask cluster alike), and
every executor reaches the same verdicts as `--jobs 1` on the same seeds."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import vecmig
from vecmig.harness.cli import EXIT_STALLED, main
from vecmig.sim import simulation
from vecmig.sim.scenario import load
from vecmig.sim.sweep import SweepRun, plan, run
from vecmig.sim.sweep_executors import InProcess, LocalPool, SweepError, connect
from vecmig.sim.sweep_store import ResultStore, StoredResult, StoreError
from vecmig.sim.sweep_task import SeedResult, fingerprint

ROOT = Path(vecmig.__file__).resolve().parent.parent

SMALL_SHOP = (Path(__file__).parent / "data" / "small_shop.toml").read_text()

# The naive plan on a small shop: about a quarter of a second a seed, and a mix of verdicts
# (most seeds find stale reads, some lost writes or divergence, a few are valid).
SHOP = SMALL_SHOP.replace('name = "tiny"', 'name = "shop"').replace(
    "duration_s = 40", "duration_s = 20"
)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scenarios") / "shop.toml"
    path.write_text(SHOP)
    return path


def sweep(
    shop: Path,
    seeds: range,
    executor: Any,
    out: Path,
    *,
    resume: bool = False,
    on_result: Any = None,
) -> tuple[SweepRun, dict[int, StoredResult]]:
    """Run a naive sweep of `shop` and return what the store holds, by seed."""
    scenario = load(str(shop))
    tasks = plan(str(shop), scenario, seeds, "naive")
    with ResultStore(out / "results.sqlite") as store:
        record = run(tasks, scenario, executor, store, out, resume=resume, on_result=on_result)
        rows = {
            row.task.seed: row for row in store.rows(t.key(fingerprint(scenario)) for t in tasks)
        }
    return record, rows


def verdicts(rows: dict[int, StoredResult]) -> dict[int, tuple[str, dict[str, int]]]:
    return {seed: (row.outcome, row.counts) for seed, row in rows.items()}


@pytest.fixture(scope="module")
def sequential(shop: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, StoredResult]:
    """Seeds 1-20 with `--jobs 1`: the verdicts every other executor must reach."""
    _, rows = sweep(shop, range(1, 21), InProcess(), tmp_path_factory.mktemp("jobs1"))
    outcomes = {row.outcome for row in rows.values()}
    assert {"valid", "anomalies"} <= outcomes, "the comparison needs both verdicts"
    return rows


# ---------------------------------------------------------------------------------------------
# Seeds as data, results as they arrive.


def test_a_failing_seed_keeps_its_history_and_a_passing_one_only_its_report(
    sequential: dict[int, StoredResult], tmp_path: Path
) -> None:
    failing = next(row for row in sequential.values() if row.failed)
    passing = next(row for row in sequential.values() if not row.failed)
    assert failing.history and failing.history.endswith("history.jsonl")
    assert passing.history is None
    assert failing.replay.startswith("vecmig simulate ")
    assert f"--seed {failing.task.seed} --strategy naive --swarm" in failing.replay
    assert failing.signature is not None and failing.signature.kind in failing.counts
    assert failing.counts[failing.signature.kind] > 0


def test_resume_runs_only_the_seeds_without_a_result(shop: Path, tmp_path: Path) -> None:
    stop_after = 2

    def interrupt(result: SeedResult) -> None:
        nonlocal stop_after
        stop_after -= 1
        if stop_after == 0:
            raise KeyboardInterrupt

    first, kept = sweep(shop, range(1, 6), InProcess(), tmp_path, on_result=interrupt)
    assert first.interrupted and first.ran == 2 and sorted(kept) == [1, 2]

    ran: list[int] = []
    second, rows = sweep(
        shop,
        range(1, 6),
        InProcess(),
        tmp_path,
        resume=True,
        on_result=lambda r: ran.append(r.task.seed),
    )
    assert sorted(ran) == [3, 4, 5]
    assert (second.resumed, second.ran) == (2, 3)
    assert sorted(rows) == [1, 2, 3, 4, 5]
    assert all(rows[s].stored_at == kept[s].stored_at for s in kept), "kept rows untouched"


def test_without_resume_a_sweep_starts_its_seeds_afresh(shop: Path, tmp_path: Path) -> None:
    _, before = sweep(shop, range(1, 3), InProcess(), tmp_path)
    failing = next(row for row in before.values() if row.history)
    stale = tmp_path / failing.history
    stale.with_name("left-over").write_text("from the first sweep")
    again, after = sweep(shop, range(1, 3), InProcess(), tmp_path)
    assert again.ran == 2 and again.resumed == 0
    assert all(after[s].stored_at > before[s].stored_at for s in before)
    assert not stale.with_name("left-over").exists(), "the old failure folder was cleared"


def test_cli_resume_after_a_killed_sweep_runs_only_the_missing_seeds(
    shop: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sweep"
    command = [sys.executable, "-m", "vecmig", "sweep", str(shop), "--strategy", "naive"]
    command += ["--seeds", "6", "--jobs", "1", "--quiet", "--out", str(out)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        stored = _wait_for_rows(out / "results.sqlite", 2, child)
    finally:
        child.kill()
        child.wait()
    assert 2 <= stored < 6, "killed halfway"
    stored = _count_rows(out / "results.sqlite")

    code = main([*command[3:], "--resume"])
    summary = json.loads((out / "sweep.json").read_text())
    assert code == 1, "the naive plan fails some seed"
    assert summary["seeds"]["resumed"] == stored
    assert summary["seeds"]["run_now"] == 6 - stored
    assert summary["seeds"]["stored"] == 6 and summary["seeds"]["missing"] == []
    groups = summary["groups"]
    assert sum(g["count"] for g in groups) == 6 - summary["verdicts"]["valid"]
    smallest = min(groups[0]["seeds"])
    assert groups[0]["replay"].startswith(f"vecmig simulate {shop} --seed {smallest} ")
    printed = capsys.readouterr().out
    for failure in summary["failures"]:
        assert f"replay seed {failure['seed']}: {failure['replay']}" in printed
        assert (out / failure["history"]).name == "history.jsonl"
    html = (out / "sweep.html").read_text()
    assert groups[0]["replay"] in html
    assert html.count("data:image/png;base64,") == 2


def _count_rows(db: Path) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        try:
            return int(conn.execute("SELECT count(*) FROM results").fetchone()[0])
        except sqlite3.OperationalError:  # the table is not created yet
            return 0


def _wait_for_rows(db: Path, at_least: int, child: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        count = _count_rows(db)
        if count >= at_least:
            return count
        if child.poll() is not None:
            raise AssertionError(f"the sweep ended early: {child.stderr.read()!r}")  # type: ignore[union-attr]
        time.sleep(0.05)
    raise AssertionError(f"no {at_least} results in {db} after two minutes")


# ---------------------------------------------------------------------------------------------
# Stalls, runs that raise, buggify.


@pytest.fixture(scope="module")
def stuck(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shop, with a CUTOVER gate that can never open (more mirrored reads than the run
    makes): every run stalls in SHADOW after 3 s of the gate holding."""
    path = tmp_path_factory.mktemp("scenarios") / "stuck.toml"
    text = SHOP.replace("min_mirrored_reads = 20", "min_mirrored_reads = 100000")
    path.write_text(text.replace("[migration]", "[migration]\nstall_after_s = 3"))
    return path


def test_a_stalled_seed_is_counted_grouped_by_its_gate_and_exits_4(
    stuck: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["sweep", str(stuck), "--seeds", "2", "--jobs", "1", "--out", str(tmp_path)])
    summary = json.loads((tmp_path / "sweep.json").read_text())
    assert code == EXIT_STALLED, capsys.readouterr().out
    assert summary["verdicts"]["stalled"] == summary["stalls"] == 2
    kinds = {
        (g["signature"]["kind"], g["signature"]["phase"], g["signature"]["first_op"])
        for g in summary["groups"]
    }
    assert kinds == {("stalled", "SHADOW", "gate to CUTOVER")}
    failure = summary["failures"][0]
    assert (tmp_path / failure["history"]).name == "history.jsonl", "a stalled seed keeps it"


def test_anomalies_come_before_a_stall_as_in_the_exit_code(
    stuck: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = simulation.Simulation.run

    def stale_too(self: simulation.Simulation, *args: Any) -> simulation.RunResult:
        result = original(self, *args)
        verdict = dataclasses.replace(result.verdict, valid=False, stale_reads=3)
        return dataclasses.replace(result, verdict=verdict)

    monkeypatch.setattr(simulation.Simulation, "run", stale_too)
    scenario = load(str(stuck))
    tasks = plan(str(stuck), scenario, [1], "safe")
    with ResultStore(tmp_path / "results.sqlite") as store:
        run(tasks, scenario, InProcess(), store, tmp_path)
        (row,) = store.rows(store.keys())
    assert (row.outcome, row.stalled) == ("anomalies", True)
    assert row.signature is not None and row.signature.kind == "stale_reads"


def test_a_seed_that_raises_is_a_result_not_a_crashed_sweep(
    shop: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(self: simulation.Simulation, *args: Any) -> simulation.RunResult:
        raise RuntimeError("driver exploded")

    monkeypatch.setattr(simulation.Simulation, "run", boom)
    _, rows = sweep(shop, range(1, 3), InProcess(), tmp_path)
    assert [rows[s].outcome for s in (1, 2)] == ["raised", "raised"]
    assert rows[1].raised == "RuntimeError: driver exploded"
    assert rows[1].signature is not None and rows[1].signature.first_op == "RuntimeError"
    assert rows[1].history is not None, "it keeps its report with the traceback"
    report = json.loads((tmp_path / rows[1].history).read_text())
    assert "driver exploded" in report["error"] and "Traceback" in report["error"]


def test_a_buggify_seed_replays_with_buggify_and_without_swarm(shop: Path, tmp_path: Path) -> None:
    scenario = load(str(shop))
    (task,) = plan(str(shop), scenario, [3], "naive", buggify=True)
    assert (task.buggify, task.swarm) == (True, False), "buggify draws its own faults"
    assert "buggify=1" in task.key("0" * 64) and task.slug().endswith("-buggify")
    with ResultStore(tmp_path / "results.sqlite") as store:
        run([task], scenario, InProcess(), store, tmp_path)
        (row,) = store.rows(store.keys())
    assert row.task == task
    assert row.replay.endswith("--seed 3 --strategy naive --buggify"), row.replay
    assert row.replay.count("--buggify") == 1 and "--swarm" not in row.replay


def test_ray_addresses_are_refused_with_the_way_to_dask() -> None:
    with pytest.raises(SweepError, match="tcp://scheduler:8786"):
        connect("ray://head:10001", 2)


# ---------------------------------------------------------------------------------------------
# Lost workers.


def test_a_killed_local_worker_process_costs_only_the_tasks_in_flight(
    shop: Path, sequential: dict[int, StoredResult], tmp_path: Path
) -> None:
    pool = LocalPool(2)
    killed: list[int] = []

    def kill_one(result: SeedResult) -> None:
        if not killed:
            victim = psutil.Process().children()[0]
            killed.append(victim.pid)
            victim.send_signal(signal.SIGKILL)

    try:
        record, rows = sweep(shop, range(1, 9), pool, tmp_path, on_result=kill_one)
    finally:
        pool.close()
    assert killed and not record.lost
    assert verdicts(rows) == {s: v for s, v in verdicts(sequential).items() if s <= 8}


@pytest.fixture
def dask_cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Three worker processes of a Dask LocalCluster; they import this checkout."""
    distributed = pytest.importorskip("distributed")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    with distributed.LocalCluster(
        n_workers=3, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        yield cluster


def test_a_dask_sweep_survives_a_killed_worker_with_the_verdicts_of_jobs_1(
    shop: Path, sequential: dict[int, StoredResult], dask_cluster: Any, tmp_path: Path
) -> None:
    import distributed

    executor = connect(dask_cluster.scheduler_address, jobs=1)
    observer = distributed.Client(dask_cluster.scheduler_address, set_as_default=False)
    pids: dict[str, int] = observer.run(os.getpid)
    killed: dict[str, Any] = {}

    def kill_a_busy_worker(result: SeedResult) -> None:
        # While this runs the sweep gathers nothing, so whatever the victim was running (or
        # had finished but not handed over) must be computed again on another worker.
        if killed:
            return
        busy = {w: keys for w, keys in observer.call_stack().items() if keys}
        if busy:
            worker, keys = next(iter(busy.items()))
            os.kill(pids[worker], signal.SIGKILL)
            killed.update(pid=pids[worker], keys=list(keys))

    try:
        record, rows = sweep(shop, range(1, 21), executor, tmp_path, on_result=kill_a_busy_worker)
    finally:
        executor.close()
        observer.close()
    assert killed, "some worker was busy when a result arrived"
    assert sorted(rows) == list(range(1, 21)) and not record.lost
    assert verdicts(rows) == verdicts(sequential)
    assert len({row.worker for row in rows.values()}) >= 3, "the seeds ran on several workers"
    retried = [row for row in rows.values() if f"vecmig_seed-{row.key}" in killed["keys"]]
    assert retried, "the killed worker's task has a result"
    assert all(not row.worker.endswith(f":{killed['pid']}") for row in retried)


def test_a_results_file_of_another_layout_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE results (key TEXT PRIMARY KEY)")
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="schema 99"):
        ResultStore(path)
