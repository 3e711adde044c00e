"""Fuzzing every endpoint of the migration service and of the cluster server from their own
OpenAPI schemas (issue 13): Schemathesis generates requests that fit the schema and requests
that break it, against real server processes over HTTP, and every answer must be
documented, match its schema, be a 4xx for a request the schema forbids, never a 5xx, and come
in time (no hangs). Afterwards both sides are scanned: no refused request changed anything.

The CI-sized run is the default (`VECMIG_FUZZ_EXAMPLES`, 150 per server); the deep run is the
same test with more, e.g. `VECMIG_FUZZ_EXAMPLES=5500` (over 10,000 requests in all). Each run
prints its tally.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from vecmig.harness.catalog import Catalog
from vecmig.harness.clusters.remote import RemoteCluster
from vecmig.harness.drive.step import live_versions

EXAMPLES = int(os.environ.get("VECMIG_FUZZ_EXAMPLES", "150"))
DIM = 4
CATALOG = 40
TIMEOUT_S = 30.0
CLUSTER_TOKEN = "fuzz-cluster-token"
ADMIN_TOKEN = "fuzz-admin-token"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Tally:
    """What one fuzz run sent and got back."""

    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    hangs: list[str] = field(default_factory=list)
    writes: list[tuple[str, Any, int, Any]] = field(default_factory=list)

    def line(self, what: str) -> str:
        server_errors = sum(n for code, n in self.statuses.items() if code >= 500)
        return (
            f"fuzz {what}: {self.requests} requests, {server_errors} 5xx, "
            f"{len(self.hangs)} hangs; statuses {dict(sorted(self.statuses.items()))}"
        )


@dataclass
class Servers:
    urls: dict[str, str]
    workdir: Path


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """Two cluster servers (the service's sides), a third to fuzz on its own, the service."""
    workdir = tmp_path_factory.mktemp("fuzz")
    env = {**os.environ, "VECMIG_CLUSTER_TOKEN": CLUSTER_TOKEN, "VECMIG_ADMIN_TOKEN": ADMIN_TOKEN}
    ports = {name: free_port() for name in ("old", "new", "lone", "service")}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    processes: list[subprocess.Popen[bytes]] = []

    def start(name: str, *argv: str) -> None:
        with open(workdir / f"{name}.log", "wb") as log:  # the child keeps its own copy
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "vecmig", *argv, "--port", str(ports[name])],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            )

    try:
        for name in ("old", "new", "lone"):
            start(name, "cluster", "serve", "--dim", str(DIM), "--name", name)
        for name in ("old", "new", "lone"):
            wait_up(urls[name] + "/v1/health")
        old = RemoteCluster(urls["old"], DIM, "cosine", token=CLUSTER_TOKEN)
        old.upsert(catalog(), fenced=False)
        start(
            "service",
            *("serve", "--old", urls["old"], "--new", urls["new"], "--dim", str(DIM)),
            *("--state", str(workdir / "state.sqlite"), "--init", "--max-k", "50"),
            *("--min-mirrored-reads", "0", "--soak-s", "0", "--slo-p99-ms", "100000"),
        )
        wait_up(urls["service"] + "/ready")
        yield Servers(urls, workdir)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)


def catalog() -> list[Any]:
    return Catalog.generate(CATALOG, DIM, categories=2, seed=3).records()


def wait_up(url: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, f"{url} did not come up"
        time.sleep(0.1)


def fuzz(
    base_url: str,
    token: str,
    tally: Tally,
    after: Callable[[Any, requests.Session], None],
) -> None:
    """Send `EXAMPLES` generated requests (valid and invalid, every operation) to `base_url`."""
    document = requests.get(base_url + "/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(document)
    cases = st.one_of(
        schema.as_strategy(GenerationMode.POSITIVE), schema.as_strategy(GenerationMode.NEGATIVE)
    )
    session = requests.Session()
    headers = {"Authorization": f"Bearer {token}"}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=os.environ.get("VECMIG_HYPOTHESIS_PROFILE", "ci") != "deep",
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate, Phase.shrink],
    )
    @given(cases)
    def one(case: Any) -> None:
        tally.requests += 1
        try:
            response = case.call(
                base_url=base_url, session=session, headers=headers, timeout=TIMEOUT_S
            )
        except requests.Timeout:
            tally.hangs.append(f"{case.method} {case.path}")
            raise
        tally.statuses[response.status_code] += 1
        if case.path in ("/v1/upsert", "/v1/delete") and isinstance(case.body, dict):
            tally.writes.append((case.path, case.body, response.status_code, _json(response)))
        after(case, session)
        case.validate_response(response, checks=CHECKS, headers=headers)

    try:
        one()
    finally:
        print(tally.line(base_url))


def _json(response: Any) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def heal_after_faults(url: str, path: str, token: str) -> Callable[[Any, requests.Session], None]:
    """Faults the fuzzer switches on are switched off at once: a partition or a 60 s latency
    would turn the next requests' answers into 503s and timeouts that are not bugs."""

    def after(case: Any, session: requests.Session) -> None:
        if case.path.startswith(path.rsplit("/", 1)[0]):
            headers = {"Authorization": f"Bearer {token}"}
            session.post(url + path, headers=headers, timeout=TIMEOUT_S).raise_for_status()

    return after


def test_fuzzing_the_service_finds_no_5xx_no_hang_and_no_effect_of_refusals(
    servers: Servers,
) -> None:
    tally = Tally()
    url = servers.urls["service"]
    fuzz(url, ADMIN_TOKEN, tally, heal_after_faults(url, "/admin/faults/heal", ADMIN_TOKEN))
    assert not tally.hangs
    assert all(code < 500 for code in tally.statuses), tally.line(url)
    check_refusals_changed_nothing(servers, tally)
    (servers.workdir / "service-tally.json").write_text(json.dumps(tally.statuses))


def check_refusals_changed_nothing(servers: Servers, tally: Tally) -> None:
    """Every record either side holds is from the catalog or from an acknowledged upsert, and
    every catalog record no acknowledged write touched is still there, unchanged."""
    accepted: set[tuple[str, int]] = set()
    touched: set[str] = set()
    for path, _, status, answer in tally.writes:
        if status == 200:
            touched.add(answer["id"])
            if path == "/v1/upsert":
                accepted.add((answer["id"], answer["version"]))
    initial = {r.id: r.version for r in catalog()}
    for name in ("old", "new"):
        side = RemoteCluster(servers.urls[name], DIM, "cosine", token=CLUSTER_TOKEN)
        held = live_versions(side)
        strays = {(i, v) for i, v in held.items() if initial.get(i) != v and (i, v) not in accepted}
        assert not strays, f"{name} holds writes nobody acknowledged: {sorted(strays)[:5]}"
        if name == "old":
            lost = {i for i, v in initial.items() if i not in touched and held.get(i) != v}
            assert not lost, f"old lost catalog records no accepted write touched: {lost}"


def test_fuzzing_the_cluster_server_finds_no_5xx_and_no_hang(servers: Servers) -> None:
    tally = Tally()
    url = servers.urls["lone"]
    fuzz(url, CLUSTER_TOKEN, tally, heal_after_faults(url, "/faults/heal", CLUSTER_TOKEN))
    assert not tally.hangs
    assert all(code < 500 for code in tally.statuses), tally.line(url)
