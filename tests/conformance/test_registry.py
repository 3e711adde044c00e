"""open_cluster turns a URL into the right adapter (vecmig's own, or one an installed package
registers in the vecmig.adapters entry-point group), and says clearly what it cannot open."""

from __future__ import annotations

from pathlib import Path

import pytest

from vecmig.harness.clusters.base import ClusterPort, Metric
from vecmig.harness.clusters.registry import SCHEMES, adapter_schemes, open_cluster, schemes


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


# ---------------------------------------------------------------------------------------------
# Schemes that installed packages register (entry-point group vecmig.adapters).

TINY_ENGINE = """
from vecmig.harness.clusters.fake import FakeCluster


def open_side(url, dim, metric):
    return FakeCluster(dim, metric, shards=1, replicas=1, seed=0)


def wrong_dim(url, dim, metric):
    return FakeCluster(dim + 1, metric, shards=1, replicas=1)


not_callable = 42
"""


@pytest.fixture
def registered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed package `tinyengine` whose entry points add schemes: tiny (a fake side),
    broken (a module that is not there), wrong (a side of the wrong dimension), fake (which
    would shadow vecmig's own)."""
    (tmp_path / "tinyengine.py").write_text(TINY_ENGINE)
    dist = tmp_path / "tinyengine-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tinyengine\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[vecmig.adapters]\n"
        "tiny = tinyengine:open_side\n"
        "broken = tinyengine_missing:open_side\n"
        "wrong = tinyengine:wrong_dim\n"
        "notcallable = tinyengine:not_callable\n"
        "fake = tinyengine:wrong_dim\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))


def test_a_registered_scheme_opens_through_its_package(registered: None) -> None:
    side = open_cluster("tiny://anything?x=1", 8, Metric.L2)
    assert type(side).__name__ == "FakeCluster" and (side.dim, side.metric) == (8, Metric.L2)
    assert schemes()[: len(SCHEMES)] == SCHEMES and "tiny" in schemes()


def test_a_registered_scheme_cannot_shadow_vecmigs_own(registered: None) -> None:
    assert "fake" not in adapter_schemes()
    assert open_cluster("fake://?shards=1", 8, Metric.COSINE).dim == 8


@pytest.mark.parametrize(
    "url, problem",
    [
        ("broken://x", r"cannot load the 'broken' adapter \(tinyengine_missing:open_side"),
        ("wrong://x", "opened a 9-dimensional"),
        ("notcallable://x", "is 42, not open"),
        ("nothere://x", r"valid schemes: fake://.*tiny://"),
    ],
)
def test_a_broken_registered_adapter_is_named(registered: None, url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        open_cluster(url, 8, Metric.COSINE)


def test_a_load_test_takes_a_registered_scheme_as_a_side(registered: None) -> None:
    from vecmig.loadtests.sides import refusal

    assert refusal("tiny://host/db") is None
    assert "tiny://" in str(refusal("nothere://x"))
