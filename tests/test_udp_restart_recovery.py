"""Recovery after a UDP peer restart (issue 15 point 3), two real UdpPeers on loopback: A sends frames
steadily to B; B is killed (its socket closed, no goodbye) and a new B (a new process: new session) starts
on the same port after `restart` seconds. Frames must reach the new B's bus within 2x the liveness
timeout plus the restart itself, whether A marked B down meanwhile (restart > timeout) or not."""

from __future__ import annotations

import time

import pytest

from bridge.codec import socketcan as sc
from bridge.core.reactor import Reactor
from bridge.core.router import Router
from bridge.endpoints.liveness import PeerLimits
from bridge.endpoints.udp import UdpPeer
from bridge.protocols import native as wire
from tests.test_liveness_load import HELLO, free_port

POLICY = PeerLimits(timeout=1.0)
BATCH = 5  # frames per loop pass: a busy bus


class Bus:
    channel = 0

    def __init__(self):
        self.first = None  # monotonic time of the first frame written

    def send_frames(self, channel, frames):
        if self.first is None:
            self.first = time.monotonic()
        return len(frames)


@pytest.mark.parametrize("restart", [0.2, 2.5], ids=["within-timeout", "after-peer-down"])
def test_frames_flow_to_a_restarted_peer_within_twice_the_timeout(restart):
    reactor = Reactor()
    router_a = Router(reactor)
    a_port, b_port = free_port(), free_port()
    a = UdpPeer(reactor, router_a, ("127.0.0.1", b_port), ("127.0.0.1", a_port), wire.NativeDatagram(HELLO, 1472),
                policy=POLICY)
    made = []

    def receiver():
        router = Router(reactor)
        bus = Bus()
        router.add_bus(bus)
        made.append(UdpPeer(reactor, router, ("127.0.0.1", a_port), ("127.0.0.1", b_port),
                            wire.NativeDatagram(HELLO, 1472), policy=POLICY))
        return made[-1], bus

    sent = 0

    def pump_until(cond, timeout):
        nonlocal sent
        end = time.monotonic() + timeout
        while not cond() and time.monotonic() < end:
            router_a.from_bus(None, 0, [(sc.pack_can(0x100, (sent + i).to_bytes(8, "big")), 0) for i in range(BATCH)])
            sent += BATCH
            reactor.run_once(0.002)
        return cond()

    try:
        b, bus = receiver()
        assert pump_until(lambda: a.state.up and b.state.up and bus.first is not None, 10)
        b.close()  # SIGKILL
        killed = time.monotonic()
        pump_until(lambda: False, restart)
        assert a.state.up == (restart < POLICY.timeout - 0.25)  # down only after the timeout
        b, bus = receiver()
        bound = restart + 2 * POLICY.timeout
        assert pump_until(lambda: bus.first is not None, bound + 5)
        took = bus.first - killed
        print(f"restart {restart} s: frames on the new peer's bus {took:.2f} s after the kill (bound {bound:g} s)")
        assert took <= bound, took
        assert pump_until(lambda: a.state.up, 2)
    finally:
        a.close()
        for peer in made:
            if peer.sock.fileno() != -1:
                peer.close()
        reactor.close()
