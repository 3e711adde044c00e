"""vecmig's pytest plugin: run the adapter conformance suite and the migration state machine
against your adapter, from your own project, with plain `pytest`.

Installed with vecmig (`pip install 'vecmig[pytest]'`), pytest loads it through the `pytest11`
entry point `vecmig.harness.testing.plugin`. It adds two fixtures and their options:

    vecmig_adapter            the factory `make_side(dim, metric)` the tests build sides with:
                              --vecmig-adapter=SPEC, or `vecmig_adapter = SPEC` in the ini
                              file ([tool.pytest.ini_options]), or VECMIG_ADAPTER=SPEC; SPEC is
                              package.module:factory or a URL such as myengine://...
                              (`vecmig.harness.testing.adapters`). Tests that use it are
                              skipped, saying how to set it, while none is given.
    vecmig_machine_settings   Hypothesis settings for the state machine: the active profile
                              with --vecmig-machine-examples=N (ini vecmig_machine_examples)
                              runs, no deadline.

Your tests subclass what the suites offer (override `make_cluster` or `vecmig_adapter` in a
conftest.py to build sides in code):

    from vecmig.harness.testing.conformance import ClusterConformance
    from vecmig.harness.testing.migration import AdapterMigrationTest

    class TestMyEngine(ClusterConformance): ...
    class TestMyEngineMigration(AdapterMigrationTest): ...

This module imports only pytest when pytest loads it: it is loaded in every pytest run of an
environment where vecmig is installed.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from hypothesis import settings

    from vecmig.harness.testing.adapters import MakeSide

ADAPTER_OPTION = "vecmig_adapter"
EXAMPLES_OPTION = "vecmig_machine_examples"
ENV = "VECMIG_ADAPTER"  # the same as vecmig.harness.testing.adapters.ENV, without its imports


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("vecmig", "vecmig: the conformance suite and state machine")
    group.addoption(
        "--vecmig-adapter",
        dest=ADAPTER_OPTION,
        metavar="SPEC",
        help="the adapter to test: package.module:factory, where factory(dim, metric) returns a "
        f"fresh, empty side, or a cluster URL (myengine://...); default: ${ENV}",
    )
    parser.addini(ADAPTER_OPTION, "the adapter to test, as --vecmig-adapter", default="")
    group.addoption(
        "--vecmig-machine-examples",
        dest=EXAMPLES_OPTION,
        type=int,
        metavar="N",
        help="runs of the migration state machine (default: the Hypothesis profile's max_examples)",
    )
    parser.addini(EXAMPLES_OPTION, "runs of the state machine, as --vecmig-machine-examples")


_session_config: list[pytest.Config] = []
"""The running session's config, for `adapter_given` (a module cannot reach it otherwise)."""


def pytest_configure(config: pytest.Config) -> None:
    _session_config[:] = [config]


def pytest_unconfigure(config: pytest.Config) -> None:
    if _session_config and _session_config[0] is config:
        _session_config.clear()


def adapter_given() -> bool:
    """Whether the running session names an adapter: a test module can skip itself whole
    (`pytest.skip(..., allow_module_level=True)`) instead of every test one by one."""
    return bool(_session_config) and adapter_spec(_session_config[0]) is not None


NO_ADAPTER = (
    "no adapter to test: give one with --vecmig-adapter=package.module:factory (or a URL such "
    f"as myengine://...), `{ADAPTER_OPTION} = ...` in the ini file, or {ENV}"
)


def adapter_spec(config: pytest.Config) -> tuple[str, str] | None:
    """The adapter spec in effect and where it was given, or None when none is."""
    given = config.getoption(ADAPTER_OPTION)
    if given:
        return given, "--vecmig-adapter"
    ini = str(config.getini(ADAPTER_OPTION) or "").strip()
    if ini:
        return ini, f"the ini option {ADAPTER_OPTION}"
    env = os.environ.get(ENV, "").strip()
    return (env, ENV) if env else None


@pytest.fixture(scope="session")
def vecmig_adapter(pytestconfig: pytest.Config) -> MakeSide:
    """`make_side(dim, metric)`: a fresh, empty side of the adapter under test."""
    from vecmig.harness.testing.adapters import factory_from_spec

    found = adapter_spec(pytestconfig)
    if found is None:
        pytest.skip(NO_ADAPTER)
    spec, where = found
    try:
        return factory_from_spec(spec, where)
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


@pytest.fixture(scope="session")
def vecmig_machine_settings(pytestconfig: pytest.Config) -> settings:
    """Settings for a run of the migration state machine on the adapter."""
    from hypothesis import HealthCheck, settings

    examples = pytestconfig.getoption(EXAMPLES_OPTION) or pytestconfig.getini(EXAMPLES_OPTION)
    profile = settings()  # the active profile's settings
    return settings(
        profile,
        max_examples=int(examples) if examples else profile.max_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
