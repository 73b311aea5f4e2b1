"""Liveness that load cannot fool (issue 15 point 2), two real UdpPeers on loopback, each in its own
thread and reactor (two bridges). A floods B with big datagrams; B's bus is slow (a fixed CPU cost per
frame written, as a loaded VM's is). B hears A through A's data; A hears B only through B's heartbeats,
which leave from B's timer, after B's loop pass: if one pass may read as much as waits in B's socket,
the pass lasts seconds and A marks a live B down, dropping frames as peer_down. The work of a pass per
UDP peer is bounded (udp.RX_FRAMES_MAX) so B's heartbeats keep their schedule whatever the load."""

from __future__ import annotations

import multiprocessing
import socket
import time

from bridge.codec import native
from bridge.codec import socketcan as sc
from bridge.core.reactor import Reactor
from bridge.core.router import Router
from bridge.endpoints.liveness import PeerLimits, silence_limit
from bridge.endpoints.udp import UdpPeer
from bridge.protocols import native as wire

HELLO = native.Hello(version=native.VERSION, capabilities=native.CAP_FD, heartbeat_ms=500, channels=("vcan0",))
MTU = 65507  # the largest mtu= a user may set: ~2,300 classic frames per datagram
POLICY = PeerLimits(timeout=2.0)  # the shortest bound: silent for 1.5 s = down
BUS_COST_S = 10e-6  # CPU per frame written to B's bus (a VM's write(2) to vcan costs about this)
FLOOD_S = 6.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlowBus:
    """B's SocketCAN endpoint stand-in on channel 0: spends BUS_COST_S of CPU per frame."""

    channel = 0

    def __init__(self):
        self.frames = 0
        self.longest_s = 0.0

    def send_frames(self, channel, frames):
        t0 = time.perf_counter()
        end = t0 + BUS_COST_S * len(frames)
        while time.perf_counter() < end:
            pass
        self.frames += len(frames)
        return len(frames)


def batch(n, start=0):
    return [(sc.pack_can(0x100 + (i & 0xFF), (start + i).to_bytes(8, "big")), 0) for i in range(n)]


def run_b(a_port, b_port, seconds, out):
    """Bridge B, in its own process (so that A's flood does not take its CPU through the GIL)."""
    rb = Reactor()
    router_b = Router(rb)
    bus = SlowBus()
    router_b.add_bus(bus)
    b = UdpPeer(rb, router_b, ("127.0.0.1", a_port), ("127.0.0.1", b_port), wire.NativeDatagram(HELLO, MTU),
                policy=POLICY)
    gaps, last = [], None
    control = b.wire.control

    def timed():
        nonlocal last
        now = time.monotonic()
        if last is not None:
            gaps.append(now - last)
        last = now
        return control()
    b.wire.control = timed
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        rb.run_once(0.05)
    out.put((bus.frames, max(gaps), b.counters.gauges["peer_transitions"]))
    b.close()
    rb.close()


def test_a_flood_does_not_starve_the_receivers_heartbeats():
    a_port, b_port = free_port(), free_port()
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=run_b, args=(a_port, b_port, FLOOD_S + 4, out), daemon=True)
    child.start()
    ra = Reactor()
    router_a = Router(ra)
    a = UdpPeer(ra, router_a, ("127.0.0.1", b_port), ("127.0.0.1", a_port), wire.NativeDatagram(HELLO, MTU),
                policy=POLICY)
    try:
        deadline = time.monotonic() + 10
        while not a.state.up and time.monotonic() < deadline:
            ra.run_once(0.02)
        assert a.state.up
        sent, end = 0, time.monotonic() + FLOOD_S
        one = batch(20000)
        while time.monotonic() < end:  # as fast as A can encode: far more than B's slow bus takes
            router_a.from_bus(None, 0, one)
            sent += len(one)
            ra.run_once(0)
        bus_frames, max_gap, b_transitions = out.get(timeout=30)
    finally:
        child.join(10)
        a.close()
        ra.close()
    assert bus_frames > 0
    print(f"A sent {sent} frames, B wrote {bus_frames} to its bus; B's longest heartbeat gap {max_gap:.2f} s")
    assert a.counters.dropped["peer_down"] == 0, (a.counters.dropped, a.counters.gauges, max_gap)
    assert a.state.transitions == 1  # up once, never down
    assert b_transitions == 1  # and B heard A all along
    assert max_gap < silence_limit(POLICY.timeout), max_gap


def test_a_peer_that_starts_first_is_heard_within_a_round_trip_of_hearing_us():
    """B starts first: its first heartbeat falls on a closed port. A starts, and its first control datagram
    makes B up; B answers at once, so A is up too within a round trip, not at B's next heartbeat (up to a
    check interval later: a cable pulled meanwhile left A never up, so never marked down; issue 15 point 4)."""
    policy = PeerLimits()  # default timeout 5 s: heartbeats every 1 s
    reactor = Reactor()
    a_port, b_port = free_port(), free_port()
    b = UdpPeer(reactor, Router(reactor), ("127.0.0.1", a_port), ("127.0.0.1", b_port),
                wire.NativeDatagram(HELLO, 1472), policy=policy)
    reactor.run_once(0)  # B's first heartbeat: nobody listens yet
    a = UdpPeer(reactor, Router(reactor), ("127.0.0.1", b_port), ("127.0.0.1", a_port),
                wire.NativeDatagram(HELLO, 1472), policy=policy)
    try:
        t0 = time.monotonic()
        while not (a.state.up and b.state.up) and time.monotonic() - t0 < 2.0:
            reactor.run_once(0.01)
        took = time.monotonic() - t0
        assert a.state.up and b.state.up
        assert took < 0.3, took  # B's next heartbeat was ~1 s away
    finally:
        a.close()
        b.close()
        reactor.close()
