"""The package's optional parts: which extra installs which libraries, and the one line a
command prints when the extra it needs is missing.

A core install (`pip install vecmig`) runs the checker and the simulator. The rest comes in
extras (pyproject.toml's `[project.optional-dependencies]`; a test keeps the two in step):

    service   `vecmig serve`, `vecmig cluster serve` and the HTTP cluster client
    loadtest  `vecmig loadtest` (Locust), with the service
    plots     the PNG plots of `vecmig simulate` (matplotlib)
    engines   the pgvector, Qdrant and Milvus adapters
    pytest    the pytest plugin: the adapter conformance suite and the migration state machine
    sweep     `vecmig sweep --cluster`: seeds on a Dask cluster

Modules import optional libraries where they use them, never at the top of a module that a
core command loads, so a missing library surfaces as `ModuleNotFoundError` inside a command.
`vecmig.harness.cli` turns that into `MissingExtra`'s message.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Mapping
from types import MappingProxyType

__all__ = ["EXTRAS", "MissingExtra", "as_missing_extra", "extra_for", "installed", "require"]

EXTRAS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "service": ("starlette", "uvicorn", "httptools", "orjson", "httpx", "prometheus_client"),
        "loadtest": ("locust", "gevent"),
        "plots": ("matplotlib",),
        "engines": ("psycopg", "pgvector", "qdrant_client", "pymilvus", "milvus_lite"),
        "pytest": ("pytest", "hypothesis"),
        "sweep": ("dask", "distributed"),
    }
)
"""Top-level import names of the libraries each extra installs (uvloop, which the service
extra installs where it builds, is left out: the service runs without it)."""


class MissingExtra(ImportError):
    """An optional library is not installed; the message names the extra that brings it."""

    def __init__(self, extra: str, module: str, needed_for: str) -> None:
        self.extra = extra
        super().__init__(
            f"{needed_for}: {module} is not installed; "
            f"install the {extra} extra: pip install 'vecmig[{extra}]'",
            name=module,
        )


def extra_for(module: str | None) -> str | None:
    """The extra that installs the top-level package of `module` (a dotted import name), or
    None when no extra does (then a missing module is a bug, not a missing extra)."""
    top = (module or "").partition(".")[0]
    return next((extra for extra, names in EXTRAS.items() if top in names), None)


def require(extra: str, needed_for: str) -> None:
    """Check that every library of `extra` is installed, so that a command with a missing
    extra stops before it starts anything, saying which extra to install. Nothing is
    imported: importing Locust, for one, monkey-patches the process with gevent."""
    for module in EXTRAS[extra]:
        if not installed(module):
            raise MissingExtra(extra, module, needed_for)


def installed(module: str) -> bool:
    """Whether top-level `module` can be imported (found, not imported)."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def as_missing_extra(exc: ImportError, needed_for: str) -> MissingExtra | None:
    """`exc` as a `MissingExtra` when an extra would have installed the missing module, else
    None (a module missing from the package itself, or a library that failed to load)."""
    if isinstance(exc, MissingExtra):
        return exc
    extra = extra_for(exc.name) if isinstance(exc, ModuleNotFoundError) else None
    if extra is None or exc.name is None:
        return None
    return MissingExtra(extra, exc.name.partition(".")[0], needed_for)
