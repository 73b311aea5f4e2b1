"""Frames over UDP to one unicast peer (`udp://host:port?bind=addr:port`); the protocol (native,
cannelloni) is a datagram wire from bridge.protocols.native.

Frames queued in a loop pass leave packed into as few datagrams as fit the MTU (1472 bytes
default: an Ethernet frame without fragmentation). Each datagram has a sequence number; the
receiver counts lost, duplicated and reordered datagrams per sender session; with the native
protocol it also counts the frames those carried, from the TX_COUNT in every control datagram
(bridge.codec.frameloss), as dropped "lost_in_transit", updated once per tick; and the receiver's
RX_COUNT tells the sender which frames a receiver process that was killed never accounted for
(dropped "unconfirmed_peer_restart", an upper bound: bridge.codec.frameloss.DeliveryTracker). Only datagrams from
the configured peer's IP address are accepted, from any port so NAT does not break it (others:
"unknown_sender"; authentication is the job of the optional AEAD layer, not of the address). A HELLO datagram every
HEARTBEAT_S doubles as the heartbeat; the peer is "up" while its datagrams keep arriving and "down"
after `timeout` seconds of silence (bridge/endpoints/liveness.PeerState: gauges, log line, transitions).
While a heartbeating (native) peer is down, frames for it are dropped and counted "peer_down" rather
than sent into the void: UDP never queues, so this only makes the loss visible and saves the
work. A cannelloni peer has no heartbeat (silent while its bus is idle), so it is never gated.
"""

from __future__ import annotations

import errno
import logging
import socket
import time

from bridge.endpoints.liveness import DEFAULT_LIMITS, PeerLimits, PeerState, check_interval
from bridge.errors import ProtocolError
from bridge.hw.cansock import SO_RCVBUFFORCE, SO_SNDBUFFORCE, set_buffer
from bridge.core.reactor import Reactor
from bridge.core.stats import Counters

log = logging.getLogger(__name__)

RX_BATCH_MAX = 256  # datagrams per readable event (each may hold ~46 classic frames)
# frames per readable event: a pass that takes all that waits in an 8 MiB buffer of big datagrams
# (mtu up to 65507: ~2,300 frames each) lasts seconds on a slow host, and our heartbeats, which leave
# from a timer after the pass, stop: the peer marks us down while we are flooded by it (issue 15).
# 8x socketcan.RX_BATCH_MAX; the rest is read in the next pass (level-triggered epoll).
RX_FRAMES_MAX = 4096
# A quiet or normal bus brings one datagram per readable event; looping on for more costs a recvfrom
# that only returns EAGAIN (12 us in the test VM, every datagram: docs/benchmarks.md, issue 13). So a
# readable event reads ONE datagram unless the last pass suggested more were waiting: a datagram of more
# than one frame (the peer batched: its side is busy), a pass that found more than one datagram, or
# every RX_PROBE_EVERY-th event (a backlog of one-frame datagrams is found within that many passes).
# Nothing waits longer: epoll is level-triggered, so a datagram left in the socket wakes the next pass.
RX_PROBE_EVERY = 8
SOCKET_BUFFER = 8 << 20  # SO_RCVBUF/SO_SNDBUF; bursts from a busy peer land here, not on the floor
MAX_DATAGRAM = 65535
PEER_RESTART = "unconfirmed_peer_restart"  # dropped reason: frames that died with a killed receiver (RX_COUNT)


class UdpPeer:
    """remote: (host, port) of the peer; bind: local (addr, port), default (wildcard, remote port);
    wire: a datagram wire (bridge.protocols.native), which owns the MTU. Raises OSError when the
    bind fails (port in use, bad address)."""

    def __init__(self, reactor: Reactor, router, remote, bind, wire, routing=(None, None, None), scheme="udp",
                 policy: PeerLimits = DEFAULT_LIMITS):
        self.reactor = reactor
        self.router = router
        self.name = f"{scheme}://{remote[0]}:{remote[1]}"
        self.counters = Counters()
        self.wire = wire
        infos = socket.getaddrinfo(remote[0], remote[1], type=socket.SOCK_DGRAM)
        family, _, _, _, self.remote = infos[0]
        if bind is None:
            bind = ("::" if family == socket.AF_INET6 else "0.0.0.0", remote[1])
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            set_buffer(self.sock, socket.SO_SNDBUF, SO_SNDBUFFORCE, policy.sndbuf or SOCKET_BUFFER)
            set_buffer(self.sock, socket.SO_RCVBUF, SO_RCVBUFFORCE, SOCKET_BUFFER)
            self.sock.bind(bind)
        except OSError:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        self.timeout = policy.timeout
        self.state = PeerState(self.name, self.counters, policy.timeout)
        self._gated = False  # True once we know the wire has heartbeats (first _tick)
        self._pending: list[tuple[int, list]] = []
        self._rx_batch = False  # next readable event: drain (True) or read one datagram (see RX_PROBE_EVERY)
        self._rx_singles = 0  # readable events read one datagram at a time since the last drain
        reactor.add_reader(self.sock.fileno(), self._on_readable)
        router.add_peer(self, *routing)
        self._timer = reactor.call_every(check_interval(policy.timeout), self._tick, first=0)

    # --- bus -> network -----------------------------------------------------------------
    def send_frames(self, channel: int, frames: list) -> int:
        # gate only a peer that was heard and then went silent: before its first datagram (start-up,
        # a heartbeat not yet sent) frames go out as usual; UDP costs nothing if nobody listens yet
        if self._gated and not self.state.up and self.state.transitions:
            self.counters.drop("peer_down", len(frames))
            return 0
        if len(frames) == 1 and not self._pending:  # a lone frame leaves now (see StreamPeer.send_frames)
            self._send_batch(channel, frames)
        else:
            self._pending.append((channel, frames))
        return len(frames)

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        for channel, frames in pending:
            self._send_batch(channel, frames)

    def _send_batch(self, channel: int, frames: list) -> None:
        for dgram in self.wire.encode(channel, frames):
            self._send(dgram)
        self.counters.tx_frames += len(frames)

    def _send(self, dgram: bytes) -> None:
        try:
            self.sock.sendto(dgram, self.remote)
            self.counters.tx_bytes += len(dgram)
        except (BlockingIOError, InterruptedError):
            # socket buffer full: UDP is the lossy transport by contract; count what fell
            self.counters.errors["sndbuf_full"] += 1
        except OSError as exc:  # ECONNREFUSED from an earlier ICMP, ENETUNREACH...
            self.counters.errors["send_" + errno.errorcode.get(exc.errno, "oserror").lower()] += 1

    # --- network -> bus -----------------------------------------------------------------
    def _on_readable(self) -> None:
        if self._rx_batch:
            self._read_batch()
            return
        self._rx_singles += 1
        try:
            data = self._recv_one()
        except BlockingIOError:
            return
        if data is None:
            return
        if self._on_datagram(data) > 1 or self._rx_singles >= RX_PROBE_EVERY:
            self._rx_batch = True  # the next readable event drains (bounded)

    def _read_batch(self) -> None:
        """Read datagrams until EAGAIN, at most RX_BATCH_MAX datagrams and RX_FRAMES_MAX frames."""
        frames = dgrams = 0
        try:
            for _ in range(RX_BATCH_MAX):
                if frames >= RX_FRAMES_MAX:  # bounded work per pass: timers (heartbeats) and other fds run
                    dgrams = RX_BATCH_MAX  # more may wait: stay in batch mode
                    return
                try:
                    data = self._recv_one()
                except BlockingIOError:
                    return
                dgrams += 1
                if data is not None:
                    frames += self._on_datagram(data)
        finally:
            self._rx_batch = dgrams > 1  # one or none: the datagrams come one at a time again
            self._rx_singles = 0

    def _recv_one(self) -> bytes | None:
        """One datagram from the peer's host, or None for a read that failed or came from another host
        (counted). BlockingIOError when nothing waits."""
        try:
            data, addr = self.sock.recvfrom(MAX_DATAGRAM)
        except BlockingIOError:
            raise
        except OSError as exc:  # ICMP port unreachable surfaces here as ECONNREFUSED
            self.counters.errors["recv_" + errno.errorcode.get(exc.errno, "oserror").lower()] += 1
            return None
        if addr[0] != self.remote[0]:
            self.counters.errors["unknown_sender"] += 1
            return None
        return data

    def _on_datagram(self, data: bytes) -> int:
        """Decode and route one datagram of the peer; -> the frames it carried."""
        self.counters.rx_bytes += len(data)
        try:
            verdict, batches = self.wire.decode(data)
        except ProtocolError as exc:
            self.counters.errors[exc.reason] += 1
            log.warning("%s: dropped malformed datagram (%d bytes): %s", self.name, len(data), exc)
            return 0
        if verdict != "ok":  # duplicate, or stale: far outside the window or an old session
            self.counters.errors[f"{verdict}_datagram"] += 1
            return 0
        was_up = self.state.up
        if not was_up:  # down -> up: a restarted peer makes final what died with it
            self.wire.peer_changed(True)
            self._publish_unconfirmed(self.wire.stats())
        self.state.heard(time.monotonic())  # any datagram of the peer, data or heartbeat: it is alive
        if not was_up:
            # answer at once, not at our next heartbeat: a peer that starts (or restarts) after us hears us
            # within a round trip, so both sides are up as soon as the path is (issue 15: the gateway of
            # test_udp_peer_marked_down_and_up had not heard a remote that began before it by the pull)
            self._send_control()
        n = 0
        for channel, frames in batches:
            n += len(frames)
            self.router.from_peer(self, channel, frames)
        self.counters.rx_frames += n
        return n

    # --- heartbeat --------------------------------------------------------------------------
    def _send_control(self) -> bool:
        """Send the wire's control datagram (HELLO, TX_COUNT, RX_COUNT: the heartbeat); False if it has none."""
        control = self.wire.control()
        if control:
            self._send(control)
        return control is not None

    def _tick(self) -> None:
        self._gated = self._send_control()
        up = self.state.up
        if self.state.silent(time.monotonic()):
            # datagrams waiting unread in our own socket (a long loop pass) are not the peer's silence
            self._read_batch()
        self.state.check(time.monotonic())
        if up and not self.state.up:
            # hold what the peer has not confirmed (frames queued in this pass leave at its end too)
            self.wire.peer_changed(False, sum(len(frames) for _, frames in self._pending))
        stats = self.wire.stats()
        self._publish_unconfirmed(stats)
        lost = stats.pop("lost_frames", 0)  # native only (TX_COUNT); revised down after late arrivals
        if lost or "lost_in_transit" in self.counters.dropped:  # so set, not added
            self.counters.dropped["lost_in_transit"] = lost
        self.counters.gauges.update(stats)

    def _publish_unconfirmed(self, stats: dict) -> None:
        n = stats.pop("unconfirmed_frames", 0)  # native only (RX_COUNT): total over the peer's restarts
        if n:  # so set, not added
            self.counters.dropped[PEER_RESTART] = n

    def close(self) -> None:
        self.wire.closed()  # the peer is still down: nobody else will count what it did not confirm
        self._publish_unconfirmed(self.wire.stats())
        self._timer.cancel()
        self.router.remove_peer(self)
        self.reactor.forget(self.sock.fileno())
        self.sock.close()
