"""A side reached over HTTP: the `ClusterPort` adapter for a cluster server (`vecmig cluster
serve`), plus the JSON wire format both ends share.

Errors are translated here, once: a connection that could not be made is `Unavailable` (the
call never left), a read that timed out or a connection cut mid-answer is `Timeout` (the call
may have taken effect), a 4xx is `InvalidRequest`. The server names the error kind it raised
(`unavailable`, `timeout`, `invalid`) in its JSON body, so a fault inside the cluster arrives
as the same exception it was on the other side of the wire.

The HTTP client is the standard library's `http.client`, over a small pool of keep-alive
connections: the service makes one or two of these calls per client request, and a
general-purpose client (httpx) cost ten times the CPU per call for features a JSON call to one
known server does not use. An `httpx.Client` can still be handed in (the tests pass Starlette's
TestClient, which needs no socket).
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
import numpy as np
import orjson

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
    validate_batch,
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
# Reading JSON: orjson (a tenth of the CPU) wherever it reads the text exactly as the standard
# library does. It does not for an integer outside [-2**63, 2**64), which it reads as a float:
# such an integer has 20 digits or more, or is negative with 19, and with every digit mapped
# to "9" a plain substring search finds them (and, harmlessly, long runs of float digits).
# What orjson refuses (NaN, 1e999, malformed text) goes to the standard library too, which
# decides with the caller's hooks and names the problem.

_DIGITS = bytes.maketrans(b"0123456789", b"9999999999")
_LONG_POSITIVE, _LONG_NEGATIVE = b"9" * 20, b"-" + b"9" * 19


def json_loads(data: bytes, **stdlib: Any) -> Any:
    """`json.loads(data.decode("utf-8"), **stdlib)`, faster on the common case."""
    digits = data.translate(_DIGITS)
    if _LONG_POSITIVE not in digits and _LONG_NEGATIVE not in digits:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data.decode("utf-8"), **stdlib)


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
    """`ClusterPort` over HTTP. Thread-safe: each call takes a keep-alive connection from a
    shared pool and gives it back once the answer is read.

    `dim` and `metric` are asked of the server when not given; a mismatch with what the caller
    expects is refused at open time rather than discovered at the first write. Pass `client`
    to send through a configured `httpx.Client` instead (tests pass Starlette's TestClient, no
    socket needed).
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
        token: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        headers = dict(_HEADERS)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._wire: _Wire = (
            _HttpxWire(client, self.base_url, headers)
            if client is not None
            else _KeepAlivePool(self.base_url, timeout_s, connect_timeout_s, headers)
        )
        info = self.info() if dim is None or metric is None else None
        self._dim = dim if dim is not None else int(info["dim"])  # type: ignore[index]
        self._metric = Metric(metric if metric is not None else info["metric"])  # type: ignore[index]

    def close(self) -> None:
        self._wire.close()

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
            "records": [record_to_wire(r) for r in validate_batch(records, Record, "upsert")],
            "fenced": fenced,
        }
        return dict(self._call("POST", "/v1/upsert", body)["applied"])

    def delete(self, tombstones: Sequence[Tombstone], *, fenced: bool = True) -> dict[str, bool]:
        items = validate_batch(tombstones, Tombstone, "delete")
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

    def read_marker(self) -> dict[str, Any] | None:
        marker = self._call("GET", "/v1/marker")["marker"]
        return None if marker is None else dict(marker)

    def write_marker(self, marker: Mapping[str, Any]) -> None:
        self._call("POST", "/v1/marker", {"marker": dict(marker)})

    # -- the boundary ------------------------------------------------------------------------

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        content = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        status, reason, data = self._wire.exchange(method, path, content)
        if status == 200:
            return json_loads(data)
        try:
            answer = json_loads(data)
        except ValueError:
            answer = {}
        if not isinstance(answer, dict):
            answer = {}
        text = data[:200].decode("utf-8", "replace")
        detail = answer.get("error") or text or reason
        message = f"{self.base_url}{path}: {detail}"
        kind = answer.get("kind")
        if isinstance(kind, str) and kind in ERROR_KINDS:
            raise ERROR_KINDS[kind][0](message)
        if 400 <= status < 500:
            raise InvalidRequest(f"{message} (HTTP {status})")
        if status == 504:
            raise Timeout(f"{message} (HTTP 504)")
        raise Unavailable(f"{message} (HTTP {status})")


# ---------------------------------------------------------------------------------------------
# The wire: one HTTP exchange, with the transport's own errors translated to the port's.


class _Wire(Protocol):
    def exchange(self, method: str, path: str, body: bytes | None) -> tuple[int, str, bytes]:
        """(status, reason, body) of one request; raises `Unavailable` when no connection
        could be made and `Timeout` when the request may have gone out but no whole answer
        came back."""
        ...

    def close(self) -> None: ...


_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


class _KeepAlivePool:
    """Keep-alive `http.client` connections to one server, shared by threads. A call takes an
    idle connection (or opens one) and gives it back after reading the answer whole; a
    connection that failed mid-call is closed, never reused. Taking and giving back are
    single deque operations, atomic under the GIL, so the pool needs no lock.

    A connection idle for `max_idle_s` is not reused: a server closes idle connections on its
    own (uvicorn after 5 s), and a request sent just as it does so fails as "connection lost",
    which is indeterminate (`Timeout`) for a write that in fact never arrived. The readability
    check before reuse catches a close that already happened; the age limit stays clear of the
    one about to happen."""

    def __init__(
        self,
        base_url: str,
        timeout_s: float,
        connect_timeout_s: float,
        headers: Mapping[str, str] = _HEADERS,
        max_idle: int = 64,
        max_idle_s: float = 2.0,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{base_url!r} is not an http:// or https:// URL with a host")
        self._connection_class = (
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        )
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._where = base_url
        self._headers = dict(headers)
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._max_idle = max_idle
        self._max_idle_s = max_idle_s
        self._idle: deque[tuple[http.client.HTTPConnection, float]] = deque()

    def exchange(self, method: str, path: str, body: bytes | None) -> tuple[int, str, bytes]:
        connection = self._take(path)
        try:
            connection.request(method, self._prefix + path, body=body, headers=self._headers)
            response = connection.getresponse()
            data = response.read()
        except TimeoutError as exc:
            connection.close()
            raise Timeout(
                f"{self._where}{path}: no answer in time ({exc or 'timed out'})"
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            # The connection broke after the request went out: it may have taken effect.
            connection.close()
            raise Timeout(
                f"{self._where}{path}: connection lost ({type(exc).__name__}: {exc})"
            ) from None
        if response.will_close or len(self._idle) >= self._max_idle:
            connection.close()
        else:
            self._idle.append((connection, time.monotonic()))
        return response.status, response.reason, data

    def _take(self, path: str) -> http.client.HTTPConnection:
        while True:
            try:
                connection, since = self._idle.pop()
            except IndexError:
                break
            if (
                connection.sock is not None
                and time.monotonic() - since < self._max_idle_s
                and not _readable(connection.sock)
            ):
                return connection
            # Idle too long, or the server closed it meanwhile: open another.
            connection.close()
        connection = self._connection_class(self._host, self._port, timeout=self._connect_timeout_s)
        try:
            connection.connect()
        except OSError as exc:  # refused, unreachable, no such host, connect timeout, TLS
            connection.close()
            raise Unavailable(f"{self._where}{path}: cannot connect ({exc})") from None
        connection.sock.settimeout(self._timeout_s)
        return connection

    def close(self) -> None:
        while self._idle:
            self._idle.pop()[0].close()


def _readable(sock: socket.socket) -> bool:
    """Whether an idle keep-alive connection has something to read: the server's close (or
    bytes it should not have sent), so it must not carry another request."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class _HttpxWire:
    """The same exchange through a caller's `httpx.Client` (tests hand in a TestClient)."""

    def __init__(self, client: httpx.Client, where: str, headers: Mapping[str, str]) -> None:
        self._client = client
        self._where = where
        self._headers = dict(headers)

    def exchange(self, method: str, path: str, body: bytes | None) -> tuple[int, str, bytes]:
        try:
            response = self._client.request(method, path, content=body, headers=self._headers)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise Unavailable(f"{self._where}{path}: cannot connect ({exc})") from None
        except httpx.TimeoutException as exc:
            raise Timeout(
                f"{self._where}{path}: no answer in time ({type(exc).__name__})"
            ) from None
        except httpx.TransportError as exc:
            # The connection broke after the request went out: it may have taken effect.
            raise Timeout(
                f"{self._where}{path}: connection lost ({type(exc).__name__}: {exc})"
            ) from None
        return response.status_code, response.reason_phrase, response.content

    def close(self) -> None:
        self._client.close()


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
