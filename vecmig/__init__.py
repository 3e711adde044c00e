"""vecmig: a chaos-tested simulation and test harness for migrating a live vector database.

The package installs the repository's three top-level folders under this one name:
`vecmig.harness` (the migration core, clusters and adapters, history and checker, service),
`vecmig.sim` (the SimPy model) and `vecmig.loadtests` (Locust and the chaos controller).
"""

from __future__ import annotations

from pathlib import Path

__version__ = "0.2.0"

# In a source checkout the subpackages are folders beside this one (harness/, sim/,
# loadtests/), which setuptools' package-dir maps under `vecmig` when it builds a wheel. Let a
# checkout import itself the same way without an install (tests run from any worktree):
# search the checkout's root for `vecmig.*` subpackages too.
_root = Path(__file__).resolve().parent.parent
if (
    not (Path(__file__).resolve().parent / "harness").is_dir()
    and (_root / "harness" / "__init__.py").is_file()
):
    __path__.append(str(_root))  # noqa: F821 - a package's __path__ is defined at import
