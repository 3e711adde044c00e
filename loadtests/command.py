"""`vecmig loadtest`: two sides (fake cluster servers or real engines), the migration service and
Locust with the chaos controller, all on 127.0.0.1, bounded in time, cleaned up on exit, judged
by the checker."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vecmig.harness.cli import (
    EXIT_ANOMALIES,
    EXIT_BAD_INPUT,
    EXIT_INTERNAL,
    EXIT_VALID,
    strategy_argument,
)
from vecmig.harness.clusters.registry import CLUSTER_TOKEN_ENV
from vecmig.harness.extras import require
from vecmig.harness.history.checker import ANOMALIES

from .sides import RunSide, is_cluster_server, is_in_process, refusal, start_side

if TYPE_CHECKING:
    from .chaos import RunPlan

DESCRIPTION = """\
Load-test a live migration end to end: start two sides (old, new: fake cluster servers unless
--old/--new name real engines), the migration service in front of them, and Locust (headless)
with shoppers and merchants; a chaos controller walks the phases through their gates (OLD_ONLY
-> DUAL_WRITE -> BACKFILL -> SHADOW -> CUTOVER), injects faults into the sides and the layer,
and kills the service with SIGKILL mid-backfill and restarts it (it must resume from its SQLite
state). At the end every fault is healed, the repair log drains, both sides are scanned, and
the checker judges the merged history.

real engines (--old/--new take any `vecmig serve` URL, and these, which the run starts itself):
  pgvector://auto       a throwaway PostgreSQL with pgvector, crashed and restarted mid-run
                        while it is the secondary side
  qdrant+local://auto   Qdrant local mode on disk (tmpfs), in the service: killed with it
  milvus+lite://auto    Milvus Lite, in the service: killed with it
Real engines get layer faults (latency, partition) instead of the fake cluster's error rates
and paused replicas; see docs/loadtest.md.

writes DIR/history.jsonl, DIR/report.json (the verdict, ops, phases, faults), DIR/locust_*.csv,
DIR/locust.html and DIR/logs/.
"""

EPILOG = """\
exit codes: 0 valid, 1 anomalies found (or the verdict is unknown), 2 bad input, 3 internal error.

examples:
  vecmig loadtest --duration 60 --users 12 --out out/lt
  vecmig loadtest --duration 60 --strategy naive --out out/lt-naive   # must find anomalies
  vecmig loadtest --old pgvector://auto --new qdrant+local://auto \\
      --duration 45 --users 8 --catalog 1000 --out out/lt-pg-qdrant   # a real migration
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "loadtest",
        help="run the service under Locust load and chaos against two sides, and judge it",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--duration", type=float, default=60.0, metavar="S", help="Locust run time (s)"
    )
    parser.add_argument(
        "--users", type=int, default=12, metavar="N", help="Locust users (3 shoppers : 1 merchant)"
    )
    parser.add_argument("--out", default=None, metavar="DIR", help="default: out/loadtest-TIME")
    parser.add_argument(
        "--strategy",
        default="safe",
        type=strategy_argument,
        metavar="STRATEGY",
        help="safe (default), naive, or safe-without:PROTECTION[,PROTECTION]",
    )
    parser.add_argument("--seed", type=int, default=0, help="catalog and cluster seed")
    parser.add_argument("--catalog", type=int, default=3000, help="products loaded into old")
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--no-chaos", action="store_true", help="no phases, no faults: plain load")
    for name in ("old", "new"):
        parser.add_argument(
            f"--{name}",
            default=None,
            metavar="URL",
            help=f"the {name} side: pgvector://auto, qdrant+local://auto, milvus+lite://auto or "
            "any `vecmig serve` URL (default: a fake cluster server)",
        )
    parser.set_defaults(handler=run)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Processes:
    """Children started in their own process groups, killed as groups on exit."""

    def __init__(self) -> None:
        self.groups: list[int] = []
        self.pid_files: list[Path] = []

    def start(
        self, argv: list[str], log: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:  # the child keeps its own copy
            process = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
            )
        self.groups.append(process.pid)
        return process

    def kill_all(self) -> None:
        groups = list(self.groups)
        for path in self.pid_files:  # a service the chaos controller restarted
            with suppress(OSError, ValueError):
                groups.append(int(path.read_text().strip()))
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for group in groups:
                with suppress(ProcessLookupError, PermissionError):
                    os.killpg(group, sig)
            if sig == signal.SIGTERM:
                time.sleep(0.5)


def wait_healthy(url: str, deadline_s: float, what: str) -> None:
    import httpx

    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer {url} within {deadline_s:.0f}s")


def run(args: argparse.Namespace) -> int:
    require("service", "vecmig loadtest")
    require("loadtest", "vecmig loadtest")
    if args.duration < 20 or args.users < 2 or args.catalog < 100:
        print(
            "vecmig loadtest: needs --duration >= 20, --users >= 2 and --catalog >= 100",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    out = Path(args.out or f"out/loadtest-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    if (out / "report.json").exists() or (out / "history").exists():
        print(f"vecmig loadtest: {out} holds an earlier run; pick another --out", file=sys.stderr)
        return EXIT_BAD_INPUT
    for given in (args.old, args.new):
        problem = given is not None and refusal(given)
        if problem:
            print(f"vecmig loadtest: {problem}", file=sys.stderr)
            return EXIT_BAD_INPUT
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    processes = Processes()
    engines = ExitStack()  # servers and directories the run started, removed after the processes
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        return _run(args, out, logs, processes, engines)
    except KeyboardInterrupt:
        print("vecmig loadtest: interrupted; stopping everything", file=sys.stderr)
        return 130
    except (RuntimeError, LookupError) as exc:
        print(f"vecmig loadtest: {exc} (see {logs})", file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        processes.kill_all()
        engines.close()
        signal.signal(signal.SIGTERM, previous)


def _start_sides(
    args: argparse.Namespace, logs: Path, processes: Processes, engines: ExitStack
) -> dict[str, RunSide]:
    # The cluster servers this run starts take a token, and every process of the run (the
    # loader, the service, Locust and its chaos controller) finds it in the environment.
    os.environ.setdefault(CLUSTER_TOKEN_ENV, secrets.token_urlsafe(16))
    sides: dict[str, RunSide] = {}
    for offset, name in enumerate(("old", "new")):
        given = getattr(args, name)
        if given is not None:
            try:
                sides[name] = start_side(name, given, engines)
            except LookupError as exc:
                from vecmig.harness.clusters.pgserver import INSTALL_HINT

                raise LookupError(f"{name} {given}: {exc}; {INSTALL_HINT}") from None
            except RuntimeError as exc:
                raise RuntimeError(f"{name} {given}: {exc}") from None
            continue
        port = free_port()
        processes.start(
            [
                sys.executable,
                "-m",
                "vecmig",
                "cluster",
                "serve",
                "--dim",
                str(args.dim),
                "--port",
                str(port),
                "--name",
                name,
                "--seed",
                str(args.seed + offset),
                "--latency-ms",
                "1",
            ],
            logs / f"{name}.log",
        )
        sides[name] = RunSide(name, f"http://127.0.0.1:{port}")
    for name, side in sides.items():
        if is_cluster_server(side.url) and not side.given:
            wait_healthy(side.url + "/v1/health", 30, f"cluster server {name}")
    return sides


def _prepare(plan_path: Path, logs: Path, sides: dict[str, RunSide]) -> None:
    """Load the catalog into old, each step in a process of its own, which lets go of an
    in-process engine (Qdrant local mode, Milvus Lite) when it exits, before the service opens
    it; then check from another process that such a side serves once reopened, as it must
    after the service's restart."""
    steps = ["load"] + (["reopen"] if any(is_in_process(s.url) for s in sides.values()) else [])
    log = logs / "loader.log"
    for step in steps:
        with open(log, "ab") as out:
            done = subprocess.run(
                [sys.executable, "-m", "vecmig.loadtests.sides", step, str(plan_path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=300,
                check=False,
            )
        if done.returncode != 0:
            tail = log.read_text(errors="replace")[-1500:]
            raise RuntimeError(f"preparing the sides failed at {step!r}:\n{tail}")


def _run(
    args: argparse.Namespace, out: Path, logs: Path, processes: Processes, engines: ExitStack
) -> int:
    from .chaos import RunPlan

    python = sys.executable
    sides = _start_sides(args, logs, processes, engines)
    ports = {"service": free_port()}
    urls = {"service": f"http://127.0.0.1:{ports['service']}"}
    urls.update({name: side.url for name, side in sides.items()})
    # Only a fake cluster server takes the visibility-lag fault; pgvector and Qdrant answer
    # their own writes at once, and Milvus Lite sides are created with Strong consistency.
    lagged = ["old"] if is_cluster_server(urls["old"]) else []
    token = secrets.token_urlsafe(16)
    env = {**os.environ, "VECMIG_ADMIN_TOKEN": token}
    pid_file = out / "service.pid"
    processes.pid_files.append(pid_file)
    # Pace the backfill to last about a third of the run, so that chaos can kill it midway.
    batch = 50
    pause = max(0.02, batch * 0.3 * args.duration / args.catalog)
    service_argv = [
        python,
        "-m",
        "vecmig",
        "serve",
        "--old",
        urls["old"],
        "--new",
        urls["new"],
        "--dim",
        str(args.dim),
        "--state",
        str(out / "state.sqlite"),
        "--strategy",
        args.strategy,
        "--port",
        str(ports["service"]),
        "--pid-file",
        str(pid_file),
        "--backfill-batch",
        str(batch),
        "--backfill-pause-s",
        f"{pause:.3f}",
        "--backfill-slo-ms",
        "250",
        "--min-mirrored-reads",
        "40",
        "--slo-p99-ms",
        "1000",
        "--soak-s",
        "5",
        "--lagged",
        ",".join(lagged),
        "--visibility-window-s",
        "10",
        "--versions",
        "client",
        "--version-unit",
        "ns",  # VersionClock: wall-clock microseconds times 1000, plus a slot
        "--log-level",
        "warning",
    ]
    plan = RunPlan(
        service=urls["service"],
        admin_token=token,
        old=urls["old"],
        new=urls["new"],
        dim=args.dim,
        seed=args.seed,
        catalog=args.catalog,
        history_dir=str(out / "history"),
        out_dir=str(out),
        duration_s=args.duration,
        chaos=not args.no_chaos,
        restart_argv=service_argv,
        service_pid_file=str(pid_file),
        service_log=str(logs / "service.log"),
        lagged=lagged,
        servers={name: side.server for name, side in sides.items() if side.server},
        catalog_loaded=True,
    )
    plan_path = out / "run.json"
    plan.save(plan_path)
    plan_path.chmod(0o600)  # it holds the admin token
    for name, side in sides.items():
        print(f"vecmig loadtest: {name} {side.url}: {side.describe()}", flush=True)
    _prepare(plan_path, logs, sides)
    processes.start([*service_argv, "--init"], logs / "service.log", env=env)
    wait_healthy(urls["service"] + "/health", 60, "the migration service")
    locustfile = Path(__file__).with_name("locustfile.py")
    locust_argv = [
        python,
        "-m",
        "locust",
        "-f",
        str(locustfile),
        "--headless",
        "-u",
        str(args.users),
        "-r",
        str(args.users),
        "-t",
        f"{int(args.duration)}s",
        "--host",
        urls["service"],
        "--csv",
        str(out / "locust"),
        "--html",
        str(out / "locust.html"),
        "--only-summary",
        "--stop-timeout",
        "5",
        "--vecmig-run",
        str(plan_path),
    ]
    print(
        f"vecmig loadtest: {args.strategy} strategy, {args.users} users for {args.duration:.0f}s, "
        f"catalog {args.catalog}; old {urls['old']}, new {urls['new']}, service {urls['service']}; "
        f"output in {out}",
        flush=True,
    )
    locust = processes.start(locust_argv, logs / "locust.log", env=env)
    stop = threading.Event()
    threading.Thread(target=_echo, args=(logs / "locust.log", stop), daemon=True).start()
    threading.Thread(target=_progress, args=(plan, stop, time.monotonic()), daemon=True).start()
    try:
        code = locust.wait(timeout=args.duration + 180)
    except subprocess.TimeoutExpired:
        locust.kill()
        raise RuntimeError("Locust did not finish in time") from None
    finally:
        time.sleep(0.3)
        stop.set()
    report_path = out / "report.json"
    if not report_path.exists():
        raise RuntimeError(f"Locust exited {code} without a verdict")
    report = json.loads(report_path.read_text())
    _summary(report, out)
    if report["verdict"]["valid"]:
        return EXIT_VALID
    replay = [
        "vecmig",
        "loadtest",
        "--duration",
        f"{args.duration:g}",
        "--users",
        str(args.users),
        "--strategy",
        args.strategy,
        "--seed",
        str(args.seed),
        "--catalog",
        str(args.catalog),
        "--dim",
        str(args.dim),
        *(
            arg
            for name in ("old", "new")
            if sides[name].given
            for arg in (f"--{name}", sides[name].given)
        ),
        "--out",
        str(out) + "-again",
    ]
    print(f"re-judge this history:  vecmig check {shlex.quote(str(out / 'history.jsonl'))}")
    print(f"run it again:           {shlex.join(replay)}")
    return EXIT_ANOMALIES


def _echo(log: Path, stop: threading.Event) -> None:
    """Show the chaos controller's lines from Locust's log as they come."""
    with open(log, encoding="utf-8", errors="replace") as lines:
        while not stop.is_set():
            line = lines.readline()
            if not line:
                time.sleep(0.1)
                continue
            if "[vecmig]" in line:
                print("  " + line.split("[vecmig]", 1)[1].strip(), flush=True)
            elif line.startswith("Traceback") or "Error:" in line:
                print("  locust: " + line.rstrip(), flush=True)


def _progress(plan: RunPlan, stop: threading.Event, started: float) -> None:
    import httpx

    client = httpx.Client(headers={"Authorization": f"Bearer {plan.admin_token}"}, timeout=2.0)
    while not stop.wait(5.0):
        elapsed = time.monotonic() - started
        try:
            s = client.get(plan.service + "/admin/status").json()
        except (httpx.HTTPError, ValueError):
            print(f"  t={elapsed:4.0f}s service unreachable", flush=True)
            continue
        print(
            f"  t={elapsed:4.0f}s {s['phase']:<14} backfill {s['backfill']['copied']:>5}"
            f"{' done' if s['backfill']['done'] else ''}  repair log {s['repair_backlog']:>4}  "
            f"mirrored {s['mirror']['compared']:>4}  fallbacks {s['fallbacks']}",
            flush=True,
        )
    client.close()


def _summary(report: dict[str, Any], out: Path) -> None:
    verdict = report["verdict"]
    ops = ", ".join(f"{f} {counts['invoke']}" for f, counts in report["ops"].items())
    phases = " -> ".join(p["phase"] for p in report["phases"]) or "OLD_ONLY"
    print(f"phases: {phases}")
    print(f"ops: {ops}; faults: {len(report['faults'])}")
    for kind in ANOMALIES:
        print(f"  {kind.replace('_', ' '):<20} {verdict[kind]}")
    for kind, examples in report["examples"].items():
        if examples:
            print(f"  first {kind.replace('_', ' ')}: {json.dumps(examples[0])[:300]}")
    if verdict["stall"]:
        print(f"  stalled: {verdict['stall']['description']}")
    word = "valid" if verdict["valid"] else ("unknown" if verdict["unknown"] else "ANOMALIES")
    print(f"verdict: {word}  (report {out / 'report.json'}, history {out / 'history.jsonl'})")
