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
SCENARIOS = (
    "old-outage-in-shadow",
    "new-flaps-in-cutover",
    "abort-after-cutover",
    "default",
    "eventually-consistent",
    "node-lost-cutover",
)
"""The shipped scenarios each ablation runs first, each with its own seed. The first three
are small (a few seconds each) and were written for protections that the other three never
needed: new dropping acknowledged writes while old is down in SHADOW (the diffs before SHADOW
and CUTOVER), new flapping after CUTOVER (the decommission soak), and an ABORT while old is
down (the repairs ABORT applies first)."""
BUGGIFY_SCENARIO = "default"
"""The scenario `--buggify` draws settings and faults over, for the seeds after those."""
REFERENCE = "naive"


@dataclass(frozen=True, slots=True)
class Cover:
    """An ablation no engine catches alone, because other protections repair its damage
    before any read sees it: `by` names them, and ablating it with them must be caught."""

    by: tuple[str, ...]
    why: str


_DIFFS = ("verify-before-shadow", "verify-before-cutover")
_NEW_FIXED = (
    "the diff before SHADOW (and again before CUTOVER) finds what the copy got wrong on new and "
    "repairs it while reads still come from old, so no read sees it"
)

COVERS: dict[str, Cover] = {
    # The backfill's protections: new serves no read before CUTOVER, and two diffs come first.
    "fenced-backfill": Cover(_DIFFS, "a copy that overwrote a newer live write: " + _NEW_FIXED),
    "tombstone-copy": Cover(_DIFFS, "a delete the copy skipped: " + _NEW_FIXED),
    "checkpoint-after-write": Cover(
        _DIFFS, "a batch checkpointed, then lost in a crash before it was written: " + _NEW_FIXED
    ),
    "durable-checkpoint": Cover(
        ("fenced-backfill", *_DIFFS),
        "a restarted copy starts over from the first record: the fenced copy makes that "
        "idempotent (it costs time only), and the diffs repair what an unfenced one overwrote",
    ),
    "backfill-gate": Cover(_DIFFS, "SHADOW before the copy ended: " + _NEW_FIXED),
    "repair-backlog-gate": Cover(
        _DIFFS,
        "a phase step with repairs still pending: a repair not yet applied leaves its id "
        "different on the two sides, so the diff the same gate runs finds it and holds",
    ),
    # The diffs cover for each other.
    "verify-before-shadow": Cover(
        ("verify-before-cutover",), "the diff before CUTOVER finds and repairs the same ids"
    ),
    "verify-before-cutover": Cover(
        ("verify-before-shadow",),
        "the diff before SHADOW already repaired the copy; what SHADOW adds is in the repair log",
    ),
    "verify-before-decommission": Cover(
        ("verify-before-cutover", "repair-backlog-gate"),
        "new is complete when CUTOVER begins (the diff before it) and stays so as the primary, "
        "its failed secondary writes to old repaired through the log the backlog gate drains; "
        "the last diff finds only what the one before CUTOVER would have",
    ),
    # Reads: each way to avoid a failed read covers for the other.
    "read-retry": Cover(("read-fallback",), "a read a replica failed falls back to the other side"),
    "read-fallback": Cover(("read-retry",), "a read a replica failed is retried on another one"),
    "mirror-repairs": Cover(
        ("verify-before-cutover",),
        "a mismatch a mirrored read finds in SHADOW is found again by the diff before CUTOVER",
    ),
    "mirror-gate": Cover(
        ("verify-before-cutover",),
        "new's damage the mirrored reads would show is repaired by the diff before CUTOVER; "
        "what is left to the gate is recall and latency, which the checker does not count",
    ),
    "decommission-soak": Cover(
        ("verify-before-decommission",),
        "a read that fell back to old in CUTOVER points at a gap on new, which the diff before "
        "DECOMMISSIONED finds and repairs",
    ),
    # Phases.
    "lease-check": Cover(
        ("lease-epoch-binding",),
        "an instance whose lease lapsed renews it only by acknowledging the current phase",
    ),
    "lease-epoch-binding": Cover(
        ("lease-check",), "an instance whose lease lapsed refuses work until it renews"
    ),
}

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
