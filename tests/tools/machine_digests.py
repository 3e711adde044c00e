"""Print one digest per example the state machine runs under the ci profile (a history's
sha256), so that two processes can be compared: `python tests/tools/machine_digests.py N`."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import conftest  # noqa: F401 - registers and loads the Hypothesis profiles
import test_stateful_migration as machine
from hypothesis import settings
from hypothesis.stateful import run_state_machine_as_test


class Digested(machine.MigrationMachine):
    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            events = "".join(e.to_json() for e in self.rig.recorder.events)
            print(hashlib.sha256(events.encode()).hexdigest()[:16], flush=True)


if __name__ == "__main__":
    examples = int(sys.argv[1])
    run_state_machine_as_test(
        Digested, settings=settings(machine.TestSafeMigration.settings, max_examples=examples)
    )
