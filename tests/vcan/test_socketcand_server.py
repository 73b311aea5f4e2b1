"""canbridge as a socketcand server, driven by python-can 4.6.1's own `socketcand` interface."""

import socket
import subprocess
import sys
import time

import can
import pytest

from bridge.codec.candump import read_log
from bridge.frame import CanFrame
from bridge.tools.logs import probe
from bridge.tools.rig.demo import DEFAULT_TRACE

pytestmark = pytest.mark.vcan

PORT = 29536
TRACE = DEFAULT_TRACE


@pytest.fixture
def server(tmp_path, vcan0, vcan1):
    conf = tmp_path / "bridge.toml"
    conf.write_text(
        f'[[interface]]\nname = "{vcan0}"\nerror_frames = true\n'
        f'[[interface]]\nname = "{vcan1}"\n'
        f'[[peer]]\nurl = "socketcand://127.0.0.1:{PORT}"\n'
    )
    log = tmp_path / "bridge.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "bridge", "run", "-c", str(conf)], stdout=out, stderr=out)
    deadline = time.monotonic() + 60  # python-can's client retries for 10 s only: wait for the port first
    while True:
        try:
            socket.create_connection(("127.0.0.1", PORT), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    yield proc
    proc.terminate()
    assert proc.wait(20) == 0, log.read_text()


def client(channel):
    return can.Bus(interface="socketcand", host="127.0.0.1", port=PORT, channel=channel)


def test_python_can_client_receives_and_sends(server, vcan0):
    traffic = subprocess.Popen(["cangen", vcan0, "-g", "2", "-I", "7FF", "-L", "1"])  # frames during the handshake
    try:
        bus = client(vcan0)  # raises if "< ok >" after rawmode were coalesced with a frame
    finally:
        traffic.terminate()
        traffic.wait()
    with bus, can.Bus(interface="socketcan", channel=vcan0) as local:
        time.sleep(0.2)
        while bus.recv(0.2) is not None:  # drain the cangen frames
            pass
        sent = [
            can.Message(arbitration_id=0x123, data=b"", is_extended_id=False),
            can.Message(arbitration_id=0x0000ABCD, data=b"\x01\x02", is_extended_id=True),
            can.Message(arbitration_id=0x7FF, data=bytes(range(8)), is_extended_id=False),
            can.Message(arbitration_id=0x004, is_error_frame=True, data=bytes(8)),
        ]
        before = time.time()
        for m in sent:
            local.send(m)
        got = [bus.recv(10) for _ in sent]
        assert all(g is not None for g in got), got
        assert [(g.arbitration_id, g.is_extended_id, bytes(g.data)) for g in got[:3]] == [
            (0x123, False, b""), (0x0000ABCD, True, b"\x01\x02"), (0x7FF, False, bytes(range(8)))]
        assert got[3].is_error_frame and got[3].arbitration_id == 0x004
        assert all(before - 1 < g.timestamp < time.time() + 1 for g in got)  # the gateway's kernel RX time

        for m in sent[:3]:
            bus.send(m)
        back = [local.recv(10) for _ in sent[:3]]
        assert [(CanFrame.from_message(b).can_id, b.is_extended_id, bytes(b.data)) for b in back] == [
            (0x123, False, b""), (0x0000ABCD, True, b"\x01\x02"), (0x7FF, False, bytes(range(8)))]


RELAY = """
import logging, sys, can
logging.getLogger("can.interfaces.socketcand").setLevel(logging.ERROR)  # one warning per partial read
a = can.Bus(interface="socketcand", host="127.0.0.1", port=%d, channel=sys.argv[1])
b = can.Bus(interface="socketcand", host="127.0.0.1", port=%d, channel=sys.argv[2])
print("ready", flush=True)
for _ in range(int(sys.argv[3])):
    m = a.recv(60)
    if m is None:
        sys.exit("relay: nothing for 60 s")
    b.send(m)
""".replace("%d", str(PORT))


def test_durango_through_python_can_and_back(server, vcan0, vcan1):
    """vcan0 -> canbridge (socketcand) -> python-can client A -> python-can client B -> canbridge -> vcan1,
    the relay being a separate python-can program."""
    frames = [(ts, raw) for ts, _iface, raw in read_log(TRACE)]
    relay = subprocess.Popen([sys.executable, "-c", RELAY, vcan0, vcan1, str(len(frames))],
                             stdout=subprocess.PIPE, text=True)
    assert relay.stdout.readline().strip() == "ready"
    tx = probe.open_can(vcan0, recv_own=True)
    rx = probe.open_can(vcan1)
    sent, got = [], []
    pump = lambda: (probe.drain(tx, sent, True), probe.drain(rx, got))  # noqa: E731
    probe.replay(tx, frames, speed=0.5, on_wait=pump)  # python-can in the test VM: ~2k frames/s each way
    deadline = time.monotonic() + 180
    while len(got) < len(frames) and time.monotonic() < deadline and relay.poll() is None:
        pump()
        time.sleep(0.05)
    pump()
    relay.wait(30)
    report = probe.compare(sent, got)
    print(report.summary())
    assert relay.returncode == 0
    assert report.sent == 76821
    assert report.complete, report.summary()


def test_python_can_detect_beacon_finds_the_server(netns, tmp_path):
    """Two hosts (namespaces joined by veth); the bridge beacons to the subnet broadcast address
    and python-can's own detect_beacon() on the other host finds its URL and bus."""
    gw, other = netns("cbgw"), netns("cbot")
    subprocess.run(["ip", "link", "add", "vb0", "netns", gw, "type", "veth", "peer", "vb0", "netns", other],
                   check=True)
    for ns, addr in ((gw, "10.201.0.1/24"), (other, "10.201.0.2/24")):
        subprocess.run(["ip", "-n", ns, "addr", "add", addr, "brd", "+", "dev", "vb0"], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "vb0", "up"], check=True)
    subprocess.run(["ip", "-n", gw, "link", "add", "vcan0", "type", "vcan"], check=True)
    subprocess.run(["ip", "-n", gw, "link", "set", "vcan0", "up"], check=True)
    log = open(tmp_path / "bridge.log", "wb")
    bridge = subprocess.Popen(["ip", "netns", "exec", gw, sys.executable, "-m", "bridge", "vcan0",
                               "socketcand://10.201.0.1:29536?beacon=10.201.0.255"], stdout=log, stderr=log)
    try:
        found = subprocess.run(
            ["ip", "netns", "exec", other, sys.executable, "-c",
             "import can.interfaces.socketcand.socketcand as s; print(s.detect_beacon(20000))"],
            capture_output=True, text=True, timeout=120)
    finally:
        bridge.terminate()
        assert bridge.wait(20) == 0, (tmp_path / "bridge.log").read_text()
    assert found.returncode == 0, found.stderr
    assert "'host': '10.201.0.1'" in found.stdout and "'port': 29536" in found.stdout, found.stdout
    assert "'channel': 'vcan0'" in found.stdout and "'interface': 'socketcand'" in found.stdout
