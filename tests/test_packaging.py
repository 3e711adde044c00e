"""vecmig as a user installs it, tried from outside the repository, in fresh virtual
environments (with the system's site-packages for the libraries, so nothing is downloaded:
every `pip install` here is `--no-deps --no-index --no-build-isolation`):

* `pip install .` puts one package in site-packages, `vecmig`: `import vecmig.harness` works
  and `import harness`, `sim` or `loadtests` fails; the installed package carries its
  scenarios, templates and py.typed, so `vecmig simulate` runs from it.
* A throwaway project with a tiny adapter (a `FakeCluster` behind its own scheme, registered
  in the `vecmig.adapters` entry-point group) runs the conformance suite and the migration
  state machine on it with plain `pytest`, through the plugin's `pytest11` entry point, and
  `vecmig serve --old tiny://...` opens its side.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
JUNK = (".git", "out", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis")


def clean_env() -> dict[str, str]:
    """The environment of a user's shell: no PYTHONPATH pointing into a checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VECMIG_ADAPTER")}
    return {**env, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def run(
    argv: list[str | Path], cwd: Path, timeout: float = 600, expect: int | None = 0
) -> subprocess.CompletedProcess[str]:
    """Run `argv` as from a user's shell; its exit code must be `expect` (None: any)."""
    done = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if expect is not None:
        problem = f"{argv}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        assert done.returncode == expect, problem
    return done


def venv(where: Path) -> Path:
    """A fresh venv that sees the system's packages; returns its python. Without a pip (and
    setuptools) of its own: the system's install into it, with the system's build backend."""
    run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", where],
        where.parent,
    )
    return where / "bin" / "python"


def pip_install(python: Path, *args: str | Path) -> None:
    run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-build-isolation"]
        + list(args),
        cwd=Path(python).parents[2],
    )


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of this checkout (so that building it leaves nothing behind in the repo)."""
    copy = tmp_path_factory.mktemp("src") / "vecmig"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(*JUNK))
    return copy


# ---------------------------------------------------------------------------------------------
# pip install . exposes only vecmig.


@pytest.fixture(scope="module")
def installed(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    python = venv(tmp_path_factory.mktemp("plain") / "venv")
    pip_install(python, source)
    return python


def test_pip_install_puts_only_vecmig_in_site_packages(installed: Path, tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import importlib.metadata, importlib.util, json
        import vecmig.harness.core, vecmig.harness.history.checker, vecmig.sim.scenario
        import vecmig.loadtests.sides
        files = importlib.metadata.distribution("vecmig").files
        print(json.dumps({
            "vecmig": vecmig.__file__,
            "top": sorted({f.parts[0] for f in files if f.parts[0] != ".."}),
            "others": [n for n in ("harness", "sim", "loadtests", "scenarios")
                       if importlib.util.find_spec(n) is not None],
        }))
        """
    )
    done = run([installed, "-c", code], cwd=tmp_path)
    found = json.loads(done.stdout)
    assert Path(found["vecmig"]).is_relative_to(installed.parents[1]), found["vecmig"]
    assert found["top"] == ["vecmig", "vecmig-0.2.0.dist-info"], found["top"]
    assert found["others"] == []
    failed = run([installed, "-c", "import harness"], cwd=tmp_path, expect=1)
    assert "No module named 'harness'" in failed.stderr


def test_the_installed_package_carries_its_data_and_simulates(
    installed: Path, tmp_path: Path
) -> None:
    vecmig = installed.parent / "vecmig"
    argv = [vecmig, "simulate", "--duration", "5", "--quiet", "--out", tmp_path / "run"]
    done = run(argv, cwd=tmp_path, timeout=300, expect=None)
    assert done.returncode in (0, 4), done.stderr  # 5 s: valid or stalled, never an error
    assert (tmp_path / "run" / "report.html").stat().st_size > 0
    typed = run([installed, "-c", "import vecmig, pathlib; print(vecmig.__file__)"], cwd=tmp_path)
    assert (Path(typed.stdout.strip()).parent / "py.typed").is_file()


# ---------------------------------------------------------------------------------------------
# A project of the user's own, with its adapter, runs the suite with plain pytest.

TINY_PYPROJECT = """
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "tinyengine"
version = "0.1.0"
dependencies = ["vecmig[pytest]"]

[project.entry-points."vecmig.adapters"]
tiny = "tinyengine:open_side"

[tool.setuptools]
package-dir = { "" = "src" }
packages = ["tinyengine"]

[tool.pytest.ini_options]
vecmig_adapter = "tiny://?seed=3"
vecmig_machine_examples = "5"
"""

TINY_ADAPTER = '''
"""A tiny engine: vecmig's fake cluster behind the tiny:// scheme. `?broken=fencing` gives a
side that ignores version fences, which the conformance suite must catch."""

from urllib.parse import parse_qs, urlsplit

from vecmig import FakeCluster


class Unfenced(FakeCluster):
    def upsert(self, records, fenced=True):
        return super().upsert(records, fenced=False)


def open_side(url, dim, metric):
    query = {k: v[-1] for k, v in parse_qs(urlsplit(url).query).items()}
    kind = Unfenced if query.get("broken") == "fencing" else FakeCluster
    return kind(dim, metric, shards=2, replicas=2, seed=int(query.get("seed", 0)))
'''

TINY_TESTS = '''
"""tinyengine keeps vecmig's cluster contract and migrates safely between two of its sides."""

from vecmig.harness.testing.conformance import ClusterConformance
from vecmig.harness.testing.migration import AdapterMigrationTest


class TestTinyEngine(ClusterConformance):
    property_examples = 10


class TestTinyEngineMigration(AdapterMigrationTest):
    pass
'''


@pytest.fixture(scope="module")
def project(source: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(python, project): a venv with vecmig (editable, as the README installs it) and the
    tiny engine installed, and the engine's project directory."""
    base = tmp_path_factory.mktemp("user")
    python = venv(base / "venv")
    pip_install(python, "-e", source)
    project = base / "tinyengine"
    (project / "src" / "tinyengine").mkdir(parents=True)
    (project / "tests").mkdir()
    (project / "pyproject.toml").write_text(TINY_PYPROJECT)
    (project / "src" / "tinyengine" / "__init__.py").write_text(TINY_ADAPTER)
    (project / "tests" / "test_tinyengine.py").write_text(TINY_TESTS)
    pip_install(python, project)
    return python, project


def test_plain_pytest_in_the_users_project_runs_the_suite_and_the_machine(
    project: tuple[Path, Path],
) -> None:
    python, where = project
    done = run([python, "-m", "pytest", "-v", "-p", "no:cacheprovider"], cwd=where)
    out = done.stdout
    plugins = next(line for line in out.splitlines() if line.startswith("plugins:"))
    assert "vecmig-0.2.0" in plugins, plugins  # loaded through its pytest11 entry point
    assert "TestTinyEngineMigration::test_the_safe_migration_on_the_adapter PASSED" in out, out
    assert "TestTinyEngine::test_fencing_is_order_independent PASSED" in out, out
    summary = out.strip().splitlines()[-1]
    assert "failed" not in summary and "skipped" not in summary and "error" not in summary
    assert int(summary.split(" passed")[0].split()[-1]) >= 60, summary


def test_the_suite_fails_an_adapter_that_breaks_the_contract(project: tuple[Path, Path]) -> None:
    python, where = project
    argv = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    argv += ["-k", "reports_applied_or_skipped", "--vecmig-adapter", "tiny://?broken=fencing"]
    done = run(argv, cwd=where, expect=1)
    failed = "FAILED tests/test_tinyengine.py::TestTinyEngine::test_fenced_upsert_reports_applied"
    assert failed in done.stdout, done.stdout[-3000:]
    assert done.stdout.strip().splitlines()[-1].startswith("1 failed, 1 passed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_vecmig_serve_opens_a_side_a_package_registers(
    project: tuple[Path, Path], tmp_path: Path
) -> None:
    python, _ = project
    port = free_port()
    argv = [python, "-m", "vecmig", "serve", "--old", "tiny://?seed=1", "--new", "fake://"]
    argv += ["--dim", "8", "--state", tmp_path / "state.sqlite", "--init", "--port", str(port)]
    server = subprocess.Popen(
        [str(a) for a in argv],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert server.poll() is None, server.communicate()[0]
                assert time.monotonic() < deadline, "the service did not come up"
                time.sleep(0.2)
    finally:
        server.terminate()
        server.wait(timeout=30)
