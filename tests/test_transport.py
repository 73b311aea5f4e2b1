"""StreamTransport on socketpairs: partial sends, watermarks, EOF and close."""

import socket

from bridge.core import transport as tr
from bridge.core.reactor import EVENT_READ, Reactor


class Proto:
    def __init__(self):
        self.data = bytearray()
        self.events = []

    def data_received(self, data):
        self.data += data

    def eof_received(self):
        self.events.append("eof")

    def connection_lost(self, exc):
        self.events.append(("lost", exc))

    def pause_writing(self):
        self.events.append("pause")

    def resume_writing(self):
        self.events.append("resume")


def _pair(reactor, bufsize=4096):
    a, b = socket.socketpair()
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, bufsize)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, bufsize)
    proto = Proto()
    return tr.StreamTransport(reactor, a, proto), proto, b


def test_large_write_is_buffered_then_drained_in_order():
    r = Reactor()
    t, proto, peer = _pair(r)
    payload = bytes(range(256)) * 8192  # 2 MiB, far above the socket buffer
    t.write(payload)
    assert t.write_buffer_size > 0
    assert proto.events == ["pause"]  # crossed WRITE_HIGH_WATER
    peer.setblocking(False)
    got = bytearray()
    while len(got) < len(payload):
        r.run_once(timeout=1)
        try:
            got += peer.recv(1 << 20)
        except BlockingIOError:
            pass
    assert bytes(got) == payload
    r.run_once(timeout=0.1)
    assert t.write_buffer_size == 0
    assert proto.events == ["pause", "resume"]
    # write interest was dropped once the buffer emptied
    assert r.interest(t.fd) == EVENT_READ
    t.close()
    r.close()


def test_eof_reports_and_closes():
    r = Reactor()
    t, proto, peer = _pair(r)
    peer.send(b"abc")
    peer.close()
    for _ in range(3):
        r.run_once(timeout=0.2)
    assert bytes(proto.data) == b"abc"
    assert proto.events == ["eof", ("lost", None)]
    assert t.closed
    r.close()


def test_write_after_peer_reset_closes_with_error():
    r = Reactor()
    t, proto, peer = _pair(r)
    peer.close()
    t.write(b"x" * 100000)
    t.write(b"y")
    for _ in range(3):
        r.run_once(timeout=0.1)
    assert t.closed
    assert proto.events[-1][0] == "lost"
    r.close()
