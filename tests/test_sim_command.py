"""`vecmig simulate` and `vecmig sweep` (`vecmig.sim.command`): bad arguments exit 2 naming the
option, and a sweep keeps every seed's result even when one seed's run raises."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from vecmig.harness.cli import EXIT_ANOMALIES, EXIT_BAD_INPUT, EXIT_STALLED, EXIT_VALID, main
from vecmig.sim.faults import NODE_FAMILIES
from vecmig.sim.simulation import Simulation

# One replica per shard, a few seconds of light traffic: swarm seed 1 puts a slow replica on
# 's0r1', a node this cluster does not have.
ONE_REPLICA = """
name = "one-replica"
duration_s = 12
seed = 1

[catalog]
products = 200
dim = 8
categories = 4

[clusters]
replicas = 1

[traffic]
rate = 20

[migration]
start_s = 1
"""


@pytest.fixture
def one_replica(tmp_path: Path) -> Path:
    path = tmp_path / "one-replica.toml"
    path.write_text(ONE_REPLICA)
    return path


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["simulate", "--seed", "-1"], "--seed"),
        (["simulate", "--seed", "x"], "--seed"),
        (["simulate", "--duration", "0.5"], "--duration"),
        (["simulate", "--duration", "nan"], "--duration"),
        (["simulate", "--duration", "inf"], "--duration"),
        (["sweep", "--seeds", "0"], "--seeds"),
        (["sweep", "--jobs", "0"], "--jobs"),
        (["sweep", "--first-seed", "-3"], "--first-seed"),
        (["sweep", "--duration", "0"], "--duration"),
    ],
)
def test_a_bad_argument_exits_2_naming_the_option(
    args: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Finding 8: `--seed -1` crashed in numpy's SeedSequence, `--duration nan` ran forever."""
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert f"argument {option}" in err and args[-1] in err, err


def test_swarm_with_one_replica_runs_without_node_faults(one_replica: Path, tmp_path: Path) -> None:
    """Finding 8: it raised `ValueError: unknown node 's0r1'` four simulated seconds in."""
    out = tmp_path / "out"
    code = main(["simulate", str(one_replica), "--swarm", "--quiet", "--out", str(out)])
    report = json.loads((out / "report.json").read_text())
    assert code in (EXIT_VALID, EXIT_STALLED), report["verdict"]
    families = {fault["family"] for fault in report["faults"]}
    assert families and not families & set(NODE_FAMILIES), families


@pytest.mark.skipif(
    multiprocessing.get_start_method() != "fork",
    reason="the failing run is patched into the parent; only forked workers inherit it",
)
def test_a_sweep_reports_a_seed_that_raised_and_keeps_the_others(
    one_replica: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Finding 8: one seed that raised aborted the sweep and lost every other seed's result."""
    run = Simulation.run

    def run_or_raise(self: Simulation, *args: object, **kwargs: object) -> object:
        if self.seed == 2:
            raise RuntimeError("boom in seed 2")
        return run(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Simulation, "run", run_or_raise)
    out_dir = str(tmp_path / "sweep")
    code = main(
        ["sweep", str(one_replica), "--seeds", "3", "--jobs", "2", "--duration", "4"]
        + ["--out", out_dir]
    )
    out = capsys.readouterr().out
    assert code == EXIT_ANOMALIES, out
    assert "of 3 seeds valid, 1 raised" in out, out
    assert "raised: RuntimeError: boom in seed 2" in out, out
    assert f"replay seed 2: vecmig simulate {one_replica} --duration 4 --seed 2" in out, out
    cells = [line.split("│") for line in out.splitlines() if line.startswith("│")]
    verdicts = {row[1].strip(): row[2].strip() for row in cells if row[1].strip()}
    assert verdicts["2"] == "RAISED", out
    assert verdicts["1"] != "RAISED" and verdicts["3"] != "RAISED", out
