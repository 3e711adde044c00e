"""The scaled fake cluster: records outside the sample hold only a version and a tombstone, yet
are fenced, scanned in id order, counted, checksummed the portable way, lost with a disk and
caught up like any record; searches find only the sample."""

from __future__ import annotations

import pytest

from vecmig.harness.catalog import Catalog
from vecmig.harness.clusters.base import (
    VECTORLESS,
    InvalidRequest,
    Record,
    Tombstone,
    checksums_of,
    searchable,
)
from vecmig.harness.clusters.scaled import CatalogSample, ScaledCluster
from vecmig.harness.drive.step import live_versions

PRODUCTS, SAMPLE, DIM = 1000, 100, 8


@pytest.fixture
def sample() -> CatalogSample:
    return CatalogSample.of(PRODUCTS, SAMPLE)


@pytest.fixture
def cluster(sample: CatalogSample) -> ScaledCluster:
    side = ScaledCluster(DIM, sample, shards=2, replicas=2, seed=3)
    catalog = Catalog.generate(sample.size, DIM, 4, seed=1)
    side.upsert(
        [
            Record(sample.id_of(i * sample.stride), r.vector, r.metadata, 1)
            for i, r in enumerate(catalog.records())
        ],
        fenced=False,
    )
    side.load_beyond_sample(PRODUCTS)
    return side


def _vo(sample: CatalogSample, number: int, version: int) -> Record:
    return Record(sample.id_of(number), VECTORLESS, {}, version)


def test_every_nth_product_is_sampled_and_ids_keep_number_order() -> None:
    sample = CatalogSample.of(10_000_000, 1000)
    assert (sample.stride, sample.size, sample.width) == (10_000, 1000, 9)
    assert sample.id_of(42) == "p000000042"
    assert sorted([sample.id_of(999), sample.id_of(1000), sample.id_of(10)]) == [
        sample.id_of(10),
        sample.id_of(999),
        sample.id_of(1000),
    ]
    assert sample.neighbour(25_001) == 20_000


def test_every_record_counts_and_records_beyond_the_sample_read_back_vectorless(
    cluster: ScaledCluster, sample: CatalogSample
) -> None:
    assert cluster.count().live == PRODUCTS
    got = cluster.get([sample.id_of(1), sample.id_of(10)])
    assert got[sample.id_of(1)].version == 1
    assert not searchable(got[sample.id_of(1)].vector)
    assert searchable(got[sample.id_of(10)].vector)
    # A copy of it (what the backfill and the repair worker do) is a record again.
    assert got[sample.id_of(1)].as_record().vector is VECTORLESS


def test_records_beyond_the_sample_are_fenced_and_tombstoned(
    cluster: ScaledCluster, sample: CatalogSample
) -> None:
    assert cluster.upsert([_vo(sample, 1, 5)]) == {sample.id_of(1): True}
    assert cluster.upsert([_vo(sample, 1, 4)]) == {sample.id_of(1): False}
    assert cluster.delete([Tombstone(sample.id_of(1), 6)]) == {sample.id_of(1): True}
    # A fenced upsert at or below the tombstone's version does not resurrect it...
    assert cluster.upsert([_vo(sample, 1, 6)]) == {sample.id_of(1): False}
    assert cluster.get([sample.id_of(1)])[sample.id_of(1)].deleted
    # ... an unfenced one (the naive plan) does.
    assert cluster.upsert([_vo(sample, 1, 2)], fenced=False) == {sample.id_of(1): True}
    assert cluster.count().live == PRODUCTS


def test_a_scan_pages_through_every_id_in_order_tombstones_included(
    cluster: ScaledCluster, sample: CatalogSample
) -> None:
    cluster.delete([Tombstone(sample.id_of(7), 2), Tombstone(sample.id_of(20), 2)])
    cluster.upsert([_vo(sample, PRODUCTS + 1, 1)])  # a product added later
    seen, cursor = [], None
    while True:
        page = cluster.scan(cursor, 97)
        seen += page.items
        cursor = page.next_cursor
        if cursor is None:
            break
    ids = [s.id for s in seen]
    assert ids == sorted(ids) and len(set(ids)) == PRODUCTS + 1
    assert {s.id for s in seen if s.deleted} == {sample.id_of(7), sample.id_of(20)}


def test_checksums_are_the_portable_ones(cluster: ScaledCluster, sample: CatalogSample) -> None:
    cluster.delete([Tombstone(sample.id_of(3), 9)])
    triples = [(i, v, False) for i, v in live_versions(cluster).items()]
    triples.append((sample.id_of(3), 9, True))
    assert cluster.checksums(16) == checksums_of(triples, 16)


def test_searches_find_only_the_sample(cluster: ScaledCluster, sample: CatalogSample) -> None:
    query = Catalog.generate(1, DIM, 4, seed=9).records()[0].vector
    hits = cluster.search(query, 50)
    assert len(hits) == 50
    assert all(sample.sampled(sample.number(h.id)) for h in hits)


def test_a_replica_that_lost_its_disk_catches_up_records_beyond_the_sample(
    cluster: ScaledCluster, sample: CatalogSample
) -> None:
    cluster.start_fault("node-crash", node="s1r0", lose_data=True)
    cluster.upsert([_vo(sample, 1, 7)])  # number 1 lives on shard 1
    cluster.stop_fault("node-crash", node="s1r0")
    for _ in range(2):  # reads alternate between the replicas of the shard
        assert cluster.get([sample.id_of(1)])[sample.id_of(1)].version == 7
    assert cluster.count().live == PRODUCTS


def test_losing_every_copy_of_a_shard_loses_its_records(
    cluster: ScaledCluster, sample: CatalogSample
) -> None:
    for node in ("s0r0", "s0r1"):
        cluster.start_fault("node-crash", node=node, lose_data=True)
    for node in ("s0r0", "s0r1"):
        cluster.stop_fault("node-crash", node=node)
    assert cluster.count().live == PRODUCTS // 2
    assert cluster.get([sample.id_of(2)]) == {}


def test_a_sampled_record_needs_a_vector_and_other_ids_are_refused(
    cluster: ScaledCluster, sample: CatalogSample
) -> None:
    with pytest.raises(InvalidRequest, match="p000010"):
        cluster.upsert([_vo(sample, 10, 2)])
    with pytest.raises(InvalidRequest, match="not an id of this scaled catalog"):
        cluster.get(["p42"])
