"""End to end: two canbridge processes in two network namespaces joined by veth, a vcan in each.
Frames go into the gateway's vcan0 and are recorded on the remote's vcan0 (see bridge/tools/rig/rig.py)."""

import json
import re
import socket
import time
from pathlib import Path

import pytest

from bridge.codec import native
from bridge.codec import socketcan as sc
from bridge.codec.candump import read_log
from bridge.tools.logs import probe
from bridge.tools.rig.demo import DEFAULT_TRACE
from bridge.tools.rig.rig import GW_ADDR, REMOTE_ADDR, TCP_PORT, UDP_PORT, Rig
from bridge.hw import netns

pytestmark = pytest.mark.vcan

TRACE = DEFAULT_TRACE


@pytest.fixture(scope="module")
def durango():
    return [(ts, raw) for ts, _iface, raw in read_log(TRACE)]


def counters_at_exit(log_text: str) -> dict:
    """The bridge logs its counters as JSON when it stops."""
    found = re.findall(r"counters: (\{.*\})", log_text)
    assert found, log_text[-2000:]
    return json.loads(found[-1])


@pytest.mark.parametrize("transport", ["tcp", "udp", "cannelloni+udp", "cannelloni+tcp"])
def test_durango_trace_arrives_complete_in_order(durango, transport):
    with Rig() as rig:
        rig.start_pair(transport)
        report = rig.run_traffic(durango, speed=4.0)
        codes = rig.stop_bridges()
    print(f"{transport}: {report.summary()}")
    assert report.sent == len(durango) == 76821
    assert report.received == report.sent
    assert report.complete, report.summary()  # byte-exact (id, flags, data), in order per CAN ID
    assert codes == [0, 0]


def fd_zoo():
    """Every valid CAN FD length with BRS/ESI combinations, SFF and EFF; classic, RTR, len8_dlc."""
    frames = []
    t = 1_700_000_000_000_000_000
    for i, n in enumerate(sc.FD_LENGTHS):
        for flags in (0, sc.CANFD_BRS, sc.CANFD_ESI, sc.CANFD_BRS | sc.CANFD_ESI):
            can_id = (sc.CAN_EFF_FLAG | (0x1ABCDE00 + i)) if flags & 1 else (0x100 + i)
            frames.append((t, sc.pack_canfd(can_id, bytes((i + k) & 0xFF for k in range(n)), flags)))
            t += 1_000_000
    for n in range(9):
        frames.append((t, sc.pack_can(0x200 + n, bytes(range(n)))))
        frames.append((t, sc.pack_can(sc.CAN_RTR_FLAG | (0x300 + n), length=n)))
        t += 1_000_000
    frames.append((t, sc.pack_can(0x400, bytes(8), len8_dlc=15)))
    return frames


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_can_fd_every_length_and_flags(transport):
    frames = fd_zoo()  # len8_dlc included: the native protocol carries it (cannelloni does not)
    with Rig() as rig:
        rig.start_pair(transport)
        report = rig.run_traffic(frames, speed=1.0)
        assert rig.stop_bridges() == [0, 0]
        logs = rig.all_logs()
    assert report.sent == len(frames)
    assert report.complete, report.summary() + "\n" + logs


def steady(n, start_id=0x100):
    """n classic frames 1 ms apart, each with a unique counter in its data."""
    t0 = 1_700_000_000_000_000_000
    return [(t0 + i * 1_000_000, sc.pack_can(start_id + (i % 16), i.to_bytes(4, "big"))) for i in range(n)]


def test_tcp_peer_restart_midstream_reconnects_and_counts():
    """The remote (TCP server here) is killed with SIGKILL mid-stream and restarted: the gateway
    (client) must not crash, must count what it could not send (held while disconnected, then
    dropped as older than max_age), and must resume forwarding."""
    with Rig() as rig:
        server_args = ["vcan0", f"tcp-listen://{REMOTE_ADDR}:{TCP_PORT}"]
        rig.start_bridge("remote", server_args)
        client = rig.start_bridge("gateway", ["vcan0", f"tcp://{REMOTE_ADDR}:{TCP_PORT}?max_age=0.5"])
        with rig.sockets() as (tx, rx):
            rig.wait_path_up(tx, rx)
            server = rig.procs[0]
            server.kill()
            server.wait()
            sent_while_down = steady(300, 0x100)
            probe.replay(tx, sent_while_down, speed=1.0)  # 0.3 s with nobody listening
            time.sleep(1.0)  # older than max_age by the time the client reconnects
            rig.procs.remove(server)
            rig.start_bridge("remote", server_args)
            rig.wait_path_up(tx, rx)  # reconnected within the backoff cap (5 s)
            after = steady(2000, 0x200)
            seen, got = [], []
            probe.replay(tx, after, speed=4.0, on_wait=lambda: (probe.drain(tx, seen, True), probe.drain(rx, got)))
            deadline = time.monotonic() + 10
            while len(got) < len(after) and time.monotonic() < deadline:
                probe.drain(tx, seen, True)
                probe.drain(rx, got)
                time.sleep(0.05)
        assert client.poll() is None, "the client bridge died"
        assert rig.stop_bridges() == [0, 0]
        report = probe.compare(after, got)
        assert report.complete, report.summary()
        stats = counters_at_exit(rig.log_text("gateway"))
        link = stats[f"tcp://{REMOTE_ADDR}:{TCP_PORT}"]
        assert link["reconnects"] >= 1
        lost = link["dropped"].get("not_connected", 0) + link["dropped"].get("stale", 0)
        assert lost >= 250  # frames sent while down are counted


def _garbage_tcp(rig):
    with netns.inside(rig.remote):
        s = socket.create_connection((GW_ADDR, TCP_PORT), timeout=5)
    s.sendall(b"CNBR\x01\x00" + bytes([0x02, 0, 0, 5]) + b"\xff" * 5)  # FRAME before HELLO
    s.settimeout(5)
    data = b""
    try:  # the gateway answers with its HELLO, then resets the malformed connection (SO_LINGER 0)
        while chunk := s.recv(4096):
            data += chunk
    except ConnectionResetError:
        pass  # the RST may also discard the HELLO still unread here
    s.close()
    assert not data or data.startswith(native.STREAM_PREAMBLE)


def _garbage_udp(rig):
    with netns.inside(rig.remote):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((REMOTE_ADDR, 0))  # the peer's address, another port: passes the address check
    for junk in (b"CNBR\x01\x00" + b"\x00" * 8 + b"\x02\x00\x00\x50" + b"\x00" * 8, b"\x00" * 40, b"x"):
        s.sendto(junk, (GW_ADDR, UDP_PORT))
    s.close()


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_malformed_input_is_rejected_and_the_other_peer_keeps_flowing(transport):
    frames = steady(3000)
    with Rig() as rig:
        rig.start_pair(transport)
        with rig.sockets() as (tx, rx):
            rig.wait_path_up(tx, rx)
            sent, got = [], []
            first, second = frames[:1500], frames[1500:]
            probe.replay(tx, first, speed=4.0, on_wait=lambda: (probe.drain(tx, sent, True), probe.drain(rx, got)))
            (_garbage_tcp if transport == "tcp" else _garbage_udp)(rig)
            probe.replay(tx, second, speed=4.0, on_wait=lambda: (probe.drain(tx, sent, True), probe.drain(rx, got)))
            deadline = time.monotonic() + 10
            while len(got) < len(frames) and time.monotonic() < deadline:
                probe.drain(tx, sent, True)
                probe.drain(rx, got)
                time.sleep(0.05)
        assert rig.stop_bridges() == [0, 0]
        gw_log = rig.log_text("gateway")
        remote_log = rig.log_text("remote")
    report = probe.compare(frames, got)
    assert report.complete, f"{report.summary()}\ngateway: {counters_at_exit(gw_log)}\n" \
        f"remote: {counters_at_exit(remote_log)}\nsoftnet_stat:\n{Path('/proc/net/softnet_stat').read_text()}"
    stats = counters_at_exit(gw_log)
    if transport == "tcp":
        assert "malformed stream: hello_expected" in gw_log
        # a connection that never sent a valid HELLO is counted apart from the bridges' own
        assert stats[f"tcp-listen://{GW_ADDR}:{TCP_PORT} (unidentified clients)"]["errors"] == {"hello_expected": 1}
        assert stats[f"tcp-listen://{GW_ADDR}:{TCP_PORT}"]["errors"] == {}
    else:
        assert "dropped malformed datagram" in gw_log
        errors = stats[f"udp://{REMOTE_ADDR}:{UDP_PORT}"]["errors"]
        protocol_errors = {k: v for k, v in errors.items() if not k.startswith(("send_", "recv_"))}
        assert sum(protocol_errors.values()) == 3, errors


def test_cannelloni_golden_datagram_reaches_the_bus():
    """The worked example from cannelloni's tcpdump (wire-formats.md 2a), sent from a raw UDP
    socket on the peer host, becomes EFF frame 0x19FA044D on the bus; a malformed one is dropped."""
    golden = bytes.fromhex("02 00 23 00 01 99 FA 04 4D 08 0C 11 01 00 F2 1D 0B 02")
    with Rig() as rig:
        rig.start_bridge("remote", ["vcan0", f"cannelloni+udp://{GW_ADDR}:{UDP_PORT}?bind={REMOTE_ADDR}:{UDP_PORT}"])
        with netns.inside(rig.remote):
            rx = probe.open_can("vcan0")
        with netns.inside(rig.gw):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((GW_ADDR, 0))
        got: list = []
        deadline = time.monotonic() + 30
        while not got and time.monotonic() < deadline:  # until the bridge is up and bound
            s.sendto(bytes.fromhex("02 00 00 00 01 00 00 01 23 41") + b"\x00", (REMOTE_ADDR, UDP_PORT))  # bad: len 0x41
            s.sendto(golden, (REMOTE_ADDR, UDP_PORT))
            time.sleep(0.2)
            probe.drain(rx, got)
        rx.close()
        s.close()
        assert rig.stop_bridges() == [0]
        log = rig.log_text("remote")
    can_id, n, flags, _len8, data = sc.unpack(got[0][1])
    assert (can_id, n, flags, data) == (sc.CAN_EFF_FLAG | 0x19FA044D, 8, 0, bytes.fromhex("0C 11 01 00 F2 1D 0B 02"))
    assert {sc.unpack(raw) for _, raw in got} == {sc.unpack(got[0][1])}  # nothing from the bad datagrams
    stats = counters_at_exit(log)[f"cannelloni+udp://{GW_ADDR}:{UDP_PORT}"]
    assert stats["errors"].get("len_too_large", 0) >= 1
