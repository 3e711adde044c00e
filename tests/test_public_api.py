"""The public API in one screen: `vecmig` exports what a caller needs, lazily (importing it
loads nothing heavy), and `vecmig.harness.core` exports the core's entry points. Every
exported name is the object its module defines, and the three lists in vecmig/__init__.py
(`__all__`, `_EXPORTS`, the imports for type checkers) agree."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

import vecmig
from vecmig.harness import core

ROOT = Path(__file__).resolve().parents[1]


def test_importing_vecmig_loads_no_heavy_library() -> None:
    code = (
        "import sys, vecmig\n"
        "heavy = {'numpy', 'simpy', 'hnswlib', 'rich', 'jinja2'} & set(sys.modules)\n"
        "print(sorted(heavy))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("name", sorted(set(vecmig.__all__) - {"__version__"}))
def test_each_export_of_vecmig_is_its_modules_object(name: str) -> None:
    module, attribute = vecmig._EXPORTS[name]
    assert getattr(vecmig, name) is getattr(__import__(module, fromlist=["_"]), attribute)


def test_the_three_lists_of_exports_agree() -> None:
    tree = ast.parse((ROOT / "vecmig" / "__init__.py").read_text())
    typed: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for imported in node.body:
                assert isinstance(imported, ast.ImportFrom)
                typed |= {alias.asname or alias.name for alias in imported.names}
                for alias in imported.names:
                    name = alias.asname or alias.name
                    assert vecmig._EXPORTS[name] == (imported.module, alias.name)
    assert typed == set(vecmig._EXPORTS) == set(vecmig.__all__) - {"__version__"}


def test_an_unknown_name_is_an_attribute_error_that_names_it() -> None:
    with pytest.raises(AttributeError, match="no attribute 'chek'"):
        _ = vecmig.chek  # type: ignore[attr-defined]


def test_the_quick_start_in_the_docstring_runs(tmp_path: Path) -> None:
    side = vecmig.open_cluster("fake://?shards=2", dim=16)
    assert isinstance(side, vecmig.ClusterPort) and side.dim == 16
    scenario = dataclasses.replace(vecmig.load_scenario("default"), duration_s=3.0)
    result = vecmig.Simulation(scenario, "safe", seed=1).run()
    path = tmp_path / "history.jsonl"
    path.write_text("".join(e.to_json() + "\n" for e in result.events))
    verdict = vecmig.check(vecmig.read_jsonl(path))
    assert isinstance(verdict, vecmig.Verdict) and verdict.counts() == result.verdict.counts()


def test_the_core_exports_its_entry_points() -> None:
    for name in core.__all__:
        assert hasattr(core, name), name
    assert len(core.__all__) == len(set(core.__all__))
    entry_points = {"MigrationLayer", "Controller", "Backfill", "Operation", "Outcome", "Phase"}
    assert entry_points | {"SAFE", "NAIVE", "Upsert", "Search", "TRANSITIONS"} <= set(core.__all__)
    assert core.Phase.OLD_ONLY in core.TRANSITIONS


def test_the_package_is_typed() -> None:
    assert (ROOT / "vecmig" / "py.typed").is_file()
