"""The fake HNSW cluster (harness/clusters/fake.py): search quality, fencing, scans,
checksums, replica recovery, and every fault family switched on and off.

The port's generic contract is checked by tests/conformance; these tests check what is
particular to the fake: its recall on a clustered catalog, its replicas and its faults.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vecmig.harness.catalog import Catalog
from vecmig.harness.clusters import _node
from vecmig.harness.clusters.base import (
    ClusterPort,
    InvalidRequest,
    Metric,
    Record,
    Stored,
    Timeout,
    Tombstone,
    Unavailable,
    checksums_of,
    distance,
    matches,
)
from vecmig.harness.clusters.fake import CLUSTER_FAULT_FAMILIES, FakeCluster

DIM = 8


def vec(seed: int, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


def rec(record_id: str, version: int, seed: int | None = None, **metadata: Any) -> Record:
    return Record(record_id, vec(version if seed is None else seed), metadata, version)


def small(**kwargs: Any) -> FakeCluster:
    return FakeCluster(DIM, **kwargs)


def ids_of(count: int) -> list[str]:
    return [f"id{i:04d}" for i in range(count)]


def loaded(count: int = 40, **kwargs: Any) -> FakeCluster:
    cluster = small(**kwargs)
    cluster.upsert([rec(record_id, 1, seed=i) for i, record_id in enumerate(ids_of(count))])
    return cluster


def recall(found: list[str], truth: list[str]) -> float:
    return len(set(found) & set(truth)) / len(truth)


# ---------------------------------------------------------------------------------------------
# Search quality on the clustered catalog.


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.generate(5000, 32, categories=20, seed=1)


@pytest.fixture(scope="module", params=list(Metric))
def catalog_cluster(request: pytest.FixtureRequest, catalog: Catalog) -> FakeCluster:
    cluster = FakeCluster(32, request.param, seed=3)
    records = catalog.records()
    for start in range(0, len(records), 1000):
        cluster.upsert(records[start : start + 1000])
    return cluster


def test_the_fake_cluster_implements_the_port() -> None:
    assert isinstance(small(), ClusterPort)


def test_recall_at_10_is_at_least_0_9_against_exact_brute_force(
    catalog: Catalog, catalog_cluster: FakeCluster
) -> None:
    rng = np.random.default_rng(5)
    scores = []
    for _ in range(100):
        query = catalog.query_vector(rng)
        hits = catalog_cluster.search(query, 10)
        truth = catalog_cluster.exact_search(query, 10)
        assert len(hits) == 10
        assert [h.score for h in hits] == sorted(h.score for h in hits)
        scores.append(recall([h.id for h in hits], [h.id for h in truth]))
    assert np.mean(scores) >= 0.9, f"{catalog_cluster.metric}: recall@10 {np.mean(scores):.3f}"


def test_search_scores_are_hnswlib_distances_like_base_distance(
    catalog: Catalog, catalog_cluster: FakeCluster
) -> None:
    query = catalog.query_vector(np.random.default_rng(8))
    for hit, truth in zip(
        catalog_cluster.search(query, 5), catalog_cluster.exact_search(query, 5), strict=True
    ):
        if hit.id == truth.id:
            assert hit.score == pytest.approx(truth.score, abs=1e-4)


@pytest.mark.parametrize("exact_limit", [_node.EXACT_FILTER_LIMIT, 0], ids=["brute", "hnsw"])
def test_a_selective_filter_still_returns_k_matching_hits(
    catalog: Catalog,
    catalog_cluster: FakeCluster,
    exact_limit: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One category of 20 and in stock only (~4% of records): k hits, all matching, whether
    answered by brute force over the matches or by HNSW with a filter and a wider beam."""
    monkeypatch.setattr(_node, "EXACT_FILTER_LIMIT", exact_limit)
    rng = np.random.default_rng(6)
    scores = []
    for category in range(0, 20, 2):
        flt = {"category": category, "in_stock": True}
        query = catalog.query_vector(rng, category=(category + 7) % 20)  # far from the matches
        hits = catalog_cluster.search(query, 10, flt)
        assert len(hits) == 10
        got = catalog_cluster.get([h.id for h in hits])
        assert all(got[h.id].metadata["category"] == category for h in hits)
        assert all(got[h.id].metadata["in_stock"] is True for h in hits)
        truth = catalog_cluster.exact_search(query, 10, flt)
        scores.append(recall([h.id for h in hits], [h.id for h in truth]))
    assert np.mean(scores) >= 0.9


def test_filtered_search_returns_all_matches_when_fewer_than_k_exist() -> None:
    cluster = small()
    cluster.upsert([rec(f"a{i}", 1, seed=i, color="red" if i < 3 else "blue") for i in range(30)])
    hits = cluster.search(vec(0), 10, {"color": "red"})
    assert sorted(h.id for h in hits) == ["a0", "a1", "a2"]
    assert cluster.search(vec(0), 10, {"color": "green"}) == []


def test_deleted_records_are_excluded_from_filtered_and_unfiltered_search() -> None:
    cluster = small()
    cluster.upsert([rec(f"a{i}", 1, seed=i, color="red") for i in range(20)])
    cluster.delete([Tombstone("a0", 2), Tombstone("a1", 2)])
    for flt in (None, {"color": "red"}):
        found = {h.id for h in cluster.search(vec(0), 20, flt)}
        assert found == {f"a{i}" for i in range(2, 20)}
    assert cluster.count().live == 18


def test_search_on_an_empty_cluster_returns_nothing() -> None:
    assert small().search(vec(1), 5) == []


# ---------------------------------------------------------------------------------------------
# Fencing, updates, growth.


def test_fenced_upsert_never_lets_an_older_version_overwrite_a_newer_one() -> None:
    cluster = small()
    assert cluster.upsert([rec("x", 5)]) == {"x": True}
    assert cluster.upsert([rec("x", 3)]) == {"x": False}
    assert cluster.upsert([rec("x", 5, seed=99)]) == {"x": False}  # equal is not newer
    assert cluster.get(["x"])["x"].version == 5
    assert np.array_equal(cluster.get(["x"])["x"].vector, vec(5))


def test_a_tombstone_blocks_older_and_equal_fenced_upserts() -> None:
    cluster = small()
    cluster.upsert([rec("x", 1)])
    assert cluster.delete([Tombstone("x", 4)]) == {"x": True}
    assert cluster.upsert([rec("x", 3)]) == {"x": False}
    assert cluster.upsert([rec("x", 4)]) == {"x": False}
    stored = cluster.get(["x"])["x"]
    assert stored.deleted and stored.version == 4 and stored.vector is None
    assert cluster.upsert([rec("x", 5)]) == {"x": True}
    assert not cluster.get(["x"])["x"].deleted


def test_a_tombstone_for_an_unknown_id_is_kept_and_fences() -> None:
    cluster = small()
    assert cluster.delete([Tombstone("ghost", 7)]) == {"ghost": True}
    assert cluster.upsert([rec("ghost", 6)]) == {"ghost": False}
    assert cluster.count().tombstones == 1


def test_unfenced_writes_overwrite_whatever_is_there() -> None:
    cluster = small()
    cluster.upsert([rec("x", 9)])
    assert cluster.upsert([rec("x", 2)], fenced=False) == {"x": True}
    assert cluster.get(["x"])["x"].version == 2
    cluster.delete([Tombstone("x", 10)])
    assert cluster.upsert([rec("x", 1)], fenced=False) == {"x": True}
    assert cluster.get(["x"])["x"].version == 1
    assert cluster.delete([Tombstone("x", 0)], fenced=False) == {"x": True}
    assert cluster.get(["x"])["x"].deleted


def test_a_reembedded_record_is_found_by_its_new_vector_not_its_old_one() -> None:
    cluster = loaded(200)
    old, new = vec(10_000), vec(20_000)
    cluster.upsert([Record("moving", old, {}, 1)])
    assert cluster.search(old, 1)[0].id == "moving"
    assert cluster.upsert([Record("moving", new, {}, 2)]) == {"moving": True}
    assert cluster.search(new, 1)[0].id == "moving"
    assert cluster.search(new, 1)[0].version == 2
    near_old = cluster.search(old, 1)[0]
    assert near_old.id != "moving" or near_old.version == 2
    assert all(h.id != "moving" or h.version == 2 for h in cluster.search(old, 50))
    stored = cluster.get(["moving"])["moving"]
    assert stored.version == 2 and np.array_equal(stored.vector, new)


def test_a_metadata_only_update_changes_search_results_without_touching_the_index() -> None:
    cluster = loaded(50)
    before = [r._index.element_count for shard in cluster._replicas for r in shard]
    same = cluster.get(["id0003"])["id0003"]
    cluster.upsert([Record("id0003", same.vector, {"in_stock": False}, 2)])
    after = [r._index.element_count for shard in cluster._replicas for r in shard]
    assert before == after
    hit = cluster.search(same.vector, 1)[0]
    assert (hit.id, hit.version) == ("id0003", 2)
    assert [h.id for h in cluster.search(same.vector, 5, {"in_stock": False})] == ["id0003"]


def test_the_index_grows_beyond_its_initial_capacity() -> None:
    cluster = small(capacity=16, shards=1, replicas=1)
    records = [rec(f"g{i:03d}", 1, seed=i) for i in range(300)]
    for start in range(0, 300, 7):
        cluster.upsert(records[start : start + 7])
    assert cluster.count().live == 300
    for record in records[::30]:
        assert cluster.search(record.vector, 1)[0].id == record.id


def test_many_vector_updates_compact_the_index_and_keep_search_exact() -> None:
    cluster = small(shards=1, replicas=1, capacity=64)
    for version in range(1, 40):
        cluster.upsert([rec(f"c{i}", version, seed=version * 100 + i) for i in range(60)])
    replica = cluster._replicas[0][0]
    assert replica._deleted_labels <= max(_node.COMPACT_MIN_DELETED, 60)
    assert replica._index.element_count < 39 * 60  # compacted at least once
    for i in range(0, 60, 7):
        top = cluster.search(vec(39 * 100 + i), 1)[0]
        assert (top.id, top.version) == (f"c{i}", 39)


def test_duplicate_ids_in_one_batch_apply_in_order() -> None:
    cluster = small()
    assert cluster.upsert([rec("d", 2), rec("d", 1)]) == {"d": False}
    assert cluster.get(["d"])["d"].version == 2


# ---------------------------------------------------------------------------------------------
# Scan, count, checksums.


def scan_all(cluster: FakeCluster, limit: int) -> list[tuple[str, int, bool]]:
    seen, cursor = [], None
    while True:
        page = cluster.scan(cursor, limit)
        seen.extend((s.id, s.version, s.deleted) for s in page.items)
        if page.next_cursor is None:
            return seen
        assert page.items and page.next_cursor == page.items[-1].id
        cursor = page.next_cursor


@pytest.mark.parametrize("limit", [1, 7, 40, 41, 1000])
def test_scan_returns_every_id_once_in_order_tombstones_included(limit: int) -> None:
    cluster = loaded(41)
    cluster.delete([Tombstone("id0005", 3), Tombstone("zzz", 2)])
    seen = scan_all(cluster, limit)
    ids = [item[0] for item in seen]
    assert ids == sorted(ids) and len(ids) == len(set(ids)) == 42
    assert ("id0005", 3, True) in seen and ("zzz", 2, True) in seen


def test_scan_resumes_from_any_cursor_even_one_that_is_not_stored() -> None:
    cluster = loaded(30)
    everything = [item[0] for item in scan_all(cluster, 1000)]
    page = cluster.scan("id0010", 5)
    assert [s.id for s in page.items] == everything[11:16]
    assert [s.id for s in cluster.scan("id0010a", 3).items] == everything[11:14]
    assert cluster.scan("id9999", 5) == cluster.scan("id9999", 5)
    assert cluster.scan("id9999", 5).items == () and cluster.scan("id9999", 5).next_cursor is None


def test_scan_pages_quickly_through_100k_ids() -> None:
    """A sorted id list with bisection: 200 pages of 500 must not re-sort 100k ids each."""
    import time

    cluster = FakeCluster(2, shards=2, replicas=1, m=4, ef_construction=10)  # cheap to load
    vectors = np.random.default_rng(0).standard_normal((100_000, 2)).astype(np.float32)
    for start in range(0, 100_000, 10_000):
        cluster.upsert(
            [Record(f"s{i:06d}", vectors[i], {}, 1) for i in range(start, start + 10_000)]
        )
    began = time.perf_counter()
    assert len(scan_all(cluster, 500)) == 100_000
    assert time.perf_counter() - began < 1.5


def test_checksums_equal_base_checksums_of_over_the_same_triples() -> None:
    cluster = loaded(60)
    cluster.delete([Tombstone("id0001", 4), Tombstone("only-deleted", 2)])
    cluster.upsert([rec("id0002", 3)])
    triples = scan_all(cluster, 1000)
    for buckets in (1, 4, 16):
        assert cluster.checksums(buckets) == checksums_of(triples, buckets)


def test_checksums_differ_when_one_version_differs() -> None:
    a, b = loaded(60), loaded(60)
    assert a.checksums(8) == b.checksums(8)
    b.upsert([rec("id0042", 2)])
    differing = [x for x, y in zip(a.checksums(8), b.checksums(8), strict=True) if x != y]
    assert len(differing) == 1 and differing[0].count == b.checksums(8)[differing[0].bucket].count


def test_count_separates_live_records_from_tombstones() -> None:
    cluster = loaded(10)
    cluster.delete([Tombstone("id0000", 2), Tombstone("new", 1)])
    counts = cluster.count()
    assert (counts.live, counts.tombstones) == (9, 2)


# ---------------------------------------------------------------------------------------------
# Replicas.


def reads_of(cluster: FakeCluster, record_id: str, times: int = 8) -> set[int]:
    """Versions of `record_id` seen by get, scan and search over several rounds, so that
    round-robin sends reads to every serving replica."""
    versions = set()
    for _ in range(times):
        stored = cluster.get([record_id])[record_id]
        versions.add(stored.version)
        versions |= {v for i, v, _ in scan_all(cluster, 1000) if i == record_id}
        if stored.vector is not None:
            versions |= {h.version for h in cluster.search(stored.vector, 3) if h.id == record_id}
    return versions


@pytest.mark.parametrize("lose_data", [False, True], ids=["kept", "lost"])
def test_a_recovered_replica_never_serves_stale_data(lose_data: bool) -> None:
    cluster = loaded(40)
    target = "id0007"
    shard = cluster._shard_of(target)
    down = f"s{shard}r1"
    cluster.start_fault("node-crash", node=down, lose_data=lose_data)
    cluster.upsert([rec(target, 2, seed=777)])
    cluster.delete([Tombstone("id0008", 2)])
    assert reads_of(cluster, target) == {2}
    cluster.stop_fault("node-crash", node=down)
    assert reads_of(cluster, target) == {2}
    assert cluster.get(["id0008"])["id0008"].deleted
    assert cluster.count().live == 39
    assert cluster.health().ok


def test_a_shard_whose_every_replica_is_down_is_unavailable_and_nothing_applies() -> None:
    cluster = loaded(40)
    shard = cluster._shard_of("id0001")
    other = next(i for i in ids_of(40) if cluster._shard_of(i) != shard)
    for replica in range(2):
        cluster.start_node_crash(f"s{shard}r{replica}")
    with pytest.raises(Unavailable, match=f"shard {shard}"):
        cluster.get(["id0001"])
    with pytest.raises(Unavailable):
        cluster.upsert([rec(other, 5), rec("id0001", 5)])
    assert cluster.get([other])[other].version == 1  # the healthy shard was not written either
    with pytest.raises(Unavailable):
        cluster.search(vec(1), 3)
    assert not cluster.health().ok


def test_a_node_that_missed_writes_waits_for_the_peer_that_has_them() -> None:
    """Crash r0, write, crash r1, restart r0: r0 is behind and r1 may come back, so the shard
    is unavailable rather than stale; once r1 restarts, both serve the new version."""
    cluster = loaded(40)
    shard = cluster._shard_of("id0003")
    r0, r1 = f"s{shard}r0", f"s{shard}r1"
    cluster.start_node_crash(r0)
    cluster.upsert([rec("id0003", 2)])
    cluster.start_node_crash(r1)
    cluster.stop_node_crash(r0)
    with pytest.raises(Unavailable):
        cluster.get(["id0003"])
    cluster.stop_node_crash(r1)
    assert reads_of(cluster, "id0003") == {2}


def test_data_on_every_replica_lost_is_really_gone() -> None:
    cluster = loaded(40)
    shard = cluster._shard_of("id0003")
    on_shard = [i for i in ids_of(40) if cluster._shard_of(i) == shard]
    for replica in range(2):
        cluster.start_fault("node-crash", node=f"s{shard}r{replica}", lose_data=True)
    for replica in range(2):
        cluster.stop_fault("node-crash", node=f"s{shard}r{replica}")
    assert cluster.get(on_shard) == {}
    assert cluster.count().live == 40 - len(on_shard)
    assert cluster.health().ok
    assert cluster.upsert([rec("id0003", 1)]) == {"id0003": True}


def test_data_survives_when_one_replica_lost_its_disk_and_the_other_did_not() -> None:
    cluster = loaded(40)
    shard = cluster._shard_of("id0003")
    cluster.start_node_crash(f"s{shard}r0", lose_data=False)
    cluster.start_node_crash(f"s{shard}r1", lose_data=True)
    cluster.stop_node_crash(f"s{shard}r1")  # empty and behind: must not serve yet
    with pytest.raises(Unavailable):
        cluster.get(["id0003"])
    cluster.stop_node_crash(f"s{shard}r0")
    assert reads_of(cluster, "id0003") == {1}
    assert cluster.count().live == 40


# ---------------------------------------------------------------------------------------------
# Faults: each family's effect while on, and its absence after stop.


def test_the_fault_families_are_the_documented_seven() -> None:
    assert CLUSTER_FAULT_FAMILIES == (
        "node-crash",
        "node-pause",
        "error-rate",
        "lost-ack",
        "visibility-lag",
        "index-rebuild",
        "slow-replica",
    )


def test_an_unknown_family_parameter_or_node_is_refused_naming_the_valid_ones() -> None:
    cluster = small()
    with pytest.raises(ValueError, match="node-crash, node-pause"):
        cluster.start_fault("disk-full")
    with pytest.raises(ValueError, match="unknown parameter"):
        cluster.start_fault("error-rate", rate=0.1, burst=3)
    with pytest.raises(ValueError, match="needs parameter"):
        cluster.start_fault("slow-replica", node="s0r0")
    with pytest.raises(ValueError, match="s0r0"):
        cluster.start_fault("node-crash", node="s9r9")
    with pytest.raises(ValueError, match="rate must be"):
        cluster.start_fault("lost-ack", rate=1.5)
    cluster.stop_fault("error-rate", rate=0.1)  # a stop may repeat the start's parameters


def test_node_crash_start_takes_a_replica_out_and_stop_brings_it_back() -> None:
    cluster = loaded(40, replicas=2)
    cluster.start_fault("node-crash", node="s0r0")
    assert cluster.fault_state()["crashed"] == ["s0r0"]
    assert cluster.health().detail["s0r0"] == "crashed"
    assert cluster.health().ok  # s0r1 still serves
    cluster.stop_fault("node-crash", node="s0r0")
    assert cluster.fault_state()["crashed"] == []
    assert cluster.health().detail["s0r0"] == "up"


def test_node_pause_times_out_calls_with_no_other_replica_and_resumes_caught_up() -> None:
    cluster = loaded(40, replicas=1)
    shard = cluster._shard_of("id0001")
    node = f"s{shard}r0"
    cluster.start_fault("node-pause", node=node)
    with pytest.raises(Timeout, match=f"shard {shard}"):
        cluster.get(["id0001"])
    with pytest.raises(Timeout):
        cluster.upsert([rec("id0001", 2)])
    with pytest.raises(Timeout):
        cluster.count()
    cluster.stop_fault("node-pause", node=node)
    assert cluster.get(["id0001"])["id0001"].version == 1  # the timed-out write never landed


def test_a_write_skips_a_paused_replica_and_it_catches_up_on_resume() -> None:
    cluster = loaded(40, replicas=2)
    shard = cluster._shard_of("id0001")
    cluster.start_node_pause(f"s{shard}r1")
    assert cluster.upsert([rec("id0001", 2)]) == {"id0001": True}
    assert reads_of(cluster, "id0001") == {2}
    cluster.stop_node_pause(f"s{shard}r1")
    assert reads_of(cluster, "id0001") == {2}
    assert cluster.fault_state()["paused"] == []


def test_error_rate_fails_calls_before_any_effect_and_stops_cleanly() -> None:
    cluster = loaded(20)
    cluster.start_fault("error-rate", rate=0.5)
    failures = 0
    for version in range(2, 102):
        try:
            cluster.upsert([rec("id0001", version)])
        except Unavailable:
            failures += 1
    assert 25 < failures < 75
    cluster.stop_fault("error-rate")
    for _ in range(50):
        cluster.get(["id0001"])
        cluster.search(vec(1), 3)


def test_error_rate_one_fails_every_call_and_applies_nothing() -> None:
    cluster = loaded(20)
    cluster.start_error_rate(1.0)
    for call in (
        lambda: cluster.upsert([rec("id0001", 9)]),
        lambda: cluster.delete([Tombstone("id0002", 9)]),
        lambda: cluster.get(["id0001"]),
        lambda: cluster.search(vec(1), 1),
        lambda: cluster.scan(None, 10),
        cluster.count,
        lambda: cluster.checksums(4),
    ):
        with pytest.raises(Unavailable, match="injected"):
            call()
    cluster.stop_error_rate()
    assert cluster.get(["id0001", "id0002"])["id0001"].version == 1
    assert not cluster.get(["id0002"])["id0002"].deleted


def test_lost_ack_acknowledges_writes_it_does_not_store() -> None:
    cluster = loaded(200)
    cluster.start_fault("lost-ack", rate=0.5)
    acks = cluster.upsert([rec(f"id{i:04d}", 2) for i in range(200)])
    assert all(acks.values())
    stored = cluster.get(list(acks))
    lost = [i for i in acks if stored[i].version == 1]
    assert 50 < len(lost) < 150
    cluster.stop_fault("lost-ack")
    acks = cluster.upsert([rec(i, 3) for i in lost])
    assert all(s.version == 3 for s in cluster.get(lost).values())


@pytest.mark.parametrize("family", ["error-rate", "lost-ack"])
def test_the_same_seed_and_calls_give_the_same_fault_outcomes(family: str) -> None:
    def outcomes(seed: int) -> list[Any]:
        cluster = loaded(30, seed=seed)
        cluster.start_fault(family, rate=0.3)
        seen: list[Any] = []
        for version in range(2, 30):
            try:
                seen.append(cluster.upsert([rec(f"id{i:04d}", version) for i in range(5)]))
            except Unavailable:
                seen.append("unavailable")
        return seen + [cluster.live_versions()]

    assert outcomes(1) == outcomes(1)
    assert outcomes(1) != outcomes(2)


def test_visibility_lag_hides_writes_from_search_until_refresh_but_not_from_get_or_scan() -> None:
    cluster = loaded(40)
    cluster.start_fault("visibility-lag")
    assert cluster.fault_state()["visibility_lag"] is True
    cluster.upsert([rec("fresh", 1, seed=5000)])
    cluster.delete([Tombstone("id0004", 2)])
    assert cluster.get(["fresh"])["fresh"].version == 1
    assert "fresh" in {s.id for s in cluster.scan(None, 100).items}
    assert all(h.id != "fresh" for h in cluster.search(vec(5000), 5))
    assert cluster.search(vec(4), 1)[0].id == "id0004"  # the deleted id is still searchable
    cluster.refresh()
    assert cluster.search(vec(5000), 1)[0].id == "fresh"
    assert all(h.id != "id0004" for h in cluster.search(vec(4), 5))
    cluster.upsert([rec("later", 1, seed=6000)])
    assert all(h.id != "later" for h in cluster.search(vec(6000), 5))
    cluster.stop_fault("visibility-lag")
    assert cluster.search(vec(6000), 1)[0].id == "later"
    cluster.upsert([rec("after", 1, seed=7000)])
    assert cluster.search(vec(7000), 1)[0].id == "after"


def test_visibility_lag_shows_the_old_version_of_an_updated_record() -> None:
    cluster = loaded(40)
    cluster.start_visibility_lag()
    cluster.upsert([Record("id0002", vec(2), {"new": True}, 2)])
    assert cluster.search(vec(2), 1)[0].version == 1
    assert cluster.search(vec(2), 1, {"new": True}) == []
    cluster.stop_visibility_lag()
    assert cluster.search(vec(2), 1, {"new": True})[0].version == 2


def test_index_rebuild_makes_search_unavailable_while_reads_and_writes_work() -> None:
    cluster = loaded(40)
    cluster.start_fault("index-rebuild")
    with pytest.raises(Unavailable, match="rebuilt"):
        cluster.search(vec(1), 3)
    assert cluster.upsert([rec("id0001", 2)]) == {"id0001": True}
    assert cluster.get(["id0001"])["id0001"].version == 2
    assert len(cluster.scan(None, 100).items) == 40
    assert not cluster.health().ok
    cluster.stop_fault("index-rebuild")
    found, exact = cluster.search(vec(2), 1)[0], cluster.exact_search(vec(2), 1)[0]
    # hnswlib and numpy compute the same distance in a different order of float32 operations.
    assert (found.id, found.version) == (exact.id, exact.version)
    assert found.score == pytest.approx(exact.score, abs=1e-6)
    assert cluster.health().ok


def test_slow_replica_scales_latency_of_calls_that_may_land_on_it() -> None:
    cluster = loaded(40, shards=1, replicas=2)
    assert cluster.latency_multiplier("search") == 1.0
    cluster.start_fault("slow-replica", node="s0r1", factor=4.0)
    assert cluster.latency_multiplier("upsert") == 4.0  # writes wait for every replica
    factors = []
    for _ in range(4):
        factors.append(cluster.latency_multiplier("get"))
        cluster.get(["id0001"])
    assert sorted(factors) == [1.0, 1.0, 4.0, 4.0]  # round-robin alternates replicas
    cluster.start_node_crash("s0r1")
    assert cluster.latency_multiplier("get") == 1.0  # a crashed node serves nothing
    cluster.stop_node_crash("s0r1")
    cluster.stop_fault("slow-replica", node="s0r1")
    assert all(cluster.latency_multiplier(op) == 1.0 for op in ("get", "search", "upsert"))
    assert cluster.fault_state()["slow"] == {}
    with pytest.raises(ValueError, match="unknown op"):
        cluster.latency_multiplier("teleport")


def test_every_family_starts_and_stops_through_the_generic_dispatch() -> None:
    params: dict[str, dict[str, Any]] = {
        "node-crash": {"node": "s0r0", "lose_data": True},
        "node-pause": {"node": "s1r1"},
        "error-rate": {"rate": 0.2},
        "lost-ack": {"rate": 0.2},
        "visibility-lag": {},
        "index-rebuild": {},
        "slow-replica": {"node": "s1r0", "factor": 3.0},
    }
    assert set(params) == set(CLUSTER_FAULT_FAMILIES)
    cluster = loaded(40)
    calm = cluster.fault_state()
    for family, kwargs in params.items():
        cluster.start_fault(family, **kwargs)
    assert cluster.fault_state() != calm
    for family, kwargs in params.items():
        cluster.stop_fault(family, **kwargs)
    assert cluster.fault_state() == calm
    assert cluster.health().ok and cluster.count().live == 40


# ---------------------------------------------------------------------------------------------
# Bad input, oracles, threads.


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (Record("ok2", np.zeros(DIM + 1, np.float32), {}, 1), "dimension 9"),
        (Record("ok2", np.array([np.nan] + [0.0] * (DIM - 1), np.float32), {}, 1), "non-finite"),
        (Record("", vec(1), {}, 1), "record id"),
        (Record("a\nb", vec(1), {}, 1), "control characters"),
        (Record("ok2", vec(1), {}, -1), "version"),
    ],
    ids=["dimension", "nan", "empty-id", "control-id", "version"],
)
def test_a_batch_with_one_bad_record_is_refused_whole_naming_the_problem(
    bad: Record, message: str
) -> None:
    cluster = small()
    with pytest.raises(InvalidRequest, match=message):
        cluster.upsert([rec("ok1", 1), bad, rec("ok3", 1)])
    assert cluster.count().live == 0 and cluster.get(["ok1", "ok3"]) == {}


def test_bad_search_scan_get_and_delete_arguments_raise_invalid_request() -> None:
    cluster = loaded(5)
    with pytest.raises(InvalidRequest, match="dimension"):
        cluster.search(np.zeros(3, np.float32), 1)
    with pytest.raises(InvalidRequest, match="k must"):
        cluster.search(vec(1), 0)
    with pytest.raises(InvalidRequest, match="k must"):
        cluster.search(vec(1), 10_000)
    with pytest.raises(InvalidRequest, match="filter"):
        cluster.search(vec(1), 3, filter=[("category", 1)])  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="limit"):
        cluster.scan(None, 0)
    with pytest.raises(InvalidRequest, match="record id"):
        cluster.get([""])
    with pytest.raises(InvalidRequest, match="sequence"):
        cluster.get("id0001")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="version"):
        cluster.delete([Tombstone("id0001", 2), Tombstone("id0002", -3)])
    with pytest.raises(InvalidRequest, match="expected Record"):
        cluster.upsert([Tombstone("id0001", 2)])  # type: ignore[list-item]
    assert cluster.count().tombstones == 0


def test_a_stored_vector_cannot_be_changed_behind_the_clusters_back() -> None:
    cluster = small()
    mine = vec(3)
    cluster.upsert([Record("x", mine, {"tags": 1}, 1)])
    mine[:] = 0
    stored = cluster.get(["x"])["x"]
    assert np.array_equal(stored.vector, vec(3))
    with pytest.raises(ValueError):
        stored.vector[0] = 1.0  # type: ignore[index]


def test_live_versions_and_exact_search_ignore_faults() -> None:
    cluster = loaded(10)
    cluster.delete([Tombstone("id0000", 2)])
    cluster.start_error_rate(1.0)
    cluster.start_index_rebuild()
    versions = cluster.live_versions()
    assert len(versions) == 9 and "id0000" not in versions
    assert cluster.exact_search(vec(1), 1)[0].id == "id0001"


def test_nodes_are_named_shard_then_replica() -> None:
    assert FakeCluster(4, shards=2, replicas=3).nodes() == [
        "s0r0",
        "s0r1",
        "s0r2",
        "s1r0",
        "s1r1",
        "s1r2",
    ]


def test_concurrent_writers_and_readers_leave_a_consistent_cluster() -> None:
    cluster = small()
    errors: list[Exception] = []

    def writer(offset: int) -> None:
        try:
            for version in range(1, 30):
                cluster.upsert([rec(f"t{offset}-{i}", version, seed=i) for i in range(5)])
                cluster.search(vec(offset), 3)
                cluster.scan(None, 7)
        except Exception as exc:  # noqa: BLE001 - surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert set(cluster.live_versions().values()) == {29}
    assert cluster.count().live == 20


# ---------------------------------------------------------------------------------------------
# Against a model: whatever crashes and pauses (without data loss) happen, every read that is
# answered agrees with a plain dict, and a refused call changed nothing.

NODES = ["s0r0", "s0r1", "s1r0", "s1r1"]
KEYS = [f"k{i}" for i in range(6)]

operation = st.one_of(
    st.tuples(st.just("upsert"), st.sampled_from(KEYS), st.integers(0, 6), st.booleans()),
    st.tuples(st.just("delete"), st.sampled_from(KEYS), st.integers(0, 6), st.booleans()),
    st.tuples(st.just("crash"), st.sampled_from(NODES)),
    st.tuples(st.just("restart"), st.sampled_from(NODES)),
    st.tuples(st.just("pause"), st.sampled_from(NODES)),
    st.tuples(st.just("resume"), st.sampled_from(NODES)),
    st.tuples(st.just("read"), st.sampled_from(KEYS)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(operation, max_size=40))
def test_replicas_under_crashes_and_pauses_never_serve_what_a_model_would_not(
    operations: list[tuple[Any, ...]],
) -> None:
    cluster = FakeCluster(4, shards=2, replicas=2, capacity=16, ef_construction=16)
    model: dict[str, tuple[int, bool]] = {}
    for op in operations:
        kind = op[0]
        try:
            if kind in ("upsert", "delete"):
                _, key, version, fenced = op
                current = model.get(key)
                expected = not fenced or current is None or version > current[0]
                if kind == "upsert":
                    record = Record(key, vec(version, 4), {}, version)
                    answer = cluster.upsert([record], fenced=fenced)
                else:
                    answer = cluster.delete([Tombstone(key, version)], fenced=fenced)
                assert answer == {key: expected}
                if expected:
                    model[key] = (version, kind == "delete")
            elif kind == "read":
                got = cluster.get([op[1]]).get(op[1])
                assert (None if got is None else (got.version, got.deleted)) == model.get(op[1])
                live = {h.id: h.version for h in cluster.search(vec(0, 4), 6)}
                assert live == {k: v for k, (v, deleted) in model.items() if not deleted}
            else:
                method = {
                    "crash": cluster.start_node_crash,
                    "restart": cluster.stop_node_crash,
                    "pause": cluster.start_node_pause,
                    "resume": cluster.stop_node_pause,
                }[kind]
                method(op[1])
        except (Unavailable, Timeout):
            pass  # refused before any effect: the model is unchanged
    for node in NODES:
        cluster.stop_node_pause(node)
        cluster.stop_node_crash(node)
    assert scan_all(cluster, 4) == sorted((k, v, d) for k, (v, d) in model.items())


# ---------------------------------------------------------------------------------------------
# Filtered and exact search against brute force over a model. The replicas answer filters from
# numpy columns kept up to date on every write, publish, compaction and catch-up copy; these
# tests hold them to `base.matches` and `base.distance` over a plain dict.

NAN = float("nan")
CATEGORIES: list[Any] = [0, 1, 2, 1.0, True, False, None, "1", [1], NAN, np.int64(1), 2**53 + 1]
FILTERS: list[dict[str, Any]] = [
    {},
    {"category": 1},
    {"category": 0},
    {"category": 2, "in_stock": True},
    {"in_stock": True},
    {"in_stock": False},
    {"in_stock": None},  # matches records without the key
    {"category": "1"},
    {"category": [1]},  # unhashable: compared with == record by record
    {"category": NAN},  # never equal, not even to itself
    {"category": 2.0**53},  # equal to no int 2**53 + 1
    {"color": "red", "category": 1},
]


class SearchModel:
    """What search and exact_search must answer: brute force with `matches` and `distance`
    over what a dict says is visible (search) and live (exact_search)."""

    def __init__(self, metric: Metric) -> None:
        self.metric = metric
        self.live: dict[str, Record] = {}
        self.visible: dict[str, Record] = {}
        self.lagging = False

    def wrote(self, record: Record | None, record_id: str) -> None:
        if record is None:
            self.live.pop(record_id, None)
        else:
            self.live[record_id] = record
        if not self.lagging:
            self.refreshed()

    def refreshed(self) -> None:
        self.visible = dict(self.live)

    def top(
        self, shown: dict[str, Record], query: np.ndarray, k: int, flt: dict[str, Any]
    ) -> list[tuple[str, int, float]]:
        chosen = [r for r in shown.values() if matches(r.metadata, flt)]
        if not chosen:
            return []
        dists = distance(self.metric, query, np.stack([r.vector for r in chosen]))
        ranked = sorted(zip(dists.tolist(), (r.id for r in chosen), strict=True))[:k]
        return [(record_id, shown[record_id].version, score) for score, record_id in ranked]


def hits(found: list[Any]) -> list[tuple[str, int, float]]:
    return [(h.id, h.version, h.score) for h in found]


def assert_same_hits(
    got: list[tuple[str, int, float]], want: list[tuple[str, int, float]], exact_scores: bool
) -> None:
    assert [(i, v) for i, v, _ in got] == [(i, v) for i, v, _ in want]
    if exact_scores:
        assert [s for *_, s in got] == [s for *_, s in want]
    else:
        assert [s for *_, s in got] == pytest.approx([s for *_, s in want], abs=1e-5)


search_step = st.one_of(
    st.tuples(
        st.just("upsert"),
        st.integers(0, 29),  # id
        st.integers(0, 10**6),  # vector seed
        st.sampled_from(CATEGORIES),
        st.sampled_from([True, False, "missing"]),
        st.booleans(),  # keep the stored vector (a metadata-only update)
    ),
    st.tuples(st.just("delete"), st.integers(0, 29)),
    st.tuples(st.just("crash"), st.sampled_from(["s0r1", "s1r1"]), st.booleans()),
    st.tuples(st.just("restart"), st.sampled_from(["s0r1", "s1r1"])),
    st.tuples(st.just("lag"), st.booleans()),
    st.tuples(st.just("refresh")),
    st.tuples(
        st.just("search"), st.integers(0, 10**6), st.integers(1, 12), st.sampled_from(FILTERS)
    ),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(search_step, max_size=60), st.sampled_from([8, 2048]))
# one scenario, step by step (C901)
def test_filtered_and_exact_search_equal_brute_force_through_updates_compaction_and_copies(  # noqa: C901
    steps: list[tuple[Any, ...]], compact_after: int
) -> None:
    """Brute force answers filters exactly: the same hits, in the same order, with the same
    scores (L2, whose distances do not depend on how rows are stacked) as the model's, after
    metadata-only and vector updates, deletes, lagging refreshes, index compactions (every 8
    deleted labels) and catch-up copies to replicas that crashed, with or without their data.
    Replicas 0 always keep the data, so nothing is lost for good."""
    saved = _node.COMPACT_MIN_DELETED
    _node.COMPACT_MIN_DELETED = compact_after
    try:
        cluster = FakeCluster(DIM, Metric.L2, shards=2, replicas=2, capacity=16, ef_construction=16)
        model = SearchModel(Metric.L2)
        versions: dict[str, int] = {}
        for step in steps:
            kind = step[0]
            if kind == "upsert":
                _, number, seed, category, in_stock, keep = step
                record_id = f"p{number}"
                current = model.live.get(record_id)
                vector = current.vector if keep and current is not None else vec(seed)
                metadata: dict[str, Any] = {"category": category}
                if in_stock != "missing":
                    metadata["in_stock"] = in_stock
                if seed % 3 == 0:
                    metadata["color"] = "red"
                versions[record_id] = versions.get(record_id, 0) + 1
                record = Record(record_id, vector, metadata, versions[record_id])
                assert cluster.upsert([record]) == {record_id: True}
                model.wrote(record, record_id)
            elif kind == "delete":
                record_id = f"p{step[1]}"
                versions[record_id] = versions.get(record_id, 0) + 1
                cluster.delete([Tombstone(record_id, versions[record_id])])
                model.wrote(None, record_id)
            elif kind == "crash":
                cluster.start_node_crash(step[1], lose_data=step[2])
            elif kind == "restart":
                cluster.stop_node_crash(step[1])
            elif kind == "lag":
                model.lagging = step[1]
                if step[1]:
                    cluster.start_visibility_lag()
                else:
                    cluster.stop_visibility_lag()
                    model.refreshed()
            elif kind == "refresh":
                cluster.refresh()
                model.refreshed()
            else:
                _, seed, k, flt = step
                query = vec(seed)
                want = model.top(model.live, query, k, flt)
                assert_same_hits(hits(cluster.exact_search(query, k, flt)), want, True)
                if flt:
                    want = model.top(model.visible, query, k, flt)
                    for _ in range(2):  # round-robin: each replica of a shard answers once
                        assert_same_hits(hits(cluster.search(query, k, flt)), want, True)
    finally:
        _node.COMPACT_MIN_DELETED = saved


@pytest.mark.parametrize("metric", [Metric.COSINE, Metric.INNER_PRODUCT])
def test_filtered_brute_force_equals_the_model_under_every_metric(metric: Metric) -> None:
    """Cosine and inner product go through a matrix product whose last bits depend on how the
    rows are stacked, hence scores compared to 1e-5; the hits and their order are the same."""
    rng = np.random.default_rng(11)
    cluster = FakeCluster(DIM, metric, shards=2, replicas=2, capacity=16)
    model = SearchModel(metric)
    for round_ in range(1, 6):
        batch = [
            Record(
                f"p{i}",
                vec(1000 * round_ + i),
                {"category": int(rng.integers(4)), "in_stock": bool(rng.random() < 0.5)},
                2 * round_,
            )
            for i in range(300)
            if rng.random() < 0.7
        ]
        cluster.upsert(batch)
        for record in batch:
            model.wrote(record, record.id)
        gone = [f"p{i}" for i in rng.choice(300, size=20, replace=False)]
        cluster.delete([Tombstone(record_id, 2 * round_ + 1) for record_id in gone])
        for record_id in gone:
            model.wrote(None, record_id)
        for flt in ({"category": 2}, {"in_stock": True}, {"category": 1, "in_stock": False}):
            query = vec(int(rng.integers(10**6)))
            for found in (cluster.search(query, 10, flt), cluster.exact_search(query, 10, flt)):
                assert_same_hits(hits(found), model.top(model.live, query, 10, flt), False)


def test_filtered_hnsw_search_returns_k_visible_matching_records_at_their_versions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Above the brute-force limit the filter is an hnswlib callback over the matching labels:
    every hit matches, is visible at its visible version, and there are k of them."""
    monkeypatch.setattr(_node, "EXACT_FILTER_LIMIT", 0)
    cluster = FakeCluster(DIM, shards=2, replicas=2, capacity=16)
    cluster.upsert([rec(f"p{i}", 1, seed=i, category=i % 3) for i in range(200)])
    cluster.start_visibility_lag()
    cluster.upsert([rec(f"p{i}", 2, seed=i, category=0) for i in range(0, 200, 2)])
    for flt in ({"category": 0}, {"category": 1}, {"category": 2}):
        for seed in range(5):
            found = cluster.search(vec(seed), 10, flt)
            assert len(found) == 10
            for hit in found:
                number = int(hit.id[1:])
                assert hit.version == 1 and number % 3 == flt["category"]
    cluster.stop_visibility_lag()
    found = cluster.search(vec(7), 10, {"category": 0})
    assert len(found) == 10 and all(int(h.id[1:]) % 6 in (0, 2, 3, 4) for h in found)
    assert all(h.version == (2 if int(h.id[1:]) % 2 == 0 else 1) for h in found)


def test_filters_select_exactly_what_matches_selects_whatever_the_metadata_values() -> None:
    """1, 1.0, True and np.int64(1) are equal, "1" is not, [1] equals only [1], NaN equals
    nothing, a missing key reads as None: search and exact_search follow `matches` on every
    pair of stored value and filter, also once a column exists, after a catch-up copy and
    after an index compaction."""
    cluster = FakeCluster(DIM, shards=2, replicas=2, capacity=16)
    records = [
        Record(f"p{i}-{j}", vec(100 * i + j), metadata, 1)
        for i, category in enumerate(CATEGORIES)
        for j, metadata in enumerate(
            [
                {"category": category, "in_stock": True},
                {"category": category, "in_stock": False, "color": "red"},
                {"category": category},
            ]
        )
    ]
    cluster.upsert(records)

    def check() -> None:
        for flt in FILTERS:
            want = {r.id for r in records if matches(r.metadata, flt)}
            for _ in range(2):
                assert {h.id for h in cluster.search(vec(0), 1000, flt)} == want, flt
            assert {h.id for h in cluster.exact_search(vec(0), 1000, flt)} == want, flt

    check()
    cluster.start_node_crash("s0r1", lose_data=True)
    records = [Record(r.id, r.vector, {**r.metadata, "category": 1}, 2) for r in records[:9]] + [
        *records[9:]
    ]
    cluster.upsert(records[:9])
    cluster.stop_node_crash("s0r1")
    check()
    saved = _node.COMPACT_MIN_DELETED
    try:
        _node.COMPACT_MIN_DELETED = 4
        for version in (3, 4):  # two new vectors each: deleted labels outnumber live ones
            records = [
                Record(r.id, vec(99 * version + n), r.metadata, version)
                for n, r in enumerate(records)
            ]
            cluster.upsert(records)
        # Without a compaction, each record would have used 3 labels.
        assert all(r._next_label < 3 * r.live_count for shard in cluster._replicas for r in shard)
    finally:
        _node.COMPACT_MIN_DELETED = saved
    check()


def test_a_copy_of_columns_is_independent_of_its_source() -> None:
    """A catch-up copy shares no mutable column with the replica it copied."""
    columns = _node.Columns(DIM, 4)
    for row in range(3):
        columns.put(row, Stored(f"a{row}", 1, False, vec(row), {"category": row % 2}))
    assert columns.matching({"category": 1}).tolist() == [1]  # builds the column
    twin = columns.copy()
    columns.put(0, Stored("a0", 2, False, vec(9), {"category": 1}))
    columns.put(5, Stored("a5", 1, False, vec(5), {"category": 1}))  # grows the source
    columns.drop(1)
    assert twin.matching({"category": 1}).tolist() == [1]
    assert np.array_equal(twin.vectors[0], vec(0)) and twin.count == 3
    assert columns.matching({"category": 1}).tolist() == [0, 5]


def test_exact_search_breaks_distance_ties_by_id_and_keeps_k() -> None:
    """Equal distances at the k-th place: the lower ids win, as a sort of every record does."""
    cluster = FakeCluster(DIM, Metric.L2, shards=2, replicas=2)
    same = np.ones(DIM, np.float32)
    cluster.upsert([Record(f"t{i:02d}", same, {"category": 1}, 1) for i in range(30)])
    cluster.upsert([Record("far", same * 3, {"category": 1}, 1)])
    for flt in (None, {"category": 1}):
        found = cluster.exact_search(same, 5, flt)
        assert [h.id for h in found] == [f"t{i:02d}" for i in range(5)]
        # Brute force per shard keeps the lowest labels among equals: the first written.
        assert [h.id for h in cluster.search(same, 5, {"category": 1})] == [
            f"t{i:02d}" for i in range(5)
        ]
        assert {h.id for h in cluster.search(same, 31, {"category": 1})} == {
            *(f"t{i:02d}" for i in range(30)),
            "far",
        }
