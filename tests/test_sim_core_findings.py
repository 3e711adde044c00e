"""Core behaviours the simulator found wanting, pinned with the step driver (minimal cases).

Each test is the minimal reproduction of something a simulated run showed; the fix lives in
the core, the test here, beside the simulator that found it.
"""

from __future__ import annotations

from vecmig.harness.clusters.base import Side, Timeout
from vecmig.harness.core import requests as rq
from vecmig.harness.core import workers
from vecmig.harness.core.layer import MigrationLayer, Outcome
from vecmig.harness.core.phases import Phase
from vecmig.harness.core.strategy import SAFE
from vecmig.harness.drive.rig import REQUEST_TIMEOUT_NS, Rig


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


# ---------------------------------------------------------------------------------------------
# Issue 10, finding 4: a get that could answer must not fail.


def _cutover_with_a_straggler() -> tuple[Rig, MigrationLayer, MigrationLayer]:
    """CUTOVER is published and `app` runs it; `slow` still runs SHADOW (one step behind)."""
    rig = Rig(SAFE)
    app = rig.add_instance("app")
    slow = rig.add_instance("slow")
    rig.sync_all()
    rig.advance_to_shadow()
    assert rig.step_phase().type == "ok"
    rig.sync("app")
    assert (app.view.phase, slow.view.phase) == (Phase.CUTOVER, Phase.SHADOW)
    return rig, app, slow


def test_a_get_answers_from_new_when_only_an_indeterminate_write_may_be_missing_there() -> None:
    """`slow` (SHADOW: old is primary) writes p000005; old times out, so the client gets info
    and an indeterminate repair toward new is queued. A get in CUTOVER reads both sides for
    that id; old cannot answer. New misses at most a write nobody was told succeeded, so its
    answer is a correct one: the get must not fail (it did, for seconds, before)."""
    rig, app, slow = _cutover_with_a_straggler()
    write = rig.driver.start(slow.upsert(rig.record("p000005", 2)))
    rig.driver.run_until(write, lambda r: isinstance(r, rq.Upsert) and r.side is Side.OLD)
    rig.driver.step(write, error=Timeout("old: injected"))
    assert rig.driver.run(write).type == "info"
    assert rig.store.pending_for([("p000005", Side.NEW)]) == {("p000005", Side.NEW): True}
    rig.old.start_fault("error-rate", rate=1.0)
    read = rig.run(app.get("p000005"))
    rig.old.stop_fault("error-rate")
    assert read.type == "ok" and read.value == {"id": "p000005", "version": 1}, read
    rig.heal_and_finish()
    assert rig.verdict().valid, rig.verdict().to_json()


def test_a_get_fails_when_new_may_miss_an_acknowledged_write() -> None:
    """The contrast: `slow`'s write reaches old (acknowledged) but not new (a determinate
    repair toward new). Old cannot answer the CUTOVER get: new alone would be stale."""
    rig, app, slow = _cutover_with_a_straggler()
    rig.new.start_fault("error-rate", rate=1.0)
    written = rig.run(slow.upsert(rig.record("p000005", 2)))
    rig.new.stop_fault("error-rate")
    assert written.type == "ok" and written.notes["repair_queued"] == "new"
    rig.old.start_fault("error-rate", rate=1.0)
    read = rig.run(app.get("p000005"))
    rig.old.stop_fault("error-rate")
    assert read.type == "fail", read
    assert rig.run(app.get("p000005")).value == {"id": "p000005", "version": 2}
    rig.heal_and_finish()
    verdict = rig.verdict()
    assert verdict.stale_reads == 0 and verdict.failed_reads == 1, verdict.to_json()


# ---------------------------------------------------------------------------------------------
# Issue 10, finding 9: a search corrected by a side it could not read.


def test_a_search_that_falls_back_to_old_drops_an_id_whose_repair_it_cannot_check() -> None:
    """The path the 64-user load test's stale read was traced to, reduced. CUTOVER: a delete
    is acknowledged while the path to old fails, so old still holds the record and a repair
    toward old is queued. A search then fails on new (a 20% error rate under load) and falls
    back to old, which returns the deleted record; checking it against the pending repair
    needs new, which fails again. The hit must not be served. (The code before issue 10
    passed this reduction too: its `except` dropped every pending id. What made the load test
    stale under 64 users is not pinned by a step-driver case; five 64-user runs are its
    replay, in the issue's note.)"""
    rig = Rig(SAFE)
    app = rig.add_instance("app")
    rig.sync_all()
    rig.advance_to_shadow()
    assert rig.step_phase().type == "ok"
    rig.sync("app")
    assert app.view.phase is Phase.CUTOVER
    target = "p000007"
    rig.old.start_fault("error-rate", rate=1.0)
    deleted = rig.run(app.delete(target, 2))
    rig.old.stop_fault("error-rate")
    assert deleted.type == "ok" and deleted.notes.get("repair_queued") == "old", deleted
    rig.new.start_fault("error-rate", rate=1.0)
    found = rig.run(app.search(rig.record(target, 1).vector, 5))
    rig.new.stop_fault("error-rate")
    if found.type == "ok":
        assert target not in [hit[0] for hit in found.value["results"]], found
    rig.heal_and_finish()
    verdict = rig.verdict()
    assert verdict.stale_reads == 0, verdict.to_json()


# ---------------------------------------------------------------------------------------------
# Found by the zoo's state machine: a write whose intent took longer to note than its hold.


def _dual_write_stuck_on_its_intent(*, seconds: int, renew: bool) -> tuple[Rig, Outcome]:
    """DUAL_WRITE: `app` upserts p000001; the state store takes `seconds` to answer the note
    of the write's intent for new (store requests have no deadline of their own), longer than
    the intent's hold (5 s); with `renew` the instance keeps renewing its lease (10 s)
    meanwhile."""
    rig = Rig(SAFE)
    app = rig.add_instance("app")
    rig.sync_all()
    assert rig.step_phase().type == "ok"
    rig.sync_all()
    assert app.view.phase is Phase.DUAL_WRITE
    write = rig.driver.start(app.upsert(rig.record("p000001", 2)))
    rig.driver.run_until(write, lambda r: isinstance(r, rq.AddIntent))
    for _ in range(seconds):
        rig.driver.advance_time(1_000_000_000)
        if renew:
            rig.sync("app")
    return rig, rig.driver.run(write)


def test_a_write_whose_intent_was_noted_after_its_lease_lapsed_writes_nothing() -> None:
    rig, outcome = _dual_write_stuck_on_its_intent(seconds=11, renew=False)
    assert outcome.type == "fail" and outcome.notes == {"refused": "lease"}, outcome
    assert rig.old.get(["p000001"])["p000001"].version == 1
    assert not rig.store.pending_for([("p000001", Side.NEW)])  # the intent is withdrawn


def test_a_write_whose_intent_hold_ran_out_before_it_was_sent_writes_nothing() -> None:
    """Were it sent now, the repair worker might already have taken the intent (copying
    old's version 1 to new), and an instance dying after the primary write would leave old
    at 2 and new at 1 with nothing to repair them: the divergence the zoo found."""
    rig, outcome = _dual_write_stuck_on_its_intent(seconds=6, renew=True)
    assert outcome.type == "fail" and outcome.notes == {"refused": "intent-hold"}, outcome
    assert rig.old.get(["p000001"])["p000001"].version == 1
    rig.heal_and_finish()
    assert rig.verdict().valid, rig.verdict().to_json()


def _intent_noted_at(past_margin_ns: int, skew_ns: int) -> tuple[Rig, int]:
    """DUAL_WRITE: `app`, its clock `skew_ns` behind, upserts p000001 (version 2); the store
    answers the note of its intent for new when `app`'s clock reads `past_margin_ns` past the
    hold less the lease margin (the last moment the intent check lets a write go)."""
    rig = Rig(SAFE, request_timeout_ns=REQUEST_TIMEOUT_NS)
    rig.skews["app"] = -skew_ns
    app = rig.add_instance("app")
    rig.sync_all()
    assert rig.step_phase().type == "ok"
    rig.sync_all()
    write = rig.driver.start(app.upsert(rig.record("p000001", 2)), clock=rig.clock("app"))
    noted = rig.driver.run_until(write, lambda r: isinstance(r, rq.AddIntent))
    late = noted.hold_until - rig.config.lease_margin_ns + skew_ns + past_margin_ns
    rig.driver.advance_time(late - rig.driver.time)
    return rig, write


def _intent_raced_by_a_skewed_repair_worker(skew_ns: int) -> Rig:
    """The tightest schedule the intent check allows, with the clocks skewed against it.

    DUAL_WRITE: `app`'s clock runs `skew_ns` behind, the repair worker's `skew_ns` ahead. The
    store answers the note of `app`'s intent as late as the check still lets the write go
    (the app's clock 10 us short of the hold less the lease margin); the primary write to
    old then takes 10 us less than the request timeout, and a repair pass runs on the
    worker's clock just before it lands; then `app` dies before the secondary write. The
    margin is the request timeout plus twice the skew bound (`lease_rules`) so that the
    worker cannot find the intent due before the primary write has landed."""
    rig, write = _intent_noted_at(-10_000, skew_ns)
    primary = rig.driver.run_until(write, lambda r: not isinstance(r, rq.AddIntent))
    assert isinstance(primary, rq.Upsert) and primary.side is Side.OLD, primary
    rig.driver.advance_time(REQUEST_TIMEOUT_NS - 10_000)
    rig.run(workers.repair_pass(), clock=lambda now: now + skew_ns)
    rig.driver.step(write)  # the primary write lands: old holds version 2
    assert rig.old.get(["p000001"])["p000001"].version == 2
    rig.driver.crash(write)
    rig.drain_repairs(wait_for_holds=True)
    return rig


def test_an_intent_outlives_its_primary_write_across_clocks_skewed_to_the_bound() -> None:
    """The skew bound `lease_rules` allows for these settings: margin 500 ms = timeout
    400 ms + 2 x 50 ms. The worker finds the intent not yet due, and repairs new to old's
    version 2 once the writer is gone."""
    rig = _intent_raced_by_a_skewed_repair_worker(50_000_000)
    assert rig.new.get(["p000001"])["p000001"].version == 2
    rig.heal_and_finish()
    assert rig.verdict().valid, rig.verdict().to_json()


def test_an_intent_noted_just_past_the_margin_is_withdrawn() -> None:
    """The other edge of the same schedule: 10 us later on the app's clock, and the write is
    refused with nothing written, whatever the skew (a narrower margin would let it go)."""
    rig, write = _intent_noted_at(10_000, 50_000_000)
    outcome = rig.driver.run(write)
    assert outcome.type == "fail" and outcome.notes == {"refused": "intent-hold"}, outcome
    assert rig.old.get(["p000001"])["p000001"].version == 1


def test_skew_beyond_the_bound_lets_the_worker_take_an_intent_before_its_write_lands() -> None:
    """Why the loader refuses a skew bound the margin does not cover: at 100 ms each way
    the worker takes the intent early, copies old's version 1 to new and clears it; the
    write then lands on old alone, and nothing is left to repair new."""
    rig = _intent_raced_by_a_skewed_repair_worker(100_000_000)
    assert rig.new.get(["p000001"])["p000001"].version == 1
    assert rig.old.get(["p000001"])["p000001"].version == 2
    assert rig.store.repair_backlog() == 0


# ---------------------------------------------------------------------------------------------
# Found by a BUGGIFY sweep (seed 35 of eventually-consistent): a get failed that old could answer.


def test_a_verification_diff_queues_its_repair_toward_the_side_that_is_behind() -> None:
    """BACKFILL: an upsert (v2) reaches old, not new (partitioned): a repair toward new. A
    verification diff then finds the id different and queued repairs both ways, so old too
    looked as if it might miss an acknowledged write, and a get of the id needed both sides
    and failed while new stayed partitioned, though old held v2. The diff now queues the
    repair toward the side that is behind only."""
    rig = Rig(SAFE)
    app = rig.add_instance("app")
    rig.sync_all()
    for _ in range(2):
        assert rig.step_phase().type == "ok"
        rig.sync_all()
    assert app.view.phase is Phase.BACKFILL
    rig.new.start_fault("error-rate", rate=1.0)
    assert rig.run(app.upsert(rig.record("p000002", 2))).notes.get("repair_queued") == "new"
    rig.new.stop_fault("error-rate")
    assert rig.run(workers.verify()).type == "ok"
    pending = rig.store.pending_for([("p000002", Side.OLD), ("p000002", Side.NEW)])
    assert set(pending) == {("p000002", Side.NEW)}, pending
    rig.new.start_fault("error-rate", rate=1.0)
    read = rig.run(app.get("p000002"))
    rig.new.stop_fault("error-rate")
    assert read.type == "ok" and read.value == {"id": "p000002", "version": 2}, read
