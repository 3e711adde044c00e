"""The extras split: a core install runs `vecmig check` and `vecmig simulate`; a command whose
extra is missing stops with one line naming it; and harness/extras.py agrees with
pyproject.toml about which library comes with which extra.

A missing library is simulated by a `None` in `sys.modules` (import then raises
`ModuleNotFoundError`, as when the package is not installed), in a child process.
"""

from __future__ import annotations

import html
import importlib.metadata
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from vecmig.harness.extras import EXTRAS, MissingExtra, as_missing_extra, extra_for

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXAMPLE = ROOT / "tests" / "data" / "example_history.jsonl"
OPTIONAL = sorted({module for modules in EXTRAS.values() for module in modules} | {"uvloop"})


def vecmig_without(modules: list[str], *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run `vecmig ARGV` in a child process in which `modules` cannot be imported."""
    code = (
        "import sys\n"
        f"for name in {modules!r}:\n"
        "    sys.modules[name] = None\n"
        "from vecmig.harness.cli import main\n"
        f"sys.exit(main({list(argv)!r}))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_check_runs_on_a_core_install(tmp_path: Path) -> None:
    done = vecmig_without(OPTIONAL, "check", str(EXAMPLE), "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["verdict"]["valid"] is True


def test_simulate_on_a_core_install_writes_all_but_the_plots_and_says_so(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = vecmig_without(
        OPTIONAL, "simulate", "--duration", "8", "--quiet", "--out", str(out), cwd=tmp_path
    )
    assert done.returncode in (0, 4), done.stderr  # valid, or stalled: 8 s is a short plan
    assert sorted(p.name for p in out.iterdir()) == ["history.jsonl", "report.html", "report.json"]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'vecmig[plots]'" in lines[0], done.stderr
    assert "pip install 'vecmig[plots]'" in html.unescape((out / "report.html").read_text())


@pytest.mark.parametrize(
    "argv, extra",
    [
        (
            ("serve", "--old", "fake://", "--new", "fake://", "--dim", "8", "--state", "s.db"),
            "service",
        ),
        (("cluster", "serve", "--dim", "8"), "service"),
        (("loadtest", "--duration", "20"), "service"),
    ],
    ids=["serve", "cluster-serve", "loadtest"],
)
def test_a_command_without_its_extra_says_which_to_install(
    tmp_path: Path, argv: tuple[str, ...], extra: str
) -> None:
    done = vecmig_without(OPTIONAL, *argv, cwd=tmp_path)
    assert done.returncode == 2
    command = " ".join(argv[:2] if argv[0] == "cluster" else argv[:1])
    assert done.stderr.strip() == (
        f"vecmig {command}: starlette is not installed; "
        f"install the {extra} extra: pip install 'vecmig[{extra}]'"
    )


def test_loadtest_with_the_service_but_without_locust_names_the_loadtest_extra(
    tmp_path: Path,
) -> None:
    done = vecmig_without(["locust", "gevent"], "loadtest", cwd=tmp_path)
    assert done.returncode == 2
    assert "pip install 'vecmig[loadtest]'" in done.stderr and "locust" in done.stderr


def test_an_engine_url_without_the_engines_extra_names_it(tmp_path: Path) -> None:
    done = vecmig_without(
        list(EXTRAS["engines"]),
        *("serve", "--old", "pgvector://u@127.0.0.1:1/db", "--new", "fake://", "--dim", "8"),
        *("--state", str(tmp_path / "s.db"), "--init"),
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "vecmig serve: psycopg is not installed; install the engines extra: "
        "pip install 'vecmig[engines]'"
    )


def test_checking_an_extra_imports_nothing(tmp_path: Path) -> None:
    """`vecmig loadtest` checks for Locust before it starts; importing it would monkey-patch
    the command's own process with gevent (and break httpx there)."""
    code = (
        "import sys\n"
        "from vecmig.harness.extras import require\n"
        "require('loadtest', 'x'); require('service', 'x')\n"
        "print(sorted({'locust', 'gevent', 'starlette', 'httpx'} & set(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


def test_a_module_no_extra_brings_is_a_bug_not_a_missing_extra() -> None:
    assert extra_for("vecmig.harness.nothing") is None
    assert as_missing_extra(ModuleNotFoundError("x", name="not_a_library"), "vecmig x") is None
    missing = as_missing_extra(ModuleNotFoundError("x", name="matplotlib.pyplot"), "vecmig x")
    assert isinstance(missing, MissingExtra) and missing.extra == "plots"


# ---------------------------------------------------------------------------------------------
# harness/extras.py and pyproject.toml agree.


def requirement_name(requirement: str) -> str:
    return re.split(r"[\s;\[<>=!~]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def modules_of(distribution: str) -> set[str]:
    """The top-level import names an installed distribution provides."""
    return {
        module
        for module, dists in importlib.metadata.packages_distributions().items()
        if distribution in {d.lower().replace("_", "-") for d in dists}
    }


@pytest.mark.parametrize("extra", sorted(EXTRAS))
def test_every_library_an_extra_declares_is_in_its_import_table(extra: str) -> None:
    """So that a missing one is reported as this extra, not as a bug."""
    declared = [
        requirement_name(r)
        for r in PYPROJECT["project"]["optional-dependencies"][extra]
        if not r.startswith("vecmig[") and requirement_name(r) != "uvloop"
    ]
    assert declared
    for distribution in declared:
        assert modules_of(distribution) & set(EXTRAS[extra]), (
            f"{distribution} (the {extra} extra) provides {sorted(modules_of(distribution))}, "
            f"none of them in EXTRAS[{extra!r}] = {EXTRAS[extra]}"
        )


def test_the_core_dependencies_are_no_extras_libraries() -> None:
    core = [requirement_name(r) for r in PYPROJECT["project"]["dependencies"]]
    for distribution in core:
        assert not modules_of(distribution) & set(OPTIONAL), distribution


def test_all_names_every_extra_but_the_test_tools() -> None:
    (everything,) = PYPROJECT["project"]["optional-dependencies"]["all"]
    named = set(everything.removeprefix("vecmig[").removesuffix("]").split(","))
    assert named == set(EXTRAS)
