"""Frames queued for a peer between the router handing them over and the end-of-pass flush.

Bounded in frames: while a consumer is slow (its transport paused) frames wait here un-encoded,
and past `limit` the oldest are dropped and counted under "peer_slow".
"""

from __future__ import annotations

from collections import deque

from bridge.stats import Counters

PENDING_MAX_FRAMES = 16384  # frames waiting for a slow consumer (~6 s of a bus at 2.5k frames/s)


class PendingFrames:
    """FIFO of (channel, frames) batches; `frames` counts the frames held."""

    def __init__(self, counters: Counters, limit: int = PENDING_MAX_FRAMES) -> None:
        self._batches: deque[tuple[int, list]] = deque()
        self._counters = counters
        self.limit = limit
        self.frames = 0

    def __bool__(self) -> bool:
        return bool(self._batches)

    def append(self, channel: int, frames: list) -> None:
        self._batches.append((channel, frames))
        self.frames += len(frames)
        while self.frames > self.limit:
            _channel, old = self._batches.popleft()
            self.frames -= len(old)
            self._counters.drop("peer_slow", len(old))

    def take(self) -> list[tuple[int, list]]:
        """All batches, oldest first; the queue is empty afterwards."""
        batches = list(self._batches)
        self._batches.clear()
        self.frames = 0
        return batches

    def discard(self, reason: str) -> None:
        """Drop everything held, counted under `reason`."""
        self._counters.drop(reason, self.frames)
        self.take()
