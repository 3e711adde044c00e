"""The service's metrics follow Prometheus' conventions and docs/metrics.md lists each one
(issue 13, finding 11): counters end in `_total`, no precomputed rates, ratios as `_ratio`,
process metrics present, and every 5xx counted."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from test_service_app import ADMIN, build, upsert

from vecmig.harness.clusters.fake import FakeCluster

DOC = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"


def test_metric_names_follow_the_conventions_and_are_documented(tmp_path: Path) -> None:
    old, new = FakeCluster(8, name="old"), FakeCluster(8, name="new")
    with build(tmp_path / "s.sqlite", old, new) as client:
        upsert(client, "a", 3)
        client.post(
            "/admin/faults",
            json={"action": "start", "family": "partition", "side": "old"},
            headers=ADMIN,
        )
        assert client.post("/v1/get", json={"id": "a"}).status_code == 503
        text = client.get("/metrics").text
    documented = dict(re.findall(r"^\| `(vecmig_\w+)` \| (\w+) \|", DOC.read_text(), re.M))
    exported: dict[str, str] = {}
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name + str(sorted(sample.labels.items()))] = sample.value
            if family.type == "counter":
                assert sample.name.endswith("_total"), sample.name
            else:
                assert not sample.name.endswith("_total"), sample.name
        if family.name.startswith("vecmig_"):
            name = family.name + ("_total" if family.type == "counter" else "")
            exported[name] = family.type
            assert not re.search(r"per_second|_rate$", family.name), family.name
    assert exported == {k: v for k, v in documented.items() if not k.startswith("vecmig_cluster")}
    assert any(key.startswith("process_cpu_seconds_total") for key in samples)
    five_hundreds = [
        value
        for key, value in samples.items()
        if key.startswith("vecmig_http_responses_total") and "('code', '503')" in key
    ]
    assert five_hundreds == [1.0]
