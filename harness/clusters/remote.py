"""A side reached over HTTP: the `ClusterPort` adapter for a cluster server (`vecmig cluster
serve`), plus the JSON wire format both ends share.

Errors are translated here, once: a connection that could not be made is `Unavailable` (the
call never left), a read that timed out or a connection cut mid-answer is `Timeout` (the call
may have taken effect), a 4xx is `InvalidRequest`. The server names the error kind it raised
(`unavailable`, `timeout`, `invalid`) in its JSON body, so a fault inside the cluster arrives
as the same exception it was on the other side of the wire.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx
import numpy as np

from .base import (
    ClusterError,
    Counts,
    Filter,
    Health,
    Hit,
    InvalidRequest,
    Metric,
    RangeChecksum,
    Record,
    ScanPage,
    Stored,
    Timeout,
    Tombstone,
    Unavailable,
    Vector,
)

__all__ = ["RemoteCluster", "ERROR_KINDS"]

# The error kinds of the wire format, and the status a server answers each with.
ERROR_KINDS: Mapping[str, tuple[type[ClusterError], int]] = {
    "unavailable": (Unavailable, 503),
    "timeout": (Timeout, 504),
    "invalid": (InvalidRequest, 400),
}


def error_kind(exc: ClusterError) -> str:
    if isinstance(exc, Timeout):
        return "timeout"
    if isinstance(exc, InvalidRequest):
        return "invalid"
    return "unavailable"


# ---------------------------------------------------------------------------------------------
# The wire format: plain JSON, vectors as lists of floats (float32 -> float64 -> float32 is
# exact, so a vector round-trips bit for bit).


def vector_to_wire(vector: Vector | None) -> list[float] | None:
    return None if vector is None else np.asarray(vector, dtype=np.float32).tolist()


def record_to_wire(record: Record) -> dict[str, Any]:
    return {
        "id": record.id,
        "vector": _vector_arg(record.vector),
        "metadata": dict(record.metadata),
        "version": record.version,
    }


def stored_to_wire(stored: Stored, with_vector: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"id": stored.id, "version": stored.version, "deleted": stored.deleted}
    if with_vector and not stored.deleted:
        out["vector"] = vector_to_wire(stored.vector)
        out["metadata"] = dict(stored.metadata)
    return out


def stored_from_wire(data: Mapping[str, Any]) -> Stored:
    vector = data.get("vector")
    return Stored(
        data["id"],
        int(data["version"]),
        bool(data["deleted"]),
        None if vector is None else np.asarray(vector, dtype=np.float32),
        data.get("metadata") or {},
    )


def hits_to_wire(hits: Sequence[Hit]) -> list[list[Any]]:
    return [[h.id, h.version, float(h.score)] for h in hits]


def hits_from_wire(rows: Sequence[Sequence[Any]]) -> list[Hit]:
    return [Hit(str(r[0]), int(r[1]), float(r[2])) for r in rows]


# ---------------------------------------------------------------------------------------------


class RemoteCluster:
    """`ClusterPort` over HTTP. Thread-safe (httpx's client pools connections across threads).

    `dim` and `metric` are asked of the server when not given; a mismatch with what the caller
    expects is refused at open time rather than discovered at the first write. Pass `client`
    to reuse a configured `httpx.Client` (tests pass Starlette's TestClient, no socket needed).
    """

    def __init__(
        self,
        base_url: str,
        dim: int | None = None,
        metric: Metric | str | None = None,
        *,
        timeout_s: float = 5.0,
        connect_timeout_s: float = 1.0,
        client: httpx.Client | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = client or httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
        )
        info = self.info() if dim is None or metric is None else None
        self._dim = dim if dim is not None else int(info["dim"])  # type: ignore[index]
        self._metric = Metric(metric if metric is not None else info["metric"])  # type: ignore[index]

    def close(self) -> None:
        self._client.close()

    def __repr__(self) -> str:
        return f"RemoteCluster({self.base_url!r}, dim={self._dim}, metric={self._metric.value!r})"

    # -- the port ----------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def metric(self) -> Metric:
        return self._metric

    def upsert(self, records: Sequence[Record], *, fenced: bool = True) -> dict[str, bool]:
        body = {
            "records": [record_to_wire(r) for r in _batch(records, Record, "upsert")],
            "fenced": fenced,
        }
        return dict(self._call("POST", "/v1/upsert", body)["applied"])

    def delete(self, tombstones: Sequence[Tombstone], *, fenced: bool = True) -> dict[str, bool]:
        items = _batch(tombstones, Tombstone, "delete")
        body = {"tombstones": [{"id": t.id, "version": t.version} for t in items], "fenced": fenced}
        return dict(self._call("POST", "/v1/delete", body)["applied"])

    def get(self, ids: Sequence[str]) -> dict[str, Stored]:
        if isinstance(ids, str) or not isinstance(ids, Sequence):
            raise InvalidRequest(f"get takes a sequence of ids, got {ids!r}")
        found = self._call("POST", "/v1/get", {"ids": list(ids)})["found"]
        return {key: stored_from_wire(value) for key, value in found.items()}

    def search(self, vector: Vector, k: int, filter: Filter | None = None) -> list[Hit]:
        body = {
            "vector": _vector_arg(vector),
            "k": k,
            "filter": None if filter is None else dict(filter),
        }
        return hits_from_wire(self._call("POST", "/v1/search", body)["hits"])

    def scan(self, cursor: str | None, limit: int) -> ScanPage:
        page = self._call("POST", "/v1/scan", {"cursor": cursor, "limit": limit})
        return ScanPage(tuple(stored_from_wire(s) for s in page["items"]), page["next_cursor"])

    def count(self) -> Counts:
        counts = self._call("GET", "/v1/count")
        return Counts(int(counts["live"]), int(counts["tombstones"]))

    def checksums(self, buckets: int) -> list[RangeChecksum]:
        rows = self._call("POST", "/v1/checksums", {"buckets": buckets})["checksums"]
        return [RangeChecksum(int(b), int(c), int(s)) for b, c, s in rows]

    def health(self) -> Health:
        """Never raises: an unreachable server is an unhealthy side."""
        try:
            data = self._call("GET", "/v1/health")
        except ClusterError as exc:
            return Health(False, {"server": f"{self.base_url}: {exc}"})
        return Health(bool(data["ok"]), dict(data.get("detail", {})))

    # -- beyond the port: ground truth and faults, for drivers and the chaos controller ------

    def exact_search(self, vector: Vector, k: int, filter: Filter | None = None) -> list[Hit]:
        body = {
            "vector": _vector_arg(vector),
            "k": k,
            "filter": None if filter is None else dict(filter),
        }
        return hits_from_wire(self._call("POST", "/v1/exact", body)["hits"])

    def info(self) -> dict[str, Any]:
        return dict(self._call("GET", "/v1/info"))

    def start_fault(self, family: str, **params: Any) -> None:
        self._call("POST", "/faults/start", {"family": family, "params": params})

    def stop_fault(self, family: str, **params: Any) -> None:
        self._call("POST", "/faults/stop", {"family": family, "params": params})

    def heal_all(self) -> None:
        self._call("POST", "/faults/heal", {})

    def fault_state(self) -> dict[str, Any]:
        return dict(self._call("GET", "/faults"))

    # -- the boundary ------------------------------------------------------------------------

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            response = self._client.request(method, path, json=body)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise Unavailable(f"{self.base_url}{path}: cannot connect ({exc})") from None
        except httpx.TimeoutException as exc:
            raise Timeout(
                f"{self.base_url}{path}: no answer in time ({type(exc).__name__})"
            ) from None
        except httpx.TransportError as exc:
            # The connection broke after the request went out: it may have taken effect.
            raise Timeout(
                f"{self.base_url}{path}: connection lost ({type(exc).__name__}: {exc})"
            ) from None
        if response.status_code == 200:
            return response.json()
        try:
            data = response.json()
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        detail = data.get("error") or response.text[:200] or response.reason_phrase
        message = f"{self.base_url}{path}: {detail}"
        kind = data.get("kind")
        if isinstance(kind, str) and kind in ERROR_KINDS:
            raise ERROR_KINDS[kind][0](message)
        if 400 <= response.status_code < 500:
            raise InvalidRequest(f"{message} (HTTP {response.status_code})")
        if response.status_code == 504:
            raise Timeout(f"{message} (HTTP 504)")
        raise Unavailable(f"{message} (HTTP {response.status_code})")


def _vector_arg(vector: object) -> Any:
    """A vector as JSON. Non-finite values are refused here, since JSON cannot carry them;
    anything else malformed goes over as is, and the server names the problem."""
    try:
        array = np.asarray(vector, dtype=np.float32)
    except (TypeError, ValueError):
        return vector
    if array.ndim == 1 and not np.all(np.isfinite(array)):
        bad = int(np.flatnonzero(~np.isfinite(array))[0])
        raise InvalidRequest(f"vector has a non-finite value {array[bad]!r} at position {bad}")
    return array.tolist()


def _batch(items: object, kind: type, call: str) -> list[Any]:
    if isinstance(items, str | bytes) or not isinstance(items, Sequence):
        raise InvalidRequest(
            f"{call} takes a sequence of {kind.__name__}, got {type(items).__name__}"
        )
    for position, item in enumerate(items):
        if not isinstance(item, kind):
            raise InvalidRequest(
                f"{call} item {position} is a {type(item).__name__}, expected {kind.__name__}"
            )
    return list(items)
