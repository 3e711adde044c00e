"""Migration strategies: the safe one vecmig stands behind, and the naive plan as blog posts
write it, kept so that the checker can show it breaking.

A strategy is data: the operations in `layer` and `workers` read these switches, so both
strategies run through the very same drivers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Strategy:
    name: str
    fenced_writes: bool
    """Writes, copies and repairs apply only if newer (tombstones included)."""
    repair_log: bool
    """A failed secondary write is queued for repair instead of forgotten."""
    checkpointed_backfill: bool
    """The backfill resumes from its durable checkpoint and copies tombstones too."""
    phase_protocol: bool
    """Phases are published only after every live instance acknowledged the last one, through
    gates, and an instance whose lease ran out stops serving."""
    write_old_after_cutover: bool
    """CUTOVER keeps old current (secondary writes), so ROLLBACK is one step."""
    read_fallback: bool
    """A read that its side cannot serve falls back to the other side when that one is current."""
    freshness_overlay: bool
    """Search results from a side whose writes become searchable late are corrected."""
    verify_before_shadow: bool
    """The verification diff and its repairs run before SHADOW."""


SAFE = Strategy(
    name="safe",
    fenced_writes=True,
    repair_log=True,
    checkpointed_backfill=True,
    phase_protocol=True,
    write_old_after_cutover=True,
    read_fallback=True,
    freshness_overlay=True,
    verify_before_shadow=True,
)

NAIVE = Strategy(
    name="naive",
    fenced_writes=False,
    repair_log=False,
    checkpointed_backfill=False,
    phase_protocol=False,
    write_old_after_cutover=False,
    read_fallback=False,
    freshness_overlay=False,
    verify_before_shadow=False,
)

STRATEGIES = {s.name: s for s in (SAFE, NAIVE)}


def strategy_named(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(
            f"unknown strategy {name!r}; valid strategies: {', '.join(sorted(STRATEGIES))}"
        ) from None
