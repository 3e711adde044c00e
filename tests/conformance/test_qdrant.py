"""The Qdrant adapter keeps the cluster port's contract, in Qdrant's local mode (in-process)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from qdrant_client import QdrantClient

from vecmig.harness.clusters.base import ClusterPort, InvalidRequest, Metric
from vecmig.harness.clusters.qdrant import QdrantCluster
from vecmig.harness.testing.conformance import ClusterConformance, MakeCluster, record


class TestQdrantLocal(ClusterConformance):
    @pytest.fixture
    def make_cluster(self) -> Iterator[MakeCluster]:
        client = QdrantClient(":memory:")
        names = (f"side{n}" for n in itertools.count())

        def make(dim: int, metric: Metric) -> ClusterPort:
            return QdrantCluster(client, dim, metric, collection=next(names))

        yield make
        client.close()


def test_reopening_a_collection_keeps_its_records_and_checks_its_shape(tmp_path) -> None:
    """A side reopened from disk (qdrant+local) serves what was written before."""
    client = QdrantClient(path=str(tmp_path / "q"))
    QdrantCluster(client, 16, Metric.COSINE, collection="c").upsert([record("a", 3)])
    client.close()
    client = QdrantClient(path=str(tmp_path / "q"))
    try:
        assert QdrantCluster(client, 16, Metric.COSINE, collection="c").get(["a"])["a"].version == 3
        with pytest.raises(InvalidRequest, match="exists with vectors"):
            QdrantCluster(client, 8, Metric.COSINE, collection="c")
    finally:
        client.close()


def test_the_engine_guard_fences_even_when_the_pre_read_is_stale(monkeypatch) -> None:
    """Another process may write a newer version between our read and our write: Qdrant's own
    `update_filter` guard still keeps the newer one (the applied flag is then optimistic)."""
    side = QdrantCluster(QdrantClient(":memory:"), 16, Metric.COSINE)
    side.upsert([record("a", 9, category=1)])
    monkeypatch.setattr(side, "_held_versions", lambda ids: {})
    assert side.upsert([record("a", 4, category=2)]) == {"a": True}
    got = side.get(["a"])["a"]
    assert (got.version, got.metadata["category"]) == (9, 1)
