"""Where a sweep's seeds run: the one small interface a sweep needs from an engine, and the
engines behind it.

| executor | `vecmig sweep` | install |
|---|---|---|
| `InProcess` | `--jobs 1` | nothing |
| `LocalPool` | `--jobs N` (the default, N=2) | nothing (`concurrent.futures`) |
| `DaskCluster` | `--cluster tcp://scheduler:8786` | `pip install 'vecmig[sweep]'` |

An executor takes a function and a list of items, runs them where it likes, and yields each
item with its result as soon as it has it, in any order; an item it had to give up on (every
worker that tried it died) comes back as `Lost` rather than stopping the others. That is all
a sweep asks, so another engine (Ray: `ray.remote` + `ray.wait`, with `max_retries` for lost
workers) is one more class here with the same three methods, chosen by its address scheme
in `connect`. Why Dask and not Ray first: docs/sweep.md.

Items are submitted a window at a time (a few per worker), not all at once: a 100,000-seed
sweep keeps a few dozen tasks in flight, and a worker that joins mid-sweep widens the window.
"""

from __future__ import annotations

import collections
import concurrent.futures
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R")

MAX_ATTEMPTS = 3
"""How many times a local task may be in flight when its process pool breaks (a worker
killed by the OOM killer or a signal) before it is given up as `Lost`. Dask's own bound is
its scheduler's `allowed-failures` (3 by default)."""


class SweepError(Exception):
    """A sweep cannot run as asked (no engine installed, no scheduler at the address, workers
    that cannot import vecmig); the message says what to do."""


@dataclass(frozen=True)
class Lost:
    """An item the executor gave up on, and why."""

    reason: str


class SeedExecutor(Protocol):
    """The port: what a sweep needs from whatever runs its seeds."""

    description: str
    """For the progress bar and the report: `2 local processes`, `dask tcp://... (8 workers)`."""

    def imap_unordered(
        self, fn: Callable[[T], R], items: Sequence[T], name: Callable[[T], str]
    ) -> Iterator[tuple[T, R | Lost]]:
        """Run `fn` on every item; yield `(item, result)` as each finishes. `name(item)` is a
        unique name for the item (engines that key their tasks use it). `fn` turns its own
        failures into results: an exception out of it stops the sweep."""
        ...

    def close(self) -> None: ...


def connect(cluster: str | None, jobs: int) -> SeedExecutor:
    """The executor for `--cluster ADDRESS` if given, else for `--jobs N`."""
    if cluster is None:
        return InProcess() if jobs == 1 else LocalPool(jobs)
    if cluster.startswith("ray://"):
        raise SweepError(
            f"--cluster {cluster}: Ray is not wired in; vecmig sweeps run on Dask distributed "
            "(--cluster tcp://scheduler:8786). A Ray executor is one class in "
            "vecmig/sim/sweep_executors.py, see docs/sweep.md"
        )
    return DaskCluster(cluster)


# ---------------------------------------------------------------------------------------------
# On this machine.


class InProcess:
    """`--jobs 1`: one seed after another in this process (no pickling, easy to debug)."""

    description = "this process"

    def imap_unordered(
        self, fn: Callable[[T], R], items: Sequence[T], name: Callable[[T], str]
    ) -> Iterator[tuple[T, R | Lost]]:
        for item in items:
            yield item, fn(item)

    def close(self) -> None:
        pass


WORKER_CHECK_S = 1.0
"""How often a local pool waiting on its workers checks that none of them died unnoticed."""


class LocalPool:
    """`--jobs N`: a pool of N worker processes. A killed worker process breaks a
    `ProcessPoolExecutor` as a whole; the pool is then started again and the tasks that were
    in flight are submitted again (each at most `MAX_ATTEMPTS` times)."""

    def __init__(self, jobs: int) -> None:
        self.jobs = jobs
        self.description = f"{jobs} local processes"
        self.pool = concurrent.futures.ProcessPoolExecutor(max_workers=jobs)

    def imap_unordered(
        self, fn: Callable[[T], R], items: Sequence[T], name: Callable[[T], str]
    ) -> Iterator[tuple[T, R | Lost]]:
        queue = collections.deque(range(len(items)))
        attempts = [0] * len(items)
        running: dict[concurrent.futures.Future[R], int] = {}
        while queue or running:
            broken = False
            while queue and len(running) < 2 * self.jobs and not broken:
                try:
                    future = self.pool.submit(fn, items[queue[0]])
                except BrokenProcessPool:  # broke while we were away
                    broken = True
                    break
                index = queue.popleft()
                attempts[index] += 1
                running[future] = index
            if running and not broken:
                done, _ = concurrent.futures.wait(
                    running, timeout=WORKER_CHECK_S, return_when=concurrent.futures.FIRST_COMPLETED
                )
                broken = not done and self._lost_a_worker()
            for future in [f for f in running if f.done()]:
                index = running.pop(future)
                try:
                    result = future.result()
                except BrokenProcessPool:
                    broken = True
                    queue.appendleft(index)
                    continue
                yield items[index], result
            if broken:
                for index in self._restart(queue, running, attempts):
                    yield (
                        items[index],
                        Lost(
                            f"its worker process died {attempts[index]} times "
                            "(killed, out of memory)"
                        ),
                    )

    def _lost_a_worker(self) -> bool:
        """A worker process died, and the pool did not notice. A worker killed while it held
        the pool's result queue lock leaves the others blocked on that lock and the pool's
        own watcher with them, so no future ever completes or breaks (seen once in CI: the
        sweep waited 14 minutes on a SIGKILLed worker)."""
        return any(p.exitcode is not None for p in self._workers())

    def _workers(self) -> list[Any]:
        """The pool's worker processes (`multiprocessing.Process`)."""
        return list((self.pool._processes or {}).values())  # noqa: SLF001 - no public way

    def _restart(
        self,
        queue: collections.deque[int],
        running: dict[concurrent.futures.Future[Any], int],
        attempts: list[int],
    ) -> list[int]:
        """A new pool after the old one broke. Every task of a broken pool fails, bystanders
        included: they go back to the queue, except those out of attempts (returned)."""
        queue.extendleft(running.values())
        running.clear()
        stuck = self._workers()
        self.pool.shutdown(wait=False, cancel_futures=True)
        for process in stuck:  # a survivor blocked on a dead worker's lock never exits
            if process.exitcode is None:
                process.kill()
        self.pool = concurrent.futures.ProcessPoolExecutor(max_workers=self.jobs)
        given_up = [index for index in queue if attempts[index] >= MAX_ATTEMPTS]
        for index in given_up:
            queue.remove(index)
        return given_up

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------------------------------------
# On a cluster.


class DaskCluster:
    """`--cluster ADDRESS`: the seeds go to a Dask distributed scheduler, which hands them to
    its workers. A worker lost mid-task costs only that task: the scheduler runs it again on
    another worker (up to its `allowed-failures`, then the task comes back `Lost`)."""

    WINDOW_REFRESH_S = 5.0

    def __init__(self, address: str) -> None:
        try:
            import distributed
        except ImportError:
            raise SweepError(
                f"--cluster {address} needs Dask distributed: pip install 'vecmig[sweep]'"
            ) from None
        self.distributed = distributed
        try:
            self.client = distributed.Client(address, timeout="20s", set_as_default=False)
        except (OSError, ValueError) as exc:
            raise SweepError(
                f"--cluster {address}: no Dask scheduler answered ({exc}); start one with "
                "`dask scheduler` and workers with `dask worker ADDRESS --nthreads 1`"
            ) from None
        self.address = address
        self.description = f"dask {address} ({self._describe_workers()})"
        self._window = 0
        self._window_at = 0.0

    def _describe_workers(self) -> str:
        workers = self.client.scheduler_info().get("workers", {})
        threads = sum(w.get("nthreads", 1) for w in workers.values())
        return f"{len(workers)} workers, {threads} threads"

    def window(self) -> int:
        """Tasks to keep in flight: two per worker thread, looked up again every few seconds
        so that workers joining (or leaving) mid-sweep are used."""
        now = time.monotonic()
        if now - self._window_at > self.WINDOW_REFRESH_S:
            self._window = max(4, 2 * sum(self.client.nthreads().values()))
            self._window_at = now
        return self._window

    def imap_unordered(
        self, fn: Callable[[T], R], items: Sequence[T], name: Callable[[T], str]
    ) -> Iterator[tuple[T, R | Lost]]:
        distributed = self.distributed
        queue = collections.deque(items)
        flying: dict[str, T] = {}
        completed = distributed.as_completed(loop=self.client.loop)

        def submit() -> None:
            while queue and len(flying) < self.window():
                item = queue.popleft()
                key = f"vecmig_seed-{name(item)}"
                flying[key] = item
                completed.add(self.client.submit(fn, item, key=key, pure=False, retries=0))

        submit()
        for future in completed:
            item = flying.pop(future.key)
            try:
                result = future.result()
            except distributed.KilledWorker as exc:
                yield item, Lost(f"every Dask worker that ran it died ({exc})")
            except concurrent.futures.CancelledError as exc:
                raise SweepError(
                    f"the Dask scheduler at {self.address} dropped the task {future.key!r} "
                    f"({exc or 'cancelled'}): it restarted, or the connection to it was lost"
                ) from exc
            except Exception as exc:
                # `fn` turns its own failures into results, so this is the cluster's: most
                # often a scheduler or worker that cannot unpickle the task (no vecmig there).
                raise SweepError(
                    f"the cluster at {self.address} could not run {future.key!r}: "
                    f"{type(exc).__name__}: {exc}\nThe scheduler and every worker need the "
                    "same vecmig as this machine: pip install 'vecmig[sweep]'"
                ) from exc
            else:
                yield item, result
            finally:
                future.release()
            submit()

    def close(self) -> None:
        self.client.close()
