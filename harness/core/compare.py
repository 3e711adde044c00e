"""ANN-aware comparison of mirrored reads, calibrated against a measured noise floor.

Two correct HNSW indexes disagree on some results, so "the lists differ" proves nothing. A
mirrored read is compared by overlap@k (recall of new against old), rank-biased overlap and
the score deltas of the ids both returned. Whether a difference is a *discrepancy* is decided
against the noise floor: how far old's own answers stray from the exact answer, and from a
second asking of old (as Diffy compares two copies of the old service). Separately, any id
that both sides return at different versions is a discrepancy outright: that is stale data,
not ANN noise.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vecmig.harness.clusters.base import Hit


@dataclass(frozen=True, slots=True)
class Comparison:
    k: int
    overlap: float
    """|ids(a) ∩ ids(b)| / k."""
    rbo: float
    """Rank-biased overlap (extrapolated), p = 0.9."""
    mean_score_delta: float
    """Mean |score_a - score_b| over the ids both returned."""
    version_mismatches: tuple[str, ...]
    """Ids both returned, at different versions."""


def rank_biased_overlap(a: Sequence[str], b: Sequence[str], p: float = 0.9) -> float:
    """Webber et al.'s RBO_ext for two top-k lists of equal depth (1.0 for identical lists)."""
    depth = max(len(a), len(b))
    if depth == 0:
        return 1.0
    seen_a: set[str] = set()
    seen_b: set[str] = set()
    overlap = 0
    total = 0.0
    for d in range(1, depth + 1):
        x = a[d - 1] if d <= len(a) else None
        y = b[d - 1] if d <= len(b) else None
        if x is not None and y is not None and x == y:
            overlap += 1
        else:
            if x is not None:
                overlap += x in seen_b
                seen_a.add(x)
            if y is not None:
                overlap += y in seen_a
                seen_b.add(y)
        total += (overlap / d) * p**d
    return float((overlap / depth) * p**depth + (1 - p) / p * total)


def compare(a: Sequence[Hit], b: Sequence[Hit], k: int) -> Comparison:
    ids_a = [h.id for h in a[:k]]
    ids_b = [h.id for h in b[:k]]
    by_id_b = {h.id: h for h in b[:k]}
    common = [h for h in a[:k] if h.id in by_id_b]
    deltas = [abs(h.score - by_id_b[h.id].score) for h in common]
    mismatched = tuple(sorted(h.id for h in common if h.version != by_id_b[h.id].version))
    denominator = min(k, max(len(ids_a), len(ids_b)))
    return Comparison(
        k=k,
        # Two empty answers (a filter that matches nothing on both sides) agree completely.
        overlap=len(common) / denominator if denominator else 1.0,
        rbo=rank_biased_overlap(ids_a, ids_b),
        mean_score_delta=float(sum(deltas) / len(deltas)) if deltas else 0.0,
        version_mismatches=mismatched,
    )


def recall_against(hits: Sequence[Hit], exact_ids: Sequence[str], k: int) -> float:
    truth = set(exact_ids[:k])
    if not truth:
        return 1.0
    return len(truth.intersection(h.id for h in hits[:k])) / len(truth)


# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NoiseFloor:
    """How often a correct ANN answer falls below `threshold` overlap with another correct one.

    `rate` is measured on old: the fraction of calibration queries where old's answer had an
    overlap below `threshold` with the exact answer, or with old asked again. Two independent
    correct indexes each stray by about that much, so mirrored reads may disagree up to about
    twice as often, plus sampling error: `allowed_rate(n)` says how much for n mirrored reads.
    """

    threshold: float
    rate: float
    samples: int
    old_recall: float

    def allowed_rate(self, n: int, live_rate: float | None = None) -> float:
        """The mismatch rate over `n` mirrored reads that is still noise: twice old's own
        stray rate (two indexes stray independently), plus three standard errors and 1%.
        `live_rate` is old's stray rate on the mirrored queries themselves: calibration asks
        unfiltered queries, while filtered ones, which clients also send, stray more."""
        if n <= 0:
            return 0.0
        base = min(1.0, 2.0 * max(self.rate, live_rate or 0.0))
        return min(1.0, base + 3.0 * math.sqrt(max(base, 1.0 / n) * (1.0 - base) / n) + 0.01)

    def is_discrepancy(self, comparison: Comparison) -> bool:
        return bool(comparison.version_mismatches) or comparison.overlap < self.threshold

    def to_json(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "rate": round(self.rate, 6),
            "samples": self.samples,
            "old_recall": round(self.old_recall, 6),
        }


def calibrate(
    old_answers: Sequence[Sequence[Hit]],
    exact_answers: Sequence[Sequence[str]],
    old_again: Sequence[Sequence[Hit]],
    k: int,
    threshold: float = 0.7,
) -> NoiseFloor:
    """Measure the noise floor from calibration queries answered by old, exactly, and by old
    again."""
    if not (len(old_answers) == len(exact_answers) == len(old_again)):
        raise ValueError("calibration needs one exact answer and one repeat per old answer")
    n = len(old_answers)
    if n == 0:
        return NoiseFloor(threshold=threshold, rate=0.0, samples=0, old_recall=1.0)
    below = 0
    recall_sum = 0.0
    for old, exact, again in zip(old_answers, exact_answers, old_again, strict=True):
        recall = recall_against(old, exact, k)
        recall_sum += recall
        repeat = compare(old, again, k).overlap
        below += recall < threshold or repeat < threshold
    return NoiseFloor(threshold=threshold, rate=below / n, samples=n, old_recall=recall_sum / n)


MIRROR_WINDOW_LIMIT = 4096
"""The most recent mirrored reads `MirrorStats` keeps one by one (the gate's window is smaller)."""


class MirrorRates:
    """The rates the CUTOVER gate reads, the same over a window of mirrored reads
    (`MirrorWindow`) as over all of them (`MirrorStats`)."""

    __slots__ = ()
    compared: int
    discrepancies: int
    old_strays: int
    recall_samples: int

    @property
    def mismatch_rate(self) -> float:
        return self.discrepancies / self.compared if self.compared else 0.0

    @property
    def live_noise_rate(self) -> float | None:
        """How often old itself strays on the mirrored queries (None without exact answers)."""
        return self.old_strays / self.recall_samples if self.recall_samples else None


@dataclass(frozen=True, slots=True)
class MirrorWindow(MirrorRates):
    """The figures of the last `compared` mirrored reads, which the CUTOVER gate judges."""

    compared: int
    discrepancies: int
    old_strays: int
    recall_samples: int
    recall_gap_sum: float
    """Sum of new's recall minus old's, over the reads that had an exact answer."""

    @property
    def recall_parity(self) -> float | None:
        return self.recall_gap_sum / self.recall_samples if self.recall_samples else None


@dataclass(slots=True)
class MirrorStats(MirrorRates):
    """Running figures of the mirrored reads, which the CUTOVER gate reads."""

    compared: int = 0
    discrepancies: int = 0
    version_mismatches: int = 0
    overlap_sum: float = 0.0
    rbo_sum: float = 0.0
    new_recall_sum: float = 0.0
    old_recall_sum: float = 0.0
    recall_samples: int = 0
    old_strays: int = 0
    """Mirrored reads (with an exact answer) where old's own answer strayed from the exact
    one as far as a discrepancy would: the noise floor of these very queries."""
    errors: int = 0
    log: list[dict[str, Any]] = field(default_factory=list)
    log_limit: int = 1000
    recent: deque[tuple[bool, bool, float | None]] = field(
        default_factory=lambda: deque(maxlen=MIRROR_WINDOW_LIMIT)
    )
    """(discrepancy, old strayed, new's recall minus old's) of each recent mirrored read."""

    def add(
        self,
        comparison: Comparison,
        discrepancy: bool,
        line: dict[str, Any] | None = None,
        recalls: tuple[float, float] | None = None,
        old_stray: bool = False,
    ) -> None:
        self.compared += 1
        self.old_strays += old_stray
        self.overlap_sum += comparison.overlap
        self.rbo_sum += comparison.rbo
        self.version_mismatches += bool(comparison.version_mismatches)
        if discrepancy:
            self.discrepancies += 1
            if line is not None and len(self.log) < self.log_limit:
                self.log.append(line)
        if recalls is not None:
            self.old_recall_sum += recalls[0]
            self.new_recall_sum += recalls[1]
            self.recall_samples += 1
        gap = None if recalls is None else recalls[1] - recalls[0]
        self.recent.append((discrepancy, old_stray, gap))

    def window(self, size: int) -> MirrorWindow:
        """The figures of the last `size` mirrored reads (all of them, if fewer). The CUTOVER
        gate judges these, not the running totals: a burst of discrepancies while a side was
        faulty would otherwise keep the gate shut until enough clean reads diluted it, without
        bound; over a window, the gate opens after one window of clean reads, and a problem
        that lasts still shows in every window."""
        last = list(itertools.islice(reversed(self.recent), size))
        gaps = [gap for _, _, gap in last if gap is not None]
        return MirrorWindow(
            compared=len(last),
            discrepancies=sum(discrepancy for discrepancy, _, _ in last),
            old_strays=sum(stray for _, stray, gap in last if gap is not None),
            recall_samples=len(gaps),
            recall_gap_sum=sum(gaps),
        )

    @property
    def recall_parity(self) -> float | None:
        """new's recall minus old's, over mirrored reads that had an exact answer."""
        if not self.recall_samples:
            return None
        return (self.new_recall_sum - self.old_recall_sum) / self.recall_samples

    def to_json(self) -> dict[str, Any]:
        return {
            "compared": self.compared,
            "discrepancies": self.discrepancies,
            "mismatch_rate": round(self.mismatch_rate, 6),
            "version_mismatches": self.version_mismatches,
            "mean_overlap": round(self.overlap_sum / self.compared, 6) if self.compared else None,
            "mean_rbo": round(self.rbo_sum / self.compared, 6) if self.compared else None,
            "recall_parity": None if self.recall_parity is None else round(self.recall_parity, 6),
            "live_noise_rate": None
            if self.live_noise_rate is None
            else round(self.live_noise_rate, 6),
            "errors": self.errors,
        }


def discrepancy_line(
    query: dict[str, Any], old: Sequence[Hit], new: Sequence[Hit], comparison: Comparison
) -> dict[str, Any]:
    """One JSON-able line for the discrepancy log: the query, both result lists, the measures."""
    return {
        "query": query,
        "old": [[h.id, h.version, round(h.score, 6)] for h in old],
        "new": [[h.id, h.version, round(h.score, 6)] for h in new],
        "overlap": round(comparison.overlap, 6),
        "rbo": round(comparison.rbo, 6),
        "mean_score_delta": round(comparison.mean_score_delta, 6),
        "version_mismatches": list(comparison.version_mismatches),
    }
