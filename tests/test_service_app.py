"""The migration service over HTTP (Starlette's TestClient, no sockets): bad input gets a clear
4xx naming the problem and loses nothing; admin endpoints need the token; phases step through
their gates; a service rebuilt on the same SQLite file resumes exactly where it was."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from vecmig.harness.catalog import Catalog
from vecmig.harness.clusters.base import Side
from vecmig.harness.clusters.fake import FakeCluster
from vecmig.harness.core.gates import GatePolicy
from vecmig.harness.core.strategy import SAFE
from vecmig.harness.history.checker import check
from vecmig.harness.history.ops import Event, read_jsonl
from vecmig.harness.service.app import create_app
from vecmig.harness.service.migration import Migration, ServiceConfig
from vecmig.harness.state import SQLiteStore

DIM = 8
TOKEN = "s3cret"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def build(
    state: Path, old: FakeCluster, new: FakeCluster, body_limit: int = 4096, **config: Any
) -> TestClient:
    settings = {
        "strategy": SAFE,
        "dim": DIM,
        "poll_s": 0.01,
        "backfill_batch": 16,
        "policy": GatePolicy(min_mirrored_reads=0, slo_p99_ms=10_000),
        **config,
    }
    migration = Migration(
        ServiceConfig(**settings), {Side.OLD: old, Side.NEW: new}, SQLiteStore(state)
    )
    return TestClient(create_app(migration, TOKEN, body_limit=body_limit))


@pytest.fixture
def sides() -> tuple[FakeCluster, FakeCluster]:
    old = FakeCluster(DIM, shards=2, replicas=2, seed=0, name="old")
    new = FakeCluster(DIM, shards=2, replicas=2, seed=1, name="new")
    old.upsert(Catalog.generate(60, DIM, categories=3, seed=0).records(), fenced=False)
    return old, new


@pytest.fixture
def client(tmp_path: Path, sides: tuple[FakeCluster, FakeCluster]) -> Iterator[TestClient]:
    with build(tmp_path / "state.sqlite", *sides) as test_client:
        yield test_client


JSON = {"content-type": "application/json"}


def post_raw(client: TestClient, path: str, content: Any, **headers: str) -> Any:
    """POST a body as given (not encoded by the test client), declared as JSON."""
    return client.post(path, content=content, headers={**JSON, **headers})


def vector(value: float = 0.5) -> list[float]:
    return [value] * DIM


def upsert(client: TestClient, record_id: str, version: int, **extra: Any) -> Any:
    body = {
        "id": record_id,
        "vector": vector(),
        "metadata": {"category": 1},
        "version": version,
        **extra,
    }
    return client.post("/v1/upsert", json=body)


# -- bad input ----------------------------------------------------------------------------------

BAD_INPUTS = [
    pytest.param(
        "/v1/upsert",
        {"id": "a", "vector": [0.5] * 3, "version": 2},
        400,
        "dimension 3",
        id="wrong-dimension",
    ),
    pytest.param(
        "/v1/search",
        {"vector": [0.5] * (DIM + 1), "k": 5},
        400,
        f"dimension {DIM + 1}",
        id="search-wrong-dimension",
    ),
    pytest.param(
        "/v1/upsert",
        {"id": "a", "vector": ["x"] * DIM, "version": 2},
        400,
        "list of 8 numbers",
        id="not-numbers",
    ),
    pytest.param(
        "/v1/search",
        {"vector": vector(), "k": 0},
        400,
        "k must be an integer from 1 to 100",
        id="k-zero",
    ),
    pytest.param(
        "/v1/search",
        {"vector": vector(), "k": 101},
        400,
        "k must be an integer from 1 to 100",
        id="k-too-big",
    ),
    pytest.param(
        "/v1/search", {"vector": vector(), "k": "10"}, 400, "k must be an integer", id="k-string"
    ),
    pytest.param(
        "/v1/search",
        {"vector": vector(), "k": 5, "filter": [1]},
        400,
        "filter must be an object",
        id="filter-list",
    ),
    pytest.param(
        "/v1/upsert",
        {"id": "", "vector": vector(), "version": 2},
        400,
        "non-empty string",
        id="empty-id",
    ),
    pytest.param(
        "/v1/upsert",
        {"id": 42, "vector": vector(), "version": 2},
        400,
        "non-empty string",
        id="int-id",
    ),
    pytest.param("/v1/get", {"id": "x" * 129}, 400, "at most 128 characters", id="long-id"),
    pytest.param(
        "/v1/delete",
        {"id": "a\x00b", "version": 3},
        400,
        "control characters",
        id="control-char-id",
    ),
    pytest.param("/v1/get", {}, 400, "needs an 'id'", id="missing-id"),
    pytest.param(
        "/v1/upsert",
        {"id": "a", "vector": vector(), "version": -1},
        400,
        "non-negative integer",
        id="negative-version",
    ),
    pytest.param(
        "/v1/upsert",
        {"id": "a", "vector": vector(), "version": 1.5},
        400,
        "non-negative integer",
        id="float-version",
    ),
    pytest.param(
        "/v1/upsert",
        {"id": "a", "vector": vector(), "metadata": [], "version": 2},
        400,
        "metadata must be an object",
        id="metadata-list",
    ),
    pytest.param(
        "/v1/upsert",
        {"id": "a", "vectr": vector(), "version": 2},
        400,
        "unknown field(s) ['vectr']",
        id="unknown-field",
    ),
    pytest.param("/v1/get", ["a"], 400, "must be a JSON object", id="not-an-object"),
]


@pytest.mark.parametrize("path, body, status, message", BAD_INPUTS)
def test_bad_input_gets_a_4xx_naming_the_problem(
    client: TestClient, path: str, body: Any, status: int, message: str
) -> None:
    response = client.post(path, json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_are_refused_though_pythons_json_would_parse_them(
    client: TestClient, token: str
) -> None:
    raw = '{"id": "a", "version": 2, "vector": [' + ", ".join(["0.5"] * (DIM - 1) + [token]) + "]}"
    response = post_raw(client, "/v1/upsert", raw)
    assert response.status_code == 400
    assert "finite" in response.json()["error"]
    search = '{"k": 3, "vector": [' + ", ".join([token] + ["0.5"] * (DIM - 1)) + "]}"
    assert post_raw(client, "/v1/search", search).status_code == 400


def test_malformed_json_is_a_400_that_says_where(client: TestClient) -> None:
    response = post_raw(client, "/v1/get", b'{"id": "a",')
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]
    assert post_raw(client, "/v1/get", b"").status_code == 400
    assert "UTF-8" in post_raw(client, "/v1/get", b"\xff\xfe").json()["error"]


def test_an_oversized_body_is_a_413(client: TestClient) -> None:
    body = {"id": "a", "vector": vector(), "version": 2, "metadata": {"blob": "x" * 5000}}
    response = client.post("/v1/upsert", json=body)
    assert response.status_code == 413
    assert "limit of 4096 bytes" in response.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while reading
        yield b'{"id": "a", "pad": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    assert post_raw(client, "/v1/get", chunks()).status_code == 413


def test_refused_requests_lose_nothing(
    client: TestClient, sides: tuple[FakeCluster, FakeCluster]
) -> None:
    assert upsert(client, "keep", 5).status_code == 200
    for _, body, _, _ in (p.values for p in BAD_INPUTS):
        client.post("/v1/upsert", json=body)
    post_raw(client, "/v1/upsert", b'{"id": "keep", "version": 9, "vector": [NaN]}')
    client.post("/v1/delete", json={"id": "keep", "version": "9"})
    assert client.post("/v1/get", json={"id": "keep"}).json() == {"id": "keep", "version": 5}
    assert sides[0].get(["keep"])["keep"].version == 5
    assert "a" not in sides[0].get(["a"])
    assert upsert(client, "keep", 6).status_code == 200  # and the service still serves


# -- admin ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/admin/status"),
        ("POST", "/admin/advance"),
        ("POST", "/admin/rollback"),
        ("POST", "/admin/abort"),
        ("POST", "/admin/verify"),
        ("GET", "/admin/faults"),
        ("POST", "/admin/faults/heal"),
    ],
)
def test_admin_endpoints_need_the_token(client: TestClient, method: str, path: str) -> None:
    assert client.request(method, path).status_code == 401
    wrong = client.request(method, path, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "admin token" in wrong.json()["error"]
    # Only the documented header: the old undocumented X-Admin-Token is refused.
    assert client.get("/admin/status", headers={"X-Admin-Token": TOKEN}).status_code == 401
    assert client.get("/admin/status", headers=ADMIN).status_code == 200


def test_layer_faults_refuse_unknown_families_and_sides(client: TestClient) -> None:
    bad = client.post("/admin/faults", json={"action": "start", "family": "meteor"}, headers=ADMIN)
    assert bad.status_code == 400 and "latency, partition, config-lag" in bad.json()["error"]
    bad = client.post(
        "/admin/faults",
        json={"action": "start", "family": "partition", "side": "mid"},
        headers=ADMIN,
    )
    assert bad.status_code == 400 and "side must be" in bad.json()["error"]


def test_a_partition_from_the_primary_fails_writes_with_no_effect(
    client: TestClient, sides: tuple[FakeCluster, FakeCluster]
) -> None:
    client.post(
        "/admin/faults",
        json={"action": "start", "family": "partition", "side": "old"},
        headers=ADMIN,
    )
    response = upsert(client, "p1", 10)
    assert response.status_code == 503 and response.json()["outcome"] == "fail"
    assert client.post("/v1/get", json={"id": "p000001"}).status_code == 503
    client.post("/admin/faults/heal", headers=ADMIN)
    assert upsert(client, "p1", 10).status_code == 200


def test_an_impossible_step_is_a_409_naming_the_allowed_ones(client: TestClient) -> None:
    response = client.post("/admin/rollback", headers=ADMIN)
    assert response.status_code == 409
    assert "allowed from OLD_ONLY: advance -> DUAL_WRITE" in response.json()["error"]


def status(client: TestClient) -> dict[str, Any]:
    return dict(client.get("/admin/status", headers=ADMIN).json())


def advance_when_acknowledged(
    client: TestClient, target: str, timeout_s: float = 10.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        body = client.post("/admin/advance", headers=ADMIN).json()
        if body["ok"] or time.monotonic() > deadline:
            assert body["phase"] == target, body
            wait_for(client, lambda s, epoch=body["epoch"]: s["instance"]["epoch"] == epoch)
            return dict(body)
        time.sleep(0.05)


def wait_for(client: TestClient, predicate: Any, timeout_s: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        current = status(client)
        if predicate(current):
            return current
        time.sleep(0.05)
    raise AssertionError(f"condition not reached; status {json.dumps(current)[:500]}")


def test_the_shadow_gate_holds_until_the_backfill_is_complete_then_opens(
    client: TestClient,
) -> None:
    advance_when_acknowledged(client, "DUAL_WRITE")
    advance_when_acknowledged(client, "BACKFILL")
    wait_for(client, lambda s: s["backfill"]["done"])
    assert advance_when_acknowledged(client, "SHADOW")["epoch"] == 3
    assert status(client)["adjacency_violations"] == []


# -- restart ---------------------------------------------------------------------------------------


def test_a_restarted_service_resumes_phase_epoch_checkpoint_and_repair_log(
    tmp_path: Path, sides: tuple[FakeCluster, FakeCluster]
) -> None:
    """Each service is abandoned with work in flight, as a SIGKILL would leave it; the next one
    on the same SQLite file picks up the phase, the epoch, the queued repairs and the backfill
    cursor, and finishes the work."""
    state = tmp_path / "state.sqlite"
    old, new = sides
    with build(state, old, new) as first:
        advance_when_acknowledged(first, "DUAL_WRITE")
        partition = {"action": "start", "family": "partition", "side": "new"}
        first.post("/admin/faults", json=partition, headers=ADMIN)
        assert upsert(first, "during-partition", 7).status_code == 200
        assert status(first)["repair_backlog"] == 1
    with build(state, old, new, backfill_pause_s=0.3) as second:
        resumed = status(second)["resumed_from"]
        assert (resumed["phase"], resumed["epoch"], resumed["repair_backlog"]) == (
            "DUAL_WRITE",
            1,
            1,
        )
        wait_for(second, lambda s: s["repair_backlog"] == 0)
        assert new.get(["during-partition"])["during-partition"].version == 7
        advance_when_acknowledged(second, "BACKFILL")
        before = wait_for(second, lambda s: s["backfill"]["copied"] >= 16)
    assert not before["backfill"]["done"]
    with build(state, old, new) as third:
        resumed = status(third)["resumed_from"]
        assert (resumed["phase"], resumed["epoch"]) == ("BACKFILL", 2)
        assert resumed["checkpoint"]["copied"] >= before["backfill"]["copied"]
        wait_for(third, lambda s: s["backfill"]["done"])
    assert new.count().live == old.count().live


def test_the_optional_op_log_records_the_servers_view_as_a_history(
    tmp_path: Path, sides: tuple[FakeCluster, FakeCluster]
) -> None:
    log = tmp_path / "ops.jsonl"
    for _ in range(2):  # a restarted service appends, with fresh process numbers
        with build(tmp_path / "state.sqlite", *sides, op_log=str(log)) as client:
            assert upsert(client, "p000001", 50).status_code == 200
            client.post("/v1/get", json={"id": "p000001"})
            client.post("/v1/get", json={"id": ""})  # refused before it runs: not an op
        time.sleep(1.01)
    events = read_jsonl(log)
    assert [(e.type, e.f) for e in events[:4]] == [
        ("invoke", "upsert"),
        ("ok", "upsert"),
        ("invoke", "get"),
        ("ok", "get"),
    ]
    assert events[1].value == {"id": "p000001", "version": 50, "result": "applied"}
    assert events[3].value == {"id": "p000001", "version": 50}
    assert len(events) == 8 and len({e.process for e in events}) == 4
    verdict = check(
        events
        + [Event(99, "checker", "ok", "final", {"side": "old", "records": {"p000001": 50}}, 2**62)]
    )
    assert verdict.garbage_reads == 0 and verdict.stale_reads == 0
