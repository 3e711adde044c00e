"""The pgvector adapter keeps the cluster port's contract, on a throwaway PostgreSQL server."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from .engines import engine_missing

try:
    import psycopg

    from vecmig.harness.clusters.pgvector import PgVectorCluster
except ImportError as exc:  # pragma: no cover - depends on the machine
    psycopg = None  # type: ignore[assignment]
    IMPORT_ERROR = exc

from vecmig.harness.clusters.base import ClusterPort, Metric
from vecmig.harness.testing.conformance import ClusterConformance, MakeCluster, record

pytestmark = pytest.mark.slow

_tables = (f"side_{n}" for n in itertools.count())


@pytest.fixture
def pg_side(postgres_dsn: str) -> Iterator[MakeCluster]:
    if psycopg is None:
        engine_missing(f"the pgvector adapter cannot be imported: {IMPORT_ERROR}")
    made: list[PgVectorCluster] = []

    def make(dim: int, metric: Metric) -> ClusterPort:
        side = PgVectorCluster(postgres_dsn, dim, metric, table=next(_tables))
        made.append(side)
        return side

    yield make
    for side in made:
        side.drop()
        side.close()


class TestPgVector(ClusterConformance):
    @pytest.fixture
    def make_cluster(self, pg_side: MakeCluster) -> MakeCluster:
        return pg_side


def test_fencing_holds_across_two_writers_on_one_table(
    pg_side: MakeCluster, postgres_dsn: str
) -> None:
    """Fencing is the engine's own: a second process (here a second connection) writing an
    older version after a newer one is refused by PostgreSQL, not by this process's lock."""
    first = pg_side(16, Metric.COSINE)
    assert isinstance(first, PgVectorCluster)
    second = PgVectorCluster(postgres_dsn, 16, Metric.COSINE, table=first._table)
    try:
        assert first.upsert([record("a", 9, category=1)]) == {"a": True}
        assert second.upsert([record("a", 4, category=2)]) == {"a": False}
        assert second.get(["a"])["a"].metadata["category"] == 1
    finally:
        second.close()


def test_a_batch_naming_an_id_twice_applies_in_order(pg_side: MakeCluster) -> None:
    side = pg_side(16, Metric.COSINE)
    assert side.upsert([record("a", 1), record("a", 3), record("a", 2)]) == {"a": False}
    assert side.get(["a"])["a"].version == 3


def test_an_unreachable_server_is_unavailable_not_a_driver_error() -> None:
    from vecmig.harness.clusters.base import Unavailable

    with pytest.raises(Unavailable, match="cannot connect"):
        PgVectorCluster("postgresql://postgres@127.0.0.1:1/postgres", 16, timeout=2)
