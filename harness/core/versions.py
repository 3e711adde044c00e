"""Versions from a hybrid logical clock, for writes whose caller supplies none.

A version is one integer: milliseconds of logical time, then a counter, then the instance's
node number, so versions from different instances never collide and still follow real time
within the clocks' skew. The physical time is an argument; the clock never reads one.
"""

from __future__ import annotations

NODE_BITS = 10
COUNTER_BITS = 12
MAX_NODE = (1 << NODE_BITS) - 1
MAX_COUNTER = (1 << COUNTER_BITS) - 1


def encode(logical_ms: int, counter: int, node: int) -> int:
    return (logical_ms << (COUNTER_BITS + NODE_BITS)) | (counter << NODE_BITS) | node


def decode(version: int) -> tuple[int, int, int]:
    node = version & MAX_NODE
    counter = (version >> NODE_BITS) & MAX_COUNTER
    return version >> (COUNTER_BITS + NODE_BITS), counter, node


class HybridLogicalClock:
    """Kulkarni et al.'s HLC, packed into an int. `now` is strictly increasing per clock."""

    def __init__(self, node: int) -> None:
        if not 0 <= node <= MAX_NODE:
            raise ValueError(f"node must be from 0 to {MAX_NODE}, got {node!r}")
        self.node = node
        self._logical = 0
        self._counter = 0

    def now(self, physical_ns: int) -> int:
        """A fresh version for a local write at physical time `physical_ns`."""
        physical_ms = physical_ns // 1_000_000
        if physical_ms > self._logical:
            self._logical, self._counter = physical_ms, 0
        else:
            self._bump()
        return encode(self._logical, self._counter, self.node)

    def observe(self, version: int, physical_ns: int) -> None:
        """Take in a version seen from elsewhere, so the next local one orders after it."""
        remote_ms, remote_counter, _ = decode(version)
        physical_ms = physical_ns // 1_000_000
        top = max(self._logical, remote_ms, physical_ms)
        if top == self._logical == remote_ms:
            self._counter = max(self._counter, remote_counter)
        elif top == remote_ms:
            self._logical, self._counter = remote_ms, remote_counter
        elif top != self._logical:
            self._logical, self._counter = top, 0
            return
        self._bump()

    def _bump(self) -> None:
        if self._counter < MAX_COUNTER:
            self._counter += 1
        else:
            self._logical, self._counter = self._logical + 1, 0
