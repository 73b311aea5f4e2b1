"""Frames queued for a peer between the router handing them over and the end-of-pass flush, and
frames a TCP client holds while it is disconnected.

Bounded in frames AND bytes (raw struct bytes: 16 per classic frame, 72 per FD frame): while a
consumer is slow (its transport paused) frames wait here un-encoded. Past a bound the policy
decides: "drop-oldest" (the default: the oldest batches go, counted under `full_reason`,
"queue_full" by default) or "disconnect" (append() returns False and the caller closes the slow
consumer). Frames that waited longer than `max_age` seconds (0 = no limit) are dropped at take()
and counted "stale": after an outage a bus must not get a replay of old frames.

Each batch is stamped once with the local monotonic clock when it is queued (never the frame's
ts_ns, which is the sender's clock): the cost is per batch, not per frame.
"""

from __future__ import annotations

import time
from collections import deque
from operator import itemgetter

from bridge.core.stats import Counters

PENDING_MAX_FRAMES = 16384  # frames waiting for a slow consumer (~6 s of a bus at 2.5k frames/s)
PENDING_MAX_BYTES = 1 << 20  # raw struct bytes: ~14.5k FD frames; bounds memory when frames are big
DEFAULT_MAX_AGE_S = 2.0  # a frame older than this is worth less than no frame (stale state on a bus)
DROP_OLDEST = "drop-oldest"
DISCONNECT = "disconnect"
OVERFLOW_POLICIES = (DROP_OLDEST, DISCONNECT)

_raw = itemgetter(0)


def raw_bytes(frames: list) -> int:
    """Raw struct bytes of a batch of (raw, ts_ns)."""
    return sum(map(len, map(_raw, frames)))


class PendingFrames:
    """FIFO of (channel, frames) batches; `frames` and `bytes` count what is held.

    clock: monotonic seconds (injectable for tests)."""

    def __init__(
        self,
        counters: Counters,
        limit: int = PENDING_MAX_FRAMES,
        max_bytes: int = PENDING_MAX_BYTES,
        max_age: float = DEFAULT_MAX_AGE_S,
        overflow: str = DROP_OLDEST,
        full_reason: str = "queue_full",
        clock=time.monotonic,
    ) -> None:
        if overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"overflow must be one of {', '.join(OVERFLOW_POLICIES)}, got {overflow!r}")
        self._batches: deque[tuple[float, int, list, int]] = deque()  # (queued at, channel, frames, bytes)
        self._counters = counters
        self.limit = limit
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.overflow = overflow
        self.full_reason = full_reason
        self._clock = clock
        self.frames = 0
        self.bytes = 0

    def __bool__(self) -> bool:
        return bool(self._batches)

    def append(self, channel: int, frames: list) -> bool:
        """Queue a batch. False when a bound is exceeded under the "disconnect" policy (the batch
        is held; the caller discards and closes); otherwise True, the oldest dropped if needed."""
        size = raw_bytes(frames)
        self._batches.append((self._clock(), channel, frames, size))
        self.frames += len(frames)
        self.bytes += size
        if self.frames <= self.limit and self.bytes <= self.max_bytes:
            return True
        if self.overflow == DISCONNECT:
            return False
        while self._batches and (self.frames > self.limit or self.bytes > self.max_bytes):
            self._counters.drop(self.full_reason, self._pop())
        return True

    def _pop(self) -> int:
        _t, _channel, old, size = self._batches.popleft()
        self.frames -= len(old)
        self.bytes -= size
        return len(old)

    def drop_stale(self) -> int:
        """Drop (and count "stale") the batches older than max_age; returns the frames dropped."""
        if not self.max_age or not self._batches:
            return 0
        horizon = self._clock() - self.max_age
        dropped = 0
        while self._batches and self._batches[0][0] < horizon:
            dropped += self._pop()
        self._counters.drop("stale", dropped)
        return dropped

    def take(self) -> list[tuple[int, list]]:
        """The batches still fresh, oldest first (stale ones dropped); the queue is empty afterwards."""
        self.drop_stale()
        batches = [(channel, frames) for _t, channel, frames, _n in self._batches]
        self._batches.clear()
        self.frames = self.bytes = 0
        return batches

    def move_to(self, other: PendingFrames) -> None:
        """Hand every batch, with its original stamp, to `other` (a reconnected client's connection)."""
        other._batches.extend(self._batches)
        other.frames += self.frames
        other.bytes += self.bytes
        self._batches.clear()
        self.frames = self.bytes = 0

    def discard(self, reason: str) -> None:
        """Drop everything held, counted under `reason`."""
        self._counters.drop(reason, self.frames)
        self._batches.clear()
        self.frames = self.bytes = 0

    def gauges(self) -> dict:
        return {"queued_frames": self.frames, "queued_bytes": self.bytes}


class AgeStamps:
    """Enqueue times of a FIFO kept elsewhere (the SocketCAN TX queue: a deque of raw frames), one
    stamp per appended run instead of per frame. The owner reports items leaving the head with
    pop(n) and asks expired() how many head items are older than max_age."""

    def __init__(self, clock=time.monotonic) -> None:
        self._runs: deque[list] = deque()  # [queued at, items left in this run]
        self._clock = clock

    def push(self, n: int) -> None:
        if n:
            self._runs.append([self._clock(), n])

    def pop(self, n: int) -> None:
        runs = self._runs
        while n and runs:
            head = runs[0]
            if head[1] > n:
                head[1] -= n
                return
            n -= head[1]
            runs.popleft()

    def stamp_of(self, i: int) -> float:
        """When item i (0: the head) was queued; the clock now when there is no such item."""
        for t, n in self._runs:
            if i < n:
                return t
            i -= n
        return self._clock()

    def expired(self, max_age: float) -> int:
        """Items at the head queued more than max_age seconds ago (0 when max_age is 0)."""
        if not max_age:
            return 0
        horizon = self._clock() - max_age
        count = 0
        for t, n in self._runs:
            if t >= horizon:
                break
            count += n
        return count

    def clear(self) -> None:
        self._runs.clear()
