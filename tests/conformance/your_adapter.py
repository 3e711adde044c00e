"""Your adapter, named by the environment: `VECMIG_ADAPTER=package.module:factory`, where
`factory(dim, metric)` returns a fresh, empty `ClusterPort` (the conformance suite's
`make_cluster` shape). Used by `test_your_adapter.py` and by the migration state machine
(`tests/test_stateful_migration.py`); see docs/property-tests.md.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable

from vecmig.harness.clusters.base import ClusterPort, Metric

ENV = "VECMIG_ADAPTER"

MakeSide = Callable[[int, Metric], ClusterPort]


def adapter_factory() -> MakeSide | None:
    """The factory VECMIG_ADAPTER names, or None when it is unset."""
    spec = os.environ.get(ENV, "").strip()
    if not spec:
        return None
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(
            f"{ENV}={spec!r} should read package.module:factory, e.g. "
            "mypackage.sides:make_side, where make_side(dim, metric) returns a fresh, empty side"
        )
    factory = getattr(importlib.import_module(module), name, None)
    if not callable(factory):
        raise ValueError(f"{ENV}={spec!r}: {module} has no callable {name!r}")
    return factory  # type: ignore[no-any-return]
