"""Running an app under uvicorn with limits, for `vecmig serve` and `vecmig cluster serve`.

Uvicorn's own settings carry what it has: the keep-alive timeout (`timeout_keep_alive`), the
concurrency limit (`limit_concurrency`: a 503 once that many connections are open), the
largest header block h11 buffers (`h11_max_incomplete_event_size`) and the graceful-shutdown
timeout. Request bodies are bounded by the apps (`--body-limit`, read in `web.read_json`).

Uvicorn has no header timeout and accepts every connection it is offered: 1,100 clients that
send their headers a byte at a time held 1,100 file descriptors of a 1,024 limit for as long
as they liked, and normal clients got connection resets. Uvicorn takes its HTTP protocol as a
class (`http=`), so the two missing limits are a subclass of its own protocol, not a server of
our own (`Guarded`):

* a connection that has not finished sending a request's headers `header_timeout_s` after it
  opened (or after its last answer) is closed;
* at `max_connections` open connections, a new one closes the connection that has waited
  longest without sending a whole request (slow clients make way for ones that talk); if every
  connection is busy with a request, the new one is closed at once. Either way the process
  keeps file descriptors in hand for its sides, its state and its logs.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("vecmig.server")


@dataclass(frozen=True, slots=True)
class ServerLimits:
    header_timeout_s: float = 10.0
    keep_alive_s: int = 5
    max_connections: int | None = None
    """None: half of the process's file-descriptor limit (after raising it to the hard one)."""
    max_header_bytes: int = 64 * 1024
    graceful_shutdown_s: int = 5

    def connection_cap(self) -> int:
        if self.max_connections is not None:
            return self.max_connections
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        return max(16, min(4096, soft // 2))


def raise_file_limit() -> int:
    """Raise the soft file-descriptor limit to the hard one (what the operator allows), and
    return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 65_536 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


# a protocol class of small methods, which mccabe counts as one function (C901)
def guarded(base: type[asyncio.Protocol], limits: ServerLimits, cap: int) -> type[Any]:  # noqa: C901
    """`base` (uvicorn's H11Protocol or HttpToolsProtocol) with a header timeout and a
    connection cap."""

    class Guarded(base):  # type: ignore[valid-type, misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._refused = False
            self._armed_for: Any = None
            self.waiting_since = 0.0
            self._header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            if len(self.server_state.connections) >= cap and not _evict(
                self.server_state.connections
            ):
                self._refused = True
                self.transport = transport
                transport.close()
                return
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if not self._refused:
                super().data_received(data)

        def connection_lost(self, exc: Exception | None) -> None:
            if self._refused:
                return
            self._disarm()
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def waiting(self) -> bool:
            """Whether no request has started since the connection opened or last answered."""
            return self.cycle is self._armed_for and not self._refused

        def _arm(self) -> None:
            self._disarm()
            self._armed_for = self.cycle
            self.waiting_since = self.loop.time()
            self._header_timer = self.loop.call_later(limits.header_timeout_s, self._expire)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expire(self) -> None:
            self._header_timer = None
            if self.waiting() and not self.transport.is_closing():
                self.transport.close()

    return Guarded


def _evict(connections: set[Any]) -> bool:
    """Close the connection that has waited longest for a request; False if none waits."""
    waiting = [c for c in connections if getattr(c, "waiting", lambda: False)()]
    if not waiting:
        return False
    oldest = min(waiting, key=lambda c: c.waiting_since)
    oldest.transport.close()
    connections.discard(oldest)
    return True


def serve(app: Any, host: str, port: int, limits: ServerLimits, http: str, loop: str) -> None:
    """Run `app` until stopped, with `limits` (see the module docstring)."""
    import uvicorn

    soft = raise_file_limit()
    cap = limits.connection_cap()
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        loop=loop,
        http=_protocol(http, limits, cap),
        timeout_keep_alive=limits.keep_alive_s,
        limit_concurrency=cap + 1,
        h11_max_incomplete_event_size=limits.max_header_bytes,
        timeout_graceful_shutdown=limits.graceful_shutdown_s,
    )
    log.info("serving on %s:%d: at most %d connections (file limit %d)", host, port, cap, soft)
    uvicorn.Server(config).run()


def _protocol(http: str, limits: ServerLimits, cap: int) -> type[Any]:
    base: type[asyncio.Protocol]
    if http in ("auto", "httptools"):
        try:
            from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

            base = HttpToolsProtocol
        except ImportError:
            if http == "httptools":
                raise
            from uvicorn.protocols.http.h11_impl import H11Protocol

            base = H11Protocol
    else:
        from uvicorn.protocols.http.h11_impl import H11Protocol

        base = H11Protocol
    return guarded(base, limits, cap)
