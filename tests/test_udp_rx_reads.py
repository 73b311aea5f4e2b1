"""How many recvfrom calls the UDP receiver makes (issue 13): a readable event with one datagram reads
that datagram and stops, without a second recvfrom that would only return EAGAIN; a backlog is still
drained in bounded passes, and no datagram is lost or reordered. Real loopback sockets; the calls are
counted by a socket.socket subclass wrapped around the receiver's own fd. No timing is asserted."""

import socket
from types import SimpleNamespace

from bridge.core.reactor import Reactor
from bridge.core.router import Router
from bridge.core.stats import Counters
from bridge.endpoints import udp
from bridge.endpoints.liveness import PeerLimits
from bridge.endpoints.udp import UdpPeer
from bridge.protocols import native as wire
from tests.helpers import HELLO, free_port, run_until
from tests.test_deadpeer import counter_of, fd_batch

BUS = SimpleNamespace(counters=Counters())
POLICY = PeerLimits(timeout=60)  # liveness checks never find the peer silent during a test


class CountingSocket(socket.socket):
    """The receiver's socket, counting recvfrom calls and the EAGAINs among them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = 0
        self.eagain = 0

    def recvfrom(self, *args):
        self.calls += 1
        try:
            return super().recvfrom(*args)
        except BlockingIOError:
            self.eagain += 1
            raise


class Pair:
    """Receiver a (its reactor is run by the test) and sender b (its reactor never runs: frames leave
    b inside send_frames or b.flush())."""

    def __init__(self):
        a_port, b_port = free_port(), free_port()
        self.reactor = Reactor()
        router = Router(self.reactor)
        self.got = []
        bus = SimpleNamespace(channel=0, send_frames=lambda ch, frames: self.got.extend(frames) or len(frames))
        router.add_bus(bus)
        self.a = UdpPeer(self.reactor, router, ("127.0.0.1", b_port), ("127.0.0.1", a_port),
                         wire.NativeDatagram(HELLO, 1472), policy=POLICY)
        self.rb = Reactor()
        self.b_router = Router(self.rb)
        self.b = UdpPeer(self.rb, self.b_router, ("127.0.0.1", a_port), ("127.0.0.1", b_port),
                         wire.NativeDatagram(HELLO, 1472), policy=POLICY)
        self.reactor.run_once(0)  # a's first tick (heartbeat out) before any counting
        sock = CountingSocket(fileno=self.a.sock.detach())  # same fd, still registered with the reactor
        sock.setblocking(False)
        self.a.sock = self.sock = sock

    def send(self, start, n):
        self.b_router.from_bus(BUS, 0, fd_batch(start, n))
        self.b.flush()  # a batch leaves at b's end of pass; a lone frame already left

    def frames(self):
        return [counter_of(raw) for raw, _ts in self.got]

    def close(self):
        self.a.close()
        self.b.close()
        self.reactor.close()
        self.rb.close()


def test_one_datagram_one_readable_event_one_recvfrom():
    p = Pair()
    try:
        p.send(0, 1)
        assert run_until(p.reactor, lambda: len(p.got) == 1)
        assert p.sock.calls == 1 and p.sock.eagain == 0  # the old loop made 2: the second only said EAGAIN
        # a quiet bus: datagrams one at a time, each read by the one recvfrom of its readable event
        for i in range(1, udp.RX_PROBE_EVERY - 1):
            p.send(i, 1)
            assert run_until(p.reactor, lambda: len(p.got) == i + 1)  # noqa: B023 (called now)
        assert p.sock.calls == udp.RX_PROBE_EVERY - 1 and p.sock.eagain == 0
        assert p.frames() == list(range(udp.RX_PROBE_EVERY - 1))
        assert p.a.counters.rx_frames == udp.RX_PROBE_EVERY - 1
    finally:
        p.close()


def test_backlog_of_one_frame_datagrams_is_drained_in_order():
    """Datagrams that pile up (the loop was busy) are found within RX_PROBE_EVERY readable events, then read
    in one bounded pass; level-triggered epoll wakes every pass in between, so nothing is left behind."""
    p = Pair()
    try:
        n = 200
        for i in range(n):  # 200 one-frame datagrams before the receiver runs at all
            p.send(i, 1)
        passes = p.reactor.passes
        assert run_until(p.reactor, lambda: len(p.got) == n)
        assert p.frames() == list(range(n))
        assert p.reactor.passes - passes <= udp.RX_PROBE_EVERY + 1  # not one pass per datagram
        assert p.a.counters.errors.get("unknown_sender", 0) == 0
        # quiet again: after the drain found the socket empty, one recvfrom per datagram again
        calls = p.sock.calls
        p.send(n, 1)
        assert run_until(p.reactor, lambda: len(p.got) == n + 1)
        assert p.sock.calls - calls <= 2  # the pass that found the backlog empty may end on one EAGAIN
        calls = p.sock.calls
        p.send(n + 1, 1)
        assert run_until(p.reactor, lambda: len(p.got) == n + 2)
        assert p.sock.calls - calls == 1
    finally:
        p.close()


def test_a_batched_datagram_switches_to_draining_and_back():
    """A datagram of several frames means the peer's side is busy: the next readable event drains."""
    p = Pair()
    try:
        p.send(0, 5)  # one datagram of 5 frames: read alone, then drain mode
        assert run_until(p.reactor, lambda: len(p.got) == 5)
        assert p.sock.calls == 1
        for k in range(3):  # three datagrams wait together: one pass reads them all, then EAGAIN
            p.send(5 + 5 * k, 5)
        calls = p.sock.calls
        p.reactor.run_once(5)
        assert len(p.got) == 20 and p.sock.calls - calls == 4 and p.sock.eagain == 1
        assert p.frames() == list(range(20))
        p.send(20, 1)  # that pass found several: drain again; finds one, then single reads
        assert run_until(p.reactor, lambda: len(p.got) == 21)
        calls = p.sock.calls
        p.send(21, 1)
        assert run_until(p.reactor, lambda: len(p.got) == 22)
        assert p.sock.calls - calls == 1
    finally:
        p.close()


def test_drain_stays_bounded_by_rx_frames_max(monkeypatch):
    """The per-pass bound holds in drain mode: a pass stops at RX_FRAMES_MAX frames, the rest follows."""
    monkeypatch.setattr(udp, "RX_FRAMES_MAX", 10)
    p = Pair()
    try:
        p.send(0, 5)  # switches a to drain mode
        assert run_until(p.reactor, lambda: len(p.got) == 5)
        for k in range(6):
            p.send(5 + 5 * k, 5)
        p.reactor.run_once(5)
        assert len(p.got) == 15  # 10 frames (two datagrams) in that pass, no more
        assert run_until(p.reactor, lambda: len(p.got) == 35)
        assert p.frames() == list(range(35))
    finally:
        p.close()
