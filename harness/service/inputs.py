"""The service's input checks, each naming the field and the fix, and its version policy.

Versions decide which write wins, so where they come from is one decision per deployment:

* `service`: the service assigns every version from its hybrid logical clock (wall-clock
  milliseconds, a counter and a node number); a write that brings its own is refused;
* `client`: every write brings its own (e.g. the product's `updated_at`, in a declared unit)
  and one without is refused.

Mixing the two is what made a write silently lose: a clock version (~7.5e18) stored for an id
outranks every later `updated_at` in microseconds (~1.7e15). Client versions are also bounded:
none may lie more than a declared horizon ahead of the service's clock, since a version from
the far future (10^30, or a unit mix-up) would win over every later write to that id, forever.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vecmig.harness.clusters.base import (
    InvalidRequest,
    Vector,
    brief,
    max_component,
    validate_id,
    validate_vector,
    validate_version,
)

from .web import BadInput, number_list

SCALAR = (str, int, float, bool, type(None))
VERSION_SOURCES = ("client", "service")
VERSION_UNITS = {"ns": 1, "us": 1_000, "ms": 1_000_000}
MAX_METADATA_KEYS = 64


@dataclass(frozen=True, slots=True)
class VersionPolicy:
    """Where write versions come from (`source`), and for client versions their unit and how
    far ahead of this service's wall clock they may lie (`horizon_s`)."""

    source: str = "client"
    unit: str = "us"
    horizon_s: float = 300.0

    def __post_init__(self) -> None:
        if self.source not in VERSION_SOURCES:
            raise ValueError(
                f"version source must be one of {VERSION_SOURCES}, got {self.source!r}"
            )
        if self.unit not in VERSION_UNITS:
            raise ValueError(
                f"version unit must be one of {sorted(VERSION_UNITS)}, got {self.unit!r}"
            )
        if not self.horizon_s >= 0:
            raise ValueError(f"the version horizon must be >= 0 s, got {self.horizon_s!r}")

    def describe(self) -> str:
        if self.source == "service":
            return "the service assigns every version (--versions service)"
        return (
            f"clients send every version, in {self.unit} since the Unix epoch, at most "
            f"{self.horizon_s:g} s ahead of the service's clock (--versions client)"
        )

    def horizon(self, now_ns: int) -> int:
        """The highest client version accepted at wall-clock time `now_ns`."""
        return (now_ns + int(self.horizon_s * 1e9)) // VERSION_UNITS[self.unit]

    def version_for(self, body: dict[str, Any], assign: Callable[[], int]) -> int:
        given = body.get("version")
        if self.source == "service":
            if given is not None:
                raise BadInput(
                    "this service assigns versions itself (--versions service): leave 'version' "
                    "out; the answer says which version the write got",
                    status=422,
                    field="version",
                )
            return assign()
        if given is None:
            raise BadInput(
                f"this service takes versions from its clients: send 'version' ({self.describe()})",
                status=422,
                field="version",
            )
        try:
            version = validate_version(given)
        except InvalidRequest as exc:
            raise BadInput(str(exc), field="version") from None
        limit = self.horizon(time.time_ns())
        if version > limit:
            raise BadInput(
                f"version {version} lies beyond the horizon: at most {limit} now ({self.unit} "
                f"since the Unix epoch, {self.horizon_s:g} s ahead of the service's clock). "
                "A version from the future would outrank every later write of this id",
                status=422,
                field="version",
            )
        return version


def only(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadInput(
            f"unknown field(s) {brief(unknown)}; this endpoint takes {sorted(allowed)}",
            field=unknown[0],
        )


def record_id(body: dict[str, Any]) -> str:
    if "id" not in body:
        raise BadInput("the body needs an 'id' (a non-empty string)", field="id")
    try:
        return validate_id(body["id"])
    except InvalidRequest as exc:
        raise BadInput(str(exc), field="id") from None


def vector(body: dict[str, Any], dim: int) -> Vector:
    value = body.get("vector")
    if not isinstance(value, list) or not all(type(x) in (int, float) for x in value):
        raise BadInput(f"vector must be a list of {dim} numbers", field="vector")
    number_list(value, "vector", max_component(dim))
    try:
        return validate_vector(value, dim)
    except InvalidRequest as exc:
        message = str(exc).replace("this side expects", "this service expects")
        raise BadInput(message, field="vector") from None


def metadata(body: dict[str, Any]) -> dict[str, Any]:
    value = body.get("metadata", {})
    if not isinstance(value, dict):
        raise BadInput(f"metadata must be an object, got {type(value).__name__}", field="metadata")
    if len(value) > MAX_METADATA_KEYS:
        raise BadInput(f"metadata holds more than {MAX_METADATA_KEYS} keys", field="metadata")
    return value


def top_k(body: dict[str, Any], max_k: int) -> int:
    k = body.get("k", 10)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= max_k:
        raise BadInput(f"k must be an integer from 1 to {max_k}, got {brief(k)}", field="k")
    return k


def search_filter(body: dict[str, Any]) -> dict[str, Any] | None:
    value = body.get("filter")
    if value is None:
        return None
    if (
        not isinstance(value, dict)
        or len(value) > MAX_METADATA_KEYS
        or not all(isinstance(v, SCALAR) for v in value.values())
    ):
        raise BadInput(
            "filter must be an object of metadata key to a string, number, boolean or null "
            f"(every key must equal its value), got {brief(value)}",
            field="filter",
        )
    return value or None


def number(body: dict[str, Any], key: str, low: float, high: float) -> float:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise BadInput(
            f"{key} must be a number from {low} to {high}, got {brief(value)}", field=key
        )
    return float(value)
