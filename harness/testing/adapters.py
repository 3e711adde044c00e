"""Which adapter the tests run against: a spec names a factory that makes fresh, empty sides.

A spec is either

    package.module:factory    `factory(dim, metric)` returns a fresh, empty `ClusterPort`
    scheme://...              a URL `open_cluster` opens (vecmig's schemes or one a package
                              registers in the `vecmig.adapters` entry-point group), once per
                              side: each open of it must give a fresh, empty side

The pytest plugin takes it from `--vecmig-adapter`, the `vecmig_adapter` ini option or, last,
the `VECMIG_ADAPTER` environment variable (docs/property-tests.md).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable

from vecmig.harness.clusters.base import ClusterPort, Metric

__all__ = ["ENV", "MakeSide", "adapter_factory", "factory_from_spec"]

ENV = "VECMIG_ADAPTER"

MakeSide = Callable[[int, Metric], ClusterPort]
"""`make_side(dim, metric)`: a fresh, empty side (the conformance suite's `make_cluster`)."""


def factory_from_spec(spec: str, where: str = ENV) -> MakeSide:
    """The factory `spec` names; `where` says where the spec came from, for errors."""
    spec = spec.strip()
    if "://" in spec:
        from vecmig.harness.clusters.registry import open_cluster, schemes

        scheme = spec.partition("://")[0].lower()
        if scheme not in schemes():  # say so now, not in every test
            known = ", ".join(f"{s}://" for s in schemes())
            raise ValueError(
                f"{where}={spec!r}: no adapter has the scheme {scheme!r}; known: {known} "
                "(a package adds one through the vecmig.adapters entry-point group)"
            )

        def open_side(dim: int, metric: Metric) -> ClusterPort:
            return open_cluster(spec, dim, metric)

        return open_side
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(
            f"{where}={spec!r} should read package.module:factory (e.g. mypackage.sides:make_side, "
            "where make_side(dim, metric) returns a fresh, empty side) or be a cluster URL "
            "such as myengine://... (a scheme a package registers in vecmig.adapters)"
        )
    factory = getattr(importlib.import_module(module), name, None)
    if not callable(factory):
        raise ValueError(f"{where}={spec!r}: {module} has no callable {name!r}")
    return factory  # type: ignore[no-any-return]


def adapter_factory() -> MakeSide | None:
    """The factory `VECMIG_ADAPTER` names, or None when it is unset."""
    spec = os.environ.get(ENV, "").strip()
    return factory_from_spec(spec) if spec else None
