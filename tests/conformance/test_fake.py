"""The fake HNSW cluster keeps the cluster port's contract (the conformance suite)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from vecmig.harness.clusters.base import ClusterPort, Metric
from vecmig.harness.clusters.fake import FakeCluster
from vecmig.harness.testing.conformance import ClusterConformance, MakeCluster


class TestFakeCluster(ClusterConformance):
    @pytest.fixture
    def make_cluster(self) -> Iterator[MakeCluster]:
        def make(dim: int, metric: Metric) -> ClusterPort:
            return FakeCluster(dim, metric, shards=2, replicas=2, seed=0)

        yield make
