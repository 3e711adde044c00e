"""Run the BUGGIFY seeds whose draw the lost-ack schedule rule moved, per scenario, safe, on 2 processes."""
import json, sys, time
from pathlib import Path
from vecmig.sim.scenario import load
from vecmig.sim.sweep import plan, run
from vecmig.sim.sweep_executors import LocalPool
from vecmig.sim.sweep_store import ResultStore

changed = json.load(open("/tmp/changed-lostack.json"))
for name in sys.argv[1:]:
    scenario = load(name)
    out = Path(f"/work/sweeps/{name}-lostackfix")
    out.mkdir(parents=True, exist_ok=True)
    tasks = plan(name, scenario, changed[name], "safe", buggify=True)
    executor = LocalPool(2)
    t0 = time.time()
    try:
        with ResultStore(out / "results.sqlite") as store:
            record = run(tasks, scenario, executor, store, out)
    finally:
        executor.close()
    print(name, len(tasks), "seeds", round(time.time() - t0, 1), "s", record, flush=True)
