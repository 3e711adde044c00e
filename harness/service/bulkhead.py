"""One side's bulkhead: its own threads, a bounded queue and a deadline for every call.

The ports are synchronous, so the service carries side calls out on threads. With one pool
for both sides, a hung side (SIGSTOPped, a dead network path) took every thread while its
calls waited for their socket timeouts, and the reads of the healthy side queued behind them:
with new stopped in DUAL_WRITE, gets of old got two answers in 8 s. Each side now has its own
pool, so a hung side slows only the calls that need it:

* a call waits at most `deadline_s` for its answer. One that never got a thread had no effect
  and ends `Unavailable`; one that was running may still take effect and ends `Timeout`;
* at most `threads + queue` calls are in flight per side; past that a call is refused at once
  (`Unavailable`: it was never sent) instead of joining a queue that cannot drain.

A thread stuck on a hung side stays taken until the port's own timeout frees it, and counts
against the side's capacity meanwhile: that is what keeps it from taking more.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from vecmig.harness.clusters.base import Side, Timeout, Unavailable

T = TypeVar("T")


class Bulkhead:
    def __init__(self, side: Side, threads: int, queue: int, deadline_s: float) -> None:
        if threads < 1 or queue < 0 or not deadline_s > 0:
            raise ValueError(
                f"a bulkhead needs threads >= 1, queue >= 0 and a deadline > 0 s, got "
                f"threads={threads!r}, queue={queue!r}, deadline_s={deadline_s!r}"
            )
        self.side = side
        self.threads = threads
        self.capacity = threads + queue
        self.deadline_s = deadline_s
        self.in_flight = 0
        """Calls submitted and not yet finished on a thread (timed-out ones included)."""
        self.refused = 0
        self.timed_out = 0
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix=f"vecmig-{side.value}")

    async def call(self, fn: Callable[..., T], *args: Any, deadline_s: float | None = None) -> T:
        """`fn(*args)` on one of this side's threads, within the deadline."""
        if self.in_flight >= self.capacity:
            self.refused += 1
            raise Unavailable(
                f"{self.side.value}: {self.in_flight} calls already in flight on this side "
                f"(bulkhead of {self.threads} threads, queue {self.capacity - self.threads} full); "
                "not sent"
            )
        loop = asyncio.get_running_loop()
        future: Future[T] = self._executor.submit(fn, *args)
        self.in_flight += 1
        future.add_done_callback(lambda _: _soon(loop, self._release))
        waiting = asyncio.wrap_future(future)
        waiting.add_done_callback(_retrieve)
        limit = self.deadline_s if deadline_s is None else deadline_s
        try:
            return await asyncio.wait_for(asyncio.shield(waiting), limit)
        except TimeoutError:
            self.timed_out += 1
            if future.cancel():
                raise Unavailable(
                    f"{self.side.value}: no thread free for {limit:g} s (the side is slow or "
                    "hung); not sent"
                ) from None
            raise Timeout(
                f"{self.side.value}: no answer within the side deadline of {limit:g} s "
                "(the call may still take effect)"
            ) from None

    def _release(self) -> None:
        self.in_flight -= 1

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def to_json(self) -> dict[str, Any]:
        return {
            "threads": self.threads,
            "capacity": self.capacity,
            "in_flight": self.in_flight,
            "deadline_s": self.deadline_s,
            "refused": self.refused,
            "timed_out": self.timed_out,
        }


def _soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    """Run `callback` on the loop's thread (counters are touched there alone); after the loop
    closed there is nothing left to count."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback)


def _retrieve(waiting: asyncio.Future[Any]) -> None:
    """Read the outcome of a call nobody waits for any more (it outlived its deadline), so
    that asyncio does not log it as never retrieved."""
    if not waiting.cancelled():
        waiting.exception()
