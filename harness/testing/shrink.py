"""Run a state machine until Hypothesis finds a failure, and keep what it printed for it: the
shrunk steps, as code that replays the failure. The naive-plan teeth tests and `vecmig zoo`
both ask this question of a machine: does it break, and how, in the fewest steps?"""

from __future__ import annotations

import contextlib
import math
import re
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import hypothesis.internal.conjecture.engine
from hypothesis import HealthCheck, settings
from hypothesis import Phase as Stage
from hypothesis.errors import HypothesisException
from hypothesis.stateful import MultipleResults, RuleBasedStateMachine, run_state_machine_as_test

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
    """The budget ran out before any failure: "no failure" is not the last word."""

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


class OutOfTime(BaseException):
    """Raised in a machine's constructor once the budget is spent and no failure was seen:
    Hypothesis lets a BaseException (other than SystemExit and GeneratorExit) end the run
    at once, where a rejected example would only confuse its record of what it drew."""


def search(
    machine: type[RuleBasedStateMachine],
    config: settings = TEETH,
    budget_s: float | None = None,
) -> Search:
    """Run `machine` under `config` until Hypothesis finds a failure and shrinks it, or runs
    every example. With `budget_s`, a search that has found no failure when the budget is
    spent stops there; one that has goes on shrinking, for at most the budget again (at
    least a minute)."""
    started = time.monotonic()
    deadline = None if budget_s is None else started + budget_s
    count = {"examples": 0}
    first: dict[str, float] = {}

    class Budgeted(machine):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            if deadline is not None and not first and time.monotonic() > deadline:
                raise OutOfTime
            count["examples"] += 1
            super().__init__()

        def teardown(self) -> None:
            # Hypothesis runs teardown after a step failed too (the exception is in flight),
            # and after its own control exceptions, which are no failure.
            failed = _is_failure(sys.exc_info()[1])
            try:
                super().teardown()
            except Exception:
                failed = True
                raise
            finally:
                if failed and not first:
                    first.update(examples=count["examples"], at=time.monotonic())

    Budgeted.__name__ = Budgeted.__qualname__ = machine.__name__
    error: BaseException | None = None
    out_of_time = False
    with _shrinking_for(max(60.0, budget_s or 0.0) if budget_s is not None else None):
        try:
            run_state_machine_as_test(Budgeted, settings=config)
        except OutOfTime:
            out_of_time = True
        except HypothesisException as exc:
            # Hypothesis (6.1xx) answers the OutOfTime raised while it draws an example with
            # FlakyStrategyDefinition ("inconsistent data generation"): with no failure seen
            # and the budget spent, that is the budget running out, not a finding.
            spent = deadline is not None and time.monotonic() > deadline
            if spent and not first:
                out_of_time = True
            else:
                error = exc
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
        out_of_time=out_of_time,
    )


def _is_failure(exc: BaseException | None) -> bool:
    return isinstance(exc, Exception) and not isinstance(exc, HypothesisException)


@contextlib.contextmanager
def _shrinking_for(seconds: float | None) -> Iterator[None]:
    """Hypothesis gives up shrinking after five minutes (`MAX_SHRINKING_SECONDS`, a module
    constant of its engine, not a setting); under a budget, after `seconds`. If a Hypothesis
    release drops the constant, its own limit applies."""
    engine = hypothesis.internal.conjecture.engine
    if seconds is None or not hasattr(engine, "MAX_SHRINKING_SECONDS"):
        yield
        return
    saved = engine.MAX_SHRINKING_SECONDS
    engine.MAX_SHRINKING_SECONDS = math.ceil(seconds)  # an int in Hypothesis' engine
    try:
        yield
    finally:
        engine.MAX_SHRINKING_SECONDS = saved


# -- replaying printed steps -------------------------------------------------------------------

_ASSIGNED = re.compile(r"^((?:ops_\d+, )*ops_\d+) = (state\..*)$")
NO_OPERATION = -1
"""The handle a replay binds when a rule started fewer operations than when it was printed
(on another strategy, say): no operation has it, so the rules that take it do nothing."""


def _results(value: Any, n: int) -> list[Any]:
    values = list(value.values) if isinstance(value, MultipleResults) else [value]
    return (values + [NO_OPERATION] * n)[:n]


def replay(steps: Sequence[str], machine: type[RuleBasedStateMachine]) -> BaseException | None:
    """Run steps as Hypothesis printed them on `machine` (in place of the class they name);
    the exception they raise, or None if they pass (teardown included, if printed)."""
    lines = ["state = machine()"]
    for step in steps[1:]:
        assigned = _ASSIGNED.match(step)
        if assigned:
            names, call = assigned.groups()
            count = names.count(",") + 1
            lines.append(f"{names}, = _results({call}, {count})")
        else:
            lines.append(step)
    scope = {"machine": machine, "frozenset": frozenset, "_results": _results}
    try:
        exec("\n".join(lines), scope)
    except Exception as exc:  # noqa: BLE001 - any failure is the answer
        return exc
    return None


def signature(error: BaseException | None) -> str:
    """What a failure is, apart from its counts and numbers: its type and first line."""
    if error is None:
        return ""
    first = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: " + re.sub(r"\d+", "N", first)


def minimize(steps: Sequence[str], machine: type[RuleBasedStateMachine]) -> tuple[str, ...]:
    """Drop every step the failure does not need, one at a time, as long as the replay fails
    the same way (`signature`). Hypothesis's shrinker works on the choices behind the steps,
    and on this machine many deletions misalign them (a rule's index among the rules whose
    preconditions hold moves), so a failure it found often keeps steps that do nothing."""
    wanted = signature(replay(steps, machine))
    if not wanted:
        return tuple(steps)
    kept = list(steps)
    changed = True
    while changed:
        changed = False
        for i in range(len(kept) - 2, 0, -1):  # never the construction nor the teardown
            if i >= len(kept) - 1:
                continue
            trial = kept[:i] + kept[i + 1 :]
            if signature(replay(trial, machine)) == wanted:
                kept, changed = trial, True
    return tuple(kept)
