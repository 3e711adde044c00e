"""Liveness: whether the migration's plan kept making progress, judged from the history.

A controller that walks a plan records it (`plan`: its steps and how long a gate may hold),
each phase it publishes (`phase`) and its gate refusals (`gate`, with the reasons). A run is
*stalled* when the plan did not reach its last step by the end of the history, when the plan
could not be walked at all (it names a step the phase table does not allow), or when one gate
held longer than the plan's bound. A stalled run is not valid, whatever the anomaly counts
say: a migration that stops making progress has failed, even if it served every read.

Histories without a `plan` event (the live service walks phases by hand, the state machine
steps them itself) are not judged for liveness.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SECOND = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Stall:
    """Why a run is stalled."""

    why: str
    """"unfinished", "held" or "invalid"."""
    phase: str | None
    """The phase the run was in when it stalled."""
    target: str | None = None
    """The phase the held gate led to."""
    held_s: float = 0.0
    reasons: tuple[str, ...] = ()
    steps_done: int = 0
    steps: int = 0
    time: int = 0
    """When the gate began to hold (ns, history time)."""

    def describe(self) -> str:
        if self.why == "invalid":
            return "the plan cannot be walked: " + "; ".join(self.reasons)
        held = (
            f"; the gate to {self.target} held {self.held_s:.1f} s: " + "; ".join(self.reasons)
            if self.target
            else ""
        )
        if self.why == "unfinished":
            return (
                f"the plan stopped in {self.phase} after {self.steps_done} of {self.steps} "
                f"steps{held}"
            )
        return f"in {self.phase}{held}"

    def to_json(self) -> dict[str, Any]:
        return {
            "why": self.why,
            "phase": self.phase,
            "target": self.target,
            "held_s": round(self.held_s, 3),
            "reasons": list(self.reasons),
            "steps_done": self.steps_done,
            "steps": self.steps,
            "time": self.time,
            "description": self.describe(),
        }


@dataclass(slots=True)
class Progress:
    """Follows plan, phase and gate events in time order (`Progress.finish` judges)."""

    steps: int | None = None
    """How many steps the plan has (None: no plan seen)."""
    stall_after_ns: int | None = None
    invalid: tuple[str, ...] = ()
    done: int = 0
    phase: str | None = None
    held_since: int | None = None
    held_target: str | None = None
    held_reasons: tuple[str, ...] = ()
    longest: Stall | None = field(default=None)
    """The first gate that held past the bound."""

    def plan(self, time: int, value: Mapping[str, Any]) -> None:
        self.steps = len(value["steps"])
        bound = value.get("stall_after_s")
        self.stall_after_ns = None if bound is None else int(bound * SECOND)
        self.invalid = tuple(value.get("invalid") or ())
        self.done = 0
        self.held_since = None

    def phase_published(self, time: int, name: str) -> None:
        self._close(time)
        self.phase = name
        if self.steps is not None:
            self.done += 1

    def gate(self, time: int, value: Mapping[str, Any]) -> None:
        target = value.get("target")
        if self.held_since is None or target != self.held_target:
            self._close(time)
            self.held_since, self.held_target = time, target
        self.held_reasons = tuple(str(r) for r in value.get("reasons", ()))

    def _close(self, time: int) -> None:
        """A held stretch ends (a phase was published, or another gate began to hold)."""
        since = self.held_since
        limit = self.stall_after_ns
        held_too_long = since is not None and limit is not None and time - since > limit
        if held_too_long and self.longest is None:
            self.longest = self._stall("held", time)
        self.held_since = None

    def _stall(self, why: str, time: int) -> Stall:
        since = self.held_since
        return Stall(
            why,
            self.phase,
            self.held_target if since is not None else None,
            (time - since) / SECOND if since is not None else 0.0,
            self.held_reasons if since is not None else (),
            self.done,
            self.steps or 0,
            since if since is not None else time,
        )

    def finish(self, end: int) -> Stall | None:
        """The stall, if the run stalled; `end` is the time of the history's last event."""
        if self.steps is None:
            return None
        if self.invalid:
            return Stall("invalid", self.phase, reasons=self.invalid, steps=self.steps, time=end)
        if self.done < self.steps:
            return self._stall("unfinished", end)
        self._close(end)
        return self.longest
