"""OpenAPI 3.0 schemas of the migration service and the cluster server, served at
`/openapi.json`. They say exactly what each endpoint accepts (types, bounds, required and
forbidden fields) and answers; the fuzz tests generate requests from them, valid and invalid,
and check every answer against them (tests/test_service_fuzz.py).
"""

from __future__ import annotations

from typing import Any

from vecmig.harness.clusters.base import (
    MAX_BUCKETS,
    MAX_ID_LENGTH,
    MAX_SCAN_LIMIT,
    MAX_VERSION,
    max_component,
)
from vecmig.harness.clusters.faults import CLUSTER_FAULT_FAMILIES

from .driver import LAYER_FAULT_FAMILIES
from .inputs import MAX_METADATA_KEYS, VersionPolicy

Schema = dict[str, Any]

ID: Schema = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_ID_LENGTH,
    "pattern": "^[^\\u0000-\\u001f]+$",
    "description": "A record id: no control characters",
}
SCALAR: Schema = {
    "nullable": True,
    "oneOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}],
}
ERROR: Schema = {
    "type": "object",
    "required": ["error", "kind"],
    "properties": {
        "error": {"type": "string"},
        "kind": {"type": "string"},
        "field": {"type": "string"},
        "outcome": {"type": "string", "enum": ["fail", "info"]},
    },
}


def vector(dim: int) -> Schema:
    limit = max_component(dim)
    number = {"type": "number", "minimum": -limit, "maximum": limit}
    return {"type": "array", "items": number, "minItems": dim, "maxItems": dim}


def body(properties: Schema, required: list[str]) -> Schema:
    return {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": properties,
                    "required": required,
                    "additionalProperties": False,
                }
            }
        },
    }


def answer(description: str, schema: Schema | None = None) -> Schema:
    out: Schema = {"description": description}
    if schema is not None:
        out["content"] = {"application/json": {"schema": schema}}
    return out


def errors(*codes: int) -> dict[str, Schema]:
    meaning = {
        400: "bad input, named in the body; nothing happened",
        401: "the token is missing or wrong",
        404: "no such endpoint",
        409: "the phase step is not allowed now (gate or transition table)",
        413: "the body is too large",
        415: "the body is not declared application/json",
        422: "well-formed but refused by policy (version source or horizon)",
        503: "failed: certainly no effect",
        504: "indeterminate: a write may still take effect",
    }
    return {str(code): answer(meaning[code], ERROR) for code in codes}


def operation(summary: str, responses: dict[str, Schema], **extra: Any) -> Schema:
    return {"summary": summary, "responses": responses, **extra}


WRITTEN: Schema = {
    "type": "object",
    "required": ["id", "version", "result"],
    "properties": {
        "id": {"type": "string"},
        "version": {"type": "integer"},
        "result": {"type": "string", "enum": ["applied", "superseded"]},
    },
}
FOUND: Schema = {
    "type": "object",
    "required": ["id", "version"],
    "properties": {"id": {"type": "string"}, "version": {"type": "integer", "nullable": True}},
}
HITS: Schema = {
    "type": "object",
    "required": ["results"],
    "properties": {"results": {"type": "array"}},
}
STEPPED: Schema = {
    "type": "object",
    "required": ["ok", "phase", "epoch", "reasons"],
    "properties": {
        "ok": {"type": "boolean"},
        "phase": {"type": "string"},
        "epoch": {"type": "integer"},
        "reasons": {"type": "array", "items": {"type": "string"}},
    },
}
ADMIN: Schema = {"security": [{"bearer": []}]}
VERSION: Schema = {"type": "integer", "minimum": 0, "maximum": MAX_VERSION}


def service_schema(dim: int, max_k: int, versions: VersionPolicy) -> Schema:
    """The service's schema, for its dimension, largest k and version policy."""
    paths = {**_client_paths(dim, max_k, versions), **_admin_paths()}
    paths["/health"] = {"get": operation("liveness", {"200": answer("alive", {"type": "object"})})}
    paths["/ready"] = {
        "get": operation(
            "readiness: both sides, the state store and the lease",
            {
                "200": answer("ready", {"type": "object"}),
                "503": answer("not ready", {"type": "object"}),
            },
        )
    }
    return _document("vecmig migration service", paths)


def _client_paths(dim: int, max_k: int, versions: VersionPolicy) -> Schema:
    given: Schema = {} if versions.source == "service" else {"version": VERSION}
    required = [] if versions.source == "service" else ["version"]
    client = errors(400, 413, 415, 503, 504)
    written = {"200": answer("acknowledged", WRITTEN), **client, **errors(422)}
    metadata = {"type": "object", "maxProperties": MAX_METADATA_KEYS}
    search = {
        "vector": vector(dim),
        "k": {"type": "integer", "minimum": 1, "maximum": max_k},
        "filter": {
            "type": "object",
            "maxProperties": MAX_METADATA_KEYS,
            "additionalProperties": SCALAR,
            "nullable": True,
        },
    }

    def post(summary: str, answers: Schema, request: Schema) -> Schema:
        return {"post": operation(summary, answers, requestBody=request)}

    return {
        "/v1/upsert": post(
            f"write a record ({versions.describe()})",
            written,
            body(
                {"id": ID, "vector": vector(dim), "metadata": metadata, **given},
                ["id", "vector", *required],
            ),
        ),
        "/v1/delete": post(
            "delete a record (a tombstone)", written, body({"id": ID, **given}, ["id", *required])
        ),
        "/v1/get": post(
            "read a record's version",
            {"200": answer("found (version null: not found)", FOUND), **client},
            body({"id": ID}, ["id"]),
        ),
        "/v1/search": post(
            "top-k similar records",
            {"200": answer("hits", HITS), **client},
            body(search, ["vector"]),
        ),
    }


def _admin_paths() -> Schema:
    step = operation(
        "a phase step through its gate",
        {
            "200": answer("stepped", STEPPED),
            "409": answer("the gate holds, or the step is not in the table", STEPPED),
            **errors(400, 401),
        },
        **ADMIN,
    )
    fault = body(
        {
            "action": {"type": "string", "enum": ["start", "stop"]},
            "family": {"type": "string", "enum": list(LAYER_FAULT_FAMILIES)},
            "side": {"type": "string", "enum": ["old", "new"]},
            "ms": {
                "type": "number",
                "minimum": -60_000,
                "maximum": 60_000,
                "description": "latency: 0 to 60000; clock-skew: -60000 (behind) to 60000",
            },
            "seconds": {"type": "number", "minimum": 0, "maximum": 3600},
        },
        ["action", "family"],
    )
    state = {"200": answer("the state", {"type": "object"}), **errors(401)}
    changed = {**state, **errors(400)}
    return {
        "/admin/status": {"get": operation("the migration's status", state, **ADMIN)},
        "/admin/advance": {"post": step},
        "/admin/rollback": {"post": step},
        "/admin/abort": {"post": step},
        "/admin/verify": {"post": operation("verify and repair", changed, **ADMIN)},
        "/admin/faults": {
            "get": operation("the layer's faults", state, **ADMIN),
            "post": operation(
                "start or stop a layer fault",
                {**changed, **errors(413, 415)},
                requestBody=fault,
                **ADMIN,
            ),
        },
        "/admin/faults/heal": {"post": operation("stop every layer fault", changed, **ADMIN)},
    }


def _wire(dim: int) -> tuple[Schema, Schema, Schema]:
    """A record, a tombstone and a query's fields, as the cluster server takes them."""
    record = {
        "type": "object",
        "required": ["id", "vector", "version"],
        "properties": {
            "id": ID,
            "vector": vector(dim),
            "metadata": {"type": "object", "nullable": True},
            "version": VERSION,
        },
    }
    tombstone = {
        "type": "object",
        "required": ["id", "version"],
        "properties": {"id": ID, "version": VERSION},
    }
    query = {
        "vector": vector(dim),
        "k": {"type": "integer", "minimum": 1, "maximum": 1000},
        "filter": {"type": "object", "nullable": True, "additionalProperties": SCALAR},
    }
    return record, tombstone, query


def cluster_schema(dim: int) -> Schema:
    """The cluster server's schema (the wire format of `clusters/remote.py`)."""
    record, tombstone, query = _wire(dim)
    fenced = {"type": "boolean"}
    ok = {"200": answer("done", {"type": "object"})}
    side = {**ok, **errors(400, 401, 413, 415, 503, 504)}
    auth = ADMIN
    fault = body(
        {
            "family": {"type": "string", "enum": [*CLUSTER_FAULT_FAMILIES, "latency"]},
            "params": {"type": "object", "nullable": True},
        },
        ["family"],
    )

    def post(summary: str, request: Schema) -> Schema:
        return {"post": operation(summary, side, requestBody=request, **auth)}

    def get(summary: str) -> Schema:
        return {"get": operation(summary, {**ok, **errors(401, 503, 504)}, **auth)}

    paths = {
        "/v1/upsert": post(
            "write records",
            body({"records": {"type": "array", "items": record}, "fenced": fenced}, ["records"]),
        ),
        "/v1/delete": post(
            "write tombstones",
            body(
                {"tombstones": {"type": "array", "items": tombstone}, "fenced": fenced},
                ["tombstones"],
            ),
        ),
        "/v1/get": post("read ids", body({"ids": {"type": "array", "items": ID}}, ["ids"])),
        "/v1/search": post("approximate top-k", body(query, ["vector", "k"])),
        "/v1/exact": post("exact top-k", body(query, ["vector", "k"])),
        "/v1/scan": post(
            "a page of a scan",
            body(
                {
                    "cursor": {**ID, "nullable": True},
                    "limit": {"type": "integer", "minimum": 1, "maximum": MAX_SCAN_LIMIT},
                },
                ["limit"],
            ),
        ),
        "/v1/count": get("live records and tombstones"),
        "/v1/checksums": post(
            "per-bucket checksums",
            body(
                {"buckets": {"type": "integer", "minimum": 1, "maximum": MAX_BUCKETS}}, ["buckets"]
            ),
        ),
        "/v1/health": {"get": operation("health", ok)},
        "/v1/info": get("dimension, metric, nodes, fault families"),
        "/v1/live_versions": get("every live id and version (the oracle)"),
        "/v1/marker": {
            **get("the migration's note on this side"),
            **post("set the migration's note", body({"marker": {"type": "object"}}, ["marker"])),
        },
        "/faults": get("the faults on"),
        "/faults/start": post("start a fault", fault),
        "/faults/stop": post("stop a fault", fault),
        "/faults/heal": {"post": operation("stop every fault", side, **auth)},
    }
    return _document("vecmig fake cluster server", paths)


def _document(title: str, paths: Schema) -> Schema:
    return {
        "openapi": "3.0.3",
        "info": {"title": title, "version": "1"},
        "paths": paths,
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
