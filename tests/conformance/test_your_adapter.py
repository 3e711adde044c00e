"""The conformance suite and the migration state machine on the adapter the pytest plugin is
given (skipped, saying how, while it is given none):

    python -m pytest tests/conformance/test_your_adapter.py --vecmig-adapter=mypkg.sides:make_side
    VECMIG_ADAPTER=myengine://... python -m pytest tests/conformance/test_your_adapter.py

Your own project needs no vecmig checkout for this: the same two classes, subclassed in a test
module of its own, run there (docs/property-tests.md).
"""

from __future__ import annotations

import pytest

from vecmig.harness.testing.conformance import ClusterConformance
from vecmig.harness.testing.migration import AdapterMigrationTest
from vecmig.harness.testing.plugin import NO_ADAPTER, adapter_given

if not adapter_given():
    pytest.skip(NO_ADAPTER, allow_module_level=True)


class TestYourAdapter(ClusterConformance):
    pass


class TestYourAdapterMigration(AdapterMigrationTest):
    pass
