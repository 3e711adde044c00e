"""The sans-I/O migration core: every operation of a live migration as a generator that
yields requests and is sent their results, with no I/O, clock or randomness of its own.

A driver (the simulator's, the live service's, the tests' step driver) runs an `Operation`:
it takes each request the operation yields, carries it out however it likes, and sends back
the result or throws in the side's error, until the operation returns its `Outcome`.

    layer = MigrationLayer(view, LayerConfig(strategy=SAFE), shared)  # one app instance
    op = layer.upsert(record)          # an Operation; also delete, get and search
    controller = Controller(coordinator, SAFE, backfill, shared)  # phases through their gates
    Backfill(...), repair_pass(), verify()  # the background work, as operations

Phases are a table (`TRANSITIONS`, `ROUTES`); a strategy (`SAFE`, `NAIVE`,
`strategy_named("safe-without:...")`) is data the operations read. docs/core-guide.md walks
through writing a driver.
"""

from vecmig.harness.core.controller import (
    TO_DECOMMISSIONED,
    Controller,
    GateWait,
    Plan,
    backfill_worker,
    repair_worker,
)
from vecmig.harness.core.gates import GateInputs, GatePolicy, GateResult, Verification
from vecmig.harness.core.layer import LayerConfig, MigrationLayer, Shared
from vecmig.harness.core.phases import (
    ROUTES,
    TRANSITIONS,
    Coordinator,
    InstanceView,
    Phase,
    PhaseError,
    Published,
    Route,
    Step,
    adjacent,
    lease_rules,
    next_phase,
)
from vecmig.harness.core.requests import (
    AddIntent,
    AddRepairs,
    AnnouncePhase,
    Checksums,
    ClearIntent,
    Count,
    Delete,
    Exact,
    Get,
    LoadCheckpoint,
    NextRepairs,
    NoteRecent,
    Now,
    Operation,
    Outcome,
    PendingFor,
    RecentSince,
    RecordEvent,
    RemoveRepairs,
    RepairBacklog,
    SaveCheckpoint,
    Scan,
    Search,
    Sleep,
    Upsert,
    is_side_request,
    side_of,
)
from vecmig.harness.core.state import (
    Checkpoint,
    MigrationState,
    RecentWrite,
    RepairEntry,
    StateStore,
)
from vecmig.harness.core.strategy import NAIVE, PROTECTIONS, SAFE, Strategy, strategy_named
from vecmig.harness.core.versions import HybridLogicalClock
from vecmig.harness.core.workers import (
    Backfill,
    Throttle,
    calibrate_noise_floor,
    repair_pass,
    verify,
)

__all__ = [
    # operations and the requests they yield (requests.py)
    "Operation",
    "Outcome",
    "Upsert",
    "Delete",
    "Get",
    "Search",
    "Scan",
    "Checksums",
    "Count",
    "Exact",
    "AddRepairs",
    "AddIntent",
    "ClearIntent",
    "NextRepairs",
    "PendingFor",
    "RepairBacklog",
    "RemoveRepairs",
    "LoadCheckpoint",
    "SaveCheckpoint",
    "NoteRecent",
    "RecentSince",
    "AnnouncePhase",
    "RecordEvent",
    "Now",
    "Sleep",
    "is_side_request",
    "side_of",
    # the layer one app instance runs (layer.py)
    "MigrationLayer",
    "LayerConfig",
    "Shared",
    "HybridLogicalClock",
    # phases and the protocol that moves instances through them (phases.py)
    "Phase",
    "Step",
    "TRANSITIONS",
    "ROUTES",
    "Route",
    "PhaseError",
    "next_phase",
    "adjacent",
    "Coordinator",
    "Published",
    "InstanceView",
    "lease_rules",
    # strategies (strategy.py)
    "Strategy",
    "SAFE",
    "NAIVE",
    "PROTECTIONS",
    "strategy_named",
    # the controller and its gates (controller.py, gates.py)
    "Controller",
    "Plan",
    "GateWait",
    "TO_DECOMMISSIONED",
    "GatePolicy",
    "GateInputs",
    "GateResult",
    "Verification",
    # background work (workers.py, controller.py)
    "Backfill",
    "Throttle",
    "repair_pass",
    "verify",
    "calibrate_noise_floor",
    "backfill_worker",
    "repair_worker",
    # durable state (state.py)
    "MigrationState",
    "StateStore",
    "Checkpoint",
    "RepairEntry",
    "RecentWrite",
]
