"""vecmig: a chaos-tested simulation and test harness for migrating a live vector database.

The package installs the repository's three top-level folders under this one name:
`vecmig.harness` (the migration core, clusters and adapters, history and checker, service),
`vecmig.sim` (the SimPy model) and `vecmig.loadtests` (Locust and the chaos controller).
What most callers need is here, imported on first use (so `import vecmig` costs nothing):

    verdict = vecmig.check(vecmig.read_jsonl("out/run/history.jsonl"))   # judge a history
    side = vecmig.open_cluster("fake://?shards=2", dim=16)               # a side, by URL
    result = vecmig.Simulation(vecmig.load_scenario("default"), "safe", seed=1).run()

The migration core's own API is `vecmig.harness.core`; the pytest plugin for your adapter is
`vecmig.harness.testing` (docs/property-tests.md).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

if TYPE_CHECKING:
    from vecmig.harness.clusters.base import (
        ClusterError,
        ClusterPort,
        InvalidRequest,
        Metric,
        Record,
        Side,
        Timeout,
        Tombstone,
        Unavailable,
    )
    from vecmig.harness.clusters.fake import FakeCluster
    from vecmig.harness.clusters.registry import open_cluster
    from vecmig.harness.core.phases import Phase
    from vecmig.harness.core.strategy import NAIVE, SAFE, Strategy, strategy_named
    from vecmig.harness.history.checker import ANOMALIES, Verdict, check
    from vecmig.harness.history.ops import Event, MalformedHistory, Recorder, read_jsonl
    from vecmig.harness.history.report import SCHEMA_VERSION
    from vecmig.harness.history.report import build as build_report
    from vecmig.sim.scenario import Scenario, ScenarioError
    from vecmig.sim.scenario import load as load_scenario
    from vecmig.sim.simulation import RunResult, Simulation

_EXPORTS: dict[str, tuple[str, str]] = {
    # judging a history (any engine's)
    "check": ("vecmig.harness.history.checker", "check"),
    "Verdict": ("vecmig.harness.history.checker", "Verdict"),
    "ANOMALIES": ("vecmig.harness.history.checker", "ANOMALIES"),
    "Event": ("vecmig.harness.history.ops", "Event"),
    "Recorder": ("vecmig.harness.history.ops", "Recorder"),
    "read_jsonl": ("vecmig.harness.history.ops", "read_jsonl"),
    "MalformedHistory": ("vecmig.harness.history.ops", "MalformedHistory"),
    "build_report": ("vecmig.harness.history.report", "build"),
    "SCHEMA_VERSION": ("vecmig.harness.history.report", "SCHEMA_VERSION"),
    # the sides of a migration: the port, its records and errors, the fake cluster, URLs
    "ClusterPort": ("vecmig.harness.clusters.base", "ClusterPort"),
    "Record": ("vecmig.harness.clusters.base", "Record"),
    "Tombstone": ("vecmig.harness.clusters.base", "Tombstone"),
    "Metric": ("vecmig.harness.clusters.base", "Metric"),
    "Side": ("vecmig.harness.clusters.base", "Side"),
    "ClusterError": ("vecmig.harness.clusters.base", "ClusterError"),
    "Unavailable": ("vecmig.harness.clusters.base", "Unavailable"),
    "Timeout": ("vecmig.harness.clusters.base", "Timeout"),
    "InvalidRequest": ("vecmig.harness.clusters.base", "InvalidRequest"),
    "FakeCluster": ("vecmig.harness.clusters.fake", "FakeCluster"),
    "open_cluster": ("vecmig.harness.clusters.registry", "open_cluster"),
    # the plan
    "Phase": ("vecmig.harness.core.phases", "Phase"),
    "Strategy": ("vecmig.harness.core.strategy", "Strategy"),
    "SAFE": ("vecmig.harness.core.strategy", "SAFE"),
    "NAIVE": ("vecmig.harness.core.strategy", "NAIVE"),
    "strategy_named": ("vecmig.harness.core.strategy", "strategy_named"),
    # the simulator
    "Simulation": ("vecmig.sim.simulation", "Simulation"),
    "RunResult": ("vecmig.sim.simulation", "RunResult"),
    "Scenario": ("vecmig.sim.scenario", "Scenario"),
    "ScenarioError": ("vecmig.sim.scenario", "ScenarioError"),
    "load_scenario": ("vecmig.sim.scenario", "load"),
}

__all__ = [
    "__version__",
    "check",
    "Verdict",
    "ANOMALIES",
    "Event",
    "Recorder",
    "read_jsonl",
    "MalformedHistory",
    "build_report",
    "SCHEMA_VERSION",
    "ClusterPort",
    "Record",
    "Tombstone",
    "Metric",
    "Side",
    "ClusterError",
    "Unavailable",
    "Timeout",
    "InvalidRequest",
    "FakeCluster",
    "open_cluster",
    "Phase",
    "Strategy",
    "SAFE",
    "NAIVE",
    "strategy_named",
    "Simulation",
    "RunResult",
    "Scenario",
    "ScenarioError",
    "load_scenario",
]
"""The names above, `_EXPORTS` and the imports for type checkers agree (a test checks)."""


def __getattr__(name: str) -> Any:
    """Import an exported name from its module the first time it is asked for."""
    try:
        module, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'vecmig' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


# In a source checkout the subpackages are folders beside this one (harness/, sim/,
# loadtests/), which setuptools' package-dir maps under `vecmig` when it builds a wheel. Let a
# checkout import itself the same way without an install (tests run from any worktree):
# search the checkout's root for `vecmig.*` subpackages too.
_root = Path(__file__).resolve().parent.parent
if (
    not (Path(__file__).resolve().parent / "harness").is_dir()
    and (_root / "harness" / "__init__.py").is_file()
):
    __path__.append(str(_root))  # a package's __path__, defined at import
