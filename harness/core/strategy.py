"""Migration strategies: the safe one vecmig stands behind, the naive plan as blog posts write
it, and every protection of the safe one switched off alone (an *ablation*), so that the
harness can show each protection is needed, or which other protection covers for it.

A strategy is data: the operations in `layer`, `workers` and `controller` read these switches,
so every strategy runs through the very same drivers. `strategy_named("safe-without:read-both")`
is the safe strategy with one protection off; `PROTECTIONS` says what each one does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import MappingProxyType

PROTECTIONS: MappingProxyType[str, str] = MappingProxyType(
    {
        # writes
        "fenced-writes": "client writes apply only if newer than what the side holds "
        "(tombstones included), on the primary and the secondary",
        "repair-on-refusal": "a secondary write the side refused queues a durable repair",
        "repair-on-timeout": "a write that timed out (secondary, or primary with a secondary "
        "to follow) queues a durable repair",
        "write-intents": "a write to two sides notes its secondary first (write-ahead), so "
        "an instance dying between the two writes leaves a repair behind",
        "write-old-after-cutover": "CUTOVER keeps writing old (the secondary), so ROLLBACK is "
        "one step",
        # the backfill
        "fenced-backfill": "backfill copies apply only if newer than what new holds",
        "tombstone-copy": "the backfill copies deletes (tombstones) too",
        "durable-checkpoint": "the backfill resumes from a durable checkpoint after a crash",
        "checkpoint-after-write": "the backfill saves its checkpoint after the batch is "
        "written, not before",
        # reads
        "read-both": "a read of an id with a pending repair reads both sides and keeps the "
        "newer version",
        "read-retry": "a read that fails is tried once more (another replica)",
        "read-fallback": "a read the read side cannot serve falls back to the other side "
        "where the phase keeps it current",
        "fallback-currency-check": "a read answers from one side alone only if that side "
        "misses no acknowledged write of the id",
        "freshness-overlay": "searches on a side whose index lags re-read their hits by id",
        "mirror-repairs": "a version mismatch a mirrored read finds (and re-reads) queues repairs",
        # phases
        "adjacency-wait": "a phase is published only after every live instance "
        "acknowledged the last one",
        "oldest-epoch-ack": "an instance acknowledges the oldest phase it still runs an "
        "operation under, not the newest it learned",
        "lease-check": "an instance whose lease ran out refuses work",
        "lease-epoch-binding": "a lapsed lease is renewed only for an instance that "
        "acknowledges the current phase",
        "backfill-gate": "SHADOW waits for the backfill to complete",
        "repair-backlog-gate": "SHADOW, CUTOVER and DECOMMISSIONED wait for an empty repair log",
        "verify-before-shadow": "a verification diff (repairing what differs) before SHADOW",
        "verify-before-cutover": "a verification diff again before CUTOVER",
        "verify-before-decommission": "a verification diff again before DECOMMISSIONED",
        "mirror-gate": "CUTOVER waits for enough mirrored reads within the noise floor, "
        "recall parity and new's latency SLO",
        "decommission-soak": "DECOMMISSIONED waits for a soak with no read fallback to old",
        "abort-repairs-old": "ABORT first applies the repairs old still needs, since old "
        "becomes the only side",
        # the fake cluster (a protection of the engine, not of the layer)
        "replica-catch-up": "a fake-cluster replica coming back catches up from its peers "
        "before serving",
    }
)


def _field(name: str) -> str:
    return name.replace("-", "_")


@dataclass(frozen=True, slots=True)
class Strategy:
    """One switch per protection (`PROTECTIONS`); the safe strategy has every one on."""

    name: str
    fenced_writes: bool = True
    repair_on_refusal: bool = True
    repair_on_timeout: bool = True
    write_intents: bool = True
    write_old_after_cutover: bool = True
    fenced_backfill: bool = True
    tombstone_copy: bool = True
    durable_checkpoint: bool = True
    checkpoint_after_write: bool = True
    read_both: bool = True
    read_retry: bool = True
    read_fallback: bool = True
    fallback_currency_check: bool = True
    freshness_overlay: bool = True
    mirror_repairs: bool = True
    adjacency_wait: bool = True
    oldest_epoch_ack: bool = True
    lease_check: bool = True
    lease_epoch_binding: bool = True
    backfill_gate: bool = True
    repair_backlog_gate: bool = True
    verify_before_shadow: bool = True
    verify_before_cutover: bool = True
    verify_before_decommission: bool = True
    mirror_gate: bool = True
    decommission_soak: bool = True
    abort_repairs_old: bool = True
    replica_catch_up: bool = True

    def has(self, protection: str) -> bool:
        return bool(getattr(self, _field(protection)))

    @property
    def off(self) -> tuple[str, ...]:
        """The protections switched off, by name."""
        return tuple(p for p in PROTECTIONS if not self.has(p))

    @property
    def repairs(self) -> bool:
        """Whether anything queues repairs, so that reads and gates consult the log."""
        return self.repair_on_refusal or self.repair_on_timeout or self.write_intents

    def without(self, *protections: str) -> Strategy:
        """This strategy with `protections` switched off (an ablation)."""
        unknown = [p for p in protections if p not in PROTECTIONS]
        if unknown:
            raise ValueError(
                f"unknown protection {unknown[0]!r}; the protections are: " + ", ".join(PROTECTIONS)
            )
        name = f"{self.name}-without:{','.join(protections)}"
        return dataclasses.replace(self, name=name, **{_field(p): False for p in protections})


SAFE = Strategy(name="safe")

NAIVE = dataclasses.replace(
    SAFE.without(*(p for p in PROTECTIONS if p not in {"backfill-gate", "replica-catch-up"})),
    name="naive",
)
"""The plan as blog posts write it: write old then new with no versions and no repair log,
backfill by plain insert with the cursor in memory, flip the config value without waiting for
app instances, no read retries, fallbacks or freshness overlay, no verification. It waits for
the backfill to finish before SHADOW, as everyone does. (The clusters keep their own replica
catch-up: that is the engine's, not the plan's.)"""

STRATEGIES = {s.name: s for s in (SAFE, NAIVE)}
ABLATION_PREFIX = "safe-without:"


def strategy_named(name: str) -> Strategy:
    """`safe`, `naive`, or `safe-without:NAME[,NAME...]` (see `PROTECTIONS`)."""
    if name.startswith(ABLATION_PREFIX):
        names = [n.strip() for n in name[len(ABLATION_PREFIX) :].split(",") if n.strip()]
        if not names:
            raise ValueError(
                f"{name!r} names no protection; the protections are: {', '.join(PROTECTIONS)}"
            )
        return SAFE.without(*names)
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(
            f"unknown strategy {name!r}; valid strategies: {', '.join(sorted(STRATEGIES))}, "
            f"or {ABLATION_PREFIX}NAME[,NAME] with NAME one of: {', '.join(PROTECTIONS)}"
        ) from None
