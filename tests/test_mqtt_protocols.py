"""Issue 21 against a real Mosquitto (MQTT 5 and 3.1.1): protocol=auto speaks 5 to it, protocol=3.1.1 carries
a fleet end to end; a broker list whose first node is dead connects to the next and names it (gauges and
the status message); a mirror decodes what a gateway publishes whatever its own format= (content type,
sniffed without one). The NATS half (3.1.1 only, failover of a cluster) is in tests/test_nats_cluster.py."""

from __future__ import annotations

import json
import threading
import time

import paho.mqtt.client as paho
import pytest

from bridge.codec import mqtt_payload as mp
from bridge.daemon.config import parse_peer_url
from bridge.errors import ConfigError
from tests.mqtt_broker import Broker, free_port, needs_mosquitto, running
from tests.test_mqtt import Side, connected, feed, frames_of, pump, url

pytestmark = needs_mosquitto


@pytest.fixture(name="mosquitto")
def _mosquitto(tmp_path):
    yield from running(tmp_path)


def test_auto_speaks_5_to_mosquitto_and_a_dead_first_node_is_skipped(mosquitto, tmp_path):
    dead = free_port()  # nothing listens: refused at once
    gw = Side(f"mqtt://127.0.0.1:{dead},127.0.0.1:{mosquitto.port}/fleet?gateway=gw1")
    status = []
    done = threading.Event()
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    c.on_message = lambda cl, u, msg: (status.append(json.loads(msg.payload)), done.set())
    c.connect("127.0.0.1", mosquitto.port)
    c.subscribe("fleet/gw1/status")
    c.loop_start()
    try:
        assert pump([gw], connected(gw))
        g = gw.peer.counters.gauges
        assert (g["protocol"], g["broker"]) == ("5", f"127.0.0.1:{mosquitto.port} (2 of 2)")
        assert gw.peer.counters.errors["connect_failed"] >= 1  # the dead node, tried once
        pump([gw], lambda: done.is_set(), timeout=5)
        online = [s for s in status if s["status"] == "online"][-1]
        assert (online["broker"], online["protocol"]) == (g["broker"], "5")
    finally:
        c.loop_stop()
        c.disconnect()
        gw.close()


@pytest.mark.parametrize("run", range(3))  # repeated: issue 21 saw one run in four go wrong
@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_a_mirror_reads_what_the_gateway_publishes_whatever_its_own_format(mosquitto, protocol, run):
    """format= chooses what we publish; a mirror decodes by the message's content type (MQTT 5) or by
    sniffing (3.1.1): gateway json -> mirror native, and gateway native -> mirror json, every frame, in order."""
    pairs = [("json", "native"), ("native", "json")]
    sides = []
    for i, (gw_fmt, mirror_fmt) in enumerate(pairs):
        sides.append((Side(url(mosquitto, gateway=f"gw{i}", format=gw_fmt, protocol=protocol)),
                      Side(url(mosquitto, gateway=f"mirror{i}", format=mirror_fmt, protocol=protocol,
                               source=f"gw{i}/can0", read_only=0))))
    every = [s for pair in sides for s in pair]
    assert pump(every, connected(*every))
    assert all(s.peer.counters.gauges["protocol"] == protocol for s in every)
    pump(every, lambda: False, timeout=0.3)
    now = time.time_ns() // 1000 * 1000  # json keeps microseconds; fresh: a 3.1.1 mirror checks max_age
    sent = [(raw, now + i * 1000) for i, (raw, _ts) in enumerate(frames_of(500))]
    for gw, _ in sides:
        feed(gw, sent)
    assert pump(every, lambda: all(len(m.bus.frames) >= len(sent) for _, m in sides)), \
        [m.peer.counters.snapshot() for _, m in sides]
    for _gw, mirror in sides:
        assert mirror.bus.frames == sent
        assert not mirror.peer.counters.errors.get("bad_payload")
    for s in every:
        s.close()


def test_311_refuses_what_it_cannot_do(tmp_path):
    port = Broker(tmp_path / "x").port
    with pytest.raises(ConfigError, match="share= is an MQTT 5 shared subscription"):
        parse_peer_url(f"mqtt://127.0.0.1:{port}/fleet?protocol=3.1.1&share=g&source=gw1/can0&read_only=0")
    with pytest.raises(ConfigError, match="protocol must be one of"):
        parse_peer_url(f"mqtt://127.0.0.1:{port}/fleet?protocol=4")
    with pytest.raises(ConfigError, match="listed twice"):
        parse_peer_url(f"mqtt://127.0.0.1:{port},127.0.0.1:{port}/fleet")
    with pytest.raises(ConfigError, match="spool_max= needs spool"):
        parse_peer_url(f"mqtt://127.0.0.1:{port}/fleet?spool_max=1M")
    peer = parse_peer_url("mqtt://u@n1:1884,[::1]/fleet?brokers=n3&spool=/tmp/s&spool_max=2M&spool_sync=0.2,500")
    assert [str(b) for b in peer.extra["brokers"]] == ["n1:1884", "[::1]:1883", "n3:1883"]
    assert (peer.host, peer.port, peer.extra["username"]) == ("n1", 1884, "u")
    assert peer.extra["spool"] == {"dir": "/tmp/s", "max_bytes": 2 << 20, "sync_interval": 0.2, "sync_frames": 500}


def test_311_mirror_drops_frames_older_than_max_age_by_their_timestamps(mosquitto):
    """MQTT 3.1.1 has no message expiry: a mirror drops (counts dropped{stale}) frames whose gateway timestamp
    is older than its max_age by the wall clock, and passes fresh ones (issue 21); under MQTT 5 the broker's
    expiry does it and the timestamps are not looked at."""
    gw = Side(url(mosquitto, gateway="gw1", protocol="3.1.1"))
    mirror = Side(url(mosquitto, gateway="mirror", protocol="3.1.1", source="gw1/can0", read_only=0, max_age=5))
    sides = [gw, mirror]
    assert pump(sides, connected(*sides))
    pump(sides, lambda: False, timeout=0.3)  # the subscription carries
    now = time.time_ns()
    old = [(raw, now - 30 * 10**9 + i) for i, (raw, _ts) in enumerate(frames_of(40))]  # 30 s old: > max_age
    fresh = [(raw, now + i) for i, (raw, _ts) in enumerate(frames_of(60, 40))]
    feed(gw, old)
    feed(gw, fresh)
    assert pump(sides, lambda: len(mirror.bus.frames) >= len(fresh) and mirror.peer.counters.dropped["stale"]), \
        mirror.peer.counters.snapshot()
    pump(sides, lambda: False, timeout=0.2)
    assert mirror.bus.frames == fresh
    assert mirror.peer.counters.dropped["stale"] == len(old)
    assert mirror.peer.counters.snapshot()["dropped"]["stale"] == len(old)  # what stats show
    assert gw.peer.counters.tx_frames == len(old) + len(fresh)  # the gateway sent them all
    for s in sides:
        s.close()


def test_fresh_frames_keeps_untimed_and_future_frames():
    from bridge.codec.mqtt_payload import fresh_frames

    now = 1_000 * 10**9
    frames = [(b"a", now - 61 * 10**9), (b"b", 0), (b"c", now - 59 * 10**9), (b"d", now + 10**9)]
    assert fresh_frames(frames, now, 60) == (frames[1:], 1)
    assert fresh_frames(frames, now, 0) == (frames, 0)


def test_azure_iot_hub_preset_against_a_tls_mosquitto_standing_in_for_the_hub(tmp_path):
    """broker=azure-iot-hub on a TLS Mosquitto whose ACL is the hub's rule (a client writes only under
    devices/CLIENT_ID/messages/events/): MQTT 3.1.1, client id = gateway, frames on the fixed topic with the
    bus and the content type ($.ct) in the property bag, the status there too and not retained, nothing refused."""
    from tests.pki import make_pki

    pki = make_pki(tmp_path / "pki")
    acl = "pattern write devices/%c/messages/events/#\ntopic read devices/#\n"
    broker = Broker(tmp_path / "hub", tls=pki, acl=acl).start()
    got, done = [], threading.Event()
    watch = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
    watch.tls_set(ca_certs=pki["ca"])
    watch.on_message = lambda cl, u, msg: (got.append((msg.topic, msg.payload, msg.retain)), done.set())
    watch.connect("localhost", broker.port)
    watch.subscribe("devices/#", qos=1)
    watch.loop_start()
    gw = Side(f"mqtts://localhost:{broker.port}/?gateway=gw1&broker=azure-iot-hub&tls_ca={pki['ca']}")
    try:
        assert pump([gw], connected(gw))
        assert (gw.peer.client_id, gw.peer.counters.gauges["protocol"]) == ("gw1", "3.1.1")
        now = time.time_ns()
        sent = [(raw, now + i) for i, (raw, _ts) in enumerate(frames_of(50))]
        feed(gw, sent)
        assert pump([gw], lambda: gw.peer.counters.tx_frames == 50 and sum("iface=can0&" in t
                                                                            for t, _p, _r in got) >= 1)
        pump([gw], lambda: False, timeout=0.3)
        topics = {t for t, _p, _r in got}
        assert topics == {"devices/gw1/messages/events/iface=can0&$.ct=application%2Fvnd.canbridge.frames",
                          "devices/gw1/messages/events/type=status&$.ct=application%2Fjson&$.ce=utf-8"}
        frames = [f for t, p, _r in got if "iface=can0&" in t for f in mp.decode("native", p)]
        assert frames == sent
        status = [json.loads(p) for t, p, _r in got if "type=status&" in t]
        assert status[0]["status"] == "online"
        assert not any(r for _t, _p, r in got) and not gw.peer.counters.errors.get("publish_refused")
        late = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)  # nothing retained
        late.tls_set(ca_certs=pki["ca"])
        retained = []
        late.on_message = lambda cl, u, msg: retained.append(msg.topic)
        late.connect("localhost", broker.port)
        late.subscribe("devices/#")
        late.loop_start()
        time.sleep(0.3)
        late.loop_stop()
        late.disconnect()
        assert retained == []
    finally:
        watch.loop_stop()
        watch.disconnect()
        gw.close()
        broker.stop()
