"""The synthetic product catalog every engine loads: clustered embeddings in categories.

Vectors are drawn from a Gaussian mixture per category (a few sub-centres each) so that
nearest neighbours are structured the way real product embeddings are; on uniform noise
every ANN index looks either perfect or hopeless, and recall figures would mean nothing.
Vectors are unit-normalised, as most text and image encoders emit them, so cosine, inner
product and L2 rank neighbours alike. All randomness comes from a seed or a passed
`numpy.random.Generator`: the same seed gives the same catalog on every machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from vecmig.harness.clusters.base import Record, Vector

DEFAULT_SPREAD = 0.5
"""Noise around a sub-centre, as a fraction of the unit radius: products of one sub-centre
are near each other but not duplicates, so the exact top-k is well defined."""

SUBCENTER_SPREAD = 0.6
SUBCENTERS_PER_CATEGORY = 3
IN_STOCK_SHARE = 0.8


def product_id(number: int) -> str:
    """The id of the n-th product, e.g. 42 -> "p000042" (sorts in creation order)."""
    return f"p{number:06d}"


@dataclass
class Catalog:
    """A generated catalog: its products and the mixture they were drawn from, so that
    queries, re-embeddings and new products land near the right category."""

    dim: int
    spread: float
    subcenters: npt.NDArray[np.float32]
    """Shape (categories, subcenters per category, dim), unit rows."""
    _products: list[Record]
    _category_of: dict[str, int] = field(default_factory=dict)

    @classmethod
    def generate(
        cls,
        n: int,
        dim: int,
        categories: int,
        seed: int,
        spread: float = DEFAULT_SPREAD,
        subcenters: int = SUBCENTERS_PER_CATEGORY,
    ) -> Catalog:
        """`n` products ("p000000" ...) in `categories` categories, all at version 1."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        for name, value in (("dim", dim), ("categories", categories), ("subcenters", subcenters)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not spread > 0:
            raise ValueError(f"spread must be positive, got {spread!r}")
        rng = np.random.default_rng(seed)
        centers = _unit(rng.standard_normal((categories, 1, dim)))
        offsets = rng.standard_normal((categories, subcenters, dim)) * (
            SUBCENTER_SPREAD / np.sqrt(dim)
        )
        catalog = cls(dim, float(spread), _unit(centers + offsets), [])
        category = rng.integers(categories, size=n)
        sub = rng.integers(subcenters, size=n)
        vectors = catalog._near(rng, category, sub)
        in_stock = rng.random(n) < IN_STOCK_SHARE
        prices = _prices(rng, n)
        for i in range(n):
            record_id = product_id(i)
            catalog._category_of[record_id] = int(category[i])
            catalog._products.append(
                Record(
                    record_id,
                    vectors[i],
                    _metadata(int(category[i]), bool(in_stock[i]), prices[i]),
                    1,
                )
            )
        return catalog

    # -----------------------------------------------------------------------------------------

    @property
    def categories(self) -> int:
        return int(self.subcenters.shape[0])

    def __len__(self) -> int:
        return len(self._products)

    def records(self) -> list[Record]:
        """The generated products (the initial load), in id order."""
        return list(self._products)

    def __contains__(self, record_id: object) -> bool:
        """Whether `record_id` is one of the generated products or one made by new_product()."""
        return record_id in self._category_of

    def category_of(self, record_id: str) -> int:
        try:
            return self._category_of[record_id]
        except KeyError:
            raise KeyError(
                f"{record_id!r} is not in this catalog; it holds the generated products and "
                f"those made with new_product()"
            ) from None

    def query_vector(self, rng: np.random.Generator, category: int | None = None) -> Vector:
        """A shopper's query: near one of a category's sub-centres (a random category if None)."""
        if category is None:
            category = int(rng.integers(self.categories))
        elif not 0 <= category < self.categories:
            raise ValueError(f"category must be in 0..{self.categories - 1}, got {category!r}")
        sub = rng.integers(self.subcenters.shape[1], size=1)
        vector: Vector = self._near(rng, np.array([category]), sub)[0]
        return vector

    def reembed(self, record_id: str, rng: np.random.Generator) -> Vector:
        """A new embedding for a product (a new model, a new photo): still in its category,
        possibly near another of its sub-centres."""
        return self.query_vector(rng, self.category_of(record_id))

    def new_product(self, rng: np.random.Generator, record_id: str) -> Record:
        """A product a merchant adds, at version 1; remembered so it can be re-embedded."""
        if record_id in self._category_of:
            raise ValueError(f"{record_id!r} is already in the catalog")
        category = int(rng.integers(self.categories))
        vector = self.query_vector(rng, category)
        in_stock = bool(rng.random() < IN_STOCK_SHARE)
        price = _prices(rng, 1)[0]
        self._category_of[record_id] = category
        return Record(record_id, vector, _metadata(category, in_stock, price), 1)

    def _near(
        self, rng: np.random.Generator, category: npt.NDArray[np.int64], sub: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float32]:
        noise = rng.standard_normal((len(category), self.dim)) * (self.spread / np.sqrt(self.dim))
        return _unit(self.subcenters[category, sub] + noise)


def _unit(vectors: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    unit: npt.NDArray[np.float32] = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
    return unit


def _prices(rng: np.random.Generator, n: int) -> list[float]:
    # Log-normal, as shop prices are: many cheap items, a long tail of expensive ones.
    return [round(float(p), 2) for p in np.exp(rng.normal(3.0, 0.9, size=n)) + 0.99]


def _metadata(category: int, in_stock: bool, price: float) -> dict[str, object]:
    return {"category": category, "in_stock": in_stock, "price": price}
