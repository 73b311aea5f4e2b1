"""bridge.tools.inspect.dissect (extraction API + scapy layers) and
bridge/tools/inspect/wireshark/canbridge.lua (with tshark).

The captures are real pcapng files: Ethernet/IP/TCP/UDP packets whose payloads come from our own
encoders, LINKTYPE_CAN_SOCKETCAN (227) records written the way libpcap does, and one capture of
real loopback sockets in a network namespace. tshark reads the same files through the Lua script.
"""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest
from scapy.layers.can import CAN
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import CookedLinux, Ether
from scapy.packet import Raw
from scapy.utils import PcapNgWriter, PcapWriter

import bridge
from bridge.codec import cannelloni, native
from bridge.codec import socketcand as scd
from bridge.codec.base import events
from bridge.codec.socketcan import CAN_EFF_FLAG, CAN_ERR_FLAG, CAN_RTR_FLAG, pack_can, pack_canfd, unpack
from bridge.protocols.native import NativeDatagram
from bridge.tools.inspect import dissect

LUA = Path(bridge.__file__).parent / "tools" / "inspect" / "wireshark" / "canbridge.lua"
T0 = 1_742_339_088_146_472_000  # ns; multiples of 1 us survive pcapng's default microsecond resolution
CLIENT, SERVER = "10.0.0.1", "10.0.0.2"

CLASSIC = [
    (pack_can(0x123, b"\x11\x22\x33\x44"), T0 + 1000),
    (pack_can(0x12345678 | CAN_EFF_FLAG, bytes(range(8))), T0 + 2000),
    (pack_can(0x7FF | CAN_RTR_FLAG, b"", length=3), T0 + 3000),
    (pack_can(0x000, b""), T0 + 4000),
]
FD = [
    (pack_canfd(0x1AB, bytes(range(12)), 0x01), T0 + 5000),  # BRS
    (pack_canfd(0x1ABCDEF0 | CAN_EFF_FLAG, bytes(range(64)), 0x03), T0 + 6000),  # BRS|ESI
    (pack_canfd(0x42, b"\xaa", 0), T0 + 7000),
]
LEN8 = (pack_can(0x321, bytes(8), len8_dlc=15), T0 + 8000)  # native carries len8_dlc, cannelloni not
ERROR = (pack_can(CAN_ERR_FLAG | 0x004, bytes([0, 0x10, 0, 0, 0, 0, 0, 0])), T0 + 9000)
BATCH = CLASSIC + FD


def _time(ns: int) -> Decimal:
    return Decimal(ns) / 1_000_000_000


def _write(path: Path, packets) -> Path:
    """packets: (scapy packet, time_ns, iface or None) -> pcapng (one IDB per interface name)."""
    with PcapNgWriter(str(path)) as w:
        for pkt, t, iface in packets:
            pkt.time = _time(t)
            if iface is not None:
                pkt.sniffed_on = iface
            w.write(pkt)
    return path


def _frames(wire) -> list:
    return [(f.raw, f.sent_ts_ns, f.channel) for f in wire]


# ------------------------------------------------------------------------------------- TCP builder


class TcpConn:
    """Segments of one TCP connection with real sequence numbers (handshake included)."""

    def __init__(self, sport: int, dport: int, isn_c: int = 1000, isn_s: int = 0xFFFFFF00, ipv6=False):
        self.sport, self.dport = sport, dport
        self.isn = {True: isn_c, False: isn_s}  # True: client -> server (isn_s near the wrap)
        self.ipv6 = ipv6

    def _ip(self, c2s: bool):
        a, b = (CLIENT, SERVER) if c2s else (SERVER, CLIENT)
        if self.ipv6:
            a, b = f"fd00::{a.rsplit('.', 1)[1]}", f"fd00::{b.rsplit('.', 1)[1]}"
            return IPv6(src=a, dst=b)
        return IP(src=a, dst=b)

    def pkt(self, c2s: bool, offset: int, data: bytes = b"", flags: str = "PA"):
        """Segment carrying stream bytes [offset, offset+len) of one direction (offset 0 = first byte)."""
        sp, dp = (self.sport, self.dport) if c2s else (self.dport, self.sport)
        seq = (self.isn[c2s] + 1 + offset) & 0xFFFFFFFF
        return Ether() / self._ip(c2s) / TCP(sport=sp, dport=dp, seq=seq, flags=flags) / Raw(data)

    def syn(self, c2s: bool):
        sp, dp = (self.sport, self.dport) if c2s else (self.dport, self.sport)
        return Ether() / self._ip(c2s) / TCP(sport=sp, dport=dp, seq=self.isn[c2s], flags="S" if c2s else "SA")


def _chunks(data: bytes, size: int) -> list[tuple[int, bytes]]:
    return [(i, data[i : i + size]) for i in range(0, len(data), size)]


def _completion_times(schedule, record_ends: list[int]) -> list[int]:
    """Independent model of in-order delivery: for each record end offset, the time of the first
    packet after which every byte before it has arrived. schedule: [(offset, data, t)]."""
    got = bytearray()
    have = set()
    out = {}
    for off, data, t in schedule:
        have.update(range(off, off + len(data)))
        while len(got) in have:
            got.append(0)
        for e in record_ends:
            if e not in out and len(got) >= e:
                out[e] = t
    return [out[e] for e in record_ends]


def _native_stream(batch, channel=0, channels=("vcan0", "vcan1")) -> tuple[bytes, list[int]]:
    """Preamble + HELLO + FRAME records (+ a HEARTBEAT and an unknown record in the middle);
    -> (bytes, end offset of each FRAME record)."""
    out = native.STREAM_PREAMBLE + native.encode_hello(native.Hello(capabilities=native.CAP_FD, heartbeat_ms=1000,
                                                                    channels=channels))
    ends = []
    for i, fr in enumerate(batch):
        if i == 2:
            out += native.encode_heartbeat(T0) + bytes([0x77, 0, 0, 3, 1, 2, 3])  # HEARTBEAT, unknown type
        out += native.encode_frames(channel, [fr])
        ends.append(len(out))
    return out, ends


# ------------------------------------------------------------------------------------------- tests


def test_bus_frames_from_linktype_227_and_sll(tmp_path):
    """LINKTYPE 227 records (big-endian ID, FDF on FD frames) of two CAN interfaces, mixed with an
    Ethernet interface and a Linux cooked capture (host-order ID), come back as host-order structs."""
    frames = [*CLASSIC, *FD, LEN8, ERROR]
    packets = []
    for i, (raw, t) in enumerate(frames):
        cid, n, fdf, l8, data = unpack(raw)
        record = struct.pack(">IBBBB", cid, n, fdf, 0, l8) + raw[8:]  # libpcap layout, padded as the kernel
        packets.append((CAN(record), t, f"vcan{i % 2}"))
    packets.append((Ether() / IP() / UDP(sport=1, dport=2) / b"x", T0, "eth0"))
    sll_raw = pack_can(0x5A5 | CAN_EFF_FLAG, b"\x01\x02")
    packets.append((CookedLinux(proto=12) / Raw(sll_raw), T0 + 10_000, "any"))
    path = _write(tmp_path / "bus.pcapng", packets)

    got = list(dissect.bus_frames(dissect.read_packets(path)))
    expected = [(raw, t, f"vcan{i % 2}") for i, (raw, t) in enumerate(frames)] + [(sll_raw, T0 + 10_000, "any")]
    assert [(f.raw, f.time_ns, f.iface) for f in got] == expected
    assert all(len(f.raw) == 72 and f.raw[5] & 0x04 for f in got if len(f.raw) != 16)  # FDF set

    # the file really is LINKTYPE 227 as Wireshark reads it: same ids from its SocketCAN dissector
    out = _tshark(path, ["-Y", "can.id", "-e", "can.id", "-e", "can.len"], lua=False)  # not error frames
    ids = [tuple(map(int, line.split("\t"))) for line in out]
    assert ids == [(unpack(raw)[0] & 0x1FFFFFFF, unpack(raw)[1]) for raw, _ in frames[:-1]] + [(0x5A5, 2)]


def test_bus_frames_classic_pcap(tmp_path):
    """A classic pcap (not pcapng) with linktype 227 reads too, without interface names."""
    path = tmp_path / "bus.pcap"
    with PcapWriter(str(path), linktype=227) as w:
        for raw, t in CLASSIC:
            cid, n, _, _, data = unpack(raw)
            pkt = CAN(struct.pack(">IBBBB", cid, n, 0, 0, 0) + data)
            pkt.time = _time(t)
            w.write(pkt)
    got = list(dissect.bus_frames(dissect.read_packets(path)))
    assert [(f.raw, f.time_ns, f.iface) for f in got] == [(raw, t, None) for raw, t in CLASSIC]


def _native_tcp_packets(conn: TcpConn, t0: int):
    """A native TCP connection, client -> server frames in 7-byte segments with a retransmission,
    an out-of-order pair and an overlapping retransmission; server -> client frames in one go.
    -> (packets [(pkt, t, iface)], expected WireFrame tuples)."""
    data, ends = _native_stream([*BATCH, LEN8], channel=1)
    chunks = _chunks(data, 7)
    order = list(range(len(chunks)))
    order[3], order[4] = order[4], order[3]  # out of order
    order.insert(6, 5)  # plain retransmission
    schedule = []
    t = t0
    for k, idx in enumerate(order):
        off, part = chunks[idx]
        if k == 9:  # overlapping retransmission: 3 old bytes + the next chunk's bytes
            off, part = off - 3, data[off - 3 : off + len(part)]
        t += 1000
        schedule.append((off, part, t))
    pkts = [(conn.syn(True), t0, "eth0"), (conn.syn(False), t0, "eth0")]
    pkts += [(conn.pkt(True, off, part), tt, "eth0") for off, part, tt in schedule]
    times = _completion_times(schedule, ends)
    src, dst = f"{CLIENT}:{conn.sport}", f"{SERVER}:{conn.dport}"
    expected = [(tt, "native", "tcp", src, dst, raw, ts, 1) for (raw, ts), tt in zip([*BATCH, LEN8], times)]
    back, _ = _native_stream(CLASSIC[:2], channel=0, channels=("can0",))
    t += 1000
    pkts.append((conn.pkt(False, 0, back), t, "eth0"))
    expected += [(t, "native", "tcp", dst, src, raw, ts, 0) for raw, ts in CLASSIC[:2]]
    return pkts, expected


def _tuple(f: dissect.WireFrame):
    return (f.time_ns, f.proto, f.transport, f.src, f.dst, f.raw, f.sent_ts_ns, f.channel)


def test_wire_frames_native_tcp_reassembly(tmp_path):
    conn = TcpConn(45000, dissect.NATIVE_PORT)
    pkts, expected = _native_tcp_packets(conn, T0)
    path = _write(tmp_path / "native_tcp.pcapng", pkts)
    stats: dict = {}
    got = list(dissect.wire_frames(dissect.read_packets(path), stats))
    assert [_tuple(f) for f in got] == expected
    assert {f.iface for f in got} == {"eth0"}
    assert stats.get("tcp_retransmitted_segments", 0) >= 1
    assert stats.get("tcp_out_of_order_segments", 0) >= 1
    assert not [k for k in stats if k.startswith("native_")]


def test_wire_frames_native_tcp_ipv6_in_memory():
    """The API also takes packets built in memory (float times) and IPv6 endpoints."""
    conn = TcpConn(45001, dissect.NATIVE_PORT, ipv6=True)
    data, _ = _native_stream(CLASSIC)
    pkts = [conn.syn(True), conn.pkt(True, 0, data[:10]), conn.pkt(True, 10, data[10:])]
    got = list(dissect.wire_frames(pkts))
    assert _frames(got) == [(raw, ts, 0) for raw, ts in CLASSIC]
    assert got[0].src == f"[fd00::1]:{conn.sport}" and got[0].dst == f"[fd00::2]:{dissect.NATIVE_PORT}"


def test_wire_frames_native_udp(tmp_path):
    enc = native.DatagramEncoder(0x5EED1234, mtu=98)  # smallest mtu: several datagrams
    grams = [enc.encode_control(native.encode_hello(native.Hello(channels=("vcan0",))))]
    grams += enc.encode(0, [*BATCH, LEN8])
    assert len(grams) > 3
    bad = grams[1][:-5]  # a truncated copy: rejected as a whole
    pkts = [(Ether() / IP(src=CLIENT, dst=SERVER) / UDP(sport=50000, dport=dissect.NATIVE_PORT) / g,
             T0 + i * 1000, None) for i, g in enumerate([*grams, bad])]
    stats: dict = {}
    got = list(dissect.wire_frames(dissect.read_packets(_write(tmp_path / "u.pcapng", pkts)), stats))
    assert _frames(got) == [(raw, ts, 0) for raw, ts in [*BATCH, LEN8]]
    assert {(f.proto, f.transport, f.src, f.dst) for f in got} == {
        ("native", "udp", f"{CLIENT}:50000", f"{SERVER}:{dissect.NATIVE_PORT}")}
    assert got[0].time_ns == T0 + 1000  # the datagram after the HELLO one
    assert stats == {"native_udp_truncated": 1}


def _decoded(raw: bytes) -> bytes:
    """What a cannelloni receiver builds from raw (no len8_dlc, flags BRS|ESI|FDF)."""
    cid, n, fl, _l8, data = unpack(raw)
    return pack_canfd(cid, data, fl & 3) if len(raw) == 72 else pack_can(cid, data, length=n)


def test_wire_frames_cannelloni_udp_and_tcp(tmp_path):
    frames = [*BATCH, LEN8]
    grams = cannelloni.DatagramEncoder(mtu=120).encode(frames)
    pkts = [(Ether() / IP(src=CLIENT, dst=SERVER) / UDP(sport=20000, dport=dissect.CANNELLONI_PORT) / g,
             T0 + i * 1000, None) for i, g in enumerate(grams)]
    conn = TcpConn(46000, dissect.CANNELLONI_PORT)
    stream = cannelloni.BANNER + cannelloni.encode_frames(frames)
    pkts += [(conn.syn(True), T0, None)]
    pkts += [(conn.pkt(True, off, part), T0 + 100_000 + off, None) for off, part in _chunks(stream, 11)]
    pkts += [(conn.pkt(False, 0, cannelloni.BANNER), T0 + 200_000, None)]
    stats: dict = {}
    got = list(dissect.wire_frames(dissect.read_packets(_write(tmp_path / "c.pcapng", pkts)), stats))
    expected = [_decoded(raw) for raw, _ in frames]
    assert [f.raw for f in got if f.transport == "udp"] == expected
    assert [f.raw for f in got if f.transport == "tcp"] == expected
    assert {(f.proto, f.sent_ts_ns, f.channel) for f in got} == {("cannelloni", 0, 0)}
    assert not stats


def test_wire_frames_socketcand(tmp_path):
    """Server -> client frames encoded by our socketcand session (RAW mode with FD, and BCM mode),
    client -> server commands as python-can / cansend-like clients write them."""
    session = scd.ServerSession()
    for cmd in (b"< open vcan0 >", b"< rawmode >", b"< fdframes on >"):
        session.receive_data(cmd)
    list(events(session))
    err = (pack_can(CAN_ERR_FLAG | 0x004, bytes(8)), T0 + 9000)  # RAW error messages carry no data
    raw_batch = [*CLASSIC, *FD, err]
    server_bytes = b"< hi >< ok >< ok >< ok >" + session.encode_frames(raw_batch)
    bcm = b"< frame 123 1742339088.146473 11 22 33 44  >"
    client_bytes = b"< open vcan0 >< rawmode >< send 123 2 11 22 >< send 1FFFFFFF 0  >< sendrtr 7FF 3 >" \
        b"< fdsend 100 1 12 0 1 2 3 4 5 6 7 8 9 a b >< send 12 3 zz 1 2 >"  # last one malformed
    conn = TcpConn(47000, dissect.SOCKETCAND_PORT)
    pkts = [(conn.syn(True), T0, None), (conn.syn(False), T0, None)]
    pkts += [(conn.pkt(False, off, part), T0 + 1000 + off, None) for off, part in _chunks(server_bytes, 13)]
    pkts += [(conn.pkt(False, len(server_bytes), bcm), T0 + 900_000, None)]
    pkts += [(conn.pkt(True, off, part), T0 + 1_000_000 + off, None) for off, part in _chunks(client_bytes, 17)]
    stats: dict = {}
    got = list(dissect.wire_frames(dissect.read_packets(_write(tmp_path / "s.pcapng", pkts)), stats))
    s2c = [f for f in got if f.src.endswith(f":{dissect.SOCKETCAND_PORT}")]
    c2s = [f for f in got if f.dst.endswith(f":{dissect.SOCKETCAND_PORT}")]
    assert [(f.raw, f.sent_ts_ns) for f in s2c] == [(raw, ts // 1000 * 1000) for raw, ts in raw_batch] + [
        (pack_can(0x123, b"\x11\x22\x33\x44"), T0 + 1000)]
    assert [f.raw for f in c2s] == [
        pack_can(0x123, b"\x11\x22"), pack_can(0x1FFFFFFF | CAN_EFF_FLAG, b""),
        pack_can(0x7FF | CAN_RTR_FLAG, b"", length=3), pack_canfd(0x100, bytes(range(12)), 0x01)]
    assert {(f.proto, f.transport) for f in got} == {("socketcand", "tcp")}
    assert stats == {"socketcand_bad_messages": 1}


def test_wire_frames_mid_stream_and_bound_ports(tmp_path):
    """A native flow whose start was not captured is counted (no resync), others still decode;
    bind_ports adds a port for the extraction and for the scapy layers."""
    data, _ = _native_stream(CLASSIC)
    late = TcpConn(45010, dissect.NATIVE_PORT)
    ok = TcpConn(45011, 31000)
    dissect.bind_ports(native=["tcp:31000"])
    pkts = [(late.pkt(True, 40, data[40:60]), T0, None), (late.pkt(True, 60, data[60:]), T0 + 1, None),
            (ok.syn(True), T0 + 2000, None), (ok.pkt(True, 0, data), T0 + 3000, None)]
    stats: dict = {}
    got = list(dissect.wire_frames(dissect.read_packets(_write(tmp_path / "m.pcapng", pkts)), stats))
    assert _frames(got) == [(raw, ts, 0) for raw, ts in CLASSIC]
    assert stats == {"native_tcp_bad_magic": 1}
    assert isinstance(pkts[-1][0][TCP].payload, Raw)  # built before: now dissect a fresh copy
    again = Ether(bytes(pkts[-1][0]))
    assert again.haslayer(dissect.NativePreamble) and len(again[dissect.NativePreamble].records) == 7
    with pytest.raises(ValueError):
        dissect.bind_ports(socketcand=["udp:1234"])


def test_wire_frames_tcp_gap_and_new_connection():
    """A segment that never arrives: the flow is reported at the end; a new SYN on the same
    4-tuple starts a fresh decoder."""
    data, _ = _native_stream(CLASSIC)
    conn = TcpConn(45020, dissect.NATIVE_PORT)
    pkts = [conn.syn(True), conn.pkt(True, 0, data[:30]), conn.pkt(True, 40, data[40:])]
    again = TcpConn(45020, dissect.NATIVE_PORT, isn_c=777)
    pkts += [again.syn(True), again.pkt(True, 0, data)]
    stats: dict = {}
    got = list(dissect.wire_frames(pkts, stats))
    assert _frames(got) == [(raw, ts, 0) for raw, ts in CLASSIC]
    assert stats["tcp_out_of_order_segments"] == 1 and stats["native_tcp_unfilled_gap"] == 1


def test_scapy_layers_show():
    """The layers dissect our encoders' bytes into the documented fields."""
    gram = native.DatagramEncoder(7).encode(2, FD[:1])[0]
    p = Ether(bytes(Ether() / IP() / UDP(sport=1234, dport=dissect.NATIVE_PORT) / gram))
    rec = p[dissect.NativeUDP].records[0]
    assert isinstance(rec, dissect.NativeFrame)
    assert (rec.identifier, rec.len, int(rec.fd_flags), rec.channel, rec.timestamp_ns, rec.data) == (
        0x1AB, 12, 0x05, 2, FD[0][1], bytes(range(12)))
    gram = cannelloni.DatagramEncoder().encode(CLASSIC[1:3])[0]
    p = Ether(bytes(Ether() / IP() / UDP(sport=1234, dport=dissect.CANNELLONI_PORT) / gram))
    recs = p[dissect.CannelloniUDP].records
    assert [(int(r.flags), r.identifier, r.len, r.data) for r in recs] == [
        (4, 0x12345678, 8, bytes(range(8))), (2, 0x7FF, 3, b"")]
    p = Ether(bytes(Ether() / IP() / TCP(sport=1234, dport=dissect.SOCKETCAND_PORT)
                    / b"< open vcan0 >< send 123 0  >< sen"))
    assert [m.text for m in p[dissect.SocketcandTCP].messages] == [b"< open vcan0 >", b"< send 123 0  >"]
    p.show(dump=True)


def test_tx_count_in_control_datagrams(tmp_path):
    """A control datagram (HELLO + TX_COUNT) of a real UDP peer, after it sent BATCH, and one with the
    largest u64: scapy and tshark show frames_sent, not an unknown record."""
    peer = NativeDatagram(native.Hello(capabilities=native.CAP_FD, heartbeat_ms=1000, channels=("vcan0",)), 1472)
    grams = peer.encode(0, BATCH) + [peer.control()]
    top = 2**64 - 1  # the u64 top bit must not come out signed
    grams.append(native.DatagramEncoder(9).encode_control(
        native.encode_hello(native.Hello(channels=("can0",))) + native.encode_tx_count(top)))
    pkts = [Ether() / IP(src=CLIENT, dst=SERVER) / UDP(sport=50000, dport=dissect.NATIVE_PORT) / g for g in grams]

    controls = [Ether(bytes(p))[dissect.NativeUDP] for p in pkts[-2:]]
    for udp, n in zip(controls, (len(BATCH), top)):
        hello, tx = udp.records
        assert isinstance(hello, dissect.NativeHello) and isinstance(tx, dissect.NativeTxCount)
        assert (tx.type, tx.length, tx.frames_sent, tx.extra) == (native.REC_TX_COUNT, 8, n, b"")
        assert "TX_COUNT" in tx.show(dump=True)

    path = _write(tmp_path / "tx.pcapng", [(p, T0 + i * 1000, None) for i, p in enumerate(pkts)])
    out = _tshark(path, ["-Y", "canbridge.record.type == 4", "-e", "canbridge.tx_count.frames_sent",
                         "-e", "canbridge.record.type", "-e", "_ws.col.Info"])
    assert [line.split("\t")[:2] for line in out] == [[str(len(BATCH)), "0x01,0x04"], [str(top), "0x01,0x04"]]
    assert all(line.endswith("HELLO, TX_COUNT ") for line in out), out


def test_rx_count_in_control_datagrams(tmp_path):
    """The control datagram (HELLO + TX_COUNT + RX_COUNT) of a real UDP peer that received BATCH and its
    sender's control datagram, and one with the largest fields: scapy and tshark show the RX_COUNT fields."""
    hello = native.Hello(capabilities=native.CAP_FD, heartbeat_ms=1000, channels=("vcan0",))
    sender, receiver = NativeDatagram(hello, 1472), NativeDatagram(hello, 1472)
    for g in [sender.control(), *sender.encode(0, BATCH), sender.control()]:
        receiver.decode(g)
    top = 2**64 - 1
    grams = [receiver.control(), native.DatagramEncoder(9).encode_control(
        native.encode_hello(native.Hello(channels=("can0",))) + native.encode_tx_count(0)
        + native.encode_rx_count(0xFFFFFFFF, top))]
    pkts = [Ether() / IP(src=CLIENT, dst=SERVER) / UDP(sport=50000, dport=dissect.NATIVE_PORT) / g for g in grams]
    expect = [(sender.session, len(BATCH)), (0xFFFFFFFF, top)]
    for p, (session, n) in zip(pkts, expect):
        hello_rec, tx, rx = Ether(bytes(p))[dissect.NativeUDP].records
        assert isinstance(tx, dissect.NativeTxCount) and isinstance(rx, dissect.NativeRxCount)
        assert (rx.type, rx.length, rx.session, rx.frames_accounted, rx.extra) == (
            native.REC_RX_COUNT, 12, session, n, b"")
        assert "RX_COUNT" in rx.show(dump=True)

    path = _write(tmp_path / "rx.pcapng", [(p, T0 + i * 1000, None) for i, p in enumerate(pkts)])
    out = _tshark(path, ["-Y", "canbridge.record.type == 5", "-e", "canbridge.rx_count.session",
                         "-e", "canbridge.rx_count.frames_accounted", "-e", "_ws.col.Info"])
    assert [line.split("\t")[:2] for line in out] == [[f"{s:#010x}", str(n)] for s, n in expect], out
    assert all(line.endswith("HELLO, TX_COUNT, RX_COUNT ") for line in out), out


MALFORMED = [
    b"", b"C", b"CNBR", b"CNBR\x02\x00", b"CNBR\x01\x00" + b"\x02\x00\xff\xff", b"\x02\x00\x00\x05",
    b"CNBR\x01\x00\x00\x00\x00\x01\x00\x00\x00\x01" + b"\x02\x00\x00\x10" + b"\x00" * 16,
    b"CNBR\x01\x00\x00\x00\x00\x01\x00\x00\x00\x01" + b"\x02\x00\x00\x30" + b"\xff" * 48,
    b"CNBR\x01\x00\x00\x00\x00\x01\x00\x00\x00\x01" + b"\x01\x00\x00\x0c\x01\x00\x00\x00\x00\x00\x00\x00\x05ab",
    b"CNBR\x01\x00\x00\x00\x00\x01\x00\x00\x00\x01" + b"\x04\x00\x00\x04\x00\x00\x00\x07",  # short TX_COUNT
    b"CNBR\x01\x00\x00\x00\x00\x01\x00\x00\x00\x01" + b"\x05\x00\x00\x08" + bytes(8),  # short RX_COUNT
    b"\x02\x00\x01\x00\x05" + b"\x00\x00\x01\x23\x08" + b"\x11" * 3,
    b"\x02\x00\x01\x00\x01" + b"\x00\x00\x01\x23\xff\x00",
    b"\x02\x00\x01\xff\xff", b"CANNELLONIv1" + b"\x00\x00\x01\x23\x50", b"< frame zz 1.0 11 >< fdframe 1 >< rtr >",
    bytes(range(256)) * 3,
]


def _malformed_packets():
    rnd = random.Random(1234)
    payloads = MALFORMED + [rnd.randbytes(rnd.randrange(1, 200)) for _ in range(60)]
    pkts = []
    for i, pl in enumerate(payloads):
        for port in (dissect.NATIVE_PORT, dissect.CANNELLONI_PORT, dissect.SOCKETCAND_PORT):
            pkts.append(Ether() / IP(src=CLIENT, dst=SERVER) / UDP(sport=40000 + i, dport=port) / pl)
            conn = TcpConn(40000 + i, port)
            pkts += [conn.syn(True), conn.pkt(True, 0, pl), conn.pkt(True, len(pl), pl[::-1], flags="FA")]
    return pkts


def test_malformed_input_does_not_crash(tmp_path):
    pkts = _malformed_packets()
    stats: dict = {}
    list(dissect.wire_frames(pkts, stats))
    assert stats  # the bad flows and datagrams are counted
    path = _write(tmp_path / "bad.pcapng", [(p, T0 + i, None) for i, p in enumerate(pkts)])
    for pkt in dissect.read_packets(path):  # the scapy layers fall back to Raw, never raise
        pkt.summary()
        pkt.show(dump=True)
    out = _tshark(path, ["-e", "frame.number", "-e", "_ws.col.Info"], raw=True)
    assert "Lua Error" not in out and "lua" not in out.lower().replace("lua_script", "")


# ------------------------------------------------------------------------------------------- tshark


def _tshark(path: Path, args: list, lua: bool = True, raw: bool = False):
    exe = shutil.which("tshark")
    if exe is None:
        pytest.fail("tshark not installed (apt-get install tshark)", pytrace=False)
    cmd = [exe, "-n", "-r", str(path), "-o", "tcp.reassemble_out_of_order:TRUE", "-T", "fields",
           "-E", "occurrence=a", "-E", "aggregator=,"]
    if lua:
        cmd[1:1] = ["-X", f"lua_script:{LUA}"]
    r = subprocess.run(cmd + args, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    text = r.stdout + "\n".join(line for line in r.stderr.splitlines() if "Running as user" not in line)
    if raw:
        return text
    assert "Lua Error" not in text, text
    return [line for line in r.stdout.splitlines() if line.strip()]


def _tshark_frames(path: Path, filt: str) -> list[tuple[int, int, str]]:
    """(can_id incl. EFF/RTR/ERR flags, len, data hex) of every CAN frame the Lua script handed to
    Wireshark's SocketCAN dissectors, from `can.id` + flag fields + `data.data`. Wireshark only
    reassembles out-of-order TCP segments with tcp.reassemble_out_of_order (off by default)."""
    out = _tshark(path, ["-Y", filt, "-e", "can.id", "-e", "can.len",
                         "-e", "can.flags.xtd", "-e", "data.data"])
    frames = []
    for line in out:  # one line per packet, fields of several frames joined with ","
        ids, lens, xtd, data = ((c.split(",") if c else []) for c in (line.split("\t") + [""] * 4)[:4])
        assert len(ids) == len(lens) == len(xtd), line
        datas = iter(data)  # data.data only for frames with data (RTR frames: len zero bytes)
        for cid, n, x in zip(ids, lens, xtd):
            frames.append((int(cid) | (CAN_EFF_FLAG if x in ("1", "True") else 0), int(n),
                           next(datas) if int(n) else ""))
    return frames


def _expected(frames) -> list[tuple[int, int, str]]:
    out = []
    for raw, _ in frames:
        cid, n, _fl, _l8, data = unpack(raw)
        out.append((cid & ~CAN_RTR_FLAG, n, bytes(n).hex() if cid & CAN_RTR_FLAG else data.hex()))
    return out


def test_tshark_lua_native_and_cannelloni(tmp_path):
    frames = [*BATCH, LEN8]
    conn = TcpConn(45000, dissect.NATIVE_PORT)
    pkts, _ = _native_tcp_packets(conn, T0)
    gram_pkts = [(Ether() / IP(src=CLIENT, dst=SERVER) / UDP(sport=50000, dport=dissect.NATIVE_PORT) / g,
                  T0 + 10**9, None) for g in native.DatagramEncoder(1, mtu=200).encode(0, frames)]
    path = _write(tmp_path / "n.pcapng", pkts + gram_pkts)
    assert _tshark_frames(path, "tcp.srcport == 45000") == _expected(frames)
    assert _tshark_frames(path, "udp") == _expected(frames)
    out = _tshark(path, ["-Y", "canbridge.can_id", "-e", "canbridge.can_id", "-e", "canbridge.len",
                         "-e", "canbridge.channel", "-e", "canbridge.timestamp_ns", "-e", "canbridge.len8_dlc"])
    fields = [[c.split(",") for c in line.split("\t")] for line in out]
    flat = [tuple(col[i] for col in f) for f in fields for i in range(len(f[0]))]
    assert [(int(c, 16), int(n), int(ts), int(l8)) for c, n, _ch, ts, l8 in flat[: len(frames)]] == [
        (unpack(raw)[0], unpack(raw)[1], ts, unpack(raw)[3]) for raw, ts in frames]

    cgrams = cannelloni.DatagramEncoder(mtu=120).encode(frames)
    cconn = TcpConn(46000, dissect.CANNELLONI_PORT)
    stream = cannelloni.BANNER + cannelloni.encode_frames(frames)
    cp = [(Ether() / IP() / UDP(sport=20000, dport=dissect.CANNELLONI_PORT) / g, T0, None) for g in cgrams]
    cp += [(Ether() / IP() / UDP(sport=33333, dport=44444) / g, T0, None) for g in cgrams]  # heuristic
    cp += [(cconn.syn(True), T0, None)]
    cp += [(cconn.pkt(True, off, part), T0 + off, None) for off, part in _chunks(stream, 11)]
    cpath = _write(tmp_path / "c.pcapng", cp)
    exp = _expected([(_decoded(raw), 0) for raw, _ in frames])
    assert _tshark_frames(cpath, "udp.dstport == 20000") == exp
    assert _tshark_frames(cpath, "udp.dstport == 44444") == exp
    assert _tshark_frames(cpath, "tcp") == exp
    out = _tshark(cpath, ["-Y", "cannelloni.seq", "-e", "cannelloni.seq", "-e", "cannelloni.count"])
    assert [line.split("\t") for line in out][:len(cgrams)] == [
        [str(i), str(struct.unpack(">H", g[3:5])[0])] for i, g in enumerate(cgrams)]


def test_tshark_lua_decode_as_preference(tmp_path):
    """Another port via the Lua preference (the same as Preferences > Protocols > CANBRIDGE), with the
    heuristic off."""
    gram = native.DatagramEncoder(1).encode(0, CLASSIC)[0]
    path = _write(tmp_path / "p.pcapng", [(Ether() / IP() / UDP(sport=1, dport=39999) / gram, T0, None)])
    off = ["-o", "canbridge.heuristic:FALSE"]
    assert _tshark(path, [*off, "-Y", "canbridge", "-e", "frame.number"]) == []
    out = _tshark(path, [*off, "-o", "canbridge.udp_ports:29600,39999", "-e", "canbridge.id"])
    assert [int(x, 16) for x in out[0].split(",")] == [unpack(raw)[0] & 0x1FFFFFFF for raw, _ in CLASSIC]


def _other_port_capture(tmp_path: Path) -> tuple[Path, list]:
    """Native TCP (segmented, out of order, retransmitted) between ports 41000 and 41001 and a UDP datagram
    to 39999: no port of ours. -> (pcapng, expected CAN frames of TCP then UDP)."""
    pkts, _ = _native_tcp_packets(TcpConn(41000, 41001), T0)
    gram = native.DatagramEncoder(1).encode(0, CLASSIC)[0]
    pkts.append((Ether() / IP(src=CLIENT, dst=SERVER) / UDP(sport=39998, dport=39999) / gram, T0 + 10**9, "eth0"))
    return _write(tmp_path / "other_port.pcapng", pkts), [*BATCH, LEN8, *CLASSIC[:2], *CLASSIC]


def test_tshark_lua_heuristic_any_port(tmp_path):
    """The native protocol on ports without any preference: found by its magic (TCP: the whole
    conversation, both directions, records split across segments; UDP: each datagram)."""
    path, frames = _other_port_capture(tmp_path)
    assert _tshark_frames(path, "tcp") + _tshark_frames(path, "udp") == _expected(frames)
    hello = _tshark(path, ["-Y", "canbridge.hello.channel", "-e", "canbridge.hello.channel"])
    assert hello and all(line for line in hello)
    off = _tshark(path, ["-o", "canbridge.heuristic:FALSE", "-Y", "canbridge", "-e", "frame.number"])
    assert off == []  # the preference turns it off


def test_tshark_plugin_install_and_info(tmp_path):
    """The install step of docs/dissectors.md (copy into the personal Lua plugin folder): tshark lists
    the plugin with its version (set_plugin_info) and dissects without -X lua_script."""
    home = tmp_path / "home"
    plugins = home / ".local" / "lib" / "wireshark" / "plugins"
    plugins.mkdir(parents=True)
    shutil.copy(LUA, plugins)
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin"}
    listed = subprocess.run(["tshark", "-G", "plugins"], capture_output=True, text=True, env=env, timeout=60)
    row = next(line.split("\t") for line in listed.stdout.splitlines() if line.startswith("canbridge.lua"))
    assert row[1:3] == [bridge.__version__, "lua script"], row
    path, frames = _other_port_capture(tmp_path)
    out = subprocess.run(["tshark", "-n", "-r", str(path), "-o", "tcp.reassemble_out_of_order:TRUE", "-Y", "udp",
                          "-T", "fields", "-e", "canbridge.id"], capture_output=True, text=True, env=env, timeout=60)
    assert [int(x, 16) for x in out.stdout.split()[0].split(",")] == [unpack(raw)[0] & 0x1FFFFFFF for raw, _ in CLASSIC]


# ------------------------------------------------------------------------------------ real loopback

_LOOPBACK_SCRIPT = textwrap.dedent("""
    import socket, sys, time
    from scapy.all import AsyncSniffer, wrpcapng
    from scapy.arch.linux import L2Socket
    from bridge.codec import native, cannelloni
    from tests.test_dissect import BATCH, CLASSIC
    # an L2Socket skips the PACKET_OUTGOING copy of each loopback packet, as libpcap does on lo
    sniffer = AsyncSniffer(opened_socket=L2Socket(iface="lo"), store=True)
    sniffer.start()
    time.sleep(0.5)  # the sniffer's socket is bound before the first packet
    srv = socket.create_server(("127.0.0.1", 29600))
    cli = socket.create_connection(("127.0.0.1", 29600))
    conn, _ = srv.accept()
    data = native.STREAM_PREAMBLE + native.encode_hello(native.Hello(channels=("vcan0",)))
    data += native.encode_frames(0, BATCH)
    for i in range(0, len(data), 50):
        cli.sendall(data[i:i + 50])
    got = b""
    while len(got) < len(data):
        got += conn.recv(65536)
    cli.close(); conn.close(); srv.close()
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); rx.bind(("127.0.0.1", 20000))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for g in cannelloni.DatagramEncoder().encode(CLASSIC):
        tx.sendto(g, ("127.0.0.1", 20000)); rx.recv(2000)
    time.sleep(0.5)
    sniffer.stop()
    wrpcapng(sys.argv[1], sniffer.results)
""")


def test_loopback_capture(tmp_path, netns, run_in_netns):
    """Real sockets on lo in a fresh network namespace, captured by scapy's sniffer."""
    ns = netns()
    path = tmp_path / "lo.pcapng"
    root = Path(__file__).resolve().parents[1]
    run_in_netns(ns, [sys.executable, "-c", _LOOPBACK_SCRIPT, str(path)], cwd=root, timeout=120)
    stats: dict = {}
    got = list(dissect.wire_frames(dissect.read_packets(path), stats))
    tcp = [f for f in got if f.transport == "tcp"]
    udp = [f for f in got if f.transport == "udp"]
    assert _frames(tcp) == [(raw, ts, 0) for raw, ts in BATCH]
    assert [f.raw for f in udp] == [raw for raw, _ in CLASSIC]
    assert {f.dst for f in tcp} == {"127.0.0.1:29600"} and {f.dst for f in udp} == {"127.0.0.1:20000"}
    assert not [k for k in stats if not k.startswith("tcp_")]
    assert _tshark_frames(path, "tcp") == _expected(BATCH)
