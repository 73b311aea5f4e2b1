"""Frames that die with a killed receiver are counted by the sender (issue 5, docs/protocol.md 3.4): two real
UdpPeers on 127.0.0.1 with a short liveness timeout. A sends frames steadily to B; B is "killed" (its UdpPeer
and socket closed with no goodbye; A keeps sending into a closed port) and a new B (a new process: new
session) is started on the same port once A has marked it down. A's dropped["unconfirmed_peer_restart"]
must cover the frames the old B never received, and exceed them by at most the frames A sent in B's last
heartbeat interval. A black hole (a relay that drops everything both ways for a while; same B instance)
must leave A's counter at 0 while B counts the loss as lost_in_transit.
"""

import socket

import pytest

from bridge.codec import native, sealed
from bridge.core.reactor import Reactor
from bridge.core.router import Router
from bridge.endpoints.liveness import PeerLimits
from bridge.endpoints.udp import PEER_RESTART, UdpPeer
from bridge.protocols import native as wire
from tests.test_udp_frame_loss import HELLO, KEY, batch, free_port, run_until

BATCH = 5  # frames per loop pass while pumping
# ticks every 0.25 s, down after 0.75 s of silence: short, but a loaded host (a parallel test run) must
# not starve a process that long, or A marks a live B down (and hears it again: a flap the tests do not expect)
POLICY = PeerLimits(timeout=1.0)


class Pump:
    """Feeds A's router a batch per loop pass, like a busy bus."""

    def __init__(self, reactor: Reactor, router: Router):
        self.reactor, self.router, self.sent = reactor, router, 0

    def until(self, cond, timeout: float = 10.0) -> bool:
        def step():
            self.router.from_bus(None, 0, batch(self.sent, BATCH))
            self.sent += BATCH
            return cond()
        return run_until(self.reactor, step, timeout)


def spy_controls(b: UdpPeer, a: UdpPeer) -> list:
    """Record, for each control datagram B builds, (frames A had sent by then, B's RX_COUNT figure)."""
    marks = []
    control = b.wire.control

    def recorded():
        marks.append((a.wire.encoder.frames, b.wire.loss.accounted))
        return control()
    b.wire.control = recorded
    return marks


def kill_and_restart(reactor, pump, a, b, receiver, born):
    """Kill receiver b under steady traffic, restart it once A noticed, wait until A hears the new one.
    Checks the bounds of the frames A counts for it; born[b]: A's frames sent when b was created (A was
    gated then: nothing is sent to a peer marked down). -> the new receiver."""
    marks = spy_controls(b, a)
    assert pump.until(lambda: a.wire.delivery.acked is not None and a.wire.delivery.peer == b.wire.session)
    n = len(marks)
    assert pump.until(lambda: len(marks) >= n + 3)  # B sent a few more control datagrams
    before = a.counters.dropped[PEER_RESTART]
    sent_at_kill = a.wire.encoder.frames
    b_final = b.counters.rx_frames + b.wire.loss.lost  # frames B received, or counted lost itself
    b.close()  # SIGKILL: no goodbye; what is in its socket buffer dies with it
    assert pump.until(lambda: not a.state.up)  # A keeps sending into the closed port until it notices
    reactor.run_once(0)
    sent_to_b = a.wire.encoder.frames
    assert pump.until(lambda: a.counters.dropped["peer_down"] > before)  # A gates now: nothing more to B
    assert a.wire.encoder.frames == sent_to_b
    assert a.wire.delivery.acked == marks[-1][1]  # B's last RX_COUNT arrived
    # the figure held at the down transition includes the frames queued in that loop pass
    held = a.wire.delivery.held
    assert held == sent_to_b - a.wire.delivery.acked
    assert a.counters.dropped[PEER_RESTART] == before  # held, not counted yet

    new = receiver()  # the restarted process: a new session on the same port
    assert new.wire.session != b.wire.session
    assert pump.until(lambda: a.state.up)
    counted = a.counters.dropped[PEER_RESTART] - before
    never_received = sent_to_b - born[b] - b_final  # of the frames A sent while this B process existed
    last_interval = sent_at_kill - marks[-2][0]  # frames A sent since B's second-to-last control
    assert never_received > 0
    assert counted == held
    assert never_received <= counted <= never_received + last_interval, (counted, never_received, last_interval)
    # the new B does not count them as lost (it baselines), and counting goes on with it
    assert pump.until(lambda: new.counters.rx_frames > 0 and new.wire.loss.accounted is not None)
    assert new.counters.dropped["lost_in_transit"] == 0
    return new


@pytest.mark.parametrize("psk", [None, KEY], ids=["plain", "sealed"])
def test_sender_counts_frames_that_died_with_a_restarted_receiver(psk):
    """Two kills: the second receiver started mid-session (its RX_COUNT must still be in A's numbering)."""
    reactor = Reactor()
    router_a, router_b = Router(reactor), Router(reactor)  # no buses: B counts rx as no_such_channel
    a_port, b_port = free_port(), free_port()
    receivers, born = [], {}

    def receiver():
        receivers.append(UdpPeer(reactor, router_b, ("127.0.0.1", a_port), ("127.0.0.1", b_port),
                                 wire.NativeDatagram(HELLO, 1472, psk), policy=POLICY))
        born[receivers[-1]] = a.wire.encoder.frames
        return receivers[-1]

    a = UdpPeer(reactor, router_a, ("127.0.0.1", b_port), ("127.0.0.1", a_port),
                wire.NativeDatagram(HELLO, 1472, psk), policy=POLICY)
    pump = Pump(reactor, router_a)
    try:
        b = receiver()
        assert run_until(reactor, lambda: a.state.up and b.state.up)
        b = kill_and_restart(reactor, pump, a, b, receiver, born)
        first = a.counters.dropped[PEER_RESTART]
        b = kill_and_restart(reactor, pump, a, b, receiver, born)
        assert a.counters.dropped[PEER_RESTART] > first == a.wire.delivery.counted - (
            a.counters.dropped[PEER_RESTART] - first)
    finally:
        a.close()
        for b in receivers:
            if b.sock.fileno() != -1:
                b.close()
        reactor.close()
    assert a.counters.dropped[PEER_RESTART] == a.wire.delivery.counted  # A stopped with B up: nothing more


@pytest.mark.parametrize("psk", [None, KEY], ids=["plain", "sealed"])
def test_receiver_restarting_within_the_timeout_is_counted_at_its_new_session(psk):
    """B is killed and restarted at once: A never marks it down, the new session tells it restarted."""
    reactor = Reactor()
    router_a, router_b = Router(reactor), Router(reactor)
    a_port, b_port = free_port(), free_port()

    def receiver():
        return UdpPeer(reactor, router_b, ("127.0.0.1", a_port), ("127.0.0.1", b_port),
                       wire.NativeDatagram(HELLO, 1472, psk), policy=POLICY)

    a = UdpPeer(reactor, router_a, ("127.0.0.1", b_port), ("127.0.0.1", a_port),
                wire.NativeDatagram(HELLO, 1472, psk), policy=POLICY)
    b1 = receiver()
    b2 = None
    marks = spy_controls(b1, a)
    pump = Pump(reactor, router_a)
    try:
        assert run_until(reactor, lambda: a.state.up and b1.state.up)
        assert pump.until(lambda: a.wire.delivery.acked is not None)
        n = len(marks)
        assert pump.until(lambda: len(marks) >= n + 3)
        sent_at_kill = a.wire.encoder.frames
        b1_final = b1.counters.rx_frames + b1.wire.loss.lost
        b1.close()
        b2 = receiver()  # its first control datagram leaves now: A hears the new session within a pass
        transitions = a.state.transitions
        assert pump.until(lambda: a.wire.delivery.counted > 0)
        detected = a.wire.encoder.frames
        assert pump.until(lambda: a.counters.dropped[PEER_RESTART] > 0)  # published at the next tick
        # A never saw it down (only a host that starves this process for 0.75 s could make it)
        assert a.state.transitions == transitions, (dict(a.counters.errors), a.counters.gauges)
        counted = a.counters.dropped[PEER_RESTART]
        never_received = sent_at_kill - b1_final  # what sat in B1's socket buffer, at most
        upper = never_received + (sent_at_kill - marks[-2][0]) + (detected - sent_at_kill)
        assert counted == a.wire.delivery.counted
        assert never_received <= counted <= upper, (never_received, counted, upper)
        assert pump.until(lambda: b2.counters.rx_frames > 0 and b2.wire.loss.accounted is not None)
        assert b2.counters.dropped["lost_in_transit"] == 0
    finally:
        a.close()
        if b1.sock.fileno() != -1:
            b1.close()
        if b2 is not None:
            b2.close()
        reactor.close()


def test_sender_stopping_while_receiver_is_down_counts_held_frames():
    reactor = Reactor()
    router_a, router_b = Router(reactor), Router(reactor)
    a_port, b_port = free_port(), free_port()
    a = UdpPeer(reactor, router_a, ("127.0.0.1", b_port), ("127.0.0.1", a_port),
                wire.NativeDatagram(HELLO, 1472), policy=POLICY)
    b = UdpPeer(reactor, router_b, ("127.0.0.1", a_port), ("127.0.0.1", b_port),
                wire.NativeDatagram(HELLO, 1472), policy=POLICY)
    pump = Pump(reactor, router_a)
    try:
        assert run_until(reactor, lambda: a.state.up and b.state.up)
        assert pump.until(lambda: a.wire.delivery.acked is not None)
        b.close()
        assert pump.until(lambda: not a.state.up)
        held = a.wire.delivery.held
        assert held and a.counters.dropped[PEER_RESTART] == 0
    finally:
        a.close()  # the bridge stops while B is down: nobody else will count them
        if b.sock.fileno() != -1:
            b.close()
        reactor.close()
    assert a.counters.dropped[PEER_RESTART] == held


class BlackHole:
    """A relay in both directions (A -> B via one socket, B -> A via another) that drops everything while
    `closed`. Counts the FRAME records of the A -> B datagrams it dropped."""

    def __init__(self, reactor: Reactor, to_b, to_a, psk: bytes | None):
        self.closed, self.dropped_frames, self.psk = False, 0, psk
        self.ab = self._socket(reactor, to_b, count=True)
        self.ba = self._socket(reactor, to_a, count=False)
        self.socks = [self.ab, self.ba]

    def _socket(self, reactor, dest, count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        reactor.add_reader(sock.fileno(), lambda: self._relay(sock, dest, count))
        return sock

    def _frames_in(self, dgram: bytes) -> int:
        plain = sealed.Opener(self.psk).open(dgram) if self.psk else dgram  # fresh window: never a replay
        _, _, events = native.decode_datagram(plain)
        return sum(len(e.frames) for e in events if isinstance(e, native.Frames))

    def _relay(self, sock, dest, count) -> None:
        while True:
            try:
                dgram = sock.recv(65535)
            except BlockingIOError:
                return
            if self.closed:
                if count:
                    self.dropped_frames += self._frames_in(dgram)
                continue
            sock.sendto(dgram, dest)


@pytest.mark.parametrize("psk", [None, KEY], ids=["plain", "sealed"])
def test_black_hole_is_counted_by_the_receiver_not_the_sender(psk):
    reactor = Reactor()
    router_a, router_b = Router(reactor), Router(reactor)
    a_port, b_port = free_port(), free_port()
    hole = BlackHole(reactor, ("127.0.0.1", b_port), ("127.0.0.1", a_port), psk)
    a = UdpPeer(reactor, router_a, ("127.0.0.1", hole.ab.getsockname()[1]), ("127.0.0.1", a_port),
                wire.NativeDatagram(HELLO, 1472, psk), policy=POLICY)
    b = UdpPeer(reactor, router_b, ("127.0.0.1", hole.ba.getsockname()[1]), ("127.0.0.1", b_port),
                wire.NativeDatagram(HELLO, 1472, psk), policy=POLICY)
    pump = Pump(reactor, router_a)
    try:
        assert run_until(reactor, lambda: a.state.up and b.state.up)
        assert pump.until(lambda: a.wire.delivery.acked is not None)
        hole.closed = True  # the link goes dark both ways; both processes stay alive
        assert pump.until(lambda: not a.state.up and not b.state.up)
        assert a.wire.delivery.held  # A did hold frames B had not confirmed...
        assert pump.until(lambda: a.counters.dropped["peer_down"] > 0)
        dropped = hole.dropped_frames
        assert dropped > 0
        hole.closed = False
        assert pump.until(lambda: a.state.up and b.state.up)
        assert a.wire.delivery.held is None  # ...and discarded them: the same B instance came back
        # B counts what the hole swallowed from A's next TX_COUNT on
        assert pump.until(lambda: b.counters.dropped["lost_in_transit"] == hole.dropped_frames == dropped)
        assert a.counters.dropped[PEER_RESTART] == 0 and a.wire.delivery.counted == 0
    finally:
        a.close()
        b.close()
        for s in hole.socks:
            reactor.forget(s.fileno())
            s.close()
        reactor.close()
    assert a.counters.dropped[PEER_RESTART] == 0  # A stopped with B up: nothing held
