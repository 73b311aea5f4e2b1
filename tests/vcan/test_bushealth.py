"""Bus health on vcan (issue 22, point 6): the bus load the bridge counts against can-utils' canbusload
watching the same bus, and INJECTED ERROR FRAMES: the states the emulated SJA1000 never reaches
(error-warning, error-passive, bus-off) and the error counters they carry, written with CAN_ERR_FLAG
into a vcan bus as a controller's driver would deliver them, tracked by the bridge's BusWatch and shown
in its bus health."""

from __future__ import annotations

import json
import os
import queue
import re
import socket
import subprocess
import sys
import time

import paho.mqtt.client as paho
import pytest

from bridge.codec import canerr
from bridge.codec import socketcan as sc
from bridge.codec.busload import raw_bits
from bridge.core.reactor import Reactor
from bridge.endpoints.busfaults import BusFaults
from bridge.endpoints.bushealth import BusHealthMonitor
from bridge.endpoints.socketcan import SocketCanEndpoint
from tests.mqtt_broker import Broker

pytestmark = pytest.mark.vcan

CANBUSLOAD_LINE = re.compile(r"^\s*(\S+)@(\d+)\s+(\d+)\s+(\d+)\s+(\d+)")  # iface@bitrate frames bits payload ...


def pump(reactor: Reactor, until, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "timed out"
        reactor.run_once(timeout=0.02)


@pytest.fixture
def bus(request):
    """(reactor, endpoint, its BusWatch, BusHealthMonitor) on the vcan the test names by its parameter."""
    iface = request.getfixturevalue(request.param)
    reactor = Reactor()
    endpoint = SocketCanEndpoint(reactor, iface, 0, lambda ep, ch, batch: None, fd=False)
    faults, health = BusFaults(reactor), BusHealthMonitor(reactor)
    watch = faults.add(endpoint)
    health.add(endpoint, watch)
    yield reactor, endpoint, watch, health
    health.close()
    faults.close()
    endpoint.close()
    reactor.close()


def _mixed_frames(n: int) -> list[bytes]:
    """Classic frames of every kind canbusload weighs differently: 11/29-bit IDs, 0..8 bytes, RTR."""
    out = []
    for i in range(n):
        can_id = (0x100 + i) | (sc.CAN_EFF_FLAG | 0x18DA0000 if i % 3 == 1 else 0)
        if i % 7 == 3:
            out.append(sc.pack_can(can_id | sc.CAN_RTR_FLAG, length=i % 9))
        else:
            out.append(sc.pack_can(can_id, bytes(range(i % 9))))
    return out


@pytest.mark.parametrize("bus", ["vcan3"], indirect=True)
def test_bus_load_bits_match_canbusload(bus):
    """The same 120 frames (60 the bridge writes, 60 another program sends, which the bridge reads) seen
    by `canbusload vcan3@500000` (can-utils, its default worst-case stuff-bit estimate) and by the
    bridge's count: the same bits, frame by frame summed, and the load it reports follows from them."""
    reactor, endpoint, _watch, health = bus
    frames = _mixed_frames(120)
    proc = subprocess.Popen(["stdbuf", "-oL", "canbusload", f"{endpoint.name}@500000"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert CANBUSLOAD_LINE.match(proc.stdout.readline()), "canbusload printed no stats line"  # it is listening
        other = socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW)
        other.bind((endpoint.name,))
        for i, raw in enumerate(frames):
            if i % 2:
                other.send(raw)
            else:
                assert endpoint.send_frames(0, [(raw, 0)]) == 1
            reactor.run_once(0)
        other.close()
        pump(reactor, lambda: endpoint.counters.rx_frames == 60)
        seen_frames = seen_bits = 0
        while seen_frames < len(frames):  # canbusload prints (and resets) its counts once a second
            m = CANBUSLOAD_LINE.match(proc.stdout.readline())
            if m:
                seen_frames, seen_bits = seen_frames + int(m.group(3)), seen_bits + int(m.group(4))
    finally:
        proc.terminate()
        proc.wait(5)
    want = sum(raw_bits(raw)[0] for raw in frames)
    assert (seen_frames, seen_bits) == (120, want)
    assert (endpoint.wire.frames, endpoint.wire.bits) == (120, want)
    pump(reactor, lambda: health.buses[endpoint].bits_per_s is not None, timeout=3)  # the 1 s window closed
    snap = health.snapshot(endpoint)
    assert snap["bitrate"] is None and snap["load_pct"] is None  # vcan: no bit timing, so no load percent
    assert snap["xstats"] is None and snap["txerr"] is None and snap["socket_drops"] == 0


def inject(iface: str, raw: bytes) -> None:
    """An error frame into the bus, as the controller's driver would deliver it to every reader."""
    with socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW) as s:
        s.bind((iface,))
        s.send(raw)


@pytest.mark.parametrize("bus", ["vcan2"], indirect=True)
def test_injected_error_frames_error_passive_bus_off_and_counters(bus):
    """INJECTED ERROR FRAMES (vcan): warning -> passive -> bus-off -> restarted, each with the controller's
    TEC/REC (CAN_ERR_CNT); the bus state, the error counters in the health snapshot, and TX refused while
    bus-off, then accepted again after the restart."""
    reactor, endpoint, watch, health = bus
    name = endpoint.name
    steps = [
        (canerr.error_frame(canerr.CAN_ERR_CRTL, canerr.CAN_ERR_CRTL_TX_WARNING, txerr=97, rxerr=3), "ERROR-WARNING",
         (97, 3)),
        (canerr.error_frame(canerr.CAN_ERR_CRTL, canerr.CAN_ERR_CRTL_TX_PASSIVE, txerr=135, rxerr=12), "ERROR-PASSIVE",
         (135, 12)),
        (canerr.error_frame(canerr.CAN_ERR_BUSOFF), "BUS-OFF", (135, 12)),  # no CNT: the last counters stay
        (canerr.error_frame(canerr.CAN_ERR_RESTARTED), "ERROR-ACTIVE", (0, 0)),  # a restart resets them
    ]
    gauges = endpoint.counters.gauges
    for raw, state, counters in steps:
        inject(name, raw)
        pump(reactor, lambda state=state: gauges["bus_state"] == state, timeout=5)
        snap = health.snapshot(endpoint)
        assert (snap["txerr"], snap["rxerr"]) == counters, (state, snap)
        if state == "BUS-OFF":
            assert endpoint.send_frames(0, [(sc.pack_can(0x1, b"\x01"), 0)]) == 0
            assert endpoint.counters.dropped["bus_off"] == 1
    assert gauges["bus_state_changes"] == 4
    assert endpoint.send_frames(0, [(sc.pack_can(0x1, b"\x01"), 0)]) == 1  # writes again after the restart


@pytest.mark.mosquitto
def test_mqtt_status_carries_bus_health_and_follows_injected_error_frames(tmp_path, vcan1):
    """The MQTT status topic (retained) of a gateway bridge on vcan1 carries the bus's health; INJECTED ERROR
    FRAMES: an error-passive report makes it republish at once (not at its 10 s period) with the new state."""
    broker = Broker(tmp_path / "broker").start()
    statuses: queue.Queue = queue.Queue()
    sub = paho.Client(paho.CallbackAPIVersion.VERSION2)
    sub.on_message = lambda c, u, msg: statuses.put(json.loads(msg.payload))
    sub.connect("127.0.0.1", broker.port)
    sub.subscribe("fleet/gw/status", qos=1)
    sub.loop_start()
    log = open(tmp_path / "gw.log", "wb")
    gw = subprocess.Popen([sys.executable, "-m", "bridge", vcan1, f"mqtt://127.0.0.1:{broker.port}/fleet?gateway=gw",
                           "--control", "none"], stdout=log, stderr=subprocess.STDOUT,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    log.close()

    def next_status(ok, timeout=60.0):
        deadline = time.monotonic() + timeout
        while True:
            assert gw.poll() is None, (tmp_path / "gw.log").read_text()
            try:
                status = statuses.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError("no such status: " + (tmp_path / "gw.log").read_text()) from None
            if ok(status):
                return status

    try:
        online = next_status(lambda s: s["status"] == "online")
        health = online["buses"][vcan1]
        assert health["state"] == "ERROR-ACTIVE" and health["bitrate"] is None and health["load_pct"] is None
        assert set(health) >= {"bits_per_s", "txerr", "rxerr", "xstats", "rx_overruns", "rx_dropped"}
        sent = time.monotonic()
        inject(vcan1, canerr.error_frame(canerr.CAN_ERR_CRTL, canerr.CAN_ERR_CRTL_RX_PASSIVE, txerr=0, rxerr=128))
        passive = next_status(lambda s: s.get("buses", {}).get(vcan1, {}).get("state") == "ERROR-PASSIVE")
        assert time.monotonic() - sent < 8, "republished by its period, not by the state change"
        assert passive["status"] == "online"
    finally:
        gw.terminate()
        gw.wait(30)
        sub.loop_stop()
        sub.disconnect()
        broker.stop()
