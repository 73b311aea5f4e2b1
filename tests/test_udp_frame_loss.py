"""Frames lost in transit on native UDP are counted in frames at the receiver (issue 5): two real UdpPeers
on 127.0.0.1 with a lossy relay (a plain UDP socket) between them that drops every third data datagram
and never a control one. The receiver's dropped["lost_in_transit"] must equal the frames in the dropped
datagrams, and rx_frames + lost_in_transit the frames the sender sent. Plain and sealed (psk) datagrams.
"""

import dataclasses
import os
import socket
import time

import pytest

from bridge.codec import native, sealed
from bridge.codec import socketcan as sc
from bridge.core.reactor import Reactor
from bridge.core.router import Router
from bridge.endpoints.liveness import PeerLimits
from bridge.endpoints.udp import UdpPeer
from bridge.errors import ConfigError
from bridge.protocols import native as wire
from tests import helpers

HELLO = dataclasses.replace(helpers.HELLO, heartbeat_ms=100)  # fast ticks: short tests
POLICY = PeerLimits(timeout=0.4)  # ticks (heartbeats, counter updates) every 0.1 s
KEY = bytes(range(32))


from tests.helpers import free_port, run_until  # noqa: E402,F401 (test_udp_peer_restart imports them from here)


class LossyRelay:
    """Forwards datagrams to `dest`, dropping every `every`-th one that carries frames; control
    datagrams (no FRAME record) always pass. Counts what it dropped, in frames."""

    def __init__(self, reactor: Reactor, dest, psk: bytes | None, every: int = 3):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.dest, self.every, self.psk = dest, every, psk
        self.data_datagrams = self.dropped_datagrams = self.dropped_frames = 0
        self.forwarded_frames = self.controls = 0
        self.reactor = reactor
        reactor.add_reader(self.sock.fileno(), self._on_readable)

    def close(self) -> None:
        self.reactor.forget(self.sock.fileno())
        self.sock.close()

    def _frames_in(self, dgram: bytes) -> int:
        plain = sealed.Opener(self.psk).open(dgram) if self.psk else dgram  # fresh window: never a replay
        _, _, events = native.decode_datagram(plain)
        return sum(len(e.frames) for e in events if isinstance(e, native.Frames))

    def _on_readable(self) -> None:
        while True:
            try:
                dgram = self.sock.recv(65535)
            except BlockingIOError:
                return
            except ConnectionRefusedError:  # ICMP for an earlier datagram to a receiver that was closed
                continue
            n = self._frames_in(dgram)
            if n:
                self.data_datagrams += 1
                if self.data_datagrams % self.every == 0:
                    self.dropped_datagrams += 1
                    self.dropped_frames += n
                    continue
                self.forwarded_frames += n
            else:
                self.controls += 1
            self.sock.sendto(dgram, self.dest)


def batch(start: int, n: int) -> list:
    return [(sc.pack_can(0x100 + (i & 0xFF), (start + i).to_bytes(4, "big")), time.time_ns()) for i in range(n)]


@pytest.mark.parametrize("psk", [None, KEY], ids=["plain", "sealed"])
def test_receiver_counts_frames_of_dropped_datagrams(psk):
    reactor = Reactor()
    router_a, router_b = Router(reactor), Router(reactor)  # no buses: B counts rx as no_such_channel
    a_port, b_port = free_port(), free_port()
    relay = LossyRelay(reactor, ("127.0.0.1", b_port), psk)
    # A sends through the relay; B sends straight back to A (so A sees B up and never gates)
    a = UdpPeer(reactor, router_a, ("127.0.0.1", relay.port), ("127.0.0.1", a_port),
                wire.NativeDatagram(HELLO, 1472, psk), policy=POLICY)
    b = UdpPeer(reactor, router_b, ("127.0.0.1", a_port), ("127.0.0.1", b_port),
                wire.NativeDatagram(HELLO, 1472, psk), policy=POLICY)
    try:
        assert run_until(reactor, lambda: a.state.up and b.state.up)
        sent = 0
        for i in range(60):  # 60 batches of 1..11 frames, several per loop pass, each its own datagram
            n = i % 11 + 1
            router_a.from_bus(None, 0, batch(sent, n))
            sent += n
            if i % 3 == 2:
                reactor.run_once(0)
        assert run_until(reactor, lambda: a.counters.tx_frames == sent and relay.data_datagrams == 60)
        assert relay.dropped_datagrams == 20 and relay.dropped_frames > 0
        controls = relay.controls
        # after a control datagram sent once everything was out, and B's next tick, the figures settle
        assert run_until(reactor, lambda: relay.controls >= controls + 2 and
                         b.counters.dropped["lost_in_transit"] == relay.dropped_frames and
                         b.counters.rx_frames == relay.forwarded_frames)
        assert b.counters.dropped["lost_in_transit"] == relay.dropped_frames
        assert b.counters.rx_frames + b.counters.dropped["lost_in_transit"] == sent
        assert b.counters.dropped["no_such_channel"] == b.counters.rx_frames  # delivered to the router
        assert b.counters.gauges["lost"] == 20  # the datagram view agrees: 20 datagrams missing
        assert "lost_frames" not in b.counters.gauges
        assert a.counters.dropped["lost_in_transit"] == 0  # nothing lost towards A
    finally:
        for closable in (a, b, relay, reactor):
            closable.close()


def test_sender_restart_keeps_old_loss_and_receiver_restart_sets_baseline():
    reactor = Reactor()
    router_a, router_b = Router(reactor), Router(reactor)
    a_port, b_port = free_port(), free_port()
    relay = LossyRelay(reactor, ("127.0.0.1", b_port), None, every=2)

    def sender():
        return UdpPeer(reactor, router_a, ("127.0.0.1", relay.port), ("127.0.0.1", a_port),
                       wire.NativeDatagram(HELLO, 1472), policy=POLICY)

    def receiver():
        return UdpPeer(reactor, router_b, ("127.0.0.1", a_port), ("127.0.0.1", b_port),
                       wire.NativeDatagram(HELLO, 1472), policy=POLICY)

    def send(peer, n_batches, size):
        target = peer.counters.tx_frames + n_batches * size
        for _ in range(n_batches):
            router_a.from_bus(None, 0, batch(0, size))
            reactor.run_once(0)
        return run_until(reactor, lambda: peer.counters.tx_frames == target)

    def settled(peer, lost):
        controls = relay.controls
        return run_until(reactor, lambda: relay.controls >= controls + 2 and
                         peer.counters.dropped["lost_in_transit"] == lost)

    a, b = sender(), receiver()
    try:
        assert run_until(reactor, lambda: a.state.up and b.state.up)
        assert send(a, 4, 5)  # every second data datagram dropped: 2 x 5 frames
        assert settled(b, 10)
        a.close()  # the sender restarts: new session; the old session's loss stays counted
        a = sender()
        assert send(a, 6, 3)  # 3 x 3 more lost
        assert settled(b, 19)
        b.close()  # the receiver restarts mid-session: what A sent before is not its to count
        b = receiver()
        assert run_until(reactor, lambda: b.state.up)
        assert b.wire.loss.baselines == 1 and b.wire.loss.unaccounted == 18
        assert send(a, 2, 7)  # 7 more lost, counted from the baseline
        assert settled(b, 7)
        assert b.counters.rx_frames == 7
    finally:
        for closable in (a, b, relay, reactor):
            closable.close()


def test_old_receiver_skips_tx_count_record():
    """A version-1 reader that does not know TX_COUNT (any type it does not know) skips it: the control
    datagram of a current sender decodes to its HELLO there, and our decoder reads its TxCount."""
    enc = native.DatagramEncoder(int.from_bytes(os.urandom(4), "big"))
    enc.encode(0, batch(0, 3))
    dgram = enc.encode_control(native.encode_hello(HELLO) + native.encode_tx_count(enc.frames))
    assert native.decode_datagram(dgram)[2] == [HELLO, native.TxCount(3)]
    unknown = dgram[:-12] + bytes((0x7F,)) + dgram[-11:]  # same record with a type nobody knows
    assert native.decode_datagram(unknown)[2] == [HELLO]


def test_mtu_too_small_for_control_datagram_is_a_config_error():
    """Every heartbeat carries HELLO + TX_COUNT + RX_COUNT: an MTU they do not fit is refused up front, naming
    the minimum."""
    hello = native.Hello(channels=tuple(f"vcan{i}" for i in range(12)))  # HELLO record of 87 bytes
    wire.NativeDatagram(hello, 14 + 87 + 12 + 16)  # exactly fits
    with pytest.raises(ConfigError, match="at least 129"):
        wire.NativeDatagram(hello, 128)
    with pytest.raises(ConfigError, match="at least 149"):
        wire.NativeDatagram(hello, 148, KEY)
