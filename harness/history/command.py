"""`vecmig check HISTORY [--json]`: read a history file, judge it, print the verdict."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from vecmig.harness.cli import EXIT_BAD_INPUT, exit_code
from vecmig.harness.history.checker import ANOMALIES, Verdict, check_safely, gc_paused
from vecmig.harness.history.ops import Event, MalformedHistory, iter_numbered
from vecmig.harness.history.report import build as build_report

DESCRIPTION = """\
Judge a history (JSON lines, one event per line, written by the simulator, the live service or
the property tests) and report every anomaly with a count and its first examples:

  failed reads         a get or search that completed fail or info.
  stale reads          a returned (id, version) older than an op on that id that completed ok
                       before the read was invoked: an upsert with a higher version, or a
                       delete with a version at or above it. Also a get that answered
                       not-found while the newest such op was an upsert and no delete at or
                       above its version was even in flight (a delete wins a tie of
                       versions, acknowledged or not).
  garbage reads        a returned (id, version) that no load or upsert ever carried.
  filter violations    a hit of a filtered search whose version, by the fields its load or
                       upsert carried ("fields" in the history), does not match the filter
                       (every filter field equal). The version may be fresh: the result set
                       is wrong about the item. Hits of versions whose fields no write
                       recorded are not judged; the notes say how many.
  lost writes          an id whose newest acknowledged op is an upsert of version u, while the
                       final state of the side serving reads (new after CUTOVER, else old)
                       holds no version >= u (unless an indeterminate delete at or above u
                       explains a missing id).
  resurrected deletes  an id whose newest acknowledged op is a delete of version d, while the
                       serving side's final state holds a version <= d.
  divergence           ids whose versions differ between the final states of old and new when
                       the run ended in SHADOW or CUTOVER (both sides meant to be current).
  recall               mean recall@k of searches that carry their exact top-k: a quality
                       figure, not a verdict.

The verdict is valid only if every count is zero and the serving side's final state is in the
history; without it lost writes cannot be judged and the verdict is unknown.
"""

EPILOG = """\
exit codes:
  0  valid
  1  anomalies found, or the verdict is unknown (no final state, or the checker crashed)
  2  bad input: a missing file, or a malformed history (the message names the line)
  4  the run stalled: its plan did not finish, or a gate held past the plan's bound

examples:
  vecmig check tests/data/example_history.jsonl
  vecmig check out/run-42.jsonl --json | jq .verdict.stale_reads
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "check",
        help="judge a history: failed, stale and garbage reads, lost writes, resurrections",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("history", metavar="HISTORY", help="a history file (JSON lines)")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the report instead: one JSON object, the shape of every engine's "
        "report.json (docs/report.schema.json)",
    )
    parser.set_defaults(handler=run)


def read_history(path: str | Path) -> tuple[list[Event], list[int]]:
    """The events of a history file and the line each came from (blank lines are skipped)."""
    events: list[Event] = []
    lines: list[int] = []
    with gc_paused():
        for number, event in iter_numbered(path):
            events.append(event)
            lines.append(number)
    return events, lines


def run(args: argparse.Namespace) -> int:
    try:
        events, lines = read_history(args.history)
        verdict = check_safely(events, lines=lines, source=args.history)
    except MalformedHistory as exc:
        print(f"vecmig check: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        print(f"vecmig check: {args.history}: cannot read it ({exc.strerror})", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.json:
        report = build_report("check", verdict, events, history=str(args.history))
        print(json.dumps(report, indent=2))
    else:
        print_verdict(verdict, args.history)
    return exit_code(verdict)


def print_verdict(verdict: Verdict, source: str) -> None:
    console = Console()
    table = Table(title=f"vecmig check {source}", title_justify="left")
    table.add_column("anomaly")
    table.add_column("count", justify="right")
    table.add_column("first example", overflow="fold")
    for kind in ANOMALIES:
        count = getattr(verdict, kind)
        shown = verdict.examples.get(kind)
        style = "red" if count else "green"
        table.add_row(
            kind.replace("_", " "),
            f"[{style}]{count}[/{style}]",
            escape(describe(shown[0])) if shown else "",
        )
    console.print(table)
    recall = (
        "n/a (no search carries its exact top-k)"
        if verdict.recall is None
        else f"{verdict.recall:.4f}"
    )
    console.print(f"recall: {recall}", highlight=False)
    ops = ", ".join(f"{f} {n}" for f, n in sorted(verdict.ops.items())) or "none"
    console.print(f"ops invoked: {ops}", highlight=False)
    for note in verdict.notes:
        console.print(f"note: {note}", highlight=False, markup=False)
    if verdict.stall is not None:
        console.print(f"stalled: {verdict.stall.describe()}", highlight=False, markup=False)
    if verdict.valid:
        console.print("[bold green]valid[/bold green]")
    elif verdict.unknown:
        console.print("[bold yellow]unknown[/bold yellow]: see the notes above")
    elif any(verdict.counts().values()):
        console.print("[bold red]anomalies found[/bold red]")
    else:
        console.print("[bold red]stalled[/bold red]: the migration stopped making progress")


def describe(example: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in example.items() if value != [])
