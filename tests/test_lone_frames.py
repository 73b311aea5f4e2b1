"""A lone frame (a batch of one, nothing queued before it) is written by the peer at once, inside
send_frames, instead of waiting for the end-of-pass flush; batches still wait and leave in one write,
and nothing overtakes frames already queued. TCP and UDP peers over loopback."""

import socket
import time
from types import SimpleNamespace

from bridge.codec import native
from bridge.core.reactor import Reactor
from bridge.core.router import Router
from bridge.core.stats import Counters
from bridge.endpoints.liveness import DEFAULT_LIMITS
from bridge.endpoints.udp import UdpPeer
from bridge.protocols import native as wire
from tests.test_deadpeer import HELLO, RawClient, _server, counter_of, fd_batch, run_until

BUS = SimpleNamespace(counters=Counters())  # what Router.from_bus needs of the bus a batch came from


def _arrived(client, n, timeout=5.0):
    deadline = time.monotonic() + timeout
    while len(client.frames) < n and time.monotonic() < deadline:
        client.read()
        time.sleep(0.005)
    return [counter_of(raw) for raw, _ts in client.frames]


def test_tcp_lone_frame_leaves_at_once_batches_at_the_flush_in_order():
    reactor = Reactor()
    router = Router(reactor)
    server = _server(reactor, router, DEFAULT_LIMITS)
    client = RawClient(server.address[1])
    assert run_until(reactor, lambda: server.clients and server.clients[0].wire.describe_peer())
    peer = server.clients[0]
    router.from_bus(BUS, 0, fd_batch(0, 1))
    assert _arrived(client, 1) == [0]  # no loop pass ran: written inside send_frames
    router.from_bus(BUS, 0, fd_batch(1, 3))  # a batch: queued for the end-of-pass flush
    router.from_bus(BUS, 0, fd_batch(4, 1))  # a lone frame behind a queued batch: queued too, never first
    assert _arrived(client, 2, timeout=0.2) == [0] and peer.counters.tx_frames == 1
    reactor.run_once(timeout=0)
    assert _arrived(client, 5) == [0, 1, 2, 3, 4]
    assert peer.counters.tx_frames == 5
    server.close()
    reactor.close()


def _frames_in(dgram):
    _session, _seq, events = native.decode_datagram(dgram)
    return sum(len(e.frames) for e in events if isinstance(e, native.Frames))


def test_udp_lone_frame_leaves_at_once():
    reactor = Reactor()
    router = Router(reactor)
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5)
    peer = UdpPeer(reactor, router, rx.getsockname(), ("127.0.0.1", 0), wire.NativeDatagram(HELLO, 1472))
    reactor.run_once(timeout=0)  # the first heartbeat (control datagram) leaves
    assert _frames_in(rx.recv(2048)) == 0
    router.from_bus(BUS, 0, fd_batch(0, 1))
    assert _frames_in(rx.recv(2048)) == 1  # no loop pass ran: sent inside send_frames
    router.from_bus(BUS, 0, fd_batch(1, 2))
    rx.setblocking(False)
    try:
        early = rx.recv(2048)
    except BlockingIOError:
        early = None
    assert early is None  # a batch waits for the end-of-pass flush
    reactor.run_once(timeout=0)
    rx.settimeout(5)
    assert _frames_in(rx.recv(2048)) == 2 and peer.counters.tx_frames == 3
    peer.close()
    rx.close()
    reactor.close()
