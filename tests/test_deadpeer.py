"""Dead peers, bounded queues and stale frames with the real reactor, endpoints and loopback sockets
(no vcan: frames enter through Router.from_bus; the pulled-cable tests in the VM are
tests/vcan/test_faults_peers.py)."""

import socket
import time

from bridge.codec import native
from bridge.codec import socketcan as sc
from bridge.core.reactor import Reactor
from bridge.core.router import Router
from bridge.core.transport import WRITE_BUFFER_MAX
from bridge.endpoints import pending
from bridge.endpoints.liveness import PeerLimits
from bridge.endpoints.tcp import TcpClient, TcpServer, stream_peers
from bridge.endpoints.udp import UdpPeer
from bridge.protocols import native as wire
from tests.helpers import HELLO, run_until  # noqa: F401 (other test modules import them from here too)


def fd_batch(start, n=256):
    return [(sc.pack_canfd(0x100, (start + i).to_bytes(4, "big") + bytes(60)), 0) for i in range(n)]


def counter_of(raw):
    return int.from_bytes(sc.unpack(raw)[4][:4], "big")


class RawClient:
    """A native-protocol client on a plain socket: greets, then reads only when told to."""

    def __init__(self, port, rcvbuf=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(native.STREAM_PREAMBLE + native.encode_hello(HELLO))
        self.sock.setblocking(False)
        self.decoder = native.StreamDecoder()
        self.frames = []

    def read(self):
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except BlockingIOError:
                return
            if not data:
                return
            self.decoder.receive_data(data)
            while (ev := self.decoder.next_event()) is not native.NEED_DATA:
                if isinstance(ev, native.Frames):
                    self.frames += ev.frames


def _server(reactor, router, policy):
    new_wire = lambda: wire.NativeStream(HELLO)  # noqa: E731
    return TcpServer(reactor, router, ("127.0.0.1", 0), stream_peers(reactor, router, new_wire, policy=policy))


def _stalled_and_healthy(overflow):
    reactor = Reactor()
    router = Router(reactor)
    server = _server(reactor, router, PeerLimits(overflow=overflow, sndbuf=4096, max_age=0))
    port = server.address[1]
    stalled = RawClient(port, rcvbuf=4096)  # greets, never reads
    healthy = RawClient(port)
    assert run_until(reactor, lambda: len(server.clients) == 2)
    stalled_peer = server.clients[0]
    total, peak_pending, peak_buffer = 0, 0, 0
    for _ in range(160):  # 40,960 FD frames, ~3 MB encoded: far past every bound of the stalled peer
        router.from_bus(None, 0, fd_batch(total))
        total += 256
        reactor.run_once(0)
        healthy.read()
        if not stalled_peer.closed:
            peak_pending = max(peak_pending, stalled_peer._pending.bytes)
            peak_buffer = max(peak_buffer, stalled_peer.transport.write_buffer_size)
    assert run_until(reactor, lambda: len(healthy.frames) >= total, also=healthy.read)
    return server, stalled, stalled_peer, healthy, total, peak_pending, peak_buffer


def test_stalled_client_never_delays_a_healthy_one_and_stays_bounded():
    server, stalled, peer, healthy, total, peak_pending, peak_buffer = _stalled_and_healthy("drop-oldest")
    assert [counter_of(raw) for raw, _ts in healthy.frames] == list(range(total))  # all, in order
    assert peer in server.clients and not peer.closed
    assert peer.counters.dropped["queue_full"] > 0
    assert peak_pending <= pending.PENDING_MAX_BYTES and peer._pending.frames <= pending.PENDING_MAX_FRAMES
    assert peak_buffer <= WRITE_BUFFER_MAX
    stalled.sock.close()


def test_overflow_disconnect_closes_only_the_slow_consumer():
    server, stalled, peer, healthy, total, _p, _b = _stalled_and_healthy("disconnect")
    assert [counter_of(raw) for raw, _ts in healthy.frames] == list(range(total))
    assert peer.closed and len(server.clients) == 1
    assert server.counters.errors["slow_consumer_disconnected"] == 1
    assert server.counters.dropped["slow_consumer_disconnected"] > 0
    stalled.sock.close()


def test_silent_peer_is_closed_within_the_timeout():
    reactor = Reactor()
    router = Router(reactor)
    server = _server(reactor, router, PeerLimits(timeout=2))
    client = RawClient(server.address[1])  # greets, then sends nothing (no heartbeats)
    assert run_until(reactor, lambda: len(server.clients) == 1)
    t0 = time.monotonic()
    assert run_until(reactor, lambda: not server.clients, timeout=10)
    assert time.monotonic() - t0 <= 2 + 0.5  # the bound, plus a loop pass of slack
    assert server.counters.errors["peer_timeout"] == 1
    client.sock.close()


def test_client_backlog_drops_stale_frames_and_sends_fresh_ones_after_reconnect():
    reactor = Reactor()
    router = Router(reactor)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))  # bound, not listening yet: connects are refused (an outage)
    port = listener.getsockname()[1]
    client = TcpClient(reactor, router, ("127.0.0.1", port), lambda: wire.NativeStream(HELLO),
                       policy=PeerLimits(max_age=0.3))
    router.from_bus(None, 0, fd_batch(0, 100))  # queued while disconnected...
    reactor.run_once(0)
    assert client.counters.gauges["queued_frames"] == 100
    run_until(reactor, lambda: False, timeout=0.5)  # ...and now older than max_age
    listener.listen(1)
    assert run_until(reactor, lambda: client.peer is not None, timeout=15)
    conn, _ = listener.accept()
    conn.sendall(native.STREAM_PREAMBLE + native.encode_hello(HELLO))
    router.from_bus(None, 0, fd_batch(1000, 10))  # fresh
    decoder, got = native.StreamDecoder(), []
    conn.setblocking(False)

    def read():
        try:
            decoder.receive_data(conn.recv(1 << 16))
        except BlockingIOError:
            return
        while (ev := decoder.next_event()) is not native.NEED_DATA:
            if isinstance(ev, native.Frames):
                got.extend(ev.frames)

    assert run_until(reactor, lambda: len(got) >= 10, also=read)
    assert [counter_of(raw) for raw, _ts in got] == list(range(1000, 1010))
    assert client.counters.dropped["stale"] == 100
    client.close()
    conn.close()
    listener.close()


def test_udp_peer_goes_down_and_up_and_drops_while_down():
    reactor = Reactor()
    router = Router(reactor)

    def peer(me, other):
        return UdpPeer(reactor, router, ("127.0.0.1", other), ("127.0.0.1", me), wire.NativeDatagram(HELLO, 1472),
                       policy=PeerLimits(timeout=2))

    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    a_port, b_port = probe.getsockname()[1], 0
    probe.close()
    b_probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b_probe.bind(("127.0.0.1", 0))
    b_port = b_probe.getsockname()[1]
    b_probe.close()
    a = peer(a_port, b_port)
    b = peer(b_port, a_port)
    assert run_until(reactor, lambda: a.state.up and b.state.up)
    b.close()  # the peer vanishes
    t0 = time.monotonic()
    assert run_until(reactor, lambda: not a.state.up, timeout=10)
    assert time.monotonic() - t0 <= 2 + 0.5
    router.from_bus(None, 0, fd_batch(0, 5))
    assert a.counters.dropped["peer_down"] == 5
    b = peer(b_port, a_port)  # back
    assert run_until(reactor, lambda: a.state.up)
    assert a.counters.gauges["peer_transitions"] == 3 and a.counters.gauges["peer_state"] == "up"
    a.close()
    b.close()


def test_unread_input_is_not_silence():
    """The liveness check runs after a loop pass's I/O; bytes that arrived during a long pass wait
    unread in our socket. The check reads them before calling the peer silent (TCP and UDP)."""
    limit = 1.5 + 0.2  # silence_limit(timeout=2), and a margin
    # TCP: a greeted client that says nothing for `limit`, then one HEARTBEAT we have not read yet
    reactor = Reactor()
    router = Router(reactor)
    server = _server(reactor, router, PeerLimits(timeout=2))
    client = RawClient(server.address[1])
    assert run_until(reactor, lambda: server.clients and server.clients[0].identified)
    peer = server.clients[0]
    time.sleep(limit)
    client.sock.sendall(native.encode_heartbeat(time.time_ns()))
    time.sleep(0.1)
    peer._tick()  # the timer, in a pass whose I/O ran before the heartbeat came
    assert not peer.closed and server.counters.errors["peer_timeout"] == 0
    client.sock.close()
    server.close()
    # UDP: b heard, then b's next datagram waits unread in a's socket
    rb = Reactor()  # b's own loop, which we do not run while a's check is due

    def free_port():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    a_port, b_port = free_port(), free_port()
    a = UdpPeer(reactor, router, ("127.0.0.1", b_port), ("127.0.0.1", a_port), wire.NativeDatagram(HELLO, 1472),
                policy=PeerLimits(timeout=2))
    b = UdpPeer(rb, Router(rb), ("127.0.0.1", a_port), ("127.0.0.1", b_port), wire.NativeDatagram(HELLO, 1472),
                policy=PeerLimits(timeout=2))
    rb.run_once(0)  # b's first heartbeat
    assert run_until(reactor, lambda: a.state.up)
    time.sleep(limit)
    b._send(b.wire.control())
    time.sleep(0.1)
    a._tick()
    assert a.state.up and a.counters.gauges["peer_transitions"] == 1
    a.close()
    b.close()
