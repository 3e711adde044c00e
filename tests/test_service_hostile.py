"""The service and the cluster server against hostile input and careless callers (issue 13):
every refusal is a 4xx that names the problem briefly and changes nothing; a crash is a
counted JSON 500, never a traceback; writes say whether they were applied or superseded;
versions follow the deployment's policy and stay under the horizon."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient
from test_service_app import ADMIN, DIM, TOKEN, build, post_raw, upsert, vector

from vecmig.harness.catalog import Catalog
from vecmig.harness.clusters.base import InvalidRequest, bucket_of, max_component, validate_id
from vecmig.harness.clusters.fake import FakeCluster
from vecmig.harness.service.cluster_server import ClusterServer
from vecmig.harness.service.inputs import VersionPolicy
from vecmig.harness.service.migration import Migration

CLIENT_PATHS = ("/v1/upsert", "/v1/delete", "/v1/get", "/v1/search")
DEEP = b"[" * 100_000 + b"]" * 100_000
HUGE_INT = b'{"id": "a", "version": ' + b"7" * 5000 + b"}"


@pytest.fixture
def sides() -> tuple[FakeCluster, FakeCluster]:
    old = FakeCluster(DIM, shards=2, replicas=2, seed=0, name="old")
    new = FakeCluster(DIM, shards=2, replicas=2, seed=1, name="new")
    old.upsert(Catalog.generate(30, DIM, categories=3, seed=0).records(), fenced=False)
    return old, new


@pytest.fixture
def client(tmp_path: Path, sides: tuple[FakeCluster, FakeCluster]) -> Iterator[TestClient]:
    with build(tmp_path / "state.sqlite", *sides, body_limit=1 << 20) as test_client:
        yield test_client


@pytest.fixture
def cluster_client() -> TestClient:
    server = ClusterServer(FakeCluster(DIM, shards=1, replicas=1), token="ctok")
    return TestClient(server.app(), headers={"Authorization": "Bearer ctok"})


def metric(client: TestClient, name: str, **labels: str) -> float:
    text = client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def server_errors(client: TestClient) -> float:
    text = client.get("/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.endswith("http_responses_total") and sample.labels["code"] == "500"
    )


# -- finding 1: hostile JSON ----------------------------------------------------------------------


@pytest.mark.parametrize("body", [DEEP, HUGE_INT], ids=["nested-100000-deep", "int-5000-digits"])
def test_hostile_json_is_a_400_on_every_endpoint_that_reads_a_body(
    client: TestClient, cluster_client: TestClient, body: bytes
) -> None:
    for path in CLIENT_PATHS:
        response = post_raw(client, path, body)
        assert response.status_code == 400, (path, response.text)
    response = post_raw(client, "/admin/faults", body, **ADMIN)
    assert response.status_code == 400, response.text
    for path in ("/v1/upsert", "/v1/get", "/v1/checksums", "/faults/start"):
        assert post_raw(cluster_client, path, body).status_code == 400, path
    assert server_errors(client) == 0 and server_errors(cluster_client) == 0
    assert metric(client, "vecmig_http_responses_total", route="/v1/get", code="400") == 1


def test_nesting_below_the_stack_limit_is_refused_too(client: TestClient) -> None:
    body = {"id": "a", "vector": vector(), "version": 2, "metadata": {}}
    node: dict[str, Any] = body["metadata"]
    for _ in range(40):
        node["x"] = {}
        node = node["x"]
    response = client.post("/v1/upsert", json=body)
    assert response.status_code == 400 and "deeper than 32" in response.json()["error"]


def test_a_crash_in_a_handler_is_a_json_500_and_counted(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(record_id: str) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(_migration_of(client), "get", broken)
    response = client.post("/v1/get", json={"id": "a"})
    assert response.status_code == 500
    assert response.json()["kind"] == "internal" and "a bug" not in response.text
    assert metric(client, "vecmig_http_responses_total", route="/v1/get", code="500") == 1


def _migration_of(client: TestClient) -> Migration:
    for route in client.app.routes:  # type: ignore[attr-defined]
        endpoint = getattr(route, "endpoint", None)
        owner = getattr(endpoint, "__self__", None)
        if owner is not None and hasattr(owner, "migration"):
            return owner.migration  # type: ignore[no-any-return]
    raise AssertionError("no ServiceApp endpoint found")


# -- finding 2: lone surrogates -------------------------------------------------------------------


def test_a_lone_surrogate_is_a_400_not_a_503(
    client: TestClient, cluster_client: TestClient, sides: tuple[FakeCluster, FakeCluster]
) -> None:
    raw = b'{"id": "s\\ud800", "vector": [' + b", ".join([b"0.5"] * DIM) + b'], "version": 3}'
    response = post_raw(client, "/v1/upsert", raw)
    assert response.status_code == 400 and "surrogate" in response.json()["error"]
    assert post_raw(client, "/v1/get", b'{"id": "s\\ud800"}').status_code == 400
    assert (
        post_raw(client, "/v1/search", b'{"vector": [1], "filter": {"\\udc00": 1}}').status_code
        == 400
    )
    assert post_raw(cluster_client, "/v1/get", b'{"ids": ["s\\ud800"]}').status_code == 400
    with pytest.raises(InvalidRequest, match="surrogate"):
        validate_id("s\ud800")
    assert "s\ud800" not in sides[0].live_versions()


def test_bucket_of_takes_every_id_validate_id_lets_through() -> None:
    for record_id in ("plain", "ünïcödé", "emoji-\U0001f600", "x" * 128):
        assert 0 <= bucket_of(validate_id(record_id), 64) < 64


# -- finding 3: versions ---------------------------------------------------------------------------


def test_a_version_beyond_the_horizon_is_refused_and_changes_nothing(
    client: TestClient, sides: tuple[FakeCluster, FakeCluster]
) -> None:
    response = upsert(client, "p000001", 10**30)
    assert response.status_code == 400  # beyond 64 bits: not a version at all
    far = (time.time_ns() // 1000) + 3600 * 10**6  # an hour ahead, in microseconds
    response = upsert(client, "p000001", far)
    assert response.status_code == 422 and "horizon" in response.json()["error"]
    assert client.post("/v1/delete", json={"id": "p000001", "version": far}).status_code == 422
    assert sides[0].get(["p000001"])["p000001"].version < far
    assert upsert(client, "p000001", 50).json()["result"] == "applied"


def test_writes_say_whether_they_were_applied_or_superseded(
    client: TestClient, sides: tuple[FakeCluster, FakeCluster]
) -> None:
    assert upsert(client, "w", 10).json() == {"id": "w", "version": 10, "result": "applied"}
    assert upsert(client, "w", 9).json()["result"] == "superseded"
    assert sides[0].get(["w"])["w"].version == 10
    delete = client.post("/v1/delete", json={"id": "w", "version": 10}).json()
    assert delete["result"] == "superseded"  # a tombstone must be newer than the record
    assert client.post("/v1/delete", json={"id": "w", "version": 11}).json()["result"] == "applied"
    writes = metric(client, "vecmig_writes_total", op="upsert", result="superseded")
    assert writes == 1


def test_client_versions_are_required_and_service_versions_refuse_a_given_one(
    tmp_path: Path, sides: tuple[FakeCluster, FakeCluster]
) -> None:
    with build(tmp_path / "client.sqlite", *sides) as client:
        response = client.post("/v1/upsert", json={"id": "a", "vector": vector()})
        assert response.status_code == 422 and "send 'version'" in response.json()["error"]
    policy = VersionPolicy(source="service")
    with build(tmp_path / "service.sqlite", *sides, versions=policy) as client:
        refused = upsert(client, "a", 5)
        assert refused.status_code == 422 and "assigns versions" in refused.json()["error"]
        first = client.post("/v1/upsert", json={"id": "a", "vector": vector()}).json()
        second = client.post("/v1/delete", json={"id": "a"}).json()
        assert first["result"] == second["result"] == "applied"
        assert second["version"] > first["version"]


def test_the_op_log_records_what_the_client_was_told(
    tmp_path: Path, sides: tuple[FakeCluster, FakeCluster]
) -> None:
    log = tmp_path / "ops.jsonl"
    with build(tmp_path / "state.sqlite", *sides, op_log=str(log)) as client:
        upsert(client, "h", 7)
        upsert(client, "h", 6)
    completions = [json.loads(line) for line in log.read_text().splitlines()][1::2]
    assert [c["value"]["result"] for c in completions] == ["applied", "superseded"]


# -- finding 4: the cluster server's limits and token ----------------------------------------------


def test_a_checksum_call_cannot_ask_for_unbounded_buckets(cluster_client: TestClient) -> None:
    response = cluster_client.post("/v1/checksums", json={"buckets": 100_000_000})
    assert response.status_code == 400 and "from 1 to 65536" in response.json()["error"]


@pytest.mark.parametrize(
    "method, path",
    [
        ("POST", "/v1/upsert"),
        ("POST", "/v1/checksums"),
        ("GET", "/v1/live_versions"),
        ("POST", "/faults/start"),
        ("POST", "/faults/heal"),
        ("GET", "/v1/marker"),
    ],
)
def test_the_cluster_server_needs_its_token(method: str, path: str) -> None:
    open_door = TestClient(ClusterServer(FakeCluster(DIM), token="ctok").app())
    assert open_door.request(method, path).status_code == 401
    wrong = open_door.request(method, path, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert open_door.get("/v1/health").status_code == 200  # probes need no token


# -- finding 10: the smaller ones ------------------------------------------------------------------


def test_errors_quote_the_input_briefly(client: TestClient) -> None:
    response = client.post("/v1/get", json={"id": "x" * 1_000_000})
    assert response.status_code == 400 and len(response.content) < 1000
    response = client.post("/v1/search", json={"vector": vector(), "k": "9" * 100_000})
    assert response.status_code == 400 and len(response.content) < 1000


def test_a_body_not_declared_json_is_refused(client: TestClient) -> None:
    """A browser page can post a form or text/plain cross-site without a preflight."""
    form = client.post("/v1/upsert", data={"id": "a"})
    assert form.status_code == 415
    text = client.post("/v1/get", content=b'{"id": "a"}', headers={"content-type": "text/plain"})
    assert text.status_code == 415 and "application/json" in text.json()["error"]


def test_a_trailing_slash_is_a_404_not_a_redirect_built_from_host(client: TestClient) -> None:
    response = client.post(
        "/v1/get/", json={"id": "a"}, headers={"host": "evil.example"}, follow_redirects=False
    )
    assert response.status_code == 404 and "location" not in response.headers


@pytest.mark.parametrize("path", ["/admin/advance", "/admin/rollback", "/admin/faults/heal"])
def test_bodyless_admin_steps_refuse_a_body(client: TestClient, path: str) -> None:
    response = client.post(path, json={"to": "CUTOVER"}, headers=ADMIN)
    assert response.status_code == 400 and "takes no body" in response.json()["error"]
    assert client.get("/admin/status", headers=ADMIN).json()["epoch"] == 0


def test_health_is_liveness_and_ready_names_a_side_that_is_down(
    client: TestClient, sides: tuple[FakeCluster, FakeCluster]
) -> None:
    assert client.get("/ready").status_code == 200
    for node in sides[1].nodes():
        sides[1].start_fault("node-crash", node=node)
    assert client.get("/health").status_code == 200
    response = client.get("/ready")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert not checks["new"]["ok"] and checks["old"]["ok"] and checks["state"]["ok"]


def test_a_side_going_down_is_logged(
    client: TestClient, sides: tuple[FakeCluster, FakeCluster], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING", logger="vecmig.service")
    for node in sides[1].nodes():
        sides[1].start_fault("node-crash", node=node)
    deadline = time.monotonic() + 10
    while "side new is down" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "side new is down" in caplog.text
    assert metric(client, "vecmig_side_up", side="new") == 0


def test_the_admin_token_is_compared_whole(tmp_path: Path, sides: Any) -> None:
    with build(tmp_path / "s.sqlite", *sides) as client:
        for given in (TOKEN[:-1], TOKEN + "x", f"Basic {TOKEN}"):
            headers = {"Authorization": given if " " in given else f"Bearer {given}"}
            assert client.get("/admin/status", headers=headers).status_code == 401


# -- what the fuzz tests found (tests/test_service_fuzz.py), kept as replays ---------------------


def test_replay_vector_components_stay_where_distances_are_finite(
    client: TestClient, cluster_client: TestClient
) -> None:
    """Found twice: the schema said 3.4e38 where float32 holds 3.4028235e38 (a number just above
    was rounded down silently), and stored vectors near float32's limit made distances overflow,
    so an exact search scored NaN and answered 500. Components are now bounded so that every
    distance in `dim` dimensions is finite, and the schema says the same bound."""
    limit = max_component(DIM)
    fits = {"id": "0", "vector": [limit * 0.99] * DIM, "version": 1}
    assert client.post("/v1/upsert", json=fits).status_code == 200
    for too_big in (limit * 1.01, 3.4028235e38):
        above = {"id": "0", "vector": [too_big] * DIM, "version": 2}
        assert client.post("/v1/upsert", json=above).status_code == 400
    record = {"id": "big", "vector": [-limit * 0.99] * DIM, "version": 1}
    assert cluster_client.post("/v1/upsert", json={"records": [record]}).status_code == 200
    query = {"k": 162, "vector": [-2.2038912659635476e16, 4830169495530130.0] + [1.0] * (DIM - 2)}
    answer = cluster_client.post("/v1/exact", json=query)
    assert answer.status_code == 200 and answer.json()["hits"][0][0] == "big"


def test_replay_the_cluster_server_refuses_a_vector_of_booleans(cluster_client: TestClient) -> None:
    body = {"k": 7, "vector": [True, True, True, False]}
    assert cluster_client.post("/v1/search", json=body).status_code == 400


def test_replay_a_fault_request_with_a_field_it_does_not_use_is_checked(
    client: TestClient,
) -> None:
    body = {"ms": None, "action": "stop", "family": "config-lag", "seconds": -5e-324}
    assert client.post("/admin/faults", json=body, headers=ADMIN).status_code == 400


def test_replay_a_clock_running_behind_is_in_the_schema_and_a_negative_latency_is_not(
    client: TestClient,
) -> None:
    """The deep fuzz run: the schema said `ms` >= 0 while the service rightly took a clock-skew
    of -1 ms (a clock may run behind), so a request the schema forbade was accepted."""
    fault = client.get("/openapi.json").json()["paths"]["/admin/faults"]["post"]
    ms = fault["requestBody"]["content"]["application/json"]["schema"]["properties"]["ms"]
    assert ms["minimum"] == -60_000
    skew = {"action": "start", "family": "clock-skew", "side": "new", "ms": -1, "seconds": 1}
    assert client.post("/admin/faults", json=skew, headers=ADMIN).status_code == 200
    slow = {"action": "start", "family": "latency", "side": "new", "ms": -1, "seconds": 1}
    response = client.post("/admin/faults", json=slow, headers=ADMIN)
    assert response.status_code == 400 and response.json()["field"] == "ms"


def test_replay_the_cluster_server_refuses_fields_it_does_not_take(
    cluster_client: TestClient,
) -> None:
    response = cluster_client.post("/v1/checksums", json={"buckets": 8, "extra": [1]})
    assert response.status_code == 400 and "unknown field(s) ['extra']" in response.json()["error"]


def test_replay_the_cluster_server_refuses_a_filter_value_that_is_not_a_scalar(
    cluster_client: TestClient,
) -> None:
    body = {"vector": [1.0] * DIM, "k": 5, "filter": {"k": {"nested": []}}}
    response = cluster_client.post("/v1/search", json=body)
    assert response.status_code == 400 and response.json()["field"] == "filter"


def test_replay_the_bound_holds_on_the_numbers_sent_not_their_float32_rounding(
    cluster_client: TestClient,
) -> None:
    """One double past the bound rounds back under it in float32: it was accepted while the
    schema said no. The bound is checked on the numbers as sent."""
    past = float(np.nextafter(max_component(DIM), np.inf))
    record = {"id": "0", "vector": [past] * DIM, "version": 0, "metadata": None}
    assert cluster_client.post("/v1/upsert", json={"records": [record]}).status_code == 400


@pytest.mark.parametrize(
    "path, body",
    [
        ("/faults/start", {"params": False, "family": "visibility-lag"}),
        (
            "/v1/upsert",
            {"records": [{"id": "a", "vector": [0.5] * DIM, "version": 1, "metadata": 0}]},
        ),
    ],
    ids=["params-false", "metadata-zero"],
)
def test_replay_a_falsy_value_is_not_taken_for_an_empty_object(
    cluster_client: TestClient, path: str, body: Any
) -> None:
    assert cluster_client.post(path, json=body).status_code == 400


def test_replay_a_null_side_is_not_taken_for_no_side(client: TestClient) -> None:
    body = {"action": "start", "family": "config-lag", "seconds": 1, "side": None}
    assert client.post("/admin/faults", json=body, headers=ADMIN).status_code == 400
