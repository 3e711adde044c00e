"""Seeds per second of `vecmig sweep --jobs 2` against the same sweep on a Dask LocalCluster
of 2 worker processes (1 thread each), and the per-seed cost a nightly sweep is sized from.

Each sweep is the real command (`python -m vecmig sweep ... --quiet`) in its own process, as a
user runs it, and reads its figures back from sweep.json: seeds per second over the sweep
loop (after imports and connecting), and per seed the wall and CPU seconds inside its worker.
The Dask cluster is started once and warmed by one sweep of 2 seeds outside the measured
range (its workers import vecmig once, about 2 s, which a long sweep pays once); then the two
executors alternate `--repeat` times on the same seeds. On a shared machine the load moves
between runs more than the engines differ, so the ratio of each back-to-back pair is printed
as well as the best run of each.

It also times 400 trivial tasks (`abs` of an int) through each executor in this process:
what the engine costs a task apart from the task itself.

Run: python bench/bench_sweep.py [SCENARIO] [--seeds 8] [--repeat 3] [--duration S]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from distributed import LocalCluster

from vecmig.sim.sweep_executors import DaskCluster, LocalPool, SeedExecutor

NIGHTLY_SEEDS = 100_000
NIGHT_S = 3600.0
ROOT = Path(__file__).resolve().parent.parent


def sweep(where: list[str], args: argparse.Namespace, first: int, seeds: int) -> dict[str, Any]:
    """One `vecmig sweep` in a fresh process; its sweep.json."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "vecmig", "sweep", args.scenario, "--quiet"]
        command += ["--strategy", args.strategy, "--first-seed", str(first)]
        command += ["--seeds", str(seeds), "--out", out, *where]
        if args.duration is not None:
            command += ["--duration", str(args.duration)]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode not in (0, 1):
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr}")
        summary: dict[str, Any] = json.loads((Path(out) / "sweep.json").read_text())
    return summary


def dispatch_s(executor: SeedExecutor, tasks: int) -> float:
    """Wall seconds per task of `tasks` trivial tasks: the engine's cost per task."""
    started = time.perf_counter()
    done = sum(1 for _ in executor.imap_unordered(abs, list(range(tasks)), str))
    assert done == tasks
    return (time.perf_counter() - started) / tasks


def efficiency(summary: dict[str, Any]) -> float:
    """The share of the two workers' wall time spent inside seeds."""
    return float(min(1.0, summary["seeds_per_s"] * summary["seed_wall_s"]["mean"] / 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", nargs="?", default="default")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--first-seed", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--strategy", default="safe")
    parser.add_argument("--duration", type=float, default=None)
    parser.add_argument("--trivial", type=int, default=400)
    args = parser.parse_args()

    names = ("--jobs 2", "dask, 2 workers")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        where = {names[0]: ["--jobs", "2"], names[1]: ["--cluster", cluster.scheduler_address]}
        sweep(where[names[1]], args, 1, 2)  # warm the workers
        pool, dask = LocalPool(2), DaskCluster(cluster.scheduler_address)
        dispatch = {
            names[0]: dispatch_s(pool, args.trivial),
            names[1]: dispatch_s(dask, args.trivial),
        }
        pool.close()
        dask.close()
        for _ in range(args.repeat):
            for name in names:
                runs[name].append(sweep(where[name], args, args.first_seed, args.seeds))

    # Every run of either executor must reach the same verdicts, seed by seed.
    verdicts = {json.dumps([s["verdicts"], s["failures"]]) for r in runs.values() for s in r}
    best = {name: max(r, key=lambda s: s["seeds_per_s"]) for name, r in runs.items()}
    last = args.first_seed + args.seeds - 1
    print(f"{args.scenario} ({args.strategy}), seeds {args.first_seed}-{last}, {args.repeat} runs")
    print(f"each, alternating; same verdicts in every run: {len(verdicts) == 1}")
    print(
        f"dispatch of {args.trivial} trivial tasks: "
        + ", ".join(f"{name} {1e3 * s:.2f} ms per task" for name, s in dispatch.items())
    )
    print("| executor | seeds/s, best (every run) | per seed: wall s, CPU s | efficiency | ratio |")
    print("|---|---:|---:|---:|---:|")
    for name, b in best.items():
        every = ", ".join(f"{s['seeds_per_s']:.3f}" for s in runs[name])
        ratio = b["seeds_per_s"] / best[names[0]]["seeds_per_s"]
        print(
            f"| {name} | {b['seeds_per_s']:.3f} ({every}) "
            f"| {b['seed_wall_s']['mean']:.2f}, {b['seed_cpu_s']['mean']:.2f} "
            f"| {efficiency(b):.2f} | {ratio:.2f}x |"
        )
    paired = [d["seeds_per_s"] / j["seeds_per_s"] for j, d in zip(*runs.values(), strict=True)]
    print(
        "dask / --jobs 2, pair by pair: "
        + ", ".join(f"{r:.2f}x" for r in paired)
        + f"; median {statistics.median(paired):.2f}x"
    )
    cpu = statistics.fmean(s["seed_cpu_s"]["mean"] for r in runs.values() for s in r)
    workers = math.ceil(NIGHTLY_SEEDS * cpu / NIGHT_S / efficiency(best[names[1]]))
    print(
        f"nightly: {NIGHTLY_SEEDS:,} seeds x {cpu:.2f} CPU s = {NIGHTLY_SEEDS * cpu:,.0f} "
        f"core-seconds; at the measured Dask efficiency {efficiency(best[names[1]]):.2f}, "
        f"{workers} single-threaded workers (one per core) finish in an hour"
    )


if __name__ == "__main__":
    main()
