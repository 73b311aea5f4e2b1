"""TLS with mutual authentication and sealed UDP between two bridges of the rig (bridge/tools/rig/rig.py): frames cross,
and a peer without a valid certificate or key can neither connect nor inject; every failure is counted.

The gateway (10.200.0.1) listens / is the UDP peer of the remote (10.200.0.2); attackers are sockets this
test opens inside the namespaces. Injected frames use CAN ID 666, which nothing legitimate sends."""

from __future__ import annotations

import os
import socket
import ssl
import struct
import time

import pytest

from bridge.codec import native, sealed
from bridge.codec import socketcan as sc
from bridge.tools.logs import probe
from bridge.tools.rig.rig import GW_ADDR, REMOTE_ADDR, TCP_PORT, UDP_PORT, Rig
from bridge.hw import netns
from tests.pki import make_pki
from tests.vcan.test_e2e import counters_at_exit, steady

pytestmark = pytest.mark.vcan

EVIL_ID = 0x666
HELLO = native.Hello(version=1, capabilities=0, heartbeat_ms=1000, channels=("vcan0",))
EVIL_FRAMES = [(sc.pack_can(EVIL_ID, b"evil"), 0)]
PSK = os.urandom(32)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def native_stream_bytes() -> bytes:
    return native.STREAM_PREAMBLE + native.encode_hello(HELLO) + native.encode_frames(0, EVIL_FRAMES)


def until(cond, timeout=60.0, step=0.05):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(step)


def send_frames_and_collect(rig, tx_side, frames, settle_s=3.0):
    """Send frames into tx_side's vcan0 and return what the other side's vcan0 received meanwhile."""
    rx_ns, tx_ns = (rig.gw, rig.remote) if tx_side == "remote" else (rig.remote, rig.gw)
    with netns.inside(tx_ns):
        tx = probe.open_can("vcan0")
    with netns.inside(rx_ns):
        rx = probe.open_can("vcan0")
    got: list = []
    try:
        for _ts, raw in frames:
            probe.send(tx, raw)
        until(lambda: probe.drain(rx, got) >= 0 and len(got) >= len(frames), timeout=30 + settle_s)
        time.sleep(settle_s)
        probe.drain(rx, got)
    finally:
        tx.close()
        rx.close()
    return [raw for _ts, raw in got]


def attack_tls_server(rig, pki, who: str) -> None:
    """Connect from the remote namespace to the gateway's TLS server and try to send a frame."""
    with netns.inside(rig.remote):
        raw = socket.create_connection((GW_ADDR, TCP_PORT), timeout=30)
    try:
        if who == "plain_tcp":
            conn = raw
        else:
            ctx = ssl.create_default_context(cafile=pki["ca"])
            if who == "rogue_ca":
                ctx.load_cert_chain(pki["rogue_cert"], pki["rogue_key"])
            conn = ctx.wrap_socket(raw, server_hostname=GW_ADDR)  # TLS 1.3: the client finishes first
        conn.sendall(native_stream_bytes())
        while conn.recv(4096):  # until the server closes it (an SSLError for the TLS attackers)
            pass
    except (ssl.SSLError, ConnectionError):
        pass
    finally:
        raw.close()


def test_tls_bridges_carry_frames_and_refuse_peers_without_valid_certificates(pki):
    server = (f"tcp-listen://{GW_ADDR}:{TCP_PORT}?tls_cert={pki['server_cert']}&tls_key={pki['server_key']}"
              f"&tls_ca={pki['ca']}")
    client = (f"tcp://{GW_ADDR}:{TCP_PORT}?tls_cert={pki['client_cert']}&tls_key={pki['client_key']}"
              f"&tls_ca={pki['ca']}")
    with Rig() as rig:
        rig.start_bridge("gateway", ["vcan0", server])
        rig.start_bridge("remote", ["vcan0", client])
        frames = steady(300)
        report = rig.run_traffic(frames, speed=0)  # gateway -> remote over TLS
        assert report.received == report.sent == len(frames) and report.complete, report.summary() + rig.all_logs()
        with netns.inside(rig.gw):
            gw_bus = probe.open_can("vcan0")
        seen: list = []
        for who in ("plain_tcp", "no_certificate", "rogue_ca"):
            attack_tls_server(rig, pki, who)
        up = steady(200, start_id=0x300)  # the legitimate client keeps flowing, remote -> gateway
        got = send_frames_and_collect(rig, "remote", up)
        probe.drain(gw_bus, seen)
        gw_bus.close()
        assert rig.stop_bridges() == [0, 0]
        gw_log = rig.log_text("gateway")
    assert got == [raw for _ts, raw in up]
    assert not [raw for _ts, raw in seen if sc.can_id_of(raw) == EVIL_ID]
    counters = counters_at_exit(gw_log)[f"tcp-listen://{GW_ADDR}:{TCP_PORT}"]
    assert counters["errors"]["tls_handshake_failed"] == 3, counters
    assert gw_log.count("TLS handshake failed") == 3


def _udp_payloads(packets: list[bytes], src: str, dport: int) -> list[bytes]:
    """UDP payloads from `src` to `dport` in IPv4 packets (an AF_PACKET SOCK_DGRAM capture)."""
    out = []
    for pkt in packets:
        ihl = (pkt[0] & 0x0F) * 4
        if pkt[9] != socket.IPPROTO_UDP or socket.inet_ntoa(pkt[12:16]) != src:
            continue
        _sport, d, length, _csum = struct.unpack_from(">HHHH", pkt, ihl)
        if d == dport:
            out.append(pkt[ihl + 8: ihl + length])
    return out


def test_sealed_udp_carries_frames_and_drops_forged_and_replayed_datagrams():
    key = PSK.hex()
    with Rig() as rig:
        rig.start_bridge("gateway", ["vcan0", f"udp://{REMOTE_ADDR}:{UDP_PORT}?bind={GW_ADDR}:{UDP_PORT}&psk={key}"])
        rig.start_bridge("remote", ["vcan0", f"udp://{GW_ADDR}:{UDP_PORT}?bind={REMOTE_ADDR}:{UDP_PORT}&psk={key}"])
        frames = steady(300)
        report = rig.run_traffic(frames[:10], speed=0)  # path up: from now on the remote sees every datagram
        assert report.received == 10, report.summary() + rig.all_logs()
        # record what the gateway sends (an eavesdropper on the link): it was all received, so any copy
        # sent again is a replay (datagrams sent before the remote listened would be news to it)
        with netns.inside(rig.remote):
            capture = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
            capture.bind(("veth0", 0x0800))
        capture.setblocking(False)
        report = rig.run_traffic(frames, speed=0)
        assert report.received == report.sent == len(frames) and report.complete, report.summary() + rig.all_logs()
        packets = []
        while True:
            try:
                packets.append(capture.recv(65535))
            except BlockingIOError:
                break
        capture.close()
        recorded = _udp_payloads(packets, GW_ADDR, UDP_PORT)
        assert recorded and all(sealed.is_sealed(d) for d in recorded)
        with netns.inside(rig.gw):  # the attacker sits on the gateway's address (it is the accepted sender)
            evil = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            evil.bind((GW_ADDR, 0))
        with netns.inside(rig.remote):
            remote_bus = probe.open_can("vcan0")
        forged = sealed.Sealer(os.urandom(32), 1, int(time.time()) + 10).seal(
            native.DatagramEncoder(1).encode(0, EVIL_FRAMES)[0])
        plain = native.DatagramEncoder(2).encode(0, EVIL_FRAMES)[0]
        for dgram in (forged, plain, *recorded):
            evil.sendto(dgram, (REMOTE_ADDR, UDP_PORT))
        evil.close()
        time.sleep(3)
        seen: list = []
        probe.drain(remote_bus, seen)
        remote_bus.close()
        assert rig.stop_bridges() == [0, 0]
        remote_log = rig.log_text("remote")
    assert seen == []  # neither the forgeries nor the replays of the 300 frames reached the bus
    errors = counters_at_exit(remote_log)[f"udp://{GW_ADDR}:{UDP_PORT}"]["errors"]
    assert errors["auth_failed"] == 1 and errors["not_sealed"] == 1, errors
    assert errors["replayed_datagram"] == len(recorded), errors
