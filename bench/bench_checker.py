"""How fast the checker judges a 1,000,000-op history, in memory and read back from JSONL.

Not a test. Run: `python bench/bench_checker.py [--ops N] [--seed S]`.

The history is what a healthy run looks like: a loaded catalog, many concurrent processes
(each with one op in flight), gets, searches with their exact top-k, upserts and deletes, a
few indeterminate writes, phases up to CUTOVER, fault start/stop events and agreeing finals.
Writes carry the fields filters use (category, in_stock, price) and two thirds of the
searches are filtered, every hit matching; `--no-fields` writes a history without fields
(as before the history carried them), whose filtered hits the checker cannot judge.
"""

from __future__ import annotations

import argparse
import heapq
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vecmig.harness.history import ops
from vecmig.harness.history.checker import check
from vecmig.harness.history.command import read_history
from vecmig.harness.history.ops import Event, Recorder

PHASES = ("OLD_ONLY", "DUAL_WRITE", "BACKFILL", "SHADOW", "CUTOVER")


def generate(  # noqa: C901 - a synthetic history, one branch per kind of op; a benchmark
    n_ops: int,
    seed: int,
    n_ids: int = 100_000,
    n_processes: int = 256,
    n_categories: int = 20,
    with_fields: bool = True,
) -> list[Event]:
    """A realistic history of `n_ops` client ops, in (time, index) order."""
    rng = random.Random(seed)
    rec = Recorder()
    ids = [f"p{i}" for i in range(n_ids)]
    by_category = [ids[c::n_categories] for c in range(n_categories)]
    state = dict.fromkeys(ids, 1)  # what a read sees: the state at its completion
    tombstones: dict[str, int] = {}

    def fields_for(i: int) -> dict[str, object]:
        category = i % n_categories
        return {
            "category": category,
            "in_stock": rng.random() < 0.8,
            "price": rng.randrange(100, 50_000) / 100,
        }

    # The fields of each id's live version, and their id's position for its category.
    current = {id_: fields_for(i) for i, id_ in enumerate(ids)}
    position = {id_: i for i, id_ in enumerate(ids)}
    version = 1
    now = 0
    load: dict[str, object] = {"records": dict(state)}
    if with_fields:
        load["fields"] = dict(current)
    rec.ok(ops.LOADER, "load", load, now)
    # Each process has one op in flight: heap of (completion time, process).
    inflight: dict[int, tuple[str, dict[str, object], str]] = {}
    heap: list[tuple[int, int]] = []
    next_process = 0
    issued = 0
    phase_at = {n_ops * (i + 1) // (len(PHASES) + 1): name for i, name in enumerate(PHASES)}

    def invoke(process: int, at: int) -> None:
        nonlocal version, issued
        roll = rng.random()
        id_ = ids[rng.randrange(n_ids)]
        value: dict[str, object]
        if roll < 0.50:
            f, value = "get", {"id": id_}
        elif roll < 0.75:
            f, value = "search", {"k": 10}
            kind = rng.randrange(3)
            if kind == 0:
                value["filter"] = {"category": rng.randrange(n_categories)}
            elif kind == 1:
                value["filter"] = {"in_stock": True}
        else:
            version += 1
            f = "upsert" if roll < 0.95 else "delete"
            value = {"id": id_, "version": version}
            if f == "upsert" and with_fields:
                value["fields"] = fields_for(position[id_])
        outcome = "info" if f in ("upsert", "delete") and rng.random() < 0.002 else "ok"
        inflight[process] = (f, value, outcome)
        rec.invoke(process, f, value, at)
        issued += 1
        if issued in phase_at:
            rec.info(ops.CONTROLLER, "phase", {"phase": phase_at[issued], "epoch": 0}, at)
        if issued % 100_000 == 0:
            family = rng.choice(["latency_spike", "node_pause", "error_rate"])
            rec.info(ops.NEMESIS, "fault", {"family": family, "action": "start"}, at)
            rec.info(ops.NEMESIS, "fault", {"family": family, "action": "stop"}, at + 5_000_000)
        heapq.heappush(heap, (at + rng.randrange(200_000, 5_000_000), process))

    def complete(process: int, at: int) -> None:
        f, value, outcome = inflight.pop(process)
        if f == "get":
            rec.ok(process, f, {"id": value["id"], "version": state.get(str(value["id"]))}, at)
        elif f == "search":
            wanted = value.get("filter") or {}
            pool = by_category[wanted["category"]] if "category" in wanted else ids
            sample = rng.sample(pool, 12 if "in_stock" not in wanted else 24)
            if "in_stock" in wanted:  # hits match the filter under the version returned
                sample = [i for i in sample if i in state and current[i]["in_stock"]][:12]
            rows = [[i, state[i], round(rng.random(), 6)] for i in sample[:10] if i in state]
            exact = [i for i in sample[2:] if i in state][:10]
            rec.ok(process, f, {"results": rows, "exact": exact}, at)
        else:
            id_ = str(value["id"])
            written = int(str(value["version"]))
            # The cluster is version-fenced: an older write never overwrites a newer one.
            newest = max(state.get(id_, 0), tombstones.get(id_, 0))
            if (outcome == "ok" or rng.random() < 0.5) and written > newest:
                if f == "upsert":
                    state[id_] = written
                    current[id_] = value.get("fields") or current[id_]
                else:
                    state.pop(id_, None)
                    tombstones[id_] = written
            rec.complete(process, outcome, f, value, at)  # type: ignore[arg-type]

    for _ in range(n_processes):
        now += rng.randrange(1_000, 10_000)
        invoke(next_process, now)
        next_process += 1
    while heap:
        now, process = heapq.heappop(heap)
        _, _, outcome = inflight[process]
        complete(process, now)
        if issued >= n_ops:
            continue
        if outcome == "info":  # a process that got info never invokes again
            process = next_process
            next_process += 1
        invoke(process, now + rng.randrange(1_000, 100_000))
    now += 1_000_000
    rec.ok(ops.CHECKER, "final", {"side": "old", "records": dict(state)}, now)
    rec.ok(ops.CHECKER, "final", {"side": "new", "records": dict(state)}, now + 1)
    # Think times can put an invoke before a completion recorded earlier: sort like a merge.
    return ops.merge([rec.events])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ops", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--no-fields", action="store_true", help="writes carry no fields (an older history)"
    )
    args = parser.parse_args()

    started = time.perf_counter()
    events = generate(args.ops, args.seed, with_fields=not args.no_fields)
    print(
        f"generated {args.ops:,} ops = {len(events):,} events "
        f"in {time.perf_counter() - started:.1f}s"
    )

    started = time.perf_counter()
    verdict = check(events)
    took = time.perf_counter() - started
    print(f"check (in memory): {took:.2f}s, {args.ops / took:,.0f} ops/s, valid={verdict.valid}")
    if not verdict.valid:
        print(verdict.counts(), verdict.notes)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "history.jsonl"
        ops.write_jsonl(events, path)
        size = path.stat().st_size
        started = time.perf_counter()
        read, lines = read_history(path)
        read_took = time.perf_counter() - started
        started = time.perf_counter()
        check(read, lines=lines, source=str(path))
        check_took = time.perf_counter() - started
    print(
        f"read JSONL ({size / 1e6:.0f} MB): {read_took:.2f}s, {args.ops / read_took:,.0f} ops/s; "
        f"then check: {check_took:.2f}s; "
        f"file to verdict {args.ops / (read_took + check_took):,.0f} ops/s"
    )


if __name__ == "__main__":
    main()
