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

from tests import nats_cluster

WAIT_S = 20.0


@pytest.fixture(name="cluster", scope="module")
def _cluster(tmp_path_factory):
    yield from nats_cluster.running(tmp_path_factory.mktemp("natscluster"))


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
    assert time.monotonic() - t0 < WAIT_S

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
