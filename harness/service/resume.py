"""What a service checks before it serves: the state it resumed against both sides.

The state file says where the migration is (phase, epoch, backfill checkpoint); the sides
say where it has been. Each side that can keep one (`MarkedSide`) carries a marker: the
migration's id and the last epoch and phase the service wrote there, always after the state
saved them. So on a correct resume a side's marker is at the state's epoch or one behind it
(a crash between the two writes), never ahead. A marker ahead of the state is a stale state
(a copy of the file, a restored backup); a marker of another migration is a state, or a side,
that belongs to another migration. The backfill checkpoint is checked directly: the id at its
cursor, copied already, must be on new if old has it.

Each problem is a sentence naming what was found and what to do; the service refuses to start
while there is one (exit 2).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vecmig.harness.clusters.base import ClusterPort, MarkedSide, Side
from vecmig.harness.core.phases import Phase
from vecmig.harness.core.state import MigrationState


def marker_for(migration: str, phase: Phase, epoch: int) -> dict[str, Any]:
    return {"migration": migration, "phase": phase.value, "epoch": epoch}


def resume_problems(
    state: MigrationState,
    migration: str,
    sides: Mapping[Side, ClusterPort],
    *,
    fresh: bool,
) -> list[str]:
    """Why the state must not be served against these sides (empty: it may). `fresh`: the
    state was created by this start (`--init`). Side errors propagate (`ClusterError`): a
    side that cannot answer cannot be checked, and the caller retries or gives up."""
    problems: list[str] = []
    for side, port in sides.items():
        if side is Side.OLD and state.phase is Phase.DECOMMISSIONED:
            continue  # retired: it may be gone
        if isinstance(port, MarkedSide):
            problem = _marker_problem(side, port.read_marker(), state, migration, fresh)
            if problem:
                problems.append(problem)
    if state.phase is Phase.BACKFILL and state.checkpoint.cursor is not None:
        problem = _checkpoint_problem(state, sides)
        if problem:
            problems.append(problem)
    return problems


def _marker_problem(
    side: Side,
    marker: Mapping[str, Any] | None,
    state: MigrationState,
    migration: str,
    fresh: bool,
) -> str | None:
    here = f"{state.phase.value} (epoch {state.epoch})"
    if marker is None:
        if fresh or state.epoch == 0:
            return None
        return (
            f"{side.value} carries no migration marker, but the state is at {here}: is this "
            "the side the migration ran against? Point --old/--new at the right sides"
        )
    theirs = f"{marker.get('phase')} (epoch {marker.get('epoch')})"
    if marker.get("migration") != migration:
        hint = (
            "--init starts a new migration only on sides no other migration has marked"
            if fresh
            else "the state file belongs to another migration than this side's"
        )
        return (
            f"{side.value} belongs to migration {str(marker.get('migration'))[:40]!r}, at "
            f"{theirs}; this state is migration {migration!r}: {hint}"
        )
    epoch = marker.get("epoch")
    if not isinstance(epoch, int) or epoch > state.epoch:
        return (
            f"the state is behind the sides: it says {here}, {side.value} was told {theirs}. "
            "Is the state file a stale copy (e.g. copied without its -wal file) or a restored "
            "backup? Resume with the current state file"
        )
    if epoch == state.epoch and marker.get("phase") != state.phase.value:
        return f"{side.value} was told {theirs}, the state says {here}: they disagree"
    return None


def _checkpoint_problem(state: MigrationState, sides: Mapping[Side, ClusterPort]) -> str | None:
    cursor = state.checkpoint.cursor
    assert cursor is not None
    on_old = sides[Side.OLD].get([cursor])
    on_new = sides[Side.NEW].get([cursor])
    if cursor in on_old and cursor not in on_new:
        return (
            f"the backfill checkpoint says every id up to {cursor!r} is on new "
            f"({state.checkpoint.copied} copied), but new lacks {cursor!r}, which old holds: "
            "the state is ahead of new (was new replaced or wiped?)"
        )
    return None
