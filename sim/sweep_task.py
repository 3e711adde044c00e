"""One seed of a sweep, as data: the task a worker is handed, what it hands back, and the
signature that groups a failure with its look-alikes.

Everything here crosses a process or a network boundary (a local process pool or a Dask
worker), so tasks and results are small frozen dataclasses of plain values: a worker never
writes a file, and the machine that runs the sweep stores what it is sent.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import time
import traceback
import zlib
from dataclasses import dataclass, field
from typing import Any

from vecmig.harness.history.checker import ANOMALIES
from vecmig.sim import report as rep
from vecmig.sim.scenario import Scenario
from vecmig.sim.simulation import RunResult, Simulation

OUTCOMES: tuple[str, ...] = ("valid", "anomalies", "stalled", "unknown", "raised")
"""What a seed can end as: judged valid; anomalies found; a plan that did not complete; a
checker that crashed (unknown); a simulation that raised (with its traceback)."""


@dataclass(frozen=True, order=True)
class Task:
    """One seed to simulate. `scenario` is how a replay command names the scenario (a name
    from scenarios/ or a path); the scenario itself travels beside the task, already loaded,
    so that a worker on another machine needs no copy of the file."""

    scenario: str
    seed: int
    strategy: str
    buggify: bool = False
    duration: float | None = None
    swarm: bool = True

    def key(self, fingerprint: str) -> str:
        """A name unique to this task and this scenario's content: the store's primary key,
        and the Dask key (two sweeps of one scenario on one scheduler may share results)."""
        duration = "-" if self.duration is None else f"{self.duration:g}"
        return (
            f"{self.scenario}@{fingerprint[:12]}/{self.strategy}/seed={self.seed}"
            f"/swarm={int(self.swarm)}/buggify={int(self.buggify)}/duration={duration}"
        )

    def scenario_arg(self) -> str:
        """The scenario as `vecmig simulate` takes it, with the duration override."""
        return self.scenario + ("" if self.duration is None else f" --duration {self.duration:g}")

    def slug(self) -> str:
        """A folder name for this seed's files."""
        name = os.path.basename(self.scenario).removesuffix(".toml")
        tail = ("" if self.swarm else "-noswarm") + ("-buggify" if self.buggify else "")
        duration = "" if self.duration is None else f"-d{self.duration:g}"
        return f"{name}-{self.strategy}-{self.seed}{duration}{tail}"


@dataclass(frozen=True)
class Signature:
    """What a failure looks like, to group seeds that likely share a cause: the first
    anomaly's kind, the phase it happened in, the fault families active then, and the kind of
    client op that saw it."""

    kind: str
    phase: str
    families: tuple[str, ...]
    first_op: str

    def label(self) -> str:
        families = "+".join(self.families) or "no faults"
        return f"{self.kind} in {self.phase} during {families}, first on {self.first_op}"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "phase": self.phase,
            "families": list(self.families),
            "first_op": self.first_op,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Signature:
        return cls(data["kind"], data["phase"], tuple(data["families"]), data["first_op"])


@dataclass(frozen=True)
class SeedResult:
    """What a worker hands back for one task. A passing seed carries only its report; a
    failing one also carries its history, zlib-compressed (about 5 MB of JSON lines for a
    default-scenario seed, 1 MB compressed)."""

    task: Task
    outcome: str
    counts: dict[str, int]
    stalled: bool
    signature: Signature | None
    end_phase: str
    families: tuple[str, ...]
    replay: str
    report: dict[str, Any]
    wall_s: float
    cpu_s: float
    """CPU seconds of the worker process for this seed: what sizing a fleet is based on."""
    worker: str
    history_zlib: bytes | None = field(default=None, repr=False)
    raised: str | None = None
    """For a run that raised: the exception in one line (the traceback is in `report`)."""

    @property
    def failed(self) -> bool:
        return self.outcome != "valid"


def fingerprint(scenario: Scenario) -> str:
    """A digest of what a scenario simulates (its file's path aside): a resumed sweep only
    counts results of the same content."""
    data = dataclasses.asdict(dataclasses.replace(scenario, source=""))
    if scenario.clusters.fidelity == "exact":
        # The fidelity keys came later: an exact scenario's digest leaves them out, so that
        # sweeps stored before they existed still resume.
        for key in ("fidelity", "profile", "old_profile", "new_profile", "sample", "judge"):
            del data["clusters"][key]
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def replay_command(result: RunResult, task: Task) -> str:
    """`vecmig.sim.report.replay_command`, plus the flag a buggified task needs."""
    command = rep.replay_command(result, task.scenario_arg())
    if task.buggify and "--buggify" not in command:
        command += " --buggify"
    return command


def run_seed(task: Task, scenario: Scenario) -> SeedResult:
    """Simulate one task and judge it. Never raises for the simulation's sake: a run that
    crashes is a `raised` result carrying its traceback, so one bad seed cannot sink a sweep."""
    worker = f"{socket.gethostname()}:{os.getpid()}"
    started, cpu = time.perf_counter(), time.process_time()
    try:
        result = Simulation(
            scenario,
            task.strategy,
            task.seed,
            swarm=task.swarm and not task.buggify,
            buggify=task.buggify,
        ).run()
    except Exception as exc:  # noqa: BLE001 - a crashed run is a result, never silence
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        return _crashed(task, exc, wall, cpu, worker)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    history = rep.history_bytes(result)
    report = rep.report_json(result, hashlib.sha256(history).hexdigest(), task.scenario_arg(), wall)
    replay = replay_command(result, task)
    report["replay"] = replay
    verdict = result.verdict.to_json()
    stalled = bool(verdict.get("stalled", False))
    outcome = _outcome(verdict, stalled)
    return SeedResult(
        task=task,
        outcome=outcome,
        counts=result.verdict.counts(),
        stalled=stalled,
        signature=None if outcome == "valid" else signature_of(result, outcome, verdict),
        end_phase=result.end_phase,
        families=tuple(sorted({f["family"] for f in result.faults})),
        replay=replay,
        report=report,
        wall_s=wall,
        cpu_s=cpu,
        worker=worker,
        history_zlib=None if outcome == "valid" else zlib.compress(history, 1),
    )


def _outcome(verdict: dict[str, Any], stalled: bool) -> str:
    """In the order of `vecmig simulate`'s exit code (`harness.cli.exit_code`): an unknown
    verdict or anomalies before a stall, a stall before valid. A stalled run with anomalies
    is `anomalies`, and still counted among the sweep's stalls."""
    if verdict.get("unknown"):
        return "unknown"
    if any(verdict.get(kind) for kind in ANOMALIES):
        return "anomalies"
    if stalled:
        return "stalled"
    return "valid" if verdict["valid"] else "anomalies"


def _crashed(task: Task, exc: BaseException, wall: float, cpu: float, worker: str) -> SeedResult:
    trace = "".join(traceback.format_exception(exc))
    # No RunResult to hand to report.replay_command: the same words, from the task.
    replay = f"vecmig simulate {task.scenario_arg()} --seed {task.seed} --strategy {task.strategy}"
    replay += (" --swarm" if task.swarm else "") + (" --buggify" if task.buggify else "")
    return SeedResult(
        task=task,
        outcome="raised",
        counts=dict.fromkeys(ANOMALIES, 0),
        stalled=False,
        signature=Signature("raised", "-", (), type(exc).__name__),
        end_phase="-",
        families=(),
        replay=replay,
        report={"error": trace, "replay": replay, "seed": task.seed},
        wall_s=wall,
        cpu_s=cpu,
        worker=worker,
        raised="".join(traceback.format_exception_only(exc)).strip(),
    )


# ---------------------------------------------------------------------------------------------
# Signatures.


def signature_of(result: RunResult, outcome: str, verdict: dict[str, Any]) -> Signature:
    """The signature of a failing run (`verdict` is `result.verdict.to_json()`).

    Anomalies: the first example of the first kind found, in the checker's order (failed,
    stale, garbage reads, filter violations, lost writes, resurrected deletes, divergence).
    A stall: kind `stalled`, the phase it stalled in, the families active when its gate began
    to hold, and in place of an op the gate that held (`gate to CUTOVER`) or why it stopped."""
    run_families = tuple(sorted({f["family"] for f in result.faults}))
    if outcome == "stalled":
        return _stall_signature(result, verdict.get("stall") or {}, run_families)
    kind = next((k for k in ANOMALIES if verdict.get(k)), None)
    if outcome == "unknown" or kind is None:
        return Signature(outcome, result.end_phase, run_families, "-")
    example = (verdict["examples"].get(kind) or [{}])[0]
    when = _example_time(example)
    phase = example.get("phase") or (_phase_at(result, when) if when is not None else None)
    if "faults" in example:
        families = tuple(sorted(set(example["faults"])))
    elif when is not None:
        families = _families_at(result, when)
    else:
        families = run_families
    first_op = example.get("f") or example.get("acked_by") or "final"
    return Signature(kind, phase or result.end_phase, families, str(first_op))


def _stall_signature(
    result: RunResult, stall: dict[str, Any], run_families: tuple[str, ...]
) -> Signature:
    when = stall.get("time") or None
    families = _families_at(result, when) if when is not None else run_families
    gate = f"gate to {stall['target']}" if stall.get("target") else str(stall.get("why", "-"))
    return Signature("stalled", stall.get("phase") or result.end_phase, families, gate)


def _example_time(example: dict[str, Any]) -> int | None:
    for key in ("invoke_time", "time"):
        if isinstance(example.get(key), int):
            return int(example[key])
    return None


def _phase_at(result: RunResult, when: int) -> str | None:
    phase = None
    for published in result.phases:
        if published["time"] > when:
            break
        phase = published["phase"]
    return phase


def _families_at(result: RunResult, when: int) -> tuple[str, ...]:
    return tuple(
        sorted(
            {
                f["family"]
                for f in result.faults
                if f["start"] <= when and (f["stop"] is None or when < f["stop"])
            }
        )
    )
