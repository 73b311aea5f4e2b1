"""Frames counted as sent but never delivered when a TCP connection closes are counted as dropped
("unacked_at_close"), on real loopback sockets: a peer reset with data in our userspace buffer and in
the kernel send queue, our own close (the kernel queue is still delivered, only userspace is lost), our
close with unread input (the kernel resets: both parts lost), a pulled cable (TCP_USER_TIMEOUT gives
up: ETIMEDOUT, in a network namespace whose lo goes down), and a write() that overflows the buffer.

Exact accounting: every write carries one frame, so the write a close boundary cuts is a frame that
cannot have been decoded (WriteLedger.lost over-counts by at most one write)."""

import dataclasses
import errno
import fcntl
import json
import re
import socket
import struct
import subprocess
import sys
import termios
import time
from types import SimpleNamespace

from bridge.codec import native
from bridge.codec import socketcan as sc
from bridge.core import transport as tr
from bridge.core.reactor import Reactor
from bridge.core.router import Router
from bridge.endpoints import ledger, socketcand_server
from bridge.endpoints.liveness import PeerLimits
from bridge.endpoints.socketcand_server import SocketcandPeer
from bridge.hw.cansock import SO_SNDBUFFORCE, set_buffer
from tests import test_deadpeer
from tests.test_deadpeer import RawClient, _server, counter_of, fd_batch, run_until
from tests.test_transport import Proto

N_WRITES = 3000  # one FD frame (84 B) each, ~250 kB: past the kernel queues, below WRITE_HIGH_WATER
POLICY = PeerLimits(sndbuf=65536)  # a small kernel queue, so that our userspace buffer fills too


def _ioctl(sock, op):
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), op, bytes(4)))[0]


def _connect(policy=POLICY):
    """A StreamPeer (server side) and a greeted RawClient with a small receive buffer."""
    reactor = Reactor()
    router = Router(reactor)
    server = _server(reactor, router, policy)
    client = RawClient(server.address[1], rcvbuf=4096)
    assert run_until(reactor, lambda: server.clients and server.clients[0].wire.describe_peer())
    return reactor, server.clients[0], client


def _send(peer, n=N_WRITES):
    for i in range(n):
        assert peer.send_frames(0, fd_batch(i, 1)) == 1
        peer.flush()
    assert peer.counters.tx_frames == n and not peer.transport.paused


def _decode(client, data):
    client.decoder.receive_data(data)
    while (ev := client.decoder.next_event()) is not native.NEED_DATA:
        if isinstance(ev, native.Frames):
            client.frames += ev.frames


def _read(client, limit=None):
    """recv until `limit` bytes, or until EOF / reset (blocking). Returns the bytes read."""
    got = 0
    client.sock.setblocking(True)
    while limit is None or got < limit:
        try:
            data = client.sock.recv(4096 if limit is None else min(4096, limit - got))
        except ConnectionResetError:
            break
        if not data:
            break
        got += len(data)
        _decode(client, data)
    return got


def _wait_acked(peer, client, read):
    """Wait until the client's kernel has acknowledged every byte it holds (a delayed ACK fires within
    200 ms): then our kernel send queue is exactly what the client's TCP never got, and nothing new
    arrives (its window is full)."""
    sock = peer.transport.sock
    assert _wait(lambda: peer.transport.bytes_out - _ioctl(sock, termios.TIOCOUTQ)
                 == read + _ioctl(client.sock, termios.FIONREAD))


def _wait(cond, timeout=10.0):
    """Poll a kernel condition without running the reactor (it would move our buffer into the kernel)."""
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.01)
    return cond()


def _assert_in_order(frames):
    assert [counter_of(raw) for raw, _ts in frames] == list(range(len(frames)))


def test_peer_reset_counts_userspace_and_kernel_queue():
    reactor, peer, client = _connect()
    _send(peer)
    read = _read(client, limit=20_000)  # the peer application reads part, then is killed
    _wait_acked(peer, client, read)
    buffered = peer.transport.write_buffer_size
    in_kernel = _ioctl(peer.transport.sock, termios.TIOCOUTQ)
    assert buffered > 0 and in_kernel > 0  # both parts are exercised
    unread = _ioctl(client.sock, termios.FIONREAD)
    _decode(client, client.sock.recv(unread, socket.MSG_PEEK))  # acked but unread: lost, not countable by us
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.sock.close()  # RST
    assert run_until(reactor, lambda: peer.closed)
    assert peer.counters.errors[errno.errorcode[errno.ECONNRESET]] == 1
    assert peer.transport.undelivered_bytes == buffered + in_kernel
    dropped = peer.counters.dropped["unacked_at_close"]
    assert dropped > 0
    _assert_in_order(client.frames)
    assert len(client.frames) + dropped == N_WRITES
    reactor.close()


def test_local_close_counts_only_the_userspace_buffer():
    reactor, peer, client = _connect()
    _send(peer)
    buffered = peer.transport.write_buffer_size
    assert buffered > 0 and _ioctl(peer.transport.sock, termios.TIOCOUTQ) > 0
    peer.close()  # the kernel still delivers its queue, then a FIN
    assert peer.transport.undelivered_bytes == buffered
    dropped = peer.counters.dropped["unacked_at_close"]
    assert dropped > 0
    _read(client)  # to EOF
    _assert_in_order(client.frames)
    assert len(client.frames) + dropped == N_WRITES
    client.sock.close()
    reactor.close()


def test_abort_counts_the_kernel_queue_too():
    """A peer we gave up on (silent, slow, malformed) is closed with a RST: its kernel queue is gone."""
    reactor, peer, client = _connect()
    _send(peer)
    _wait_acked(peer, client, 0)
    buffered = peer.transport.write_buffer_size
    queued = _ioctl(peer.transport.sock, termios.TIOCOUTQ)
    assert buffered > 0 and queued > 0
    unread = _ioctl(client.sock, termios.FIONREAD)
    _decode(client, client.sock.recv(unread, socket.MSG_PEEK))  # in the client's kernel: delivered
    peer.transport.abort()
    assert peer.transport.undelivered_bytes == buffered + queued
    dropped = peer.counters.dropped["unacked_at_close"]
    _assert_in_order(client.frames)
    assert len(client.frames) + dropped == N_WRITES
    client.sock.close()
    reactor.close()


def test_local_close_with_unread_input_counts_the_kernel_queue():
    reactor, peer, client = _connect()
    _send(peer)
    client.sock.sendall(native.encode_heartbeat(0))  # never read by us: our close() resets the connection
    assert _wait(lambda: _ioctl(peer.transport.sock, termios.FIONREAD) > 0)
    read = _read(client, limit=20_000)
    _wait_acked(peer, client, read)
    buffered = peer.transport.write_buffer_size
    in_kernel = _ioctl(peer.transport.sock, termios.TIOCOUTQ)
    peer.close()
    assert peer.transport.undelivered_bytes == buffered + in_kernel and in_kernel > 0
    _read(client)  # what the client's kernel held, then the reset
    _assert_in_order(client.frames)
    assert len(client.frames) + peer.counters.dropped["unacked_at_close"] == N_WRITES
    client.sock.close()
    reactor.close()


def test_write_over_the_buffer_cap_counts_the_rejected_write():
    reactor = Reactor()
    listener = socket.create_server(("127.0.0.1", 0))
    ours = socket.socket()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)  # the kernel takes little of the write
    ours.connect(listener.getsockname())
    theirs, _addr = listener.accept()
    listener.close()
    proto = Proto()
    t = tr.StreamTransport(reactor, ours, proto)
    payload = bytes(tr.WRITE_BUFFER_MAX + (1 << 20))
    t.write(payload)  # the part the kernel does not take at once is over the cap: ENOBUFS
    assert t.closed and isinstance(proto.events[-1][1], OSError) and proto.events[-1][1].errno == errno.ENOBUFS
    assert 0 < t.bytes_out < len(payload)
    assert t.undelivered_bytes == len(payload) - t.bytes_out  # the kernel queue is still delivered
    received = 0
    while data := theirs.recv(1 << 20):
        received += len(data)
    assert received == t.bytes_out
    theirs.close()
    reactor.close()


def test_tracked_writes_are_capped_without_forgetting_a_frame(monkeypatch):
    monkeypatch.setattr(ledger, "MAX_TRACKED_WRITES", 16)
    reactor, peer, client = _connect()
    _send(peer)
    records = peer._ledger.records
    assert len(records) == 16 and sum(n for _end, n in records) == N_WRITES  # merged, none lost
    coarsest = records[0][1]  # the oldest record holds all merged writes: the over-count bound
    peer.close()
    dropped = peer.counters.dropped["unacked_at_close"]
    _read(client)
    _assert_in_order(client.frames)
    assert N_WRITES <= len(client.frames) + dropped <= N_WRITES + coarsest
    client.sock.close()
    reactor.close()


def _pulled_cable():
    """Runs inside a fresh network namespace (below): the cable is lo. Prints the outcome as JSON."""
    # a client that announces no heartbeats: only TCP_USER_TIMEOUT (1 s for timeout=2) can close it
    test_deadpeer.HELLO = dataclasses.replace(test_deadpeer.HELLO, heartbeat_ms=0)
    reactor, peer, client = _connect(PeerLimits(sndbuf=65536, timeout=2))
    _send(peer)
    read = _read(client, limit=20_000)
    _wait_acked(peer, client, read)
    buffered = peer.transport.write_buffer_size
    in_kernel = _ioctl(peer.transport.sock, termios.TIOCOUTQ)
    subprocess.run(["ip", "link", "set", "lo", "down"], check=True)
    closed = run_until(reactor, lambda: peer.closed, timeout=30)
    _read(client, limit=_ioctl(client.sock, termios.FIONREAD))  # what its kernel got before the cable went
    print(json.dumps({"closed": closed, "errors": dict(peer.counters.errors), "buffered": buffered,
                      "in_kernel": in_kernel, "undelivered": peer.transport.undelivered_bytes,
                      "dropped": peer.counters.dropped["unacked_at_close"], "received": len(client.frames),
                      "in_order": [counter_of(raw) for raw, _ts in client.frames] == list(range(len(client.frames)))}))


def test_pulled_cable_timeout_counts_userspace_and_kernel_queue(netns, run_in_netns):
    code = "from tests.test_close_accounting import _pulled_cable; _pulled_cable()"
    out = json.loads(run_in_netns(netns(), [sys.executable, "-c", code], timeout=60).stdout)
    assert out["closed"] and out["errors"].get("ETIMEDOUT") == 1
    assert out["buffered"] > 0 and out["in_kernel"] > 0
    heartbeats = out["undelivered"] - out["buffered"] - out["in_kernel"]  # written while the cable was out
    assert heartbeats >= 0 and heartbeats % len(native.encode_heartbeat(0)) == 0
    assert out["dropped"] > 0 and out["in_order"]
    assert out["received"] + out["dropped"] == N_WRITES


def test_socketcand_client_reset_counts_what_it_never_got():
    """The socketcand server's connections keep the same ledger: a client that reads part, then resets."""
    reactor = Reactor()
    router = Router(reactor)
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(listener.getsockname())
    conn, _ = listener.accept()
    set_buffer(conn, socket.SO_SNDBUF, SO_SNDBUFFORCE, 65536)  # a small kernel queue: userspace fills too
    peer = SocketcandPeer(reactor, conn, router, "socketcand-test", {"vcan0": (0, True)})
    client.sendall(b"< open vcan0 >< rawmode >")
    assert run_until(reactor, lambda: peer.channel == 0, timeout=5)
    run_until(reactor, lambda: False, timeout=socketcand_server.HOLD_AFTER_OK_S + 0.1)  # "< ok >" alone first
    for i in range(N_WRITES):  # one classic frame per write (~45 bytes of text)
        router.from_bus(None, 0, [(sc.pack_can(0x100, i.to_bytes(4, "big")), 0)])
        reactor.run_once(0)
    assert peer.counters.tx_frames == N_WRITES
    text = bytearray()
    client.settimeout(5)
    while len(text) < 20_000:
        text += client.recv(4096)
    _wait_acked(peer, SimpleNamespace(sock=client), len(text))
    text += client.recv(_ioctl(client, termios.FIONREAD), socket.MSG_PEEK)  # acked, never read: not countable
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # RST
    assert run_until(reactor, lambda: peer.transport.closed)
    got = len(re.findall(rb"< frame [^>]*>", bytes(text)))
    dropped = peer.counters.dropped["unacked_at_close"]
    assert dropped > 0 and got + dropped == N_WRITES
    listener.close()
    reactor.close()
