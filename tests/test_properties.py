"""Properties of the core's parts: the ANN-aware comparator and its noise floor, and the hybrid
logical clock that versions writes whose caller supplies none.

Two properties the issue asks for live elsewhere: fencing is order-independent
(`tests/conformance/suite.py::test_fencing_is_order_independent`, run for every adapter) and the
checker finds nothing in the history of a sequential model
(`tests/test_checker.py::test_a_sequential_history_is_always_valid`).
"""

from __future__ import annotations

import math

import hnswlib
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from vecmig.harness.clusters.base import Hit
from vecmig.harness.core.compare import (
    Comparison,
    MirrorStats,
    NoiseFloor,
    calibrate,
    compare,
    discrepancy_line,
    rank_biased_overlap,
    recall_against,
)
from vecmig.harness.core.versions import (
    MAX_COUNTER,
    MAX_NODE,
    HybridLogicalClock,
    decode,
    encode,
)

# ---------------------------------------------------------------------------------------------
# The comparator.

ids = st.sampled_from([f"p{i}" for i in range(12)])
ranked_ids = st.lists(ids, unique=True, max_size=10)


@st.composite
def hit_lists(draw: st.DrawFn, ids_of: list[str] | None = None) -> list[Hit]:
    """Top-k hits: unique ids, ascending distance, versions 1-3."""
    chosen = ids_of if ids_of is not None else draw(ranked_ids)
    scores = sorted(draw(st.lists(st.floats(0, 2), min_size=len(chosen), max_size=len(chosen))))
    return [Hit(i, draw(st.integers(1, 3)), s) for i, s in zip(chosen, scores, strict=True)]


@given(ranked_ids, ranked_ids)
def test_rbo_is_between_0_and_1_and_symmetric(a: list[str], b: list[str]) -> None:
    rbo = rank_biased_overlap(a, b)
    assert -1e-9 <= rbo <= 1 + 1e-9
    assert math.isclose(rbo, rank_biased_overlap(b, a), abs_tol=1e-12)


@given(ranked_ids)
def test_rbo_of_a_list_with_itself_is_1(a: list[str]) -> None:
    assert math.isclose(rank_biased_overlap(a, a), 1.0, abs_tol=1e-9)


@given(st.integers(1, 6), st.integers(1, 6))
def test_rbo_of_disjoint_lists_is_0(m: int, n: int) -> None:
    a = [f"a{i}" for i in range(m)]
    b = [f"b{i}" for i in range(n)]
    assert rank_biased_overlap(a, b) == 0.0


@given(ranked_ids.filter(lambda a: len(a) >= 2))
def test_rbo_weighs_the_top_more_than_the_bottom(a: list[str]) -> None:
    """Swapping the first two ids costs more than swapping the last two."""
    top = [a[1], a[0], *a[2:]]
    bottom = [*a[:-2], a[-1], a[-2]]
    if len(a) > 2:
        assert rank_biased_overlap(a, top) < rank_biased_overlap(a, bottom)
    assert rank_biased_overlap(a, top) < 1.0


@given(hit_lists(), hit_lists(), st.integers(1, 12))
def test_compare_is_bounded_and_symmetric(a: list[Hit], b: list[Hit], k: int) -> None:
    ab, ba = compare(a, b, k), compare(b, a, k)
    for c in (ab, ba):
        assert 0.0 <= c.overlap <= 1.0
        assert -1e-9 <= c.rbo <= 1 + 1e-9
        assert c.mean_score_delta >= 0.0
    assert ab.overlap == ba.overlap
    assert math.isclose(ab.rbo, ba.rbo, abs_tol=1e-12)
    assert math.isclose(ab.mean_score_delta, ba.mean_score_delta, abs_tol=1e-12)
    assert ab.version_mismatches == ba.version_mismatches


@given(hit_lists(), st.integers(1, 12))
def test_identical_lists_compare_as_identical(a: list[Hit], k: int) -> None:
    c = compare(a, a, k)
    assert c.overlap == 1.0  # two empty answers agree too
    assert math.isclose(c.rbo, 1.0, abs_tol=1e-9)
    assert c.mean_score_delta == 0.0
    assert c.version_mismatches == ()


@given(hit_lists(), st.data())
def test_an_id_returned_at_two_versions_is_a_mismatch_and_a_discrepancy(
    a: list[Hit], data: st.DataObject
) -> None:
    """Whatever the noise floor tolerates in overlap, stale data is a discrepancy outright."""
    if not a:
        return
    stale = data.draw(st.sampled_from(a))
    b = [Hit(h.id, h.version + 1, h.score) if h is stale else h for h in a]
    c = compare(a, b, len(a))
    assert c.version_mismatches == (stale.id,)
    assert c.overlap == 1.0  # same ids: only the version gives it away
    floor = NoiseFloor(threshold=0.0, rate=1.0, samples=100, old_recall=0.5)
    assert floor.is_discrepancy(c)


@given(hit_lists(), hit_lists(), st.floats(0, 1))
def test_below_the_threshold_is_a_discrepancy_at_or_above_it_is_not(
    a: list[Hit], b: list[Hit], threshold: float
) -> None:
    c = compare(a, b, 10)
    floor = NoiseFloor(threshold=threshold, rate=0.1, samples=10, old_recall=0.9)
    assert floor.is_discrepancy(c) == (bool(c.version_mismatches) or c.overlap < threshold)


@given(ranked_ids, ranked_ids, st.integers(1, 12))
def test_recall_is_between_0_and_1_and_1_for_the_exact_answer(
    found: list[str], exact: list[str], k: int
) -> None:
    hits = [Hit(i, 1, 0.0) for i in found]
    assert 0.0 <= recall_against(hits, exact, k) <= 1.0
    assert recall_against([Hit(i, 1, 0.0) for i in exact], exact, k) == 1.0


@given(st.floats(0, 1), st.integers(1, 10_000), st.integers(1, 10_000))
def test_the_allowed_rate_is_at_least_the_floor_at_most_1_and_tightens_with_more_reads(
    rate: float, n: int, more: int
) -> None:
    floor = NoiseFloor(threshold=0.7, rate=rate, samples=50, old_recall=0.9)
    allowed = floor.allowed_rate(n)
    assert min(1.0, 2 * rate) <= allowed <= 1.0
    assert floor.allowed_rate(n + more) <= allowed + 1e-12


@given(st.lists(hit_lists(), max_size=6), st.data())
def test_calibration_rate_and_recall_are_fractions(
    olds: list[list[Hit]], data: st.DataObject
) -> None:
    exacts = [data.draw(ranked_ids) for _ in olds]
    agains = [data.draw(hit_lists()) for _ in olds]
    floor = calibrate(olds, exacts, agains, k=10)
    assert 0.0 <= floor.rate <= 1.0 and 0.0 <= floor.old_recall <= 1.0
    assert floor.samples == len(olds)
    # old agreeing with itself and with the exact answer: no noise at all
    perfect = calibrate(olds, [[h.id for h in o] for o in olds], olds, k=10)
    assert perfect.rate == 0.0 and perfect.old_recall == 1.0


def test_calibration_needs_one_exact_and_one_repeat_per_answer() -> None:
    with pytest.raises(
        ValueError, match=r"^calibration needs one exact answer and one repeat per old answer$"
    ):
        calibrate([[]], [], [[]], k=10)


def test_calibration_judges_the_top_k_and_counts_only_what_falls_below_the_threshold() -> None:
    """Recall is of old's top k against the exact top k; a query strays only if its recall
    or its repeat's overlap is below the threshold, not at it. No query: no stray, at the
    threshold asked for."""
    a, b, c, d = (Hit(i, 1, s) for i, s in zip("abcd", (0.1, 0.2, 0.3, 0.4), strict=True))
    at_threshold = calibrate([[a, b, c]], [["a", "c", "b"]], [[a, d]], k=2, threshold=0.5)
    assert at_threshold == NoiseFloor(threshold=0.5, rate=0.0, samples=1, old_recall=0.5)
    below = calibrate([[a, b, c]], [["a", "c", "b"]], [[a, d]], k=2, threshold=0.6)
    assert below.rate == 1.0
    assert calibrate([], [], [], k=2, threshold=0.8) == NoiseFloor(0.8, 0.0, 0, 1.0)


def test_rbo_counts_an_id_found_later_on_the_other_side() -> None:
    """Two lists of the same ids in another order overlap fully by depth 2: RBO_ext of
    (a, b) and (b, a) is (1 - p) / p * (0 + p^2) + p^2 = 0.9 at p = 0.9."""
    assert rank_biased_overlap(["a", "b"], ["b", "a"]) == pytest.approx(0.9, abs=1e-12)
    assert rank_biased_overlap(["a", "b"], ["b", "c"]) == pytest.approx(0.45, abs=1e-12)


def test_compare_measures_overlap_score_deltas_and_version_mismatches_over_the_top_k() -> None:
    a = [Hit("p1", 1, 0.1), Hit("p2", 1, 0.2), Hit("p3", 1, 0.3), Hit("p9", 1, 0.9)]
    b = [Hit("p2", 2, 0.25), Hit("p1", 1, 0.4), Hit("p4", 1, 0.5)]
    c = compare(a, b, 3)
    assert c.k == 3
    assert c.overlap == pytest.approx(2 / 3)
    assert c.mean_score_delta == pytest.approx((0.3 + 0.05) / 2)
    assert c.version_mismatches == ("p2",)
    assert recall_against(a, ["p1", "p4", "p2", "p3"], 2) == 0.5


def test_the_allowed_rate_is_twice_the_floor_plus_three_standard_errors_and_a_percent() -> None:
    floor = NoiseFloor(threshold=0.7, rate=0.02, samples=100, old_recall=0.98)
    assert floor.allowed_rate(0) == 0.0
    assert floor.allowed_rate(100) == pytest.approx(
        0.04 + 3 * math.sqrt(0.04 * 0.96 / 100) + 0.01, abs=1e-12
    )


def test_the_figures_of_mirrored_reads_and_the_noise_floor_as_json() -> None:
    """What a run report shows: running sums as means and rates, rounded to 6 places; the
    discrepancy log keeps the lines given, up to its limit; old's stray rate is over the reads
    that had an exact answer, overall and in a window."""
    stats = MirrorStats(log_limit=1)
    same = compare([Hit("p1", 1, 0.1)], [Hit("p1", 1, 0.1)], 1)
    stale = compare([Hit("p1", 1, 0.1)], [Hit("p1", 2, 0.1)], 1)
    half = compare([Hit("p1", 1, 0.1), Hit("p2", 1, 0.2)], [Hit("p1", 1, 0.1)], 2)
    stats.add(same, False)
    stats.add(stale, True, {"line": 1}, recalls=(1.0, 0.5), old_stray=True)
    stats.add(half, True, {"line": 2}, recalls=(0.5, 0.75))
    stats.add(same, False)  # no exact answer
    assert stats.log == [{"line": 1}]
    assert stats.to_json() == {
        "compared": 4,
        "discrepancies": 2,
        "mismatch_rate": 0.5,
        "version_mismatches": 1,
        "mean_overlap": round((1 + 1 + 0.5 + 1) / 4, 6),
        "mean_rbo": round((3 * same.rbo + half.rbo) / 4, 6),
        "recall_parity": round(((0.5 + 0.75) - (1.0 + 0.5)) / 2, 6),
        "live_noise_rate": 0.5,
        "errors": 0,
    }
    window = stats.window(4)
    assert (window.old_strays, window.recall_samples, window.live_noise_rate) == (1, 2, 0.5)
    assert MirrorStats().to_json() == {
        "compared": 0,
        "discrepancies": 0,
        "mismatch_rate": 0.0,
        "version_mismatches": 0,
        "mean_overlap": None,
        "mean_rbo": None,
        "recall_parity": None,
        "live_noise_rate": None,
        "errors": 0,
    }
    thirds = MirrorStats()
    # a third of 9 ids in common: figures with more than 6 decimals
    third = compare([Hit(i, 1, 0.1) for i in "abcdefghi"], [Hit(i, 1, 0.1) for i in "ajkblmcno"], 9)
    for i in range(3):
        thirds.add(third, i == 0, recalls=(0.0, 1 / 3), old_stray=i == 0)
    assert thirds.to_json() == {
        "compared": 3,
        "discrepancies": 1,
        "mismatch_rate": 0.333333,
        "version_mismatches": 0,
        "mean_overlap": 0.333333,
        "mean_rbo": round(third.rbo, 6),
        "recall_parity": 0.333333,
        "live_noise_rate": 0.333333,
        "errors": 0,
    }
    assert round(third.rbo, 6) != round(third.rbo, 7)
    floor = NoiseFloor(threshold=0.7, rate=1 / 3, samples=3, old_recall=2 / 3)
    assert floor.to_json() == {
        "threshold": 0.7,
        "rate": 0.333333,
        "samples": 3,
        "old_recall": 0.666667,
    }


def test_a_discrepancy_line_holds_the_query_both_answers_and_the_measures() -> None:
    """Scores and measures rounded to 6 places (a third of 9 ids in common has more)."""
    old = [Hit(i, 1, 0.5) for i in "abcdefghi"]
    old[0] = Hit("a", 1, 0.1234567)
    new = [Hit(i, 1, 0.5) for i in "ajkblmcno"]
    new[0] = Hit("a", 2, 0.7654321)
    c = compare(old, new, 9)
    assert discrepancy_line({"k": 9}, old, new, c) == {
        "query": {"k": 9},
        "old": [["a", 1, 0.123457]] + [[i, 1, 0.5] for i in "bcdefghi"],
        "new": [["a", 2, 0.765432]] + [[i, 1, 0.5] for i in "jkblmcno"],
        "overlap": 0.333333,
        "rbo": round(c.rbo, 6),
        "mean_score_delta": round((0.7654321 - 0.1234567) / 3, 6),
        "version_mismatches": ["a"],
    }
    assert round(c.rbo, 6) != round(c.rbo, 7)


@given(
    seed=st.integers(0, 2**16),
    n=st.integers(30, 300),
    ef=st.sampled_from([4, 10, 64]),
    m=st.sampled_from([2, 4, 16]),
)
def test_calibration_on_an_hnsw_index_against_brute_force(
    seed: int, n: int, ef: int, m: int
) -> None:
    """A real approximate index (hnswlib, sometimes badly tuned) against the exact answer: the
    measured noise floor is a fraction, and it says how often recall fell below the threshold."""
    dim, k, queries = 8, 10, 20
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((n, dim)).astype(np.float32)
    index = hnswlib.Index(space="l2", dim=dim)
    index.init_index(max_elements=n, ef_construction=max(ef, 10), M=m, random_seed=seed)
    index.add_items(data, np.arange(n))
    index.set_ef(ef)
    qs = rng.standard_normal((queries, dim)).astype(np.float32)

    def ann(q: np.ndarray) -> list[Hit]:
        labels, dists = index.knn_query(q, k=k)
        return [Hit(f"p{label}", 1, float(d)) for label, d in zip(labels[0], dists[0], strict=True)]

    exact = [
        [f"p{i}" for i in np.argsort(((data - q) ** 2).sum(axis=1), kind="stable")[:k]] for q in qs
    ]
    olds = [ann(q) for q in qs]
    floor = calibrate(olds, exact, [ann(q) for q in qs], k)
    recalls = [recall_against(o, e, k) for o, e in zip(olds, exact, strict=True)]
    assert 0.0 <= floor.rate <= 1.0
    assert floor.samples == queries
    assert math.isclose(floor.old_recall, sum(recalls) / queries)
    assert floor.rate >= sum(r < floor.threshold for r in recalls) / queries
    assert 0.0 <= floor.allowed_rate(200) <= 1.0


@given(st.lists(st.tuples(hit_lists(), st.booleans()), max_size=20))
def test_mirror_stats_count_every_comparison_and_discrepancy(
    reads: list[tuple[list[Hit], bool]],
) -> None:
    stats = MirrorStats(log_limit=3)
    for hits, discrepancy in reads:
        c: Comparison = compare(hits, hits[::-1], 10)
        stats.add(c, discrepancy, {"line": 1})
    assert stats.compared == len(reads)
    assert stats.discrepancies == sum(d for _, d in reads)
    assert 0.0 <= stats.mismatch_rate <= 1.0
    assert len(stats.log) == min(3, stats.discrepancies)


# ---------------------------------------------------------------------------------------------
# The hybrid logical clock.

NODES = 3


@given(st.integers(0, 2**40), st.integers(0, MAX_COUNTER), st.integers(0, MAX_NODE))
def test_versions_encode_and_decode(logical: int, counter: int, node: int) -> None:
    assert decode(encode(logical, counter, node)) == (logical, counter, node)


@pytest.mark.parametrize("node", [-1, MAX_NODE + 1])
def test_a_node_out_of_range_is_refused(node: int) -> None:
    with pytest.raises(ValueError, match="node must be"):
        HybridLogicalClock(node)


# One event: (clock, kind, how far true time moves first in ms). "now" issues a local version;
# "observe" takes in a version some other clock issued earlier (a read, a replicated write).
clock_events = st.lists(
    st.tuples(
        st.integers(0, NODES - 1),
        st.sampled_from(["now", "now", "observe"]),
        st.integers(0, 3),
        st.integers(0, 1_000),  # which earlier version is observed
    ),
    max_size=80,
)
# Each clock's physical clock is off true time by a skew, and jitters (it may step back).
skews = st.lists(st.integers(-50, 50), min_size=NODES, max_size=NODES)
jitters = st.lists(st.integers(-3, 3), min_size=80, max_size=80)


@given(clock_events, skews, jitters)
def test_hlc_versions_are_monotone_unique_causal_and_bounded_under_skew(
    events: list[tuple[int, str, int, int]], skew: list[int], jitter: list[int]
) -> None:
    """Under any interleaving of now/observe across instances whose physical clocks are skewed
    and step back: each clock's versions strictly increase; no two versions are equal; a version
    issued after observing another is above it; and logical time never runs ahead of the
    furthest physical clock reading so far (no counter overflow at these rates)."""
    clocks = [HybridLogicalClock(node) for node in range(NODES)]
    true_ms = 1_000
    issued: list[int] = []
    last: dict[int, int] = {}
    floor: dict[int, int] = {}  # the highest version each clock has seen or issued
    furthest_ms = 0
    for position, (node, kind, tick, pick) in enumerate(events):
        true_ms += tick
        physical_ms = max(0, true_ms + skew[node] + jitter[position % len(jitter)])
        furthest_ms = max(furthest_ms, physical_ms)
        physical_ns = physical_ms * 1_000_000 + 123  # sub-millisecond noise is ignored
        clock = clocks[node]
        if kind == "observe" and issued:
            seen = issued[pick % len(issued)]
            clock.observe(seen, physical_ns)
            floor[node] = max(floor.get(node, 0), seen)
            continue
        version = clock.now(physical_ns)
        assert version > last.get(node, -1), "a clock's versions must strictly increase"
        assert version > floor.get(node, -1), "a version must follow what its clock observed"
        logical, _, issuer = decode(version)
        assert issuer == node
        assert logical <= furthest_ms, "logical time ran ahead of every physical clock"
        last[node] = floor[node] = version
        issued.append(version)
    assert len(issued) == len(set(issued)), "two writes got the same version"


def test_hlc_counter_overflow_moves_logical_time_on() -> None:
    """More than MAX_COUNTER versions in one millisecond still strictly increase."""
    clock = HybridLogicalClock(1)
    versions = [clock.now(5_000_000) for _ in range(MAX_COUNTER + 3)]
    assert versions == sorted(set(versions))
    assert decode(versions[-1])[0] == 6
    assert [decode(v) for v in versions[-3:]] == [(5, MAX_COUNTER, 1), (6, 0, 1), (6, 1, 1)]


def test_a_fresh_clock_counts_from_zero_and_restarts_its_counter_when_time_moves_on() -> None:
    """The first version within the first millisecond is (0 ms, counter 1); a later
    millisecond starts at counter 0. The highest node number is a valid node."""
    clock = HybridLogicalClock(MAX_NODE)
    assert decode(clock.now(0)) == (0, 1, MAX_NODE)
    assert decode(clock.now(999_999)) == (0, 2, MAX_NODE)
    assert decode(clock.now(5_000_000)) == (5, 0, MAX_NODE)


def observed(
    before: list[tuple[int, int]], remote: tuple[int, int], physical_ms: int
) -> tuple[int, int]:
    """A clock that observed `before` (versions of node 0, at physical time 1 s), then
    `remote` at `physical_ms`: the (logical ms, counter) of its next version at that time."""
    clock = HybridLogicalClock(1)
    for logical, counter in before:
        clock.observe(encode(logical, counter, 0), 1_000_000_000)
    clock.observe(encode(*remote, 0), physical_ms * 1_000_000)
    logical, counter, _ = decode(clock.now(physical_ms * 1_000_000))
    return logical, counter


@pytest.mark.parametrize(
    ("before", "remote", "physical_ms", "expected"),
    [
        ([], (500, 3), 1_000, (1_000, 1)),  # physical time leads: take it, counter from 0
        ([], (2_000, 7), 1_000, (2_000, 9)),  # the remote version leads: follow its counter
        ([(2_000, 2)], (2_000, 5), 1_000, (2_000, 7)),  # same ms as the remote: the higher count
        ([(2_000, 2)], (2_000, 1), 1_000, (2_000, 5)),  # ... which may be its own
        ([(2_000, 2)], (500, 9), 1_000, (2_000, 5)),  # its own time leads: only count on
        ([(1_500, 0)], (1_500, 4), 3_000, (3_000, 1)),  # both behind physical time
    ],
)
def test_observing_a_version_follows_whichever_of_the_three_clocks_leads(
    before: list[tuple[int, int]],
    remote: tuple[int, int],
    physical_ms: int,
    expected: tuple[int, int],
) -> None:
    """Kulkarni et al.'s receive rule, case by case: the logical time becomes the largest of
    the clock's own, the remote one and physical time; the counter restarts when physical
    time leads, and otherwise counts on from the larger counter at that logical time."""
    assert observed(before, remote, physical_ms) == expected


def test_the_mismatch_allowance_follows_how_far_old_strays_on_the_mirrored_queries() -> None:
    """Calibration asks unfiltered queries; filtered ones stray more. A live stray rate of old
    on the mirrored queries themselves raises the allowance (a run whose calibration saw no
    stray held its CUTOVER gate for minutes at a 1.3% mismatch rate, a buggify stall)."""
    from vecmig.harness.core.compare import NoiseFloor

    floor = NoiseFloor(threshold=0.7, rate=0.0, samples=16, old_recall=1.0)
    assert floor.allowed_rate(1097) < 0.013
    assert floor.allowed_rate(1097, live_rate=0.01) > 0.03
    assert floor.allowed_rate(1097, live_rate=None) == floor.allowed_rate(1097)
    assert NoiseFloor(0.7, 0.05, 30, 0.9).allowed_rate(500, live_rate=0.0) > 0.1
