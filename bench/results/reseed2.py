"""Re-run, safe and with BUGGIFY, the seeds whose draw a loader change moved, two processes.

    python bench/results/reseed2.py bench/results/lostack-moved-seeds.json OUT_DIR default ...

The JSON maps each scenario to its seeds (lostack-moved-seeds.json: the seeds whose drawn
schedule `buggify._fit_lost_acks` changes, found by building each seed's scenario with and
without it). Results go to OUT_DIR/<scenario>/results.sqlite, as `vecmig sweep` stores them.
"""

import json
import sys
import time
from pathlib import Path

from vecmig.sim.scenario import load
from vecmig.sim.sweep import plan, run
from vecmig.sim.sweep_executors import LocalPool
from vecmig.sim.sweep_store import ResultStore

seeds_file, out_dir, *names = sys.argv[1:]
changed = json.loads(Path(seeds_file).read_text())
for name in names:
    scenario = load(name)
    out = Path(out_dir) / name
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
