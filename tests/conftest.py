"""Hypothesis profiles for every property test in the suite.

* `ci` (the default): reproducible (`derandomize`: the same examples on every run), no example
  database, a failure prints its `@reproduce_failure` blob. The stateful migration test runs
  about a minute on two cores.
* `deep`: many more and longer random runs for a local soak, remembering failures in
  `.hypothesis/` (git-ignored) so that the next run replays them first.

Pick one with `VECMIG_HYPOTHESIS_PROFILE=deep` or `pytest --hypothesis-profile=deep`
(see docs/property-tests.md).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Verbosity, settings

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
    max_examples=3_000,
    stateful_step_count=120,
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
