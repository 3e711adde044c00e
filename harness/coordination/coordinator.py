"""A `Coordinator` whose state lives in a config store, for the processes of a fleet.

`StoreCoordinator` answers what the core's `Controller` and `backfill_worker` ask of a
coordinator (`published`, `publish`, `waiting_for`, `can_publish`, ...) and what an instance
asks (`join`, `ack`), each as one read or one decision in the store. The `now` the core passes
is ignored: leases are judged on the store's clock (see `base`), the one clock every process
shares. An instance renews its own view of the lease from the time it read *before* it sent
the acknowledgement, so its lease never outlives the one the store granted.

When the store does not answer, reads return what was last seen (the backfill keeps copying
under the phase it knew), `waiting_for` names the store so that no gate opens blind, and
`publish` refuses. A publish whose commit may have happened before the connection broke is
settled by reading the store again: only this controller publishes, so an epoch one past the
one it decided on, with the phase its step leads to, is its own.
"""

from __future__ import annotations

import logging
import time

from vecmig.harness.core.phases import Coordinator, Phase, PhaseError, Published, Step, next_phase

from .base import ConfigStore, ConfigStoreError

log = logging.getLogger("vecmig.coordination")


class StoreCoordinator:
    def __init__(self, store: ConfigStore) -> None:
        self.store = store
        coordinator, _ = store.snapshot()
        self._seen: Published = coordinator.published
        self.lease_ns = coordinator.lease_ns
        self.bind_leases = coordinator.bind_leases
        self.unreachable_since: float | None = None
        """When (time.monotonic) the store last stopped answering; None while it answers."""

    def _answered(self) -> None:
        if self.unreachable_since is not None:
            log.warning("the config store %s answers again", self.store.url)
        self.unreachable_since = None

    def _failed(self, exc: ConfigStoreError) -> None:
        if self.unreachable_since is None:
            log.warning("the config store does not answer: %s", exc)
            self.unreachable_since = time.monotonic()

    def _snapshot(self) -> tuple[Coordinator, int] | None:
        try:
            coordinator, now = self.store.snapshot()
        except ConfigStoreError as exc:
            self._failed(exc)
            return None
        self._answered()
        self._seen = coordinator.published
        return coordinator, now

    # -- what the controller asks ------------------------------------------------------------

    @property
    def published(self) -> Published:
        """The published phase; the last one seen while the store does not answer."""
        self._snapshot()
        return self._seen

    def publish(self, step: Step, now: int, *, wait_for_acks: bool = True) -> Published:
        """`Coordinator.publish` in the store, provided the phase is still the one last seen
        here (which the caller's gate was judged on)."""
        basis = self._seen
        target = next_phase(basis.phase, step)

        def decision(coordinator: Coordinator, store_now: int) -> Published:
            if coordinator.published != basis:
                raise PhaseError(
                    f"cannot {step.value} to {target.value}: the config store moved to "
                    f"{coordinator.published.phase.value} (epoch {coordinator.published.epoch}) "
                    f"while the gate was judged on {basis.phase.value} (epoch {basis.epoch})"
                )
            return coordinator.publish(step, store_now, wait_for_acks=wait_for_acks)

        try:
            published = self.store.decide(decision, announce=True)
        except ConfigStoreError as exc:
            self._failed(exc)
            if getattr(exc, "maybe_taken", False):
                settled = self._settle(basis, target)
                if settled is not None:
                    return settled
            raise PhaseError(
                f"cannot {step.value} to {target.value}: the config store did not answer ({exc})"
            ) from None
        self._answered()
        self._seen = published
        return published

    def _settle(self, basis: Published, target: Phase, tries: int = 20) -> Published | None:
        """Whether a publish whose answer was lost took effect: read until the store answers."""
        for _ in range(tries):
            snapshot = self._snapshot()
            if snapshot is not None:
                published = snapshot[0].published
                if published.epoch == basis.epoch + 1 and published.phase is target:
                    return published
                return None
            time.sleep(0.25)
        return None

    def waiting_for(self, now: int) -> list[str]:
        snapshot = self._snapshot()
        if snapshot is None:
            return [f"(the config store {self.store.url}, which does not answer)"]
        coordinator, store_now = snapshot
        return coordinator.waiting_for(store_now)

    def can_publish(self, now: int) -> tuple[bool, str]:
        snapshot = self._snapshot()
        if snapshot is None:
            return False, f"the config store {self.store.url} does not answer"
        coordinator, store_now = snapshot
        return coordinator.can_publish(store_now)

    def live_instances(self, now: int) -> dict[str, Published]:
        snapshot = self._snapshot()
        return {} if snapshot is None else snapshot[0].live_instances(snapshot[1])

    def adjacency_violations(self, now: int) -> list[str]:
        snapshot = self._snapshot()
        return [] if snapshot is None else snapshot[0].adjacency_violations(snapshot[1])

    # -- what an instance asks (these raise ConfigStoreError: the instance decides) -----------

    def join(self, instance: str, now: int = 0) -> Published:
        published = self.store.decide(lambda c, store_now: c.join(instance, store_now))
        self._seen = published
        return published

    def ack(self, instance: str, seen: Published, now: int = 0) -> bool:
        return self.store.decide(lambda c, store_now: c.ack(instance, seen, store_now))

    def leave(self, instance: str) -> None:
        self.store.decide(lambda c, _: c.leave(instance))
