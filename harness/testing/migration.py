"""The migration state machine between two sides of your adapter.

    from vecmig.harness.testing.migration import AdapterMigrationTest

    class TestMyEngineMigration(AdapterMigrationTest):
        pass

runs `MigrationMachine` (every interleaving, crash, lagging instance and failed request the
machine draws; node and side faults only touch fake clusters) with the safe strategy, old and
new both made by the pytest plugin's `vecmig_adapter`, for `vecmig_machine_examples` runs.
`AdapterMigration` is the machine with `make_sides` overridden, nothing else: subclass it to
change more (`poll`, how your driver acknowledges phases).

The machine lives in `vecmig.harness.testing.machine`; in a checkout of vecmig older than that
module it is found in the checkout's tests/test_stateful_migration.py.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from vecmig.harness.clusters.base import ClusterPort, Metric
from vecmig.harness.testing.adapters import MakeSide

if TYPE_CHECKING:
    from hypothesis import settings

__all__ = ["AdapterMigrationTest", "adapter_migration", "machine_module"]

PACKAGE_MACHINE = "vecmig.harness.testing.machine"
CHECKOUT_MACHINE = "test_stateful_migration"


def machine_module() -> ModuleType:
    """The module that defines `MigrationMachine` (and `DIM`, the dimension it uses)."""
    try:
        return importlib.import_module(PACKAGE_MACHINE)
    except ModuleNotFoundError as exc:
        if exc.name != PACKAGE_MACHINE:
            raise
    import vecmig

    tests = Path(vecmig.__file__).resolve().parents[1] / "tests"
    if not (tests / f"{CHECKOUT_MACHINE}.py").is_file():
        raise ModuleNotFoundError(
            f"this vecmig has no {PACKAGE_MACHINE} and is not a checkout with "
            f"tests/{CHECKOUT_MACHINE}.py: install a vecmig that ships the state machine",
            name=PACKAGE_MACHINE,
        )
    if str(tests) not in sys.path:
        sys.path.insert(0, str(tests))
    return importlib.import_module(CHECKOUT_MACHINE)


def adapter_migration(make_side: MakeSide) -> type[Any]:
    """`MigrationMachine` between two fresh sides of `make_side` (old, then new)."""
    machine = machine_module()

    class AdapterMigration(machine.MigrationMachine):  # type: ignore[misc, name-defined]
        """The safe migration between two sides made by your adapter."""

        def make_sides(self) -> tuple[ClusterPort, ClusterPort]:
            return make_side(machine.DIM, Metric.COSINE), make_side(machine.DIM, Metric.COSINE)

    return AdapterMigration


class AdapterMigrationTest:
    """Subclass this in a test module to run the migration state machine on your adapter."""

    def test_the_safe_migration_on_the_adapter(
        self, vecmig_adapter: MakeSide, vecmig_machine_settings: settings
    ) -> None:
        from hypothesis.stateful import run_state_machine_as_test

        run_state_machine_as_test(
            adapter_migration(vecmig_adapter), settings=vecmig_machine_settings
        )
