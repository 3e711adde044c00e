"""Throughput and latency through the migration service, against a direct pass-through.

    python bench/bench_service.py [--seconds 20] [--users 16] [--catalog 5000] [--dim 32]
    python bench/bench_service.py --pin --rounds 2 \
        --variant before=/tmp/vecmig-before:no-uvloop --variant after=.

Starts two cluster servers and the service on 127.0.0.1, loads a catalog into old, and runs
Locust (headless, fixed users, no think time) with one mix of requests -- 50% get, 30% search
(k=10), 20% upsert -- against: one cluster server directly (the pass-through), then the service
in OLD_ONLY, SHADOW and CUTOVER. At half of OLD_ONLY's throughput (constant pacing) it measures
p99 in OLD_ONLY and in SHADOW, where writes go to both sides and 20% of searches are mirrored.
Prints a table and writes bench/results/service.json.

Every run also records the CPU time each process spent per request (service, cluster servers,
Locust): unlike req/s, that figure does not move when something else shares the machine.

Side by side: each `--variant NAME=DIR` runs the servers from another checkout DIR (the same
Locust users hit them); `:no-uvloop` hides uvloop and httptools from its servers, as on a
machine without them. With `--rounds N` the variants take turns N times, so that a change in
the machine's load hits them alike; the summary gives each figure's median.
`--pin` runs Locust on CPU 0 and all servers on CPU 1, in the direct runs and the service runs
alike (on two cores: Locust cannot take CPU from the servers, nor they from it).

This file is also the locustfile the runs use (Locust imports it; BENCH_* variables say what
to hit), so that the request mix is written once.
"""

from __future__ import annotations

import contextlib
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

    from vecmig.harness.catalog import Catalog, product_id

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


TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
SHIM = Path(tempfile.gettempdir()) / "vecmig-bench-no-uvloop"


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def children_cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def no_uvloop_shim() -> Path:
    """A directory whose uvloop and httptools fail to import, so that uvicorn's auto choice
    falls back to asyncio and h11 (put first on PYTHONPATH)."""
    SHIM.mkdir(parents=True, exist_ok=True)
    for name in ("uvloop", "httptools"):
        (SHIM / f"{name}.py").write_text(
            f'raise ImportError("{name} hidden by bench_service.py --variant ...:no-uvloop")\n'
        )
    return SHIM


def locust(
    host: str,
    target: str,
    users: int,
    seconds: float,
    rate: float,
    workdir: Path,
    env: dict[str, str],
    name: str,
    cwd: Path,
    pin: list[str],
    servers: dict[str, int],
) -> dict[str, Any]:
    prefix = workdir / name
    run_env = {**env, "BENCH_TARGET": target, "BENCH_RATE": str(rate)}
    argv = [
        *pin,
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
    before = {name: cpu_seconds(pid) for name, pid in servers.items()}
    locust_before = children_cpu_seconds()
    with open(workdir / f"{name}.log", "w") as log:
        subprocess.run(
            argv,
            env=run_env,
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=log,
            check=False,
            timeout=seconds + 60,
        )
    cpu = {name: cpu_seconds(pid) - before[name] for name, pid in servers.items()}
    cpu["locust"] = children_cpu_seconds() - locust_before
    import csv

    with open(f"{prefix}_stats.csv") as stats:
        rows = {row["Name"]: row for row in csv.DictReader(stats)}
    total = rows["Aggregated"]
    requests = max(int(total["Request Count"]), 1)
    return {
        "rps": round(float(total["Requests/s"]), 1),
        "p50_ms": float(total["50%"]),
        "p99_ms": float(total["99%"]),
        "failures": int(total["Failure Count"]),
        "requests": int(total["Request Count"]),
        # Locust's own CPU includes its start-up and catalog generation (~1 s): an upper bound.
        "cpu_ms_per_request": {k: round(v * 1000 / requests, 3) for k, v in cpu.items()},
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


RUNS = ("direct", "OLD_ONLY", "OLD_ONLY_half", "SHADOW", "SHADOW_half", "CUTOVER")


def run_suite(args: Any, code: Path, hide_uvloop: bool, label: str) -> dict[str, Any]:
    """Every run of the benchmark against servers started from checkout `code`."""
    import httpx

    from vecmig.harness.catalog import Catalog
    from vecmig.harness.clusters.remote import RemoteCluster

    workdir = Path(tempfile.mkdtemp(prefix=f"bench-service-{label}-"))
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
    server_env = dict(env)
    if hide_uvloop:
        server_env["PYTHONPATH"] = os.pathsep.join(
            [str(no_uvloop_shim()), str(code), env.get("PYTHONPATH", "")]
        ).rstrip(os.pathsep)
    pin_locust = ["taskset", "-c", "0"] if args.pin else []
    pin_servers = ["taskset", "-c", "1"] if args.pin else []
    groups: list[int] = []
    servers: dict[str, int] = {}

    def start(name: str, argv: list[str]) -> None:
        with open(workdir / f"{name}.log", "w") as log:  # the child keeps its own copy
            process = subprocess.Popen(
                [*pin_servers, *argv],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=server_env,
                cwd=code,
            )
        groups.append(process.pid)
        servers[name] = process.pid

    try:
        for name in ("old", "new"):
            start(
                name,
                [
                    python,
                    "-m",
                    "vecmig",
                    "cluster",
                    "serve",
                    "--dim",
                    str(args.dim),
                    "--port",
                    str(ports[name]),
                    "--name",
                    name,
                ],
            )
            wait_healthy(url[name] + "/v1/health")
        records = Catalog.generate(args.catalog, args.dim, categories=8, seed=0).records()
        old = RemoteCluster(url["old"])
        for i in range(0, len(records), 500):
            old.upsert(records[i : i + 500], fenced=False)
        old.close()
        start(
            "service",
            [
                python,
                "-m",
                "vecmig",
                "serve",
                "--old",
                url["old"],
                "--new",
                url["new"],
                "--dim",
                str(args.dim),
                "--state",
                str(workdir / "state.sqlite"),
                "--init",
                "--version-unit",
                "ns",  # the users' versions are time.time_ns()
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
                        f"could not reach {target}: "
                        f"{admin.get('/admin/status').json()['last_gate']}"
                    )
                admin.post("/admin/advance")
                time.sleep(0.3)

        results: dict[str, Any] = {"code": str(code), "hide_uvloop": hide_uvloop}

        def run(name: str, host: str, target: str, rate: float = 0.0) -> None:
            watched = {k: v for k, v in servers.items() if target == "service" or k == "old"}
            results[name] = r = locust(
                host,
                target,
                args.users,
                args.seconds,
                rate,
                workdir,
                env,
                name,
                code,
                pin_locust,
                watched,
            )
            cpu = "  ".join(f"{k} {v:.3f}" for k, v in r["cpu_ms_per_request"].items())
            print(
                f"  {label:<10} {name:<14} {r['rps']:>7.1f} req/s  p50 {r['p50_ms']:>5.1f} ms  "
                f"p99 {r['p99_ms']:>5.1f} ms  fail {r['failures']}  CPU ms/req: {cpu}",
                flush=True,
            )

        run("direct", url["old"], "direct")
        run("OLD_ONLY", url["service"], "service")
        if args.quick:
            return results
        half = results["OLD_ONLY"]["rps"] / 2 / args.users
        run("OLD_ONLY_half", url["service"], "service", half)
        advance_to("DUAL_WRITE")
        advance_to("BACKFILL")
        advance_to("SHADOW")
        run("SHADOW", url["service"], "service")
        run("SHADOW_half", url["service"], "service", half)
        advance_to("CUTOVER")
        run("CUTOVER", url["service"], "service")
        results["ratios"] = ratios(results)
        print(f"  {label:<10} {json.dumps(results['ratios'])}", flush=True)
        return results
    finally:
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGTERM)


def ratios(r: dict[str, Any]) -> dict[str, float]:
    direct = r["direct"]["rps"]
    return {
        "OLD_ONLY_vs_direct_rps": round(r["OLD_ONLY"]["rps"] / direct, 3),
        "CUTOVER_vs_direct_rps": round(r["CUTOVER"]["rps"] / direct, 3),
        "SHADOW_vs_OLD_ONLY_p99_at_half_load": round(
            r["SHADOW_half"]["p99_ms"] / max(r["OLD_ONLY_half"]["p99_ms"], 1e-9), 3
        ),
    }


def summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the rounds."""
    from statistics import median

    out: dict[str, Any] = {}
    for run in RUNS:
        if run not in rounds[0]:
            continue
        out[run] = {key: median(r[run][key] for r in rounds) for key in ("rps", "p50_ms", "p99_ms")}
        out[run]["cpu_ms_per_request"] = {
            proc: round(median(r[run]["cpu_ms_per_request"][proc] for r in rounds), 3)
            for proc in rounds[0][run]["cpu_ms_per_request"]
        }
    if "ratios" in rounds[0]:
        out["ratios"] = {
            key: median(r["ratios"][key] for r in rounds) for key in rounds[0]["ratios"]
        }
    return out


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--catalog", type=int, default=5000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--service-args", default="", help="extra `vecmig serve` arguments")
    parser.add_argument("--quick", action="store_true", help="only direct and OLD_ONLY")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=DIR[:no-uvloop]",
        help="servers from checkout DIR (repeat to compare; default: this checkout)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="turns each variant takes")
    parser.add_argument("--pin", action="store_true", help="Locust on CPU 0, every server on CPU 1")
    parser.add_argument("--out", default=str(HERE.parent / "results" / "service.json"))
    args = parser.parse_args(argv)

    variants: list[tuple[str, Path, bool]] = []
    for spec in args.variant or [f"this={HERE.parent.parent}"]:
        name, _, rest = spec.partition("=")
        path, _, flag = rest.partition(":")
        if not name or not path or flag not in ("", "no-uvloop"):
            parser.error(f"--variant takes NAME=DIR or NAME=DIR:no-uvloop, got {spec!r}")
        variants.append((name, Path(path).resolve(), flag == "no-uvloop"))

    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in variants}
    for round_number in range(args.rounds):
        print(f"round {round_number + 1} of {args.rounds}", flush=True)
        for name, code, hide in variants:
            rounds[name].append(run_suite(args, code, hide, name))
    results: dict[str, Any] = {
        "users": args.users,
        "seconds": args.seconds,
        "catalog": args.catalog,
        "dim": args.dim,
        "pin": args.pin,
        "service_args": args.service_args,
        "variants": {
            name: {
                "code": str(code),
                "hide_uvloop": hide,
                "median": summary(rounds[name]),
                "rounds": rounds[name],
            }
            for name, code, hide in variants
        },
    }
    if not args.quick:
        for name in rounds:
            print(f"{name}: {json.dumps(results['variants'][name]['median']['ratios'])}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
