"""Core behaviours the simulator found wanting, pinned with the step driver (minimal cases).

Each test is the minimal reproduction of something a simulated run showed; the fix lives in
the core, the test here, beside the simulator that found it.
"""

from __future__ import annotations

from vecmig.harness.core.strategy import SAFE
from vecmig.harness.drive.rig import Rig


def test_a_get_never_falls_back_to_a_side_with_a_pending_repair_for_its_id() -> None:
    """SHADOW: a write's secondary copy to new failed (repair queued for new); old then cannot
    answer a get of that id. Falling back to new would return the older version, a stale
    read; the get must fail instead, since no side can answer it correctly."""
    rig = Rig(SAFE)
    app = rig.add_instance("app")
    rig.sync_all()
    rig.advance_to_shadow()
    record_id = "p000003"
    rig.new.start_fault("error-rate", rate=1.0)
    written = rig.run(app.upsert(rig.record(record_id, 2)))
    rig.new.stop_fault("error-rate")
    assert written.type == "ok" and written.notes.get("repair_queued") == "new"
    rig.old.start_fault("error-rate", rate=1.0)
    read = rig.run(app.get(record_id))
    rig.old.stop_fault("error-rate")
    assert read.type == "fail", read
    rig.heal_and_finish()
    verdict = rig.verdict()
    assert verdict.stale_reads == 0, verdict.examples


def test_a_get_still_falls_back_when_the_fallback_side_is_current() -> None:
    rig = Rig(SAFE)
    app = rig.add_instance("app")
    rig.sync_all()
    rig.advance_to_shadow()
    assert rig.run(app.upsert(rig.record("p000004", 2))).type == "ok"
    rig.old.start_fault("error-rate", rate=1.0)
    read = rig.run(app.get("p000004"))
    rig.old.stop_fault("error-rate")
    assert read.type == "ok" and read.value["version"] == 2 and read.notes["fallback_side"] == "new"
    rig.heal_and_finish()
    assert rig.verdict().valid
