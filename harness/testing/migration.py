"""The migration state machine between two sides of your adapter.

    from vecmig.harness.testing.migration import AdapterMigrationTest

    class TestMyEngineMigration(AdapterMigrationTest):
        pass

runs `MigrationMachine` (`vecmig.harness.testing.machine`: every interleaving, crash, lagging
instance and failed request the machine draws; node and side faults only touch fake clusters)
with the safe strategy, old and new both made by the pytest plugin's `vecmig_adapter`, for
`vecmig_machine_examples` runs. `AdapterMigration` is the machine with `make_sides` overridden,
nothing else: subclass it to change more (`poll`, how your driver acknowledges phases).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vecmig.harness.clusters.base import ClusterPort, Metric
from vecmig.harness.testing.adapters import MakeSide
from vecmig.harness.testing.machine import DIM, MigrationMachine

if TYPE_CHECKING:
    from hypothesis import settings

__all__ = ["AdapterMigrationTest", "adapter_migration"]


def adapter_migration(make_side: MakeSide) -> type[MigrationMachine]:
    """`MigrationMachine` between two fresh sides of `make_side` (old, then new)."""

    class AdapterMigration(MigrationMachine):
        """The safe migration between two sides made by your adapter."""

        def make_sides(self) -> tuple[ClusterPort, ClusterPort]:
            return make_side(DIM, Metric.COSINE), make_side(DIM, Metric.COSINE)

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
