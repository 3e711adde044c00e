"""`vecmig loadtest --instances N`: the fleet of a load test -- its config store, the shared
state, the controller (`vecmig control`, walking the plan to CUTOVER) and N instances
(`vecmig serve --config-store`), each a process of its own on 127.0.0.1, each with its own
clock and lease -- and how the chaos controller can kill and start each one again.

    --config-store sqlite     one SQLite file on this machine (and the shared state beside it)
    --config-store postgres   a throwaway PostgreSQL for the config store, crashed and restarted
                              by the chaos, and another for the shared state (never crashed)
"""

from __future__ import annotations

import argparse
import math
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .sides import is_in_process

SPAWNED = "spawned.pids"
"""The pids of the members a fleet's chaos controller started again (one a line), in the
run's directory: `vecmig loadtest` stops them at the end."""


@dataclass
class FleetLayout:
    """Where the fleet's pieces live, for the run plan and the chaos controller."""

    config_url: str
    state_url: str
    config_store: dict[str, Any]
    control: dict[str, Any] = field(default_factory=dict)
    instances: list[dict[str, Any]] = field(default_factory=list)
    control_url: str = ""


def default_instances(args: argparse.Namespace, fleet: int) -> int:
    """`fleet`, or 0 (one standalone service, said on standard error) when a side runs inside
    the service's process, which a fleet's instances cannot share."""
    inside = [f"--{n} {getattr(args, n)}" for n in ("old", "new") if _inside(getattr(args, n))]
    if not inside:
        return fleet
    print(
        f"vecmig loadtest: {' and '.join(inside)} runs inside the service's process: one "
        "standalone service (--instances 0), not a fleet",
        file=sys.stderr,
    )
    return 0


def _inside(given: str | None) -> bool:
    return given is not None and is_in_process(given)


def refusal(args: argparse.Namespace) -> str | None:
    """Why this run cannot be a fleet, or None."""
    if args.instances < 1:
        return None
    for name in ("old", "new"):
        given = getattr(args, name)
        if given is not None and is_in_process(given):
            return (
                f"--{name} {given} runs inside the service's process and admits one process at "
                "a time, so a fleet's instances cannot share it: use --instances 0 (one "
                "standalone service), or a side every instance can reach (pgvector://auto, a "
                "fake cluster server, an engine's server)"
            )
    if args.config_store not in ("sqlite", "postgres"):
        return f"--config-store takes sqlite or postgres, got {args.config_store!r}"
    return None


def config_store(args: argparse.Namespace, out: Path, engines: ExitStack) -> FleetLayout:
    """The config store and the shared state this run uses (starting servers if asked)."""
    if args.config_store == "sqlite":
        return FleetLayout(
            f"sqlite://{out / 'config.sqlite'}",
            str(out / "state.sqlite"),
            {"kind": "sqlite", "url": f"sqlite://{out / 'config.sqlite'}"},
        )
    from vecmig.harness.clusters.pgserver import (
        CRASH_SAFE_SETTINGS,
        FAST_SETTINGS,
        PostgresServer,
    )

    # The config store is crashed mid-run: a commit it acknowledged (a lease it granted) must
    # survive that, hence synchronous_commit=on. The state lives on a server of its own,
    # which the run never crashes.
    config = PostgresServer.create(CRASH_SAFE_SETTINGS, prefix="vecmig-config-")
    engines.callback(config.remove)
    state = PostgresServer.create(FAST_SETTINGS, prefix="vecmig-state-")
    engines.callback(state.remove)
    return FleetLayout(
        config.dsn,
        state.dsn,
        {"kind": "postgres", "url": config.dsn, "server": str(config.root)},
    )


def users_and_rate(args: argparse.Namespace) -> tuple[int, float]:
    """(users, each user's requests per second) for `--rate` (total arrival rate) and
    `--users` (default: enough users that each sends about 4 a second, which each can
    while a request takes up to 250 ms, as on a busy 2-core machine)."""
    users = args.users or max(2 * max(1, args.processes), math.ceil(args.rate / 4))
    return users, args.rate / users


def holds(duration_s: float) -> dict[str, float]:
    """How long the plan stays in each phase at least, so that the chaos has room in each
    and CUTOVER is reached near the middle of the run."""
    d = duration_s
    return {"OLD_ONLY": 0.06 * d, "DUAL_WRITE": 0.14 * d, "SHADOW": 0.10 * d}


def start(
    args: argparse.Namespace,
    out: Path,
    logs: Path,
    layout: FleetLayout,
    service_args: list[str],
    start_process: Any,
    wait_healthy: Any,
    free_port: Any,
    env: dict[str, str],
) -> None:
    """Start the controller (creating the migration) and then the instances; each answers
    /health before the next starts. `service_args` are what every member shares (sides,
    state, strategy, layer knobs)."""
    python = sys.executable
    common = [
        *service_args,
        "--config-store",
        layout.config_url,
        "--lease-s",
        f"{args.lease_s:g}",
        "--max-skew-ms",
        f"{args.max_skew_ms:g}",
    ]
    port = free_port()
    layout.control_url = f"http://127.0.0.1:{port}"
    pid_file = out / "control.pid"
    history = out / "history" / "part-control.jsonl"
    history.parent.mkdir(parents=True, exist_ok=True)
    control = [python, "-m", "vecmig", "control", *common, "--port", str(port)]
    control += ["--pid-file", str(pid_file), "--history", str(history), "--plan-to", "CUTOVER"]
    control += [
        "--plan-waits",
        "--history-clock",
        args.clock,
    ]  # the chaos controller begins it once the load runs
    for phase, seconds in holds(args.duration).items():
        control += ["--hold", f"{phase}={seconds:.1f}"]
    layout.control = {
        "argv": control,
        "pid_file": str(pid_file),
        "log": str(logs / "control.log"),
        "url": layout.control_url,
    }
    start_process([*control, "--init"], logs / "control.log", env)
    wait_healthy(layout.control_url + "/health", 90, "the fleet's controller")
    for n in range(args.instances):
        name = f"app-{n}"
        port = free_port()
        pid_file = out / f"{name}.pid"
        argv = [python, "-m", "vecmig", "serve", *common, "--instance", name, "--port", str(port)]
        argv += ["--pid-file", str(pid_file)]
        layout.instances.append(
            {
                "name": name,
                "url": f"http://127.0.0.1:{port}",
                "argv": argv,
                "pid_file": str(pid_file),
                "log": str(logs / f"{name}.log"),
            }
        )
        start_process(argv, logs / f"{name}.log", env)
    for instance in layout.instances:
        wait_healthy(instance["url"] + "/health", 90, f"instance {instance['name']}")


def pid_files(layout: FleetLayout) -> list[Path]:
    files = [Path(i["pid_file"]) for i in layout.instances]
    if layout.control:
        files.append(Path(layout.control["pid_file"]))
    return files
