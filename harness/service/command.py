"""`vecmig serve` (the migration service) and `vecmig cluster serve` (a fake cluster server)."""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
import time
from pathlib import Path

from vecmig.harness.cli import EXIT_BAD_INPUT, EXIT_VALID, strategy_argument

SERVE_DESCRIPTION = """\
Run the migration layer as an HTTP service in front of two sides (old and new), with durable
state in SQLite: killed and restarted with the same --state, it resumes exactly where it was
(phase, epoch, backfill checkpoint, repair log).

client endpoints (JSON bodies; 200 ok, 503 failed with no effect, 504 indeterminate, 4xx bad input):
  POST /v1/upsert  {"id", "vector", "metadata"?, "version"?}   version: the app's updated_at
  POST /v1/delete  {"id", "version"?}
  POST /v1/get     {"id"}                    -> {"id", "version"}  (version null: not found)
  POST /v1/search  {"vector", "k"?, "filter"?} -> {"results": [[id, version, score], ...]}
admin endpoints (header 'Authorization: Bearer TOKEN'):
  GET /admin/status, POST /admin/advance | /admin/rollback | /admin/abort | /admin/verify,
  GET|POST /admin/faults {"action": "start"|"stop", "family": "latency"|"partition"|"config-lag",
  "side"?, "ms"?, "seconds"?}, POST /admin/faults/heal
open: GET /health, GET /metrics (Prometheus)
"""

SERVE_EPILOG = """\
examples:
  vecmig cluster serve --dim 32 --port 8101 &  vecmig cluster serve --dim 32 --port 8102 &
  vecmig serve --old http://127.0.0.1:8101 --new http://127.0.0.1:8102 --dim 32 \\
      --state /tmp/mig.sqlite --admin-token s3cret --port 8100
  vecmig serve --old 'pgvector://app@db/shop?table=items' --new 'qdrant://qdrant:6333?collection=items' \\
      --dim 768 --state /var/lib/vecmig/state.sqlite
"""

CLUSTER_DESCRIPTION = """\
Serve an in-memory fake HNSW cluster (sharded, replicated, fenced, with switchable faults) over
HTTP, so that the migration service reaches it over a real network path. Faults:
  POST /faults/start {"family", "params"}, POST /faults/stop, POST /faults/heal, GET /faults
families: node-crash, node-pause, error-rate, lost-ack, visibility-lag, index-rebuild,
slow-replica (the fake cluster's) and latency {"ms"} (the server's).
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="run the migration service (HTTP) in front of an old and a new side",
        description=SERVE_DESCRIPTION,
        epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument(
        "--old", required=True, metavar="URL", help="the old side (an open_cluster URL)"
    )
    serve.add_argument(
        "--new", required=True, metavar="URL", help="the new side (an open_cluster URL)"
    )
    serve.add_argument("--dim", type=int, required=True, help="vector dimension")
    serve.add_argument("--metric", default="cosine", choices=("cosine", "l2", "ip"))
    serve.add_argument("--state", required=True, metavar="PATH", help="the SQLite state file")
    serve.add_argument(
        "--strategy",
        default="safe",
        type=strategy_argument,
        metavar="STRATEGY",
        help="safe (default), naive, or safe-without:PROTECTION[,PROTECTION]",
    )
    serve.add_argument("--admin-token", default=None, help="default: $VECMIG_ADMIN_TOKEN")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8100)
    serve.add_argument("--instance", default=None, help="this instance's name (default svc-PORT)")
    serve.add_argument("--lease-s", type=float, default=5.0)
    serve.add_argument("--poll-s", type=float, default=0.1, help="config store poll interval")
    serve.add_argument("--backfill-batch", type=int, default=256)
    serve.add_argument(
        "--backfill-slo-ms", type=float, default=50.0, help="throttle's live p99 target"
    )
    serve.add_argument(
        "--backfill-pause-s", type=float, default=0.0, help="minimum pause between batches"
    )
    serve.add_argument("--mirror-rate", type=float, default=0.2)
    serve.add_argument(
        "--mirror-exact-rate",
        type=float,
        default=1.0,
        help="share of mirrored reads that also ask old for the exact top-k (recall)",
    )
    serve.add_argument(
        "--lagged", default="", help="sides whose searches lag, e.g. 'new' or 'old,new'"
    )
    serve.add_argument("--visibility-window-s", type=float, default=2.0)
    serve.add_argument("--min-mirrored-reads", type=int, default=200)
    serve.add_argument(
        "--slo-p99-ms", type=float, default=50.0, help="new's p99 the CUTOVER gate allows"
    )
    serve.add_argument(
        "--soak-s", type=float, default=10.0, help="CUTOVER soak before DECOMMISSIONED"
    )
    serve.add_argument("--max-k", type=int, default=100)
    serve.add_argument(
        "--body-limit", type=int, default=1 << 20, help="bytes (larger bodies get 413)"
    )
    serve.add_argument(
        "--exact-searches", action="store_true", help="add the exact top-k to search answers"
    )
    serve.add_argument(
        "--op-log", default=None, metavar="PATH", help="server-side op log (history format)"
    )
    serve.add_argument("--pid-file", default=None, metavar="PATH")
    serve.add_argument("--side-threads", type=int, default=16, help="threads for side requests")
    serve.add_argument(
        "--switch-interval-ms",
        type=float,
        default=1.0,
        help="the GIL switch interval: short, so side threads and the event loop take turns often",
    )
    serve.add_argument(
        "--connect-wait-s", type=float, default=10.0, help="how long to wait for the sides"
    )
    serve.add_argument("--log-level", default="info")
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
    _server_arguments(cserve)
    cserve.set_defaults(handler=run_cluster_serve)

    def cluster_help(_: argparse.Namespace) -> int:
        cluster.print_help()
        return EXIT_BAD_INPUT

    cluster.set_defaults(handler=cluster_help)


def _server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--http",
        default="auto",
        choices=("auto", "httptools", "h11"),
        help="uvicorn's HTTP parser (auto: httptools when installed)",
    )
    parser.add_argument(
        "--loop",
        default="auto",
        choices=("auto", "uvloop", "asyncio"),
        help="the event loop (auto: uvloop when installed)",
    )


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from vecmig.harness.clusters.base import ClusterError, Side
    from vecmig.harness.clusters.registry import open_cluster
    from vecmig.harness.core.gates import GatePolicy
    from vecmig.harness.core.strategy import strategy_named
    from vecmig.harness.state import SQLiteStore

    from .app import create_app
    from .migration import Migration, ServiceConfig

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    token = args.admin_token or os.environ.get("VECMIG_ADMIN_TOKEN", "")
    if not token:
        token = secrets.token_urlsafe(16)
        print(
            f"vecmig serve: no --admin-token or VECMIG_ADMIN_TOKEN; using {token}", file=sys.stderr
        )
    try:
        lagged = frozenset(Side(s) for s in args.lagged.split(",") if s.strip())
    except ValueError:
        print(
            f"vecmig serve: --lagged takes 'old', 'new' or 'old,new', got {args.lagged!r}",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    deadline = time.monotonic() + args.connect_wait_s
    while True:
        try:
            sides = {
                Side.OLD: open_cluster(args.old, args.dim, args.metric),
                Side.NEW: open_cluster(args.new, args.dim, args.metric),
            }
            break
        except ValueError as exc:
            print(f"vecmig serve: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except ClusterError as exc:
            if time.monotonic() > deadline:
                print(f"vecmig serve: cannot reach a side: {exc}", file=sys.stderr)
                return EXIT_BAD_INPUT
            time.sleep(0.2)
    config = ServiceConfig(
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
        side_threads=args.side_threads,
    )
    sys.setswitchinterval(args.switch_interval_ms / 1000.0)
    migration = Migration(config, sides, SQLiteStore(args.state))
    status = migration.status()
    logging.getLogger("vecmig.service").info(
        "resuming at %s (epoch %s), backfill %s, repair backlog %s",
        status["phase"],
        status["epoch"],
        status["backfill"],
        status["repair_backlog"],
    )
    _write_pid(args.pid_file)
    app = create_app(migration, token, body_limit=args.body_limit)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        http=args.http,
        loop=args.loop,
    )
    return EXIT_VALID


def run_cluster_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from vecmig.harness.clusters.fake import FakeCluster

    from .cluster_server import ClusterServer

    cluster = FakeCluster(
        args.dim,
        args.metric,
        shards=args.shards,
        replicas=args.replicas,
        seed=args.seed,
        name=args.name,
    )
    _write_pid(args.pid_file)
    app = ClusterServer(cluster, latency_ms=args.latency_ms).app()
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        http=args.http,
        loop=args.loop,
    )
    return EXIT_VALID


def _write_pid(path: str | None) -> None:
    if path:
        Path(path).write_text(f"{os.getpid()}\n")
