"""Rules of harness/core that the scenario tests left unchecked, found by mutation testing
(docs/mutation-core.md): the freshness correction of search hits, what an operation and a
request say about themselves, what the controller records and reports, and how strategies
are named."""

from __future__ import annotations

import numpy as np
import pytest

from vecmig.harness.clusters.base import Hit, Metric, Side, Unavailable, distance
from vecmig.harness.core import requests as rq
from vecmig.harness.core.compare import NoiseFloor, compare
from vecmig.harness.core.controller import SECOND, Plan, backfill_worker, repair_worker
from vecmig.harness.core.freshness import correct_hits, latest_per_id
from vecmig.harness.core.gates import GatePolicy, GateResult
from vecmig.harness.core.phases import Phase, Published, Step
from vecmig.harness.core.state import Checkpoint, RecentWrite, RepairEntry
from vecmig.harness.core.strategy import NAIVE, PROTECTIONS, SAFE, strategy_named
from vecmig.harness.core.workers import Backfill, Throttle, verify
from vecmig.harness.drive.rig import Rig

QUERY = np.array([0.7, 0.1, 0.5], dtype=np.float32)


def vector(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def exact(v: np.ndarray, metric: Metric = Metric.L2) -> float:
    return float(distance(metric, QUERY, v[None, :])[0])


def write(
    id: str,
    version: int,
    v: np.ndarray | None = None,
    *,
    deleted: bool = False,
    colour: str = "red",
) -> RecentWrite:
    return RecentWrite(id, version, deleted, 0, v, {"colour": colour})


# -- freshness --------------------------------------------------------------------------------


def test_the_latest_write_of_an_id_is_its_highest_version_whatever_the_order_noted() -> None:
    """Instances note their writes to the recent log in any order: the one that counts is the
    highest version, not the last noted."""
    latest = latest_per_id([write("a", 3), write("b", 1), write("a", 2)])
    assert {i: w.version for i, w in latest.items()} == {"a": 3, "b": 1}


def test_without_recent_writes_the_hits_are_kept_as_the_engine_ranked_them_up_to_k() -> None:
    hits = [Hit("b", 1, 0.5), Hit("a", 1, 0.1), Hit("c", 1, 0.9)]
    assert correct_hits(hits, [], QUERY, 2, Metric.L2) == hits[:2]


def test_search_hits_are_corrected_by_the_writes_of_the_visibility_window() -> None:
    """A hit deleted since is dropped; a hit superseded is re-scored at its new version; a
    recent record that matches the filter joins by exact distance, one that does not match
    (or has no vector) stays out; a hit the window holds at the same or an older version
    keeps the engine's score. The result is ranked by distance, then id, and cut at k."""
    hits = [Hit("same", 4, 0.05), Hit("gone", 1, 0.2), Hit("moved", 1, 0.3), Hit("old", 5, 0.4)]
    recent = [
        write("same", 4, vector(9, 9, 9)),
        write("gone", 2, deleted=True),
        write("moved", 2, vector(0.1, 0.2, 0.3)),
        write("old", 3, vector(9, 9, 9)),
        write("new", 1, vector(0.7, 0.1, 0.4)),
        write("blue", 1, vector(0.7, 0.1, 0.5), colour="blue"),
        write("unsearchable", 1, vector()),
    ]
    corrected = correct_hits(hits, recent, QUERY, 10, Metric.L2, {"colour": "red"})
    assert corrected == [
        Hit("new", 1, exact(vector(0.7, 0.1, 0.4))),
        Hit("same", 4, 0.05),
        Hit("old", 5, 0.4),
        Hit("moved", 2, exact(vector(0.1, 0.2, 0.3))),
    ]
    assert correct_hits(hits, recent, QUERY, 2, Metric.L2, {"colour": "red"}) == corrected[:2]


def test_recent_records_are_scored_with_the_search_metric() -> None:
    moved = vector(0.1, 0.2, 0.3)
    [hit] = correct_hits([Hit("moved", 1, 0.3)], [write("moved", 2, moved)], QUERY, 1, Metric.L2)
    assert hit.score == exact(moved, Metric.L2) != exact(moved, Metric.COSINE)


# -- operations and requests ------------------------------------------------------------------


def test_an_operation_is_known_by_its_history_name_or_as_background_work() -> None:
    """Drivers label latency, outcomes and crashes by an operation's kind: a client operation's
    history name, `background` for unnamed work, unless the operation names its own kind."""
    steps = iter(())
    assert rq.Operation("upsert", None, steps).kind == "upsert"
    assert rq.Operation(None, None, steps).kind == "background"
    assert rq.Operation(None, None, steps, kind="backfill").kind == "backfill"
    assert rq.Operation("get", None, steps, kind="mirror").kind == "mirror"


def test_only_a_request_to_a_side_has_a_side() -> None:
    assert rq.side_of(rq.Get(Side.NEW, ("p1",))) is Side.NEW
    assert rq.side_of(rq.Count(Side.OLD)) is Side.OLD
    intent = rq.AddIntent("p1", Side.NEW, 0)  # names a side, but goes to the state store
    assert rq.side_of(intent) is None


# -- the controller ---------------------------------------------------------------------------


def gate_events(rig: Rig) -> list[dict[str, object]]:
    return [e.value for e in rig.recorder.events if e.f == "gate"]


def test_the_controller_records_a_gate_refusal_when_it_is_new_and_not_every_retry() -> None:
    """A held gate retries every few hundred ms: the history gets its first refusal for a
    target, then one whenever the reasons changed and a second has passed since the last one
    recorded; a refusal for another target is recorded at once. Every refusal is a wait."""
    rig = Rig(SAFE)
    for name in ("a", "b", "c"):
        rig.add_instance(name)
    assert rig.step_phase().type == "ok"  # DUAL_WRITE, which nobody has acknowledged yet
    refused = rig.step_phase()
    assert refused == rq.Outcome(
        "fail",
        GateResult(Phase.BACKFILL, False, ("3 instance(s) still run an older epoch: a, b, c",)),
    )
    rig.step_phase()  # the same reasons, at once
    rig.driver.advance_time(2 * SECOND)
    rig.step_phase()  # the same reasons, two seconds on
    rig.sync("b")
    rig.step_phase()  # new reasons, two seconds after the last recorded
    recorded_at = rig.controller.waits[-1].time
    rig.sync("c")
    rig.step_phase()  # new reasons within a second
    assert len(gate_events(rig)) == 2
    rig.driver.advance_time(recorded_at + SECOND - rig.driver.time - rig.driver.tick_ns)
    rig.step_phase()  # ... and the same new reasons exactly a second after the last recorded
    assert rig.controller.waits[-1].time == recorded_at + SECOND
    rig.step_phase(Step.ABORT)  # another target
    reasons = [
        "3 instance(s) still run an older epoch: a, b, c",
        "2 instance(s) still run an older epoch: a, c",
        "1 instance(s) still run an older epoch: a",
        "waiting for 1 instance(s) to acknowledge DUAL_WRITE (epoch 1): a",
    ]
    targets = ["BACKFILL", "BACKFILL", "BACKFILL", "OLD_ONLY"]
    assert gate_events(rig) == [
        {"target": t, "open": False, "reasons": [r]} for t, r in zip(targets, reasons, strict=True)
    ]
    waits = rig.controller.waits
    assert [(w.target.value, w.reasons) for w in waits] == [
        ("BACKFILL", (reasons[0],)),
        ("BACKFILL", (reasons[0],)),
        ("BACKFILL", (reasons[0],)),
        ("BACKFILL", (reasons[1],)),
        ("BACKFILL", (reasons[2],)),
        ("BACKFILL", (reasons[2],)),
        ("OLD_ONLY", (reasons[3],)),
    ]
    assert [w.time for w in waits] == sorted({w.time for w in waits})


def test_a_step_the_table_lacks_fails_with_the_table_s_reason_and_publishes_nothing() -> None:
    rig = Rig(SAFE)
    assert rig.step_phase(Step.ROLLBACK) == rq.Outcome(
        "fail",
        GateResult(
            Phase.OLD_ONLY,
            False,
            ("cannot rollback from OLD_ONLY; allowed from OLD_ONLY: advance -> DUAL_WRITE",),
        ),
    )
    assert rig.coordinator.published == Published(Phase.OLD_ONLY, 0)
    assert rig.controller.transitions == [] and rig.controller.waits == []


def test_an_invalid_plan_is_recorded_with_its_problem_and_fails_before_any_step() -> None:
    rig = Rig(SAFE)
    plan = Plan(steps=(Step.ADVANCE, Step.ROLLBACK))
    problem = (
        "step 2 (rollback): cannot rollback from DUAL_WRITE; allowed from DUAL_WRITE: "
        "advance -> BACKFILL, abort -> OLD_ONLY"
    )
    assert plan.problems(Phase.OLD_ONLY) == [problem]
    assert Plan(steps=(Step.ROLLBACK,)).problems(Phase.CUTOVER) == []
    outcome = rig.run(rig.controller.run(plan))
    assert outcome == rq.Outcome("fail", {"phase": "OLD_ONLY"}, error=problem)
    [event] = [e.value for e in rig.recorder.events if e.f == "plan"]
    assert event == {
        "steps": ["advance", "rollback"],
        "hold_s": {},
        "stall_after_s": None,
        "from": "OLD_ONLY",
        "invalid": [problem],
    }
    assert rig.coordinator.published == Published(Phase.OLD_ONLY, 0)


def test_a_plan_run_holds_each_phase_its_minimum_and_retries_a_held_gate_after_its_pause() -> None:
    """The plan is recorded as given (holds and the stall limit in seconds); a phase with no
    hold is left at once; one with a hold is left once the hold is over, not a tick later;
    a held gate is tried again after `retry_ns`; the run ends on the phase it reached."""
    rig = Rig(SAFE)
    rig.add_instance("app")
    hold, retry = 50 * rig.driver.tick_ns, 70 * rig.driver.tick_ns
    plan = Plan(
        steps=(Step.ADVANCE, Step.ADVANCE),
        hold_ns={Phase.DUAL_WRITE: hold},
        retry_ns=retry,
        stall_ns=30 * SECOND,
    )
    run = rig.driver.start(rig.controller.run(plan))
    sleeps: dict[Phase, list[int]] = {}
    synced = False
    for _ in range(1_000):
        if run not in rig.driver.in_flight:
            break
        request = rig.driver.pending(run)
        if isinstance(request, rq.Sleep):
            phase = rig.coordinator.published.phase
            sleeps.setdefault(phase, []).append(request.ns)
            if phase is Phase.DUAL_WRITE and request.ns == retry and not synced:
                rig.sync_all()  # the BACKFILL gate held once for the instance: let it pass
                synced = True
        rig.driver.step(run)
    assert rig.driver.outcomes[run] == rq.Outcome("ok", {"phase": "BACKFILL"})
    [event] = [e.value for e in rig.recorder.events if e.f == "plan"]
    assert event == {
        "steps": ["advance", "advance"],
        "hold_s": {"DUAL_WRITE": hold / SECOND},
        "stall_after_s": 30.0,
        "from": "OLD_ONLY",
    }
    assert Phase.OLD_ONLY not in sleeps
    waited = sleeps[Phase.DUAL_WRITE]
    assert waited[-1] == retry
    countdown = waited[:-1]
    assert countdown == list(range(countdown[0], 0, -rig.driver.tick_ns))
    assert 0 < countdown[0] < hold


def test_the_controller_reports_its_transitions_waits_floor_mirror_and_last_verification() -> None:
    """What a run report and the history get from the controller: each publish as a phase
    event and a transition, each refusal as a wait, the noise floor calibrated on entering
    SHADOW, and the last verification (none before the first, none again after an ABORT)."""
    rig = Rig(SAFE)
    rig.add_instance("app")
    controller = rig.controller
    assert controller.run(Plan()).kind == controller.attempt(Step.ADVANCE).kind == "controller"
    assert controller.report()["verification"] is None
    assert rig.step_phase() == rq.Outcome("ok", GateResult(Phase.DUAL_WRITE, True))
    assert rig.shared.noise is None
    controller.calibration_queries = (rig.query(1), rig.query(2))
    assert rig.step_phase().type == "fail"  # app has not acknowledged DUAL_WRITE
    rig.sync_all()
    assert rig.step_phase().type == "ok"
    assert rig.shared.noise is None, "calibrated on entering SHADOW only"
    rig.sync_all()
    rig.finish_backfill()
    assert rig.run(controller.attempt(Step.ADVANCE)).type == "ok"  # with the default plan
    assert rig.shared.noise is not None and rig.shared.noise.samples == 2
    assert [e.value for e in rig.recorder.events if e.f == "phase"] == [
        {"phase": "DUAL_WRITE", "epoch": 1, "step": "advance"},
        {"phase": "BACKFILL", "epoch": 2, "step": "advance"},
        {"phase": "SHADOW", "epoch": 3, "step": "advance"},
    ]
    report = controller.report()
    assert report == {
        "transitions": [
            {"time": t, "phase": p, "epoch": e}
            for t, (p, e) in zip(
                [t for t, _, _ in controller.transitions],
                [("DUAL_WRITE", 1), ("BACKFILL", 2), ("SHADOW", 3)],
                strict=True,
            )
        ],
        "gate_waits": [
            {
                "time": controller.waits[0].time,
                "target": "BACKFILL",
                "reasons": ["1 instance(s) still run an older epoch: app"],
            }
        ],
        "noise_floor": rig.shared.noise.to_json(),
        "mirror": rig.shared.mirror.to_json(),
        "verification": {
            "differences": 0,
            "differing_buckets": 0,
            "old_count": len(rig.catalog.records()),
            "new_count": len(rig.catalog.records()),
        },
    }
    assert controller.phase_since == controller.transitions[-1][0]
    rig.sync_all()
    assert rig.step_phase(Step.ABORT).type == "ok"
    assert controller.report()["verification"] is None
    assert rig.store.load_checkpoint() == Checkpoint()


def test_the_controller_judges_cutover_and_decommission_on_what_it_sees_now() -> None:
    """The controller fills the gate's inputs from the shared figures (mirrored reads, the
    noise floor, new's p99, the last fallback to old) and its own clock of the phases: the
    soak counts from the CUTOVER publish, restarting at a later fallback to old."""
    rig = Rig(SAFE, policy=GatePolicy(min_mirrored_reads=10, soak_ns=SECOND))
    rig.add_instance("app")
    rig.advance_to_shadow()

    def reasons(step: Step = Step.ADVANCE) -> tuple[str, ...]:
        outcome = rig.step_phase(step)
        return () if outcome.type == "ok" else outcome.value.reasons

    assert reasons() == ("only 0 of 10 mirrored reads compared",)
    for i in range(20):
        rig.shared.mirror.add(compare([], [], 10), i % 10 == 0)  # 10%: within the floor
    rig.shared.noise = NoiseFloor(threshold=0.7, rate=0.02, samples=100, old_recall=0.98)
    rig.controller.new_p99_ms = lambda: 99.0
    assert reasons() == ("new's p99 99.0 ms exceeds the SLO 50.0 ms",)
    rig.controller.new_p99_ms = lambda: 10.0
    assert reasons() == ()
    cutover_at = rig.driver.time
    assert rig.coordinator.published.phase is Phase.CUTOVER
    rig.sync_all()
    rig.driver.advance_time(SECOND * 3 // 2)
    rig.shared.last_fallback_to_old = cutover_at + SECOND
    assert reasons() == ("soaked 0.5 s of 1.0 s since the last read fallback to old",)
    rig.shared.last_fallback_to_old = None
    assert reasons() == ()
    assert rig.coordinator.published.phase is Phase.DECOMMISSIONED


def test_cutover_waits_for_a_diff_taken_in_shadow_when_the_fresh_one_fails() -> None:
    """The diff before CUTOVER is there to find writes new acknowledged and lost in SHADOW; the
    diff that cleared the SHADOW gate was taken before SHADOW was published and cannot have
    seen them. If the fresh diff fails (a side is down), the gate must hold. Found by mutation
    testing: `phase_since` is the start of the try that published SHADOW, so that earlier diff
    counted as taken in SHADOW, and the gate opened on it."""
    rig = Rig(SAFE, policy=GatePolicy(min_mirrored_reads=0))
    rig.add_instance("app")
    rig.advance_to_shadow()
    attempt = rig.driver.start(rig.controller.attempt(Step.ADVANCE))
    rig.driver.run_until(attempt, lambda r: isinstance(r, rq.Count))
    rig.driver.step(attempt, Unavailable("old is down"))  # the fresh diff fails
    outcome = rig.driver.run(attempt)
    assert outcome.type == "fail"
    assert rig.coordinator.published.phase is Phase.SHADOW
    (reason,) = outcome.value.reasons
    assert reason.startswith("the verification diff failed (") and "old is down" in reason, reason


def test_shadow_holds_when_the_diff_after_a_clean_one_fails() -> None:
    """The same gap before SHADOW: a clean diff whose gate then held for another reason (a
    repair queued while the diff ran) cannot vouch for what new lost after it. When the next
    try's diff fails, the gate to SHADOW holds; before the fix it opened on the older diff."""
    rig = Rig(SAFE)
    app = rig.add_instance("app")
    for _ in range(2):
        assert rig.step_phase().type == "ok"
        rig.sync_all()
    rig.finish_backfill()
    rig.drain_repairs()
    first = rig.driver.start(rig.controller.attempt(Step.ADVANCE))
    rig.driver.run_until(first, lambda r: isinstance(r, rq.Count))  # the diff begins
    rig.driver.run_until(first, lambda r: isinstance(r, rq.RepairBacklog))  # it is over
    write = rig.driver.start(app.upsert(rig.record("p000003", 2)))
    rig.driver.run_until(write, lambda r: isinstance(r, rq.Upsert) and r.side is Side.NEW)
    rig.driver.step(write, error=Unavailable("new: injected"))
    assert rig.driver.run(write).type == "ok"  # acknowledged; a repair toward new is queued
    held = rig.driver.run(first)
    assert held.type == "fail" and "repair log holds 1 entries" in str(held.value), held
    assert rig.controller.verification is not None
    assert rig.controller.verification.differences == 0  # the clean diff is kept
    rig.drain_repairs()
    second = rig.driver.start(rig.controller.attempt(Step.ADVANCE))
    rig.driver.run_until(second, lambda r: isinstance(r, rq.Count))
    rig.driver.step(second, Unavailable("new is down"))  # this try's diff fails
    outcome = rig.driver.run(second)
    assert outcome.type == "fail", outcome
    assert rig.coordinator.published.phase is Phase.BACKFILL
    (reason,) = outcome.value.reasons
    assert reason.startswith("the verification diff failed (") and "new is down" in reason


# -- strategies -------------------------------------------------------------------------------


def test_an_ablation_switches_off_exactly_what_it_names_and_is_named_after_it() -> None:
    ablated = SAFE.without("read-retry", "mirror-gate")
    assert ablated.name == "safe-without:read-retry,mirror-gate"
    assert ablated.off == ("read-retry", "mirror-gate")
    assert SAFE.off == ()
    assert strategy_named("safe-without: read-retry , mirror-gate") == ablated
    assert strategy_named("safe") is SAFE and strategy_named("naive") is NAIVE


def test_a_strategy_name_that_names_nothing_known_is_refused_with_the_valid_names() -> None:
    protections = ", ".join(PROTECTIONS)
    with pytest.raises(ValueError) as unknown:
        SAFE.without("read-retry", "nope")
    assert str(unknown.value) == f"unknown protection 'nope'; the protections are: {protections}"
    with pytest.raises(ValueError) as empty:
        strategy_named("safe-without: ,")
    assert str(empty.value) == (
        f"'safe-without: ,' names no protection; the protections are: {protections}"
    )
    with pytest.raises(ValueError) as other:
        strategy_named("fast")
    assert str(other.value) == (
        "unknown strategy 'fast'; valid strategies: naive, safe, or safe-without:NAME[,NAME] "
        f"with NAME one of: {protections}"
    )


# -- the worker loops -------------------------------------------------------------------------


def test_the_backfill_worker_copies_only_in_backfill_and_polls_otherwise() -> None:
    """Outside BACKFILL, and once the copy is done, it sleeps a poll interval; in BACKFILL it
    copies batch after batch without pausing (unthrottled); a batch that fails waits at least
    a poll interval before the next."""
    rig = Rig(SAFE, batch_size=16)
    worker = rig.driver.start(backfill_worker(rig.backfill, rig.coordinator, poll_ns=777))
    assert rig.driver.pending(worker) == rq.Sleep(777)
    rig.driver.step(worker)
    assert rig.driver.pending(worker) == rq.Sleep(777)
    for _ in range(2):
        rig.coordinator.publish(Step.ADVANCE, rig.driver.time, wait_for_acks=False)
    rig.driver.step(worker)
    rig.driver.run_until(worker, rq.is_side_request)
    rig.driver.step(worker, Unavailable("old is down"))
    assert rig.driver.pending(worker) == rq.Sleep(777), "a failed batch pauses at once"
    rig.driver.step(worker)
    sleeps = 0
    while not rig.store.load_checkpoint().done:
        if isinstance(rig.driver.pending(worker), rq.Sleep):
            sleeps += 1
        rig.driver.step(worker)
    assert sleeps == 0
    assert rig.driver.run_until(worker, lambda r: isinstance(r, rq.Sleep)) == rq.Sleep(777)
    assert rig.store.load_checkpoint().copied == len(rig.catalog.records())
    assert rig.store.load_checkpoint().attempt == rig.coordinator.published.epoch
    rig.driver.step(worker)
    assert rig.driver.run_until(worker, lambda r: isinstance(r, rq.Sleep)) == rq.Sleep(777)
    assert backfill_worker(rig.backfill, rig.coordinator).kind == "backfill"


def test_the_repair_worker_drains_without_pausing_and_only_clears_once_decommissioned() -> None:
    """Pass after pass of at most `limit` entries, with no pause while a pass repairs
    something, then a pause of `interval_ns` once one finds nothing; once DECOMMISSIONED is
    published it removes what it reads without copying anything."""
    rig = Rig(SAFE)
    rig.store.add_repairs([RepairEntry("p000001", Side.NEW), RepairEntry("p000002", Side.NEW)])
    worker = rig.driver.start(repair_worker(rig.coordinator, interval_ns=555, limit=1))
    requests = []
    while not isinstance(rig.driver.pending(worker), rq.Sleep):
        requests.append(rig.driver.pending(worker))
        rig.driver.step(worker)
    assert rig.driver.pending(worker) == rq.Sleep(555)
    assert [r.limit for r in requests if isinstance(r, rq.NextRepairs)] == [1, 1, 1]
    assert rig.store.repair_backlog() == 0
    for _ in range(5):
        rig.coordinator.publish(Step.ADVANCE, rig.driver.time, wait_for_acks=False)
    rig.store.add_repairs([RepairEntry("p000003", Side.NEW)])
    rig.driver.step(worker)
    copies = []
    while not isinstance(rig.driver.pending(worker), rq.Sleep):
        copies.append(rig.driver.pending(worker))
        rig.driver.step(worker)
    assert rig.store.repair_backlog() == 0
    assert not [r for r in copies if rq.is_side_request(r)], "retired: nothing is copied"
    assert len([r for r in copies if isinstance(r, rq.NextRepairs)]) == 2, "no pause after a drop"
    assert repair_worker(rig.coordinator).kind == "repair"


def test_the_backfill_throttle_halves_on_trouble_and_grows_back_additively() -> None:
    """Over the SLO (or on an error) the batch halves, down to its minimum, and the pause
    doubles from at least 50 ms up to its maximum; at or under the SLO the batch grows by 32
    up to its maximum and the pause shrinks by a quarter, to none once at most 1 ms. An
    unthrottled backfill ignores all of it, and no latency figure is no trouble."""
    throttle = Throttle(slo_p99_ms=50.0, batch_size=64, min_batch=20, max_batch=100)
    throttle.observe(50.1)
    assert (throttle.batch_size, throttle.pause_ns) == (32, 50_000_000)
    throttle.observe(None, error=True)
    assert (throttle.batch_size, throttle.pause_ns) == (20, 100_000_000)
    throttle.observe(50.0)
    assert (throttle.batch_size, throttle.pause_ns) == (52, 75_000_000)
    throttle.observe(None)
    assert (throttle.batch_size, throttle.pause_ns) == (84, 56_250_000)
    throttle.observe(10.0)
    assert throttle.batch_size == 100
    throttle.pause_ns = 1_000_001
    throttle.observe(10.0)
    assert throttle.pause_ns == 750_000
    throttle.observe(10.0)
    assert throttle.pause_ns == 0
    capped = Throttle(pause_ns=1_500_000_000, max_pause_ns=2_000_000_000)
    capped.observe(99.0)
    assert capped.pause_ns == 2_000_000_000
    free = Throttle(batch_size=64, unthrottled=True)
    free.observe(99.0, error=True)
    assert (free.batch_size, free.pause_ns) == (64, 0)


def test_a_backfill_copies_batch_by_batch_checkpointing_each_and_starts_over_when_asked() -> None:
    """Each batch reports what it copied and where the cursor stands, and the checkpoint
    (durable and in memory) follows it; a finished copy copies nothing more; a batch for
    another attempt starts from the beginning; a failed scan or write leaves the checkpoint
    where it was and tells the throttle."""
    rig = Rig(SAFE, records=40)
    backfill = Backfill(SAFE, Throttle(batch_size=16, min_batch=8))
    outcomes = []
    for expected in (16, 32):
        outcomes.append(rig.run(backfill.batch(2)))
        cursor = outcomes[-1].value["cursor"]
        assert outcomes[-1] == rq.Outcome("ok", {"copied": 16, "done": False, "cursor": cursor})
        assert rig.store.load_checkpoint() == Checkpoint(cursor, expected, False, 2)
        assert backfill.checkpoint == rig.store.load_checkpoint()
    assert backfill.done_at is None
    last = rig.run(backfill.batch(2))
    assert last.value["copied"] == 8 and last.value["done"] is True
    assert rig.store.load_checkpoint() == Checkpoint(last.value["cursor"], 40, True, 2)
    assert backfill.done_at is not None and backfill.done_at <= rig.driver.time
    assert rig.run(verify()).value.new_count == 40
    assert rig.run(backfill.batch(2)) == rq.Outcome("ok", {"copied": 0, "done": True})
    again = rig.run(backfill.batch(5))
    assert again.value["copied"] == 16
    assert rig.store.load_checkpoint() == Checkpoint(again.value["cursor"], 16, False, 5)
    backfill.reset()
    assert (backfill.checkpoint, backfill.done_at) == (Checkpoint(), None)
    before = rig.store.load_checkpoint()
    for request_type in (rq.Scan, rq.Upsert):
        batch = rig.driver.start(backfill.batch(5))
        rig.driver.run_until(batch, lambda r, t=request_type: isinstance(r, t))
        rig.driver.step(batch, Unavailable("down"))
        failed = rig.driver.run(batch)
        assert failed == rq.Outcome("fail", {"copied": 0, "done": False}, error="down")
        assert rig.store.load_checkpoint() == before
    assert backfill.throttle.batch_size == 8  # halved twice, to its minimum
    assert backfill.batch(5).kind == "backfill"


def test_the_naive_backfill_keeps_its_cursor_in_memory_only() -> None:
    rig = Rig(NAIVE, records=40)
    backfill = Backfill(NAIVE, Throttle(batch_size=16))
    first = rig.run(backfill.batch(2))
    assert first.value["copied"] == 16
    assert backfill.checkpoint == Checkpoint(first.value["cursor"], 16, False, 2)
    assert rig.store.load_checkpoint() == Checkpoint()
