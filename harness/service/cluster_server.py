"""`vecmig cluster serve`: a fake HNSW cluster as its own server process, so that the migration
service reaches each side over a real network path, and chaos reaches its faults over HTTP.

The wire format is `vecmig.harness.clusters.remote`'s; the adapter there is this server's client.
Besides the fake cluster's own fault families, the server has one of its own, `latency`
(`ms` added to every call), and `--latency-ms` as the base service time that slow replicas
multiply.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    ProcessCollector,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from vecmig.harness.clusters.base import ClusterError, Record, Tombstone, brief, max_component
from vecmig.harness.clusters.fake import FakeCluster
from vecmig.harness.clusters.faults import CLUSTER_FAULT_FAMILIES
from vecmig.harness.clusters.remote import (
    ERROR_KINDS,
    error_kind,
    hits_to_wire,
    stored_to_wire,
)

from .inputs import search_filter
from .openapi import cluster_schema
from .web import (
    BadInput,
    Handler,
    HttpGuard,
    bearer_ok,
    error,
    json_object,
    no_body,
    number_list,
    read_json,
    unauthorized,
)

SERVER_FAULT_FAMILIES = ("latency",)
QUERY = ("vector", "k", "filter")
BODY_LIMIT = 16 << 20
"""A write batch of the backfill (256 records of 768 floats) is about 4 MB of JSON."""


class ClusterServer:
    """The fake cluster behind HTTP. Calls run on the event loop: the cluster holds one lock
    and answers in microseconds, so a thread hop would cost more than it saves."""

    def __init__(
        self,
        cluster: FakeCluster,
        latency_ms: float = 0.0,
        *,
        token: str | None = None,
        body_limit: int = BODY_LIMIT,
    ) -> None:
        self.cluster = cluster
        self.base_latency_ms = latency_ms
        self.extra_latency_ms = 0.0
        self.token = token
        """None: no authentication (loopback only, see `vecmig cluster serve`)."""
        self.body_limit = body_limit
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.http_responses = Counter(
            "vecmig_cluster_http_responses",
            "HTTP answers by route and status code",
            ("route", "code"),
            registry=self.registry,
        )

    async def _delay(self, op: str) -> None:
        ms = self.base_latency_ms * self.cluster.latency_multiplier(op) + self.extra_latency_ms
        if ms > 0:
            await asyncio.sleep(ms / 1000.0)

    # -- the port over HTTP ------------------------------------------------------------------

    async def upsert(self, body: dict[str, Any]) -> Any:
        dim = self.cluster.dim
        records = [_record(item, i, dim) for i, item in enumerate(_list(body, "records"))]
        await self._delay("upsert")
        return {"applied": self.cluster.upsert(records, fenced=_fenced(body))}

    async def delete(self, body: dict[str, Any]) -> Any:
        tombstones = [_tombstone(item, i) for i, item in enumerate(_list(body, "tombstones"))]
        await self._delay("delete")
        return {"applied": self.cluster.delete(tombstones, fenced=_fenced(body))}

    async def get(self, body: dict[str, Any]) -> Any:
        ids = _list(body, "ids")
        await self._delay("get")
        found = self.cluster.get(ids)
        return {"found": {key: stored_to_wire(value) for key, value in found.items()}}

    async def search(self, body: dict[str, Any]) -> Any:
        await self._delay("search")
        k = cast(int, body.get("k"))  # the cluster checks k and refuses a bad one (400)
        hits = self.cluster.search(_vector(body, self.cluster.dim), k, search_filter(body))
        return {"hits": hits_to_wire(hits)}

    async def exact(self, body: dict[str, Any]) -> Any:
        k = cast(int, body.get("k"))  # the cluster checks k and refuses a bad one (400)
        hits = self.cluster.exact_search(_vector(body, self.cluster.dim), k, search_filter(body))
        return {"hits": hits_to_wire(hits)}

    async def scan(self, body: dict[str, Any]) -> Any:
        await self._delay("scan")
        page = self.cluster.scan(body.get("cursor"), body.get("limit"))  # type: ignore[arg-type]
        return {"items": [stored_to_wire(s) for s in page.items], "next_cursor": page.next_cursor}

    async def count(self, _: Request) -> Any:
        await self._delay("count")
        counts = self.cluster.count()
        return {"live": counts.live, "tombstones": counts.tombstones}

    async def checksums(self, body: dict[str, Any]) -> Any:
        await self._delay("checksums")
        sums = self.cluster.checksums(body.get("buckets"))  # type: ignore[arg-type]
        return {"checksums": [[c.bucket, c.count, c.checksum] for c in sums]}

    async def health(self, _: Request) -> Any:
        health = self.cluster.health()
        return {"ok": health.ok, "detail": dict(health.detail)}

    async def info(self, _: Request) -> Any:
        return {
            "name": self.cluster.name,
            "dim": self.cluster.dim,
            "metric": self.cluster.metric.value,
            "nodes": self.cluster.nodes(),
            "fault_families": list(CLUSTER_FAULT_FAMILIES + SERVER_FAULT_FAMILIES),
        }

    async def live_versions(self, _: Request) -> Any:
        """The oracle: what the cluster will serve once healed (faults ignored)."""
        return {"records": self.cluster.live_versions()}

    # -- faults --------------------------------------------------------------------------------

    async def faults(self, _: Request) -> Any:
        return {**self.cluster.fault_state(), "latency_ms": self.extra_latency_ms}

    async def start_fault(self, body: dict[str, Any]) -> Any:
        family, params = _fault(body)
        if family == "latency":
            self.extra_latency_ms = _ms(params)
        else:
            self._fault_call(self.cluster.start_fault, family, params)
        return await self.faults(None)  # type: ignore[arg-type]

    async def stop_fault(self, body: dict[str, Any]) -> Any:
        family, params = _fault(body)
        if family == "latency":
            self.extra_latency_ms = 0.0
        else:
            self._fault_call(self.cluster.stop_fault, family, params)
        return await self.faults(None)  # type: ignore[arg-type]

    async def heal(self, _: dict[str, Any]) -> Any:
        heal(self.cluster)
        self.extra_latency_ms = 0.0
        return await self.faults(None)  # type: ignore[arg-type]

    @staticmethod
    def _fault_call(call: Callable[..., None], family: str, params: Mapping[str, Any]) -> None:
        try:
            call(family, **params)
        except (ValueError, TypeError) as exc:
            raise BadInput(str(exc)) from None

    # -- the migration's note ------------------------------------------------------------------

    async def marker(self, _: Request) -> Any:
        return {"marker": self.cluster.read_marker()}

    async def set_marker(self, body: dict[str, Any]) -> Any:
        marker = body.get("marker")
        if not isinstance(marker, dict) or set(body) != {"marker"}:
            raise BadInput('the body must be {"marker": {...}}', field="marker")
        self.cluster.write_marker(marker)
        return {"marker": self.cluster.read_marker()}

    # -- the app -------------------------------------------------------------------------------

    def app(self) -> Starlette:
        """The server's endpoints. With a token, every one but `/v1/health` and
        `/openapi.json` needs `Authorization: Bearer TOKEN`."""
        post, get = self._post, self._get
        routes = [
            Route("/v1/upsert", post(self.upsert, "records", "fenced"), methods=["POST"]),
            Route("/v1/delete", post(self.delete, "tombstones", "fenced"), methods=["POST"]),
            Route("/v1/get", post(self.get, "ids"), methods=["POST"]),
            Route("/v1/search", post(self.search, *QUERY), methods=["POST"]),
            Route("/v1/exact", post(self.exact, *QUERY), methods=["POST"]),
            Route("/v1/scan", post(self.scan, "cursor", "limit"), methods=["POST"]),
            Route("/v1/count", get(self.count), methods=["GET"]),
            Route("/v1/checksums", post(self.checksums, "buckets"), methods=["POST"]),
            Route("/v1/health", self._open(self.health), methods=["GET"]),
            Route("/v1/info", get(self.info), methods=["GET"]),
            Route("/v1/live_versions", get(self.live_versions), methods=["GET"]),
            Route("/v1/marker", get(self.marker), methods=["GET"]),
            Route("/v1/marker", post(self.set_marker, "marker"), methods=["POST"]),
            Route("/faults", get(self.faults), methods=["GET"]),
            Route("/faults/start", post(self.start_fault, "family", "params"), methods=["POST"]),
            Route("/faults/stop", post(self.stop_fault, "family", "params"), methods=["POST"]),
            Route("/faults/heal", post(self.heal, body=False), methods=["POST"]),
            Route("/metrics", self.metrics, methods=["GET"]),
            Route("/openapi.json", self._open(self.openapi), methods=["GET"]),
        ]
        middleware = [Middleware(HttpGuard, responses=self.http_responses)]
        app = Starlette(routes=routes, middleware=middleware)
        app.router.redirect_slashes = False  # a redirect would build its Location from Host
        return app

    def _post(
        self,
        handler: Callable[[dict[str, Any]], Awaitable[Any]],
        *fields: str,
        body: bool = True,
    ) -> Handler:
        """A POST endpoint whose JSON body may hold `fields` and nothing else."""

        async def endpoint(request: Request) -> Response:
            if self.token is not None and not bearer_ok(request, self.token):
                return unauthorized("this server's endpoints", "its token ($VECMIG_CLUSTER_TOKEN)")
            try:
                data: dict[str, Any] = {}
                if body:
                    data = json_object(await read_json(request, self.body_limit), "the body")
                    unknown = sorted(set(data) - set(fields))
                    if unknown:
                        raise BadInput(
                            f"unknown field(s) {brief(unknown)}; this endpoint takes {list(fields)}"
                        )
                else:
                    await no_body(request)
                return JSONResponse(await handler(data))
            except BadInput as exc:
                return exc.response()
            except ClusterError as exc:
                return _cluster_error(exc)

        return endpoint

    def _get(self, handler: Callable[[Request], Awaitable[Any]]) -> Handler:
        async def endpoint(request: Request) -> Response:
            if self.token is not None and not bearer_ok(request, self.token):
                return unauthorized("this server's endpoints", "its token ($VECMIG_CLUSTER_TOKEN)")
            return await self._open(handler)(request)

        return endpoint

    @staticmethod
    def _open(handler: Callable[[Request], Awaitable[Any]]) -> Handler:
        async def endpoint(request: Request) -> Response:
            try:
                return JSONResponse(await handler(request))
            except ClusterError as exc:
                return _cluster_error(exc)

        return endpoint

    async def metrics(self, _: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    async def openapi(self, _: Request) -> Any:
        return cluster_schema(self.cluster.dim)


def heal(cluster: FakeCluster) -> None:
    """Stop every fault the fake cluster has on."""
    state = cluster.fault_state()
    for node in state["crashed"]:
        cluster.stop_fault("node-crash", node=node)
    for node in state["paused"]:
        cluster.stop_fault("node-pause", node=node)
    for node in state["slow"]:
        cluster.stop_fault("slow-replica", node=node)
    for family in ("error-rate", "lost-ack", "visibility-lag", "index-rebuild"):
        cluster.stop_fault(family)


def _cluster_error(exc: ClusterError) -> JSONResponse:
    kind = error_kind(exc)
    return error(str(exc), ERROR_KINDS[kind][1], kind)


def _list(body: Mapping[str, Any], key: str) -> list[Any]:
    value = body.get(key)
    if not isinstance(value, list):
        raise BadInput(f"{key!r} must be a list, got {type(value).__name__}", field=key)
    return value


def _fenced(body: Mapping[str, Any]) -> bool:
    fenced = body.get("fenced", True)
    if not isinstance(fenced, bool):
        raise BadInput(f"'fenced' must be true or false, got {fenced!r}", field="fenced")
    return fenced


def _vector(body: Mapping[str, Any], dim: int) -> Any:
    vector = number_list(body.get("vector"), "vector", max_component(dim))
    return np.asarray(vector, dtype=np.float32)


def _record(item: Any, position: int, dim: int) -> Record:
    if not isinstance(item, dict):
        raise BadInput(f"records[{position}] must be an object")
    try:
        metadata = item.get("metadata")
        if metadata is None:
            metadata = {}
        if not isinstance(metadata, dict):
            raise BadInput(f"records[{position}].metadata must be an object or null")
        return Record(item["id"], _vector(item, dim), metadata, item["version"])
    except KeyError as exc:
        raise BadInput(f"records[{position}] lacks {exc.args[0]!r}") from None


def _tombstone(item: Any, position: int) -> Tombstone:
    if not isinstance(item, dict) or "id" not in item or "version" not in item:
        raise BadInput(f"tombstones[{position}] must be an object with 'id' and 'version'")
    return Tombstone(item["id"], item["version"])


def _fault(body: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    family = body.get("family")
    families = CLUSTER_FAULT_FAMILIES + SERVER_FAULT_FAMILIES
    if family not in families:
        raise BadInput(f"unknown fault family {family!r}; valid ones are {', '.join(families)}")
    params = body.get("params")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise BadInput(f"'params' must be an object, got {brief(params)}", field="params")
    return str(family), params


def _ms(params: Mapping[str, Any]) -> float:
    ms = params.get("ms")
    if isinstance(ms, bool) or not isinstance(ms, int | float) or not 0 <= ms <= 60_000:
        raise BadInput(f"latency needs 'ms' from 0 to 60000, got {ms!r}")
    return float(ms)
