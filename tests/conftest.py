"""Hypothesis profiles for every property test in the suite.

* `ci` (the default): reproducible (`derandomize`: the same examples on every run), no example
  database, a failure prints its `@reproduce_failure` blob. tests/test_stateful_migration.py
  takes about 25 s on an idle two-core box.
* `deep`: random, ten times the examples and 2.5 times the steps per stateful run, for a long
  local soak; failures are remembered in `.hypothesis/` (git-ignored) and replayed first.

Pick one with `VECMIG_HYPOTHESIS_PROFILE=deep` or `pytest --hypothesis-profile=deep`
(see docs/property-tests.md).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Verbosity, settings

# vecmig's pytest plugin (the vecmig_adapter fixture): pytest loads it through its pytest11
# entry point once vecmig is installed; this loads it in a checkout that is not (and is a
# no-op otherwise: the entry point has the module's name).
pytest_plugins = ["vecmig.harness.testing.plugin"]

settings.register_profile(
    "ci",
    max_examples=100,
    stateful_step_count=40,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "deep",
    max_examples=1_000,
    stateful_step_count=100,
    derandomize=False,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "debug",
    parent=settings.get_profile("ci"),
    max_examples=10,
    verbosity=Verbosity.verbose,
)
settings.load_profile(os.environ.get("VECMIG_HYPOTHESIS_PROFILE", "ci"))
