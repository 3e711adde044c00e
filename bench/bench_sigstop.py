"""A hung side in every phase: SIGSTOP of one side's server, and the other side's reads.

    python bench/bench_sigstop.py [--window-s 10] [--catalog 3000] [--dim 32]

Starts two cluster servers and the migration service on 127.0.0.1, loads a catalog into old,
and keeps a steady load on the service: reader threads (60% get, 40% search k=10) and writer
threads (upserts of catalog ids, client versions in ns). In each phase from OLD_ONLY to
CUTOVER, for each side in turn: `--window-s` of normal load, then the side's server is
SIGSTOPped for `--window-s` (a hung machine: connections open, nothing answers), then
SIGCONT and a pause while the repair log drains; `--rounds` such pairs where the other side
serves the phase's reads.

Two figures per window, normal vs stopped:
* the other side's read p99: reads the service's side calls got answered by the side that was
  not stopped (its own latency window, from /admin/status);
* the client's read p99 and failed reads, when the other side is the phase's read side (a
  stopped read side is a different matter: reads fail, or fall back after the side deadline).

The claim of issue 13: the other side's read p99 stays within 2x of normal. Prints a table and
writes bench/results/sigstop.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from vecmig.harness.catalog import Catalog, product_id
from vecmig.harness.clusters.remote import RemoteCluster

PHASES = ("OLD_ONLY", "DUAL_WRITE", "BACKFILL", "SHADOW", "CUTOVER")
READ_SIDE = {"OLD_ONLY": "old", "DUAL_WRITE": "old", "BACKFILL": "old", "SHADOW": "old"}
ADMIN, CLUSTER = "bench-admin", "bench-cluster"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Client:
    """One keep-alive connection to the service."""

    def __init__(self, port: int, token: str | None = None) -> None:
        self.port = port
        self.headers = {"Content-Type": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def call(self, method: str, path: str, body: Any = None, tries: int = 1) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        for _ in range(tries):
            try:
                self.connection.request(method, path, body=data, headers=self.headers)
                response = self.connection.getresponse()
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
            except (OSError, http.client.HTTPException):
                self.connection.close()
                self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        return 0, None

    def admin(self, method: str, path: str) -> Any:
        """An admin call, tried again on a connection the server closed while idle."""
        status, answer = self.call(method, path, tries=3)
        if answer is None:
            raise RuntimeError(f"{method} {path}: no answer (status {status})")
        return answer


class Load:
    """Reader and writer threads; reads are logged as (start time, ms, ok), and a window
    counts the reads that started in it."""

    def __init__(self, port: int, catalog: Catalog, readers: int, writers: int) -> None:
        self.port = port
        self.catalog = catalog
        self.records = catalog.records()
        self.stop = threading.Event()
        self.reads: list[tuple[float, float, bool]] = []
        self.threads = [
            threading.Thread(target=self._reader, args=(i,), daemon=True) for i in range(readers)
        ] + [threading.Thread(target=self._writer, args=(i,), daemon=True) for i in range(writers)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def _reader(self, seed: int) -> None:
        import numpy as np

        client, rng = Client(self.port), random.Random(seed)
        np_rng = np.random.default_rng(seed)
        while not self.stop.is_set():
            if rng.random() < 0.6:
                body: Any = {"id": product_id(rng.randrange(len(self.records)))}
                path = "/v1/get"
            else:
                path = "/v1/search"
                body = {"vector": self.catalog.query_vector(np_rng).tolist(), "k": 10}
            start = time.monotonic()
            status, _ = client.call("POST", path, body)
            end = time.monotonic()
            self.reads.append((start, (end - start) * 1000, status == 200))
            time.sleep(0.02)

    def _writer(self, seed: int) -> None:
        client, rng = Client(self.port), random.Random(1000 + seed)
        while not self.stop.is_set():
            record = self.records[rng.randrange(len(self.records))]
            body = {
                "id": record.id,
                "vector": record.vector.tolist(),
                "metadata": dict(record.metadata),
                "version": time.time_ns(),
            }
            client.call("POST", "/v1/upsert", body)
            time.sleep(0.1)

    def pooled(self, windows: list[tuple[float, float]]) -> dict[str, Any]:
        """Reads that started in any of `windows`: how many, how many failed, the p99 of the
        answered ones."""
        rows = [r for r in list(self.reads) if any(a <= r[0] < b for a, b in windows)]
        answered = sorted(ms for _, ms, ok in rows if ok)
        p99 = answered[min(len(answered) - 1, int(len(answered) * 0.99))] if answered else None
        return {"reads": len(rows), "failed": sum(1 for r in rows if not r[2]), "p99_ms": p99}


def start_servers(args: argparse.Namespace, workdir: Path) -> tuple[dict[str, Any], list[Any]]:
    env = {**os.environ, "VECMIG_CLUSTER_TOKEN": CLUSTER, "VECMIG_ADMIN_TOKEN": ADMIN}
    ports = {name: free_port() for name in ("old", "new", "service")}
    processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(name: str, argv: list[str]) -> None:
        with open(workdir / f"{name}.log", "wb") as log:  # the child keeps its own copy
            processes[name] = subprocess.Popen(
                [sys.executable, "-m", "vecmig", *argv, "--port", str(ports[name])],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )

    for name in ("old", "new"):
        start(name, ["cluster", "serve", "--dim", str(args.dim), "--name", name])
    for name in ("old", "new"):
        _wait(f"http://127.0.0.1:{ports[name]}/v1/health")
    old = RemoteCluster(f"http://127.0.0.1:{ports['old']}", token=CLUSTER)
    records = Catalog.generate(args.catalog, args.dim, categories=8, seed=0).records()
    for i in range(0, len(records), 500):
        old.upsert(records[i : i + 500], fenced=False)
    batch = 25
    pause = max(0.05, batch * 2 * len(PHASES) * args.window_s / args.catalog)
    start(
        "service",
        ["serve", "--old", f"http://127.0.0.1:{ports['old']}"]
        + ["--new", f"http://127.0.0.1:{ports['new']}", "--dim", str(args.dim)]
        + ["--state", str(workdir / "state.sqlite"), "--init", "--version-unit", "ns"]
        + ["--min-mirrored-reads", "0", "--soak-s", "0", "--slo-p99-ms", "100000"]
        + ["--backfill-batch", str(batch), "--backfill-pause-s", f"{pause:.3f}"]
        + ["--backfill-slo-ms", "100000", "--mirror-exact-rate", "0", "--log-level", "warning"],
    )
    _wait(f"http://127.0.0.1:{ports['service']}/ready")
    return {"ports": ports, "pids": {n: p.pid for n, p in processes.items()}}, list(
        processes.values()
    )


def _wait(url: str) -> None:
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def advance_to(admin: Client, target: str) -> None:
    deadline = time.monotonic() + 300
    while admin.admin("GET", "/admin/status")["phase"] != target:
        if time.monotonic() > deadline:
            raise RuntimeError(f"could not reach {target}")
        admin.admin("POST", "/admin/advance")
        time.sleep(0.3)


def measure(
    args: argparse.Namespace, load: Load, admin: Client, pid: int, phase: str, stopped: str
) -> dict[str, Any]:
    """Normal and stopped windows, `--rounds` pairs where the other side serves the phase's
    reads (the claim; a shared machine's noise is of the same order as the effect, so one
    pair says little), one pair elsewhere."""
    other = "new" if stopped == "old" else "old"
    serves = READ_SIDE.get(phase, "new") == other
    normal: list[tuple[float, float]] = []
    hung: list[tuple[float, float]] = []
    side: dict[str, list[float | None]] = {"normal": [], "stopped": []}
    for _ in range(args.rounds if serves else 1):
        t0 = time.monotonic()
        time.sleep(args.window_s)
        t1 = time.monotonic()
        side["normal"].append(admin.admin("GET", "/admin/status")["sides"][other]["read_p99_ms"])
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(args.window_s)
            t2 = time.monotonic()
            status = admin.admin("GET", "/admin/status")
            side["stopped"].append(status["sides"][other]["read_p99_ms"])
        finally:
            os.kill(pid, signal.SIGCONT)
        normal.append((t0, t1))
        hung.append((t1, t2))
        time.sleep(args.settle_s)  # reads started while stopped finish before the next window
        deadline = time.monotonic() + 60  # and the repair log drains
        while admin.admin("GET", "/admin/status")["repair_backlog"] and time.monotonic() < deadline:
            time.sleep(0.2)
    return {
        "phase": phase,
        "stopped": stopped,
        "other": other,
        "rounds": len(normal),
        "other_read_p99_ms": {k: _median(v) for k, v in side.items()},
        "other_read_p99_ms_each": side,
        "client": {"normal": load.pooled(normal), "stopped": load.pooled(hung)},
        "other_serves_reads": serves,
    }


def _median(values: list[float | None]) -> float | None:
    known = sorted(v for v in values if v is not None)
    return known[len(known) // 2] if known else None


def ratio(pair: dict[str, Any]) -> float | None:
    if pair["normal"] in (None, 0) or pair["stopped"] is None:
        return None
    return float(pair["stopped"]) / float(pair["normal"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window-s", type=float, default=10.0)
    parser.add_argument("--catalog", type=int, default=3000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--readers", type=int, default=6)
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument("--settle-s", type=float, default=5.0, help="pause after each SIGCONT")
    parser.add_argument(
        "--rounds", type=int, default=3, help="normal/stopped pairs where the claim applies"
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-sigstop-"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up on kill, too
    servers, processes = start_servers(args, workdir)
    rows: list[dict[str, Any]] = []
    try:
        port = servers["ports"]["service"]
        admin = Client(port, ADMIN)
        catalog = Catalog.generate(args.catalog, args.dim, categories=8, seed=0)
        load = Load(port, catalog, args.readers, args.writers)
        load.start()
        for phase in PHASES:
            advance_to(admin, phase)
            for stopped in ("new", "old"):
                row = measure(args, load, admin, servers["pids"][stopped], phase, stopped)
                rows.append(row)
                print(_line(row), flush=True)
        load.stop.set()
    finally:
        for process in processes:
            os.kill(process.pid, signal.SIGCONT)
            process.terminate()
    out = Path(__file__).resolve().parent / "results" / "sigstop.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n")
    print(f"wrote {out} (logs in {workdir})")
    return 0


def _line(row: dict[str, Any]) -> str:
    side = row["other_read_p99_ms"]
    client = row["client"]
    other_ratio = ratio(side)
    served = (
        f"client read p99 {client['normal']['p99_ms']:.1f} -> "
        f"{client['stopped']['p99_ms']:.1f} ms, "
        f"failed {client['normal']['failed']} -> {client['stopped']['failed']}"
        if row["other_serves_reads"] and client["stopped"]["p99_ms"] is not None
        else f"(stopped side serves the reads: failed {client['stopped']['failed']} "
        f"of {client['stopped']['reads']})"
    )
    shown = "n/a" if other_ratio is None else f"{other_ratio:.2f}x"
    return (
        f"{row['phase']:<11} stop {row['stopped']:<3}  {row['other']} side read p99 "
        f"{side['normal']} -> {side['stopped']} ms ({shown});  {served}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
