"""Throughput and latency through the migration service, against a direct pass-through.

    python bench/bench_service.py [--seconds 20] [--users 16] [--catalog 5000] [--dim 32]

Starts two cluster servers and the service on 127.0.0.1, loads a catalog into old, and runs
Locust (headless, fixed users, no think time) with one mix of requests -- 50% get, 30% search
(k=10), 20% upsert -- against: one cluster server directly (the pass-through), then the service
in OLD_ONLY, SHADOW and CUTOVER. At half of OLD_ONLY's throughput (constant pacing) it measures
p99 in OLD_ONLY and in SHADOW, where writes go to both sides and 20% of searches are mirrored.
Prints a table and writes bench/results/service.json.

This file is also the locustfile the runs use (Locust imports it; BENCH_* variables say what
to hit), so that the request mix is written once.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()

if __name__ != "__main__":  # imported by Locust: the users
    import random

    import numpy as np
    from locust import FastHttpUser, constant, constant_throughput, task

    from harness.catalog import Catalog, product_id

    TARGET = os.environ.get("BENCH_TARGET", "service")
    DIM = int(os.environ.get("BENCH_DIM", "32"))
    CATALOG = int(os.environ.get("BENCH_CATALOG", "5000"))
    RATE = float(os.environ.get("BENCH_RATE", "0"))
    _catalog = Catalog.generate(CATALOG, DIM, categories=8, seed=0)
    _vectors = [r.vector.tolist() for r in _catalog.records()]

    class BenchUser(FastHttpUser):
        wait_time = constant_throughput(RATE) if RATE > 0 else constant(0)
        network_timeout = 30.0

        def on_start(self) -> None:
            self.rng = random.Random(id(self))
            self.np_rng = np.random.default_rng(id(self) % (2**32))

        @task(5)
        def get(self) -> None:
            record_id = product_id(self.rng.randrange(CATALOG))
            body = {"ids": [record_id]} if TARGET == "direct" else {"id": record_id}
            self.client.post("/v1/get", json=body, name="get")

        @task(3)
        def search(self) -> None:
            vector = _catalog.query_vector(self.np_rng).tolist()
            self.client.post("/v1/search", json={"vector": vector, "k": 10}, name="search")

        @task(2)
        def upsert(self) -> None:
            n = self.rng.randrange(CATALOG)
            record = {
                "id": product_id(n),
                "vector": _vectors[n],
                "metadata": {"category": n % 8, "in_stock": True, "price": 9.99},
                "version": time.time_ns(),
            }
            if TARGET == "direct":
                self.client.post(
                    "/v1/upsert", json={"records": [record], "fenced": True}, name="upsert"
                )
            else:
                self.client.post("/v1/upsert", json=record, name="upsert")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, seconds: float = 30) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def locust(
    host: str,
    target: str,
    users: int,
    seconds: float,
    rate: float,
    workdir: Path,
    env: dict[str, str],
    name: str,
) -> dict[str, Any]:
    prefix = workdir / name
    run_env = {**env, "BENCH_TARGET": target, "BENCH_RATE": str(rate)}
    argv = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(HERE),
        "--headless",
        "-u",
        str(users),
        "-r",
        str(users),
        "-t",
        f"{int(seconds)}s",
        "--host",
        host,
        "--csv",
        str(prefix),
        "--only-summary",
        "--stop-timeout",
        "2",
    ]
    subprocess.run(
        argv,
        env=run_env,
        stdout=subprocess.DEVNULL,
        stderr=open(workdir / f"{name}.log", "w"),
        check=False,
        timeout=seconds + 60,
    )
    import csv

    with open(f"{prefix}_stats.csv") as stats:
        rows = {row["Name"]: row for row in csv.DictReader(stats)}
    total = rows["Aggregated"]
    return {
        "rps": round(float(total["Requests/s"]), 1),
        "p50_ms": float(total["50%"]),
        "p99_ms": float(total["99%"]),
        "failures": int(total["Failure Count"]),
        "requests": int(total["Request Count"]),
        "per_op": {
            op: {
                "rps": round(float(rows[op]["Requests/s"]), 1),
                "p50_ms": float(rows[op]["50%"]),
                "p99_ms": float(rows[op]["99%"]),
            }
            for op in ("get", "search", "upsert")
            if op in rows
        },
    }


def main(argv: list[str]) -> int:
    import argparse

    import httpx

    from harness.catalog import Catalog
    from harness.clusters.remote import RemoteCluster

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--catalog", type=int, default=5000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--service-args", default="", help="extra `vecmig serve` arguments")
    parser.add_argument("--quick", action="store_true", help="only direct and OLD_ONLY")
    parser.add_argument("--out", default=str(HERE.parent / "results" / "service.json"))
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="bench-service-"))
    python = sys.executable
    ports = {name: free_port() for name in ("old", "new", "service")}
    url = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    token = secrets.token_urlsafe(12)
    env = {
        **os.environ,
        "VECMIG_ADMIN_TOKEN": token,
        "BENCH_DIM": str(args.dim),
        "BENCH_CATALOG": str(args.catalog),
    }
    groups: list[int] = []

    def start(argv: list[str], log: str) -> None:
        process = subprocess.Popen(
            argv,
            stdout=open(workdir / log, "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
        groups.append(process.pid)

    try:
        for name in ("old", "new"):
            start(
                [
                    python,
                    "-m",
                    "harness",
                    "cluster",
                    "serve",
                    "--dim",
                    str(args.dim),
                    "--port",
                    str(ports[name]),
                    "--name",
                    name,
                ],
                f"{name}.log",
            )
            wait_healthy(url[name] + "/v1/health")
        records = Catalog.generate(args.catalog, args.dim, categories=8, seed=0).records()
        old = RemoteCluster(url["old"])
        for i in range(0, len(records), 500):
            old.upsert(records[i : i + 500], fenced=False)
        start(
            [
                python,
                "-m",
                "harness",
                "serve",
                "--old",
                url["old"],
                "--new",
                url["new"],
                "--dim",
                str(args.dim),
                "--state",
                str(workdir / "state.sqlite"),
                "--port",
                str(ports["service"]),
                "--min-mirrored-reads",
                "0",
                "--slo-p99-ms",
                "100000",
                "--backfill-slo-ms",
                "100000",
                "--log-level",
                "warning",
                *args.service_args.split(),
            ],
            "service.log",
        )
        wait_healthy(url["service"] + "/health")
        admin = httpx.Client(
            base_url=url["service"], headers={"Authorization": f"Bearer {token}"}, timeout=60
        )

        def advance_to(target: str) -> None:
            deadline = time.monotonic() + 120
            while admin.get("/admin/status").json()["phase"] != target:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"could not reach {target}: {admin.get('/admin/status').json()['last_gate']}"
                    )
                admin.post("/admin/advance")
                time.sleep(0.3)

        results: dict[str, Any] = {
            "users": args.users,
            "seconds": args.seconds,
            "catalog": args.catalog,
            "dim": args.dim,
        }

        def run(name: str, host: str, target: str, rate: float = 0.0) -> None:
            print(f"  {name} ...", flush=True)
            results[name] = locust(host, target, args.users, args.seconds, rate, workdir, env, name)
            r = results[name]
            print(
                f"  {name:<18} {r['rps']:>8.1f} req/s  p50 {r['p50_ms']:>6.1f} ms  p99 {r['p99_ms']:>6.1f} ms  failures {r['failures']}",
                flush=True,
            )

        run("direct", url["old"], "direct")
        run("OLD_ONLY", url["service"], "service")
        if args.quick:
            return 0
        half = results["OLD_ONLY"]["rps"] / 2 / args.users
        run("OLD_ONLY_half", url["service"], "service", half)
        advance_to("DUAL_WRITE")
        advance_to("BACKFILL")
        advance_to("SHADOW")
        run("SHADOW", url["service"], "service")
        run("SHADOW_half", url["service"], "service", half)
        advance_to("CUTOVER")
        run("CUTOVER", url["service"], "service")
        direct = results["direct"]["rps"]
        results["ratios"] = {
            "OLD_ONLY_vs_direct_rps": round(results["OLD_ONLY"]["rps"] / direct, 3),
            "CUTOVER_vs_direct_rps": round(results["CUTOVER"]["rps"] / direct, 3),
            "SHADOW_vs_OLD_ONLY_p99_at_half_load": round(
                results["SHADOW_half"]["p99_ms"] / max(results["OLD_ONLY_half"]["p99_ms"], 1e-9), 3
            ),
        }
        print(json.dumps(results["ratios"], indent=2))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.out}; logs in {workdir}")
        return 0
    finally:
        for group in groups:
            try:
                os.killpg(group, signal.SIGTERM)
            except ProcessLookupError:
                pass


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
