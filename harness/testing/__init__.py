"""Test machinery that ships with the package: the migration state machine
(`vecmig.harness.testing.machine`) and the search that shrinks its failures
(`vecmig.harness.testing.shrink`), used by the test suite and by `vecmig zoo`."""
