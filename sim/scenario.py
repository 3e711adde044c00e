"""Scenarios: what a simulation runs, as a TOML file checked at load time.

A scenario is plain data (dataclasses below). Loading is strict on purpose: an unknown key, a
value of the wrong type or out of range, an unknown fault family, or settings the protocol
cannot keep safe raise `ScenarioError` naming the key (as a dotted path) and what it accepts,
before anything runs. Durations are seconds (`*_s`) or milliseconds (`*_ms`) as the key says;
the simulator works in nanoseconds.

Layout (every section and key is optional; see `scenarios/default.toml` for a full example):

    name, description, duration_s, seed
    [catalog]     products, dim, categories
    [clusters]    shards, replicas, concurrency_per_node, ef_search, fidelity, profile,
                  old_profile, new_profile, sample, judge
    [latency]     network, search, get, upsert_per_record, scan_per_item, checksums_per_record,
                  count, store (each a distribution table), op_timeout_ms
    [traffic]     rate, diurnal_amplitude, diurnal_period_s, shopper_share, filtered_share,
                  exact_sample_rate, [traffic.merchant] mix, [[traffic.spikes]],
                  [traffic.bulk_reembed]
    [instances]   count, config_delay, poll_interval_ms, lease_ms, lease_margin_ms,
                  max_clock_skew_ms, restart_s
    [migration]   start_s, steps, hold_s, retry_ms, slo_p99_ms, min_mirrored_reads,
                  recall_parity_tolerance, soak_s, stall_after_s, batch_size, backfill_rate,
                  mirror_sample_rate, lagged_sides, visibility_window_ms,
                  refresh_interval_ms, calibration_queries, repair_interval_ms
    [[faults]]    see `vecmig.sim.faults.FaultSpec`
    [swarm]       enabled, keep_scenario_faults, families, min_families, max_families,
                  window_s

Beyond each key's own range, `_cross_checks` refuses what the migration protocol cannot keep
safe (leases against polls, timeouts and skew; node faults with one replica; lost acks where
nothing repairs them; clock skew beyond its declared bound; plans the phase table cannot
walk).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vecmig import scenarios as scenarios_package
from vecmig.harness.core.controller import Plan
from vecmig.harness.core.phases import Phase, Step, lease_rules
from vecmig.harness.costs import ProfileError, load_profile
from vecmig.sim.faults import (
    SWARM_FAMILIES,
    FaultLimits,
    FaultSpec,
    SwarmConfig,
    fault_problems,
    schedule_problems,
    survivable,
    swarm_problems,
)

SCENARIO_DIR = Path(scenarios_package.__file__).resolve().parent
MS = 1_000_000
SECOND = 1_000_000_000


class ScenarioError(ValueError):
    """A scenario that cannot run: names the key and the values it accepts."""


# ---------------------------------------------------------------------------------------------
# The schema. `meta` on a field: "min"/"max" bounds, "choices" for strings, "doc" for messages.


def _f(default: Any, **meta: Any) -> Any:
    if isinstance(default, list | dict) or dataclasses.is_dataclass(default):
        value = default
        return field(default_factory=lambda: _copy(value), metadata=meta)
    return field(default=default, metadata=meta)


def _copy(value: Any) -> Any:
    if isinstance(value, list):
        return list(value)
    if isinstance(value, dict):
        return dict(value)
    return dataclasses.replace(value)


DISTRIBUTIONS = ("constant", "lognormal", "exponential", "uniform")


@dataclass(frozen=True)
class Distribution:
    """A latency distribution in milliseconds.

    constant: `ms`; lognormal: `median_ms`, `sigma`; exponential: `mean_ms`;
    uniform: `low_ms`..`high_ms`.
    """

    dist: str = _f("lognormal", choices=DISTRIBUTIONS)
    ms: float = _f(0.0, min=0.0)
    median_ms: float = _f(1.0, min=0.0)
    sigma: float = _f(0.5, min=0.0, max=5.0)
    mean_ms: float = _f(1.0, min=0.0)
    low_ms: float = _f(0.0, min=0.0)
    high_ms: float = _f(1.0, min=0.0)


def lognormal(median_ms: float, sigma: float) -> Distribution:
    return Distribution("lognormal", median_ms=median_ms, sigma=sigma)


def constant(ms: float) -> Distribution:
    return Distribution("constant", ms=ms)


@dataclass(frozen=True)
class CatalogConfig:
    products: int = _f(2000, min=1)
    dim: int = _f(32, min=2, max=4096)
    categories: int = _f(8, min=1)


FIDELITIES = ("exact", "scaled")
JUDGED = ("all", "sample")


@dataclass(frozen=True)
class ClustersConfig:
    shards: int = _f(2, min=1, max=64)
    replicas: int = _f(2, min=1, max=5)
    concurrency_per_node: int = _f(8, min=1)
    ef_search: int = _f(64, min=10)
    fidelity: str = _f("exact", choices=FIDELITIES)
    """exact: every product a vector in a real index, service times from [latency]; scaled:
    a sample of the catalog holds vectors, service times come from a cost profile
    (`vecmig.sim.scaled`)."""
    profile: str = _f("")
    """scaled: the cost profile, a name in profiles/ or a path (default fake-dim<catalog.dim>)."""
    old_profile: str = _f("")
    """scaled: the old side's cost profile, when it is another engine than new (default profile)."""
    new_profile: str = _f("")
    """scaled: the new side's cost profile (default profile): a pgvector -> Qdrant migration
    charges each side what its own engine costs."""
    sample: int = _f(2000, min=1)
    """scaled: about how many products hold vectors (every n-th of catalog.products)."""
    judge: str = _f("all", choices=JUDGED)
    """scaled: which ids the history records and the checker judges: all (every client op,
    the whole catalog in the load and final events), or sample (ops on sampled ids and every
    search; the others run alike but are left out, which keeps a catalog of millions small)."""


# Service times measured on the fake cluster (bench/bench_sim_calibrate.py: one shard of
# 20,000 products, dim 128, hnswlib M=16, ef 64, on one core of the dev box): search 78 us,
# get 6 us, upsert 210 us per record. A real engine adds request handling on top, which the
# network distribution stands for. Scan and checksums cost about a get per item.
SEARCH_MEDIAN_MS = 0.078
GET_MEDIAN_MS = 0.006
UPSERT_PER_RECORD_MS = 0.210
SCAN_PER_ITEM_MS = 0.006


@dataclass(frozen=True)
class LatencyConfig:
    network: Distribution = _f(lognormal(0.5, 0.4))
    """One way, between an app instance (or a worker) and a cluster."""
    search: Distribution = _f(lognormal(SEARCH_MEDIAN_MS, 0.3))
    get: Distribution = _f(lognormal(GET_MEDIAN_MS, 0.3))
    upsert_per_record: Distribution = _f(lognormal(UPSERT_PER_RECORD_MS, 0.3))
    scan_per_item: Distribution = _f(lognormal(SCAN_PER_ITEM_MS, 0.2))
    checksums_per_record: Distribution = _f(lognormal(0.001, 0.2))
    count: Distribution = _f(lognormal(0.05, 0.2))
    store: Distribution = _f(constant(0.1))
    """The durable migration-state store (repair log, checkpoint)."""
    op_timeout_ms: float = _f(250.0, min=1.0)
    """A side request that takes longer raises Timeout into the operation."""


MERCHANT_ACTIONS = ("price", "stock", "add", "reembed", "delist", "relist")
"""`relist` lists a delisted product again (its next version): a delete followed by a
re-insert of the same id, the classic trap for tombstones."""


@dataclass(frozen=True)
class Spike:
    start_s: float = _f(0.0, min=0.0)
    duration_s: float = _f(10.0, min=0.0)
    factor: float = _f(5.0, min=0.0)


@dataclass(frozen=True)
class BulkReembed:
    """A batch job that re-embeds products in id order (a new embedding model)."""

    start_s: float = _f(0.0, min=0.0)
    rate: float = _f(20.0, min=0.0)
    """Products per second."""
    count: int = _f(500, min=0)


@dataclass(frozen=True)
class TrafficConfig:
    rate: float = _f(60.0, min=0.0)
    """Client sessions per second at the diurnal mean (a shopper session is a get and a search)."""
    diurnal_amplitude: float = _f(0.3, min=0.0, max=1.0)
    diurnal_period_s: float = _f(240.0, min=1.0)
    shopper_share: float = _f(0.75, min=0.0, max=1.0)
    """The rest of the sessions are merchants' writes."""
    filtered_share: float = _f(0.1, min=0.0, max=1.0)
    """Searches filtered by category or in_stock."""
    k: int = _f(10, min=1, max=1000)
    exact_sample_rate: float = _f(0.05, min=0.0, max=1.0)
    """Client searches that also carry their exact top-k, for recall (brute force is costly)."""
    merchant: dict[str, float] = _f(
        {"price": 0.45, "stock": 0.25, "add": 0.1, "reembed": 0.1, "delist": 0.1},
        keys=MERCHANT_ACTIONS,
        min=0.0,
    )
    hot_ids: int = _f(0, min=0)
    """How many products are hot (the first ones of the catalog); 0: none."""
    hot_share: float = _f(0.0, min=0.0, max=1.0)
    """The share of sessions that go to a hot product."""
    spikes: list[Spike] = _f([])
    bulk_reembed: BulkReembed | None = _f(None)


@dataclass(frozen=True)
class InstancesConfig:
    count: int = _f(3, min=1, max=256)
    config_delay: Distribution = _f(lognormal(200.0, 0.5))
    """How long a published phase takes to reach an instance (a config store's watch)."""
    poll_interval_ms: float = _f(1000.0, min=1.0)
    """Instances re-read the config store and renew their lease this often."""
    lease_ms: float = _f(5000.0, min=1.0)
    lease_margin_ms: float = _f(1000.0, min=0.0)
    """An instance stops serving this long before its lease runs out (see
    `vecmig.harness.core.phases.lease_rules` for what it must cover)."""
    max_clock_skew_ms: float = _f(300.0, min=0.0)
    """The declared bound on any instance's clock skew; clock-skew faults stay within it."""
    restart_s: float = _f(5.0, min=0.0)
    """How long a crashed instance stays down unless its fault says otherwise."""


PHASE_NAMES = ("OLD_ONLY", "DUAL_WRITE", "BACKFILL", "SHADOW", "CUTOVER", "DECOMMISSIONED")
STEP_NAMES = ("advance", "rollback", "abort")
SIDE_NAMES = ("old", "new")


@dataclass(frozen=True)
class MigrationConfig:
    start_s: float = _f(5.0, min=0.0)
    """When the controller starts walking the plan."""
    steps: list[str] = _f(["advance"] * 5, choices=STEP_NAMES)
    hold_s: dict[str, float] = _f(
        {"DUAL_WRITE": 5.0, "SHADOW": 20.0, "CUTOVER": 10.0}, keys=PHASE_NAMES, min=0.0
    )
    retry_ms: float = _f(500.0, min=1.0)
    slo_p99_ms: float = _f(50.0, min=0.0)
    min_mirrored_reads: int = _f(100, min=0)
    recall_parity_tolerance: float = _f(0.05, min=0.0, max=1.0)
    soak_s: float = _f(10.0, min=0.0)
    stall_after_s: float = _f(90.0, min=1.0)
    """A gate that holds longer than this (after the phase's hold) makes the run stalled."""
    end_after_plan_s: float | None = _f(None, min=0.0)
    """Stop the traffic this long after the plan's last step (unset: run all of duration_s)."""
    batch_size: int = _f(128, min=1)
    backfill_rate: float = _f(0.0, min=0.0)
    """An operator's cap on the backfill, in records per second (0: only the throttle)."""
    mirror_sample_rate: float = _f(0.2, min=0.0, max=1.0)
    lagged_sides: list[str] = _f([], choices=SIDE_NAMES)
    """Sides whose searches see writes late: the safe layer corrects them (freshness overlay)."""
    visibility_window_ms: float = _f(2000.0, min=0.0)
    refresh_interval_ms: float = _f(1000.0, min=1.0)
    """How often a side with visibility lag makes its writes searchable."""
    calibration_queries: int = _f(30, min=0)
    repair_interval_ms: float = _f(200.0, min=1.0)


@dataclass(frozen=True)
class Scenario:
    name: str = _f("scenario")
    description: str = _f("")
    duration_s: float = _f(180.0, min=1.0)
    """Simulated time of client traffic; the end-of-run reconciliation comes after."""
    seed: int = _f(1, min=0)
    catalog: CatalogConfig = _f(CatalogConfig())
    clusters: ClustersConfig = _f(ClustersConfig())
    latency: LatencyConfig = _f(LatencyConfig())
    traffic: TrafficConfig = _f(TrafficConfig())
    instances: InstancesConfig = _f(InstancesConfig())
    migration: MigrationConfig = _f(MigrationConfig())
    faults: list[FaultSpec] = _f([])
    swarm: SwarmConfig = _f(SwarmConfig())
    source: str = field(default="", metadata={"internal": True})

    def ns(self, seconds: float) -> int:
        return round(seconds * SECOND)


# ---------------------------------------------------------------------------------------------
# Loading.


def scenario_names() -> list[str]:
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))


def resolve(name_or_path: str) -> Path:
    """A scenario file from a path, or a name from scenarios/ (with or without .toml).

    A bare name (no folder, no suffix) is looked up in scenarios/ first, so a file or folder
    called "default" in the working directory does not shadow the shipped scenario.
    """
    path = Path(name_or_path)
    bare = path.name == name_or_path and not path.suffix
    named = SCENARIO_DIR / f"{path.stem if path.suffix == '.toml' else name_or_path}.toml"
    if bare and named.is_file():
        return named
    if path.is_dir():
        raise ScenarioError(
            f"{path}: is a directory, not a scenario file; give a TOML file (for example "
            f"{path / 'my-plan.toml'}) or a name from {SCENARIO_DIR} "
            f"({', '.join(scenario_names()) or 'none'})"
        )
    if path.is_file():
        return path
    if path.parent == Path(".") and named.is_file():
        return named
    raise ScenarioError(
        f"no scenario {name_or_path!r}: no such file, and not a name in {SCENARIO_DIR} "
        f"(names: {', '.join(scenario_names()) or 'none'})"
    )


def load(name_or_path: str, overrides: Mapping[str, Any] | None = None) -> Scenario:
    """The scenario of a file or a name in scenarios/, checked. `overrides` set keys by their
    dotted path (`{"migration.batch_size": 64}`) before the checks, so every rule applies to
    the values they give as to the file's own (`vecmig simulate --what-if` builds each of
    its variants so)."""
    path = resolve(name_or_path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        line = text_line(exc.object, exc.start)
        raise ScenarioError(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} on line {line}); "
            "TOML files are UTF-8: save it as UTF-8 (for example "
            f"`iconv -f latin1 -t utf-8 {path}`)"
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML ({exc})") from None
    for key, value in (overrides or {}).items():
        _set(data, key, value)
    scenario = from_dict(data, source=str(path))
    if "name" not in data:
        scenario = dataclasses.replace(scenario, name=path.stem)
    return scenario


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `dotted` (`section.key`) in a parsed TOML table, making the section if the file
    left it out; a section that is not a table is left for the checks to name."""
    *sections, key = dotted.split(".")
    table = data
    for section in sections:
        inner = table.setdefault(section, {})
        if not isinstance(inner, dict):
            return
        table = inner
    table[key] = value


def text_line(raw: bytes, offset: int) -> int:
    """The 1-based line of byte `offset` in `raw`."""
    return raw.count(b"\n", 0, offset) + 1


def from_dict(data: Mapping[str, Any], source: str = "scenario") -> Scenario:
    """A checked `Scenario` from a parsed TOML table. Raises `ScenarioError`, naming every
    problem at once, one per line."""
    try:
        scenario: Scenario = _build(Scenario, data, "")
    except ScenarioError as exc:
        raise ScenarioError(f"{source}: {exc}") from None
    scenario = dataclasses.replace(scenario, source=source)
    swarm = data.get("swarm", {})
    if "families" not in swarm:
        # Left out, the swarm draws every family this scenario can survive.
        families = survivable(
            SWARM_FAMILIES, replicas=scenario.clusters.replicas, instances=scenario.instances.count
        )
        scenario = dataclasses.replace(
            scenario, swarm=dataclasses.replace(scenario.swarm, families=families)
        )
    problems = _cross_checks(scenario)
    if len(problems) == 1:
        raise ScenarioError(f"{source}: {problems[0]}")
    if problems:
        lines = "\n".join(f"  {problem}" for problem in problems)
        raise ScenarioError(f"{source}: {len(problems)} problems:\n{lines}")
    return scenario


def fault_limits(s: Scenario) -> FaultLimits:
    """What the scenario lets its faults do: the sizes and bounds `fault_problems` checks and
    the swarm draws within."""
    return FaultLimits(
        instances=s.instances.count,
        shards=s.clusters.shards,
        replicas=s.clusters.replicas,
        lagged_sides=tuple(s.migration.lagged_sides),
        max_skew_ms=s.instances.max_clock_skew_ms,
        start_s=s.migration.start_s,
        hold_s=dict(s.migration.hold_s),
        steps_back=FaultLimits.plan_steps_back(s.migration.steps),
    )


def _cross_checks(s: Scenario) -> list[str]:
    """The rules between keys: what the protocol needs to keep every read right and every
    acknowledged write, and what the simulator needs to run. Each message names its keys."""
    limits = fault_limits(s)
    problems = []
    for i, spec in enumerate(s.faults):
        problems += fault_problems(spec, limits, f"faults[{i}]")
    problems += schedule_problems(s.faults, limits)
    problems += swarm_problems(s.swarm, limits)
    if s.traffic.shopper_share < 1.0 and not any(v > 0 for v in s.traffic.merchant.values()):
        problems.append("traffic.merchant: at least one action needs a positive weight")
    if (
        s.migration.lagged_sides
        and s.migration.visibility_window_ms <= s.migration.refresh_interval_ms
    ):
        problems.append(
            f"migration.visibility_window_ms ({s.migration.visibility_window_ms:g}) must exceed "
            f"migration.refresh_interval_ms ({s.migration.refresh_interval_ms:g}), or the "
            "freshness overlay forgets writes before a lagged side shows them"
        )
    problems += _lease_problems(s)
    problems += _fidelity_problems(s)
    plan = Plan(steps=tuple(Step(x) for x in s.migration.steps))
    problems += [
        f"migration.steps: {problem} (the plan starts in OLD_ONLY)"
        for problem in plan.problems(Phase.OLD_ONLY)
    ]
    return problems


def profile_name(s: Scenario, side: str = "old") -> str:
    """The cost profile side `side` ("old" or "new") of a scaled scenario uses: its own, the
    scenario's, or the shipped one for its dimension."""
    c = s.clusters
    return getattr(c, f"{side}_profile") or c.profile or f"fake-dim{s.catalog.dim}"


PROFILE_KEYS = ("profile", "old_profile", "new_profile")


def _fidelity_problems(s: Scenario) -> list[str]:
    """A scaled scenario needs readable profiles measured at its dimension; an exact one
    takes no profile (it would be silently ignored)."""
    c = s.clusters
    if c.fidelity == "exact":
        return [
            f"clusters.{key} ({value!r}) is used only with clusters.fidelity = "
            f'"scaled"; remove it, or set fidelity = "scaled"'
            for key in (*PROFILE_KEYS, "judge")
            if (value := getattr(c, key)) != ("all" if key == "judge" else "")
        ]
    problems = []
    for side in ("old", "new"):
        key = f"{side}_profile" if getattr(c, f"{side}_profile") else "profile"
        try:
            profile = load_profile(profile_name(s, side))
        except ProfileError as exc:
            problems.append(f"clusters.{key}: {exc}")
            continue
        if profile.dim != s.catalog.dim:
            problems.append(
                f"clusters.{key}: {profile.name!r} was measured at dimension {profile.dim}, "
                f"but catalog.dim is {s.catalog.dim}; measure one with "
                f"`vecmig calibrate fake --dim {s.catalog.dim}` and name it"
            )
    return list(dict.fromkeys(problems))


def with_fidelity(s: Scenario, fidelity: str, profile: str | None = None) -> Scenario:
    """`s` at another fidelity (and profile, for both sides), checked as a loaded scenario is."""
    clusters = dataclasses.replace(s.clusters, fidelity=fidelity)
    if profile is not None:
        clusters = dataclasses.replace(clusters, profile=profile, old_profile="", new_profile="")
    changed = dataclasses.replace(s, clusters=clusters)
    problems = _fidelity_problems(changed)
    if problems:
        raise ScenarioError(f"{s.source or s.name}: {problems[0]}")
    return changed


# Which keys each of `lease_rules`' rules is about, by how its message starts.
LEASE_RULE_KEYS = {
    "the lease margin": (
        "instances.lease_margin_ms",
        "latency.op_timeout_ms",
        "instances.max_clock_skew_ms",
    ),
    "the lease (": (
        "instances.lease_ms",
        "instances.poll_interval_ms",
        "instances.lease_margin_ms",
        "instances.max_clock_skew_ms",
    ),
}
LEASE_KEYS = (
    "instances.lease_ms",
    "instances.poll_interval_ms",
    "instances.lease_margin_ms",
    "latency.op_timeout_ms",
    "instances.max_clock_skew_ms",
)


def _lease_problems(s: Scenario) -> list[str]:
    i = s.instances
    broken = lease_rules(
        lease_ns=int(i.lease_ms * MS),
        poll_ns=int(i.poll_interval_ms * MS),
        margin_ns=int(i.lease_margin_ms * MS),
        request_timeout_ns=int(s.latency.op_timeout_ms * MS),
        max_skew_ns=int(i.max_clock_skew_ms * MS),
    )
    problems = []
    for rule in broken:
        keys = next((k for start, k in LEASE_RULE_KEYS.items() if rule.startswith(start)), None)
        problems.append(f"{', '.join(keys or LEASE_KEYS)}: {rule}; {_lease_fix(s, keys)}")
    return problems


def _lease_fix(s: Scenario, keys: tuple[str, ...] | None) -> str:
    i = s.instances
    if keys == LEASE_RULE_KEYS["the lease margin"]:
        return (
            "set instances.lease_margin_ms to at least "
            f"{s.latency.op_timeout_ms + 2 * i.max_clock_skew_ms:g}, or lower "
            "latency.op_timeout_ms or instances.max_clock_skew_ms"
        )
    if keys == LEASE_RULE_KEYS["the lease ("]:
        return (
            "set instances.lease_ms above "
            f"{i.poll_interval_ms + i.lease_margin_ms + 2 * i.max_clock_skew_ms:g}, or lower "
            "instances.poll_interval_ms or instances.max_clock_skew_ms"
        )
    return "see vecmig.harness.core.phases.lease_rules"


def _build(cls: type, data: Any, path: str) -> Any:
    where = path or "the top level"
    if not isinstance(data, Mapping):
        raise ScenarioError(f"{where} must be a table, got {data!r}")
    check_raw = getattr(cls, "check_raw", None)
    if check_raw is not None:
        try:
            check_raw(data, path)
        except ValueError as exc:
            raise ScenarioError(str(exc)) from None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ScenarioError(
            f"unknown key {_join(path, unknown[0])!r}; valid keys in {where}: {', '.join(fields)}"
        )
    values = {
        name: _value(hints[name], data[name], _join(path, name), fields[name].metadata)
        for name in data
    }
    return cls(**values)


def _value(hint: Any, raw: Any, path: str, meta: Mapping[str, Any]) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return _value(options[0], raw, path, meta)
    if dataclasses.is_dataclass(hint):
        return _build(hint, raw, path)  # type: ignore[arg-type]
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(raw, list):
            raise ScenarioError(f"{path} must be a list, got {raw!r}")
        return [_value(item, x, f"{path}[{i}]", meta) for i, x in enumerate(raw)]
    if origin is dict:
        _, item = typing.get_args(hint)
        if not isinstance(raw, Mapping):
            raise ScenarioError(f"{path} must be a table, got {raw!r}")
        keys = meta.get("keys")
        out = {}
        for key, x in raw.items():
            if keys is not None and key not in keys:
                raise ScenarioError(f"unknown key {path}.{key}; valid keys: {', '.join(keys)}")
            out[key] = _value(item, x, f"{path}.{key}", meta)
        return out
    return _scalar(hint, raw, path, meta)


def _scalar(hint: Any, raw: Any, path: str, meta: Mapping[str, Any]) -> Any:
    if hint is bool:
        if not isinstance(raw, bool):
            raise ScenarioError(f"{path} must be true or false, got {raw!r}")
        return raw
    if hint is int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ScenarioError(f"{path} must be an integer, got {raw!r}")
        value: Any = raw
    elif hint is float:
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
            raise ScenarioError(f"{path} must be a number, got {raw!r}")
        value = float(raw)
    elif hint is str:
        if not isinstance(raw, str):
            raise ScenarioError(f"{path} must be a string, got {raw!r}")
        choices = meta.get("choices")
        if choices is not None and raw not in choices:
            raise ScenarioError(f"{path} must be one of {', '.join(choices)}; got {raw!r}")
        return raw
    else:  # pragma: no cover - a schema mistake, not an input mistake
        raise TypeError(f"no loader for {hint!r} at {path}")
    low, high = meta.get("min"), meta.get("max")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise ScenarioError(f"{path} must be {bounds}, got {raw!r}")
    return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
