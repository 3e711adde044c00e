"""Session-wide real-engine servers for the adapter conformance tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from .engines import engine_missing, postgres_server


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """A superuser DSN of a throwaway PostgreSQL with pgvector on 127.0.0.1 (stopped at the end)."""
    with ExitStack() as stack:
        try:
            dsn = stack.enter_context(postgres_server())
        except Exception as exc:  # whatever stopped the start, it is reported the same way
            engine_missing(f"cannot start PostgreSQL with pgvector: {exc}")
            raise
        yield dsn
