"""Per-endpoint counters. Every dropped frame is counted under a reason slug."""

from __future__ import annotations

from collections import Counter


class Counters:
    """rx/tx: frames and bytes crossing this endpoint (bytes = wire bytes for peers, struct
    bytes for buses); dropped[reason]: frames lost here; errors[reason]: protocol or socket
    errors (a connection closed, a datagram rejected); gauges: current values (state, queue)."""

    __slots__ = ("rx_frames", "tx_frames", "rx_bytes", "tx_bytes", "dropped", "errors", "gauges", "latency")

    def __init__(self) -> None:
        self.rx_frames = 0
        self.tx_frames = 0
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.dropped: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.gauges: dict[str, object] = {}
        self.latency = Log2Histogram()  # peers: bus-to-peer residence time (bridge.core.router, docs/cli.md)

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
            **({"latency_us": self.latency.snapshot()} if self.latency.count else {}),
        }


HISTOGRAM_BUCKETS = 22  # log2 buckets: < 1 us, < 2 us, ... < 2**20 us (~1 s), then everything slower


class Log2Histogram:
    """Counts of durations in log2 buckets of microseconds: bucket i holds values < 2**i us
    (and >= 2**(i-1) us), the last bucket everything >= 2**(HISTOGRAM_BUCKETS-2) us. Negative
    durations (the wall clock stepped back) count in bucket 0 and in `negative`. One observe() is
    an integer division and a bit_length(): cheap enough to call once per batch."""

    __slots__ = ("counts", "count", "sum_ns", "negative")

    def __init__(self) -> None:
        self.counts = [0] * HISTOGRAM_BUCKETS
        self.count = 0
        self.sum_ns = 0
        self.negative = 0

    def observe(self, ns: int) -> None:
        if ns < 0:
            self.negative += 1
            ns = 0
        self.counts[min((ns // 1000).bit_length(), HISTOGRAM_BUCKETS - 1)] += 1
        self.count += 1
        self.sum_ns += ns

    def snapshot(self) -> dict:
        """{"le_us": upper bounds (the last is None: +Inf), "counts": per bucket (not cumulative),
        "count", "sum_us", "negative"}: JSON-ready, read by `canbridge stats` and the Prometheus exporter."""
        return {
            "le_us": [1 << i for i in range(HISTOGRAM_BUCKETS - 1)] + [None],
            "counts": list(self.counts),
            "count": self.count,
            "sum_us": self.sum_ns // 1000,
            "negative": self.negative,
        }


def quantile_us(snapshot: dict, q: float) -> int | None:
    """Upper bound in us of the bucket holding quantile q (0..1) of a Log2Histogram snapshot;
    None when empty or when it falls in the open last bucket."""
    total = snapshot["count"]
    if not total:
        return None
    rank, seen = q * total, 0
    for bound, n in zip(snapshot["le_us"], snapshot["counts"]):
        seen += n
        if seen >= rank and n:
            return bound
    return None
