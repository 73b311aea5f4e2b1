"""The three-node NATS cluster fixture (tests/nats_cluster.py) with plain paho clients: what issue 21's
failover and MQTT 3.1.1 work stands on. A message published through node 1 arrives at a subscriber on
node 2; node 1 SIGKILLed, the other two keep serving; node 1 started again rejoins and serves. Also the
broker facts the gateway must handle: an MQTT 5 CONNECT is refused, a topic level with '.' costs the
connection."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as paho
import pytest

from bridge.daemon.config import parse_peer_url
from bridge.endpoints.tcp import BACKOFF_MAX_S
from bridge.errors import ConfigError
from tests import nats_cluster
from tests.test_mqtt import Side, connected, counted, dropped, feed, pump, unique

WAIT_S = 20.0


@pytest.fixture(name="cluster", scope="module")
def _cluster(tmp_path_factory):
    yield from nats_cluster.running(tmp_path_factory.mktemp("natscluster"))


@pytest.fixture(autouse=True)
def _whole_cluster(cluster):
    """Every test starts with all three nodes up: a test that failed after killing a node does not take the
    next ones down with it."""
    dead = [node for node in cluster.nodes if not node.alive]
    for node in dead:
        node.start()
    cluster.wait_ready(dead)


class Client:
    """A paho MQTT 3.1.1 client on one node, with its own network thread; messages collected in order."""

    def __init__(self, node, name: str, protocol=paho.MQTTv311) -> None:
        self.got: list = []
        self.cond = threading.Condition()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=name, protocol=protocol)
        self.c.on_message = self._on_message
        self.refused = None
        self.c.on_connect = self._on_connect
        self.c.connect("127.0.0.1", node.mqtt_port, keepalive=10)
        self.c.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        with self.cond:
            self.refused = reason_code.is_failure
            self.cond.notify_all()

    def _on_message(self, client, userdata, msg):
        with self.cond:
            self.got.append((msg.topic, msg.payload))
            self.cond.notify_all()

    def wait(self, predicate, timeout: float = WAIT_S) -> bool:
        with self.cond:
            return self.cond.wait_for(predicate, timeout)

    def subscribe(self, topic: str) -> None:
        assert self.wait(lambda: self.refused is False)
        done = threading.Event()
        self.c.on_subscribe = lambda *a: done.set()
        self.c.subscribe(topic, qos=1)
        assert done.wait(WAIT_S)

    def publish_all(self, topic: str, payloads: list) -> None:
        assert self.wait(lambda: self.refused is False)
        infos = [self.c.publish(topic, p, qos=1) for p in payloads]
        for info in infos:
            info.wait_for_publish(WAIT_S)
            assert info.is_published()

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_cluster_carries_messages_between_nodes_and_survives_a_killed_node(cluster):
    n1, n2, n3 = cluster.nodes
    sub = Client(n2, "consumer")
    sub.subscribe("fleet/+/can0/rx")
    pub = Client(n1, "gw1")
    first = [b"%d" % i for i in range(100)]
    pub.publish_all("fleet/gw1/can0/rx", first)
    assert sub.wait(lambda: len(sub.got) >= 100), len(sub.got)
    assert [p for _, p in sub.got] == first  # one publisher, qos 1: in order

    n1.kill()  # mid-life, no goodbye
    pub.c.loop_stop()
    t0 = time.monotonic()
    moved = Client(n3, "gw1")  # what a gateway's failover does: the next node of its list
    second = [b"after-%d" % i for i in range(50)]
    moved.publish_all("fleet/gw1/can0/rx", second)
    assert sub.wait(lambda: len(sub.got) >= 150), len(sub.got)
    assert [p for _, p in sub.got[100:]] == second
    print(f"\nnode 1 killed: 50 messages through node 3 to node 2 after {time.monotonic() - t0:.2f} s")

    n1.start()  # the same ports and store: it rejoins the cluster
    cluster.wait_ready([n1])
    back = Client(n1, "gw2")
    back.publish_all("fleet/gw2/can0/rx", [b"rejoined"])
    assert sub.wait(lambda: len(sub.got) >= 151)
    assert sub.got[-1] == ("fleet/gw2/can0/rx", b"rejoined")
    for c in (sub, moved, back):
        c.close()


def test_nats_refuses_mqtt5_and_topic_levels_with_a_dot(cluster):
    """The facts protocol=auto and the topic checks of bridge.endpoints.mqtt_brokers rely on."""
    n2 = cluster.nodes[1]
    v5 = Client(n2, "v5-probe", protocol=paho.MQTTv5)
    assert v5.wait(lambda: v5.refused is not None) and v5.refused  # "Unsupported protocol version"
    v5.close()

    sub = Client(n2, "dot-consumer")
    sub.subscribe("fleet/#")
    dotted = Client(n2, "dot-publisher")
    assert dotted.wait(lambda: dotted.refused is False)
    lost = threading.Event()
    dotted.c.on_disconnect = lambda *a: lost.set()
    dotted.c.publish("fleet/gw.example/can0/rx", b"dotted", qos=1)
    assert lost.wait(WAIT_S)  # NATS closes the connection: a gateway would reconnect and loop for ever
    plain = Client(n2, "plain-publisher")
    plain.publish_all("fleet/gw_example/can0/rx", [b"plain"])
    assert sub.wait(lambda: any(p == b"plain" for _, p in sub.got))
    assert b"dotted" not in [p for _, p in sub.got]
    for c in (sub, dotted, plain):
        c.close()


# ------------------------------------------------------------------ canbridge gateways on the cluster
def test_protocol_auto_speaks_311_to_nats_and_a_dotted_gateway_is_refused_at_start(cluster):
    gw = Side(cluster.url() + "?gateway=gw0")
    assert pump([gw], connected(gw), timeout=WAIT_S)
    g = gw.peer.counters.gauges
    assert (g["protocol"], g["broker"]) == ("3.1.1", cluster.url().split("/")[2].split(",")[0] + " (1 of 3)")
    assert gw.peer.counters.errors["connect_refused"] == 0  # the refused MQTT 5 CONNECT is not a failure
    gw.close()
    from bridge.tools.live.mqtt_source import MqttSource

    dead = cluster.url().split("/")[2].split(",")[0].replace(str(cluster.nodes[0].mqtt_port), "1")
    source = MqttSource(cluster.url().replace("mqtt://", f"mqtt://{dead},") + "/+/can0")  # dump/top's source
    assert source.mqtt.name == "3.1.1"  # the dead node skipped, MQTT 5 refused, 3.1.1 spoken
    source.close()
    with pytest.raises(ConfigError, match=r"level 'gw\.example' holds '\.', which nats refuses"):
        parse_peer_url(cluster.url() + "?gateway=gw.example&broker=nats")
    with pytest.raises(ConfigError, match="MQTT 3.1.1 only"):
        parse_peer_url(cluster.url() + "?gateway=gw1&broker=nats&protocol=5")


def test_gateways_fail_over_when_their_node_is_killed_mid_stream(cluster):
    """Two gateways on node 1 (the broker list n1,n2,n3), a consumer each on node 2; node 1 SIGKILLed
    mid-stream: the gateways move to node 2 within 2x the backoff cap, and for each gateway delivered +
    counted = sent (the consumer counts what the cluster lost, the gateway what it dropped)."""
    n1, n2, _ = cluster.nodes
    gws = [Side(cluster.url() + f"?gateway=gw{i}") for i in (1, 2)]
    mirrors = [Side(f"mqtt://127.0.0.1:{n2.mqtt_port}/fleet?gateway=backend{i}&source=gw{i}/can0&read_only=0")
               for i in (1, 2)]
    every = gws + mirrors
    assert pump(every, connected(*every), timeout=WAIT_S)
    sent = 0
    while sent < 1000 or not all(m.bus.frames for m in mirrors):  # until the subscriptions carry (~1 s on NATS)
        for gw in gws:
            feed(gw, counted(100, sent))
        sent += 100
        pump(every, lambda: False, timeout=0.02)
        assert sent < 50_000, [m.peer.counters.snapshot() for m in mirrors]
    # a consumer counts from the first message it got (frames sent before its subscription carried are not
    # its to count): the identity holds from there
    base = [min(unique(m.bus.frames)) for m in mirrors]
    n1.kill()  # mid-stream: messages on the wire, the gateways' node gone without a word
    killed = time.monotonic()
    back = {}
    while time.monotonic() - killed < 4 * BACKOFF_MAX_S and len(back) < len(gws):
        for gw in gws:
            feed(gw, counted(20, sent))
        sent += 20
        pump(every, lambda: False, timeout=0.02)
        for i, gw in enumerate(gws):
            if i not in back and gw.peer.connected and gw.peer.counters.errors["disconnected"]:
                back[i] = time.monotonic() - killed
    assert len(back) == len(gws), [gw.peer.counters.snapshot() for gw in gws]
    assert max(back.values()) <= 2 * BACKOFF_MAX_S, back
    assert all(gw.peer.counters.gauges["broker"].endswith("(2 of 3)") for gw in gws)
    for _ in range(5):
        for gw in gws:
            feed(gw, counted(100, sent))
        sent += 100
        pump(every, lambda: False, timeout=0.02)

    def done():
        return all(gw.peer.counters.tx_frames + dropped(gw) >= sent
                   and len(unique(m.bus.frames)) + dropped(gw) + m.peer.counters.dropped["lost_in_transit"] >= sent - b
                   for gw, m, b in zip(gws, mirrors, base))

    assert pump(every, done, timeout=3 * WAIT_S), [(gw.peer.counters.snapshot(), m.peer.counters.snapshot())
                                                   for gw, m in zip(gws, mirrors)]
    for gw, mirror, b in zip(gws, mirrors, base):
        delivered = unique(mirror.bus.frames)
        lost = mirror.peer.counters.dropped["lost_in_transit"]
        assert gw.peer.counters.tx_frames + dropped(gw) == sent
        assert delivered <= set(range(b, sent))
        assert len(delivered) + dropped(gw) + lost == sent - b, (gw.peer.counters.snapshot(),
                                                                mirror.peer.counters.snapshot())
        assert len(mirror.bus.frames) == len(delivered)  # duplicates skipped
        print(f"\n{gw.peer.gateway}: sent {sent - b} (from frame {b}, the consumer's first), delivered "
              f"{len(delivered)}, dropped at the gateway {dropped(gw)}, lost_in_transit {lost}; back on node 2 "
              f"after {back[gws.index(gw)]:.2f} s")
    for side in every:
        side.close()
    n1.start()
    cluster.wait_ready([n1])  # the killed node rejoins
