"""Cost profiles: interpolation inside what was measured, extrapolation past it along log(size)
(never below the last measurement), strict loading that names the bad key, and `vecmig
calibrate fake` writing a profile that loads back."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from vecmig.harness.cli import EXIT_BAD_INPUT, main
from vecmig.harness.costs import (
    CostProfile,
    Grid,
    Linear,
    ProfileError,
    load_profile,
    profile_from_json,
)


def _grid() -> Grid:
    # Cost grows by 10 us per doubling of the index, and halves from batch 1 to batch 4.
    return Grid((1000, 2000, 4000), (1, 4), ((100.0, 50.0), (110.0, 55.0), (120.0, 60.0)))


def test_a_grid_gives_its_measured_points_exactly() -> None:
    grid = _grid()
    assert grid.at(1000, 1) == 100.0
    assert grid.at(2000, 4) == 55.0
    assert grid.at(4000, 1) == 120.0


def test_a_grid_interpolates_linearly_in_the_logs_of_both_axes() -> None:
    grid = _grid()
    # Halfway between 1000 and 2000 in log size, and between batch 1 and 4 in log batch.
    size, batch = math.sqrt(1000 * 2000), 2
    assert grid.at(size, 1) == pytest.approx(105.0)
    assert grid.at(1000, batch) == pytest.approx(75.0)
    assert grid.at(size, batch) == pytest.approx((105.0 + 52.5) / 2)


def test_outside_the_second_axis_and_below_the_smallest_index_the_edge_holds() -> None:
    grid = _grid()
    assert grid.at(1000, 64) == 50.0
    assert grid.at(10, 1) == 100.0


def test_past_the_largest_index_cost_grows_along_log_size() -> None:
    grid = _grid()
    # Exactly 10 us per doubling in the measurements: 8000 is one doubling past 4000.
    assert grid.at(8000, 1) == pytest.approx(130.0)
    assert grid.at(4000 * 2**10, 1) == pytest.approx(220.0)


def test_extrapolation_never_goes_below_the_last_measurement() -> None:
    falling = Grid((1000, 2000, 4000), (1,), ((120.0,), (110.0,), (100.0,)))
    assert falling.at(1_000_000, 1) == 100.0


def test_a_profile_costs_batches_per_record_and_says_when_it_extrapolates() -> None:
    profile = CostProfile(
        name="t",
        engine="fake",
        dim=8,
        metric="cosine",
        clock="cpu",
        insert=_grid(),
        search=Grid((1000, 4000), (10,), ((40.0,), (60.0,))),
        linear={op: Linear(5.0, 2.0) for op in ("get", "delete", "scan", "checksums", "count")},
        jitter_sigma=0.2,
    )
    assert profile.insert_us(2000, 4) == pytest.approx(4 * 55.0)
    assert profile.search_us(2000, 10) == pytest.approx(50.0)
    assert profile.linear_us("get", 10) == pytest.approx(25.0)
    assert not profile.extrapolates(4000)
    assert profile.extrapolates(4001)
    assert profile_from_json(profile.to_json()).insert == profile.insert


def _shipped() -> dict[str, Any]:
    data: dict[str, Any] = load_profile("fake-dim32").to_json()
    return data


def test_the_shipped_profile_loads_and_names_its_machine() -> None:
    profile = load_profile("fake-dim32")
    assert (profile.engine, profile.dim, profile.clock) == ("fake", 32, "cpu")
    for key in ("cpu", "cores", "python", "hnswlib", "date"):
        assert profile.machine[key], key
    assert profile.not_measured


REAL_ENGINES = {
    "milvus-lite-dim32": "milvus+lite",
    "pgvector-dim32": "pgvector",
    "qdrant-local-dim32": "qdrant+local",
}
"""The real-engine profiles shipped (`vecmig calibrate ENGINE://auto --dim 32`)."""


@pytest.mark.parametrize(("name", "engine"), sorted(REAL_ENGINES.items()))
def test_a_shipped_real_engine_profile_loads_names_its_machine_and_how_it_was_timed(
    name: str, engine: str
) -> None:
    """Measured through the adapter with the wall clock (the engine's own process or threads
    count), at the scenarios' dimension, on the machine and under the load it records."""
    profile = load_profile(name)
    assert (profile.engine, profile.dim, profile.clock) == (engine, 32, "wall")
    for key in ("cpu", "cores", "python", "date", "load_average_before", "measure_wall_s"):
        assert profile.machine[key] is not None, key
    assert profile.settings["url"] == f"{engine}://auto"
    assert profile.insert_us(1000, 64) > 0 and profile.search_us(1000, 10) > 0


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda d: d.pop("insert"), "insert: must be a JSON object"),
        (lambda d: d["search"].update(k=[10, 1]), "search.k: must be strictly increasing"),
        (lambda d: d["insert"]["us"].pop(), "insert.us: must be a list of"),
        (lambda d: d["get"].update(fixed_us="fast"), "get.fixed_us: must be a number"),
        (lambda d: d.update(clock="sundial"), 'clock must be "cpu" or "wall"'),
        (lambda d: d.update(format=9), "format is 9"),
    ],
)
def test_a_malformed_profile_names_the_key(change: Any, named: str) -> None:
    data = _shipped()
    change(data)
    with pytest.raises(ProfileError, match=named.replace("(", r"\(").replace("[", r"\[")):
        profile_from_json(data, "bad.json")


def test_an_unknown_profile_names_the_shipped_ones() -> None:
    with pytest.raises(ProfileError, match="fake-dim32"):
        load_profile("no-such-profile")


def test_calibrate_fake_writes_a_profile_that_loads_back(tmp_path: Path) -> None:
    out = tmp_path / "tiny.json"
    assert main(["calibrate", "fake", "--dim", "8", "--sizes", "200,400", "--out", str(out)]) == 0
    profile = load_profile(str(out))
    assert (profile.name, profile.dim) == ("fake-dim8", 8)
    # Each size's row is labelled with the index it was measured at (inserts add to it).
    assert profile.insert.index_sizes[0] == 200
    assert all(v > 0 for row in profile.search.us for v in row)
    assert json.loads(out.read_text())["machine"]["measure_wall_s"] >= 0


def test_calibrate_refuses_bad_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["calibrate", "fake", "--sizes", "400,200"])
    assert exit_info.value.code == EXIT_BAD_INPUT
    assert "increasing" in capsys.readouterr().err
