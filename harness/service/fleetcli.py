"""The command line of a fleet: `vecmig control` (the controller) and what `vecmig serve
--config-store` (an instance) adds to a standalone service's start."""

from __future__ import annotations

import argparse
import time
from typing import Any

CONTROL_DESCRIPTION = """\
Run the controller of a fleet of migration-layer instances: the one process that walks the
phases through their gates, runs the backfill and the repair worker, and keeps the
coordinator's state (published phase, epochs, acknowledgements, leases) in a config store that
every instance (`vecmig serve --config-store URL`) hears. It serves the admin API (status,
advance, rollback, abort, verify) and no client.

  --init           create the config store and the shared state of a new migration
  --plan-to PHASE  walk the phases up to PHASE by itself (holding each as --hold says), and
                   record the plan, each phase and each gate refusal in --history, so that
                   the checker judges whether the plan kept making progress; a restarted
                   controller walks what is left of it

Config stores: sqlite:///PATH (one machine: every process on it shares the file; leases are
judged on the machine's monotonic clock), postgresql://USER@HOST:PORT/DB (a fleet across
machines; leases are judged on the server's clock, pushes by LISTEN/NOTIFY). The shared state
(--state) is a path or sqlite:///PATH on one machine, postgresql://... across machines.
"""

CONTROL_EPILOG = """\
examples:
  vecmig control --old http://127.0.0.1:8101 --new http://127.0.0.1:8102 --dim 32 \\
      --state /tmp/fleet/state.sqlite --config-store sqlite:///tmp/fleet/config.sqlite \\
      --init --port 8099 --plan-to CUTOVER --hold DUAL_WRITE=20 --history /tmp/fleet/control.jsonl
  vecmig serve --old http://127.0.0.1:8101 --new http://127.0.0.1:8102 --dim 32 \\
      --state /tmp/fleet/state.sqlite --config-store sqlite:///tmp/fleet/config.sqlite \\
      --instance app-1 --port 8111
"""


def control_arguments(control: argparse.ArgumentParser) -> None:
    add = control.add_argument
    add("--plan-to", default=None, metavar="PHASE", help="walk the phases up to PHASE")
    add(
        "--hold",
        action="append",
        default=[],
        metavar="PHASE=S",
        help="stay at least S seconds in PHASE before stepping on (repeatable)",
    )
    add(
        "--stall-s",
        type=float,
        default=None,
        help="a gate held longer than this makes the run stalled (recorded with the plan)",
    )
    add(
        "--plan-waits",
        action="store_true",
        help="begin the plan only at POST /admin/walk (or at once, if the config store says it "
        "began before: a restarted controller)",
    )
    add("--history", default=None, metavar="PATH", help="the controller's part of the history")
    add(
        "--history-clock",
        default="monotonic",
        choices=("monotonic", "wall"),
        help="the clock of --history: the machine's monotonic clock (a run on one machine) or "
        "the wall clock (a fleet across machines)",
    )


def open_coordination(args: argparse.Namespace, config: Any, store: Any) -> Any:
    """The fleet's `StoreCoordinator`: with `--init` (the controller) a new config store;
    else an existing one, whose strategy and migration must be this process's."""
    from vecmig.harness.coordination import (
        ConfigStoreError,
        StoreCoordinator,
        open_config_store,
    )
    from vecmig.harness.core.phases import Coordinator

    from .command import Refused

    url = args.config_store
    if url is None:
        raise Refused(
            "vecmig control needs --config-store URL (sqlite:///PATH or postgresql://...)"
        )
    config_store = open_config_store(url, timeout_s=config.store_timeout_s)
    if args.init:
        coordinator = Coordinator(
            lease_ns=int(args.lease_s * 1e9), bind_leases=config.strategy.lease_epoch_binding
        )
        settings = {"strategy": config.strategy.name, "migration": store.migration_id}
        config_store.initialise(coordinator, settings)
    deadline = time.monotonic() + args.connect_wait_s
    while True:
        try:
            settings = config_store.settings()
            coordination = StoreCoordinator(config_store)
            break
        except ConfigStoreError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    if settings.get("migration") != store.migration_id:
        raise Refused(
            f"the config store {config_store.url} belongs to migration "
            f"{settings.get('migration')!r}, the state {args.state} to {store.migration_id!r}"
        )
    if settings.get("strategy") != config.strategy.name:
        raise Refused(
            f"the fleet runs strategy {settings.get('strategy')!r} (its config store says so); "
            f"this process was started with {config.strategy.name!r}"
        )
    return coordination


def plan_of(args: argparse.Namespace, coordination: Any) -> Any:
    """The plan `--plan-to` asks for, from the phase the config store holds now (a restarted
    controller walks what is left), or None."""
    from vecmig.harness.core.phases import ORDER, Phase

    from .command import Refused
    from .fleet import plan_from

    if args.plan_to is None:
        return None
    try:
        target = Phase(args.plan_to)
        holds = {}
        for hold in args.hold:
            phase, _, seconds = hold.partition("=")
            holds[Phase(phase)] = float(seconds)
    except ValueError:
        names = ", ".join(p.value for p in ORDER)
        raise Refused(
            f"--plan-to and --hold name phases ({names}); --hold is PHASE=SECONDS"
        ) from None
    current = coordination.published.phase
    if ORDER.index(target) < ORDER.index(current):
        raise Refused(f"--plan-to {target.value}: the migration is at {current.value} already")
    steps = ",".join(["advance"] * (ORDER.index(target) - ORDER.index(current)))
    return plan_from(steps, {p.value: s for p, s in holds.items()}, args.stall_s)


def start_controller(args: argparse.Namespace, migration: Any, plan: Any) -> None:
    """Open the controller's history part and hand it the plan to walk once it starts."""
    link = migration.controller_link
    if args.history:
        clock = time.monotonic_ns if args.history_clock == "monotonic" else time.time_ns
        link.open_history(args.history, clock)
    migration.plan = plan
    migration.plan_waits = args.plan_waits
