"""The backend side of an MQTT fleet through a real Mosquitto (tests/mqtt_broker.py), host only:
`canbridge dump` and `canbridge top` on mqtt:// URLs (the processes, their stdout byte for byte), and the
python-can plugin on channel="mqtt://BROKER/PREFIX/GATEWAY/IFACE" against a gateway MqttEndpoint
(recv what the gateway publishes, send what the gateway writes to its bus).

dump and top subscribe when they start; nothing tells the test when. A retained message published before
they start is delivered right after their SUBACK, so their first frame marks "subscribed" (dump), or is part
of the deterministic snapshot (top)."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time

import can
import paho.mqtt.client as paho
import pytest

from bridge.codec import mqtt_payload as mp
from bridge.codec import socketcan as sc
from tests.mqtt_broker import needs_mosquitto, running
from tests.test_mqtt import Side, connected, feed, pump, url

pytestmark = needs_mosquitto
START_TIMEOUT_S = 30  # a python start, paho import and CONNECT on a loaded host
T0 = 1_700_000_000_000_000_000  # ns: frame timestamps, so the log lines are known in advance


@pytest.fixture(name="mosquitto")
def _mosquitto(tmp_path):
    yield from running(tmp_path)


@pytest.fixture(name="publisher")
def _publisher(mosquitto):
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    c.connect("127.0.0.1", mosquitto.port)
    c.loop_start()
    yield c
    c.loop_stop()
    c.disconnect()


def publish(client, topic: str, frames: list, fmt: str = "native", retain: bool = False) -> None:
    """frames [(raw, ts_ns)] as one message of `fmt` on topic (gateway and interface from the topic)."""
    levels = topic.split("/")
    payload = mp.encode(fmt, levels[-3], levels[-2], frames)
    client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)


def stdout_line(proc, timeout: float = START_TIMEOUT_S) -> str:
    """The next line the process writes (it runs with PYTHONUNBUFFERED); fails with its stderr."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready and proc.poll() is None, f"no output in {timeout} s: {proc.stderr.read() if proc.poll() else ''}"
    return proc.stdout.readline()


def bridge_cmd(*args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="160")
    return subprocess.Popen([sys.executable, "-m", "bridge", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


# ------------------------------------------------------------------------------------------------ dump


def test_dump_L_prints_a_fleet_with_wildcards_byte_for_byte(mosquitto, publisher):
    """dump -L mqtt://.../fleet/+/can0 -n 6: can0 of every gateway as GATEWAY/can0 with the gateway's
    timestamps, in candump -L lines; can1 and another prefix are not subscribed; -n exits after 6 frames."""
    publish(publisher, "fleet/gw0/can0/rx", [(sc.pack_can(0x7FF, b"\x00"), T0)], retain=True)
    dump = bridge_cmd("dump", "-L", "-n", "6", f"mqtt://127.0.0.1:{mosquitto.port}/fleet/+/can0")
    try:
        assert stdout_line(dump) == "(1700000000.000000) gw0/can0 7FF#00\n"  # subscribed
        publish(publisher, "fleet/gw1/can0/rx", [(sc.pack_can(0x123, bytes.fromhex("11223344")), T0 + 1_000),
                                                 (sc.pack_can(0x18DAF110 | sc.CAN_EFF_FLAG, b"\x02\x10\x03"),
                                                  T0 + 2_000_999)])
        publish(publisher, "fleet/gw1/can1/rx", [(sc.pack_can(0x555, b"\x55"), T0)])  # another interface
        publish(publisher, "other/gw1/can0/rx", [(sc.pack_can(0x555, b"\x55"), T0)])  # another prefix
        rtr = sc.pack_can(0x7DF | sc.CAN_RTR_FLAG, b"", length=8)
        fd = sc.pack_canfd(0x1F5, bytes(range(12)), sc.CANFD_BRS)
        publish(publisher, "fleet/gw2/can0/rx", [(rtr, T0 + 3_000_000), (fd, T0 + 4 * 10**9)])
        publish(publisher, "fleet/gw1/can0/rx", [(sc.pack_can(0x001, b""), T0 + 5 * 10**9)])
        out, err = dump.communicate(timeout=START_TIMEOUT_S)
    finally:
        dump.kill() if dump.poll() is None else None
    assert dump.returncode == 0, err
    assert out == ("(1700000000.000001) gw1/can0 123#11223344\n"
                   "(1700000000.002000) gw1/can0 18DAF110#021003\n"
                   "(1700000000.003000) gw2/can0 7DF#R8\n"
                   "(1700000004.000000) gw2/can0 1F5##5000102030405060708090A0B\n"  # flags FDF|BRS
                   "(1700000005.000000) gw1/can0 001#\n")


def test_dump_screen_format_with_filters_and_json_payloads(mosquitto, publisher):
    """The screen format (candump's columns; the name column as wide as GATEWAY/IFACE), a candump filter
    after the URL, format=json in the URL's query."""
    publish(publisher, "fleet/gw0/can0/rx", [(sc.pack_can(0x100, b"\x01"), T0)], fmt="json", retain=True)
    dump = bridge_cmd("dump", "-n", "3", f"mqtt://127.0.0.1:{mosquitto.port}/fleet/+/+?format=json,100:7F0")
    try:
        assert stdout_line(dump) == "  gw0/can0  100   [1]  01\n"
        publish(publisher, "fleet/gw1/can3/rx", [(sc.pack_can(0x123, b"\x11"), T0),  # filtered out
                                                 (sc.pack_can(0x10A, bytes.fromhex("DEADBEEF")), T0)], fmt="json")
        publish(publisher, "fleet/gw1/can0/rx", [(sc.pack_can(0x101, b""), T0)], fmt="json")
        out, err = dump.communicate(timeout=START_TIMEOUT_S)
    finally:
        dump.kill() if dump.poll() is None else None
    assert dump.returncode == 0, err
    assert out == "  gw1/can3  10A   [4]  DE AD BE EF\n  gw1/can0  101   [0] \n"


def test_dump_says_why_it_cannot_open_a_broker(tmp_path):
    from tests.mqtt_broker import free_port

    res = subprocess.run([sys.executable, "-m", "bridge", "dump", f"mqtt://127.0.0.1:{free_port()}/fleet/+/can0"],
                         capture_output=True, text=True, timeout=START_TIMEOUT_S)
    assert res.returncode == 1 and "Connection refused" in res.stderr, res.stderr
    res = subprocess.run([sys.executable, "-m", "bridge", "dump", "mqtt://127.0.0.1/fleet/can0"],
                         capture_output=True, text=True, timeout=START_TIMEOUT_S)
    assert res.returncode == 2 and "expected mqtt://BROKER/PREFIX/GATEWAY/IFACE" in res.stderr, res.stderr


# ------------------------------------------------------------------------------------------------- top


def test_top_once_on_a_fleet_url(mosquitto, publisher):
    """top --once on mqtt://.../fleet/+/can0: one row per (GATEWAY/can0, ID) with count, len and data."""
    publish(publisher, "fleet/gw1/can0/rx", [(sc.pack_can(0x123, bytes([i, 0x22])), T0 + i * 10**7)
                                             for i in range(5)], retain=True)
    publish(publisher, "fleet/gw2/can0/rx", [(sc.pack_can(0x12345678 | sc.CAN_EFF_FLAG, b"\xAA\xBB"), T0)] * 3,
            retain=True)
    res = subprocess.run([sys.executable, "-m", "bridge", "top", "--once", "--duration", "3",
                          f"mqtt://127.0.0.1:{mosquitto.port}/fleet/+/can0"],
                         capture_output=True, text=True, timeout=START_TIMEOUT_S, env=dict(os.environ, COLUMNS="160"))
    assert res.returncode == 0, res.stderr
    rows = {tuple(line.split()[:2]): line.split() for line in res.stdout.splitlines()
            if line.startswith("gw")}
    assert set(rows) == {("gw1/can0", "123"), ("gw2/can0", "12345678")}, res.stdout
    assert rows["gw1/can0", "123"][2] == "5" and rows["gw1/can0", "123"][-2:] == ["04", "22"]
    assert rows["gw2/can0", "12345678"][2] == "3" and rows["gw2/can0", "12345678"][-2:] == ["AA", "BB"]
    assert "2 IDs, 8 frames" in res.stdout


# --------------------------------------------------------------------------------------------- python-can


def test_python_can_plugin_recv_and_send_through_the_broker(mosquitto):
    """can.Bus(interface="canbridge", channel="mqtt://...") against a gateway endpoint (read_only=0): recv()
    gets what the gateway's bus read (classic, EFF, RTR, CAN FD; the gateway's timestamps; channel
    GATEWAY/IFACE), send() reaches the gateway's bus."""
    gw = Side(url(mosquitto, gateway="gw1", read_only=0))
    bus = None
    try:
        assert pump([gw], connected(gw))
        bus = can.Bus(interface="canbridge", channel=f"mqtt://127.0.0.1:{mosquitto.port}/fleet/gw1/can0")
        assert bus.channel_info.startswith("canbridge gw1/can0")
        frames = [(sc.pack_can(0x123, b"\x01\x02"), T0), (sc.pack_can(0x18DAF110 | sc.CAN_EFF_FLAG, b"\x03"), T0 + 1),
                  (sc.pack_can(0x7DF | sc.CAN_RTR_FLAG, b"", length=3), T0 + 2),
                  (sc.pack_canfd(0x1F5, bytes(range(16)), sc.CANFD_BRS), T0 + 3)]
        feed(gw, frames)
        assert pump([gw], lambda: gw.peer.counters.tx_frames == len(frames))
        got = [bus.recv(timeout=5) for _ in frames]
        assert None not in got
        assert [(m.arbitration_id, m.is_extended_id, m.is_remote_frame, m.is_fd, m.bitrate_switch, bytes(m.data),
                 m.dlc, m.channel) for m in got] == [
            (0x123, False, False, False, False, b"\x01\x02", 2, "gw1/can0"),
            (0x18DAF110, True, False, False, False, b"\x03", 1, "gw1/can0"),
            (0x7DF, False, True, False, False, b"", 3, "gw1/can0"),
            (0x1F5, False, False, True, True, bytes(range(16)), 16, "gw1/can0")]
        assert [round(m.timestamp * 1e9) - T0 for m in got] == [0, 0, 0, 0]  # float seconds: ns are lost
        assert bus.recv(timeout=0.2) is None

        bus.send(can.Message(arbitration_id=0x321, data=b"\xCA\xFE", is_extended_id=False))
        bus.send(can.Message(arbitration_id=0x1ABCDEF, data=bytes(12), is_fd=True, is_extended_id=True))
        assert pump([gw], lambda: len(gw.bus.frames) == 2)
        assert [sc.can_id_of(raw) for raw, _ts in gw.bus.frames] == [0x321, 0x1ABCDEF | sc.CAN_EFF_FLAG]
        assert gw.bus.frames[0][0] == sc.pack_can(0x321, b"\xCA\xFE")
        assert gw.bus.frames[1][0] == sc.pack_canfd(0x1ABCDEF | sc.CAN_EFF_FLAG, bytes(12), 0)
    finally:
        if bus is not None:
            bus.shutdown()
        gw.close()


def test_python_can_plugin_wildcard_channel_receives_a_fleet_and_refuses_send(mosquitto):
    gws = [Side(url(mosquitto, gateway=f"gw{i}")) for i in range(2)]
    bus = None
    try:
        assert pump(gws, connected(*gws))
        bus = can.Bus(interface="canbridge", channel=f"mqtt://127.0.0.1:{mosquitto.port}/fleet/+/can0", fd=False)
        for i, gw in enumerate(gws):
            feed(gw, [(sc.pack_can(0x100 + i, b"\x00"), T0), (sc.pack_canfd(0x200, bytes(16), 0), T0)])
        assert pump(gws, lambda: all(g.peer.counters.tx_frames == 2 for g in gws))
        got = []
        deadline = time.monotonic() + 5
        while len(got) < 2 and time.monotonic() < deadline:
            if (m := bus.recv(timeout=0.5)) is not None:
                got.append(m)
        assert sorted((m.channel, m.arbitration_id) for m in got) == [("gw0/can0", 0x100), ("gw1/can0", 0x101)]
        assert bus.recv(timeout=0.2) is None and bus.dropped["fd_disabled"] == 2  # fd=False
        with pytest.raises(can.CanOperationError, match="wildcard"):
            bus.send(can.Message(arbitration_id=1, is_extended_id=False))
    finally:
        if bus is not None:
            bus.shutdown()
        for g in gws:
            g.close()


def test_python_can_plugin_unreachable_broker_is_an_initialization_error():
    from tests.mqtt_broker import free_port

    with pytest.raises(can.CanInitializationError, match="cannot connect"):
        can.Bus(interface="canbridge", channel=f"mqtt://127.0.0.1:{free_port()}/fleet/gw1/can0")
    with pytest.raises(can.CanInitializationError, match="expected mqtt://BROKER/PREFIX/GATEWAY/IFACE"):
        can.Bus(interface="canbridge", channel="mqtt://127.0.0.1/fleet")


def test_an_idle_dump_source_keeps_its_connection(mosquitto, publisher):
    """dump/top sleep in poll() while a fleet is quiet, so the source asks for no MQTT keepalive (nothing would
    send its PINGREQs: the broker dropped an idle dump after 1.5 x keepalive) and the kernel's TCP keepalive
    watches the link instead."""
    from bridge.tools.live import mqtt_source as ms

    src = ms.MqttSource(f"mqtt://127.0.0.1:{mosquitto.port}/fleet/+/can0")
    try:
        assert ms.KEEPALIVE_S == 0
        sock = src.client.socket()
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == ms.TCP_KEEPIDLE_S
        assert not select.select([sock], [], [], 3.0)[0]  # idle: the broker says nothing, closes nothing
        publish(publisher, "fleet/gw1/can0/rx", [(sc.pack_can(0x123, b"\x01"), T0)])
        assert select.select([sock], [], [], 5.0)[0]
        assert [(rx.iface, rx.raw) for rx in src.read()] == [("gw1/can0", sc.pack_can(0x123, b"\x01"))]
    finally:
        src.close()


def _client_of(broker):
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    return c


def _read_on(src, fd: int, timeout: float = 10.0) -> list:
    """What dump does: poll the descriptor it registered once, then read()."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if src.waiting() or poller.poll(200):
            got = src.read()
            if got:
                return got
    return []


def test_dump_source_fails_over_to_the_next_broker_and_rides_a_restart(mosquitto, tmp_path, monkeypatch, caplog):
    """dump/top and the python-can MQTT bus take the gateways' broker list and keep it: the node in use
    killed, the source moves to the next of the list and reads on, behind the same descriptor (dump's
    poller is registered once), with a warning naming both nodes; one broker restarted on its port, the
    source comes back to it; no broker within FAILOVER_S: SourceClosed, as before the list existed."""
    from bridge.tools.live import mqtt_source as ms
    from bridge.tools.live.source import SourceClosed
    from tests.mqtt_broker import Broker

    other = Broker(tmp_path / "other").start()
    a, b = (f"127.0.0.1:{x.port}" for x in (mosquitto, other))
    src = ms.MqttSource(f"mqtt://{a},{b}/fleet/+/can0")
    fd = src.fileno()
    one = [(sc.pack_can(0x123, b"\x01"), T0)]
    two = [(sc.pack_can(0x124, b"\x02"), T0 + 1)]
    try:
        assert str(src.broker) == a
        pub_a = _client_of(mosquitto)
        publish(pub_a, "fleet/gw1/can0/rx", one)
        assert [rx.raw for rx in _read_on(src, fd)] == [one[0][0]]
        pub_a.loop_stop()
        mosquitto.kill()  # SIGKILL: the node in use is gone
        with caplog.at_level("WARNING", logger=ms.__name__):
            assert _read_on(src, fd, timeout=3) == []  # the loss is read, the source is now on the other node
        assert str(src.broker) == b and src.fileno() == fd
        assert f"connection to the broker {a} lost" in caplog.text and f"now on {b} (MQTT 5)" in caplog.text
        pub_b = _client_of(other)
        publish(pub_b, "fleet/gw1/can0/rx", two)
        assert [rx.raw for rx in _read_on(src, fd)] == [two[0][0]]
        pub_b.loop_stop()
        pub_b.disconnect()

        other.restart()  # one broker left, restarted on its port: the source goes back to it
        assert _read_on(src, fd, timeout=3) == []
        assert str(src.broker) == b
        pub_b = _client_of(other)
        publish(pub_b, "fleet/gw1/can0/rx", one)
        assert [rx.raw for rx in _read_on(src, fd)] == [one[0][0]]
        pub_b.loop_stop()
        pub_b.disconnect()

        monkeypatch.setattr(ms, "FAILOVER_S", 1.0)
        other.kill()
        t0 = time.monotonic()
        with pytest.raises(SourceClosed, match=rf"connection to the broker {b} lost .*no broker answered in 1 s"):
            _read_on(src, fd, timeout=10)
        assert time.monotonic() - t0 < 5
    finally:
        src.close()
        other.stop()


def test_dump_source_over_tls_with_a_password_and_a_clear_error_for_a_bad_ca(tmp_path):
    """MqttSource builds its paho client in the peer's one place (mqtt_connection.new_client): TLS from
    bridge.security.tls (the broker's CA, our client certificate), the user and password_file."""
    from bridge.errors import ConfigError
    from bridge.tools.live.mqtt_source import MqttSource
    from tests.mqtt_broker import Broker
    from tests.pki import make_pki
    from tests.test_mqtt import counted

    pki = make_pki(tmp_path / "pki")
    broker = Broker(tmp_path / "tls", tls=pki, require_cert=True, users={"ops": "pw"}).start()
    pw = tmp_path / "pw"
    pw.write_text("pw\n")
    base = f"mqtts://ops@localhost:{broker.port}/fleet/+/can0"
    tls = f"tls_ca={pki['ca']}&tls_cert={pki['client_cert']}&tls_key={pki['client_key']}&password_file={pw}"
    src = None
    try:
        src = MqttSource(f"{base}?{tls}")
        gw = Side(f"mqtts://ops@localhost:{broker.port}/fleet?gateway=gw1&{tls}")
        assert pump([gw], connected(gw))
        feed(gw, counted(3))
        got, deadline = [], time.monotonic() + 5
        while len(got) < 3 and time.monotonic() < deadline:
            pump([gw], lambda: False, timeout=0.05)
            got += src.read() if src.waiting() or select.select([src.fileno()], [], [], 0.05)[0] else []
        gw.close()
        assert [rx.iface for rx in got] == ["gw1/can0"] * 3
        bad = tmp_path / "not-a-ca.pem"
        bad.write_text("nothing\n")
        with pytest.raises(ConfigError, match="tls_ca"):
            MqttSource(f"{base}?tls_ca={bad}")
    finally:
        if src is not None:
            src.close()
        broker.stop()
