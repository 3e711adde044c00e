"""The catch matrix: for each row (an ablation, its cover row, the naive reference) and
engine, caught or not, how soon, and the replay; each ablation's verdict over every engine;
printed as a rich table and written as zoo.json and zoo.md."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from vecmig.harness.core.strategy import PROTECTIONS
from vecmig.harness.zoo.catalog import COVERS, QUALITY, Row, cover
from vecmig.harness.zoo.engines import CAUGHT, ERROR, OUT_OF_TIME, VALID
from vecmig.harness.zoo.search import Search

CAUGHT_ROW, COVERED, QUALITY_ROW, LIVE_ONLY, MISSED, FALSE_ALARM = (
    "caught",
    "covered",
    "quality",
    "LIVE ONLY",
    "MISSED",
    "FALSE ALARM",
)
"""A row's verdict: the simulator or the state machine caught it; its cover row (it switched off
with the protections declared to cover for it) was caught by one of them; it guards quality, not
correctness (documented); only the load test caught it (not enough: the load test is not
reproducible, so a deterministic engine must catch it too); nothing caught it; or a control run
of the safe strategy failed too, so the harness, not the ablation, is at fault."""
OK_VERDICTS = (CAUGHT_ROW, COVERED, QUALITY_ROW)
PENDING = "pending"
"""The verdict of a row some search of which is still going (in a partial matrix)."""
DETERMINISTIC = ("sim", "machine")
"""The engines whose catch counts alone: their runs replay exactly (a seed, or printed steps)."""


@dataclass
class Matrix:
    rows: list[Row]
    engines: tuple[str, ...]
    searches: dict[tuple[str, str], Search]
    """(row name, engine) -> its search."""

    def of(self, row: Row) -> dict[str, Search]:
        return {e: s for e in self.engines if (s := self.searches.get((row.name, e)))}

    def caught_by(self, row: Row) -> list[str]:
        return [e for e, s in self.of(row).items() if s.outcome == CAUGHT]

    def caught_reproducibly(self, row: Row) -> bool:
        """Caught by the simulator or the state machine."""
        return any(e in DETERMINISTIC for e in self.caught_by(row))

    def verdict(self, row: Row) -> str:
        searches = self.of(row).values()
        if not all(s.done for s in searches) and not self.caught_reproducibly(row):
            return PENDING
        if any(s.false_alarms for s in searches):
            return FALSE_ALARM
        if self.caught_reproducibly(row):
            return CAUGHT_ROW
        covering = cover(row)
        if covering is not None and self.caught_reproducibly(covering):
            return COVERED
        if row.kind == "ablation" and row.name in QUALITY:
            return QUALITY_ROW
        return LIVE_ONLY if self.caught_by(row) else MISSED

    def main_rows(self) -> list[Row]:
        return [r for r in self.rows if r.kind != "cover"]

    def ok(self) -> bool:
        """Every row caught, covered or documented as quality, and no false alarm."""
        return all(self.verdict(r) in OK_VERDICTS for r in self.main_rows())

    # -- output ----------------------------------------------------------------------------

    def cell(self, row: Row, engine: str, markdown: bool = False) -> str:
        search = self.searches.get((row.name, engine))
        if search is None:
            return "" if markdown else "[dim]-[/dim]"
        answer = search.to_json()
        outcome = answer["outcome"]
        if not search.done and outcome != CAUGHT:
            text = f"running ({answer['tried']} so far)" if answer["tried"] else "pending"
            return text if markdown else f"[dim]{text}[/dim]"
        unit = {"sim": "run", "machine": "example", "live": "run"}[engine]
        if outcome == CAUGHT:
            n = answer.get("tried_to_detection")
            first = f", {unit} {n}" if n is not None else ""
            found = answer.get("found", "")
            text = f"caught {answer.get('seconds_to_detection')} s{first}"
            short = _short(found)
            if markdown:
                return f"**{text}** ({short})" if short else f"**{text}**"
            return f"[green]{text}[/green]" + (f"\n[dim]{short}[/dim]" if short else "")
        tried = answer["tried"] if engine == "sim" else answer.get("examples", answer["tried"])
        plural = "s" if tried != 1 else ""
        text = {
            VALID: f"not caught ({tried} {unit}{plural}, {answer['seconds']} s)",
            OUT_OF_TIME: f"budget spent ({tried} {unit}{plural}, {answer['seconds']} s)",
            ERROR: f"error: {_short(answer.get('error', ''))}",
        }[outcome]
        if search.false_alarms:
            text += "; FALSE ALARM (safe fails too)"
        return text if markdown else f"[yellow]{text}[/yellow]"

    def table(self, title: str) -> Table:
        table = Table(title=title, title_justify="left", show_lines=True)
        table.add_column("ablation", overflow="fold")
        for engine in self.engines:
            table.add_column(engine, overflow="fold")
        table.add_column("verdict", overflow="fold")
        for row in self.rows:
            verdict = self.verdict(row) if row.kind != "cover" else ""
            style = {CAUGHT_ROW: "green", COVERED: "cyan", QUALITY_ROW: "blue"}.get(verdict, "red")
            label = f"[{style}]{verdict}[/{style}]" if verdict else "[dim](cover)[/dim]"
            name = row.name if row.kind != "cover" else f"  {row.name}"
            table.add_row(name, *(self.cell(row, e) for e in self.engines), label)
        return table

    def to_json(self, meta: dict[str, Any]) -> dict[str, Any]:
        rows = []
        for row in self.rows:
            entry: dict[str, Any] = {
                "name": row.name,
                "kind": row.kind,
                "strategy": row.strategy,
                "engines": {e: s.to_json() for e, s in self.of(row).items()},
            }
            if row.kind != "cover":
                entry["verdict"] = self.verdict(row)
                entry["caught_by"] = self.caught_by(row)
            if row.kind == "ablation":
                entry["protection"] = PROTECTIONS[row.name]
                if row.name in COVERS:
                    entry["covered_by"] = {"protections": list(COVERS[row.name].by)}
                    entry["covered_by"]["why"] = COVERS[row.name].why
                if row.name in QUALITY:
                    entry["quality"] = QUALITY[row.name]
            rows.append(entry)
        return {**meta, "ok": self.ok(), "rows": rows}

    def markdown(self, meta: dict[str, Any]) -> str:
        lines = [
            "# vecmig zoo: the catch matrix",
            "",
            ("**Partial: the run is still going.** " if meta.get("partial") else "")
            + f"Made by `{meta['command']}` in {meta['wall_s']:.0f} s of wall time "
            f"({meta['jobs']} worker processes, budget {meta['budget_s']:g} s per ablation "
            f"per engine), vecmig {meta['version']}, {meta['started']}.",
            "",
            "| ablation | " + " | ".join(self.engines) + " | verdict |",
            "|---|" + "---|" * len(self.engines) + "---|",
        ]
        for row in self.rows:
            name = f"`{row.name}`" if row.kind != "cover" else f"↳ with its cover: `{row.name}`"
            verdict = self.verdict(row) if row.kind != "cover" else ""
            cells = [self.cell(row, e, markdown=True) for e in self.engines]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {verdict} |")
        lines += self._explained()
        lines += ["", "## Replays", ""]
        for row in self.rows:
            lines += self._replays(row)
        return "\n".join(lines) + "\n"

    def _explained(self) -> list[str]:
        """Why each ablation not caught alone is covered, or a matter of quality."""
        out: list[str] = []
        for row in self.main_rows():
            verdict = self.verdict(row)
            if verdict == COVERED:
                declared = COVERS[row.name]
                by = ", ".join(f"`{p}`" for p in declared.by)
                out.append(f"- `{row.name}` is covered by {by}: {declared.why}")
            elif verdict == QUALITY_ROW:
                out.append(f"- `{row.name}` guards quality, not correctness: {QUALITY[row.name]}")
        return ["", "## Not caught alone", "", *out] if out else []

    def _replays(self, row: Row) -> list[str]:
        out: list[str] = []
        for engine, search in self.of(row).items():
            answer = search.to_json()
            if answer["outcome"] != CAUGHT:
                continue
            if not out:
                out += [f"### `{row.name}`", ""]
            if engine == "machine" and answer.get("steps"):
                out += [f"State machine ({answer.get('found', '')}):", "", "```python"]
                out += answer["steps"] + ["```", ""]
            elif answer.get("replay"):
                out += [f"{engine}: `{answer['replay']}` ({answer.get('found', '')})", ""]
        return out


def _short(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= 90 else line[:87] + "..."


def write(matrix: Matrix, meta: dict[str, Any], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "zoo.json", out / "zoo.md"
    json_path.write_text(json.dumps(matrix.to_json(meta), indent=2) + "\n", encoding="utf-8")
    md_path.write_text(matrix.markdown(meta), encoding="utf-8")
    return json_path, md_path
