"""Where each frame write to a stream ends, so that the frames a peer never got can be counted when the
connection closes (`dropped{unacked_at_close}`): StreamTransport.undelivered_bytes says how many of the
last bytes written never reached the peer; the ledger turns that into frames.

Only writes that can still be undelivered matter: those within `horizon` bytes of the end (our userspace
write buffer limit plus the kernel send queue); older ones are forgotten. MAX_TRACKED_WRITES caps the
records (~6 MB at 1 << 16): past it the two oldest merge, which keeps every frame counted but coarsens
the over-count bound (one write) to one merged record.
"""

from __future__ import annotations

import logging
import socket
from collections import deque

from bridge.core.transport import WRITE_BUFFER_MAX

log = logging.getLogger(__name__)

MAX_TRACKED_WRITES = 1 << 16


class WriteLedger:
    """horizon: bytes; `written`: bytes recorded so far (greeting, heartbeats and other writes without
    frames included, since they move the boundary too)."""

    def __init__(self, horizon: int) -> None:
        self.horizon = horizon
        self.written = 0
        self.records: deque = deque()  # (self.written after a frame write, frames in it)

    def record(self, nbytes: int, frames: int = 0) -> None:
        """A write of `nbytes` carrying `frames` frames; call it before the write (a write that fails
        closes the transport, and is counted, inside it)."""
        written = self.written
        self.written = end = written + nbytes
        if frames:
            records = self.records
            if records and (records[0][0] <= written - self.horizon or len(records) >= MAX_TRACKED_WRITES):
                self._trim(written)
            records.append((end, frames))

    def _trim(self, written: int) -> None:
        """Forget writes ending `horizon` bytes before `written` (the total before the next write: all of
        it may fail, the rest is delivered whatever comes next); at MAX_TRACKED_WRITES merge the two oldest."""
        records = self.records
        cut = written - self.horizon
        while records and records[0][0] <= cut:
            records.popleft()
        if len(records) >= MAX_TRACKED_WRITES:
            frames_0 = records.popleft()[1]
            records[0] = (records[0][0], records[0][1] + frames_0)

    def lost(self, undelivered: int) -> int:
        """Frames of the writes whose end lies in the last `undelivered` bytes written (the transport's
        undelivered_bytes at close): a frame with any byte undelivered is lost, the peer cannot decode
        half a record. Counted per write, so this over-counts by at most the frames of the one write the
        boundary cuts (their leading records may have arrived). Not countable by a sender: frames the
        peer's kernel acknowledged but its process never read (it was killed), and for TLS the frames in
        the kernel send queue (StreamTransport._kernel_undelivered)."""
        boundary = self.written - undelivered
        lost = 0
        for end, frames in reversed(self.records):
            if end <= boundary:
                break
            lost += frames
        return lost

    def close(self, undelivered: int, counters, name: str) -> None:
        """At connection_lost: count the lost frames in counters.dropped["unacked_at_close"] (they were
        counted in tx_frames and never arrived) and forget the records."""
        if unacked := self.lost(undelivered):
            counters.drop("unacked_at_close", unacked)
            log.info("%s: %d frames (%d bytes) undelivered at close", name, unacked, undelivered)
        self.records.clear()


def ledger_horizon(sock) -> int:
    """The horizon for a stream socket: our write buffer's hard cap plus the kernel send queue, which
    holds at most SO_SNDBUF (getsockopt gives the doubled value), x2 for the skb overshoot."""
    return WRITE_BUFFER_MAX + 2 * sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
