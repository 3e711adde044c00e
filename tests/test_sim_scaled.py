"""The scaled fidelity: the same seed gives the same history bytes; on a small scaled shop with
faults the safe strategy is valid and the naive one is not, and the report says which ids were
judged for what; a bad fidelity or a missing, malformed or mismatched profile exits 2 naming
the key; the exact fidelity's default service times are the shipped profile's at the shipped
scenarios' size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vecmig.harness.cli import EXIT_BAD_INPUT, EXIT_VALID, main
from vecmig.harness.clusters.base import VECTORLESS, Side
from vecmig.harness.clusters.scaled import CatalogSample
from vecmig.harness.core import requests as rq
from vecmig.sim.report import history_bytes
from vecmig.sim.scaled import ScaledCatalog
from vecmig.sim.scenario import ScenarioError, load, with_fidelity
from vecmig.sim.simulation import Simulation

# A shop of 3,000 products of which every 10th holds a vector, walking every phase in about
# 30 simulated seconds under the faults the naive plan cannot survive (lost acks on new before
# the backfill, an instance that learns of phases late, a replica of new losing its disk).
SMALL = """
name = "small-scaled"
duration_s = 45
seed = 1

[catalog]
products = 3000
dim = 32
categories = 4

[clusters]
fidelity = "scaled"
profile = "fake-dim32"
sample = 300

[traffic]
rate = 40
shopper_share = 0.6
merchant = { price = 0.3, stock = 0.1, add = 0.1, reembed = 0.1, delist = 0.3, relist = 0.1 }
exact_sample_rate = 0.2

[migration]
start_s = 2
hold_s = { DUAL_WRITE = 2, SHADOW = 5, CUTOVER = 2 }
min_mirrored_reads = 20
soak_s = 3
batch_size = 64
backfill_rate = 400
calibration_queries = 10

[[faults]]
family = "lost-ack"
side = "new"
rate = 0.3
phase = "DUAL_WRITE"
duration_s = 2
until_phase = "BACKFILL"

[[faults]]
family = "late-config"
instance = 2
delay_s = 3
at_s = 1
duration_s = 20

[[faults]]
family = "node-crash"
side = "new"
node = "s0r1"
lose_data = true
phase = "BACKFILL"
after_s = 1
duration_s = 3
"""


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scenarios") / "small-scaled.toml"
    path.write_text(SMALL)
    return path


def test_the_same_seed_gives_the_same_scaled_history_bytes(small: Path) -> None:
    scenario = load(str(small))
    first = history_bytes(Simulation(scenario, "safe", seed=4).run())
    assert history_bytes(Simulation(scenario, "safe", seed=4).run()) == first
    assert history_bytes(Simulation(scenario, "safe", seed=5).run()) != first


def test_safe_is_valid_and_the_report_names_what_was_judged(small: Path, tmp_path: Path) -> None:
    out = tmp_path / "safe"
    assert main(["simulate", str(small), "--quiet", "--out", str(out)]) == EXIT_VALID
    report = json.loads((out / "report.json").read_text())
    fidelity = report["fidelity"]
    assert (fidelity["mode"], fidelity["products"], fidelity["sampled"]) == ("scaled", 3000, 300)
    assert set(fidelity["judged"].values()) == {
        "every id",
        "the 300 sampled ids (every 10th product) and sampled products added later: only they "
        "hold vectors",
    }
    assert fidelity["profile"]["machine"]["cpu"]
    assert not fidelity["service"]["new"]["extrapolated"]
    # Time to DECOMMISSIONED counts from the controller's start (migration.start_s = 2).
    decommissioned = next(p["time_s"] for p in report["phases"] if p["phase"] == "DECOMMISSIONED")
    assert report["headline"]["time_to_decommissioned_s"] == pytest.approx(
        decommissioned - 2, abs=1e-3
    )
    # The history judged every product, not only the sample.
    load_event = json.loads((out / "history.jsonl").read_text().splitlines()[0])
    assert len(load_event["value"]["records"]) == 3000


def test_judging_the_sample_keeps_only_sampled_ids_in_the_history(tmp_path: Path) -> None:
    path = tmp_path / "sample.toml"
    path.write_text(SMALL.replace("sample = 300", 'sample = 300\njudge = "sample"'))
    result = Simulation(load(str(path)), "safe", seed=1).run()
    assert result.verdict.valid, result.verdict.counts()
    sample = CatalogSample.of(3000, 300)
    ids = set()
    for event in result.events:
        if event.f in ("load", "final"):
            ids |= set(event.value["records"])
        elif isinstance(event.value, dict) and "id" in event.value:
            ids.add(event.value["id"])
    assert len(ids) >= 300
    assert all(sample.sampled(sample.number(i)) for i in ids)
    assert "the sampled ids only" in next(iter(result.fidelity["judged"].values()))
    # The ops left out still ran: they count in the latency figures.
    assert len(result.completed) > sum(e.type == "invoke" for e in result.events)


def test_naive_loses_writes_in_scaled_mode_too(small: Path) -> None:
    result = Simulation(load(str(small)), "naive", seed=1).run()
    counts = result.verdict.counts()
    assert not result.verdict.valid
    assert counts["lost_writes"] or counts["resurrected_deletes"] or counts["stale_reads"]


def test_searches_return_only_sampled_products(small: Path) -> None:
    result = Simulation(load(str(small)), "safe", seed=2).run()
    sample = CatalogSample.of(3000, 300)
    hits = [
        hit[0]
        for e in result.events
        if e.f == "search" and e.type == "ok"
        for hit in e.value["results"]
    ]
    assert hits
    assert all(sample.sampled(sample.number(i)) for i in hits)


def test_a_scaled_catalog_of_stride_one_is_the_exact_catalog() -> None:
    from vecmig.harness.catalog import Catalog

    scaled = ScaledCatalog(CatalogSample.of(500, 500), 16, 4, seed=3)
    exact = Catalog.generate(500, 16, 4, seed=3)
    assert scaled.records() == exact.records()


def test_products_beyond_the_sample_get_no_vector_and_draw_nothing() -> None:
    import numpy as np

    catalog = ScaledCatalog(CatalogSample.of(1000, 100), 16, 4, seed=3)
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    assert catalog.new_product(rng, "p001001").vector is VECTORLESS
    assert catalog.reembed("p000001", rng) is VECTORLESS
    assert rng.bit_generator.state == state
    assert catalog.neighbour("p000019") == "p000010"


# -- bad input ------------------------------------------------------------------------------


def _exit_and_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own refusals
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def test_an_unknown_fidelity_exits_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(SMALL.replace('fidelity = "scaled"', 'fidelity = "approximate"'))
    code, err = _exit_and_error(["simulate", str(path), "--quiet"], capsys)
    assert code == EXIT_BAD_INPUT
    assert "clusters.fidelity must be one of exact, scaled" in err
    code, err = _exit_and_error(["simulate", "--fidelity", "approximate", "--quiet"], capsys)
    assert code == EXIT_BAD_INPUT
    assert "--fidelity" in err


def test_a_missing_profile_exits_2_naming_the_key_and_the_shipped_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(SMALL.replace('profile = "fake-dim32"', 'profile = "fake-dim33"'))
    code, err = _exit_and_error(["simulate", str(path), "--quiet"], capsys)
    assert code == EXIT_BAD_INPUT
    assert "clusters.profile: no cost profile 'fake-dim33'" in err
    assert "fake-dim32" in err and "vecmig calibrate fake" in err


def test_a_malformed_profile_exits_2_naming_its_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = json.loads(Path(load_profile_path()).read_text())
    del broken["search"]["k"]
    profile = tmp_path / "broken.json"
    profile.write_text(json.dumps(broken))
    code, err = _exit_and_error(
        ["simulate", "default", "--fidelity", "scaled", "--profile", str(profile), "--quiet"],
        capsys,
    )
    assert code == EXIT_BAD_INPUT
    assert "clusters.profile:" in err and "search.k: must be a non-empty list" in err
    profile.write_text("{not json")
    code, err = _exit_and_error(
        ["simulate", "default", "--fidelity", "scaled", "--profile", str(profile), "--quiet"],
        capsys,
    )
    assert code == EXIT_BAD_INPUT
    assert "not valid JSON" in err


def test_a_profile_of_another_dimension_is_refused() -> None:
    scenario = load("default")
    changed = scenario.catalog.__class__(products=100, dim=16, categories=4)
    import dataclasses

    with pytest.raises(ScenarioError, match=r"measured at dimension 32, but catalog.dim is 16"):
        with_fidelity(dataclasses.replace(scenario, catalog=changed), "scaled", "fake-dim32")


def test_a_profile_without_the_scaled_fidelity_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        SMALL.replace('fidelity = "scaled"', 'fidelity = "exact"').replace(
            "sample = 300", 'sample = 300\njudge = "sample"'
        )
    )
    code, err = _exit_and_error(["simulate", str(path), "--quiet"], capsys)
    assert code == EXIT_BAD_INPUT
    assert "clusters.profile ('fake-dim32') is used only with clusters.fidelity" in err
    assert "clusters.judge ('sample') is used only with clusters.fidelity" in err


def _slow_profile(tmp_path: Path, dim: int = 32) -> Path:
    """A copy of the shipped profile whose every cost is ten times higher."""
    data = json.loads(Path(load_profile_path()).read_text())
    data.update(name="ten-times-slower", dim=dim)
    for grid in ("insert", "search"):
        data[grid]["us"] = [[10 * v for v in row] for row in data[grid]["us"]]
    path = tmp_path / "slow.json"
    path.write_text(json.dumps(data))
    return path


def test_each_side_is_charged_from_its_own_profile(tmp_path: Path) -> None:
    """A migration between two engines: new_profile charges new, old keeps the scenario's."""
    path = tmp_path / "two-engines.toml"
    path.write_text(
        SMALL.replace("sample = 300", f"sample = 300\nnew_profile = '{_slow_profile(tmp_path)}'")
    )
    sim = Simulation(load(str(path)), "safe", seed=1)
    old, new = sim.service[Side.OLD], sim.service[Side.NEW]
    assert (old.profile.name, new.profile.name) == ("fake-dim32", "ten-times-slower")
    upsert = rq.Upsert(Side.NEW, sim.catalog.records()[:8])
    assert new.cost_us(upsert, "upsert", 1000) == pytest.approx(
        10 * old.cost_us(upsert, "upsert", 1000)
    )


def test_a_side_profile_of_another_dimension_or_without_scaled_is_refused_naming_its_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong_dim = _slow_profile(tmp_path, dim=16)
    scaled = tmp_path / "scaled.toml"
    scaled.write_text(SMALL.replace("sample = 300", f"sample = 300\nold_profile = '{wrong_dim}'"))
    with pytest.raises(
        ScenarioError, match=r"clusters.old_profile: 'ten-times-slower' was measured"
    ):
        load(str(scaled))
    exact = tmp_path / "exact.toml"
    exact.write_text(
        SMALL.replace('fidelity = "scaled"', 'fidelity = "exact"').replace(
            'profile = "fake-dim32"', 'new_profile = "fake-dim32"'
        )
    )
    code, err = _exit_and_error(["simulate", str(exact), "--quiet"], capsys)
    assert code == EXIT_BAD_INPUT
    assert "clusters.new_profile ('fake-dim32') is used only with clusters.fidelity" in err


def load_profile_path() -> str:
    from vecmig.harness.costs import resolve_profile

    return str(resolve_profile("fake-dim32"))
