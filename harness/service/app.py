"""The migration service's HTTP face: client endpoints (upsert, delete, get, search), admin
endpoints behind a token (status, phase steps, verification, layer faults), health and
Prometheus metrics.

Bad input is refused before anything runs, with a 4xx whose JSON names the problem and the
field; a refused request has no effect. Client outcomes map onto status codes so that a client
can write its history from them alone: 200 ok, 503 `fail` (certainly no effect), 504 `info`
(indeterminate: the write may still land).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from vecmig.harness.clusters.base import (
    InvalidRequest,
    Record,
    Side,
    validate_id,
    validate_vector,
    validate_version,
)
from vecmig.harness.core.phases import PhaseError, Step
from vecmig.harness.core.requests import Outcome

from .driver import LAYER_FAULT_FAMILIES
from .migration import Migration
from .web import DEFAULT_BODY_LIMIT, BadInput, json_object, read_json

Handler = Callable[[Request], Awaitable[Response]]

OUTCOME_STATUS = {"ok": 200, "fail": 503, "info": 504}
SCALAR = (str, int, float, bool, type(None))


def create_app(
    migration: Migration, admin_token: str, body_limit: int = DEFAULT_BODY_LIMIT
) -> Starlette:
    if not admin_token:
        raise ValueError("the service needs an admin token (--admin-token or VECMIG_ADMIN_TOKEN)")
    dim, max_k = migration.config.dim, migration.config.max_k

    def client(handler: Callable[[dict[str, Any]], Awaitable[Response]]) -> Handler:
        async def endpoint(request: Request) -> Response:
            try:
                body = json_object(await read_json(request, body_limit), "the body")
                return await handler(body)
            except BadInput as exc:
                migration.metrics.outcomes.labels(
                    request.url.path.rsplit("/", 1)[-1], "-", "invalid"
                ).inc()
                return exc.response()

        return endpoint

    async def upsert(body: dict[str, Any]) -> Response:
        _only(body, {"id", "vector", "metadata", "version"})
        record_id = _id(body)
        vector = _vector(body, dim)
        metadata = body.get("metadata", {})
        if not isinstance(metadata, dict):
            raise BadInput(
                f"metadata must be an object, got {type(metadata).__name__}", field="metadata"
            )
        version = _version(body, required=False)
        if version is None:
            version = migration.next_version()
        outcome = await migration.upsert(Record(record_id, vector, metadata, version))
        return _answer(outcome)

    async def delete(body: dict[str, Any]) -> Response:
        _only(body, {"id", "version"})
        record_id = _id(body)
        version = _version(body, required=False)
        if version is None:
            version = migration.next_version()
        return _answer(await migration.delete(record_id, version))

    async def get(body: dict[str, Any]) -> Response:
        _only(body, {"id"})
        return _answer(await migration.get(_id(body)))

    async def search(body: dict[str, Any]) -> Response:
        _only(body, {"vector", "k", "filter"})
        vector = _vector(body, dim)
        k = body.get("k", 10)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= max_k:
            raise BadInput(f"k must be an integer from 1 to {max_k}, got {k!r}", field="k")
        filter = body.get("filter")
        if filter is not None:
            if not isinstance(filter, dict) or not all(
                isinstance(v, SCALAR) for v in filter.values()
            ):
                raise BadInput(
                    "filter must be an object of metadata key to a string, number, boolean or null "
                    f"(every key must equal its value), got {filter!r}",
                    field="filter",
                )
        return _answer(await migration.search(vector, k, filter or None))

    # -- admin ---------------------------------------------------------------------------------

    def admin(handler: Callable[[Request], Awaitable[Response]]) -> Handler:
        async def endpoint(request: Request) -> Response:
            given = request.headers.get("x-admin-token") or ""
            auth = request.headers.get("authorization", "")
            if auth.lower().startswith("bearer "):
                given = auth[7:].strip()
            if not given or not hmac.compare_digest(given.encode(), admin_token.encode()):
                return JSONResponse(
                    {
                        "error": "admin endpoints need the admin token: send 'Authorization: Bearer "
                        "TOKEN' (the service's --admin-token or VECMIG_ADMIN_TOKEN)",
                        "kind": "unauthorized",
                    },
                    status_code=401,
                )
            try:
                return await handler(request)
            except BadInput as exc:
                return exc.response()

        return endpoint

    async def status(_: Request) -> Response:
        return JSONResponse(migration.status())

    def phase_step(step: Step) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(_: Request) -> Response:
            try:
                result = await migration.step(step)
            except PhaseError as exc:
                published = migration.coordinator.published
                return JSONResponse(
                    {
                        "ok": False,
                        "error": str(exc),
                        "phase": published.phase.value,
                        "epoch": published.epoch,
                        "reasons": [str(exc)],
                    },
                    status_code=409,
                )
            body = {
                "ok": result.ok,
                "phase": result.phase.value,
                "epoch": result.epoch,
                "reasons": list(result.reasons),
            }
            return JSONResponse(body, status_code=200 if result.ok else 409)

        return endpoint

    async def verify(_: Request) -> Response:
        return JSONResponse(await migration.verify_and_repair())

    async def faults(request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse(migration.faults.to_json())
        body = json_object(await read_json(request, body_limit), "the body")
        _only(body, {"action", "family", "side", "ms", "seconds"})
        action, family = body.get("action"), body.get("family")
        if action not in ("start", "stop"):
            raise BadInput(f"action must be 'start' or 'stop', got {action!r}", field="action")
        if family not in LAYER_FAULT_FAMILIES:
            raise BadInput(
                f"unknown layer fault family {family!r}; valid ones are {', '.join(LAYER_FAULT_FAMILIES)}",
                field="family",
            )
        layer = migration.faults
        if family == "config-lag":
            if action == "start":
                seconds = _number(body, "seconds", 0, 3600)
                layer.config_lag_until = time.monotonic_ns() + int(seconds * 1e9)
            else:
                layer.config_lag_until = 0
            return JSONResponse(layer.to_json())
        side_name = body.get("side")
        if side_name not in ("old", "new"):
            raise BadInput(f"side must be 'old' or 'new', got {side_name!r}", field="side")
        side = Side(side_name)
        if family == "latency":
            if action == "start":
                layer.latency_ms[side] = _number(body, "ms", 0, 60_000)
            else:
                layer.latency_ms.pop(side, None)
        elif action == "start":
            layer.partitioned.add(side)
        else:
            layer.partitioned.discard(side)
        return JSONResponse(layer.to_json())

    async def heal(_: Request) -> Response:
        migration.faults.heal()
        return JSONResponse(migration.faults.to_json())

    # -- open endpoints --------------------------------------------------------------------------

    async def health(_: Request) -> Response:
        published = migration.coordinator.published
        return JSONResponse({"ok": True, "phase": published.phase.value, "epoch": published.epoch})

    async def metrics(_: Request) -> Response:
        migration.update_gauges()
        return Response(generate_latest(migration.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await migration.start()
        try:
            yield
        finally:
            await migration.stop()

    routes = [
        Route("/v1/upsert", client(upsert), methods=["POST"]),
        Route("/v1/delete", client(delete), methods=["POST"]),
        Route("/v1/get", client(get), methods=["POST"]),
        Route("/v1/search", client(search), methods=["POST"]),
        Route("/admin/status", admin(status), methods=["GET"]),
        Route("/admin/advance", admin(phase_step(Step.ADVANCE)), methods=["POST"]),
        Route("/admin/rollback", admin(phase_step(Step.ROLLBACK)), methods=["POST"]),
        Route("/admin/abort", admin(phase_step(Step.ABORT)), methods=["POST"]),
        Route("/admin/verify", admin(verify), methods=["POST"]),
        Route("/admin/faults", admin(faults), methods=["GET", "POST"]),
        Route("/admin/faults/heal", admin(heal), methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


# ---------------------------------------------------------------------------------------------
# Input checks: each names the field and the fix.


def _only(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadInput(
            f"unknown field(s) {unknown}; this endpoint takes {sorted(allowed)}", field=unknown[0]
        )


def _id(body: dict[str, Any]) -> str:
    if "id" not in body:
        raise BadInput("the body needs an 'id' (a non-empty string)", field="id")
    try:
        return validate_id(body["id"])
    except InvalidRequest as exc:
        raise BadInput(str(exc), field="id") from None


def _version(body: dict[str, Any], required: bool) -> int | None:
    if "version" not in body or body["version"] is None:
        if required:
            raise BadInput("the body needs a 'version' (a non-negative integer)", field="version")
        return None
    try:
        return validate_version(body["version"])
    except InvalidRequest as exc:
        raise BadInput(str(exc), field="version") from None


def _vector(body: dict[str, Any], dim: int) -> Any:
    vector = body.get("vector")
    if not isinstance(vector, list) or not all(type(x) in (int, float) for x in vector):
        raise BadInput(f"vector must be a list of {dim} numbers", field="vector")
    try:
        return validate_vector(vector, dim)
    except InvalidRequest as exc:
        raise BadInput(
            str(exc).replace("this side expects", "this service expects"), field="vector"
        ) from None


def _number(body: dict[str, Any], key: str, low: float, high: float) -> float:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise BadInput(f"{key} must be a number from {low} to {high}, got {value!r}", field=key)
    return float(value)


def _answer(outcome: Outcome) -> JSONResponse:
    if outcome.type == "ok":
        return JSONResponse(outcome.value)
    return JSONResponse(
        {"error": outcome.error or outcome.type, "outcome": outcome.type, "kind": outcome.type},
        status_code=OUTCOME_STATUS[outcome.type],
    )
