"""The two sides of a load test: what `--old` / `--new` name, what `vecmig loadtest` starts for
them, which faults each one can take, and the loader that puts the catalog into old.

    (left out)            a fake cluster server (`vecmig cluster serve`): fault endpoints
    pgvector://auto       a throwaway PostgreSQL with pgvector that this run starts, so the
                          chaos controller can crash it and restart it (same data dir, port)
    qdrant+local://auto   Qdrant local mode in a throwaway directory (tmpfs where there is one)
    milvus+lite://auto    Milvus Lite in a throwaway directory
    any other URL         an engine someone else runs (pgvector://user@host/db?table=t,
                          qdrant://host:6333, ...): layer faults only

Qdrant local mode and Milvus Lite run inside the service process and lock their directory
against every other process. So they crash when the service is SIGKILLed and come back when it
restarts (that kill is how these engines are crashed), the catalog goes in before the service
starts, and the chaos controller stops the service before the final scans. Loading and the
final scans run in processes of their own (`python -m vecmig.loadtests.sides load|reopen|final`),
which let go of an in-process engine when they exit and run no gevent.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from vecmig.harness.clusters.registry import AUTO_SCHEMES, schemes

IN_PROCESS_SCHEMES = ("qdrant+local", "milvus+lite")
CLUSTER_SERVER_SCHEMES = ("http", "https")
POSTGRES_NODE = "postgres"
"""The `node` of a PostgreSQL side's faults: the server is the only node."""


def scheme_of(url: str) -> str:
    return url.partition("://")[0].lower()


def is_cluster_server(url: str) -> bool:
    """A fake cluster server (`vecmig cluster serve`), which takes cluster faults over HTTP."""
    return scheme_of(url) in CLUSTER_SERVER_SCHEMES


def is_in_process(url: str) -> bool:
    """An engine that lives in the service's process and admits one process at a time."""
    return scheme_of(url) in IN_PROCESS_SCHEMES


def refusal(url: str) -> str | None:
    """Why a load test cannot use `url` as a side, or None if it can."""
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    known = schemes()
    if not rest or scheme not in known:
        valid = ", ".join(f"{s}://" for s in known)
        return f"{url!r} is not a cluster URL; it should start with one of {valid}"
    if scheme == "fake":
        return (
            f"{url!r} is an in-memory fake inside the service: the loader, the service and the "
            "final scan are three processes, and a SIGKILL would wipe it. Leave --old/--new out "
            "to get a fake cluster server instead"
        )
    if scheme == "qdrant" and rest.split("?")[0] == ":memory:":
        return (
            f"{url!r} lives in the service's memory: the catalog cannot be loaded into it from "
            "outside and the service's SIGKILL would wipe it. Use qdrant+local://auto (on disk)"
        )
    if rest.split("?")[0] == "auto" and scheme not in AUTO_SCHEMES:
        return f"{url!r}: 'auto' works for {', '.join(f'{s}://auto' for s in AUTO_SCHEMES)}"
    return None


@dataclass(frozen=True)
class RunSide:
    """One side as this run uses it."""

    name: str
    url: str
    """What the service and the chaos controller open."""
    given: str = ""
    """What was asked for on the command line ("" for the default fake cluster server)."""
    server: str = ""
    """The directory of a PostgreSQL this run started (the chaos controller may crash it)."""

    def describe(self) -> str:
        """What this side is and which faults it gets, for the run's opening lines."""
        scheme = scheme_of(self.url)
        if is_cluster_server(self.url):
            return "a fake cluster server: cluster faults over HTTP and layer faults"
        if self.server:
            return (
                "a PostgreSQL this run started: crashed and restarted while it is the secondary "
                "side, and layer faults"
            )
        if scheme == "qdrant+local":
            return "Qdrant local mode in the service process: killed with it, and layer faults"
        if scheme == "milvus+lite":
            return "Milvus Lite in the service process: killed with it, and layer faults"
        return "an engine run elsewhere: layer faults only (no engine faults without its tooling)"


def start_side(name: str, given: str, stack: ExitStack) -> RunSide:
    """The side `given` names; for `scheme://auto`, start a throwaway one and register its
    removal on `stack`. Raises LookupError or RuntimeError when a server cannot be had."""
    scheme, _, rest = given.partition("://")
    scheme = scheme.lower()
    location, _, query = rest.partition("?")
    if location != "auto":
        return RunSide(name, given, given)
    if scheme == "pgvector":
        from vecmig.harness.clusters.pgserver import CRASH_SAFE_SETTINGS, PostgresServer

        server = PostgresServer.create(CRASH_SAFE_SETTINGS, prefix=f"vecmig-pg-{name}-")
        stack.callback(server.remove)
        params = dict(parse_qsl(query))
        params.setdefault("table", f"vecmig_{name}")
        url = f"pgvector://postgres@127.0.0.1:{server.port}/postgres?{urlencode(params)}"
        return RunSide(name, url, given, str(server.root))
    # Qdrant local mode commits every point to SQLite: on a disk each commit's fsync makes a
    # write ~15 ms a point, on tmpfs ~0.5 ms. tmpfs keeps the data across the service's
    # SIGKILL, which is the crash injected here (not a machine crash).
    directory = Path(tempfile.mkdtemp(prefix=f"vecmig-{name}-", dir=_tmpfs()))
    stack.callback(shutil.rmtree, directory, True)
    path = directory / ("side.db" if scheme == "milvus+lite" else "qdrant")
    return RunSide(name, f"{scheme}://{path}" + (f"?{query}" if query else ""), given)


def _tmpfs() -> str | None:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


class PostgresNemesis:
    """The faults a PostgreSQL this run started can take: `node-crash` of its one node
    (`pg_ctl stop -m immediate`, as a crash: no checkpoint) and, at its stop, a restart on the
    same data directory and port, with crash recovery. It loses nothing acknowledged (the
    server runs with `synchronous_commit=on`), so `lose_data` is refused."""

    FAMILIES = ("node-crash",)

    def __init__(self, root: str | Path) -> None:
        from vecmig.harness.clusters.pgserver import PostgresServer

        self.server = PostgresServer.attach(root)

    def start_fault(self, family: str, **params: Any) -> None:
        self._check(family, params)
        self.server.crash()

    def stop_fault(self, family: str, **params: Any) -> None:
        self._check(family, params)
        self.server.start()

    def heal_all(self) -> None:
        if not self.server.running():
            self.server.start()

    def _check(self, family: str, params: dict[str, Any]) -> None:
        if family not in self.FAMILIES:
            raise ValueError(
                f"a PostgreSQL side takes {list(self.FAMILIES)}, not {family!r}; for latency or a "
                "partition use the layer's faults (target 'layer')"
            )
        if params.get("lose_data") or params.get("node", POSTGRES_NODE) != POSTGRES_NODE:
            raise ValueError(
                f"node-crash on a PostgreSQL side takes node {POSTGRES_NODE!r} and no data loss, "
                f"got {params!r}"
            )


USAGE = "usage: python -m vecmig.loadtests.sides load|reopen|final RUN.json   (RUN.json '-': stdin)"


def main(argv: list[str] | None = None) -> int:
    """The two moments a load test opens its sides itself, each in a process of its own, which
    lets go of an in-process engine when it exits (and runs no gevent):

    * `load RUN.json`: load the run plan's catalog into old and record the history's `load`
      event (before the service starts);
    * `reopen RUN.json`: check that the in-process sides serve once another process reopens
      them (after `load`, before the service starts);
    * `final RUN.json`: scan both sides and record the history's `final` events (after the
      run; the chaos controller has stopped the service if a side lives in it).
    """
    from .chaos import RunPlan

    args = sys.argv[1:] if argv is None else argv
    steps = {"load": _load, "reopen": _reopen, "final": _final}
    if len(args) != 2 or args[0] not in steps:
        print(USAGE, file=sys.stderr)
        return 2
    from vecmig.harness.clusters.base import ClusterError

    try:
        steps[args[0]](RunPlan.load(args[1]))
    except (ClusterError, RuntimeError) as exc:
        print(f"vecmig.loadtests.sides {args[0]}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


def _load(plan: Any) -> None:
    from vecmig.harness.clusters.registry import open_cluster

    from .chaos import load_catalog
    from .history import ProcessHistory

    old = open_cluster(plan.old, plan.dim)
    history = ProcessHistory(plan.history_dir, name="loader")
    try:
        count = load_catalog(old, plan, history.recorder)
    finally:
        history.close()
        _close(old)
    print(f"loaded {count} products into old ({plan.old})")
    if is_in_process(plan.new):
        _close(open_cluster(plan.new, plan.dim))  # creates it, as the service's first start would


def _reopen(plan: Any) -> None:
    """An in-process side is reopened by every restart of the service, by a new process: check
    before the run, from a process other than the loader, that a reopened side serves what it
    holds, rather than learn it from a run of failed reads."""
    from vecmig.harness.clusters.base import ClusterError
    from vecmig.harness.clusters.registry import open_cluster

    sample = {r.id: r.version for r in plan.catalog_records().records()[:20]}
    for name, url in (("old", plan.old), ("new", plan.new)):
        if not is_in_process(url):
            continue
        expected = sample if name == "old" else dict.fromkeys(sample)
        side = open_cluster(url, plan.dim)
        try:
            held = {i: s.version for i, s in side.get(list(expected)).items()}
        except ClusterError as exc:
            raise RuntimeError(
                f"{name} ({url}) does not serve once reopened by another process, as it must "
                f"after the service's SIGKILL and restart: {exc}"
            ) from exc
        finally:
            _close(side)
        wrong = {i: held.get(i) for i, v in expected.items() if held.get(i) != v}
        if wrong:
            raise RuntimeError(f"{name} ({url}) reopened holds other versions: {wrong}")
        print(f"{name} serves once reopened by another process (as after a service restart)")


def _final(plan: Any, wait_s: float = 30.0) -> None:
    from vecmig.harness.clusters.base import ClusterError
    from vecmig.harness.clusters.registry import open_cluster
    from vecmig.harness.drive.step import live_versions
    from vecmig.harness.history.ops import CHECKER

    from .history import ProcessHistory, now

    history = ProcessHistory(plan.history_dir, name="final")
    deadline = time.monotonic() + wait_s
    try:
        for name, url in (("old", plan.old), ("new", plan.new)):
            while True:
                try:
                    side = open_cluster(url, plan.dim)
                    try:
                        records = live_versions(side)
                    finally:
                        _close(side)
                    break
                # RuntimeError: Qdrant's directory lock, held until the stopped service is gone
                except (ClusterError, RuntimeError) as exc:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"cannot scan {name} ({url}): {exc}") from exc
                    time.sleep(0.25)
            history.recorder.ok(CHECKER, "final", {"side": name, "records": records}, now())
            print(f"final scan of {name}: {len(records)} live records")
    finally:
        history.close()


def _close(side: Any) -> None:
    close = getattr(side, "close", None)
    if close is not None:
        close()


if __name__ == "__main__":
    raise SystemExit(main())
