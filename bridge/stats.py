"""Per-endpoint counters. Every dropped frame is counted under a reason slug."""

from __future__ import annotations

from collections import Counter


class Counters:
    """rx/tx: frames and bytes crossing this endpoint (bytes = wire bytes for peers, struct
    bytes for buses); dropped[reason]: frames lost here; errors[reason]: protocol or socket
    errors (a connection closed, a datagram rejected); gauges: current values (state, queue)."""

    __slots__ = ("rx_frames", "tx_frames", "rx_bytes", "tx_bytes", "dropped", "errors", "gauges")

    def __init__(self) -> None:
        self.rx_frames = 0
        self.tx_frames = 0
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.dropped: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.gauges: dict[str, object] = {}

    def drop(self, reason: str, n: int = 1) -> None:
        if n:
            self.dropped[reason] += n

    def snapshot(self) -> dict:
        return {
            "rx_frames": self.rx_frames,
            "tx_frames": self.tx_frames,
            "rx_bytes": self.rx_bytes,
            "tx_bytes": self.tx_bytes,
            "dropped": dict(self.dropped),
            "errors": dict(self.errors),
            **self.gauges,
        }
