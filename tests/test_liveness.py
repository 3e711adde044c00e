"""Liveness (`vecmig.harness.history.liveness`): when a plan's run counts as stalled, and what
the stall says. Unit tests of `Progress` and `Stall`, written for the mutation run of
harness/history (docs/zoo.md): before them only whole simulations exercised this module."""

from __future__ import annotations

from vecmig.harness.history.liveness import SECOND, Progress, Stall


def plan(
    progress: Progress, steps: int, stall_after_s: float | None = 5.0, **extra: object
) -> None:
    progress.plan(
        0, {"steps": [f"step{i}" for i in range(steps)], "stall_after_s": stall_after_s, **extra}
    )


def test_a_history_without_a_plan_is_not_judged() -> None:
    progress = Progress()
    progress.phase_published(0, "DUAL_WRITE")
    progress.gate(1 * SECOND, {"target": "BACKFILL", "reasons": ["waiting"]})
    assert progress.finish(100 * SECOND) is None
    assert progress.done == 0  # phases count only against a plan


def test_a_plan_walked_to_its_end_without_long_holds_is_live() -> None:
    progress = Progress()
    plan(progress, 2)
    progress.phase_published(1 * SECOND, "DUAL_WRITE")
    progress.gate(2 * SECOND, {"target": "BACKFILL", "reasons": ["an instance lags"]})
    progress.phase_published(7 * SECOND, "BACKFILL")  # held exactly the bound: not past it
    assert progress.done == 2
    assert progress.finish(8 * SECOND) is None


def test_an_unfinished_plan_stalls_and_says_which_gate_held_it() -> None:
    progress = Progress()
    plan(progress, 3)
    progress.phase_published(1 * SECOND, "DUAL_WRITE")
    progress.gate(2 * SECOND, {"target": "BACKFILL", "reasons": ["b lags", 7]})
    stall = progress.finish(10 * SECOND)
    assert stall == Stall(
        "unfinished", "DUAL_WRITE", "BACKFILL", 8.0, ("b lags", "7"), 1, 3, 2 * SECOND
    )
    assert stall.describe() == (
        "the plan stopped in DUAL_WRITE after 1 of 3 steps; the gate to BACKFILL held 8.0 s: "
        "b lags; 7"
    )
    assert stall.to_json() == {
        "why": "unfinished",
        "phase": "DUAL_WRITE",
        "target": "BACKFILL",
        "held_s": 8.0,
        "reasons": ["b lags", "7"],
        "steps_done": 1,
        "steps": 3,
        "time": 2 * SECOND,
        "description": stall.describe(),
    }


def test_an_unfinished_plan_with_no_gate_holding_says_where_it_stopped() -> None:
    progress = Progress()
    plan(progress, 3)
    progress.phase_published(1 * SECOND, "DUAL_WRITE")
    progress.gate(2 * SECOND, {"target": "BACKFILL", "reasons": ["b lags"]})
    progress.phase_published(3 * SECOND, "BACKFILL")  # the hold ended, within the bound
    stall = progress.finish(10 * SECOND)
    assert stall == Stall("unfinished", "BACKFILL", None, 0.0, (), 2, 3, 10 * SECOND)
    assert stall.describe() == "the plan stopped in BACKFILL after 2 of 3 steps"


def test_a_gate_held_past_the_bound_stalls_a_finished_plan() -> None:
    progress = Progress()
    plan(progress, 2)
    progress.phase_published(0, "DUAL_WRITE")
    progress.gate(1 * SECOND, {"target": "BACKFILL", "reasons": ["first"]})
    progress.gate(3 * SECOND, {"target": "BACKFILL", "reasons": ["second"]})  # still held
    progress.phase_published(7 * SECOND + 1, "BACKFILL")
    stall = progress.finish(8 * SECOND)
    assert stall == Stall(
        "held", "DUAL_WRITE", "BACKFILL", 6.000000001, ("second",), 1, 2, 1 * SECOND
    )
    assert stall.describe() == "in DUAL_WRITE; the gate to BACKFILL held 6.0 s: second"
    assert stall.to_json()["held_s"] == 6.0


def test_a_gate_still_holding_at_the_end_is_judged_at_the_end() -> None:
    progress = Progress()
    plan(progress, 1)
    progress.phase_published(0, "DUAL_WRITE")
    progress.gate(1 * SECOND, {"target": "BACKFILL", "reasons": ["r"]})
    assert progress.finish(6 * SECOND) is None  # held 5 s: the bound, not past it
    progress = Progress()
    plan(progress, 1)
    progress.phase_published(0, "DUAL_WRITE")
    progress.gate(1 * SECOND, {"target": "BACKFILL", "reasons": ["r"]})
    stall = progress.finish(6 * SECOND + 1)
    assert stall is not None and stall.why == "held" and stall.time == 1 * SECOND


def test_a_gate_to_another_target_starts_a_new_hold() -> None:
    progress = Progress()
    plan(progress, 1)
    progress.phase_published(0, "SHADOW")
    progress.gate(1 * SECOND, {"target": "CUTOVER", "reasons": ["a"]})
    progress.gate(4 * SECOND, {"target": "OLD_ONLY", "reasons": ["b"]})
    assert progress.held_since == 4 * SECOND and progress.held_target == "OLD_ONLY"
    assert progress.finish(9 * SECOND) is None  # neither hold lasted more than 5 s


def test_only_the_first_hold_past_the_bound_is_reported() -> None:
    progress = Progress()
    plan(progress, 3)
    progress.phase_published(0, "DUAL_WRITE")
    progress.gate(1 * SECOND, {"target": "BACKFILL", "reasons": ["one"]})
    progress.phase_published(10 * SECOND, "BACKFILL")
    progress.gate(11 * SECOND, {"target": "SHADOW", "reasons": ["two"]})
    progress.phase_published(30 * SECOND, "SHADOW")
    stall = progress.finish(31 * SECOND)
    assert stall is not None and stall.target == "BACKFILL" and stall.reasons == ("one",)


def test_without_a_bound_no_hold_is_too_long() -> None:
    progress = Progress()
    plan(progress, 1, stall_after_s=None)
    progress.gate(0, {"target": "DUAL_WRITE"})
    progress.phase_published(1000 * SECOND, "DUAL_WRITE")
    assert progress.stall_after_ns is None and progress.finish(1000 * SECOND) is None


def test_a_fractional_bound_counts_in_nanoseconds() -> None:
    progress = Progress()
    plan(progress, 1, stall_after_s=0.5)
    assert progress.stall_after_ns == SECOND // 2


def test_a_plan_that_cannot_be_walked_is_invalid() -> None:
    progress = Progress()
    plan(progress, 2, invalid=["SHADOW -> DUAL_WRITE is not a step", "no such phase X"])
    progress.phase_published(1 * SECOND, "DUAL_WRITE")
    progress.phase_published(2 * SECOND, "BACKFILL")
    stall = progress.finish(3 * SECOND)
    assert stall == Stall(
        "invalid",
        "BACKFILL",
        reasons=("SHADOW -> DUAL_WRITE is not a step", "no such phase X"),
        steps=2,
        time=3 * SECOND,
    )
    assert stall.describe() == (
        "the plan cannot be walked: SHADOW -> DUAL_WRITE is not a step; no such phase X"
    )


def test_a_new_plan_starts_the_count_and_the_hold_over() -> None:
    progress = Progress()
    plan(progress, 5, invalid=["x"])
    progress.phase_published(1 * SECOND, "DUAL_WRITE")
    progress.gate(2 * SECOND, {"target": "BACKFILL"})
    progress.plan(3 * SECOND, {"steps": ["a"]})
    assert (progress.steps, progress.done, progress.held_since) == (1, 0, None)
    assert progress.invalid == () and progress.stall_after_ns is None
    progress.phase_published(4 * SECOND, "BACKFILL")
    assert progress.finish(100 * SECOND) is None


def test_a_stall_outside_any_hold_reports_no_gate() -> None:
    stall = Stall("held", "SHADOW")
    assert stall.describe() == "in SHADOW"
    assert stall.to_json()["target"] is None and stall.to_json()["reasons"] == []


def test_a_stall_rounds_its_hold_to_the_millisecond() -> None:
    held = Stall("held", "SHADOW", "CUTOVER", held_s=1.23456).to_json()["held_s"]
    assert held == 1.235 and isinstance(held, float)


def test_an_empty_plan_counts_no_steps_even_when_a_gate_held() -> None:
    progress = Progress()
    plan(progress, 0)
    progress.gate(0, {"target": "DUAL_WRITE", "reasons": ["r"]})
    stall = progress.finish(10 * SECOND)
    assert stall is not None and (stall.why, stall.steps, stall.steps_done) == ("held", 0, 0)
