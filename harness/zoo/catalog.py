"""What `vecmig zoo` runs: a row per ablation of the safe strategy (every name in
`PROTECTIONS`) and the naive plan as a reference, on the engines it names; and what it knows
beforehand: which protections cover for another (ablating them all must be caught, and that
row is run to show it), and which protections guard quality rather than correctness (their ablation
cannot cause an anomaly the checker counts). docs/zoo.md says why for each."""

from __future__ import annotations

from dataclasses import dataclass

from vecmig.harness.core.strategy import PROTECTIONS

ENGINES = ("sim", "machine", "live")
DEFAULT_ENGINES = ("sim", "machine")
SCENARIOS = ("default", "eventually-consistent", "node-lost-cutover")
"""The shipped scenarios each ablation runs first, each with its own seed."""
BUGGIFY_SCENARIO = "default"
"""The scenario `--buggify` draws settings and faults over, for the seeds after those."""
REFERENCE = "naive"


@dataclass(frozen=True, slots=True)
class Cover:
    """An ablation no engine catches alone, because other protections repair its damage
    before any read sees it: `by` names them, and ablating it with them must be caught."""

    by: tuple[str, ...]
    why: str


COVERS: dict[str, Cover] = {}

QUALITY: dict[str, str] = {}
"""Protections that guard quality (recall, latency, how soon a gate may pass) rather than what
the checker counts, with the reason their ablation cannot cause an anomaly."""


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the matrix: the protections switched off (or the naive plan)."""

    protections: tuple[str, ...]
    kind: str
    """"reference" (the naive plan), "ablation" (one protection) or "cover" (an ablation
    together with the protections declared to cover for it)."""

    @property
    def name(self) -> str:
        return "+".join(self.protections)

    @property
    def strategy(self) -> str:
        """The `--strategy` value that runs this row."""
        if self.kind == "reference":
            return REFERENCE
        return "safe-without:" + ",".join(self.protections)


def rows(only: tuple[str, ...] = ()) -> list[Row]:
    """The naive reference and every ablation, in `PROTECTIONS` order; `only` keeps those named
    (an unknown name raises ValueError naming the valid ones)."""
    every = [Row((REFERENCE,), "reference"), *(Row((p,), "ablation") for p in PROTECTIONS)]
    if not only:
        return every
    known = {row.name for row in every}
    unknown = [name for name in only if name not in known]
    if unknown:
        raise ValueError(
            f"unknown ablation {unknown[0]!r}; the zoo runs {REFERENCE!r} and: "
            + ", ".join(PROTECTIONS)
        )
    return [row for row in every if row.name in only]


def cover(row: Row) -> Row | None:
    """The row to run for an ablation no engine caught: it and the protections declared to
    cover for it, all switched off."""
    declared = COVERS.get(row.name) if row.kind == "ablation" else None
    return None if declared is None else Row((row.protections[0], *declared.by), "cover")


def check_catalog() -> None:
    """Every name in COVERS and QUALITY is a protection (a typo would silently cover nothing)."""
    for name, declared in COVERS.items():
        for protection in (name, *declared.by):
            if protection not in PROTECTIONS:
                raise ValueError(f"COVERS names {protection!r}, which is not a protection")
    for name in QUALITY:
        if name not in PROTECTIONS:
            raise ValueError(f"QUALITY names {name!r}, which is not a protection")
