"""The Milvus adapter keeps the cluster port's contract, on Milvus Lite (embedded)."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest

from vecmig.harness.clusters.base import ClusterPort, Metric
from vecmig.harness.testing.conformance import ClusterConformance, MakeCluster, record

from .engines import engine_missing

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def milvus_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    try:
        from pymilvus import MilvusClient

        client = MilvusClient(str(tmp_path_factory.mktemp("milvus") / "lite.db"))
    except Exception as exc:
        engine_missing(f"cannot start Milvus Lite: {exc!r}")
        raise
    yield client
    client.close()


@pytest.fixture(scope="module")
def collection_pool(milvus_client: Any) -> dict[tuple[int, Metric], list[Any]]:
    """Emptied collections to reuse: creating one in Milvus Lite takes about half a second."""
    return defaultdict(list)


_names = (f"side{n}" for n in itertools.count())


class TestMilvusLite(ClusterConformance):
    # each example creates two sides; Milvus Lite makes that the slowest part of the suite
    property_examples = 10

    @pytest.fixture
    def make_cluster(
        self, milvus_client: Any, collection_pool: dict[tuple[int, Metric], list[Any]]
    ) -> Iterator[MakeCluster]:
        from vecmig.harness.clusters.milvus import MilvusCluster

        used: list[tuple[tuple[int, Metric], MilvusCluster]] = []

        def make(dim: int, metric: Metric) -> ClusterPort:
            key = (dim, metric)
            pool = collection_pool[key]
            side = pool.pop() if pool else MilvusCluster(milvus_client, dim, metric, next(_names))
            used.append((key, side))
            return side

        yield make
        for key, side in used:
            side.clear()
            collection_pool[key].append(side)


def test_a_second_open_of_the_same_file_sees_the_records(tmp_path) -> None:
    from vecmig.harness.clusters.milvus import MilvusCluster

    path = str(tmp_path / "m.db")
    first = MilvusCluster.lite(path, 16, Metric.COSINE, collection="c")
    first.upsert([record("a", 3)])
    first.close()
    again = MilvusCluster.lite(path, 16, Metric.COSINE, collection="c")
    try:
        assert again.get(["a"])["a"].version == 3
    finally:
        again.close()


def test_a_collection_reopened_by_a_new_process_serves_reads(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A side reopened after a restart (a new process on the same Milvus Lite file) must load
    its collection, or every read of the restarted layer fails."""
    import subprocess
    import sys

    import numpy as np

    from vecmig.harness.clusters.milvus import MilvusCluster

    path = str(tmp_path / "reopen.db")
    writer = (
        "import numpy as np\n"
        "from vecmig.harness.clusters.base import Record\n"
        "from vecmig.harness.clusters.milvus import MilvusCluster\n"
        f"side = MilvusCluster.lite({path!r}, dim=4)\n"
        "side.upsert([Record('a', np.ones(4, dtype=np.float32), {}, 1)])\n"
        "side.close()\n"
    )
    subprocess.run([sys.executable, "-c", writer], check=True, timeout=120)
    again = MilvusCluster.lite(path, dim=4)
    try:
        assert again.get(["a"])["a"].version == 1
        assert [h.id for h in again.search(np.ones(4, dtype=np.float32), 1)] == ["a"]
    finally:
        again.close()
