"""The fault families a fake cluster can suffer, their parameters, and the dice they roll.

Kept apart from the cluster so that a fault schedule (pure data) can be checked at load time
against `CLUSTER_FAULT_FAMILIES` and `FAULT_PARAMS` without building a cluster, and so that
the cluster code reads as storage, not as chaos. Randomness comes only from generators
seeded by the cluster's seed, one stream per family: enabling lost-ack does not shift the
dice of error-rate, and the same seed with the same calls gives the same outcomes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class FaultParams:
    """Parameter names a family's start and stop accept (stop ignores start-only ones)."""

    start: tuple[str, ...]
    stop: tuple[str, ...]
    required: tuple[str, ...] = ()


FAULT_PARAMS: Mapping[str, FaultParams] = {
    "node-crash": FaultParams(start=("node", "lose_data"), stop=("node",), required=("node",)),
    "node-pause": FaultParams(start=("node",), stop=("node",), required=("node",)),
    "error-rate": FaultParams(start=("rate",), stop=(), required=("rate",)),
    "lost-ack": FaultParams(start=("rate",), stop=(), required=("rate",)),
    "visibility-lag": FaultParams(start=(), stop=()),
    "index-rebuild": FaultParams(start=(), stop=()),
    "slow-replica": FaultParams(
        start=("node", "factor"), stop=("node",), required=("node", "factor")
    ),
}

CLUSTER_FAULT_FAMILIES: tuple[str, ...] = tuple(FAULT_PARAMS)


def check_family(family: str) -> FaultParams:
    if family not in FAULT_PARAMS:
        raise ValueError(
            f"unknown cluster fault family {family!r}; valid ones are "
            f"{', '.join(CLUSTER_FAULT_FAMILIES)}"
        )
    return FAULT_PARAMS[family]


def start_params(family: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters of a start, checked: unknown or missing names raise ValueError."""
    spec = check_family(family)
    unknown = sorted(set(params) - set(spec.start))
    if unknown:
        raise ValueError(
            f"fault {family!r} got unknown parameter(s) {unknown}; it takes {list(spec.start)}"
        )
    missing = [name for name in spec.required if name not in params]
    if missing:
        raise ValueError(f"fault {family!r} needs parameter(s) {missing}")
    return dict(params)


def stop_params(family: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters of a stop: a schedule may repeat the start's parameters, so those are
    dropped rather than refused; anything else is a typo and raises ValueError."""
    spec = check_family(family)
    unknown = sorted(set(params) - set(spec.start) - set(spec.stop))
    if unknown:
        raise ValueError(
            f"fault {family!r} got unknown parameter(s) {unknown} on stop; "
            f"it takes {list(spec.stop)}"
        )
    missing = [name for name in spec.stop if name not in params]
    if missing:
        raise ValueError(f"stopping fault {family!r} needs parameter(s) {missing}")
    return {name: params[name] for name in spec.stop}


def check_rate(rate: object) -> float:
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be a number from 0 to 1, got {rate!r}")
    return float(rate)


def check_factor(factor: object) -> float:
    if isinstance(factor, bool) or not isinstance(factor, int | float) or not factor >= 1.0:
        raise ValueError(f"slow-replica factor must be a number >= 1.0, got {factor!r}")
    return float(factor)


@dataclass
class ActiveFaults:
    """Which faults are on, with their parameters; node crashes and pauses live in the
    cluster's node status instead, since they change what the nodes hold."""

    error_rate: float = 0.0
    lost_ack_rate: float = 0.0
    visibility_lag: bool = False
    index_rebuild: bool = False
    slow: dict[str, float] = field(default_factory=dict)


class Dice:
    """Seeded random draws, one independent stream per family that rolls them."""

    def __init__(self, seed: int) -> None:
        error_seq, lost_seq, index_seq = np.random.SeedSequence(seed).spawn(3)
        self._errors = np.random.default_rng(error_seq)
        self._lost = np.random.default_rng(lost_seq)
        self.index_seed = int(index_seq.generate_state(1)[0] % (2**31))

    def call_fails(self, rate: float) -> bool:
        # No draw while the fault is off: turning it on later gives the same sequence
        # whatever ran before.
        return rate > 0.0 and bool(self._errors.random() < rate)

    def write_lost(self, rate: float) -> bool:
        return rate > 0.0 and bool(self._lost.random() < rate)
