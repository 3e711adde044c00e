"""Rules of the migration controller (`harness/core/controller.py`) that the scenario tests
left unchecked, found by mutation testing (docs/mutation-core.md): a controller restarted
mid-phase, a second controller publishing while a gate is judged, ablated strategies run
through the controller, writes in flight while a gate is judged, what the controller tells
the driver to announce, its calibration settings and its repair limits."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from vecmig.harness.clusters.base import ClusterError, Side, Unavailable
from vecmig.harness.core import requests as rq
from vecmig.harness.core.controller import SECOND, Controller, repair_worker
from vecmig.harness.core.gates import GatePolicy, GateResult
from vecmig.harness.core.phases import Phase, Published, Step
from vecmig.harness.core.state import RepairEntry
from vecmig.harness.core.strategy import SAFE
from vecmig.harness.core.workers import Backfill, Throttle
from vecmig.harness.drive.rig import Rig

OPEN_POLICY = GatePolicy(min_mirrored_reads=0, soak_ns=SECOND)


def spied(op: rq.Operation, seen: list[Any]) -> rq.Operation:
    """`op`, noting in `seen` every request it makes (the driver answers some of them itself,
    so a test cannot see them pending)."""

    def steps() -> Generator[Any, Any, Any]:
        reply: Any = None
        error: ClusterError | None = None
        while True:
            try:
                request = op.steps.throw(error) if error is not None else op.steps.send(reply)
            except StopIteration as stop:
                return stop.value
            seen.append(request)
            reply, error = None, None
            try:
                reply = yield request
            except ClusterError as exc:  # a side's error, thrown in by the driver: pass it on
                error = exc

    return rq.Operation(op.f, op.invoke_value, steps(), kind=op.kind)


def restarted(rig: Rig) -> Controller:
    """The controller and the backfill worker die and restart: everything they knew in memory
    is gone; the coordinator, the store and the shared figures remain (as in the state
    machine's crash of "everything")."""
    rig.backfill = Backfill(rig.strategy, Throttle(batch_size=16, unthrottled=True))
    rig.controller = Controller(
        rig.coordinator,
        rig.strategy,
        rig.backfill,
        rig.shared,
        rig.controller.policy,
        lagged_sides=rig.controller.lagged_sides,
    )
    return rig.controller


def to_backfill(rig: Rig) -> None:
    for _ in range(2):
        assert rig.step_phase().type == "ok"
        rig.sync_all()


def to_cutover(rig: Rig) -> None:
    rig.advance_to_shadow()
    assert rig.step_phase().type == "ok"
    rig.sync_all()
    assert rig.coordinator.published.phase is Phase.CUTOVER


def held(outcome: rq.Outcome, target: Phase, *reasons: str) -> bool:
    return outcome == rq.Outcome("fail", GateResult(target, False, reasons))


def opened(outcome: rq.Outcome, target: Phase) -> bool:
    return outcome == rq.Outcome("ok", GateResult(target, True))


def lose_on_new(rig: Rig, record_id: str) -> None:
    """New loses an acknowledged write of `record_id`: old holds a newer version than new."""
    rig.old.upsert([rig.record(record_id, 9)], fenced=False)


LOST = "p000005"
DIFFERENCE = f"verification found 1 differing id(s) in 1 bucket(s) (e.g. {LOST}); repairs queued"


# -- a controller restarted mid-phase ---------------------------------------------------------


def test_a_restarted_controller_judges_the_backfill_by_the_durable_checkpoint() -> None:
    """The backfill worker that restarts with the controller has copied nothing yet; the copy
    that the durable checkpoint says is done counts."""
    rig = Rig(SAFE)
    rig.add_instance("app")
    to_backfill(rig)
    rig.finish_backfill()
    rig.drain_repairs()
    controller = restarted(rig)
    assert opened(rig.run(controller.attempt(Step.ADVANCE)), Phase.SHADOW)


def test_a_controller_restarted_in_shadow_takes_the_diff_before_cutover_itself() -> None:
    """It does not know when SHADOW began: it counts from its first try, and a diff of its own
    opens the gate."""
    rig = Rig(SAFE, policy=OPEN_POLICY)
    rig.add_instance("app")
    rig.advance_to_shadow()
    controller = restarted(rig)
    assert opened(rig.run(controller.attempt(Step.ADVANCE)), Phase.CUTOVER)


def test_a_controller_restarted_in_shadow_without_a_noise_floor_measures_one_first() -> None:
    """The floor is measured on entering SHADOW; a controller that died before it was (the
    simulator's controller-crash, mid-calibration) leaves none. Its successor measures it in
    its first try at CUTOVER, with its own queries at k = 10, whether or not the gate then
    opens; once a floor is known, later tries ask nothing more."""
    rig = Rig(SAFE, policy=OPEN_POLICY)
    rig.add_instance("app")
    rig.advance_to_shadow()
    assert rig.shared.noise is None  # the rig's controller has no calibration queries
    controller = restarted(rig)
    controller.calibration_queries = (rig.query(1), rig.query(2), rig.query(3))
    controller.policy = GatePolicy(min_mirrored_reads=5, soak_ns=SECOND)
    tries: list[list[Any]] = [[], []]
    for seen in tries:
        outcome = rig.run(spied(controller.attempt(Step.ADVANCE), seen))
        assert outcome.type == "fail" and "mirrored reads" in str(outcome.value.reasons)
    first, second = ([r for r in seen if isinstance(r, rq.Search)] for seen in tries)
    assert len(first) == 6 and {r.k for r in first} == {10}
    assert rig.shared.noise is not None and rig.shared.noise.samples == 3
    assert second == []


def test_a_controller_restarted_in_cutover_soaks_again_from_its_first_try() -> None:
    """It lost when CUTOVER began, so the soak starts again (as the service does after a
    restart), however long CUTOVER has lasted."""
    rig = Rig(SAFE, policy=OPEN_POLICY)
    rig.add_instance("app")
    to_cutover(rig)
    rig.driver.advance_time(5 * SECOND)
    controller = restarted(rig)
    assert held(
        rig.run(controller.attempt(Step.ADVANCE)),
        Phase.DECOMMISSIONED,
        "soaked 0.0 s of 1.0 s since cutover",
        "no verification diff since CUTOVER began",
    )
    rig.driver.advance_time(SECOND)
    assert opened(rig.run(controller.attempt(Step.ADVANCE)), Phase.DECOMMISSIONED)


def test_a_controller_that_slept_through_a_rollback_soaks_from_the_cutover_it_missed() -> None:
    """Two controller processes: one paused in CUTOVER (a pod not quite dead in a rollout, a
    long GC pause) while its successor rolled back and published CUTOVER again. What the
    sleeper remembers of when CUTOVER began belongs to the epoch it saw; for the epoch it
    wakes up to, the soak counts from its first try, not from the CUTOVER before the
    rollback."""
    policy = GatePolicy(min_mirrored_reads=0, soak_ns=10 * SECOND)
    rig = Rig(SAFE, policy=policy)
    rig.add_instance("app")
    to_cutover(rig)
    sleeper = rig.controller
    rig.driver.advance_time(8 * SECOND)
    successor = restarted(rig)
    assert rig.run(successor.attempt(Step.ROLLBACK)).type == "ok"
    rig.sync_all()
    assert opened(rig.run(successor.attempt(Step.ADVANCE)), Phase.CUTOVER)
    rig.sync_all()
    rig.driver.advance_time(3 * SECOND)  # 11 s since the first CUTOVER, 3 s since this one
    outcome = rig.run(sleeper.attempt(Step.ADVANCE))
    assert outcome.type == "fail"
    assert "soaked 0.0 s of 10.0 s since cutover" in outcome.value.reasons, outcome
    assert rig.coordinator.published.phase is Phase.CUTOVER


# -- the phases' own clock --------------------------------------------------------------------


def test_the_soak_counts_from_the_cutover_publish_not_from_an_earlier_one() -> None:
    rig = Rig(SAFE, policy=OPEN_POLICY)
    rig.add_instance("app")
    rig.advance_to_shadow()
    rig.driver.advance_time(2 * SECOND)  # a long SHADOW: older publishes are soaked
    to_cutover_now = rig.step_phase()
    assert opened(to_cutover_now, Phase.CUTOVER)
    rig.sync_all()
    assert held(rig.step_phase(), Phase.DECOMMISSIONED, "soaked 0.0 s of 1.0 s since cutover")


def test_after_a_rollback_the_gate_to_cutover_wants_a_diff_taken_since_shadow_began_again() -> None:
    """The diff that cleared CUTOVER before the ROLLBACK cannot have seen what new lost in
    the SHADOW that follows: a held gate names it as missing."""
    rig = Rig(SAFE, policy=OPEN_POLICY)
    rig.add_instance("app")
    to_cutover(rig)
    assert opened(rig.step_phase(Step.ROLLBACK), Phase.SHADOW)
    rig.sync_all()
    rig.controller.new_p99_ms = lambda: 99.0
    assert held(
        rig.step_phase(),
        Phase.CUTOVER,
        "no verification diff since SHADOW began",
        "new's p99 99.0 ms exceeds the SLO 50.0 ms",
    )
    rig.controller.new_p99_ms = lambda: 10.0
    assert opened(rig.step_phase(), Phase.CUTOVER)


def test_a_copy_finished_for_an_earlier_backfill_attempt_does_not_open_shadow() -> None:
    """After an ABORT the copy starts over: a worker still copying for the BACKFILL before the
    abort leaves a done checkpoint of that attempt, which the gate of the new one ignores."""
    rig = Rig(SAFE, batch_size=64)
    rig.add_instance("app")
    to_backfill(rig)
    earlier = rig.coordinator.published.epoch
    assert opened(rig.step_phase(Step.ABORT), Phase.OLD_ONLY)
    rig.sync_all()
    to_backfill(rig)
    while not rig.run(rig.backfill.batch(earlier)).value["done"]:
        pass
    assert rig.store.load_checkpoint().attempt == earlier
    assert held(
        rig.step_phase(),
        Phase.SHADOW,
        "backfill not complete (0 copied, cursor at None)",
        "no verification diff yet",
    )


# -- a second controller publishing while a gate is judged ------------------------------------


def test_a_step_whose_phase_another_controller_moved_meanwhile_fails_and_is_recorded() -> None:
    """The gate to OLD_ONLY opened, but another controller published BACKFILL before this one
    published: the step fails, and the refusal is its outcome, a wait and a gate event."""
    rig = Rig(SAFE)
    rig.add_instance("app")
    assert rig.step_phase().type == "ok"
    rig.sync_all()
    abort = rig.driver.start(rig.controller.attempt(Step.ABORT))
    rig.driver.run_until(abort, lambda r: isinstance(r, rq.NextRepairs))  # the gate is open
    other = Controller(rig.coordinator, SAFE, rig.backfill, rig.shared, OPEN_POLICY)
    assert opened(rig.run(other.attempt(Step.ADVANCE)), Phase.BACKFILL)
    refusal = (
        "cannot abort to OLD_ONLY: the phase moved to BACKFILL (epoch 2) while the gate was "
        "judged on DUAL_WRITE (epoch 1)"
    )
    assert held(rig.driver.run(abort), Phase.OLD_ONLY, refusal)
    assert rig.coordinator.published == Published(Phase.BACKFILL, 2)
    assert [(w.target, w.reasons) for w in rig.controller.waits] == [(Phase.OLD_ONLY, (refusal,))]
    assert [e.value for e in rig.recorder.events if e.f == "gate"] == [
        {"target": "OLD_ONLY", "open": False, "reasons": [refusal]}
    ]


def test_a_gate_judged_on_one_phase_never_publishes_from_another() -> None:
    """Found by mutation testing: the gate to BACKFILL opened, another controller published
    BACKFILL meanwhile and the instance acknowledged it; the first then stepped on from
    BACKFILL, and SHADOW was published with nothing copied, no diff, and the announcement
    "gate to BACKFILL: open". A fleet's controller runs its plan and the operator's steps
    (/admin/advance, rollback, abort) side by side, with nothing to keep them apart."""
    rig = Rig(SAFE)
    rig.add_instance("app")
    assert rig.step_phase().type == "ok"
    rig.sync_all()
    first = rig.driver.start(rig.controller.attempt(Step.ADVANCE))
    rig.driver.run_until(first, lambda r: isinstance(r, rq.RepairBacklog))
    other = Controller(rig.coordinator, SAFE, rig.backfill, rig.shared, OPEN_POLICY)
    assert opened(rig.run(other.attempt(Step.ADVANCE)), Phase.BACKFILL)
    rig.sync_all()
    assert held(
        rig.driver.run(first),
        Phase.BACKFILL,
        "cannot advance to BACKFILL: the phase moved to BACKFILL (epoch 2) while the gate "
        "was judged on DUAL_WRITE (epoch 1)",
    )
    assert rig.coordinator.published == Published(Phase.BACKFILL, 2)


def test_the_acknowledgement_rule_is_judged_again_when_the_phase_is_published() -> None:
    """The gate to SHADOW counted the instances before its diff; an instance whose lease had
    lapsed came back meanwhile with an older phase (its lease renewed anyway, the lease
    binding being off). The coordinator refuses to publish past it, and the refusal is the
    step's outcome."""
    rig = Rig(SAFE.without("lease-epoch-binding"))
    rig.add_instance("app")
    rig.add_instance("late")
    to_backfill(rig)
    rig.driver.advance_time(rig.lease_ns)  # late's lease lapses; app renews its own
    rig.sync("app")
    rig.finish_backfill()
    rig.drain_repairs()
    attempt = rig.driver.start(rig.controller.attempt(Step.ADVANCE))
    rig.driver.run_until(attempt, lambda r: isinstance(r, rq.Count))  # the diff begins
    assert rig.coordinator.ack("late", Published(Phase.DUAL_WRITE, 1), rig.driver.time)
    refusal = (
        "cannot advance to SHADOW: waiting for 1 instance(s) to acknowledge BACKFILL "
        "(epoch 2): late"
    )
    assert held(rig.driver.run(attempt), Phase.SHADOW, refusal)
    assert rig.coordinator.published == Published(Phase.BACKFILL, 2)


# -- ablated strategies -----------------------------------------------------------------------


def test_an_ablated_gate_ignores_only_the_protection_switched_off() -> None:
    """Without the mirror gate, CUTOVER waits for no mirrored reads, but a held gate still
    names its other reasons, and the diff before CUTOVER is still taken: a write new lost in
    SHADOW holds it."""
    rig = Rig(SAFE.without("mirror-gate"), policy=GatePolicy(min_mirrored_reads=10))
    rig.add_instance("app")
    rig.advance_to_shadow()
    rig.store.add_repairs([RepairEntry("p000001", Side.NEW)])
    assert held(rig.step_phase(), Phase.CUTOVER, "repair log holds 1 entries")
    rig.drain_repairs()
    lose_on_new(rig, LOST)
    assert held(rig.step_phase(), Phase.CUTOVER, DIFFERENCE)
    assert opened(rig.step_phase(), Phase.CUTOVER)


def test_without_the_diff_before_cutover_the_gate_judges_the_rest_by_the_given_policy() -> None:
    rig = Rig(SAFE.without("verify-before-cutover"), policy=OPEN_POLICY)
    rig.add_instance("app")
    rig.advance_to_shadow()
    seen: list[Any] = []
    assert opened(rig.run(spied(rig.controller.attempt(Step.ADVANCE), seen)), Phase.CUTOVER)
    assert not [r for r in seen if isinstance(r, rq.Count | rq.Checksums)], "no diff taken"


def test_without_the_backfill_gate_a_diff_taken_before_the_copy_ended_is_named_stale() -> None:
    """The backfill gate off, the diff before SHADOW may run while the copy goes on; once the
    copy is done, a gate held for another reason says that diff predates it rather than
    quoting what it found. Repairs of a diff are noted in a lagged side's window."""
    rig = Rig(SAFE.without("backfill-gate"), lagged=frozenset({Side.NEW}))
    rig.add_instance("app")
    to_backfill(rig)
    outcome = rig.step_phase()  # nothing copied yet: the diff finds every record missing
    assert outcome.type == "fail"
    assert outcome.value.reasons[0].startswith("verification found 40 differing id(s)")
    ids = {r.id for r in rig.catalog.records()}
    assert {w.id for w in rig.store.recent_since(Side.NEW, 0)} == ids
    rig.finish_backfill()
    rig.store.add_repairs([RepairEntry("p000001", Side.NEW)])
    assert held(
        rig.step_phase(),
        Phase.SHADOW,
        "repair log holds 1 entries",
        "the last verification diff predates the end of the backfill",
    )


def test_a_diff_repairs_at_most_1024_ids_before_the_gate_judges_again() -> None:
    rig = Rig(SAFE.without("backfill-gate"), records=1030)
    rig.add_instance("app")
    to_backfill(rig)
    outcome = rig.step_phase()
    assert outcome.type == "fail"
    assert outcome.value.reasons[0] == "repair log holds 6 entries"
    assert rig.store.repair_backlog() == 6


# -- repairs: in flight, queued during a diff, toward old -------------------------------------


def test_a_write_in_flight_holds_no_gate_until_its_intent_is_due() -> None:
    """A write under way has noted its intent; until its hold runs out it is no backlog, for
    the gates, for the repairs after a diff, or for an ABORT's repairs toward old."""
    rig = Rig(SAFE, policy=OPEN_POLICY)
    app = rig.add_instance("app")
    to_backfill(rig)
    rig.finish_backfill()
    rig.drain_repairs()

    def write_under_way(version: int) -> int:
        write = rig.driver.start(app.upsert(rig.record("p000003", version)))
        rig.driver.run_until(write, lambda r: isinstance(r, rq.Upsert) and r.side is Side.OLD)
        assert rig.store.repair_backlog() == 1 and rig.store.repair_backlog(rig.driver.time) == 0
        return write

    write = write_under_way(2)
    assert opened(rig.step_phase(), Phase.SHADOW)
    assert rig.driver.run(write).type == "ok"
    rig.sync_all()
    write_under_way(3)  # under SHADOW, which app acknowledges
    lose_on_new(rig, LOST)
    assert held(rig.step_phase(), Phase.CUTOVER, DIFFERENCE)
    rig.new.upsert([rig.record("p000001", 7)], fenced=False)
    rig.store.add_repairs([RepairEntry("p000001", Side.OLD)])
    assert opened(rig.step_phase(Step.ABORT), Phase.OLD_ONLY)
    assert rig.old.get(["p000001"])["p000001"].version == 7


def test_a_repair_queued_while_a_clean_diff_runs_holds_the_gate() -> None:
    """A clean diff repairs nothing: a repair queued while it ran is left to the repair
    worker, and the gate holds, naming only the backlog, until it is done."""
    rig = Rig(SAFE)
    app = rig.add_instance("app")
    to_backfill(rig)
    rig.finish_backfill()
    rig.drain_repairs()
    attempt = rig.driver.start(rig.controller.attempt(Step.ADVANCE))
    rig.driver.run_until(attempt, lambda r: isinstance(r, rq.Checksums) and r.side is Side.NEW)
    write = rig.driver.start(app.upsert(rig.record("p000003", 2)))
    rig.driver.run_until(write, lambda r: isinstance(r, rq.Upsert) and r.side is Side.NEW)
    rig.driver.step(write, error=Unavailable("new: injected"))
    assert rig.driver.run(write).type == "ok"
    assert held(rig.driver.run(attempt), Phase.SHADOW, "repair log holds 1 entries")
    # The backfill ended at the first try that saw the copy done, not at each later one: the
    # clean diff still counts as taken after it.
    assert held(rig.step_phase(), Phase.SHADOW, "repair log holds 1 entries")
    rig.drain_repairs()
    assert opened(rig.step_phase(), Phase.SHADOW)


def test_an_abort_repairs_at_most_1024_entries_toward_old_and_names_what_is_left() -> None:
    """Repairs toward old are applied (and noted in old's window, where old lags) before old
    becomes the only side; what a pass of 1024 could not apply holds the ABORT."""
    rig = Rig(SAFE, lagged=frozenset({Side.OLD}))
    rig.add_instance("app")
    assert rig.step_phase().type == "ok"
    rig.sync_all()
    rig.new.upsert([rig.record("p000001", 7)], fenced=False)
    entries = [RepairEntry("p000001", Side.OLD)]
    entries += [RepairEntry(f"gone{i:04d}", Side.OLD) for i in range(1024)]
    rig.store.add_repairs(entries)
    assert held(
        rig.step_phase(Step.ABORT),
        Phase.OLD_ONLY,
        "1 repair(s) toward old still pending: old would serve older versions as the only side",
    )
    assert rig.old.get(["p000001"])["p000001"].version == 7
    assert [w.id for w in rig.store.recent_since(Side.OLD, 0)] == ["p000001"]
    assert opened(rig.step_phase(Step.ABORT), Phase.OLD_ONLY)


# -- what the controller tells the driver, and its settings -----------------------------------


def test_a_publish_is_announced_with_the_gate_that_let_it_through() -> None:
    """The driver saves and logs the announcement; its reason is the open gate."""
    rig = Rig(SAFE)
    seen: list[Any] = []
    assert opened(rig.run(spied(rig.controller.attempt(Step.ADVANCE), seen)), Phase.DUAL_WRITE)
    assert [r for r in seen if isinstance(r, rq.AnnouncePhase)] == [
        rq.AnnouncePhase(Phase.DUAL_WRITE, 1, "advance", "gate to DUAL_WRITE: open")
    ]


def test_the_calibration_queries_given_to_the_controller_are_asked_for_the_top_10() -> None:
    rig = Rig(SAFE)
    rig.add_instance("app")
    queries = (rig.query(1), rig.query(2))
    rig.controller = Controller(
        rig.coordinator, SAFE, rig.backfill, rig.shared, OPEN_POLICY, calibration_queries=queries
    )
    to_backfill(rig)
    rig.finish_backfill()
    seen: list[Any] = []
    assert opened(rig.run(spied(rig.controller.attempt(Step.ADVANCE), seen)), Phase.SHADOW)
    searches = [r for r in seen if isinstance(r, rq.Search)]
    assert len(searches) == 4 and {r.k for r in searches} == {10}
    assert rig.shared.noise is not None and rig.shared.noise.samples == 2


def test_the_repair_worker_takes_256_entries_a_pass_by_default() -> None:
    rig = Rig(SAFE)
    worker = rig.driver.start(repair_worker(rig.coordinator))
    request = rig.driver.pending(worker)
    assert isinstance(request, rq.NextRepairs) and request.limit == 256


def test_the_gate_s_outcome_after_a_failed_diff_names_its_target() -> None:
    rig = Rig(SAFE, policy=OPEN_POLICY)
    rig.add_instance("app")
    rig.advance_to_shadow()
    attempt = rig.driver.start(rig.controller.attempt(Step.ADVANCE))
    rig.driver.run_until(attempt, lambda r: isinstance(r, rq.Count))
    rig.driver.step(attempt, Unavailable("old is down"))
    assert held(
        rig.driver.run(attempt),
        Phase.CUTOVER,
        "the verification diff failed (old is down); the gate waits for one",
    )
