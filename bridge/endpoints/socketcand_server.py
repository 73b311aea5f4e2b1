"""socketcand server (`socketcand://[addr]:port`, default port 29536): python-can's `socketcand`
interface, SavvyCAN and Kayak connect to canbridge as they would to socketcand.

Each client is a router peer bound to the bus it opened (`< open vcan0 >`); frames of other buses
are not sent to it. The protocol state (RAW/BCM/CONTROL modes, cyclic jobs, subscriptions) lives
in the sans-IO bridge.codec.socketcand.ServerSession; this module does the I/O and the timers.
Times given to the session are wall-clock ns (the same clock as kernel RX timestamps).
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from pathlib import Path

from bridge.codec import socketcand
from bridge.endpoints.ledger import WriteLedger, ledger_horizon
from bridge.endpoints.pending import PendingFrames
from bridge.core.reactor import Reactor
from bridge.core.stats import Counters
from bridge.core.transport import StreamTransport

log = logging.getLogger(__name__)

# python-can's client needs "< ok >" alone in one recv() (its _expect_msg compares the whole read):
# frames wait this long after it (queued, not lost), once per mode change. 5 ms was not enough for
# a loaded test VM, where the client's recv() came later and got "< ok >" and frames in one read.
HOLD_AFTER_OK_S = 0.2


class SocketcandPeer:
    """One socketcand client connection. buses: {name: (channel, fd_capable)}. gate: the server's
    bridge.security.access.WriteGate; a read-only client's `< send >` and BCM frames are dropped silently (counted
    `read_only`): socketcand clients such as python-can treat an unexpected `< error >` as a bus error."""

    def __init__(self, reactor: Reactor, sock, router, name: str, buses: dict, on_closed=None, gate=None):
        self.reactor = reactor
        self.router = router
        self.name = name
        self.buses = buses
        self.on_closed = on_closed
        self.counters = Counters()
        self.channel: int | None = None
        self.session = socketcand.ServerSession(
            bus_exists=lambda bus: bus in buses, fd_allowed=lambda bus: buses.get(bus, (0, False))[1]
        )
        self._pending = PendingFrames(self.counters)
        self._hold_until = 0.0
        self._hold_timer = None
        self._bcm_timer = None
        self._ledger = WriteLedger(ledger_horizon(sock))  # frames the client never got, at close
        self.transport = StreamTransport(reactor, sock, self)
        greeting = self.session.greeting()
        self._ledger.record(len(greeting))
        self.transport.write(greeting)
        router.add_peer(self, None, None, gate)

    # --- bus -> client ------------------------------------------------------------------
    def send_frames(self, channel: int, frames: list) -> int:
        if channel != self.channel or self.transport.closed:
            return 0  # not this client's bus
        self._pending.append(channel, frames)
        return len(frames)

    def flush(self) -> None:
        if not self._pending or self.transport.closed or self.transport.paused:
            return
        wait = self._hold_until - time.monotonic()
        if wait > 0:
            if self._hold_timer is None:
                self._hold_timer = self.reactor.call_later(wait, self._end_hold)
            return
        now = time.time_ns()
        batches = self._pending.take()  # drops (and counts) the stale ones first
        count = sum(len(frames) for _ch, frames in batches)
        self.counters.tx_frames += count
        data = b"".join([self.session.encode_frames(frames, now) for _ch, frames in batches])
        self._write(data, count)
        self._schedule_bcm()  # throttled subscriptions may have set a deadline

    def _end_hold(self) -> None:
        self._hold_timer = None
        self.flush()

    def _write(self, data: bytes, frames: int = 0) -> None:
        if data:
            self.counters.tx_bytes += len(data)
            self._ledger.record(len(data), frames)
            self.transport.write(data)

    # --- client -> bus (transport protocol) ----------------------------------------------
    def data_received(self, data: bytes) -> None:
        self.counters.rx_bytes += len(data)
        self.session.receive_data(data)
        try:
            while (event := self.session.next_event()) is not socketcand.NEED_DATA:
                if event is socketcand.CLOSED:
                    return
                self._on_event(event)
        except socketcand.SocketcandProtocolError as exc:
            self.counters.errors[exc.reason] += 1
            log.warning("%s: closing client: %s", self.name, exc)
            self.close()
            return
        self._schedule_bcm()

    def _on_event(self, event) -> None:
        if isinstance(event, socketcand.Send):
            self.counters.rx_frames += 1
            self.router.from_peer(self, self.channel, [(event.raw, time.time_ns())])
        elif isinstance(event, socketcand.Reply):
            if event.flush_alone:
                self.flush()  # frames queued before the mode change go first
                self._write(event.data)
                self._hold_until = time.monotonic() + HOLD_AFTER_OK_S
            else:
                self._write(event.data)
        elif isinstance(event, socketcand.Open):
            self.channel = self.buses[event.bus][0]
            log.info("%s: opened %s", self.name, event.bus)
        elif isinstance(event, socketcand.Rejected):
            self.counters.errors[f"rejected_{event.reason}"] += 1
            log.debug("%s: rejected %r: %s", self.name, event.command, event.reason)

    def eof_received(self) -> None:
        pass

    def pause_writing(self) -> None:
        self.counters.gauges["paused"] = True

    def resume_writing(self) -> None:
        self.counters.gauges["paused"] = False
        self.flush()

    # --- BCM cyclic jobs, throttled subscriptions, statistics ---------------------------
    def _schedule_bcm(self) -> None:
        deadline = self.session.next_deadline_ns()
        if self._bcm_timer is not None:
            self._bcm_timer.cancel()
            self._bcm_timer = None
        if deadline is not None and not self.transport.closed:
            self._bcm_timer = self.reactor.call_later(max(0.0, (deadline - time.time_ns()) / 1e9), self._on_bcm)

    def _on_bcm(self) -> None:
        self._bcm_timer = None
        now = time.time_ns()
        raws = self.session.due_cyclic(now)
        if raws and self.channel is not None:
            self.router.from_peer(self, self.channel, [(raw, now) for raw in raws])
        self._write(self.session.due_output(now))
        if self.session.stats_due(now) and self.session.bus:
            self._write(socketcand.encode_stat(*_link_stats(self.session.bus)))
        self._schedule_bcm()

    def connection_lost(self, exc) -> None:
        for timer in (self._bcm_timer, self._hold_timer):
            if timer is not None:
                timer.cancel()
        self.router.remove_peer(self)
        self._pending.discard("connection_closed")
        self._ledger.close(self.transport.undelivered_bytes, self.counters, self.name)
        log.info("%s: client gone%s", self.name, f" ({exc})" if exc else "")
        if self.on_closed:
            self.on_closed(self)

    def close(self) -> None:
        self.transport.close()


def _link_stats(ifname: str) -> tuple[int, int, int, int]:
    """(rx_bytes, rx_packets, tx_bytes, tx_packets) of the interface, as socketcand reports."""
    base = Path("/sys/class/net") / ifname / "statistics"
    try:
        return tuple(int((base / f).read_text()) for f in ("rx_bytes", "rx_packets", "tx_bytes", "tx_packets"))
    except (OSError, ValueError):
        return 0, 0, 0, 0


class Beacon:
    """Announces the socketcand server every BEACON_INTERVAL_S with a UDP broadcast to
    `broadcast`:42000, as socketcand does, so python-can's detect_beacon(), SavvyCAN and Kayak find it.
    server: the listening (addr, port); a wildcard addr is replaced by the address used to reach
    `broadcast`. Raises OSError when the broadcast address cannot be used."""

    def __init__(self, reactor: Reactor, broadcast: str, server: tuple, buses: list[str]):
        self.reactor = reactor
        self.name = f"socketcand beacon -> {broadcast}:{socketcand.BEACON_PORT}"
        self.counters = Counters()
        self.target = (broadcast, socketcand.BEACON_PORT)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            self.sock.connect(self.target)  # picks the source address; sends go there
        except OSError:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        host = server[0] if server[0] not in ("0.0.0.0", "::", "") else self.sock.getsockname()[0]
        self.datagram = socketcand.encode_beacon(socket.gethostname(), host, server[1], buses)
        self._timer = reactor.call_every(socketcand.BEACON_INTERVAL_S, self._send, first=0)

    def _send(self) -> None:
        try:
            self.sock.send(self.datagram)
            self.counters.tx_bytes += len(self.datagram)
        except OSError as exc:  # ENETUNREACH while the link is down: try again next period
            self.counters.errors[errno.errorcode.get(exc.errno, "oserror").lower()] += 1

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self._timer.cancel()
        self.sock.close()
