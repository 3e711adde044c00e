"""The conformance suite for the adapter named by VECMIG_ADAPTER (one skip while it is unset):

VECMIG_ADAPTER=mypackage.sides:make_side python -m pytest tests/conformance/test_your_adapter.py
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .suite import ClusterConformance, MakeCluster
from .your_adapter import ENV, adapter_factory

if adapter_factory() is None:

    def test_your_adapter() -> None:
        pytest.skip(f"set {ENV}=package.module:factory to run the suite against your adapter")

else:

    class TestYourAdapter(ClusterConformance):
        @pytest.fixture
        def make_cluster(self) -> Iterator[MakeCluster]:
            factory = adapter_factory()
            assert factory is not None
            yield factory
