"""A fleet's throughput: `vecmig loadtest --instances N` for each N given, under the fleet's
chaos, and a table of what each run achieved -- ops/s per phase and over the run, p50 and
p99, failed ops and the verdict. Failed ops are the history's (an op that ended fail or info
after its retries); Locust's failures count every try an instance turned down, retried or not.

    python bench/bench_fleet.py --instances 1 3 6 --duration 120 --out out/bench-fleet
    python bench/bench_fleet.py --instances 3 --rate 300 450 600   # the rate a fleet carries

Every run is a full load test (its own sides, config store, controller and instances), one
after the other; on a shared machine the figures move with whatever else runs (say what did).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def run(out: Path, instances: int, rate: float, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, "-m", "vecmig", "loadtest", "--instances", str(instances)]
    command += ["--duration", f"{args.duration:g}", "--rate", f"{rate:g}", "--out", str(out)]
    command += ["--strategy", args.strategy, *args.extra]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.monotonic() - started
    report_path = out / "report.json"
    if not report_path.exists():
        return {"instances": instances, "rate": rate, "exit": done.returncode, "wall_s": wall}
    report = json.loads(report_path.read_text())
    return {
        "instances": instances,
        "rate": rate,
        "exit": done.returncode,
        "wall_s": round(wall, 1),
        "ops_per_s": report["ops_per_s"],
        "throughput": report["throughput"],
        "failed_ops": sum(t["ops"] - t["ok"] for t in report["throughput"]),
        "locust_failures": _locust_failures(out),
        "valid": report["verdict"]["valid"],
        "anomalies": {k: v for k, v in report["verdict"].items() if isinstance(v, int) and v},
    }


def _locust_failures(out: Path) -> int:
    """Locust's failure count over every request (a retried try counts too)."""
    path = out / "locust_stats.csv"
    if not path.exists():
        return -1
    with open(path, newline="") as rows:
        return sum(
            int(r["Failure Count"]) for r in csv.DictReader(rows) if r["Name"] != "Aggregated"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, nargs="+", default=[1, 3, 6])
    parser.add_argument("--rate", type=float, nargs="+", default=[450.0])
    parser.add_argument("--duration", type=float, default=120.0)
    parser.add_argument("--strategy", default="safe")
    parser.add_argument("--out", default="out/bench-fleet")
    parser.add_argument("extra", nargs="*", help="more `vecmig loadtest` arguments (after --)")
    args = parser.parse_args()
    rows = []
    for instances in args.instances:
        for rate in args.rate:
            out = Path(args.out) / f"i{instances}-r{rate:g}"
            row = run(out, instances, rate, args)
            rows.append(row)
            phases = "  ".join(f"{t['phase']} {t['ops_per_s']}" for t in row.get("throughput", []))
            print(
                f"instances {instances}  rate {rate:g}: {row.get('ops_per_s')} ops/s, "
                f"failed ops {row.get('failed_ops')} (Locust failures, retries included: "
                f"{row.get('locust_failures')}), valid {row.get('valid')}, "
                f"exit {row['exit']}, wall {row['wall_s']} s | {phases}",
                flush=True,
            )
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "bench_fleet.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
