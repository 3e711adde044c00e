"""`vecmig`: the command line. Each subcommand lives beside the code it drives and registers
itself here through a `register(subparsers)` function.

Exit codes, for every subcommand: 0 the verdict is valid, 1 anomalies were found (or the
verdict is unknown), 2 bad input (a malformed history or scenario, an unknown option value),
3 an internal error, 4 the run stalled (its plan stopped making progress) with no anomaly.
A command whose optional libraries are not installed exits 2 with one line naming the extra
to install (`vecmig.harness.extras`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

from vecmig.harness.extras import as_missing_extra

EXIT_VALID, EXIT_ANOMALIES, EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_STALLED = 0, 1, 2, 3, 4


def strategy_argument(name: str) -> str:
    """An argparse `type` for `--strategy`: the name, if the core knows it (otherwise
    argparse's usage error names the problem and every valid name)."""
    from vecmig.harness.core.strategy import strategy_named

    try:
        strategy_named(name)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return name


def exit_code(verdict: Any) -> int:
    """The exit code for a checker's `Verdict`: anomalies (or an unknown verdict) before a
    stall, a stall before valid."""
    if verdict.unknown or any(verdict.counts().values()):
        return EXIT_ANOMALIES
    if verdict.stalled:
        return EXIT_STALLED
    return EXIT_VALID


# Modules that provide subcommands, in the order `--help` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "vecmig.harness.history.command",
    "vecmig.harness.service.command",
    "vecmig.loadtests.command",
    "vecmig.sim.command",
    "vecmig.sim.sweep",
    "vecmig.harness.calibrate",
    "vecmig.harness.zoo.command",
)

DESCRIPTION = """\
vecmig: simulate, load-test and property-test a live vector-database migration, and judge
every run with one checker.

The usual plan -- dual-write and backfill, mirrored reads, cutover, decommission -- breaks
quietly: a backfill overwrites a newer write, a delete comes back, an instance that learned of
a phase late loses writes. vecmig records every operation of a run as a history and reports
failed, stale and garbage reads, lost writes, resurrected deletes and divergence.
"""

EPILOG = """\
exit codes: 0 valid, 1 anomalies found, 2 bad input (or a missing extra: the message says which
to install), 3 internal error, 4 the run stalled.
Run `vecmig COMMAND --help` for a command's options and examples.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vecmig",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        print("vecmig: interrupted", file=sys.stderr)
        return 130
    except ImportError as exc:
        missing = as_missing_extra(exc, f"vecmig {args.command}")
        if missing is None:
            raise
        print(missing, file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
