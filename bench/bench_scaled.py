"""Wall time and peak memory of a scaled simulation (by default scenarios/prod-10m.toml: 10M
products, ~800 requests a second), split into building the sides and running the traffic, with
the headline figures the report gives.

Run: python bench/bench_scaled.py [SCENARIO] [--duration S] [--seed N]
A whole simulated hour (the scenario's duration) takes tens of minutes of wall time on one
core; `--duration` measures a slice of it (bench/README.md says what was measured).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import time

from vecmig.sim.report import headline, latency_by_phase
from vecmig.sim.scenario import load
from vecmig.sim.simulation import Simulation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scenario", nargs="?", default="prod-10m")
    parser.add_argument("--duration", type=float, default=None, help="simulated seconds")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    scenario = load(args.scenario)
    if args.duration is not None:
        scenario = dataclasses.replace(scenario, duration_s=args.duration)
    started = time.perf_counter()
    sim = Simulation(scenario, "safe", args.seed)
    built = time.perf_counter()
    result = sim.run()
    finished = time.perf_counter()
    client_ops = len(result.completed)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    figures = {
        "scenario": scenario.name,
        "simulated_s": round(result.sim_end_ns / 1e9, 1),
        "build_s": round(built - started, 2),
        "run_s": round(finished - built, 2),
        "client_ops": client_ops,
        "client_ops_per_wall_s": round(client_ops / (finished - built)),
        "peak_rss_mb": round(peak_mb),
        "end_phase": result.end_phase,
        "verdict_valid": result.verdict.valid,
        "anomalies": result.verdict.counts(),
        "stalled": result.verdict.stalled,
        "headline": headline(result),
        "backfill_copied": result.backfill["copied"],
        "latency_ms": latency_by_phase(result),
        "service": result.fidelity.get("service"),
    }
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
