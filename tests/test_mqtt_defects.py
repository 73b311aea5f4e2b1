"""Issue 20's review defects D1-D9 of the MQTT peer, each reproduced through a real Mosquitto
(tests/mqtt_broker.py; paused with SIGSTOP, killed with SIGKILL), host only. Each test failed on commit
a37e457 (the landed code the review read) and passes with the outbox (bridge/endpoints/mqtt_outbox.py)."""

from __future__ import annotations

import logging
import signal
import time

import pytest

from bridge.codec import mqtt_payload as mp
from bridge.codec import socketcan as sc
from tests.mqtt_broker import Broker, needs_mosquitto
from tests.test_mqtt import Side, connected, counted, dropped, feed, publish, pump, raw_client, url

pytestmark = needs_mosquitto


@pytest.fixture(name="broker")
def _broker(tmp_path):
    b = Broker(tmp_path / "mosquitto").start()
    yield b
    if b.proc and b.proc.poll() is None:
        b.resume()
    b.stop()


def ids(frames):
    return [int.from_bytes(raw[8:12], "big") for raw, _ts in frames]


def unconfirmed(side):
    return side.peer.counters.gauges.get("unconfirmed_frames", 0)


def accounted(side):
    """At the gateway every frame taken is acknowledged, dropped with a reason, or unconfirmed."""
    return side.peer.counters.tx_frames + dropped(side) + unconfirmed(side)


def subscribed(*sides):
    assert pump(list(sides), connected(*sides), timeout=15)
    pump(list(sides), lambda: False, timeout=0.3)  # the SUBACK


@pytest.mark.parametrize("fmt", ["native", "json"])
def test_d1_order_kept_when_the_broker_is_paused_then_killed(broker, fmt):
    """D1: messages unacknowledged at a paused broker, which is then killed and restarted while newer
    frames are stored: every frame reaches the consumer once, in the order sent (paho used to resend
    its unacknowledged messages after the CONNACK, behind the newer stored ones)."""
    gw = Side(url(broker, gateway="gw1", format=fmt))
    mirror = Side(url(broker, gateway="backend", format=fmt, source="gw1/can0", read_only=0))
    try:
        subscribed(gw, mirror)
        feed(gw, counted(200), per_pass=4)
        assert pump([gw, mirror], lambda: len(mirror.bus.frames) == 200)
        broker.pause()
        feed(gw, counted(20, 200), per_pass=4)  # 5 messages written to a broker that does not answer
        pump([gw], lambda: False, timeout=0.3)
        assert gw.peer.counters.tx_frames == 200
        broker.kill()
        assert pump([gw, mirror], lambda: not gw.peer.connected and not mirror.peer.connected, timeout=5)
        feed(gw, counted(200, 220), per_pass=4)  # 50 messages stored while the broker is away
        broker.start()
        subscribed(mirror)
        assert pump([gw, mirror], lambda: len(mirror.bus.frames) >= 420, timeout=20), gw.peer.counters.snapshot()
        pump([gw, mirror], lambda: False, timeout=0.3)
        assert [raw for raw, _ts in mirror.bus.frames] == [raw for raw, _ts in counted(420)]  # frame by frame
        assert accounted(gw) == 420 and not mirror.peer.counters.dropped.get("lost_in_transit")
    finally:
        gw.close()
        mirror.close()


def test_d2_qos0_keeps_publishing_after_an_outage(broker):
    """D2: at qos 0, PUBLISHes still in paho's buffer when the connection goes are lost by paho without
    a callback; they used to stay 'unacknowledged' for ever (frames counted neither sent nor dropped,
    and after enough outages nothing was published any more)."""
    gw = Side(url(broker, gateway="gw1", qos=0))
    big = [(sc.pack_canfd(0x123, i.to_bytes(4, "big") + bytes(60)), time.time_ns()) for i in range(512)]
    try:
        assert pump([gw], connected(gw))
        broker.pause()
        n = 0
        for _ in range(300):  # 43 KB messages: more than the socket buffers take while the broker sleeps
            feed(gw, big, per_pass=512)
            n += 512
        broker.kill()
        assert pump([gw], lambda: not gw.peer.connected, timeout=5)
        broker.start()
        assert pump([gw], connected(gw), timeout=15)
        assert pump([gw], lambda: gw.peer.counters.gauges["queued_frames"] == 0, timeout=20)
        feed(gw, counted(10))
        n += 10
        assert pump([gw], lambda: accounted(gw) == n, timeout=10), (gw.peer.counters.snapshot(), n)
        assert gw.peer.counters.tx_frames >= 10
    finally:
        gw.close()


def test_d3_the_brokers_receive_maximum_bounds_what_is_in_flight(broker):
    """D3: a broker left at Mosquitto's default announces Receive Maximum 20 in its CONNACK; we used to
    keep 64 qos 1 messages in flight regardless (a broker that enforces it disconnects with 0x93)."""
    gw = Side(url(broker, gateway="gw1"))
    mirror = Side(url(broker, gateway="backend", source="gw1/can0", read_only=0))
    try:
        subscribed(gw, mirror)
        broker.pause()  # nothing is acknowledged: what we send stays in flight
        most = 0
        for i in range(100):
            feed(gw, counted(1, i), per_pass=1)
            most = max(most, gw.peer.client._inflight_messages)  # paho's count of qos 1 PUBLISHes on the wire
        assert most <= 20, most
        broker.resume()
        assert pump([gw, mirror], lambda: len(mirror.bus.frames) == 100)
        assert ids(mirror.bus.frames) == list(range(100)) and gw.peer.counters.gauges["window"] == 20
    finally:
        gw.close()
        mirror.close()


ALLOW = "topic readwrite fleet/#\n"
DENY_GW1 = "topic readwrite fleet/backend/#\ntopic read fleet/gw1/#\n"


def test_d4_a_refused_message_is_counted_once_end_to_end(tmp_path):
    """D4: a message the broker refuses (PUBACK 0x87: its ACL, reloaded with SIGHUP, forbids the topic for a
    moment) is dropped publish_failed at the gateway; its consumer used to count the same frames again as a
    gap (lost_in_transit). Now the gateway's later messages carry PUB_DROPPED and the consumer does not."""
    broker = Broker(tmp_path / "acl", acl=ALLOW).start()
    gw = Side(url(broker, gateway="gw1"))
    mirror = Side(url(broker, gateway="backend", source="gw1/can0", read_only=0))
    try:
        subscribed(gw, mirror)
        feed(gw, counted(50), per_pass=10)
        assert pump([gw, mirror], lambda: len(mirror.bus.frames) == 50)
        (broker.dir / "acl").write_text(DENY_GW1)
        broker.proc.send_signal(signal.SIGHUP)
        time.sleep(0.3)
        feed(gw, counted(30, 50), per_pass=10)
        assert pump([gw, mirror], lambda: gw.peer.counters.dropped["publish_failed"] == 30)
        (broker.dir / "acl").write_text(ALLOW)
        broker.proc.send_signal(signal.SIGHUP)
        time.sleep(0.3)
        feed(gw, counted(50, 80), per_pass=10)
        assert pump([gw, mirror], lambda: len(mirror.bus.frames) == 100)
        pump([gw, mirror], lambda: False, timeout=0.3)
        lost = mirror.peer.counters.dropped.get("lost_in_transit", 0)
        assert ids(mirror.bus.frames) == [*range(50), *range(80, 130)] and lost == 0, mirror.peer.counters.snapshot()
        assert len(mirror.bus.frames) + dropped(gw) + lost == 130
    finally:
        gw.close()
        mirror.close()
        broker.stop()


def test_d5_messages_in_flight_do_not_outlive_max_age(broker):
    """D5: messages written to the broker and not acknowledged when the connection went (up to 256 held by
    paho) escaped the stale sweep and were resent after an outage longer than max_age, with their old
    expiry. Now they are not resent; they are unconfirmed (the broker may have had them)."""
    gw = Side(url(broker, gateway="gw1", max_age=2))
    mirror = Side(url(broker, gateway="backend", source="gw1/can0", read_only=0))
    try:
        subscribed(gw, mirror)
        feed(gw, counted(10), per_pass=2)
        assert pump([gw, mirror], lambda: len(mirror.bus.frames) == 10)
        broker.pause()
        feed(gw, counted(10, 10), per_pass=2)
        pump([gw], lambda: False, timeout=0.3)
        broker.kill()
        assert pump([gw, mirror], lambda: not gw.peer.connected, timeout=5)
        pump([gw, mirror], lambda: False, timeout=3.5)  # the outage outlasts max_age
        broker.start()
        subscribed(mirror)
        assert pump([gw], connected(gw), timeout=15)
        feed(gw, counted(10, 20), per_pass=2)
        assert pump([gw, mirror], lambda: len(mirror.bus.frames) >= 20)
        pump([gw, mirror], lambda: False, timeout=0.5)
        assert ids(mirror.bus.frames) == [*range(10), *range(20, 30)]  # none of the stale ones
        assert unconfirmed(gw) == 10 and accounted(gw) == 30
        assert mirror.peer.counters.dropped["lost_in_transit"] == 10  # the consumer sees the gap
    finally:
        gw.close()
        mirror.close()


def test_d6_two_gateways_of_one_name_back_off_and_warn_once(broker, caplog):
    """D6: two gateways with the same gateway= share a client id and take each other's session; the
    backoff used to reset at every CONNACK (a takeover every 50-100 ms, a warning each time)."""
    caplog.set_level(logging.WARNING, logger="bridge.endpoints.mqtt")
    twins = [Side(url(broker, gateway="twin")) for _ in range(2)]
    try:
        pump(twins, lambda: False, timeout=6)
        lost = sum(t.peer.counters.errors["disconnected"] for t in twins)
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert 1 <= lost <= 16, lost
        assert len(warnings) <= 4, [r.getMessage() for r in warnings]  # two per gateway at most
        assert any("canbridge-twin-" in r.getMessage() for r in warnings)  # names the duplicate client id
    finally:
        for t in twins:
            t.close()


def test_d7_a_garbage_flood_logs_a_bounded_number_of_lines(broker, caplog):
    """D7: one warning per malformed message used to flood the log; now the first per topic and reason,
    then a summary (every message still counted)."""
    caplog.set_level(logging.WARNING, logger="bridge.endpoints.mqtt")
    gw = Side(url(broker, gateway="gw1", read_only=0))
    c = raw_client(broker)
    try:
        subscribed(gw)
        for i in range(300):
            c.publish("fleet/gw1/can0/tx", b"garbage %d" % i, qos=0)
        publish(c, "fleet/gw1/can0/tx", mp.encode_native(counted(1)))
        assert pump([gw], lambda: gw.bus.frames, timeout=10)
        assert gw.peer.counters.errors["bad_payload"] == 300
        gw.close()  # tells the summary
        lines = [r for r in caplog.records if "malformed" in r.getMessage()]
        assert 1 <= len(lines) <= 3, len(lines)
    finally:
        c.loop_stop()
        c.disconnect()
        gw.close()


def test_d8_one_readable_event_reads_at_most_the_bound(tmp_path):
    """D8: paho's loop_read ignores its max_packets (it reads as many packets as it holds messages), so
    with 200 messages of ours in paho one readable event read everything waiting: 600 messages, not the
    READ_PACKETS_PER_PASS (256) the peer meant."""
    broker = Broker(tmp_path / "b", extra=("max_inflight_messages 0",)).start()  # no limit: all 600 come
    side = Side(url(broker, gateway="gw2", source="gw1/can0", read_only=0))
    c = raw_client(broker)
    try:
        subscribed(side)
        for i in range(600):
            c.publish("fleet/gw1/can0/rx", mp.encode_native(counted(1, i)), qos=1)
        time.sleep(1.0)  # all of them in our socket's receive buffer
        for i in range(200):  # 200 messages of ours the broker has not acknowledged yet (nothing is read)
            side.router.from_bus(side.bus, 0, counted(1, i))
            side.peer.flush()
        readable = getattr(side.peer, "_readable", None) or side.peer.connection.readable
        readable()
        assert 0 < len(side.bus.frames) <= 256, len(side.bus.frames)
        assert pump([side], lambda: len(side.bus.frames) == 600)
    finally:
        c.loop_stop()
        c.disconnect()
        side.close()
        broker.stop()


def test_d9_close_does_not_count_what_the_broker_may_have_as_closed(broker):
    """D9: close() counted every unacknowledged frame as dropped{closed}, though the broker may have them
    (written, PUBACK not read yet): now unconfirmed_frames; only what was never sent is closed."""
    gw = Side(url(broker, gateway="gw1"))
    try:
        assert pump([gw], connected(gw))
        broker.pause()
        feed(gw, counted(10), per_pass=2)
        pump([gw], lambda: False, timeout=0.2)
        gw.close()
        assert not gw.peer.counters.dropped.get("closed"), gw.peer.counters.snapshot()
        assert unconfirmed(gw) == 10 and accounted(gw) == 10
    finally:
        gw.close()
