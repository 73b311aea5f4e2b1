"""MQTT fleet peers through a real Mosquitto (tests/mqtt_broker.py), host only: two bridges' worth of
endpoints built from peer URLs by the real config, protocol registry, reactor and router; buses are
recording stand-ins (no vcan needed). A gateway publishes what its bus read; a second bridge mirrors it
with source=GW/IFACE and writes it to its bus."""

from __future__ import annotations

import json
import os
import time

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.codec import mqtt_payload as mp
from bridge.codec import native
from bridge.codec import socketcan as sc
from bridge.core.reactor import Reactor
from bridge.core.router import Router
from bridge.core.stats import Counters
from bridge.daemon.config import parse_peer_url
from bridge.errors import ConfigError
from bridge.protocols.base import PeerContext
from tests.mqtt_broker import Broker, free_port, mosquitto, needs_mosquitto  # noqa: F401 (fixture)

pytestmark = needs_mosquitto
HELLO = native.Hello(capabilities=native.CAP_FD, channels=("can0",))


class Bus:
    """Records what the router writes to it (a bus stand-in: channel, counters, send_frames)."""

    def __init__(self, channel: int = 0) -> None:
        self.channel = channel
        self.counters = Counters()
        self.frames: list = []

    def send_frames(self, channel, frames):
        self.frames.extend(frames)
        return len(frames)


class Side:
    """One bridge: a reactor, a router, one recording bus and the MQTT peer opened from `url`."""

    def __init__(self, url: str, hello=HELLO) -> None:
        self.reactor = Reactor()
        self.router = Router(self.reactor)
        self.bus = Bus()
        self.router.add_bus(self.bus)
        self.config = parse_peer_url(url)
        secure = None
        if self.config.security.tls:
            from bridge.security import tls

            secure = tls.for_peer(self.config.security, True, self.config.host, "test")
        ctx = PeerContext(self.reactor, self.router, hello, [self.bus], tls=secure,
                          routing=(self.config.filter, self.config.inbound_filter,
                                   self.config.access.gate(self.reactor.time())))
        self.peer = self.config.protocol.open(ctx, self.config)

    def close(self):
        self.peer.close()
        self.reactor.close()


def pump(sides, cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        for s in sides:
            s.reactor.run_once(0.005)
    return cond()


def frames_of(n, start=0):
    """Classic, EFF, RTR, error and FD frames (with BRS/ESI), a counter in the data of the data frames."""
    out = []
    for i in range(start, start + n):
        k = i % 5
        ts = 1_700_000_000_000_000_000 + i * 1000
        if k == 0:
            raw = sc.pack_can(0x123, i.to_bytes(4, "big"))
        elif k == 1:
            raw = sc.pack_can(0x18DAF110 | sc.CAN_EFF_FLAG, i.to_bytes(8, "big"))
        elif k == 2:
            raw = sc.pack_can(0x7DF | sc.CAN_RTR_FLAG, b"", length=i % 9)
        elif k == 3:
            raw = sc.pack_can(sc.CAN_ERR_FLAG | 0x4, bytes([0, 0x10, 0, 0, 0, 0, 0, 0]))
        else:
            raw = sc.pack_canfd(0x1ABCDEF | sc.CAN_EFF_FLAG, i.to_bytes(4, "big") + bytes(60), sc.CANFD_BRS)
        out.append((raw, ts))
    return out


def feed(side, frames, per_pass=64):
    for i in range(0, len(frames), per_pass):
        side.router.from_bus(side.bus, 0, frames[i : i + per_pass])
        side.reactor.run_once(0)


def url(broker, prefix="fleet", **opts):
    query = "&".join(f"{k}={v}" for k, v in opts.items())
    return f"mqtt://127.0.0.1:{broker.port}/{prefix}" + (f"?{query}" if query else "")


def connected(*sides):
    return lambda: all(s.peer.connected for s in sides)


@pytest.mark.parametrize("fmt", ["native", "json", "candump"])
@pytest.mark.parametrize("topics", ["batch", "per-id"])
def test_gateway_to_mirror_every_format(mosquitto, fmt, topics):
    gw = Side(url(mosquitto, gateway="gw1", format=fmt, topics=topics))
    mirror = Side(url(mosquitto, gateway="backend", format=fmt, topics=topics, source="gw1/can0", read_only=0))
    assert pump([gw, mirror], connected(gw, mirror))
    pump([gw, mirror], lambda: False, timeout=0.3)  # the SUBSCRIBE is acknowledged
    sent = frames_of(300)
    feed(gw, sent)
    assert pump([gw, mirror], lambda: len(mirror.bus.frames) >= len(sent)), (gw.peer.counters.snapshot(),
                                                                             mirror.peer.counters.snapshot())
    got = mirror.bus.frames
    if fmt == "candump":  # candump -L keeps microseconds
        sent = [(raw, ts // 1000 * 1000) for raw, ts in sent]
    assert got == sent
    assert pump([gw, mirror], lambda: gw.peer.counters.tx_frames == len(sent))  # PUBACKs: acknowledged
    assert not gw.peer.counters.dropped and not mirror.peer.counters.errors
    assert gw.bus.frames == []  # no echo back onto the gateway's own bus (read-only default)
    gw.close()
    mirror.close()


def test_status_retained_online_and_will_offline(mosquitto):
    gw = Side(url(mosquitto, gateway="gw1"))
    assert pump([gw], connected(gw))
    seen = []
    watcher = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    watcher.on_message = lambda c, u, m: seen.append((m.retain, json.loads(m.payload)))
    watcher.connect("127.0.0.1", mosquitto.port)
    watcher.subscribe("fleet/gw1/status", qos=1)
    watcher.loop_start()
    try:
        assert pump([gw], lambda: seen, timeout=5)
        retained, status = seen[0]
        assert retained and status["status"] == "online" and status["interfaces"] == ["can0"] and status["fd"]
        # an unclean end (the process dies): the broker publishes the will
        gw.peer.client.socket().shutdown(2)  # no DISCONNECT packet: the broker publishes the will
        assert pump([gw], lambda: any(s["status"] == "offline" for _r, s in seen), timeout=10)
    finally:
        watcher.loop_stop()
        watcher.disconnect()
        gw.close()
