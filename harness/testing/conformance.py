"""The conformance suite every `ClusterPort` adapter must pass, whatever engine is behind it.

Use it by subclassing `ClusterConformance` in a test module of your own:

    from vecmig.harness.testing.conformance import ClusterConformance

    class TestMyEngine(ClusterConformance):
        recall_floor = 0.9   # optional knobs: recall_floor, property_examples, vector_rtol

The sides come from the `make_cluster` fixture, a factory `(dim, metric) -> ClusterPort` whose
every call gives a fresh, empty side. By default it is the pytest plugin's `vecmig_adapter`
(`--vecmig-adapter`, the `vecmig_adapter` ini option or `VECMIG_ADAPTER`; see
`vecmig.harness.testing.plugin`); override `make_cluster` in the class to build sides yourself
(and clean them up after the test). Every rule checked here is one that
`harness/clusters/base.py` states in a docstring; a test's name says which.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vecmig.harness.clusters.base import (
    MAX_ID_LENGTH,
    ClusterPort,
    Counts,
    Hit,
    InvalidRequest,
    Metric,
    Record,
    Stored,
    Tombstone,
    checksums_of,
    distance,
    matches,
)

MakeCluster = Callable[[int, Metric], ClusterPort]
"""`make_cluster(dim, metric)`: a fresh, empty side."""

DIM = 16
CATEGORIES = 5


# ---------------------------------------------------------------------------------------------
# Data: small, clustered, deterministic.


def vector(seed: int, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


def record(record_id: str, version: int, seed: int | None = None, **metadata: Any) -> Record:
    meta = {"category": 0, "in_stock": True, **metadata}
    return Record(record_id, vector(seed if seed is not None else version), meta, version)


def clustered_catalog(
    n: int, dim: int = DIM, clusters: int = 12, seed: int = 7
) -> tuple[list[Record], np.ndarray]:
    """`n` records around `clusters` centres (like product embeddings), and the centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32) * 3.0
    records = []
    for i in range(n):
        c = i % clusters
        v = (centres[c] + rng.standard_normal(dim)).astype(np.float32)
        meta = {"category": c % CATEGORIES, "in_stock": bool(i % 3), "price": round(5.0 + i, 2)}
        records.append(Record(f"p{i:05d}", v, meta, 1))
    return records, centres


def clustered_catalog_for(metric: Metric, n: int) -> tuple[list[Record], np.ndarray]:
    """`clustered_catalog(n)` for `metric`: unit vectors for the inner product, whose distance
    (1 - dot) orders neighbours as cosine does only between unit vectors."""
    records, centres = clustered_catalog(n)
    if metric is Metric.INNER_PRODUCT:
        records = [
            Record(r.id, r.vector / np.linalg.norm(r.vector), r.metadata, r.version)
            for r in records
        ]
    return records, centres


def queries_near(centres: np.ndarray, count: int, seed: int = 11) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(centres), size=count)
    return [(centres[c] + rng.standard_normal(centres.shape[1])).astype(np.float32) for c in picks]


def exact_top_k(
    metric: Metric,
    query: np.ndarray,
    records: Sequence[Record],
    k: int,
    flt: dict[str, Any] | None = None,
) -> list[str]:
    pool = [r for r in records if matches(r.metadata, flt)]
    if not pool:
        return []
    d = distance(metric, query, np.stack([r.vector for r in pool]))
    return [pool[i].id for i in np.argsort(d, kind="stable")[:k]]


def scan_all(cluster: ClusterPort, limit: int = 7) -> list[Stored]:
    items: list[Stored] = []
    cursor: str | None = None
    for _ in range(100_000):
        page = cluster.scan(cursor, limit)
        assert len(page.items) <= limit, f"scan returned {len(page.items)} items for limit={limit}"
        items.extend(page.items)
        if page.next_cursor is None:
            return items
        cursor = page.next_cursor
    raise AssertionError("scan never finished: next_cursor kept coming back")


def state_of(
    cluster: ClusterPort, ids: Sequence[str]
) -> dict[str, tuple[int, bool, tuple[float, ...] | None, dict[str, Any]]]:
    """A comparable picture of what a side holds for `ids`."""
    got = cluster.get(list(ids))
    return {
        i: (
            s.version,
            s.deleted,
            None if s.deleted or s.vector is None else tuple(np.round(s.vector, 4).tolist()),
            {} if s.deleted else dict(s.metadata),
        )
        for i, s in got.items()
    }


# ---------------------------------------------------------------------------------------------
# The suite.


class ClusterConformance:
    """Rules of the cluster port, run against the sides `make_cluster` makes."""

    #: recall@10 against brute force that search must reach on the clustered catalog
    recall_floor = 0.8
    #: examples per Hypothesis property; each example builds two fresh sides
    property_examples = 25
    #: vector round-trip tolerance (engines may store float32 exactly or renormalise)
    vector_rtol = 1e-5

    @pytest.fixture
    def make_cluster(self, vecmig_adapter: MakeCluster) -> MakeCluster:
        """The plugin's adapter; override this fixture to make the sides yourself."""
        return vecmig_adapter

    @pytest.fixture
    def cluster(self, make_cluster: MakeCluster) -> ClusterPort:
        return make_cluster(DIM, Metric.COSINE)

    # -- identity -------------------------------------------------------------------------------

    def test_is_a_cluster_port_with_its_dim_and_metric(self, make_cluster: MakeCluster) -> None:
        c = make_cluster(8, Metric.L2)
        assert isinstance(c, ClusterPort)
        assert c.dim == 8
        assert c.metric is Metric.L2

    def test_health_is_ok(self, cluster: ClusterPort) -> None:
        assert cluster.health().ok

    def test_empty_side_counts_zero_and_scans_nothing(self, cluster: ClusterPort) -> None:
        assert cluster.count() == Counts(0, 0)
        page = cluster.scan(None, 10)
        assert page.items == () and page.next_cursor is None
        assert cluster.get(["nobody"]) == {}
        assert cluster.search(vector(1), 5) == []

    # -- fenced writes --------------------------------------------------------------------------

    def test_fenced_upsert_into_empty_applies_and_get_round_trips(
        self, cluster: ClusterPort
    ) -> None:
        r = record("a", 3, price=9.5, name="lamp")
        assert cluster.upsert([r]) == {"a": True}
        got = cluster.get(["a"])["a"]
        assert (got.id, got.version, got.deleted) == ("a", 3, False)
        assert got.vector is not None
        np.testing.assert_allclose(got.vector, r.vector, rtol=self.vector_rtol, atol=1e-6)
        assert dict(got.metadata) == dict(r.metadata)

    def test_a_get_sees_every_acknowledged_write_at_once(self, cluster: ClusterPort) -> None:
        """Gets are read-your-writes, even on an engine whose searches lag: the safe layer
        re-reads search hits by id to correct a lagging index (docs/core-guide.md)."""
        for version, write in ((1, "upsert"), (2, "upsert"), (3, "delete"), (4, "upsert")):
            if write == "upsert":
                cluster.upsert([record("rw", version, seed=version, category=version)])
            else:
                cluster.delete([Tombstone("rw", version)])
            got = cluster.get(["rw"])["rw"]
            assert (got.version, got.deleted) == (version, write == "delete")
            if write == "upsert":
                assert got.metadata["category"] == version and got.vector is not None

    def test_fenced_upsert_reports_applied_or_skipped_per_id(self, cluster: ClusterPort) -> None:
        cluster.upsert([record("a", 5), record("b", 5)])
        result = cluster.upsert([record("a", 6, seed=60), record("b", 4, seed=40), record("c", 1)])
        assert result == {"a": True, "b": False, "c": True}
        got = cluster.get(["a", "b", "c"])
        assert {i: s.version for i, s in got.items()} == {"a": 6, "b": 5, "c": 1}

    def test_older_version_never_overwrites_newer(self, cluster: ClusterPort) -> None:
        newer = record("a", 9, seed=1, category=1)
        cluster.upsert([newer])
        assert cluster.upsert([record("a", 8, seed=2, category=2)]) == {"a": False}
        got = cluster.get(["a"])["a"]
        assert got.version == 9 and got.metadata["category"] == 1
        assert got.vector is not None
        np.testing.assert_allclose(got.vector, newer.vector, rtol=self.vector_rtol, atol=1e-6)

    def test_equal_version_upsert_is_skipped(self, cluster: ClusterPort) -> None:
        cluster.upsert([record("a", 4, seed=1, category=1)])
        assert cluster.upsert([record("a", 4, seed=2, category=2)]) == {"a": False}
        assert cluster.get(["a"])["a"].metadata["category"] == 1

    def test_fenced_delete_of_unknown_id_leaves_a_tombstone(self, cluster: ClusterPort) -> None:
        """A delete seen before the backfill copy must still block that copy."""
        assert cluster.delete([Tombstone("ghost", 7)]) == {"ghost": True}
        got = cluster.get(["ghost"])["ghost"]
        assert (got.version, got.deleted) == (7, True)
        assert cluster.upsert([record("ghost", 6)]) == {"ghost": False}

    def test_fenced_delete_reports_applied_or_skipped_per_id(self, cluster: ClusterPort) -> None:
        cluster.upsert([record("a", 5), record("b", 5)])
        result = cluster.delete([Tombstone("a", 6), Tombstone("b", 5), Tombstone("c", 1)])
        assert result == {"a": True, "b": False, "c": True}
        got = cluster.get(["a", "b", "c"])
        assert {i: (s.version, s.deleted) for i, s in got.items()} == {
            "a": (6, True),
            "b": (5, False),
            "c": (1, True),
        }

    def test_tombstone_blocks_older_and_equal_version_upserts(self, cluster: ClusterPort) -> None:
        cluster.upsert([record("a", 3)])
        cluster.delete([Tombstone("a", 5)])
        assert cluster.upsert([record("a", 4)]) == {"a": False}
        assert cluster.upsert([record("a", 5)]) == {"a": False}
        got = cluster.get(["a"])["a"]
        assert (got.version, got.deleted) == (5, True)

    def test_older_tombstone_does_not_delete_newer_record(self, cluster: ClusterPort) -> None:
        cluster.upsert([record("a", 5)])
        assert cluster.delete([Tombstone("a", 4)]) == {"a": False}
        assert cluster.get(["a"])["a"].deleted is False

    def test_newer_upsert_over_a_tombstone_applies(self, cluster: ClusterPort) -> None:
        cluster.delete([Tombstone("a", 5)])
        assert cluster.upsert([record("a", 6)]) == {"a": True}
        got = cluster.get(["a"])["a"]
        assert (got.version, got.deleted) == (6, False) and got.vector is not None

    # -- unfenced writes (the naive plan) -------------------------------------------------------

    def test_unfenced_upsert_overwrites_a_newer_record(self, cluster: ClusterPort) -> None:
        cluster.upsert([record("a", 9, category=1)])
        assert cluster.upsert([record("a", 2, category=2)], fenced=False) == {"a": True}
        got = cluster.get(["a"])["a"]
        assert (got.version, got.metadata["category"]) == (2, 2)

    def test_unfenced_upsert_overwrites_a_tombstone(self, cluster: ClusterPort) -> None:
        cluster.delete([Tombstone("a", 9)])
        assert cluster.upsert([record("a", 2)], fenced=False) == {"a": True}
        got = cluster.get(["a"])["a"]
        assert (got.version, got.deleted) == (2, False)

    def test_unfenced_delete_overwrites_a_newer_record(self, cluster: ClusterPort) -> None:
        cluster.upsert([record("a", 9)])
        assert cluster.delete([Tombstone("a", 2)], fenced=False) == {"a": True}
        got = cluster.get(["a"])["a"]
        assert (got.version, got.deleted) == (2, True)

    # -- get ------------------------------------------------------------------------------------

    def test_get_returns_tombstones_as_deleted_and_omits_unknown_ids(
        self, cluster: ClusterPort
    ) -> None:
        cluster.upsert([record("live", 1)])
        cluster.delete([Tombstone("gone", 2)])
        got = cluster.get(["live", "gone", "never"])
        assert set(got) == {"live", "gone"}
        assert got["gone"].deleted and got["gone"].version == 2 and got["gone"].vector is None
        assert not got["live"].deleted
        assert all(s.id == i for i, s in got.items())
        assert cluster.get([]) == {}

    # -- search ---------------------------------------------------------------------------------

    def test_search_returns_at_most_k_hits_in_ascending_score(self, cluster: ClusterPort) -> None:
        records, centres = clustered_catalog(60)
        cluster.upsert(records)
        for q in queries_near(centres, 5):
            for k in (1, 5, 10):
                hits = cluster.search(q, k)
                assert len(hits) == k
                assert all(isinstance(h, Hit) for h in hits)
                scores = [h.score for h in hits]
                assert scores == sorted(scores), f"scores not ascending: {scores}"
                assert len({h.id for h in hits}) == len(hits), "an id appears twice"

    def test_search_with_k_above_the_live_count_returns_every_live_record(
        self, cluster: ClusterPort
    ) -> None:
        cluster.upsert([record(f"r{i}", 1, seed=i) for i in range(12)])
        cluster.delete([Tombstone("r0", 2), Tombstone("r1", 2)])
        hits = cluster.search(vector(3), 1000)
        assert sorted(h.id for h in hits) == sorted(f"r{i}" for i in range(2, 12))

    def test_search_honours_k_larger_than_a_typical_candidate_list(
        self, cluster: ClusterPort
    ) -> None:
        """An HNSW engine's default candidate list (e.g. ef_search=40) must not cap k."""
        records, centres = clustered_catalog(300)
        cluster.upsert(records)
        assert len(cluster.search(queries_near(centres, 1)[0], 120)) == 120

    @pytest.mark.parametrize("metric", list(Metric))
    def test_search_scores_are_distances_as_base_defines_them(
        self, make_cluster: MakeCluster, metric: Metric
    ) -> None:
        c = make_cluster(DIM, metric)
        records, centres = clustered_catalog_for(metric, 80)
        c.upsert(records)
        by_id = {r.id: r for r in records}
        q = queries_near(centres, 1)[0]
        hits = c.search(q, 10)
        assert hits
        expected = distance(metric, q, np.stack([by_id[h.id].vector for h in hits]))
        np.testing.assert_allclose([h.score for h in hits], expected, rtol=1e-3, atol=1e-3)

    @pytest.mark.parametrize("metric", list(Metric))
    def test_search_recall_at_10_against_brute_force(
        self, make_cluster: MakeCluster, metric: Metric
    ) -> None:
        c = make_cluster(DIM, metric)
        records, centres = clustered_catalog_for(metric, 600)
        c.upsert(records)
        recalls = []
        for q in queries_near(centres, 20):
            truth = set(exact_top_k(metric, q, records, 10))
            got = {h.id for h in c.search(q, 10)}
            recalls.append(len(truth & got) / 10)
        assert float(np.mean(recalls)) >= self.recall_floor, f"recall@10 {np.mean(recalls):.3f}"

    def test_search_excludes_tombstoned_records(self, cluster: ClusterPort) -> None:
        records, centres = clustered_catalog(120)
        cluster.upsert(records)
        q = queries_near(centres, 1)[0]
        first = [h.id for h in cluster.search(q, 10)]
        cluster.delete([Tombstone(i, 2) for i in first[:5]])
        after = [h.id for h in cluster.search(q, 10)]
        assert not set(after) & set(first[:5])
        assert len(after) == 10

    def test_search_reports_the_current_version_only(self, cluster: ClusterPort) -> None:
        records, centres = clustered_catalog(60)
        cluster.upsert(records)
        q = queries_near(centres, 1)[0]
        top = cluster.search(q, 5)
        bumped = [
            Record(r.id, r.vector, {**r.metadata, "price": 1.0}, 2)
            for r in records
            if r.id in {h.id for h in top}
        ]
        cluster.upsert(bumped)
        hits = cluster.search(q, 60)
        assert [h.id for h in hits].count(top[0].id) == 1, "replaced version still searchable"
        versions = {h.id: h.version for h in hits}
        assert all(versions[h.id] == 2 for h in top)

    def test_search_reflects_a_re_embedded_vector(self, cluster: ClusterPort) -> None:
        records, centres = clustered_catalog(120)
        cluster.upsert(records)
        moved = records[0]
        far = (-centres[0] * 2.0).astype(np.float32)
        far_hits_before = {h.id for h in cluster.search(far, 10)}
        assert moved.id not in far_hits_before
        cluster.upsert([Record(moved.id, far, moved.metadata, 2)])
        near_far = cluster.search(far, 10)
        assert near_far[0].id == moved.id and near_far[0].version == 2
        assert near_far[0].score == pytest.approx(0.0, abs=1e-3)
        old_place = cluster.search(moved.vector, 10)
        assert all(not (h.id == moved.id and h.version == 1) for h in old_place)

    @pytest.mark.parametrize(
        "flt",
        [{"category": 3}, {"in_stock": True}, {"category": 1, "in_stock": False}],
        ids=["category", "in_stock", "both"],
    )
    def test_search_honours_metadata_filters(
        self, cluster: ClusterPort, flt: dict[str, Any]
    ) -> None:
        records, centres = clustered_catalog(300)
        cluster.upsert(records)
        recalls = []
        for q in queries_near(centres, 8):
            hits = cluster.search(q, 10, flt)
            by_id = {r.id: r for r in records}
            assert all(matches(by_id[h.id].metadata, flt) for h in hits), f"hit outside {flt}"
            truth = set(exact_top_k(Metric.COSINE, q, records, 10, flt))
            recalls.append(len(truth & {h.id for h in hits}) / max(len(truth), 1))
        assert float(np.mean(recalls)) >= self.recall_floor, (
            f"filtered recall@10 {np.mean(recalls):.3f}"
        )

    def test_search_filter_matching_nothing_returns_no_hits(self, cluster: ClusterPort) -> None:
        cluster.upsert([record(f"r{i}", 1, seed=i, category=1) for i in range(10)])
        assert cluster.search(vector(1), 5, {"category": 4}) == []

    # -- scan -----------------------------------------------------------------------------------

    IDS = ("b", "a", "B", "a-1", "a_1", "a.1", "Z9", "_x", "a1", "~", "product:42", "é", "aa", "a")

    def test_scan_is_ascending_by_id_includes_tombstones_and_visits_each_id_once(
        self, cluster: ClusterPort
    ) -> None:
        ids = sorted(set(self.IDS))
        cluster.upsert([record(i, 2, seed=n) for n, i in enumerate(ids)])
        cluster.delete([Tombstone("a_1", 3), Tombstone("only-deleted", 1)])
        for limit in (1, 3, 100):
            items = scan_all(cluster, limit)
            seen = [s.id for s in items]
            assert seen == sorted(ids + ["only-deleted"]), f"limit={limit}"
            deleted = {s.id for s in items if s.deleted}
            assert deleted == {"a_1", "only-deleted"}

    def test_scan_resumes_from_a_cursor(self, cluster: ClusterPort) -> None:
        ids = [f"k{i:03d}" for i in range(25)]
        cluster.upsert([record(i, 1, seed=n) for n, i in enumerate(ids)])
        first = cluster.scan(None, 10)
        assert [s.id for s in first.items] == ids[:10] and first.next_cursor is not None
        # a cursor is reusable: resuming twice from it gives the same page
        again = cluster.scan(first.next_cursor, 10)
        assert [s.id for s in again.items] == ids[10:20]
        assert [(s.id, s.version) for s in cluster.scan(first.next_cursor, 10).items] == [
            (s.id, s.version) for s in again.items
        ]
        # writes behind the cursor are not revisited; writes ahead of it are seen
        cluster.upsert([record("k000a", 1), record("k0195", 1)])
        rest = cluster.scan(again.next_cursor, 100)
        assert [s.id for s in rest.items] == ["k0195"] + ids[20:]
        assert rest.next_cursor is None

    def test_scan_from_a_cursor_past_the_last_id_is_empty(self, cluster: ClusterPort) -> None:
        cluster.upsert([record("a", 1)])
        page = cluster.scan("zzz", 10)
        assert page.items == () and page.next_cursor is None

    # -- count and checksums --------------------------------------------------------------------

    def test_count_counts_live_records_and_tombstones(self, cluster: ClusterPort) -> None:
        cluster.upsert([record(f"r{i}", 1, seed=i) for i in range(7)])
        cluster.delete([Tombstone("r0", 2), Tombstone("r1", 2), Tombstone("x", 1)])
        assert cluster.count() == Counts(live=5, tombstones=3)

    @pytest.mark.parametrize("buckets", [1, 7, 64])
    def test_checksums_equal_the_portable_fold_over_a_scan(
        self, cluster: ClusterPort, buckets: int
    ) -> None:
        cluster.upsert([record(f"r{i}", i + 1, seed=i) for i in range(40)])
        cluster.delete([Tombstone(f"r{i}", 100) for i in range(0, 40, 4)] + [Tombstone("x", 3)])
        triples = [(s.id, s.version, s.deleted) for s in scan_all(cluster, 9)]
        expected = checksums_of(triples, buckets)
        assert cluster.checksums(buckets) == expected
        assert sum(c.count for c in expected) == 41

    def test_checksums_differ_when_one_version_differs(self, make_cluster: MakeCluster) -> None:
        a, b = make_cluster(DIM, Metric.COSINE), make_cluster(DIM, Metric.COSINE)
        a.upsert([record("x", 1), record("y", 2)])
        b.upsert([record("y", 2), record("x", 1)])
        assert a.checksums(4) == b.checksums(4)
        b.upsert([record("x", 2)])
        assert a.checksums(4) != b.checksums(4)

    # -- bad input ------------------------------------------------------------------------------

    BAD_IDS: tuple[Any, ...] = ("", "x" * (MAX_ID_LENGTH + 1), "tab\there", "nl\n", 42, None)

    def assert_untouched(self, cluster: ClusterPort) -> None:
        got = cluster.get(["keep", "good"])
        assert set(got) == {"keep"} and got["keep"].version == 1, f"a rejected batch wrote: {got}"

    @pytest.mark.parametrize(
        "bad",
        [
            np.zeros(DIM + 1, np.float32),
            np.zeros(DIM - 1, np.float32),
            np.array([np.nan] * DIM, np.float32),
            np.array([1.0] * (DIM - 1) + [np.inf], np.float32),
            np.zeros((2, DIM), np.float32),
        ],
        ids=["too-long", "too-short", "nan", "inf", "2d"],
    )
    def test_upsert_with_a_bad_vector_raises_and_applies_nothing(
        self, cluster: ClusterPort, bad: np.ndarray
    ) -> None:
        cluster.upsert([record("keep", 1)])
        for fenced in (True, False):
            with pytest.raises(InvalidRequest):
                cluster.upsert([record("good", 1), Record("bad", bad, {}, 1)], fenced=fenced)
        self.assert_untouched(cluster)

    @pytest.mark.parametrize(
        "bad_id", BAD_IDS, ids=["empty", "too-long", "tab", "newline", "int", "none"]
    )
    def test_writes_with_a_bad_id_raise_and_apply_nothing(
        self, cluster: ClusterPort, bad_id: Any
    ) -> None:
        cluster.upsert([record("keep", 1)])
        with pytest.raises(InvalidRequest):
            cluster.upsert([record("good", 1), Record(bad_id, vector(1), {}, 1)])
        with pytest.raises(InvalidRequest):
            cluster.delete([Tombstone("good", 1), Tombstone(bad_id, 1)])
        self.assert_untouched(cluster)

    @pytest.mark.parametrize("bad_version", [-1, 1.5, True, "3", None])
    def test_writes_with_a_bad_version_raise_and_apply_nothing(
        self, cluster: ClusterPort, bad_version: Any
    ) -> None:
        cluster.upsert([record("keep", 1)])
        with pytest.raises(InvalidRequest):
            cluster.upsert([record("good", 1), Record("bad", vector(1), {}, bad_version)])
        with pytest.raises(InvalidRequest):
            cluster.delete([Tombstone("good", 1), Tombstone("bad", bad_version)])
        self.assert_untouched(cluster)

    @pytest.mark.parametrize("k", [0, -1, 1001, True, 2.0])
    def test_search_with_k_out_of_range_raises(self, cluster: ClusterPort, k: Any) -> None:
        cluster.upsert([record("keep", 1)])
        with pytest.raises(InvalidRequest):
            cluster.search(vector(1), k)

    @pytest.mark.parametrize(
        "bad",
        [np.zeros(DIM + 1, np.float32), np.array([np.nan] * DIM, np.float32)],
        ids=["wrong-dim", "nan"],
    )
    def test_search_with_a_bad_query_vector_raises(
        self, cluster: ClusterPort, bad: np.ndarray
    ) -> None:
        cluster.upsert([record("keep", 1)])
        with pytest.raises(InvalidRequest):
            cluster.search(bad, 5)

    def test_get_with_a_bad_id_raises(self, cluster: ClusterPort) -> None:
        with pytest.raises(InvalidRequest):
            cluster.get(["ok", ""])

    # -- properties -----------------------------------------------------------------------------

    def test_fencing_is_order_independent(self, make_cluster: MakeCluster) -> None:
        """The same set of versioned writes, applied fenced in any order, ends in one state:
        for each id, the write with the highest version."""

        ops_strategy = st.lists(
            st.tuples(
                st.sampled_from(["a", "b", "c"]),
                st.integers(0, 6),
                st.booleans(),  # True: delete
                st.integers(0, 3),  # vector seed / category, so equal versions carry distinct data
            ),
            min_size=1,
            max_size=10,
            unique_by=lambda op: (op[0], op[1]),  # versions are unique per id
        )

        @settings(
            max_examples=self.property_examples,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
            database=None,
        )
        @given(ops=ops_strategy, data=st.data())
        def property(ops: list[tuple[str, int, bool, int]], data: st.DataObject) -> None:
            order = data.draw(st.permutations(ops), label="second order")
            finals = []
            for sequence in (ops, order):
                side = make_cluster(DIM, Metric.COSINE)
                held: dict[str, int] = {}
                for record_id, version, is_delete, seed in sequence:
                    if is_delete:
                        result = side.delete([Tombstone(record_id, version)])
                    else:
                        result = side.upsert([record(record_id, version, seed=seed, category=seed)])
                    expect = version > held.get(record_id, -1)
                    assert result == {record_id: expect}, (record_id, version, held)
                    if expect:
                        held[record_id] = version
                finals.append((state_of(side, ["a", "b", "c"]), side.checksums(3)))
            assert finals[0] == finals[1]
            newest = {}
            for op in sorted(ops, key=lambda op: op[1]):
                newest[op[0]] = op
            assert {i: (s[0], s[1]) for i, s in finals[0][0].items()} == {
                i: (op[1], op[2]) for i, op in newest.items()
            }

        property()
