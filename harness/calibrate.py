"""`vecmig calibrate`: measure what an engine's operations cost on this machine, through the
cluster port, and write a cost profile (`vecmig.harness.costs`) for the scaled simulator.

The measurement walks one empty side up through a ladder of index sizes. At each size it
times upsert batches of fresh records (per record, at several batch sizes) and searches (at
several k); at the largest it times gets, scans, deletes, counts and checksums at two batch
sizes each, to split a fixed cost per call from a cost per record. Every figure is a median
of repeated calls. The side is any `ClusterPort` that `open_cluster` opens, so the same code
measures pgvector, Qdrant or Milvus through their adapters; the fake cluster is measured
with one shard and one replica, since the simulator charges a request the work of one node.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from vecmig.harness.catalog import Catalog
from vecmig.harness.clusters.base import ClusterPort, Metric, Tombstone
from vecmig.harness.costs import LINEAR_OPS, CostProfile, Grid, Linear, save_profile

FAKE_URL = "fake://?shards=1&replicas=1&seed=0"
DEFAULT_SIZES = (1000, 4000, 16000, 64000)
BATCH_SIZES = (1, 8, 64, 512)
KS = (1, 10, 100)
SEARCHES_PER_POINT = 150
INSERTED_PER_POINT = 512
"""Records each batch size inserts at each index size (at least two batches)."""
FILL_BATCH = 256
"""Records per upsert while filling up to the next size (not timed). pgvector on a loaded
2-core machine took over its 10 s statement timeout for 1,024 records into a 16k HNSW index."""
NOT_MEASURED = (
    "filtered searches (charged as unfiltered ones)",
    "metadata-only updates (charged as inserts)",
    "concurrency (the simulator's queue models it: nodes x concurrency_per_node)",
    "other dimensions than `dim` (measure each one the scenarios use)",
)


@dataclass(frozen=True)
class Plan:
    """What to measure: the ladder of index sizes, and the batch sizes and k at each."""

    sizes: tuple[int, ...] = DEFAULT_SIZES
    batch_sizes: tuple[int, ...] = BATCH_SIZES
    ks: tuple[int, ...] = KS
    searches: int = SEARCHES_PER_POINT
    calls: int = 300
    """Timed calls of one record each for gets, scans and counts (fewer for deletes and the
    large batches): an engine whose every scan reads the whole collection needs fewer."""


class Stopwatch:
    """Times calls with the calling thread's CPU clock (an in-process engine: what the call
    itself costs, whatever else the machine runs) or the wall clock (an engine elsewhere)."""

    def __init__(self, clock: str) -> None:
        self.clock = clock
        self._now = time.thread_time_ns if clock == "cpu" else time.perf_counter_ns

    def us(self, call: Callable[[], object]) -> float:
        start = self._now()
        call()
        return (self._now() - start) / 1000.0


def measure(
    side: ClusterPort,
    *,
    name: str,
    engine: str,
    plan: Plan,
    clock: str,
    seed: int = 0,
    settings: dict[str, Any] | None = None,
    progress: Callable[[str], None] = lambda message: None,
) -> CostProfile:
    """Measure an empty `side` (it is filled, then partly deleted) and return its profile."""
    started = time.perf_counter()
    load_before = _load_average()
    watch = Stopwatch(clock)
    dim = side.dim
    needed = plan.sizes[-1] + len(plan.sizes) * INSERTED_PER_POINT * len(plan.batch_sizes) + 1024
    catalog = Catalog.generate(needed, dim, categories=8, seed=seed)
    records = catalog.records()
    rng = np.random.default_rng(seed + 1)
    queries = [catalog.query_vector(rng) for _ in range(plan.searches)]
    filled = 0
    insert_rows: list[tuple[float, ...]] = []
    search_rows: list[tuple[float, ...]] = []
    checksum_points: list[tuple[int, float]] = []
    measured_at: list[int] = []
    for size in plan.sizes:
        while filled < size:
            chunk = records[filled : min(size, filled + FILL_BATCH)]
            side.upsert(chunk, fenced=False)
            filled += len(chunk)
        # The inserts measured at a size add to the index: the next size may be passed
        # already, so each row is labelled with the size it was measured at.
        measured_at.append(filled)
        progress(f"index of {filled:,}: inserts, searches")
        checksum_points.append(
            (filled, _median(watch.us(partial(side.checksums, 64)) for _ in range(3)))
        )
        search_rows.append(
            tuple(_median(watch.us(partial(side.search, q, k)) for q in queries) for k in plan.ks)
        )
        row = []
        for batch in plan.batch_sizes:
            per_record = []
            for _ in range(max(2, INSERTED_PER_POINT // batch)):
                chunk = records[filled : filled + batch]
                per_record.append(watch.us(partial(side.upsert, chunk)) / batch)
                filled += batch
            row.append(_median(per_record))
        insert_rows.append(tuple(row))
    progress(f"index of {filled:,}: gets, scans, counts, deletes")
    single = [watch.us(partial(side.search, q, 10)) for q in queries]
    ids = [r.id for r in records[:filled]]
    linear = _linear_costs(side, watch, ids, rng, checksum_points, plan.calls)
    return CostProfile(
        name=name,
        engine=engine,
        dim=dim,
        metric=side.metric.value,
        clock=clock,
        insert=Grid(tuple(measured_at), plan.batch_sizes, tuple(insert_rows)),
        search=Grid(tuple(measured_at), plan.ks, tuple(search_rows)),
        linear=linear,
        jitter_sigma=_lognormal_sigma(single),
        machine=machine(load_before, time.perf_counter() - started),
        settings=settings or {},
        not_measured=NOT_MEASURED,
    )


def _linear_costs(
    side: ClusterPort,
    watch: Stopwatch,
    ids: Sequence[str],
    rng: np.random.Generator,
    checksum_points: Sequence[tuple[int, float]],
    calls: int = 300,
) -> dict[str, Linear]:
    """Gets of random ids and scans from random cursors at two batch sizes, counts, checksums
    at the smallest and largest index, and deletes (last: they shrink the index)."""

    def get(n: int) -> float:
        wanted = [ids[int(i)] for i in rng.integers(0, len(ids), size=n)]
        return watch.us(lambda: side.get(wanted))

    def scan(limit: int) -> float:
        cursor = ids[int(rng.integers(0, len(ids) - limit))]
        return watch.us(lambda: side.scan(cursor, limit))

    doomed = iter(ids[::-1])

    def delete(n: int) -> float:
        tombstones = [Tombstone(next(doomed), 1_000_000) for _ in range(n)]
        return watch.us(lambda: side.delete(tombstones))

    large = max(3, calls // 15)
    costs = {
        "get": _fit((1, _repeat(get, 1, calls)), (256, _repeat(get, 256, large))),
        "scan": _fit((1, _repeat(scan, 1, calls)), (1000, _repeat(scan, 1000, large))),
        "count": Linear(_median(watch.us(side.count) for _ in range(calls)), 0.0),
        "checksums": _fit(checksum_points[0], checksum_points[-1]),
        "delete": _fit(
            (1, _repeat(delete, 1, max(3, calls * 2 // 3))), (256, _repeat(delete, 256, 4))
        ),
    }
    return {op: costs[op] for op in LINEAR_OPS}


def _repeat(timed: Callable[[int], float], n: int, times: int) -> float:
    """The median of `times` timings of `timed(n)`."""
    return _median(timed(n) for _ in range(times))


def _fit(small: tuple[int, float], large: tuple[int, float]) -> Linear:
    """The fixed and per-record cost through two (records, microseconds) points."""
    (n1, t1), (n2, t2) = small, large
    per = max(0.0, (t2 - t1) / (n2 - n1)) if n2 != n1 else 0.0
    return Linear(max(0.0, t1 - per * n1), per)


def _median(values: Any) -> float:
    return float(statistics.median(list(values)))


def _lognormal_sigma(samples: Sequence[float]) -> float:
    """The sigma of a lognormal with the samples' median and 90th percentile."""
    p50, p90 = np.percentile(samples, [50, 90])
    return max(0.0, math.log(p90 / p50) / 1.2816) if p50 > 0 else 0.0


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # pragma: no cover - not on every platform
        return None


def machine(load_before: float | None, wall_s: float) -> dict[str, Any]:
    """The machine a profile was measured on, and how busy it was."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "hnswlib": _version("hnswlib"),
        "numpy": np.__version__,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
        "load_average_before": load_before,
        "load_average_after": _load_average(),
        "measure_wall_s": round(wall_s, 1),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


# ---------------------------------------------------------------------------------------------
# The command.

DESCRIPTION = """\
Measure what an engine's operations cost on this machine (inserts against index size and
batch size, searches against index size and k, gets, deletes, scans, counts and checksums per
record) and write a cost profile that a scaled simulation names ([clusters] profile = NAME).

ENGINE is `fake` (the in-memory HNSW cluster, one shard and one replica, timed with this
thread's CPU clock) or the URL of an empty side (pgvector://..., qdrant://..., milvus+lite://...;
see `vecmig serve --help`), timed with the wall clock. The side is filled and partly deleted.
pgvector://auto, qdrant+local://auto and milvus+lite://auto measure the throwaway side that
`vecmig loadtest` starts for that URL (a PostgreSQL of its own; a tmpfs directory), removed after.
"""

EPILOG = """\
examples:
  vecmig calibrate fake --dim 32                    # writes profiles/fake-dim32.json
  vecmig calibrate fake --dim 128 --sizes 1000,10000,100000 --out /tmp/fake128.json
  vecmig calibrate qdrant://:memory: --dim 32 --name qdrant-memory-dim32
  vecmig calibrate pgvector://auto --dim 32 --sizes 1000,4000,16000,64000
exit codes: 0 written, 2 bad input.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "calibrate",
        help="measure an engine's operation costs into a profile for scaled simulations",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("engine", metavar="ENGINE", help="fake, or the URL of an empty side")
    parser.add_argument("--dim", type=int, default=32, help="vector dimension (default 32)")
    parser.add_argument("--metric", choices=[m.value for m in Metric], default=Metric.COSINE.value)
    parser.add_argument(
        "--sizes",
        type=_sizes,
        default=DEFAULT_SIZES,
        metavar="N,N,...",
        help=f"index sizes to measure at, increasing (default {','.join(map(str, DEFAULT_SIZES))})",
    )
    parser.add_argument(
        "--calls",
        type=int,
        default=300,
        metavar="N",
        help="timed single-record gets, scans and counts (default 300); fewer for an engine "
        "whose every scan reads the whole collection (Qdrant local mode, Milvus Lite)",
    )
    parser.add_argument("--name", default=None, help="the profile's name (default ENGINE-dimDIM)")
    parser.add_argument(
        "--out", default=None, metavar="FILE", help="default: profiles/NAME.json here"
    )
    parser.set_defaults(handler=run_calibrate)


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be integers separated by commas, got {text!r}"
        ) from None
    if not sizes or sizes[0] < 100 or any(b <= a for a, b in itertools.pairwise(sizes)):
        raise argparse.ArgumentTypeError(
            f"must be increasing index sizes of at least 100, got {text!r}"
        )
    return sizes


def run_calibrate(args: argparse.Namespace) -> int:
    from vecmig.harness.cli import EXIT_BAD_INPUT

    if args.dim < 2:
        print(f"vecmig calibrate: --dim must be at least 2, got {args.dim}", file=sys.stderr)
        return EXIT_BAD_INPUT
    is_fake = args.engine == "fake"
    url = FAKE_URL if is_fake else args.engine
    engine = "fake" if is_fake else url.partition("://")[0].lower()
    name = args.name or f"{engine.replace('+', '-')}-dim{args.dim}"
    with ExitStack() as stack:
        try:
            side, settings = _open_side(url, args.dim, args.metric, stack)
        except (ValueError, ImportError, LookupError, RuntimeError) as exc:
            print(f"vecmig calibrate: cannot open {args.engine!r}: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        if side.count().live:
            print(
                f"vecmig calibrate: {args.engine!r} is not empty; give an empty side",
                file=sys.stderr,
            )
            return EXIT_BAD_INPUT
        if is_fake:
            settings.update({"shards": 1, "replicas": 1, "m": 16, "ef_construction": 100})
            settings["ef_search"] = 64
        profile = measure(
            side,
            name=name,
            engine=engine,
            plan=Plan(sizes=args.sizes, calls=max(3, args.calls)),
            clock="cpu" if is_fake else "wall",
            settings=settings,
            progress=lambda message: print(f"  {message}", file=sys.stderr),
        )
    out = Path(args.out) if args.out else Path("profiles") / f"{name}.json"
    save_profile(profile, out)
    print(
        f"wrote {out}: {engine}, dim {args.dim}, index sizes {args.sizes[0]:,} to "
        f"{args.sizes[-1]:,}, in {profile.machine['measure_wall_s']} s"
    )
    return 0


def _open_side(
    url: str, dim: int, metric: str, stack: ExitStack
) -> tuple[ClusterPort, dict[str, Any]]:
    """The side to measure and the settings its profile records. `scheme://auto` starts the
    throwaway side `vecmig loadtest` would (same server settings, same tmpfs directory), so
    that a profile measured with it predicts what a load test's side costs; it is removed
    when `stack` closes."""
    from vecmig.harness.clusters.registry import AUTO_SCHEMES, open_cluster

    scheme, _, rest = url.partition("://")
    settings: dict[str, Any] = {"url": url}
    if rest.partition("?")[0] == "auto" and scheme.lower() in AUTO_SCHEMES:
        from vecmig.loadtests.sides import start_side

        started = start_side("calibrate", url, stack)
        settings["started"] = started.url
        settings["as"] = "the throwaway side `vecmig loadtest` starts for " + url
        url = started.url
    side = open_cluster(url, dim, metric)
    close = getattr(side, "close", None)
    if close is not None:
        stack.callback(close)
    return side, settings
