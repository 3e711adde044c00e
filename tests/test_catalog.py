"""The synthetic catalog (harness/catalog.py): deterministic, well-formed, and clustered by
category, so that queries, re-embeddings and new products land where a shopper expects."""

from __future__ import annotations

import numpy as np
import pytest

from vecmig.harness.catalog import Catalog, product_id
from vecmig.harness.clusters.base import Metric, distance


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.generate(2000, 16, categories=10, seed=4)


def test_the_same_seed_gives_the_same_catalog_and_another_seed_a_different_one() -> None:
    a, b = Catalog.generate(300, 8, 5, seed=9), Catalog.generate(300, 8, 5, seed=9)
    assert a.records() == b.records()
    assert a.records() != Catalog.generate(300, 8, 5, seed=10).records()


def test_products_have_sequential_ids_version_1_and_typed_metadata(catalog: Catalog) -> None:
    records = catalog.records()
    assert [r.id for r in records] == [product_id(i) for i in range(2000)]
    assert records[42].id == "p000042"
    assert {r.version for r in records} == {1}
    for r in records:
        assert set(r.metadata) == {"category", "in_stock", "price"}
        assert type(r.metadata["category"]) is int and 0 <= r.metadata["category"] < 10
        assert type(r.metadata["in_stock"]) is bool
        assert type(r.metadata["price"]) is float and r.metadata["price"] > 0
        assert r.vector.dtype == np.float32 and r.vector.shape == (16,)
        assert catalog.category_of(r.id) == r.metadata["category"]


def test_vectors_are_unit_length_so_every_metric_ranks_alike(catalog: Catalog) -> None:
    norms = np.linalg.norm(np.stack([r.vector for r in catalog.records()]), axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5)


def test_every_category_is_used_and_some_products_are_out_of_stock(catalog: Catalog) -> None:
    records = catalog.records()
    assert {r.metadata["category"] for r in records} == set(range(10))
    share = np.mean([r.metadata["in_stock"] for r in records])
    assert 0.7 < share < 0.9


def top_categories(catalog: Catalog, query: np.ndarray, k: int = 10) -> list[int]:
    records = catalog.records()
    dists = distance(Metric.COSINE, query, np.stack([r.vector for r in records]))
    return [records[i].metadata["category"] for i in np.argsort(dists)[:k]]


def test_a_query_for_a_category_finds_mostly_that_category(catalog: Catalog) -> None:
    """The clustering that makes recall figures meaningful: neighbours share a category."""
    rng = np.random.default_rng(1)
    share = np.mean(
        [
            np.mean(np.array(top_categories(catalog, catalog.query_vector(rng, c))) == c)
            for c in range(10)
            for _ in range(5)
        ]
    )
    assert share > 0.9


def test_neighbours_are_not_duplicates(catalog: Catalog) -> None:
    """Spread keeps products apart, so the exact top-k is not a tie among copies."""
    vectors = np.stack([r.vector for r in catalog.records()[:300]])
    dists = distance(Metric.COSINE, vectors[0], vectors[1:])
    assert dists.min() > 1e-4


def test_reembed_moves_a_product_but_keeps_it_in_its_category(catalog: Catalog) -> None:
    rng = np.random.default_rng(2)
    record = catalog.records()[7]
    new = catalog.reembed(record.id, rng)
    assert new.shape == (16,) and new.dtype == np.float32
    assert not np.array_equal(new, record.vector)
    assert top_categories(catalog, new).count(record.metadata["category"]) >= 8


def test_query_vector_without_a_category_draws_one_from_the_generator(catalog: Catalog) -> None:
    first = catalog.query_vector(np.random.default_rng(3))
    again = catalog.query_vector(np.random.default_rng(3))
    assert np.array_equal(first, again)
    with pytest.raises(ValueError, match="category must be"):
        catalog.query_vector(np.random.default_rng(3), category=10)


def test_new_product_is_version_1_in_a_category_and_can_be_reembedded() -> None:
    catalog = Catalog.generate(50, 8, 4, seed=1)
    rng = np.random.default_rng(5)
    product = catalog.new_product(rng, "p000050")
    assert product.version == 1 and product.id == "p000050"
    assert catalog.category_of("p000050") == product.metadata["category"]
    assert catalog.reembed("p000050", rng).shape == (8,)
    assert len(catalog.records()) == 50  # records() is the initial load only
    with pytest.raises(ValueError, match="already"):
        catalog.new_product(rng, "p000050")


def test_reembedding_an_unknown_product_names_it() -> None:
    with pytest.raises(KeyError, match="nope"):
        Catalog.generate(5, 4, 2, seed=0).reembed("nope", np.random.default_rng(0))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": -1}, "n must"),
        ({"dim": 0}, "dim must"),
        ({"categories": 0}, "categories must"),
        ({"spread": 0.0}, "spread must"),
    ],
)
def test_bad_generation_arguments_are_refused_by_name(
    kwargs: dict[str, object], message: str
) -> None:
    arguments: dict[str, object] = {"n": 10, "dim": 4, "categories": 2, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        Catalog.generate(**arguments)  # type: ignore[arg-type]


def test_an_empty_catalog_is_allowed() -> None:
    assert Catalog.generate(0, 4, 2, seed=0).records() == []
