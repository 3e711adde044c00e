"""Cost profiles: what each operation of an engine costs, measured on one machine by
`vecmig calibrate` (`vecmig.harness.calibrate`), and read back by the scaled simulator.

A profile is a JSON file. It names the engine, the dimension it was measured at, the machine
(CPU, cores, Python, hnswlib and numpy versions, date, load) and how it was timed, and holds:

* `insert`: microseconds per record of an upsert batch, on a grid of index size x batch size;
* `search`: microseconds per search, on a grid of index size x k;
* `get`, `delete`, `scan`, `checksums`, `count`: a fixed cost per call plus a cost per record
  (ids asked, tombstones written, items scanned, records checksummed), fitted to two batch
  sizes measured at the largest index;
* `jitter_sigma`: the spread of repeated single calls, as a lognormal sigma.

Theory of operation. A grid is interpolated linearly in the logarithms of both axes (index
size and batch size or k), which is how HNSW costs behave: an insert or a search walks a graph
whose depth grows with log n. Inside the measured ranges that is interpolation; past the
largest index measured, the cost is extrapolated along a least-squares line of cost against
log(size) through every size measured (never below the cost at the largest one), and
`CostProfile.extrapolates` says so, so that a report can name the figures that rest on it.
Below the smallest size and outside the second axis's range the edge value holds.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT = 1
"""The profile file format this code reads and writes."""

LINEAR_OPS = ("get", "delete", "scan", "checksums", "count")
"""Operations costed as a fixed cost per call plus a cost per record."""


class ProfileError(ValueError):
    """A profile that cannot be used: names the file, the key and what it expects."""


@dataclass(frozen=True)
class Grid:
    """A cost measured over index sizes (rows) and a second axis (columns): batch size or k."""

    index_sizes: tuple[int, ...]
    axis: tuple[int, ...]
    us: tuple[tuple[float, ...], ...]
    """`us[i][j]`: microseconds at `index_sizes[i]` and `axis[j]`."""

    def at(self, size: float, x: float) -> float:
        """Microseconds at index size `size` and axis value `x` (see the module docstring)."""
        sizes = self.index_sizes
        if size > sizes[-1]:
            grown = math.log(size) - math.log(sizes[-1])
            last = [
                y + max(0.0, slope * grown)
                for y, slope in zip(self.us[-1], self._slopes, strict=True)
            ]
            return _interpolate(self.axis, last, x)
        if size <= sizes[0]:
            return _interpolate(self.axis, self.us[0], x)
        i = bisect.bisect_left(sizes, size)
        below = _interpolate(self.axis, self.us[i - 1], x)
        above = _interpolate(self.axis, self.us[i], x)
        t = (math.log(size) - math.log(sizes[i - 1])) / (
            math.log(sizes[i]) - math.log(sizes[i - 1])
        )
        return below + t * (above - below)

    @functools.cached_property
    def _slopes(self) -> tuple[float, ...]:
        """Per column, the least-squares slope of cost against log(index size)."""
        return tuple(
            _slope(self.index_sizes, [row[j] for row in self.us]) for j in range(len(self.axis))
        )

    def to_json(self, axis_name: str) -> dict[str, Any]:
        return {
            "index_sizes": list(self.index_sizes),
            axis_name: list(self.axis),
            "us": [[round(v, 3) for v in row] for row in self.us],
        }


@dataclass(frozen=True)
class Linear:
    """A cost of `fixed_us` per call plus `per_record_us` per record the call touches."""

    fixed_us: float
    per_record_us: float

    def at(self, records: float) -> float:
        return self.fixed_us + self.per_record_us * records

    def to_json(self) -> dict[str, float]:
        return {"fixed_us": round(self.fixed_us, 3), "per_record_us": round(self.per_record_us, 4)}


@dataclass(frozen=True)
class CostProfile:
    """One engine's measured costs (see the module docstring)."""

    name: str
    engine: str
    dim: int
    metric: str
    clock: str
    """"cpu" (the calling thread's CPU time: in-process engines) or "wall"."""
    insert: Grid
    search: Grid
    linear: Mapping[str, Linear]
    jitter_sigma: float
    machine: Mapping[str, Any] = field(default_factory=dict)
    settings: Mapping[str, Any] = field(default_factory=dict)
    not_measured: tuple[str, ...] = ()
    source: str = ""

    @property
    def largest_index(self) -> int:
        return min(self.insert.index_sizes[-1], self.search.index_sizes[-1])

    def extrapolates(self, index_size: float) -> bool:
        """Whether costs at `index_size` lie past what was measured."""
        return index_size > self.largest_index

    def insert_us(self, index_size: float, batch: int) -> float:
        """Microseconds for a batch of `batch` upserts into an index of `index_size`."""
        return self.insert.at(index_size, batch) * batch

    def search_us(self, index_size: float, k: int) -> float:
        return self.search.at(index_size, k)

    def linear_us(self, op: str, records: float) -> float:
        return self.linear[op].at(records)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "name": self.name,
            "engine": self.engine,
            "dim": self.dim,
            "metric": self.metric,
            "clock": self.clock,
            "machine": dict(self.machine),
            "settings": dict(self.settings),
            "not_measured": list(self.not_measured),
            "jitter_sigma": round(self.jitter_sigma, 4),
            "insert": self.insert.to_json("batch_sizes"),
            "search": self.search.to_json("k"),
            **{op: self.linear[op].to_json() for op in LINEAR_OPS},
        }


# ---------------------------------------------------------------------------------------------
# Files.


PROFILE_DIR = Path(__file__).resolve().parent.parent / "profiles"
"""Where the shipped profiles are: `profiles/` in a checkout, `vecmig/profiles` installed."""


def profile_dir() -> Path:
    try:
        from vecmig import profiles
    except ImportError:  # pragma: no cover - a checkout without the folder
        return PROFILE_DIR
    return Path(profiles.__file__).resolve().parent


def profile_names() -> list[str]:
    return sorted(p.stem for p in profile_dir().glob("*.json"))


def resolve_profile(name_or_path: str) -> Path:
    """A profile file from a path, or a name from profiles/ (with or without .json)."""
    path = Path(name_or_path)
    named = profile_dir() / f"{path.stem if path.suffix == '.json' else name_or_path}.json"
    if path.name == name_or_path and named.is_file():
        return named
    if path.is_file():
        return path
    raise ProfileError(
        f"no cost profile {name_or_path!r}: no such file, and not a name in {profile_dir()} "
        f"(names: {', '.join(profile_names()) or 'none'}); measure one with "
        "`vecmig calibrate fake --dim DIM`"
    )


def load_profile(name_or_path: str) -> CostProfile:
    """The profile named or at `name_or_path`. Raises `ProfileError` naming the key."""
    path = resolve_profile(name_or_path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{path}: cannot read it ({exc})") from None
    except json.JSONDecodeError as exc:
        raise ProfileError(f"{path}: not valid JSON ({exc})") from None
    return profile_from_json(data, str(path))


def save_profile(profile: CostProfile, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(profile.to_json(), indent=2) + "\n", encoding="utf-8")


def profile_from_json(data: Any, source: str = "profile") -> CostProfile:
    """A checked `CostProfile` from parsed JSON; `ProfileError` names the first bad key."""
    reader = _Reader(source)
    top = reader.table(data, "")
    version = reader.integer(top, "format", low=1)
    if version != FORMAT:
        raise ProfileError(f"{source}: format is {version}; this vecmig reads format {FORMAT}")
    insert = reader.grid(top, "insert", "batch_sizes")
    search = reader.grid(top, "search", "k")
    linear = {}
    for op in LINEAR_OPS:
        table = reader.table(top.get(op), op)
        linear[op] = Linear(
            reader.number(table, "fixed_us", op, low=0.0),
            reader.number(table, "per_record_us", op, low=0.0),
        )
    clock = reader.text(top, "clock")
    if clock not in ("cpu", "wall"):
        raise ProfileError(f'{source}: clock must be "cpu" or "wall", got {clock!r}')
    not_measured = top.get("not_measured", [])
    if not isinstance(not_measured, list) or not all(isinstance(x, str) for x in not_measured):
        raise ProfileError(f"{source}: not_measured must be a list of strings")
    return CostProfile(
        name=reader.text(top, "name"),
        engine=reader.text(top, "engine"),
        dim=reader.integer(top, "dim", low=1),
        metric=reader.text(top, "metric"),
        clock=clock,
        insert=insert,
        search=search,
        linear=linear,
        jitter_sigma=reader.number(top, "jitter_sigma", "", low=0.0),
        machine=reader.table(top.get("machine", {}), "machine"),
        settings=reader.table(top.get("settings", {}), "settings"),
        not_measured=tuple(not_measured),
        source=source,
    )


class _Reader:
    """Checks of a profile's JSON, each error naming the file and the dotted key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, problem: str) -> ProfileError:
        return ProfileError(f"{self.source}: {key}: {problem}")

    def table(self, value: Any, key: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key or "the top level", f"must be a JSON object, got {_brief(value)}")
        return value

    def number(self, table: Mapping[str, Any], key: str, parent: str, low: float) -> float:
        path = f"{parent}.{key}" if parent else key
        value = table.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(path, f"must be a number, got {_brief(value)}")
        if not math.isfinite(value) or value < low:
            raise self.fail(path, f"must be a finite number of at least {low:g}, got {value!r}")
        return float(value)

    def integer(self, table: Mapping[str, Any], key: str, low: int) -> int:
        value = table.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise self.fail(key, f"must be an integer of at least {low}, got {_brief(value)}")
        return value

    def text(self, table: Mapping[str, Any], key: str) -> str:
        value = table.get(key)
        if not isinstance(value, str) or not value:
            raise self.fail(key, f"must be a non-empty string, got {_brief(value)}")
        return value

    def grid(self, top: Mapping[str, Any], key: str, axis_name: str) -> Grid:
        table = self.table(top.get(key), key)
        sizes = self.axis(table, "index_sizes", key)
        axis = self.axis(table, axis_name, key)
        rows = table.get("us")
        if not isinstance(rows, list) or len(rows) != len(sizes):
            raise self.fail(f"{key}.us", f"must be a list of {len(sizes)} rows, one per index size")
        us = []
        for i, row in enumerate(rows):
            if not isinstance(row, list) or len(row) != len(axis):
                raise self.fail(f"{key}.us[{i}]", f"must be a list of {len(axis)} numbers")
            us.append(
                tuple(
                    self.number({"v": v}, "v", f"{key}.us[{i}][{j}]", 0.0)
                    for j, v in enumerate(row)
                )
            )
        return Grid(sizes, axis, tuple(us))

    def axis(self, table: Mapping[str, Any], key: str, parent: str) -> tuple[int, ...]:
        values = table.get(key)
        path = f"{parent}.{key}"
        if (
            not isinstance(values, list)
            or not values
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)
        ):
            raise self.fail(
                path, f"must be a non-empty list of positive integers, got {_brief(values)}"
            )
        if any(b <= a for a, b in itertools.pairwise(values)):
            raise self.fail(path, f"must be strictly increasing, got {values}")
        return tuple(values)


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."


# ---------------------------------------------------------------------------------------------
# Interpolation.


def _interpolate(xs: Sequence[int], ys: Sequence[float], x: float) -> float:
    """Linear in log x between the measured points; the edge value outside them."""
    if len(xs) == 1 or x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    for i in range(1, len(xs)):
        if x <= xs[i]:
            a, b = math.log(xs[i - 1]), math.log(xs[i])
            t = (math.log(x) - a) / (b - a)
            return ys[i - 1] + t * (ys[i] - ys[i - 1])
    return ys[-1]  # pragma: no cover - the loop returns


def _slope(xs: Sequence[int], ys: Sequence[float]) -> float:
    """The least-squares slope of y against log x (0 for a single point)."""
    if len(xs) < 2:
        return 0.0
    logs = [math.log(v) for v in xs]
    mean_x, mean_y = sum(logs) / len(logs), sum(ys) / len(ys)
    spread = sum((lx - mean_x) ** 2 for lx in logs)
    return sum((lx - mean_x) * (y - mean_y) for lx, y in zip(logs, ys, strict=True)) / spread
