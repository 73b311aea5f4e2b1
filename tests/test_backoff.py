"""Reconnect backoff and refusal logging (issue 15 point 1) with the real reactor and loopback sockets.

A client that a server refuses (plain TCP against a TLS server, a server at max_clients that accepts and
closes) is not in a session: it must back off as docs/cli.md promises (0.1 s doubling to 5 s, times
0.5..1) instead of reconnecting every 0.1 s for ever, and the server logs the first refusal of an address
and then a summary, not a line per attempt."""

from __future__ import annotations

import logging
import random
import socket
import time

from bridge.codec import native
from bridge.core.reactor import Reactor
from bridge.core.router import Router
from bridge.endpoints import tcp
from bridge.endpoints.tcp import BACKOFF_MAX_S, BACKOFF_MIN_S, TcpClient, TcpServer, backoff_delay, stream_peers
from bridge.protocols import native as wire
from tests.test_tls import pki, server_tls  # noqa: F401 (pki is a fixture)

HELLO = native.Hello(version=native.VERSION, capabilities=native.CAP_FD, heartbeat_ms=1000, channels=("vcan0",))
QUIET_HELLO = native.Hello(heartbeat_ms=0)  # a client that sends no heartbeats and is not closed for it
WINDOW_S = 5.0


def new_wire():
    return wire.NativeStream(HELLO)


def max_attempts(window: float) -> int:
    """Connection attempts the backoff allows in `window` seconds: the first at 0, then each after at
    least the smallest delay of the schedule (jitter factor 0.5), however fast the refusal comes."""
    t, n = 0.0, 1
    while True:
        t += 0.5 * min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2 ** (n - 1))
        if t > window:
            return n
        n += 1


def spin(reactor, seconds, cond=lambda: False):
    end = time.monotonic() + seconds
    while time.monotonic() < end and not cond():
        reactor.run_once(0.02)
    return cond()


class Extremes:
    """An rng whose uniform() returns the low or the high end (the jitter's bounds)."""

    def __init__(self, high):
        self.high = high

    def uniform(self, lo, hi):
        return hi if self.high else lo


def test_backoff_schedule_doubles_from_the_minimum_is_jittered_and_capped():
    for attempt in range(40):
        nominal = min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2 ** attempt)
        assert backoff_delay(attempt, Extremes(True)) == nominal
        assert backoff_delay(attempt, Extremes(False)) == nominal / 2
        assert backoff_delay(attempt) <= BACKOFF_MAX_S
    assert backoff_delay(0, Extremes(True)) == 0.1 and backoff_delay(6, Extremes(True)) == 5.0  # docs/cli.md
    rng = random.Random(1)
    assert len({round(backoff_delay(8, rng), 6) for _ in range(20)}) > 10  # jittered: clients do not move in step


def _client(reactor, port):
    return TcpClient(reactor, Router(reactor), ("127.0.0.1", port), new_wire)


def test_plain_client_against_a_tls_server_backs_off(pki):  # noqa: F811
    reactor = Reactor()
    server = TcpServer(reactor, Router(reactor), ("127.0.0.1", 0), stream_peers(reactor, Router(reactor), new_wire),
                       tls=server_tls(pki))
    client = _client(reactor, server.address[1])
    try:
        spin(reactor, WINDOW_S)
        attempts = server.counters.errors["tls_handshake_failed"]
        assert 2 <= attempts <= max_attempts(WINDOW_S), attempts  # the old client: ~50 in 5 s
        assert client.counters.errors["refused_by_peer"] >= attempts - 1
        assert server.refusals.lines == 1  # the first refusal; the others wait for the summary
    finally:
        client.close()
        server.close()
        reactor.close()


def test_client_against_a_full_server_backs_off():
    reactor = Reactor()
    router = Router(reactor)
    server = TcpServer(reactor, router, ("127.0.0.1", 0), stream_peers(reactor, router, new_wire), max_clients=1)
    occupant = socket.create_connection(server.address)
    occupant.sendall(native.STREAM_PREAMBLE + native.encode_hello(QUIET_HELLO))
    assert spin(reactor, 5, lambda: server.clients and server.clients[0].identified)
    client = _client(reactor, server.address[1])
    try:
        spin(reactor, WINDOW_S)
        attempts = server.counters.errors["refused_max_clients"]
        assert 2 <= attempts <= max_attempts(WINDOW_S), attempts
        assert len(server.clients) == 1
        assert server.refusals.lines == 1
    finally:
        client.close()
        server.close()
        occupant.close()
        reactor.close()


def test_backoff_starts_again_after_a_real_session():
    reactor = Reactor()
    router = Router(reactor)
    server = TcpServer(reactor, router, ("127.0.0.1", 0), stream_peers(reactor, router, new_wire))
    client = _client(reactor, server.address[1])
    try:
        client._attempt = 5  # as after a series of refusals
        assert spin(reactor, 5, lambda: client.peer is not None and client.peer.identified)
        spin(reactor, tcp.SESSION_MIN_S + 0.1)  # a session: greeted, and it lasted
        server.clients[0].close()
        assert spin(reactor, 5, lambda: client.peer is None)
        assert client._attempt == 1  # the delay now running came from attempt 0: <= BACKOFF_MIN_S
        assert client.counters.errors["refused_by_peer"] == 0
        assert spin(reactor, 5, lambda: client.peer is not None and client.peer.identified)
        # a server that greets and closes at once is a refusal, not a session: the backoff grows
        server.clients[0].close()
        assert spin(reactor, 5, lambda: client.peer is None)
        assert client._attempt == 2 and client.counters.errors["refused_by_peer"] == 1
    finally:
        client.close()
        server.close()
        reactor.close()


def test_a_server_logs_the_first_refusal_per_address_then_a_summary(pki, caplog):  # noqa: F811
    """30 refused connections of each kind from one address: one line, then one summary line (the old
    server logged every TLS failure, every 2**n-th max_clients refusal and every bad greeting, with a
    "client connected" and a "connection closed" line around each)."""
    caplog.set_level(logging.INFO)
    reactor = Reactor()
    router = Router(reactor)
    secure = TcpServer(reactor, router, ("127.0.0.1", 0), stream_peers(reactor, router, new_wire), tls=server_tls(pki))
    full = TcpServer(reactor, router, ("127.0.0.1", 0), stream_peers(reactor, router, new_wire), max_clients=1)
    plain = TcpServer(reactor, router, ("127.0.0.1", 0), stream_peers(reactor, router, new_wire))
    servers = (secure, full, plain)
    occupant = socket.create_connection(full.address)
    occupant.sendall(native.STREAM_PREAMBLE + native.encode_hello(QUIET_HELLO))
    assert spin(reactor, 5, lambda: full.clients and full.clients[0].identified)
    try:
        for server, data in ((secure, native.STREAM_PREAMBLE), (full, b""), (plain, b"GET / HTTP/1.0\r\n\r\n")):
            caplog.clear()
            for _ in range(30):
                s = socket.create_connection(server.address)
                if data:
                    s.sendall(data)
                spin(reactor, 0.03)
                s.close()
            spin(reactor, 0.5)
            assert server.refusals.lines == 1  # nothing more during the flood...
            server.refusals.summary()  # ...until the summary (its timer: REFUSAL_SUMMARY_S; close() too)
            lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
            assert server.refusals.lines == 2 and len(lines) == 2, lines
            assert "29 more connections refused" in lines[-1], lines
        assert secure.counters.errors["tls_handshake_failed"] == 30
        assert full.counters.errors["refused_max_clients"] == 30
        assert sum(plain.unidentified.errors.values()) == 30
    finally:
        for server in servers:
            server.close()
        occupant.close()
        reactor.close()
