"""`vecmig serve` (the migration service) and `vecmig cluster serve` (a fake cluster server)."""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from vecmig.harness.cli import EXIT_BAD_INPUT, EXIT_VALID, strategy_argument
from vecmig.harness.extras import require
from vecmig.harness.tokens import TokenError, is_loopback, read_token_file, token_from

log = logging.getLogger("vecmig.service")

ADMIN_TOKEN_ENV = "VECMIG_ADMIN_TOKEN"

SERVE_DESCRIPTION = """\
Run the migration layer as an HTTP service in front of two sides (old and new), with durable
state in SQLite. A new migration needs --init (a state is never created silently); killed and
restarted with the same --state, it resumes exactly where it was (phase, epoch, backfill
checkpoint, repair log), after checking that state against both sides. One service per state
file: a second one on the same file refuses to start, naming the first.

client endpoints (Content-Type: application/json; 200 ok, 503 failed with no effect, 504
indeterminate, 4xx bad input or refused by policy):
  POST /v1/upsert  {"id", "vector", "metadata"?, "version"}  -> {"id", "version", "result"}
  POST /v1/delete  {"id", "version"}                          -> {"id", "version", "result"}
       result: "applied", or "superseded" (a newer version is kept; nothing changed).
       version: with --versions client (default) every write brings one, e.g. the app's
       updated_at in --version-unit, at most --version-horizon-s ahead of this clock; with
       --versions service none does, and the answer says which version the write got.
  POST /v1/get     {"id"}                    -> {"id", "version"}  (version null: not found)
  POST /v1/search  {"vector", "k"?, "filter"?} -> {"results": [[id, version, score], ...]}
admin endpoints (header 'Authorization: Bearer TOKEN'):
  GET /admin/status, POST /admin/advance | /admin/rollback | /admin/abort | /admin/verify,
  GET|POST /admin/faults {"action": "start"|"stop", "family": "latency"|"partition"|"config-lag",
  "side"?, "ms"?, "seconds"?}, POST /admin/faults/heal
open: GET /health (liveness), GET /ready (both sides, the state store, the lease),
  GET /metrics (Prometheus; names in docs/metrics.md), GET /openapi.json

the admin token: $VECMIG_ADMIN_TOKEN, or --admin-token-file PATH (mode 0600). Without either,
and on loopback only, a random one is written to STATE.admin-token (mode 0600).
"""

SERVE_EPILOG = """\
examples:
  vecmig cluster serve --dim 32 --port 8101 &  vecmig cluster serve --dim 32 --port 8102 &
  VECMIG_ADMIN_TOKEN=s3cret vecmig serve --old http://127.0.0.1:8101 \\
      --new http://127.0.0.1:8102 --dim 32 --state /tmp/mig.sqlite --init --port 8100
  vecmig serve --old 'pgvector://app@db/shop?table=items' \\
      --new 'qdrant://qdrant:6333?collection=items' \\
      --dim 768 --state /var/lib/vecmig/state.sqlite --admin-token-file /etc/vecmig/token
"""

CLUSTER_DESCRIPTION = """\
Serve an in-memory fake HNSW cluster (sharded, replicated, fenced, with switchable faults) over
HTTP, so that the migration service reaches it over a real network path. Faults:
  POST /faults/start {"family", "params"}, POST /faults/stop, POST /faults/heal, GET /faults
families: node-crash, node-pause, error-rate, lost-ack, visibility-lag, index-rebuild,
slow-replica (the fake cluster's) and latency {"ms"} (the server's).

the token: $VECMIG_CLUSTER_TOKEN, or --token-file PATH (mode 0600); every endpoint but
/v1/health and /openapi.json then needs 'Authorization: Bearer TOKEN' (its clients read the
same variable, or ?token_file=PATH in the side's URL). Without a token the server runs open,
and only on loopback.
"""


class Refused(Exception):
    """The command cannot start as asked: the message says why (exit 2)."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="run the migration service (HTTP) in front of an old and a new side",
        description=SERVE_DESCRIPTION,
        epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _serve_arguments(serve)
    _layer_arguments(serve)
    _server_arguments(serve)
    serve.set_defaults(handler=run_serve)

    cluster = subparsers.add_parser(
        "cluster", help="fake cluster servers (see `vecmig cluster serve --help`)"
    )
    cluster_sub = cluster.add_subparsers(dest="cluster_command", metavar="COMMAND")
    cserve = cluster_sub.add_parser(
        "serve",
        help="serve a fake HNSW cluster over HTTP, with fault endpoints",
        description=CLUSTER_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cserve.add_argument("--dim", type=int, required=True)
    cserve.add_argument("--metric", default="cosine", choices=("cosine", "l2", "ip"))
    cserve.add_argument("--shards", type=int, default=2)
    cserve.add_argument("--replicas", type=int, default=2)
    cserve.add_argument("--seed", type=int, default=0)
    cserve.add_argument("--name", default="cluster")
    cserve.add_argument("--latency-ms", type=float, default=0.0, help="base service time per call")
    cserve.add_argument("--host", default="127.0.0.1")
    cserve.add_argument("--port", type=int, default=8101)
    cserve.add_argument("--pid-file", default=None, metavar="PATH")
    cserve.add_argument(
        "--token-file", default=None, metavar="PATH", help="default: $VECMIG_CLUSTER_TOKEN"
    )
    cserve.add_argument(
        "--body-limit", type=int, default=16 << 20, help="bytes (larger bodies get 413)"
    )
    cserve.add_argument("--log-level", default="info")
    _server_arguments(cserve)
    cserve.set_defaults(handler=run_cluster_serve)

    def cluster_help(_: argparse.Namespace) -> int:
        cluster.print_help()
        return EXIT_BAD_INPUT

    cluster.set_defaults(handler=cluster_help)


def _serve_arguments(serve: argparse.ArgumentParser) -> None:
    """The service's sides, state, token and version policy."""
    add = serve.add_argument
    add("--old", required=True, metavar="URL", help="the old side (an open_cluster URL)")
    add("--new", required=True, metavar="URL", help="the new side (an open_cluster URL)")
    add("--dim", type=int, required=True, help="vector dimension")
    add("--metric", default="cosine", choices=("cosine", "l2", "ip"))
    add("--state", required=True, metavar="PATH", help="the SQLite state file")
    add(
        "--init",
        action="store_true",
        help="start a new migration: create the state file (refused if it exists)",
    )
    add(
        "--strategy",
        default="safe",
        type=strategy_argument,
        metavar="STRATEGY",
        help="safe (default), naive, or safe-without:PROTECTION[,PROTECTION]",
    )
    add(
        "--admin-token-file",
        default=None,
        metavar="PATH",
        help=f"the admin token (mode 0600); default ${ADMIN_TOKEN_ENV}",
    )
    add(
        "--versions",
        default="client",
        choices=("client", "service"),
        help="who supplies write versions: every client write, or this service (never both)",
    )
    add(
        "--version-unit",
        default="us",
        choices=("ns", "us", "ms"),
        help="the unit of client versions, since the Unix epoch (for the horizon)",
    )
    add(
        "--version-horizon-s",
        type=float,
        default=300.0,
        help="how far ahead of this service's clock a client version may lie",
    )
    add("--host", default="127.0.0.1", help="beyond loopback only with an explicit token")
    add("--port", type=int, default=8100)
    add("--instance", default=None, help="this instance's name (default svc-PORT)")
    add("--op-log", default=None, metavar="PATH", help="server-side op log (history format)")
    add("--pid-file", default=None, metavar="PATH")
    add("--connect-wait-s", type=float, default=10.0, help="how long to wait for the sides")
    add("--log-level", default="info")


def _layer_arguments(serve: argparse.ArgumentParser) -> None:
    """The migration layer's knobs: leases, backfill, mirrored reads, gates, side bulkheads."""
    add = serve.add_argument
    add("--lease-s", type=float, default=5.0)
    add("--poll-s", type=float, default=0.1, help="config store poll interval")
    add("--backfill-batch", type=int, default=256)
    add("--backfill-slo-ms", type=float, default=50.0, help="throttle's live p99 target")
    add("--backfill-pause-s", type=float, default=0.0, help="minimum pause between batches")
    add("--mirror-rate", type=float, default=0.2)
    add(
        "--mirror-exact-rate",
        type=float,
        default=1.0,
        help="share of mirrored reads that also ask old for the exact top-k (recall)",
    )
    add("--lagged", default="", help="sides whose searches lag, e.g. 'new' or 'old,new'")
    add("--visibility-window-s", type=float, default=2.0)
    add("--min-mirrored-reads", type=int, default=200)
    add("--slo-p99-ms", type=float, default=50.0, help="new's p99 the CUTOVER gate allows")
    add("--soak-s", type=float, default=10.0, help="CUTOVER soak before DECOMMISSIONED")
    add("--max-k", type=int, default=100)
    add("--body-limit", type=int, default=1 << 20, help="bytes (larger bodies get 413)")
    add("--exact-searches", action="store_true", help="add the exact top-k to search answers")
    add("--side-threads", type=int, default=8, help="threads for each side's requests")
    add("--side-queue", type=int, default=64, help="calls that may wait for a side's thread")
    add(
        "--side-deadline-s",
        type=float,
        default=2.0,
        help="how long one side call may take (then Timeout, or Unavailable if never started)",
    )
    add(
        "--switch-interval-ms",
        type=float,
        default=1.0,
        help="the GIL switch interval: short, so side threads and the event loop take turns often",
    )


def _server_arguments(parser: argparse.ArgumentParser) -> None:
    """The HTTP server's parser, loop and limits (see `server.py`)."""
    add = parser.add_argument
    add(
        "--http",
        default="auto",
        choices=("auto", "httptools", "h11"),
        help="uvicorn's HTTP parser (auto: httptools when installed)",
    )
    add(
        "--loop",
        default="auto",
        choices=("auto", "uvloop", "asyncio"),
        help="the event loop (auto: uvloop when installed)",
    )
    add(
        "--header-timeout-s",
        type=float,
        default=10.0,
        help="close a connection that has not sent a whole request's headers in this time",
    )
    add("--keep-alive-s", type=int, default=5, help="close an idle keep-alive connection")
    add(
        "--max-connections",
        type=int,
        default=None,
        help="open connections at most (default: half the file-descriptor limit)",
    )
    add("--max-header-bytes", type=int, default=64 * 1024, help="a request's header block")


def run_serve(args: argparse.Namespace) -> int:
    require("service", "vecmig serve")
    from vecmig.harness.clusters.base import ClusterError
    from vecmig.harness.state import StateError

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    store = None
    try:
        lagged = _lagged(args.lagged)
        config = _service_config(args, lagged)
        token = _admin_token(args)
        sides = _open_sides(args)
        store = _open_state(args)
        _check_resume(args, store, sides)
    except (Refused, StateError, TokenError, ValueError, ClusterError) as exc:
        print(f"vecmig serve: {exc}", file=sys.stderr)
        if store is not None:
            store.close()
            if args.init:  # the state this start created serves nothing: leave no trace
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{args.state}{suffix}").unlink(missing_ok=True)
        return EXIT_BAD_INPUT
    from .app import create_app
    from .migration import Migration

    sys.setswitchinterval(args.switch_interval_ms / 1000.0)
    migration = Migration(config, sides, store)
    status = migration.status()
    log.info(
        "%s migration %s at %s (epoch %s), backfill %s, repair backlog %s; %s",
        "starting new" if args.init else "resuming",
        status["migration"],
        status["phase"],
        status["epoch"],
        status["backfill"],
        status["repair_backlog"],
        status["versions"],
    )
    _write_pid(args.pid_file)
    _warn_if_exposed("vecmig serve", args.host)
    _serve(create_app(migration, token, body_limit=args.body_limit), args)
    return EXIT_VALID


def _lagged(text: str) -> frozenset[Any]:
    from vecmig.harness.clusters.base import Side

    try:
        return frozenset(Side(s.strip()) for s in text.split(",") if s.strip())
    except ValueError:
        raise Refused(f"--lagged takes 'old', 'new' or 'old,new', got {text!r}") from None


def _service_config(args: argparse.Namespace, lagged: frozenset[Any]) -> Any:
    from vecmig.harness.core.gates import GatePolicy
    from vecmig.harness.core.strategy import strategy_named

    from .inputs import VersionPolicy
    from .migration import ServiceConfig

    return ServiceConfig(
        strategy=strategy_named(args.strategy),
        dim=args.dim,
        instance=args.instance or f"svc-{args.port}",
        lease_s=args.lease_s,
        poll_s=args.poll_s,
        backfill_batch=args.backfill_batch,
        backfill_slo_ms=args.backfill_slo_ms,
        backfill_pause_s=args.backfill_pause_s,
        mirror_rate=args.mirror_rate,
        mirror_exact_rate=args.mirror_exact_rate,
        lagged=lagged,
        visibility_window_s=args.visibility_window_s,
        policy=GatePolicy(
            min_mirrored_reads=args.min_mirrored_reads,
            slo_p99_ms=args.slo_p99_ms,
            soak_ns=int(args.soak_s * 1e9),
        ),
        max_k=args.max_k,
        exact_searches=args.exact_searches,
        op_log=args.op_log,
        versions=VersionPolicy(args.versions, args.version_unit, args.version_horizon_s),
        side_threads=args.side_threads,
        side_queue=args.side_queue,
        side_deadline_s=args.side_deadline_s,
    )


def _admin_token(args: argparse.Namespace) -> str:
    """The admin token: from --admin-token-file or the environment; else, on loopback only, a
    random one kept in STATE.admin-token (mode 0600) for the operator's tools to read."""
    token = token_from(args.admin_token_file, ADMIN_TOKEN_ENV)
    if token:
        return token
    if not is_loopback(args.host):
        raise Refused(
            f"--host {args.host} reaches beyond this machine: give the admin token explicitly "
            f"(${ADMIN_TOKEN_ENV} or --admin-token-file)"
        )
    path = Path(f"{args.state}.admin-token")
    if path.exists():
        return read_token_file(path)
    if not path.parent.is_dir():
        raise Refused(f"the state's directory {path.parent} does not exist")
    from vecmig.harness.tokens import write_token_file

    token = secrets.token_urlsafe(24)
    write_token_file(path, token)
    log.warning("no admin token given: wrote a random one to %s (mode 0600)", path)
    return token


def _open_sides(args: argparse.Namespace) -> dict[Any, Any]:
    from vecmig.harness.clusters.base import ClusterError, Side
    from vecmig.harness.clusters.registry import open_cluster

    deadline = time.monotonic() + args.connect_wait_s
    while True:
        try:
            return {
                Side.OLD: open_cluster(args.old, args.dim, args.metric),
                Side.NEW: open_cluster(args.new, args.dim, args.metric),
            }
        except ClusterError as exc:
            if time.monotonic() > deadline:
                raise Refused(f"cannot reach a side: {exc}") from None
            time.sleep(0.2)


def _open_state(args: argparse.Namespace) -> Any:
    from vecmig.harness.state import SQLiteStore

    return SQLiteStore.open(args.state, init=args.init, holder=f"vecmig serve, port {args.port}")


def _check_resume(args: argparse.Namespace, store: Any, sides: dict[Any, Any]) -> None:
    """Check the state against both sides (`resume.resume_problems`) before serving, retrying
    while a side cannot answer, up to --connect-wait-s."""
    from vecmig.harness.clusters.base import ClusterError

    from .resume import resume_problems

    state = store.load()
    deadline = time.monotonic() + args.connect_wait_s
    while True:
        try:
            problems = resume_problems(state, store.migration_id, sides, fresh=args.init)
            break
        except ClusterError as exc:
            if time.monotonic() > deadline:
                raise Refused(
                    f"cannot check the state {args.state} against the sides: {exc}"
                ) from None
            time.sleep(0.2)
    if problems:
        raise Refused(f"the state {args.state} does not match the sides: " + "; ".join(problems))


def _serve(app: Any, args: argparse.Namespace) -> None:
    from .server import ServerLimits, serve

    limits = ServerLimits(
        header_timeout_s=args.header_timeout_s,
        keep_alive_s=args.keep_alive_s,
        max_connections=args.max_connections,
        max_header_bytes=args.max_header_bytes,
    )
    serve(app, args.host, args.port, limits, args.http, args.loop)


def _warn_if_exposed(command: str, host: str) -> None:
    if not is_loopback(host):
        log.warning(
            "%s is bound to %s, reachable beyond this machine, in plain HTTP: the token "
            "crosses the network in the clear unless TLS is put in front",
            command,
            host,
        )


def run_cluster_serve(args: argparse.Namespace) -> int:
    require("service", "vecmig cluster serve")
    from vecmig.harness.clusters.fake import FakeCluster
    from vecmig.harness.clusters.registry import CLUSTER_TOKEN_ENV

    from .cluster_server import ClusterServer

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        token = token_from(args.token_file, CLUSTER_TOKEN_ENV)
        if token is None and not is_loopback(args.host):
            raise Refused(
                f"--host {args.host} reaches beyond this machine: give a token explicitly "
                f"(${CLUSTER_TOKEN_ENV} or --token-file)"
            )
    except (Refused, TokenError) as exc:
        print(f"vecmig cluster serve: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if token is None:
        log.warning("no token: every local user may write to and fault this cluster server")
    cluster = FakeCluster(
        args.dim,
        args.metric,
        shards=args.shards,
        replicas=args.replicas,
        seed=args.seed,
        name=args.name,
    )
    _write_pid(args.pid_file)
    _warn_if_exposed("vecmig cluster serve", args.host)
    server = ClusterServer(cluster, args.latency_ms, token=token, body_limit=args.body_limit)
    _serve(server.app(), args)
    return EXIT_VALID


def _write_pid(path: str | None) -> None:
    if path:
        Path(path).write_text(f"{os.getpid()}\n")
