"""The HTTP adapter keeps the cluster port's contract against a cluster server, and translates
errors once: a refused connection is Unavailable, a hung server a Timeout, a 4xx an
InvalidRequest, and the server's own fault kinds arrive as the exception they were."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import numpy as np
import pytest
from starlette.testclient import TestClient

from vecmig.harness.clusters.base import (
    ClusterPort,
    InvalidRequest,
    Metric,
    Record,
    Timeout,
    Unavailable,
)
from vecmig.harness.clusters.fake import FakeCluster
from vecmig.harness.clusters.remote import RemoteCluster
from vecmig.harness.service.cluster_server import ClusterServer
from vecmig.harness.testing.conformance import ClusterConformance, MakeCluster


def remote(cluster: FakeCluster) -> RemoteCluster:
    client = TestClient(ClusterServer(cluster).app(), base_url="http://cluster")
    return RemoteCluster("http://cluster", client=client)


class TestRemoteCluster(ClusterConformance):
    @pytest.fixture
    def make_cluster(self) -> Iterator[MakeCluster]:
        def make(dim: int, metric: Metric) -> ClusterPort:
            return remote(FakeCluster(dim, metric, shards=2, replicas=2, seed=0))

        yield make


def record(i: int, dim: int = 4) -> Record:
    return Record(f"r{i}", np.ones(dim, dtype=np.float32) * (i + 1), {"category": i % 2}, i + 1)


def test_server_faults_arrive_as_the_same_exceptions() -> None:
    cluster = FakeCluster(4, shards=1, replicas=1)
    side = remote(cluster)
    side.upsert([record(1)])
    side.start_fault("node-pause", node="s0r0")
    with pytest.raises(Timeout):
        side.get(["r1"])
    side.heal_all()
    side.start_fault("node-crash", node="s0r0")
    with pytest.raises(Unavailable):
        side.upsert([record(2)])
    side.stop_fault("node-crash", node="s0r0")
    assert set(side.get(["r1", "r2"])) == {"r1"}


def test_a_bad_request_is_invalid_and_names_the_problem() -> None:
    side = remote(FakeCluster(4))
    with pytest.raises(InvalidRequest, match="dimension 3"):
        side.search(np.ones(3, dtype=np.float32), 5)
    with pytest.raises(InvalidRequest, match="non-finite"):
        side.upsert([Record("x", np.array([1, np.nan, 0, 0], dtype=np.float32), {}, 1)])
    with pytest.raises(InvalidRequest, match="unknown fault family"):
        side.start_fault("meteor")


def test_a_refused_connection_is_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    side = RemoteCluster(f"http://127.0.0.1:{port}", 4, Metric.COSINE)
    with pytest.raises(Unavailable):
        side.get(["a"])
    assert not side.health().ok


def test_a_server_that_never_answers_is_a_timeout() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted: list[socket.socket] = []
    thread = threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    side = RemoteCluster(f"http://127.0.0.1:{port}", 4, Metric.COSINE, timeout_s=0.3)
    try:
        with pytest.raises(Timeout):
            side.upsert([record(1)])
    finally:
        listener.close()
        for conn in accepted:
            conn.close()
