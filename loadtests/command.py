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
    EXIT_STALLED,
    EXIT_VALID,
    strategy_argument,
)
from vecmig.harness.clusters.registry import CLUSTER_TOKEN_ENV
from vecmig.harness.extras import require
from vecmig.harness.history.checker import ANOMALIES

from . import fleetrun
from .fleetrun import SPAWNED
from .sides import RunSide, is_cluster_server, is_in_process, refusal, start_side

if TYPE_CHECKING:
    from .chaos import RunPlan

DEFAULT_RATE = 450.0
DEFAULT_INSTANCES = 3

DESCRIPTION = """\
Load-test a live migration end to end: start two sides (old, new: fake cluster servers unless
--old/--new name real engines), the migration service in front of them, and Locust (headless)
with shoppers and merchants; a chaos controller walks the phases through their gates (OLD_ONLY
-> DUAL_WRITE -> BACKFILL -> SHADOW -> CUTOVER), injects faults into the sides and the layer,
and kills the service with SIGKILL mid-backfill and restarts it (it must resume from its SQLite
state). At the end every fault is healed, the repair log drains, both sides are scanned, and
the checker judges the merged history.

A fleet (--instances N, the default): N `vecmig serve` instances and a `vecmig control`
sharing a config store, Locust distributed (--processes workers) at --rate, and chaos aimed at
the fleet: late config on one instance, the controller and one instance SIGKILLed and started
again, one SIGSTOPped past its lease, one cut off from the config store, the config store
restarted, a rolling restart (see docs/loadtest.md).

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
  vecmig loadtest --instances 3 --duration 120 --out out/fleet       # a fleet (the default)
  vecmig loadtest --instances 3 --duration 120 --strategy naive      # must find anomalies
  vecmig loadtest --instances 0 --duration 60 --users 12 --out out/lt   # one standalone service
  vecmig loadtest --old pgvector://auto --new qdrant+local://auto \\
      --duration 45 --users 8 --catalog 1000 --out out/lt-pg-qdrant   # a real migration
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `vecmig loadtest`: one flat list of options in --help's order, longer than a screen
    only because each option's help says what it does."""
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
        "--instances",
        type=int,
        default=None,
        metavar="N",
        help="layer instances, each a `vecmig serve` process of a fleet with its own clock and "
        "lease, coordinated through a config store by `vecmig control` (0: one standalone "
        f"service; default {DEFAULT_INSTANCES}, or 0 when a side runs inside the service's "
        "process: qdrant+local://, milvus+lite://)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=DEFAULT_RATE,
        metavar="OPS",
        help="the arrival rate Locust aims at, requests per second over all users (a fleet)",
    )
    parser.add_argument(
        "--users",
        type=int,
        default=None,
        metavar="N",
        help="Locust users, 3 shoppers : 1 merchant (default: a fleet, --rate / 4; "
        "standalone, 12 users with think times)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=2,
        metavar="P",
        help="Locust worker processes (distributed mode: the master runs the chaos, the "
        "workers the users; 0: one Locust process)",
    )
    parser.add_argument(
        "--config-store",
        default="sqlite",
        metavar="KIND",
        help="a fleet's config store: sqlite (a file on this machine) or postgres (a server "
        "this run starts, crashed and restarted by the chaos)",
    )
    parser.add_argument("--lease-s", type=float, default=6.0, help="a fleet's instance lease")
    parser.add_argument(
        "--max-skew-ms",
        type=float,
        default=200.0,
        help="the clock-skew bound a fleet's leases allow (the chaos skews one instance within it)",
    )
    parser.add_argument(
        "--clock",
        default="monotonic",
        choices=("monotonic", "wall"),
        help="a fleet's history clock: monotonic (one machine: every recorder exact) or wall "
        "(each Locust process sets its wall clock to the controller's and records its error "
        "bound, as workers on other machines must)",
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
        self.spawned: list[Path] = []

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
        for path in self.spawned:  # every member a fleet's chaos controller started again
            with suppress(OSError, ValueError):
                groups += [int(line) for line in path.read_text().split()]
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
    if args.instances is None:
        args.instances = fleetrun.default_instances(args, DEFAULT_INSTANCES)
    if args.users is None and args.instances == 0:
        args.users = 12
    if (
        args.duration < 20
        or (args.users is not None and args.users < 2)
        or args.catalog < 100
        or args.instances < 0
        or args.processes < 0
        or not args.rate > 0
        or (args.clock == "wall" and args.instances < 1)
    ):
        print(
            "vecmig loadtest: needs --duration >= 20, --users >= 2, --catalog >= 100, "
            "--instances >= 0, --processes >= 0 and --rate > 0 (--clock wall: a fleet)",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    problem = fleetrun.refusal(args)
    if problem:
        print(f"vecmig loadtest: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    out = Path(args.out or f"out/loadtest-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    if (out / "report.json").exists() or (out / "history").exists():
        print(f"vecmig loadtest: {out} holds an earlier run; pick another --out", file=sys.stderr)
        return EXIT_BAD_INPUT
    for given in (args.old, args.new):
        problem = refusal(given) if given is not None else None
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

    sides = _start_sides(args, logs, processes, engines)
    fleet = args.instances > 0
    layout = fleetrun.config_store(args, out, engines) if fleet else None
    port = free_port()
    service_url = f"http://127.0.0.1:{port}"
    # Only a fake cluster server takes the visibility-lag fault; pgvector and Qdrant answer
    # their own writes at once, and Milvus Lite sides are created with Strong consistency.
    lagged = ["old"] if is_cluster_server(sides["old"].url) else []
    token = secrets.token_urlsafe(16)
    env = {**os.environ, "VECMIG_ADMIN_TOKEN": token}
    pid_file = out / "service.pid"
    processes.pid_files.append(pid_file)
    state = layout.state_url if layout is not None else str(out / "state.sqlite")
    service_args = _service_args(args, sides, lagged, state)
    service_argv = [sys.executable, "-m", "vecmig", "serve", *service_args]
    service_argv += ["--port", str(port), "--pid-file", str(pid_file)]
    users, user_rate = fleetrun.users_and_rate(args) if fleet else (args.users, 0.0)
    plan = RunPlan(
        service=service_url,
        admin_token=token,
        old=sides["old"].url,
        new=sides["new"].url,
        dim=args.dim,
        seed=args.seed,
        catalog=args.catalog,
        history_dir=str(out / "history"),
        out_dir=str(out),
        duration_s=args.duration,
        chaos=not args.no_chaos,
        restart_argv=[] if fleet else service_argv,
        service_pid_file="" if fleet else str(pid_file),
        service_log=str(logs / "service.log"),
        lagged=lagged,
        servers={name: side.server for name, side in sides.items() if side.server},
        catalog_loaded=True,
        lease_s=args.lease_s,
        user_rate=user_rate,
        clock=args.clock,
    )
    plan_path = out / "run.json"
    for name, side in sides.items():
        print(f"vecmig loadtest: {name} {side.url}: {side.describe()}", flush=True)
    plan.save(plan_path)
    plan_path.chmod(0o600)  # it holds the admin token
    _prepare(plan_path, logs, sides)
    if layout is not None:
        host, where = _start_fleet(args, out, logs, layout, service_args, processes, env, plan)
        plan.save(plan_path)
    else:
        processes.start([*service_argv, "--init"], logs / "service.log", env=env)
        wait_healthy(service_url + "/health", 60, "the migration service")
        host, where = service_url, f"service {service_url}"
    pace = f"aiming at {args.rate:g} req/s, " if user_rate else ""
    print(
        f"vecmig loadtest: {args.strategy} strategy, {users} users ({pace}"
        f"{args.processes or 1} Locust process(es)) for {args.duration:.0f}s, catalog "
        f"{args.catalog}; old {sides['old'].url}, new {sides['new'].url}, {where}; "
        f"output in {out}",
        flush=True,
    )
    locust_argv = _locust_argv(args, users, host, out, plan_path)
    code = _run_locust(locust_argv, args.duration, logs, processes, env, plan)
    report_path = out / "report.json"
    if not report_path.exists():
        raise RuntimeError(f"Locust exited {code} without a verdict")
    return _judged(json.loads(report_path.read_text()), args, sides, out)


def _judged(
    report: dict[str, Any], args: argparse.Namespace, sides: dict[str, RunSide], out: Path
) -> int:
    """Print the run's summary (and, if it is not valid, how to judge and run it again); the
    exit code its verdict earns."""
    _summary(report, out)
    if report["verdict"]["valid"]:
        return EXIT_VALID
    print(f"re-judge this history:  vecmig check {shlex.quote(str(out / 'history.jsonl'))}")
    print(f"run it again:           {shlex.join(_replay_argv(args, sides, out))}")
    verdict = report["verdict"]
    anomalies = verdict["unknown"] or any(verdict[kind] for kind in ANOMALIES)
    return EXIT_STALLED if verdict["stalled"] and not anomalies else EXIT_ANOMALIES


def _service_args(
    args: argparse.Namespace, sides: dict[str, RunSide], lagged: list[str], state: str
) -> list[str]:
    """`vecmig serve`'s options for this run (every instance of a fleet takes the same)."""
    # Pace the backfill to last about a third of the run (standalone: so that chaos can kill
    # it midway), a sixth for a fleet (whose plan holds every phase besides).
    batch = 50
    share = 0.15 if args.instances > 0 else 0.3
    pause = max(0.02, batch * share * args.duration / args.catalog)
    return [
        "--old",
        sides["old"].url,
        "--new",
        sides["new"].url,
        "--dim",
        str(args.dim),
        "--state",
        state,
        "--strategy",
        args.strategy,
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


def _start_fleet(
    args: argparse.Namespace,
    out: Path,
    logs: Path,
    layout: fleetrun.FleetLayout,
    service_args: list[str],
    processes: Processes,
    env: dict[str, str],
    plan: RunPlan,
) -> tuple[str, str]:
    """Start the fleet's instances and controller, and point the plan at them; the URL Locust
    starts from, and a line that says where the fleet is."""
    fleetrun.start(
        args, out, logs, layout, service_args, processes.start, wait_healthy, free_port, env
    )
    processes.pid_files += fleetrun.pid_files(layout)
    processes.spawned.append(out / SPAWNED)
    plan.service = layout.control_url
    plan.instances = layout.instances
    plan.control = layout.control
    plan.config_store = layout.config_store
    where = (
        f"{args.instances} instances ({', '.join(i['url'] for i in layout.instances)}), "
        f"controller {layout.control_url}, config store {layout.config_store['kind']}"
    )
    return layout.instances[0]["url"], where


def _locust_argv(
    args: argparse.Namespace, users: int, host: str, out: Path, plan_path: Path
) -> list[str]:
    locustfile = Path(__file__).with_name("locustfile.py")
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(locustfile),
        "--headless",
        "-u",
        str(users),
        "-r",
        str(users),
        "-t",
        f"{int(args.duration)}s",
        "--host",
        host,
        "--csv",
        str(out / "locust"),
        "--html",
        str(out / "locust.html"),
        "--only-summary",
        "--stop-timeout",
        "5",
        "--vecmig-run",
        str(plan_path),
        *(["--processes", str(args.processes)] if args.processes else []),
    ]


def _run_locust(
    argv: list[str],
    duration_s: float,
    logs: Path,
    processes: Processes,
    env: dict[str, str],
    plan: RunPlan,
) -> int:
    """Run Locust to its end, echoing the chaos controller's lines and the service's progress;
    Locust's exit code."""
    locust = processes.start(argv, logs / "locust.log", env=env)
    stop = threading.Event()
    threading.Thread(target=_echo, args=(logs / "locust.log", stop), daemon=True).start()
    threading.Thread(target=_progress, args=(plan, stop, time.monotonic()), daemon=True).start()
    try:
        return locust.wait(timeout=duration_s + 180)
    except subprocess.TimeoutExpired:
        locust.kill()
        raise RuntimeError("Locust did not finish in time") from None
    finally:
        time.sleep(0.3)
        stop.set()


def _replay_argv(args: argparse.Namespace, sides: dict[str, RunSide], out: Path) -> list[str]:
    """The `vecmig loadtest` command that runs this one again, into a directory of its own."""
    fleet_args = [
        "--instances",
        str(args.instances),
        "--processes",
        str(args.processes),
        "--config-store",
        args.config_store,
        *(["--rate", f"{args.rate:g}"] if args.instances else []),
        *(["--clock", args.clock] if args.clock != "monotonic" else []),
    ]
    return [
        "vecmig",
        "loadtest",
        "--duration",
        f"{args.duration:g}",
        *(["--users", str(args.users)] if args.users else []),
        *fleet_args,
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
    rows = report.get("throughput") or []
    if rows:
        print(f"throughput: {report.get('ops_per_s')} ops/s over the run")
        for r in rows:
            print(
                f"  {r['phase']:<14} {r['seconds']:6.1f} s  {r['ops_per_s']:7.1f} ops/s "
                f"({r['ok_per_s']:.1f} ok/s)  p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms"
            )
    for kind in ANOMALIES:
        print(f"  {kind.replace('_', ' '):<20} {verdict[kind]}")
    for kind, examples in report["examples"].items():
        if examples:
            print(f"  first {kind.replace('_', ' ')}: {json.dumps(examples[0])[:300]}")
    if verdict["stall"]:
        print(f"  stalled: {verdict['stall']['description']}")
    word = "valid" if verdict["valid"] else ("unknown" if verdict["unknown"] else "ANOMALIES")
    print(f"verdict: {word}  (report {out / 'report.json'}, history {out / 'history.jsonl'})")
