"""The zoo's searches: one per row and engine, each a sequence of trials that stops at its first
catch or when its time budget is spent, scheduled over a small process pool.

A simulator search runs the shipped scenarios with their own seeds, then buggify seeds in
order; a trial that finds anomalies (or a stall) counts only once the safe strategy passes the
very same run (the *control*, cached across rows): otherwise it is the harness's failure, a
false alarm, and the search goes on. A machine search is one derandomized Hypothesis run whose
shrunk failure is replayed on the safe machine for the same purpose. A live search is one load
test. Which trial catches first depends only on the seeds, so the matrix reproduces; only a
budget that runs out can cut a search shorter on a slower machine, and the matrix says so.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vecmig.harness.zoo import engines
from vecmig.harness.zoo.catalog import BUGGIFY_SCENARIO, Row
from vecmig.harness.zoo.engines import CAUGHT, ERROR, OUT_OF_TIME, STALLED, VALID

Task = tuple[Callable[..., dict[str, Any]], tuple[Any, ...]]
Trial = tuple[str, int | None, bool]
"""(scenario, seed or None for the scenario's own, buggify)."""


@dataclass(frozen=True, slots=True)
class Settings:
    engines: tuple[str, ...]
    scenarios: tuple[str, ...]
    seeds: int
    """Buggify seeds per ablation, after the scenarios."""
    first_seed: int
    jobs: int
    budget_s: float
    """Per ablation per engine."""
    examples: int
    steps: int
    live_duration_s: float
    live_users: int
    live_catalog: int
    out: Path

    def trials(self) -> list[Trial]:
        plain: list[Trial] = [(scenario, None, False) for scenario in self.scenarios]
        seeds = range(self.first_seed, self.first_seed + self.seeds)
        return plain + [(BUGGIFY_SCENARIO, seed, True) for seed in seeds]


@dataclass
class Search:
    """One row on one engine."""

    row: Row
    engine: str
    settings: Settings
    controls: dict[Trial, dict[str, Any]]
    """The safe strategy's results by trial, shared by every simulator search."""
    tried: list[dict[str, Any]] = field(default_factory=list)
    spent_s: float = 0.0
    caught: dict[str, Any] | None = None
    false_alarms: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    done: bool = False
    busy: bool = False
    _suspect: tuple[Trial, dict[str, Any]] | None = None
    """A failing trial waiting for its control."""

    # -- what to run next ------------------------------------------------------------------

    def next_task(self) -> Task | None:
        """The next trial to run, or None when the search is over (then `done`)."""
        if self.done:
            return None
        if self.engine == "sim":
            return self._next_sim()
        if self.tried:  # the machine and live searches are one trial each
            self.done = True
            return None
        s = self.settings
        protections = self.row.protections
        if self.engine == "machine":
            return engines.search_machine, (protections, s.examples, s.steps, s.budget_s)
        out = str(s.out / "live" / self.row.name.replace("+", "_"))
        args = (self.row.strategy, out, s.live_duration_s, s.live_users, s.live_catalog)
        return engines.load_test, (*args, s.budget_s)

    def _next_sim(self) -> Task | None:
        if self._suspect is not None:
            trial, _ = self._suspect
            if trial in self.controls:
                self._judge_suspect()
                return self._next_sim()
            scenario, seed, buggify = trial
            return engines.simulate, ("safe", scenario, seed, buggify, 10 * self.settings.budget_s)
        if self.caught is not None:
            self.done = True
            return None
        trials = self.settings.trials()
        left = self.settings.budget_s - self.spent_s
        if len(self.tried) >= len(trials) or left <= 0:
            self.done = True
            return None
        scenario, seed, buggify = trials[len(self.tried)]
        return engines.simulate, (self.row.strategy, scenario, seed, buggify, left)

    # -- what came back --------------------------------------------------------------------

    def take(self, result: dict[str, Any]) -> None:
        if self.engine != "sim":
            self.tried.append(result)
            self.spent_s += result["seconds"]
            confirmed = result.get("replays_safe") is not True
            if result["outcome"] == CAUGHT and confirmed:
                self.caught = result
            elif result["outcome"] == CAUGHT:
                self.false_alarms.append(result)
            elif result["outcome"] == ERROR:
                self.error = result.get("found", "the engine failed")
            self.done = True
            return
        if self._suspect is not None:  # the control of the suspect trial
            trial, _ = self._suspect
            self.controls[trial] = result
            self._judge_suspect()
            return
        self.tried.append(result)
        self.spent_s += result["seconds"]
        if result["outcome"] in (CAUGHT, STALLED):
            trial = (result["scenario"], result["seed"], result["buggify"])
            self._suspect = (trial, result)
            if trial in self.controls:
                self._judge_suspect()

    def _judge_suspect(self) -> None:
        assert self._suspect is not None
        trial, result = self._suspect
        self._suspect = None
        control = self.controls[trial]
        result["control"] = {k: control.get(k) for k in ("outcome", "found", "replay")}
        if control["outcome"] == VALID:
            self.caught = result
        elif control["outcome"] == OUT_OF_TIME:
            result["control"]["found"] = "the safe run did not finish in time"
            self.false_alarms.append(result)
        else:
            self.false_alarms.append(result)

    def failed(self, message: str) -> None:
        """The engine raised instead of answering."""
        self.error = message
        self._suspect = None
        self.done = True

    # -- the answer --------------------------------------------------------------------------

    @property
    def outcome(self) -> str:
        if self.caught is not None:
            return CAUGHT
        if self.error is not None:
            return ERROR
        if any(t["outcome"] == OUT_OF_TIME for t in self.tried) or (
            self.engine == "sim" and len(self.tried) < len(self.settings.trials())
        ):
            return OUT_OF_TIME
        return VALID

    def to_json(self) -> dict[str, Any]:
        caught = self.caught
        answer: dict[str, Any] = {
            "outcome": self.outcome,
            "tried": len(self.tried),
            "seconds": round(self.spent_s, 1),
        }
        if self.engine == "sim":
            answer["trials"] = [
                {k: t.get(k) for k in ("scenario", "seed", "buggify", "outcome", "found")}
                | {"seconds": round(t["seconds"], 1)}
                for t in self.tried
            ]
        if caught is not None:
            if self.engine == "sim":
                index = self.tried.index(caught)
                answer["tried_to_detection"] = index + 1
                answer["seconds_to_detection"] = round(
                    sum(t["seconds"] for t in self.tried[: index + 1]), 1
                )
            elif self.engine == "machine":
                answer["tried_to_detection"] = caught.get("examples_to_failure")
                answer["seconds_to_detection"] = _round(caught.get("seconds_to_failure"))
            else:
                answer["tried_to_detection"] = 1
                answer["seconds_to_detection"] = round(caught["seconds"], 1)
            keys = ("found", "replay", "steps", "printed_steps", "control", "replays_ablated")
            for key in (*keys, "safe_failure", "history"):
                if caught.get(key) is not None:
                    answer[key] = caught[key]
            if self.engine == "sim" and caught["outcome"] == STALLED:
                answer["stall"] = True
        elif self.engine == "machine" and self.tried:
            answer["examples"] = self.tried[0].get("examples")
        if self.false_alarms:
            answer["false_alarms"] = [
                {k: f.get(k) for k in ("found", "replay", "steps", "control", "safe_failure")}
                for f in self.false_alarms
            ]
        if self.error is not None:
            answer["error"] = self.error
        return answer


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def run(
    searches: list[Search],
    jobs: int,
    finished: Callable[[Search], None] = lambda _: None,
) -> None:
    """Run `searches` to their ends over `jobs` worker processes, at most one trial of each
    search at a time; the first searches in the list go first."""
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs) as pool:
        running: dict[concurrent.futures.Future[dict[str, Any]], Search] = {}
        while True:
            for search in searches:
                if len(running) >= jobs:
                    break
                if search.busy or search.done:
                    continue
                task = search.next_task()
                if task is None:
                    finished(search)
                    continue
                function, args = task
                running[pool.submit(function, *args)] = search
                search.busy = True
            if not running:
                break
            ready, _ = concurrent.futures.wait(
                running, return_when=concurrent.futures.FIRST_COMPLETED
            )
            for future in ready:
                search = running.pop(future)
                search.busy = False
                try:
                    search.take(future.result())
                except Exception as exc:  # noqa: BLE001 - one engine failing ends its search only
                    search.failed(f"{type(exc).__name__}: {exc}"[:300])
                if search.done:
                    finished(search)
