"""The migration state machine (`vecmig.harness.testing.machine`) in CI: the safe strategy must
survive it, the naive plan must not, and every failure it found stays here as a
`test_replay_*` function, replayed as Hypothesis printed it (each fixed in the core).

To run the machine against your adapters, use the pytest plugin's `AdapterMigrationTest`
(`vecmig.harness.testing.migration`, docs/property-tests.md).
"""

from __future__ import annotations

import sys

import pytest
from hypothesis import HealthCheck, settings

from vecmig.harness.clusters.base import Side
from vecmig.harness.core import requests as rq
from vecmig.harness.core.layer import MigrationLayer
from vecmig.harness.core.phases import Published
from vecmig.harness.core.strategy import NAIVE
from vecmig.harness.testing.machine import MigrationMachine
from vecmig.harness.testing.shrink import search

TestSafeMigration = MigrationMachine.TestCase
RUNS_PER_EXAMPLE = 10
"""A run of the machine costs about as much as a handful of examples of a plain property, and
its space is much larger: it gets ten times the profile's `max_examples` (1000 in `ci`)."""

TestSafeMigration.settings = settings(
    settings.default,  # the profile (tests/conftest.py): steps per run, derandomize, database
    max_examples=RUNS_PER_EXAMPLE * settings.default.max_examples,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


# ---------------------------------------------------------------------------------------------
# Failures the machine found, replayed as Hypothesis printed them (each fixed in the core).


def test_replay_a_gate_shut_by_discrepancies_from_healed_faults_opens_after_a_clean_window() -> (
    None
):
    """Found by the deep profile (issue 10). Faults during SHADOW made 4 of the first 19
    mirrored reads disagree. After they healed, the CUTOVER gate judged running totals, so
    those 4 kept the mismatch rate above the allowance until about 100 clean reads had diluted
    them, and the migration could not finish within the teardown's bound (the longer the
    fault, the longer the wait, without bound). The gate now judges the last window of
    mirrored reads."""
    state = MigrationMachine()
    state.start_in(start="SHADOW", batches=0, skew_bound_ms=50, lagged=frozenset(), lease_ms=2000)
    state.upsert(fail=(2, "unavailable"), instance="c", interleaved=True, record_id="p000002")
    ops_0 = state.search(
        category=None,
        fail=(1, "timeout-after-write"),
        instance="a",
        interleaved=True,
        mirrored=False,
        near="p000002",
    )
    state.sync(instance="c")
    state.upsert(fail=None, instance="c", interleaved=True, record_id="p000000")
    state.search(
        category=None,
        fail=(1, "unavailable"),
        instance="a",
        interleaved=False,
        mirrored=False,
        near="p000099",
    )
    state.fail_request(error="timeout-after-write", op=ops_0)
    state.search(
        category=2, fail=None, instance="c", interleaved=False, mirrored=True, near="p000000"
    )
    state.fail_request(error="timeout-after-write", op=ops_0)
    state.search(
        category=3,
        fail=(2, "timeout"),
        instance="a",
        interleaved=False,
        mirrored=False,
        near="p000002",
    )
    ops_1 = state.search(
        category=None,
        fail=(1, "unavailable"),
        instance="b",
        interleaved=True,
        mirrored=True,
        near="p000000",
    )
    state.sync(instance="a")
    ops_2 = state.search(
        category=1, fail=None, instance="b", interleaved=True, mirrored=True, near="p000000"
    )
    state.fail_request(error="timeout", op=ops_2)
    state.upsert(fail=None, instance="a", interleaved=False, record_id="p000001")
    state.upsert(fail=None, instance="a", interleaved=False, record_id="p000000")
    state.upsert(
        fail=(1, "timeout-after-write"), instance="c", interleaved=False, record_id="p000002"
    )
    state.upsert(fail=(1, "timeout"), instance="b", interleaved=False, record_id="p000001")
    state.fail_request(error="timeout", op=ops_2)
    state.fail_request(error="timeout", op=ops_0)
    state.sync(instance="c")
    state.sync(instance="c")
    state.fail_request(error="timeout-after-write", op=ops_1)
    state.sync(instance="b")
    state.sync(instance="c")
    state.upsert(fail=None, instance="b", interleaved=False, record_id="p000002")
    ops_3 = state.search(
        category=None,
        fail=(2, "timeout-after-write"),
        instance="b",
        interleaved=True,
        mirrored=True,
        near="p000099",
    )
    state.upsert(fail=None, instance="c", interleaved=True, record_id="p000000")
    state.sync(instance="a")
    state.upsert(
        fail=(1, "timeout-after-write"), instance="b", interleaved=False, record_id="p000002"
    )
    state.sync(instance="c")
    state.fail_request(error="timeout-after-write", op=ops_0)
    ops_4 = state.upsert(fail=None, instance="b", interleaved=True, record_id="p000099")
    state.fail_request(error="timeout", op=ops_3)
    state.search(
        category=None,
        fail=(1, "timeout-after-write"),
        instance="b",
        interleaved=False,
        mirrored=True,
        near="p000002",
    )
    state.search(
        category=1,
        fail=(1, "timeout-after-write"),
        instance="b",
        interleaved=False,
        mirrored=False,
        near="p000002",
    )
    state.search(
        category=0,
        fail=(1, "timeout-after-write"),
        instance="a",
        interleaved=False,
        mirrored=True,
        near="p000002",
    )
    state.search(
        category=None,
        fail=(2, "unavailable"),
        instance="c",
        interleaved=True,
        mirrored=True,
        near="p000000",
    )
    state.search(
        category=3, fail=None, instance="c", interleaved=True, mirrored=False, near="p000001"
    )
    state.sync(instance="b")
    ops_5 = state.search(
        category=None, fail=None, instance="b", interleaved=True, mirrored=True, near="p000099"
    )
    ops_6 = state.search(
        category=None,
        fail=(1, "unavailable"),
        instance="a",
        interleaved=True,
        mirrored=False,
        near="p000000",
    )
    ops_7 = state.upsert(fail=(2, "timeout"), instance="b", interleaved=True, record_id="p000099")
    state.upsert(fail=None, instance="b", interleaved=False, record_id="p000000")
    state.sync(instance="a")
    state.sync(instance="a")
    state.search(
        category=None, fail=None, instance="c", interleaved=True, mirrored=True, near="p000099"
    )
    state.fail_request(error="timeout-after-write", op=ops_2)
    state.fail_request(error="timeout", op=ops_5)
    state.search(
        category=0,
        fail=(2, "unavailable"),
        instance="c",
        interleaved=True,
        mirrored=True,
        near="p000001",
    )
    state.search(
        category=None,
        fail=(1, "unavailable"),
        instance="b",
        interleaved=False,
        mirrored=True,
        near="p000001",
    )
    ops_8 = state.upsert(fail=None, instance="b", interleaved=True, record_id="p000002")
    state.fail_request(error="unavailable", op=ops_8)
    ops_9 = state.search(
        category=1,
        fail=(1, "unavailable"),
        instance="b",
        interleaved=True,
        mirrored=False,
        near="p000001",
    )
    state.search(
        category=3,
        fail=(2, "unavailable"),
        instance="b",
        interleaved=False,
        mirrored=True,
        near="p000099",
    )
    state.sync(instance="c")
    state.sync(instance="c")
    state.fail_request(error="timeout", op=ops_4)
    state.fail_request(error="timeout", op=ops_1)
    state.search(
        category=None,
        fail=(2, "timeout-after-write"),
        instance="c",
        interleaved=True,
        mirrored=False,
        near="p000001",
    )
    state.upsert(fail=None, instance="c", interleaved=False, record_id="p000001")
    state.fail_request(error="timeout", op=ops_8)
    state.fail_request(error="timeout", op=ops_7)
    state.search(
        category=3, fail=None, instance="b", interleaved=False, mirrored=False, near="p000002"
    )
    state.upsert(fail=(1, "unavailable"), instance="a", interleaved=False, record_id="p000001")
    state.sync(instance="b")
    state.search(
        category=None,
        fail=(1, "timeout"),
        instance="b",
        interleaved=True,
        mirrored=True,
        near="p000002",
    )
    state.search(
        category=3,
        fail=(1, "timeout-after-write"),
        instance="a",
        interleaved=True,
        mirrored=False,
        near="p000000",
    )
    state.fail_request(error="unavailable", op=ops_3)
    state.fail_request(error="timeout", op=ops_3)
    state.sync(instance="c")
    state.fail_request(error="timeout", op=ops_5)
    state.upsert(fail=(1, "timeout"), instance="b", interleaved=True, record_id="p000002")
    state.upsert(fail=(2, "timeout"), instance="b", interleaved=True, record_id="p000099")
    state.upsert(fail=None, instance="a", interleaved=True, record_id="p000001")
    state.sync(instance="c")
    state.search(
        category=None,
        fail=(1, "timeout"),
        instance="a",
        interleaved=False,
        mirrored=True,
        near="p000001",
    )
    state.upsert(fail=(1, "timeout"), instance="a", interleaved=False, record_id="p000099")
    state.fail_request(error="unavailable", op=ops_4)
    state.sync(instance="c")
    state.fail_request(error="timeout", op=ops_6)
    state.fail_request(error="timeout-after-write", op=ops_6)
    state.search(
        category=None, fail=None, instance="a", interleaved=True, mirrored=True, near="p000001"
    )
    state.sync(instance="a")
    state.sync(instance="a")
    state.upsert(fail=(1, "unavailable"), instance="b", interleaved=True, record_id="p000001")
    state.sync(instance="c")
    state.fail_request(error="unavailable", op=ops_1)
    state.search(
        category=2, fail=None, instance="b", interleaved=True, mirrored=False, near="p000002"
    )
    state.fail_request(error="timeout", op=ops_9)
    state.upsert(fail=None, instance="a", interleaved=False, record_id="p000001")
    state.upsert(
        fail=(1, "timeout-after-write"), instance="a", interleaved=True, record_id="p000002"
    )
    state.fail_request(error="timeout", op=ops_4)
    state.sync(instance="a")
    state.sync(instance="b")
    state.upsert(
        fail=(1, "timeout-after-write"), instance="b", interleaved=True, record_id="p000002"
    )
    state.search(
        category=3,
        fail=(1, "timeout-after-write"),
        instance="c",
        interleaved=True,
        mirrored=False,
        near="p000001",
    )
    state.upsert(fail=(2, "timeout"), instance="c", interleaved=False, record_id="p000001")
    state.sync(instance="a")
    state.search(
        category=1,
        fail=(2, "timeout"),
        instance="c",
        interleaved=False,
        mirrored=False,
        near="p000002",
    )
    state.teardown()


def test_replay_a_write_whose_intent_hold_ran_out_in_the_store_writes_nothing() -> None:
    """Found by `vecmig zoo` (a false alarm on a cover row: safe failed the same steps). The
    intent of a's upsert stayed pending in the state store for 11 s (store requests have no
    deadline); the repair worker took it past its hold and copied old's version 1 to new; a
    then wrote version 2 to old under a lapsed lease and crashed before new: divergence. The
    layer now checks its lease and the hold left once the intent is noted."""
    state = MigrationMachine()
    state.start_in(start="BACKFILL", batches=0, lagged=frozenset(), skew_bound_ms=0, lease_ms=2000)
    ops_0, _ = state.progress(busy=("a", "p000001"), phases=2).values
    state.let_time_pass(ms=11000)
    state.advance(op=ops_0)
    state.progress(busy=("b", "p000000"), phases=1)
    state.advance(op=ops_0)
    state.crash(who="a")
    state.teardown()


def test_replay_a_delete_in_flight_past_its_lease_does_not_come_back() -> None:
    """The same family, hit by the CI profile once the zoo's machine met main's core: a
    lagging instance's delete, refused by new, stayed in flight for 11 s past a 2 s lease; the
    migration then finished with p000000 back on new (a resurrected delete)."""
    state = MigrationMachine()
    state.start_in(start="BACKFILL", batches=0, lagged=frozenset(), skew_bound_ms=50, lease_ms=2000)
    state.progress(busy=None, phases=1)
    state.progress(busy=None, phases=1)
    state.lag(instance="a")
    state.lag(instance="a")
    state.delete(fail=(2, "unavailable"), instance="a", interleaved=True, record_id="p000000")
    state.let_time_pass(ms=11000)
    state.progress(busy=None, phases=1)
    state.teardown()


def test_replay_a_delete_whose_copy_failed_is_not_merged_back_from_the_visibility_window() -> None:
    """A delete reached old but not new (repair queued); an instance in CUTOVER searched new.
    The pending-repair check dropped the id, and then the visibility window of new, which held
    the upsert before the delete but not the delete, merged the deleted version back in: a
    stale read. The layer now applies the window first and the pending repairs last."""
    state = MigrationMachine()
    state.start_in(start="SHADOW", batches=0)
    state.progress(phases=1)
    state.upsert(fail=None, instance="a", interleaved=False, record_id="p000000")
    state.delete(fail=(2, "unavailable"), instance="a", interleaved=False, record_id="p000000")
    state.crash(who="a")
    state.search(
        category=None, fail=None, instance="a", interleaved=False, mirrored=False, near="p000000"
    )
    state.teardown()


def test_replay_a_slow_write_noted_late_does_not_outlive_a_newer_delete_in_the_window() -> None:
    """An upsert landed on old (lagging), then stalled on its copy to new; a newer delete
    completed and its note aged out of the visibility window; then the upsert finished and was
    noted only now, so the window held the older upsert alone and merged it into a search: a
    stale read. The layer now notes a write with the time it landed, and only if the side
    applied it (not if fencing refused it)."""
    state = MigrationMachine()
    state.start_in(start="DUAL_WRITE", batches=0)
    ops_0 = state.upsert(fail=None, instance="a", interleaved=True, record_id="p000099")
    state.advance(op=ops_0)
    state.side_fault(fault="visibility-lag", side="old")
    state.delete(fail=None, instance="a", interleaved=False, record_id="p000099")
    state.let_time_pass(ms=11_000)
    state.finish(op=ops_0)
    state.search(
        category=0, fail=None, instance="b", interleaved=False, mirrored=False, near="p000099"
    )
    state.teardown()


def test_replay_a_controller_restarted_in_cutover_can_still_decommission() -> None:
    """The controller kept the start of CUTOVER only in memory: restarted, it refused
    DECOMMISSIONED forever ("not in CUTOVER"). Now a restarted controller soaks again."""
    state = MigrationMachine()
    state.start_in(start="CUTOVER", batches=0)
    state.crash(who="everything")
    state.teardown()  # includes migration_can_finish


def test_replay_an_upsert_in_flight_across_four_phase_steps_reaches_new() -> None:
    """An upsert started in OLD_ONLY (route: old only) stayed in flight while its instance
    acknowledged DUAL_WRITE, BACKFILL, SHADOW and CUTOVER; the backfill copied the old version,
    the verification found nothing (the upsert had not landed), then it landed on old only: new
    served the older version. Instances now acknowledge the oldest phase they still run an
    operation under (`MigrationLayer.acknowledgement`), so the migration waits for it."""
    state = MigrationMachine()
    state.start_in(start="OLD_ONLY", batches=0)
    ops_0 = state.upsert(fail=None, instance="a", interleaved=True, record_id="p000000")
    state.progress(phases=4)
    state.finish(op=ops_0)
    state.let_time_pass(ms=1)
    state.get(fail=None, instance="a", interleaved=False, record_id="p000000")
    state.teardown()


def test_replay_an_upsert_does_not_outlive_its_instance_lease() -> None:
    """The same without acknowledgements: the instance stopped hearing from the config store,
    its lease ran out, the coordinator counted it out and the migration moved to CUTOVER; the
    upsert it started in OLD_ONLY then landed on old only. Requests are now bounded below the
    lease margin (the rig's `request_timeout_ns`): that upsert times out and never lands."""
    state = MigrationMachine()
    state.start_in(start="OLD_ONLY", batches=0)
    state.lag(instance="a")
    ops_0 = state.upsert(fail=None, instance="a", interleaved=True, record_id="p000000")
    state.let_time_pass(ms=11_000)
    state.progress(phases=4)
    state.finish(op=ops_0)
    state.let_time_pass(ms=1)
    state.get(fail=None, instance="b", interleaved=False, record_id="p000000")
    state.teardown()


def test_replay_an_operation_from_before_a_lapsed_lease_no_longer_holds_back_the_ack() -> None:
    """Instance a stops hearing from the config store with a search in flight (OLD_ONLY,
    epoch 0). Its lease runs out, the coordinator counts it out and publishes DUAL_WRITE and
    BACKFILL. When a catches up, `acknowledgement()` used to name epoch 0 for that search, which
    can never land (its request is older than the request timeout), so the coordinator saw a
    live instance two epochs behind: an adjacency violation, and the controller waited on it.
    Operations started before a lapsed lease now stop counting once that lease expired."""
    state = MigrationMachine()
    state.start_in(start="OLD_ONLY", batches=0)
    state.lag(instance="a")
    state.search(
        category=None, fail=None, instance="a", interleaved=True, mirrored=False, near="p000000"
    )
    state.let_time_pass(ms=11_000)
    state.progress(phases=2)
    state.sync(instance="a")
    state.teardown()


def test_replay_a_search_on_a_lagged_side_sees_a_delete_that_timed_out_after_landing() -> None:
    """Issue 10, finding 1. Old lags (visibility-lag). A delete of p000002 (v2) is in flight;
    a second delete (v3) lands on old but times out, so the client gets info; then the first
    completes ok, but old refuses it (fenced: v3 is newer). Neither was noted in the
    visibility window (one timed out, one was refused), so the freshness overlay kept the
    record at v1 that old's lagging index still returned: a stale read. The overlay now
    re-reads every hit by id before answering, so what it returns is what the side holds."""
    state = MigrationMachine()
    state.start_in(start="OLD_ONLY", batches=0)
    state.add_instance()
    state.side_fault(fault="visibility-lag", side="old")
    ops_0 = state.delete(fail=None, instance="a", interleaved=True, record_id="p000002")
    state.delete(
        fail=(1, "timeout-after-write"), instance="a", interleaved=False, record_id="p000002"
    )
    state.advance(op=ops_0)
    state.advance(op=ops_0)
    state.search(
        category=None, fail=None, instance="a", interleaved=False, mirrored=False, near="p000000"
    )
    state.teardown()


def test_replay_an_instance_dying_between_its_two_writes_leaves_a_repair_behind() -> None:
    """Found once the harness stopped reconciling the sides before judging them: in SHADOW a
    delete reached old (the primary), then its instance died before writing new. Nothing
    was queued for new, so the sides stayed apart (divergence), and a later CUTOVER would
    have served the deleted record. A write now queues its secondary as a held intent before
    it writes the primary (`MigrationLayer._intent`), and removes it when both landed."""
    state = MigrationMachine()
    state.start_in(start="SHADOW", batches=0)
    ops_0 = state.delete(fail=None, instance="a", interleaved=True, record_id="p000000")
    state.driver.run_until(ops_0, lambda r: isinstance(r, rq.Delete) and r.side is Side.NEW)
    state.crash(who="a")
    state.teardown()


def test_replay_a_lagging_instance_stops_serving_when_the_drawn_lease_lapses() -> None:
    """Found by `vecmig zoo` on the safe strategy (a false alarm of every ablation): the
    instances joined under the rig's default lease (10 s) before `start_in` drew a shorter one
    (2 s); the coordinator counted the drawn lease and published past a lagging instance whose
    view still held the default, so it served OLD_ONLY while BACKFILL was published. The
    machine now grants every instance the drawn lease afresh."""
    state = MigrationMachine()
    state.start_in(start="OLD_ONLY", batches=0, lagged=frozenset(), skew_bound_ms=0, lease_ms=2000)
    state.let_time_pass(ms=1)
    state.lag(instance="a")
    state.let_time_pass(ms=1000)
    state.progress(busy=None, phases=1)
    state.let_time_pass(ms=1000)
    state.phase_step(interleaved=False, step="advance")
    state.teardown()


def test_replay_a_write_clearing_its_intent_leaves_another_writes_repair() -> None:
    """In CUTOVER, a's upsert (v2) of p000000 is under way when b's upsert (v3) lands on new
    but times out: a repair of old is queued. a then finishes (new fences v2 out, old takes
    it) and clears its write-ahead intent. When intents and repairs shared one entry per id,
    clearing a's intent removed b's repair too, and old kept v2 while new held v3
    (divergence). Intents are now kept one per write, apart from repairs."""
    state = MigrationMachine()
    state.start_in(start="CUTOVER", batches=0)
    ops_0 = state.upsert(fail=None, instance="a", interleaved=True, record_id="p000000")
    state.upsert(
        fail=(1, "timeout-after-write"), instance="b", interleaved=False, record_id="p000000"
    )
    state.finish(op=ops_0)
    state.teardown()


# ---------------------------------------------------------------------------------------------
# Bugs no test caught (issue 11): each replay passes on the safe layer and fails with the bug
# planted, or with the protection against it switched off (`vecmig zoo` runs every such
# ablation through the machine).


def newest_epoch_acknowledgement(self: MigrationLayer, now: int | None = None) -> Published:
    """The planted bug: an instance acknowledges the *newest* epoch among its operations in
    flight instead of the oldest."""
    current = Published(self.view.phase, self.view.epoch)
    running = [(epoch, phase) for epoch, phase, _ in self._in_flight.values()]
    if not running:
        return current
    epoch, phase = max(running)
    return Published(phase, epoch) if epoch < current.epoch else current


def a_busy_instance_keeps_a_write_from_old_only_in_flight(machine: type[MigrationMachine]) -> None:
    state = machine()
    state.start_in(start="OLD_ONLY", batches=0)
    ops_0 = state.upsert(fail=None, instance="a", interleaved=True, record_id="p000000")
    state.progress(phases=4, busy=("a", "p000001"))
    state.finish(op=ops_0)
    state.let_time_pass(ms=1)
    state.get(fail=None, instance="b", interleaved=False, record_id="p000000")
    state.teardown()


def test_replay_a_busy_instance_acknowledges_the_oldest_epoch_it_still_runs() -> None:
    """Instance a starts an upsert in OLD_ONLY (route: old only) and keeps it in flight while,
    busy as app instances are, it starts a write under every phase it learns after that: it
    runs operations from several epochs at once. It must acknowledge the oldest, so the
    migration waits for the OLD_ONLY upsert; acknowledging the newest lets the controller
    step to CUTOVER past it, and when it lands on old only, new serves the older version."""
    a_busy_instance_keeps_a_write_from_old_only_in_flight(MigrationMachine)


@pytest.mark.parametrize("bug", ["newest-epoch-ack", "safe-without:oldest-epoch-ack"])
def test_a_busy_instance_acknowledging_a_newer_epoch_serves_a_stale_read(
    bug: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    machine = MigrationMachine
    if bug == "newest-epoch-ack":
        monkeypatch.setattr(MigrationLayer, "acknowledgement", newest_epoch_acknowledgement)
    else:
        machine = MigrationMachine.ablated("oldest-epoch-ack")
    with pytest.raises(AssertionError, match="stale_reads"):
        a_busy_instance_keeps_a_write_from_old_only_in_flight(machine)


def a_write_to_old_times_out_in_cutover_then_rollback(machine: type[MigrationMachine]) -> None:
    state = machine()
    state.start_in(start="CUTOVER", batches=0)
    state.upsert(fail=(2, "timeout"), instance="a", interleaved=False, record_id="p000000")
    state.phase_step(step="rollback", interleaved=False)
    state.let_time_pass(ms=1_000)
    state.get(fail=None, instance="a", interleaved=False, record_id="p000000")
    state.teardown()


def test_replay_a_secondary_write_that_timed_out_is_repaired_before_a_rollback_reads_it() -> None:
    """In CUTOVER an upsert lands on new (the primary) and its write to old (the secondary)
    times out. The write was acknowledged, so old must be repaired: ROLLBACK makes old the
    read side again, and a read of that id there returned the older version when a timeout,
    unlike a refusal, queued no repair."""
    a_write_to_old_times_out_in_cutover_then_rollback(MigrationMachine)


def test_a_secondary_write_that_timed_out_unrepaired_serves_a_stale_read_after_rollback() -> None:
    with pytest.raises(AssertionError, match="stale_reads"):
        a_write_to_old_times_out_in_cutover_then_rollback(
            MigrationMachine.ablated("repair-on-timeout")
        )


def a_primary_write_times_out_after_landing(machine: type[MigrationMachine]) -> None:
    state = machine()
    state.start_in(start="SHADOW", batches=0)
    state.delete(
        fail=(1, "timeout-after-write"), instance="a", interleaved=False, record_id="p000000"
    )
    state.teardown()


def test_replay_a_primary_write_that_timed_out_after_landing_is_repaired_on_the_secondary() -> None:
    """Found by `vecmig zoo` (the machine on safe-without:repair-on-timeout): in SHADOW a
    delete lands on old (the primary) but its answer times out, so it is never written to new.
    A timed-out primary may have landed, so the layer queues a repair of the secondary to
    whatever the primary ends up with; without it the sides diverge."""
    a_primary_write_times_out_after_landing(MigrationMachine)
    with pytest.raises(AssertionError, match="divergence"):
        a_primary_write_times_out_after_landing(MigrationMachine.ablated("repair-on-timeout"))


# ---------------------------------------------------------------------------------------------
# Known gaps: failures the machine found that the core does not handle yet. Each fails
# (strict xfail) until it is fixed; then drop the mark and it guards the fix.


def test_replay_an_injected_late_write_never_lands_past_the_request_timeout() -> None:
    """A harness bug, found by the zoo as a false alarm of `abort-repairs-old` (the safe
    machine failed the same steps, with `cut_off` in place of `lag` and `let_time_pass`). A
    busy instance leaves its DUAL_WRITE upsert pending at the primary write to old; it is cut
    off from the config store, its lease lapses and the controller steps on to SHADOW without
    it. `fail_request(timeout-after-write)` then applied that upsert to old 11 s after it was
    sent, far past the request timeout (0.4 s) that every request is bounded by and that the
    lease margin is sized for, so the write landed under a route two phases old: divergence.
    A request pending past its timeout now times out with no effect, as a plain step of it
    does."""
    state = MigrationMachine()
    state.delete(fail=None, instance="a", interleaved=False, record_id="p000000")
    ops_0, _ops_1 = state.progress(busy=("a", "p000000"), phases=2)
    state.lag(instance="a")
    state.let_time_pass(ms=11000)
    state.progress(busy=None, phases=2)
    state.fail_request(error="timeout-after-write", op=ops_0)
    state.teardown()


def test_abort_applies_the_repairs_toward_old_before_old_is_the_only_side() -> None:
    """In CUTOVER (new is primary) a delete reaches new but not old: acknowledged, with a repair
    of old queued. ROLLBACK to SHADOW is fine (SHADOW reads check pending repairs), but ABORT to
    OLD_ONLY made old the only side before the repair ran, and an OLD_ONLY read (which has no
    secondary, so it skips the repair-log check) returned the deleted record. The ABORT step
    now applies the repairs toward old first, and holds while any stays pending."""
    state = MigrationMachine()
    state.start_in(start="CUTOVER", batches=0)
    state.delete(fail=(2, "unavailable"), instance="a", interleaved=False, record_id="p000001")
    state.phase_step(step="rollback", interleaved=False)
    state.let_time_pass(ms=1)
    state.phase_step(step="abort", interleaved=False)
    state.let_time_pass(ms=1)
    state.get(fail=None, instance="a", interleaved=False, record_id="p000001")
    state.teardown()


# ---------------------------------------------------------------------------------------------
# Proof of teeth: the same machine on the naive plan finds a counterexample, shrunk.


class NaivePlan(MigrationMachine):
    """The naive plan: no fencing, no repair log, phases flipped without acknowledgements,
    no read retries or fallbacks."""

    strategy = NAIVE


class NaivePlanWithoutFaults(NaivePlan):
    """The naive plan with no fault at all: interleavings and lagging instances break it."""

    faults = False


class NaivePlanByChecker(NaivePlanWithoutFaults):
    """As above, judged by the checker alone, without the adjacent-phase invariants."""

    judge_phases = False


MAX_RULES = 15


@pytest.mark.parametrize(
    "machine",
    [NaivePlan, NaivePlanWithoutFaults, NaivePlanByChecker],
    ids=["everything", "no-faults", "checker-only"],
)
def test_the_machine_finds_the_naive_plan_broken(machine: type[MigrationMachine]) -> None:
    """Hypothesis finds a counterexample on the naive plan and shrinks it to a few rules."""
    found = search(machine)
    assert isinstance(found.error, AssertionError), found.error
    print(f"\n{machine.__name__}: {found.headline}\n" + "\n".join(found.steps))
    assert found.rules, f"Hypothesis printed no steps: {getattr(found.error, '__notes__', None)}"
    assert len(found.rules) <= MAX_RULES, "\n".join(found.steps)


@pytest.mark.slow
def test_the_ci_profile_runs_the_same_examples_in_every_process() -> None:
    """Derandomized Hypothesis gives the same examples only if the machine and the code under
    test behave the same in every process: nothing may depend on the order of a set of strings
    (PYTHONHASHSEED) or on state left by earlier tests."""
    import os
    import subprocess
    from pathlib import Path

    tool = Path(__file__).resolve().parent / "tools" / "machine_digests.py"
    runs = []
    for hash_seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run(
            [sys.executable, str(tool), "40"],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        runs.append(done.stdout.split())
    assert len(runs[0]) >= 40 and runs[0] == runs[1]
