"""One trial of one engine on one strategy, as `vecmig zoo` runs them in worker processes: a
simulation of a scenario (maybe buggified) and seed, a Hypothesis search of the state machine,
or a short load test. Each takes plain arguments and returns a plain dict (it crosses a process
boundary), and each stops on its own when its time budget runs out."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CAUGHT, VALID, STALLED, OUT_OF_TIME, ERROR = "caught", "valid", "stalled", "out-of-time", "error"
"""How a trial ended: the checker (or the machine) found anomalies; it found none; the plan
stalled with no anomaly; the budget ran out first; the engine itself failed."""


class _OutOfTime(Exception):
    pass


def strategy_label(protections: tuple[str, ...]) -> str:
    """The `--strategy` value for a row: `naive`, or `safe-without:A[,B]`."""
    return "naive" if protections == ("naive",) else "safe-without:" + ",".join(protections)


# -- the simulator -----------------------------------------------------------------------------


def simulate(
    strategy: str, scenario: str, seed: int | None, buggify: bool, budget_s: float
) -> dict[str, Any]:
    """One simulated run, judged by the checker. `seed` None: the scenario's own."""
    from vecmig.sim.scenario import load
    from vecmig.sim.simulation import Simulation

    started = time.monotonic()
    deadline = started + budget_s

    def watch(_t: int, _end: int) -> None:
        if time.monotonic() > deadline:
            raise _OutOfTime

    sim = Simulation(load(scenario), strategy, seed, buggify=buggify)
    replay = f"vecmig simulate {scenario} --seed {sim.seed} --strategy {strategy}"
    replay += (" --swarm" if sim.swarm else "") + (" --buggify" if buggify else "")
    trial: dict[str, Any] = {"scenario": scenario, "seed": sim.seed, "buggify": buggify}
    trial["replay"] = replay
    try:
        result = sim.run(watch)
    except _OutOfTime:
        return {**trial, "outcome": OUT_OF_TIME, "seconds": time.monotonic() - started}
    verdict = result.verdict
    counts = {kind: n for kind, n in verdict.counts().items() if n}
    if verdict.unknown:
        counts["unknown"] = 1
    outcome = CAUGHT if counts else STALLED if verdict.stalled else VALID
    found = ", ".join(f"{kind.replace('_', ' ')} {n}" for kind, n in counts.items())
    if verdict.stalled:
        reasons = verdict.stall.reasons if verdict.stall is not None else ()
        found = ", ".join(x for x in (found, "stalled: " + "; ".join(reasons)[:200]) if x)
    return {
        **trial,
        "outcome": outcome,
        "found": found,
        "counts": counts,
        "end_phase": result.end_phase,
        "seconds": time.monotonic() - started,
    }


# -- the state machine -------------------------------------------------------------------------


def search_machine(
    protections: tuple[str, ...], max_examples: int, steps: int, budget_s: float
) -> dict[str, Any]:
    """A derandomized Hypothesis search of the migration state machine on the ablated
    strategy. A failure it finds is minimized (steps it does not need dropped) and replayed on
    the safe machine, which must pass it: else the failure is the harness's, a false alarm."""
    from hypothesis import settings

    from vecmig.harness.core.strategy import NAIVE
    from vecmig.harness.testing.machine import MigrationMachine
    from vecmig.harness.testing.shrink import TEETH, minimize, replay, search, signature

    if protections == ("naive",):
        machine: type[MigrationMachine] = type(
            "MigrationMachine.naive()", (MigrationMachine,), {"strategy": NAIVE}
        )
    else:
        machine = MigrationMachine.ablated(*protections)
    started = time.monotonic()
    config = settings(TEETH, max_examples=max_examples, stateful_step_count=steps)
    found = search(machine, config, budget_s)
    from hypothesis.errors import HypothesisException

    if isinstance(found.error, HypothesisException):  # e.g. Flaky: not a failure it can show
        outcome = ERROR
    else:
        outcome = CAUGHT if found.found else OUT_OF_TIME if found.out_of_time else VALID
    result: dict[str, Any] = {
        "outcome": outcome,
        "examples": found.examples,
        "examples_to_failure": found.examples_to_failure,
        "seconds_to_failure": found.seconds_to_failure,
        "found": found.headline,
        "printed_steps": len(found.rules),
    }
    if outcome == CAUGHT and found.steps:
        shortest = minimize(found.steps, machine)
        result["steps"] = list(shortest)
        result["replays_ablated"] = bool(signature(replay(shortest, machine)))
        on_safe = replay(shortest, MigrationMachine)
        # An assertion is the machine's judgement; any other error means the steps do not
        # apply to the safe machine as printed, which is no verdict either way.
        result["replays_safe"] = isinstance(on_safe, AssertionError)
        if on_safe is not None:
            result["safe_failure"] = signature(on_safe)
    result["seconds"] = time.monotonic() - started
    return result


# -- the live load test ------------------------------------------------------------------------


def load_test(
    strategy: str, out: str, duration_s: float, users: int, catalog: int, budget_s: float
) -> dict[str, Any]:
    """`vecmig loadtest` as a subprocess (it starts its own cluster servers, service and
    Locust), stopped with SIGTERM, then SIGKILL, when the budget runs out."""
    argv = [
        sys.executable,
        "-m",
        "vecmig",
        "loadtest",
        "--strategy",
        strategy,
        "--duration",
        f"{duration_s:g}",
        "--users",
        str(users),
        "--catalog",
        str(catalog),
        "--out",
        out,
    ]
    replay = shlex.join(["vecmig", *argv[3:]])
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    log = Path(f"{out}.log")
    started = time.monotonic()
    with open(log, "w", encoding="utf-8") as sink:
        process = subprocess.Popen(
            argv, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True, env=os.environ
        )
        try:
            code = process.wait(timeout=budget_s)
        except subprocess.TimeoutExpired:
            _stop(process)
            return {"outcome": OUT_OF_TIME, "seconds": time.monotonic() - started, "replay": replay}
    seconds = time.monotonic() - started
    report_path = Path(out) / "report.json"
    if code not in (0, 1) or not report_path.exists():
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        return {"outcome": ERROR, "seconds": seconds, "replay": replay, "found": " | ".join(tail)}
    report = json.loads(report_path.read_text())
    from vecmig.harness.history.checker import ANOMALIES

    counts = {kind: report[kind] for kind in ANOMALIES if report.get(kind)}
    if report.get("unknown"):
        counts["unknown"] = 1
    found = ", ".join(f"{kind.replace('_', ' ')} {n}" for kind, n in counts.items())
    return {
        "outcome": CAUGHT if counts or not report["valid"] else VALID,
        "found": found or ("" if report["valid"] else "not valid"),
        "counts": counts,
        "seconds": seconds,
        "replay": replay,
        "history": str(Path(out) / "history.jsonl"),
    }


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the load test (it stops its own servers and Locust), SIGKILL its group if it
    lingers."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def headline(text: str) -> str:
    """One line of at most 120 characters."""
    line = re.sub(r"\s+", " ", text).strip()
    return line if len(line) <= 120 else line[:117] + "..."
