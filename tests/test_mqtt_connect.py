"""The MQTT peer's connect never stalls the reactor (bridge/endpoints/mqtt.py: our non-blocking TCP connect
and TLS handshake, then paho takes the socket). Brokers that do not answer, on loopback: a listener whose
accept queue is full (the kernel drops our SYN, as a dead link would), and a TCP server that accepts but
never answers the TLS ClientHello. paho's own connect blocked the loop up to 3 s in both."""

from __future__ import annotations

import socket
import time

import pytest

from bridge.endpoints.mqtt_connection import CONNECT_TIMEOUT_S
from tests.mqtt_broker import needs_mosquitto
from tests.test_mqtt import Side

pytestmark = needs_mosquitto
MAX_PASS_S = 0.3  # one reactor pass while a connect is pending: ~0 here; paho blocked CONNECT_TIMEOUT_S (3 s)


@pytest.fixture(name="silent_listener")
def _silent_listener():
    """(port, sockets): a listener with backlog 0 whose accept queue two connects fill; never accepts."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port = srv.getsockname()[1]
    fillers = []
    for _ in range(2):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        fillers.append(s)
    time.sleep(0.1)
    yield port
    for s in [*fillers, srv]:
        s.close()


def timed_passes(side, seconds: float) -> float:
    """Run the side's reactor for `seconds`; -> the longest single pass in s."""
    longest, end = 0.0, time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.monotonic()
        side.reactor.run_once(0.01)
        longest = max(longest, time.monotonic() - t)
    return longest


def test_a_broker_that_drops_our_syn_does_not_stall_the_loop(silent_listener):
    t = time.monotonic()
    side = Side(f"mqtt://127.0.0.1:{silent_listener}/fleet?gateway=gw1")
    try:
        assert time.monotonic() - t < MAX_PASS_S  # the constructor only starts the connect
        assert timed_passes(side, CONNECT_TIMEOUT_S + 1.0) < MAX_PASS_S
        assert side.peer.counters.errors["connect_failed"] >= 1 and not side.peer.connected
        assert "no answer from the broker in 3 s" in side.peer.counters.gauges["last_error"]
    finally:
        side.close()


def test_a_broker_that_never_answers_the_tls_handshake_does_not_stall_the_loop(tmp_path):
    from tests.pki import make_pki

    pki = make_pki(tmp_path / "pki")
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]
    t = time.monotonic()
    side = Side(f"mqtts://127.0.0.1:{port}/fleet?gateway=gw1&tls_ca={pki['ca']}")
    try:
        assert time.monotonic() - t < MAX_PASS_S
        assert timed_passes(side, 0.5) < MAX_PASS_S
        conn, _ = srv.accept()  # the TCP connect completed; the ClientHello waits for an answer
        assert conn.recv(5)[:1] == b"\x16"  # TLS handshake record
        assert timed_passes(side, 1.0) < MAX_PASS_S
        assert not side.peer.connected and side.peer.counters.errors["connect_failed"] == 0  # still waiting
        conn.close()  # the broker goes away mid-handshake: counted, clear reason
        timed_passes(side, 0.5)
        assert side.peer.counters.errors["connect_failed"] == 1
        assert "TLS handshake failed" in side.peer.counters.gauges["last_error"]
    finally:
        side.close()
        srv.close()


def test_one_readable_event_reads_many_messages(tmp_path):
    """paho's loop_read() reads one packet per call unless messages of ours are in flight (it ignores its
    max_packets argument): the peer reads up to READ_PACKETS_PER_PASS messages per readable event itself,
    so a mirror of a busy fleet does not need one loop pass per message."""
    from tests.mqtt_broker import Broker
    from tests.test_mqtt import connected, pump, raw_client, publish, unique, counted
    from bridge.codec import mqtt_payload as mp

    broker = Broker(tmp_path / "b", extra=("max_inflight_messages 0",)).start()  # all 50 sent to us at once
    mirror = Side(f"mqtt://127.0.0.1:{broker.port}/fleet?gateway=backend&source=gw1/can0&read_only=0")
    try:
        assert pump([mirror], connected(mirror))
        pump([mirror], lambda: False, timeout=0.3)  # SUBACK
        c = raw_client(broker)
        n = 50
        for i in range(n):
            publish(c, "fleet/gw1/can0/rx", mp.encode_native(counted(1, i)))
        c.loop_stop()
        c.disconnect()
        time.sleep(0.5)  # all n are in our socket's receive buffer
        mirror.reactor.run_once(0.5)
        mirror.reactor.run_once(0)  # the end of the pass and anything scheduled for it
        assert unique(mirror.bus.frames) == set(range(n))
    finally:
        mirror.close()
        broker.stop()
