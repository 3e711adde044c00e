"""HTTP plumbing shared by the migration service and the cluster server: reading a JSON body
within a size limit (refusing the NaN and Infinity tokens Python's json would accept), and
errors as JSON that name the problem.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from vecmig.harness.clusters.remote import json_loads

DEFAULT_BODY_LIMIT = 1 << 20


class BadInput(Exception):
    """A request the service refuses before doing anything: answered with `status` and a JSON
    body naming the problem (and the offending field, when there is one)."""

    def __init__(self, message: str, status: int = 400, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.field = field

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"error": self.message, "kind": "invalid"}
        if self.field is not None:
            body["field"] = self.field
        return JSONResponse(body, status_code=self.status)


def _refuse_constant(token: str) -> Any:
    raise BadInput(f"the body holds {token}, which JSON does not allow; send finite numbers")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise BadInput(f"the number {text[:40]} is too large for a float; send finite numbers")
    return value


async def read_json(request: Request, limit: int = DEFAULT_BODY_LIMIT) -> Any:
    """The request's JSON body, refused with 413 past `limit` bytes (before reading it all
    when Content-Length says so) and with 400 when it is not strict JSON."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise BadInput(f"Content-Length {declared!r} is not a number") from None
        if size > limit:
            raise BadInput(f"body of {size} bytes exceeds the limit of {limit} bytes", status=413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BadInput(f"body exceeds the limit of {limit} bytes", status=413)
    if not body:
        raise BadInput("the request needs a JSON body")
    return parse_json(bytes(body))


def parse_json(body: bytes) -> Any:
    """Strict JSON: NaN, Infinity and numbers too large for a float are refused."""
    try:
        return json_loads(body, parse_constant=_refuse_constant, parse_float=_finite_float)
    except UnicodeDecodeError:
        raise BadInput("the body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise BadInput(f"the body is not valid JSON: {exc.msg} at position {exc.pos}") from None


def json_object(data: Any, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise BadInput(f"{what} must be a JSON object, got {type(data).__name__}")
    return data


def error(message: str, status: int, kind: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, "kind": kind, **extra}, status_code=status)
