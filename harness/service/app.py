"""The migration service's HTTP face: client endpoints (upsert, delete, get, search), admin
endpoints behind a bearer token (status, phase steps, verification, layer faults), liveness
(`/health`), readiness (`/ready`), Prometheus metrics and the OpenAPI schema.

Bad input is refused before anything runs, with a 4xx whose JSON names the problem and the
field; a refused request has no effect. Client outcomes map onto status codes so that a client
can write its history from them alone: 200 ok, 503 `fail` (certainly no effect), 504 `info`
(indeterminate: the write may still land). A write's 200 says whether it was `applied` or
`superseded` (fencing kept a newer version of the id: nothing changed).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from vecmig.harness.clusters.base import Record, Side
from vecmig.harness.core.phases import PhaseError, Step
from vecmig.harness.core.requests import Outcome

from . import inputs
from .driver import LAYER_FAULT_FAMILIES
from .migration import Migration
from .openapi import service_schema
from .web import (
    DEFAULT_BODY_LIMIT,
    BadInput,
    Handler,
    HttpGuard,
    bearer_ok,
    json_object,
    no_body,
    read_json,
    unauthorized,
)

OUTCOME_STATUS = {"ok": 200, "fail": 503, "info": 504}
BodyHandler = Callable[[dict[str, Any]], Awaitable[Response]]


class ServiceApp:
    """The endpoints of one migration service; `build()` wires them into a Starlette app."""

    def __init__(
        self, migration: Migration, admin_token: str, body_limit: int = DEFAULT_BODY_LIMIT
    ) -> None:
        if not admin_token:
            raise ValueError(
                "the service needs an admin token ($VECMIG_ADMIN_TOKEN or --admin-token-file)"
            )
        self.migration = migration
        self.admin_token = admin_token
        self.body_limit = body_limit
        self.versions = migration.config.versions

    def build(self) -> Starlette:
        admin, client = self._admin, self._client
        routes = [
            Route("/v1/upsert", client(self.upsert), methods=["POST"]),
            Route("/v1/delete", client(self.delete), methods=["POST"]),
            Route("/v1/get", client(self.get), methods=["POST"]),
            Route("/v1/search", client(self.search), methods=["POST"]),
            Route("/admin/status", admin(self.status), methods=["GET"]),
            Route("/admin/advance", admin(self._phase_step(Step.ADVANCE)), methods=["POST"]),
            Route("/admin/rollback", admin(self._phase_step(Step.ROLLBACK)), methods=["POST"]),
            Route("/admin/abort", admin(self._phase_step(Step.ABORT)), methods=["POST"]),
            Route("/admin/verify", admin(self.verify), methods=["POST"]),
            Route("/admin/faults", admin(self.faults), methods=["GET", "POST"]),
            Route("/admin/faults/heal", admin(self.heal), methods=["POST"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/ready", self.ready, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
            Route("/openapi.json", self.openapi, methods=["GET"]),
        ]
        middleware = [Middleware(HttpGuard, responses=self.migration.metrics.http_responses)]
        app = Starlette(routes=routes, middleware=middleware, lifespan=self._lifespan)
        app.router.redirect_slashes = False  # a redirect would build its Location from Host
        return app

    @asynccontextmanager
    async def _lifespan(self, _: Starlette) -> AsyncIterator[None]:
        await self.migration.start()
        try:
            yield
        finally:
            await self.migration.stop()

    # -- wrappers ----------------------------------------------------------------------------

    def _client(self, handler: BodyHandler) -> Handler:
        async def endpoint(request: Request) -> Response:
            try:
                body = json_object(await read_json(request, self.body_limit), "the body")
                return await handler(body)
            except BadInput as exc:
                op = request.url.path.rsplit("/", 1)[-1]
                self.migration.metrics.outcomes.labels(op, "-", "invalid").inc()
                return exc.response()

        return endpoint

    def _admin(self, handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            if not bearer_ok(request, self.admin_token):
                return unauthorized("admin endpoints", "the admin token ($VECMIG_ADMIN_TOKEN)")
            try:
                return await handler(request)
            except BadInput as exc:
                return exc.response()

        return endpoint

    # -- client endpoints --------------------------------------------------------------------

    async def upsert(self, body: dict[str, Any]) -> Response:
        inputs.only(body, {"id", "vector", "metadata", "version"})
        record_id = inputs.record_id(body)
        vector = inputs.vector(body, self.migration.config.dim)
        metadata = inputs.metadata(body)
        version = self.versions.version_for(body, self.migration.next_version)
        outcome = await self.migration.upsert(Record(record_id, vector, metadata, version))
        return _answer(outcome)

    async def delete(self, body: dict[str, Any]) -> Response:
        inputs.only(body, {"id", "version"})
        record_id = inputs.record_id(body)
        version = self.versions.version_for(body, self.migration.next_version)
        return _answer(await self.migration.delete(record_id, version))

    async def get(self, body: dict[str, Any]) -> Response:
        inputs.only(body, {"id"})
        return _answer(await self.migration.get(inputs.record_id(body)))

    async def search(self, body: dict[str, Any]) -> Response:
        inputs.only(body, {"vector", "k", "filter"})
        vector = inputs.vector(body, self.migration.config.dim)
        k = inputs.top_k(body, self.migration.config.max_k)
        return _answer(await self.migration.search(vector, k, inputs.search_filter(body)))

    # -- admin endpoints ---------------------------------------------------------------------

    async def status(self, _: Request) -> Response:
        return JSONResponse(self.migration.status())

    def _phase_step(self, step: Step) -> Handler:
        async def endpoint(request: Request) -> Response:
            await no_body(request)
            try:
                result = await self.migration.step(step)
            except PhaseError as exc:
                published = self.migration.coordinator.published
                body = {
                    "ok": False,
                    "error": str(exc),
                    "phase": published.phase.value,
                    "epoch": published.epoch,
                    "reasons": [str(exc)],
                }
                return JSONResponse(body, status_code=409)
            body = {
                "ok": result.ok,
                "phase": result.phase.value,
                "epoch": result.epoch,
                "reasons": list(result.reasons),
            }
            return JSONResponse(body, status_code=200 if result.ok else 409)

        return endpoint

    async def verify(self, request: Request) -> Response:
        await no_body(request)
        return JSONResponse(await self.migration.verify_and_repair())

    async def faults(self, request: Request) -> Response:
        layer = self.migration.faults
        if request.method == "GET":
            return JSONResponse(layer.to_json())
        body = json_object(await read_json(request, self.body_limit), "the body")
        action, family, side, ms, seconds = _fault_request(body)
        if family == "config-lag":
            lag = seconds if action == "start" else 0.0
            layer.config_lag_until = time.monotonic_ns() + int(lag * 1e9) if lag else 0
            return JSONResponse(layer.to_json())
        if side is None:
            raise BadInput("side must be 'old' or 'new'", field="side")
        if family == "latency":
            if action == "start":
                layer.latency_ms[side] = ms
            else:
                layer.latency_ms.pop(side, None)
        elif action == "start":
            layer.partitioned.add(side)
        else:
            layer.partitioned.discard(side)
        return JSONResponse(layer.to_json())

    async def heal(self, request: Request) -> Response:
        await no_body(request)
        self.migration.faults.heal()
        return JSONResponse(self.migration.faults.to_json())

    # -- open endpoints ----------------------------------------------------------------------

    async def health(self, _: Request) -> Response:
        """Liveness: the process answers. Whether it can serve is `/ready`'s question."""
        published = self.migration.coordinator.published
        return JSONResponse({"ok": True, "phase": published.phase.value, "epoch": published.epoch})

    async def ready(self, _: Request) -> Response:
        """Readiness: both sides answer their health check, the state store answers, and this
        instance holds its lease. 503 names what is not ready."""
        checks = await self.migration.readiness()
        ready = all(check["ok"] for check in checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    async def metrics(self, _: Request) -> Response:
        self.migration.update_gauges()
        registry = self.migration.metrics.registry
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def openapi(self, _: Request) -> Response:
        config = self.migration.config
        return JSONResponse(service_schema(config.dim, config.max_k, self.versions))


def create_app(
    migration: Migration, admin_token: str, body_limit: int = DEFAULT_BODY_LIMIT
) -> Starlette:
    return ServiceApp(migration, admin_token, body_limit).build()


def _fault_request(body: dict[str, Any]) -> tuple[str, str, Side | None, float, float]:
    """(action, family, side, ms, seconds) of a layer-fault request, every field given checked
    whether or not this action uses it (a wrong field is a mistake, not something to ignore)."""
    inputs.only(body, {"action", "family", "side", "ms", "seconds"})
    action, family, side = body.get("action"), body.get("family"), body.get("side")
    if action not in ("start", "stop"):
        raise BadInput(f"action must be 'start' or 'stop', got {action!r:.40}", field="action")
    if family not in LAYER_FAULT_FAMILIES:
        raise BadInput(
            f"unknown layer fault family {family!r:.40}; valid ones are "
            f"{', '.join(LAYER_FAULT_FAMILIES)}",
            field="family",
        )
    if "side" in body and side not in ("old", "new"):
        raise BadInput(f"side must be 'old' or 'new', got {side!r:.40}", field="side")
    ms = inputs.number(body, "ms", 0, 60_000) if "ms" in body else 0.0
    seconds = inputs.number(body, "seconds", 0, 3600) if "seconds" in body else 0.0
    if action == "start" and family == "latency" and "ms" not in body:
        raise BadInput("a latency fault needs 'ms' (0 to 60000)", field="ms")
    if action == "start" and family == "config-lag" and "seconds" not in body:
        raise BadInput("a config-lag fault needs 'seconds' (0 to 3600)", field="seconds")
    return str(action), str(family), None if side is None else Side(side), ms, seconds


def _answer(outcome: Outcome) -> JSONResponse:
    if outcome.type == "ok":
        return JSONResponse(outcome.value)
    return JSONResponse(
        {"error": outcome.error or outcome.type, "outcome": outcome.type, "kind": outcome.type},
        status_code=OUTCOME_STATUS[outcome.type],
    )
