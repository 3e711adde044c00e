"""open_cluster turns a URL into the right adapter, and says clearly what it cannot open."""

from __future__ import annotations

import pytest

from vecmig.harness.clusters.base import ClusterPort, Metric
from vecmig.harness.clusters.registry import open_cluster


def test_fake_url_passes_its_shape_to_the_fake_cluster() -> None:
    side = open_cluster("fake://?shards=3&replicas=1&seed=4", 8, Metric.L2)
    assert isinstance(side, ClusterPort)
    assert (side.dim, side.metric) == (8, Metric.L2)
    assert type(side).__name__ == "FakeCluster"


def test_qdrant_memory_and_local_path_urls_open_qdrant(tmp_path) -> None:
    side = open_cluster("qdrant://:memory:?collection=items", 8, "cosine")
    assert type(side).__name__ == "QdrantCluster" and side.health().ok
    local = open_cluster(f"qdrant+local://{tmp_path}/q?collection=items", 8, Metric.COSINE)
    assert local.health().ok


@pytest.mark.parametrize("url", ["redis://localhost", "nonsense"])
def test_unknown_scheme_names_the_valid_ones(url: str) -> None:
    with pytest.raises(ValueError, match=r"fake://.*pgvector://.*qdrant://.*milvus\+lite://"):
        open_cluster(url, 8, Metric.COSINE)


@pytest.mark.parametrize(
    "url, problem",
    [
        ("fake://?shards=two", "integer"),
        ("fake://?colour=red", "unknown parameter"),
        ("qdrant://:memory:?colection=x", "unknown parameter"),
        ("milvus+lite://", "names no path"),
    ],
)
def test_bad_parameters_are_named(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        open_cluster(url, 8, Metric.COSINE)


@pytest.mark.slow
def test_milvus_lite_url_opens_milvus(tmp_path) -> None:
    side = open_cluster(f"milvus+lite://{tmp_path}/m.db?collection=items", 8, Metric.L2)
    assert type(side).__name__ == "MilvusCluster" and side.health().ok
    side.close()  # type: ignore[attr-defined]


@pytest.mark.slow
def test_pgvector_url_opens_pgvector(postgres_dsn: str) -> None:
    url = postgres_dsn.replace("postgresql://", "pgvector://") + "?table=registry_side"
    side = open_cluster(url, 8, Metric.INNER_PRODUCT)
    assert type(side).__name__ == "PgVectorCluster" and side.health().ok
    side.drop()  # type: ignore[attr-defined]
