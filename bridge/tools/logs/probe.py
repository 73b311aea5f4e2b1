"""Traffic probe for demos, end-to-end tests and benchmarks: replay frames into one CAN interface
with their recorded timing, record what arrives on another, and compare the two.

Timestamps on both sides are kernel RX timestamps (SO_TIMESTAMPNS) from the same kernel: the
sent side is the sender socket's own loopback copy (CAN_RAW_RECV_OWN_MSGS, which the kernel
delivers when the frame enters the bus, the moment the bridge's socket receives it too), the
received side the recorder socket on the destination bus. Latency = bus to bus.
"""

from __future__ import annotations

import errno
import socket
import struct
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from bridge.codec import socketcan as sc
from bridge.endpoints.socketcan import set_rx_filter
from bridge.hw.cansock import open_can_raw
MSG_CONFIRM = 0x800  # set on the loopback copy of a frame this socket sent
_TIMESPEC = struct.Struct("=qq")
_ANC = socket.CMSG_SPACE(16)
RECORD_BUFFER = 32 << 20  # the recorder must never be the one that drops


def open_can(ifname: str, *, recv_own: bool = False, rx_filter=None, rxq_ovfl: bool = False) -> socket.socket:
    """Non-blocking CAN_RAW socket with CAN FD frames and kernel timestamps. ifname "" = all CAN
    interfaces (candump's `any`); rx_filter: a FilterSet applied in the kernel; rxq_ovfl: also
    deliver the SO_RXQ_OVFL drop count as a control message (drain() expects it off)."""
    return open_can_raw(ifname, recv_own=recv_own, rxq_ovfl=rxq_ovfl, rcvbuf=RECORD_BUFFER,
                        setup=lambda s: set_rx_filter(s, rx_filter))


def drain(sock: socket.socket, out: list, own_only: bool = False) -> int:
    """Append (ts_ns, raw) for every frame waiting on `sock`; returns how many."""
    n = 0
    while True:
        try:
            raw, anc, flags, _ = sock.recvmsg(sc.CANFD_MTU, _ANC)
        except (BlockingIOError, InterruptedError):
            return n
        if own_only and not flags & MSG_CONFIRM:
            continue
        ts = 0
        for _lvl, _kind, data in anc:
            sec, nsec = _TIMESPEC.unpack(data)
            ts = sec * 1_000_000_000 + nsec
        out.append((ts, raw))
        n += 1


def send(sock: socket.socket, raw: bytes) -> None:
    """Send one frame, waiting out a full TX queue (ENOBUFS/EAGAIN) instead of dropping."""
    while True:
        try:
            sock.send(raw)
            return
        except (BlockingIOError, InterruptedError):
            time.sleep(0.0002)
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise
            time.sleep(0.0002)


def replay(tx: socket.socket, frames: list, speed: float = 1.0, on_wait=None) -> float:
    """Send (ts_ns, raw) frames with their recorded spacing divided by `speed` (0 = flat out).
    on_wait() runs whenever the sender is ahead of schedule, and every 512 frames (drain
    receivers there).
    Returns the wall-clock seconds the replay took."""
    start = time.monotonic()
    if not frames:
        return 0.0
    base = frames[0][0]
    for i, (ts, raw) in enumerate(frames):
        if speed > 0:
            due = start + (ts - base) / 1e9 / speed
            while (now := time.monotonic()) < due:
                if on_wait:
                    on_wait()
                time.sleep(min(due - now, 0.002))
        send(tx, raw)
        if on_wait and i & 511 == 511:  # behind schedule too: keep receive queues short
            on_wait()
    return time.monotonic() - start


def percentile(sorted_values: list, q: float):
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[i]


@dataclass
class Report:
    """Comparison of frames sent on one bus with frames received on another.

    lost: sent frames never received; duplicated: received more often than sent; unexpected:
    received but never sent (corrupted or foreign); reordered: received after a later frame of
    the same CAN ID; latencies_ns: receive minus send kernel timestamps of matched frames."""

    sent: int = 0
    received: int = 0
    lost: int = 0
    duplicated: int = 0
    unexpected: int = 0
    reordered: int = 0
    latencies_ns: list = field(default_factory=list)
    lost_by_id: Counter = field(default_factory=Counter)
    reordered_by_id: Counter = field(default_factory=Counter)

    @property
    def complete(self) -> bool:
        return self.lost == self.duplicated == self.unexpected == self.reordered == 0

    def latency_ms(self) -> dict:
        lat = sorted(self.latencies_ns)
        return {
            k: (None if v is None else v / 1e6)
            for k, v in (("p50", percentile(lat, 50)), ("p99", percentile(lat, 99)), ("max", lat[-1] if lat else None))
        }

    def summary(self) -> str:
        lat = self.latency_ms()
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        line = (
            f"sent {self.sent}, received {self.received}, lost {self.lost}, duplicated {self.duplicated}, "
            f"unexpected {self.unexpected}, reordered {self.reordered}; "
            f"latency ms p50 {fmt(lat['p50'])} p99 {fmt(lat['p99'])} max {fmt(lat['max'])}"
        )
        for title, by_id in (("lost", self.lost_by_id), ("reordered", self.reordered_by_id)):
            if by_id:
                worst = ", ".join(f"{sc.format_can_id(i)}:{n}" for i, n in by_id.most_common(8))
                line += f"\n  {title} per CAN ID (worst 8 of {len(by_id)}): {worst}"
        return line


def _key(raw: bytes) -> tuple:
    can_id, n, flags, len8_dlc, data = sc.unpack(raw)
    return can_id, n, flags, len8_dlc, data


def compare(sent: list, received: list) -> Report:
    """sent/received: lists of (ts_ns, raw) in the order they crossed each bus. Frames match on
    (can_id, len, flags, len8_dlc, data); the k-th copy received pairs with the k-th sent."""
    rep = Report(sent=len(sent), received=len(received))
    by_key: dict[tuple, list] = defaultdict(list)  # key -> [(index among its id, ts_ns)]
    per_id_count: Counter = Counter()
    for ts, raw in sent:
        key = _key(raw)
        by_key[key].append((per_id_count[key[0]], ts))
        per_id_count[key[0]] += 1
    used: Counter = Counter()
    high: dict[int, int] = {}
    for ts, raw in received:
        key = _key(raw)
        copies = by_key.get(key)
        k = used[key]
        if copies is None:
            rep.unexpected += 1
            continue
        if k >= len(copies):
            rep.duplicated += 1
            continue
        used[key] += 1
        index, sent_ts = copies[k]
        rep.latencies_ns.append(ts - sent_ts)
        if index < high.get(key[0], -1):
            rep.reordered += 1
            rep.reordered_by_id[key[0]] += 1
        else:
            high[key[0]] = index
    for key, copies in by_key.items():
        missing = len(copies) - used[key]
        if missing:
            rep.lost += missing
            rep.lost_by_id[key[0]] += missing
    return rep
