"""HTTP plumbing shared by the migration service and the cluster server: reading a JSON body
strictly and within limits, bearer-token checks, errors as JSON that name the problem (without
echoing the input back), and an outer guard that turns any crash into a counted JSON 500.

What a body may hold, whichever parser reads it: no NaN or Infinity, no number too large for a
float, integers within 64 bits (Python refuses to convert one of 4,300 digits, and would
raise mid-request), nesting at most `MAX_DEPTH` deep (a body nested 100,000 levels deep
overflows the parser's stack), and text that is valid Unicode (a lone surrogate, `"\\ud800"`,
parses in Python but cannot be hashed, stored or written back as UTF-8).
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import Counter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from vecmig.harness.clusters.remote import json_loads

log = logging.getLogger("vecmig.http")

DEFAULT_BODY_LIMIT = 1 << 20
MAX_DEPTH = 32
MAX_INT_DIGITS = 20
INT_RANGE = (-(1 << 63), (1 << 64) - 1)
MAX_MESSAGE = 400
"""Characters of an error message sent back: messages quote inputs briefly, this is a floor."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BadInput(Exception):
    """A request the service refuses before doing anything: answered with `status` and a JSON
    body naming the problem (and the offending field, when there is one)."""

    def __init__(self, message: str, status: int = 400, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.field = field

    def response(self) -> JSONResponse:
        return error(self.message, self.status, "invalid", **_field(self.field))


def _field(field: str | None) -> dict[str, Any]:
    return {} if field is None else {"field": field[:MAX_MESSAGE]}


def error(message: str, status: int, kind: str, **extra: Any) -> JSONResponse:
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE] + f"... ({len(message)} characters)"
    return JSONResponse({"error": message, "kind": kind, **extra}, status_code=status)


# ---------------------------------------------------------------------------------------------
# Reading a body.


def _refuse_constant(token: str) -> Any:
    raise BadInput(f"the body holds {token}, which JSON does not allow; send finite numbers")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise BadInput(f"the number {text[:40]} is too large for a float; send finite numbers")
    return value


def _bounded_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise BadInput(f"the body holds an integer of {digits} digits; integers must fit 64 bits")
    return int(text)


async def read_json(request: Request, limit: int = DEFAULT_BODY_LIMIT) -> Any:
    """The request's JSON body, refused with 415 unless it is declared `application/json`
    (so that a browser page cannot post a form to the API cross-site), with 413 past `limit`
    bytes (before reading it all when Content-Length says so) and with 400 when it is not
    strict JSON."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        raise BadInput(
            f"send the body as Content-Type: application/json, not {media[:60] or 'none'!r}",
            status=415,
        )
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise BadInput(f"Content-Length {declared[:40]!r} is not a number") from None
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


async def no_body(request: Request) -> None:
    """Endpoints that take no input refuse one, rather than ignore what a caller meant to say
    (an empty body or `{}` is fine)."""
    body = await request.body()
    if body.strip() not in (b"", b"{}"):
        raise BadInput("this endpoint takes no body (send none, or {})")


def parse_json(body: bytes) -> Any:
    """Strict JSON, within the limits in this module's docstring."""
    try:
        data = json_loads(
            body,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
            parse_int=_bounded_int,
        )
    except UnicodeDecodeError:
        raise BadInput("the body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise BadInput(f"the body is not valid JSON: {exc.msg} at position {exc.pos}") from None
    except RecursionError:
        raise BadInput(f"the body nests deeper than {MAX_DEPTH} levels") from None
    _check_tree(data)
    return data


def _check_tree(data: Any) -> None:
    """Depth, integer range and text of a parsed body, walked without recursion."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    low, high = INT_RANGE
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise BadInput(f"the body nests deeper than {MAX_DEPTH} levels")
        items: Any
        if isinstance(node, dict):
            for key in node:
                _check_text(key)
            items = node.values()
        elif isinstance(node, list):
            items = node
        else:
            items = (node,)
            depth -= 1
        for item in items:
            kind = type(item)
            if kind is float or kind is bool or item is None:
                continue
            if kind is int:
                if not low <= item <= high:
                    raise BadInput("the body holds an integer beyond 64 bits")
            elif kind is str:
                _check_text(item)
            elif kind is dict or kind is list:
                stack.append((item, depth + 1))


def _check_text(text: str) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadInput(
            "the body holds a string that is not valid Unicode text (a lone surrogate such as "
            "\\ud800); send UTF-8 text"
        ) from None


def number_list(value: Any, field: str, limit: float) -> list[float]:
    """A vector as sent: a list of JSON numbers (not booleans) within +-`limit`, checked on
    the numbers themselves: after the conversion to float32 a number just past the limit can
    round back under it."""
    if not isinstance(value, list) or not all(type(x) in (int, float) for x in value):
        raise BadInput(f"{field} must be a list of numbers", field=field)
    if value and max(abs(x) for x in value) > limit:
        raise BadInput(
            f"{field} has a component beyond +-{limit:.4g}, where distances overflow float32",
            field=field,
        )
    return value


def json_object(data: Any, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise BadInput(f"{what} must be a JSON object, got {type(data).__name__}")
    return data


# ---------------------------------------------------------------------------------------------
# Bearer tokens.


def bearer_ok(request: Request, token: str) -> bool:
    """Whether the request carries `Authorization: Bearer TOKEN` (compared in constant time)."""
    auth = request.headers.get("authorization", "")
    scheme, _, given = auth.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


def unauthorized(what: str, token: str) -> JSONResponse:
    message = f"{what} need {token}: send 'Authorization: Bearer TOKEN'"
    return error(message, 401, "unauthorized")


# ---------------------------------------------------------------------------------------------
# The outer guard.


class HttpGuard:
    """Outermost ASGI middleware: counts every answer by route and status code, and turns an
    exception that escaped a handler into a JSON 500 (logged with its traceback) instead of a
    dropped connection or a traceback page. Handlers refuse bad input themselves; a 500 here
    is a bug, and `responses` shows it."""

    def __init__(self, app: ASGIApp, responses: Counter | None = None) -> None:
        self.app = app
        self.responses = responses

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception:
            log.exception("%s %s crashed", scope.get("method"), scope.get("path", "")[:200])
            if status:
                raise  # the answer had started: nothing sane can follow it
            status = 500
            crash = error("the server failed on this request (logged)", 500, "internal")
            await crash(scope, receive, send)
        finally:
            if self.responses is not None and status:
                self.responses.labels(_route_of(scope), str(status)).inc()


def _route_of(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"


Handler = Callable[[Request], Awaitable[Response]]
