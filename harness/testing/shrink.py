"""Run a state machine until Hypothesis finds a failure, and keep what it printed for it: the
shrunk steps, as code that replays the failure. The naive-plan teeth tests and `vecmig zoo`
both ask this question of a machine: does it break, and how, in the fewest steps?"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass

from hypothesis import HealthCheck, assume, settings
from hypothesis import Phase as Stage
from hypothesis.errors import Unsatisfiable
from hypothesis.stateful import RuleBasedStateMachine, run_state_machine_as_test

TEETH = settings(
    phases=[Stage.generate, Stage.shrink],  # no "explain" phase: it reruns the case a lot
    report_multiple_bugs=False,
    max_examples=500,
    stateful_step_count=25,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
"""Settings for a search that must find a failure: derandomized (the same examples on every
run, so the answer reproduces), no example database, generation and shrinking only."""

_PRINTED = re.compile(r"^state = .*?^state\.teardown\(\)$", re.M | re.S)


@dataclass(frozen=True, slots=True)
class Search:
    """What one search of a machine found."""

    error: BaseException | None
    """The failure Hypothesis reported (shrunk), or None if every example passed."""
    steps: tuple[str, ...]
    """The shrunk steps as Hypothesis printed them, `state = ...` to `state.teardown()`."""
    examples: int
    """How many examples the machine ran (the first failing one and its shrinks included)."""
    examples_to_failure: int | None
    """How many examples it ran up to the first failure, that one included."""
    seconds: float
    seconds_to_failure: float | None
    out_of_time: bool
    """The budget ran out: later examples were skipped, so "no failure" is not the last word."""

    @property
    def found(self) -> bool:
        return self.error is not None

    @property
    def headline(self) -> str:
        """The failure's first line, with its type."""
        if self.error is None:
            return ""
        first = (str(self.error).strip().splitlines() or [""])[0]
        return f"{type(self.error).__name__}: {first}"[:300]

    @property
    def rules(self) -> tuple[str, ...]:
        """The steps without the machine's construction and its teardown."""
        return tuple(s for s in self.steps if re.match(r"(state\.|ops_\d+ = )", s))[:-1]


def search(
    machine: type[RuleBasedStateMachine],
    config: settings = TEETH,
    budget_s: float | None = None,
) -> Search:
    """Run `machine` under `config` until Hypothesis finds a failure and shrinks it, or runs
    every example. With `budget_s`, examples that would start after the budget are rejected
    (cheaply: before the machine builds anything), so a long search ends soon after it, and a
    failure found in time keeps the best shrink reached by then."""
    started = time.monotonic()
    deadline = None if budget_s is None else started + budget_s
    count = {"examples": 0, "skipped": 0}
    first: dict[str, float] = {}

    class Budgeted(machine):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            if deadline is not None and time.monotonic() > deadline:
                count["skipped"] += 1
                assume(False)
            count["examples"] += 1
            super().__init__()

        def teardown(self) -> None:
            # Hypothesis runs teardown after a step failed too (the exception is in flight).
            failed = sys.exc_info()[0] is not None
            try:
                super().teardown()
            except BaseException:
                failed = True
                raise
            finally:
                if failed and not first:
                    first.update(examples=count["examples"], at=time.monotonic())

    Budgeted.__name__ = Budgeted.__qualname__ = machine.__name__
    error: BaseException | None = None
    try:
        run_state_machine_as_test(Budgeted, settings=config)
    except Unsatisfiable:
        pass  # every example was skipped: the budget ran out before the first one
    except Exception as exc:  # noqa: BLE001 - any failure of the machine is what we look for
        error = exc
    notes = "\n".join(getattr(error, "__notes__", []) or [])
    printed = _PRINTED.search(notes)
    return Search(
        error=error,
        steps=tuple(printed.group(0).splitlines()) if printed else (),
        examples=count["examples"],
        examples_to_failure=int(first["examples"]) if first and error is not None else None,
        seconds=time.monotonic() - started,
        seconds_to_failure=first["at"] - started if first and error is not None else None,
        out_of_time=count["skipped"] > 0,
    )
