"""The classic migration races, each as an explicit interleaving under the step driver.

For every race the checker judges the resulting history: the safe strategy must show zero
anomalies, and the naive strategy at least one wherever the race applies to it.
"""

from __future__ import annotations

import pytest

from vecmig.harness.clusters.base import Side, Unavailable
from vecmig.harness.core import requests as rq
from vecmig.harness.core.phases import Phase, Step
from vecmig.harness.core.strategy import NAIVE, SAFE, Strategy
from vecmig.harness.core.workers import Backfill, Throttle, repair_pass
from vecmig.harness.drive.rig import LEASE_NS, Rig
from vecmig.harness.history.checker import Verdict
from vecmig.harness.state import SQLiteStore

BOTH = pytest.mark.parametrize("strategy", [SAFE, NAIVE], ids=["safe", "naive"])


def anomalies(verdict: Verdict) -> int:
    return sum(verdict.counts().values())


def expect(strategy: Strategy, verdict: Verdict) -> None:
    if strategy is SAFE:
        assert verdict.valid, verdict.to_json()
    else:
        assert anomalies(verdict) > 0, verdict.to_json()


def to_backfill(rig: Rig) -> None:
    for _ in range(2):
        assert rig.step_phase().type == "ok"
        rig.sync_all()
    assert rig.coordinator.published.phase is Phase.BACKFILL


def to_cutover(rig: Rig) -> None:
    """From BACKFILL: finish the copy, drain repairs, and step through SHADOW to CUTOVER."""
    rig.finish_backfill()
    rig.drain_repairs()
    for target in (Phase.SHADOW, Phase.CUTOVER):
        outcome = rig.step_phase()
        assert outcome.type == "ok", outcome.value
        rig.sync_all()
        assert rig.coordinator.published.phase is target


def is_upsert_to_new(request: object) -> bool:
    return isinstance(request, rq.Upsert) and request.side is Side.NEW


@BOTH
def test_a_backfill_never_overwrites_a_newer_live_write(strategy: Strategy) -> None:
    """(a) The backfill read v1 from old; a live write of v2 reaches both sides; the backfill
    then writes v1 to new. Fenced, the copy is skipped; unfenced, new goes back to v1."""
    rig = Rig(strategy)
    app = rig.add_instance("app")
    to_backfill(rig)
    batch = rig.driver.start(rig.backfill.batch(rig.coordinator.published.epoch))
    rig.driver.run_until(batch, is_upsert_to_new)
    assert rig.run(app.upsert(rig.record("p000001", 2))).type == "ok"
    rig.driver.run(batch)
    to_cutover(rig)
    assert rig.run(app.get("p000001")).value == {"id": "p000001", "version": 2} or strategy is NAIVE
    rig.heal_and_finish()
    expect(strategy, rig.verdict())


@BOTH
def test_b_a_delete_during_backfill_stays_deleted(strategy: Strategy) -> None:
    """(b) The backfill read a record; it is deleted on both sides; the backfill then copies
    the record it read. A tombstone on new fences the copy out; without one it comes back."""
    rig = Rig(strategy)
    app = rig.add_instance("app")
    to_backfill(rig)
    batch = rig.driver.start(rig.backfill.batch(rig.coordinator.published.epoch))
    rig.driver.run_until(batch, is_upsert_to_new)
    assert rig.run(app.delete("p000002", 3)).type == "ok"
    rig.driver.run(batch)
    to_cutover(rig)
    got = rig.run(app.get("p000002"))
    if strategy is SAFE:
        assert got.value == {"id": "p000002", "version": None}
    rig.heal_and_finish()
    expect(strategy, rig.verdict())


@BOTH
def test_c_a_failed_secondary_write_is_repaired_before_cutover(strategy: Strategy) -> None:
    """(c) In SHADOW the write to new fails. The safe layer queues a durable repair, the
    CUTOVER gate holds until it is applied; the naive plan forgets the write on new."""
    rig = Rig(strategy)
    app = rig.add_instance("app")
    to_backfill(rig)
    rig.finish_backfill()
    assert rig.step_phase().type == "ok"
    rig.sync_all()
    write = rig.driver.start(app.upsert(rig.record("p000003", 2)))
    rig.driver.run_until(write, is_upsert_to_new)
    rig.driver.step(write, error=Unavailable("new: injected"))
    assert rig.driver.run(write).type == "ok"
    if strategy is SAFE:
        assert rig.store.repair_backlog() == 1
        held = rig.step_phase()
        assert held.type == "fail"
        assert "repair log holds 1 entries" in str(held.value)
        rig.run(repair_pass())
    assert rig.step_phase().type == "ok"
    rig.sync_all()
    assert rig.coordinator.published.phase is Phase.CUTOVER
    rig.run(app.get("p000003"))
    rig.heal_and_finish()
    expect(strategy, rig.verdict())


@BOTH
def test_d_an_instance_that_learns_dual_write_late_loses_no_write(strategy: Strategy) -> None:
    """(d) Instance `late` has not learned DUAL_WRITE when the backfill would start. The safe
    controller waits for its acknowledgement or for its lease to run out, and an instance
    whose lease ran out refuses writes. The naive plan starts the backfill anyway and the
    late instance's write reaches old only, after the copy passed that id."""
    rig = Rig(strategy)
    app = rig.add_instance("app")
    late = rig.add_instance("late")
    assert rig.step_phase().type == "ok"
    rig.sync("app")
    attempt = rig.step_phase()
    if strategy is SAFE:
        assert attempt.type == "fail"
        assert "late" in str(attempt.value)
        rig.driver.advance_time(LEASE_NS + 1)
        rig.sync("app")
        attempt = rig.step_phase()
    assert attempt.type == "ok", attempt.value
    rig.sync("app")
    rig.finish_backfill()
    outcome = rig.run(late.upsert(rig.record("p000005", 2)))
    assert (outcome.type == "fail") is (strategy is SAFE)
    to_cutover(rig)
    rig.run(app.get("p000005"))
    rig.heal_and_finish()
    expect(strategy, rig.verdict())
    assert not rig.coordinator.adjacency_violations(rig.driver.time) or strategy is NAIVE


@BOTH
def test_e_a_read_on_a_lagging_new_side_is_made_fresh(strategy: Strategy) -> None:
    """(e) After cutover new makes writes searchable only on refresh. A re-embedded product
    is still found at its old version; the safe layer corrects it from the visibility window."""
    rig = Rig(strategy, lagged=frozenset({Side.NEW}))
    app = rig.add_instance("app")
    to_backfill(rig)
    to_cutover(rig)
    rig.new.start_fault("visibility-lag")
    old_vector = rig.catalog.records()[7].vector
    assert rig.run(app.upsert(rig.record("p000007", 2))).type == "ok"
    found = rig.run(app.search(old_vector, 10))
    versions = {hit[0]: hit[1] for hit in found.value["results"]}
    if strategy is SAFE:
        assert versions.get("p000007", 2) == 2
    rig.heal_and_finish()
    expect(strategy, rig.verdict())


@BOTH
def test_f_a_layer_crash_mid_backfill_resumes_from_its_checkpoint(
    strategy: Strategy, tmp_path: object
) -> None:
    """(f) The layer dies in the middle of a batch, while live writes go on; a new process
    opens the same SQLite state and resumes from the checkpoint (safe), or the naive worker
    starts over from the beginning and copies stale snapshots over newer writes."""
    path = f"{tmp_path}/state.db"
    rig = Rig(strategy, store=SQLiteStore(path))
    app = rig.add_instance("app")
    to_backfill(rig)
    rig.run(rig.backfill.batch(rig.coordinator.published.epoch))
    before = rig.store.load_checkpoint()
    batch = rig.driver.start(rig.backfill.batch(rig.coordinator.published.epoch))
    rig.driver.run_until(batch, is_upsert_to_new)
    rig.driver.crash(batch)
    # The layer restarts: new store handle on the same file, a new backfill worker.
    rig.store = rig.driver.store = SQLiteStore(path)
    rig.backfill = Backfill(strategy, Throttle(batch_size=16, unthrottled=True))
    rig.controller.backfill = rig.backfill
    if strategy is SAFE:
        assert rig.store.load_checkpoint() == before
        assert before.cursor is not None and before.copied == 16
    restarted = rig.driver.start(rig.backfill.batch(rig.coordinator.published.epoch))
    rig.driver.run_until(restarted, is_upsert_to_new)
    assert rig.run(app.upsert(rig.record("p000001", 2))).type == "ok"
    rig.driver.run(restarted)
    to_cutover(rig)
    rig.run(app.get("p000001"))
    rig.heal_and_finish()
    expect(strategy, rig.verdict())


@BOTH
def test_g_a_rollback_after_cutover_finds_old_current(strategy: Strategy) -> None:
    """(g) Writes after cutover must reach old too, so that ROLLBACK is one step."""
    rig = Rig(strategy)
    app = rig.add_instance("app")
    to_backfill(rig)
    to_cutover(rig)
    assert rig.run(app.upsert(rig.record("p000009", 2))).type == "ok"
    assert rig.run(app.delete("p000010", 2)).type == "ok"
    assert rig.step_phase(Step.ROLLBACK).type == "ok"
    rig.sync_all()
    assert rig.coordinator.published.phase is Phase.SHADOW
    got = rig.run(app.get("p000009"))
    if strategy is SAFE:
        assert got.value == {"id": "p000009", "version": 2}
    rig.heal_and_finish()
    expect(strategy, rig.verdict())


def test_a_read_during_a_pending_repair_takes_the_newer_side() -> None:
    """While a repair to new is pending, an instance already in CUTOVER (reading new) must not
    serve the old version that new still holds: it reads both sides and keeps the newer."""
    rig = Rig(SAFE)
    shadow = rig.add_instance("shadow")
    cut = rig.add_instance("cut")
    to_backfill(rig)
    rig.finish_backfill()
    assert rig.step_phase().type == "ok"
    rig.sync_all()
    assert rig.step_phase().type == "ok"  # CUTOVER published; `shadow` has not learned it
    rig.sync("cut")
    write = rig.driver.start(shadow.upsert(rig.record("p000004", 2)))
    rig.driver.run_until(write, is_upsert_to_new)
    rig.driver.step(write, error=Unavailable("new: injected"))
    assert rig.driver.run(write).type == "ok"
    assert rig.run(cut.get("p000004")).value == {"id": "p000004", "version": 2}
    hits = rig.run(cut.search(rig.catalog.records()[4].vector, 5)).value["results"]
    assert all(version == 2 for record_id, version, _ in hits if record_id == "p000004")
    rig.sync_all()
    rig.heal_and_finish()
    assert rig.verdict().valid, rig.verdict().to_json()


def test_an_abort_then_a_fresh_attempt_copies_and_verifies_again() -> None:
    """After ABORT, new missed every later write; a second attempt must backfill from the
    start and pass verification again, never trusting the first attempt's checkpoint."""
    rig = Rig(SAFE)
    app = rig.add_instance("app")
    to_backfill(rig)
    rig.finish_backfill()
    assert rig.step_phase(Step.ABORT).type == "ok"
    rig.sync_all()
    assert rig.store.load_checkpoint().done is False
    assert rig.run(app.upsert(rig.record("p000011", 2))).type == "ok"  # old only now
    assert rig.run(app.delete("p000012", 2)).type == "ok"
    to_backfill(rig)
    to_cutover(rig)
    assert rig.run(app.get("p000011")).value == {"id": "p000011", "version": 2}
    assert rig.run(app.get("p000012")).value == {"id": "p000012", "version": None}
    rig.heal_and_finish()
    assert rig.verdict().valid, rig.verdict().to_json()


def test_a_repair_to_a_lagging_side_is_corrected_in_searches() -> None:
    """A repair applied to a side whose searches lag is not searchable yet when its entry is
    removed: it must enter the visibility window like a client write, or the superseded
    version would be served once reads move to that side."""
    lagged = frozenset({Side.NEW})
    rig = Rig(SAFE, lagged=lagged)
    app = rig.add_instance("app")
    to_backfill(rig)
    rig.finish_backfill()
    assert rig.step_phase().type == "ok"
    rig.sync_all()
    rig.new.start_fault("visibility-lag")
    write = rig.driver.start(app.upsert(rig.record("p000006", 2)))
    rig.driver.run_until(write, is_upsert_to_new)
    rig.driver.step(write, error=Unavailable("new: injected"))
    assert rig.driver.run(write).type == "ok"
    rig.run(repair_pass(lagged=lagged))
    assert rig.store.repair_backlog() == 0
    assert rig.step_phase().type == "ok"
    rig.sync_all()
    assert rig.coordinator.published.phase is Phase.CUTOVER
    found = rig.run(app.search(rig.catalog.records()[6].vector, 10)).value["results"]
    assert [v for i, v, _ in found if i == "p000006"] == [2]
    rig.heal_and_finish()
    assert rig.verdict().valid, rig.verdict().to_json()


def test_an_instance_acknowledges_only_the_oldest_phase_it_still_runs_an_operation_under() -> None:
    """An upsert started in OLD_ONLY keeps its route (old only) while in flight. Its instance
    must not acknowledge DUAL_WRITE until it finishes, or the backfill could start, pass the
    id, and the upsert land on old alone."""
    rig = Rig(SAFE)
    app = rig.add_instance("app")
    write = rig.driver.start(app.upsert(rig.record("p000000", 2)))
    assert rig.step_phase().type == "ok"
    rig.sync("app")
    assert app.view.phase is Phase.DUAL_WRITE
    assert app.acknowledgement().phase is Phase.OLD_ONLY
    held = rig.step_phase()
    assert held.type == "fail" and "app" in str(held.value)
    assert rig.driver.run(write).type == "ok"
    rig.sync("app")
    to_backfill_from_dual_write = rig.step_phase()
    assert to_backfill_from_dual_write.type == "ok"
    rig.sync_all()
    to_cutover(rig)
    assert rig.run(app.get("p000000")).value == {"id": "p000000", "version": 2}
    rig.heal_and_finish()
    assert rig.verdict().valid, rig.verdict().to_json()


def test_a_request_outliving_its_instance_lease_times_out_instead_of_landing() -> None:
    """Leases assume bounded delay: with every request bounded below the lease margin, an
    upsert issued under OLD_ONLY by an instance that then loses touch cannot land on old
    alone after the coordinator counted the instance out and the migration moved on."""
    from vecmig.harness.drive.rig import LEASE_NS, REQUEST_TIMEOUT_NS

    rig = Rig(SAFE, request_timeout_ns=REQUEST_TIMEOUT_NS)
    lost = rig.add_instance("lost")
    other = rig.add_instance("other")
    write = rig.driver.start(lost.upsert(rig.record("p000000", 2)))
    rig.driver.advance_time(LEASE_NS + 1)
    rig.sync("other")
    for _ in range(2):
        assert rig.step_phase().type == "ok"
        rig.sync("other")
    rig.finish_backfill()
    for _ in range(2):
        assert rig.step_phase().type == "ok"
        rig.sync("other")
    assert rig.coordinator.published.phase is Phase.CUTOVER
    outcome = rig.driver.run(write)
    assert outcome.type == "info"
    rig.run(other.get("p000000"))
    rig.heal_and_finish()
    assert rig.verdict().valid, rig.verdict().to_json()


def test_a_write_new_lost_in_shadow_is_found_before_cutover() -> None:
    """new acknowledges writes during SHADOW and silently drops some (lost-ack): the CUTOVER
    gate verifies again, repairs, and only then moves reads to new."""
    rig = Rig(SAFE)
    app = rig.add_instance("app")
    to_backfill(rig)
    rig.finish_backfill()
    assert rig.step_phase().type == "ok"
    rig.sync_all()
    rig.new.start_fault("lost-ack", rate=1.0)
    assert rig.run(app.upsert(rig.record("p000008", 2))).type == "ok"
    rig.new.stop_fault("lost-ack")
    first = rig.step_phase()
    assert first.type == "fail", "the gate must see the lost write"
    assert "verification found 1 differing id(s)" in str(first.value)
    assert rig.step_phase().type == "ok"
    rig.sync_all()
    assert rig.run(app.get("p000008")).value == {"id": "p000008", "version": 2}
    rig.heal_and_finish()
    assert rig.verdict().valid, rig.verdict().to_json()


def test_abort_holds_while_a_repair_toward_old_cannot_be_applied() -> None:
    """ABORT makes old the only side: a write that reached new but not old must be repaired
    onto old first. While old refuses the repair, the step holds and says why."""
    rig = Rig(SAFE)
    app = rig.add_instance("app")
    to_backfill(rig)
    to_cutover(rig)
    write = rig.driver.start(app.delete("p000001", 3))
    rig.driver.run_until(write, lambda r: isinstance(r, rq.Delete) and r.side is Side.OLD)
    rig.driver.step(write, error=Unavailable("old: injected"))
    assert rig.driver.run(write).type == "ok"
    assert rig.step_phase(Step.ROLLBACK).type == "ok"
    rig.sync_all()
    rig.old.start_fault("error-rate", rate=1.0)
    held = rig.step_phase(Step.ABORT)
    assert held.type == "fail"
    assert "1 repair(s) toward old still pending" in str(held.value)
    rig.old.stop_fault("error-rate")
    assert rig.step_phase(Step.ABORT).type == "ok"
    rig.sync_all()
    assert rig.run(app.get("p000001")).value == {"id": "p000001", "version": None}
    rig.heal_and_finish()
    assert rig.verdict().valid, rig.verdict().to_json()
