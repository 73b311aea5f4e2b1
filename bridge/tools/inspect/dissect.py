"""Dissection of captured bridge traffic: scapy layers and frame extraction from pcap/pcapng files.

Two halves, one concept ("what was on the wire"):

* scapy layers for `pkt.show()` in scapy sessions, bound to the default ports:
    native protocol v1 (docs/protocol.md)   TCP 29600 `NativeTCP`, UDP 29600 `NativeUDP`
    cannelloni (wire-formats 2a)            UDP 20000 `CannelloniUDP`, TCP 20000 `CannelloniTCP`
    socketcand text protocol (2b/2c)        TCP 29536 `SocketcandTCP`
  `bind_ports()` adds ports. A TCP layer dissects one segment: it starts with the preamble/banner
  only in the first segment, and a record cut by the segment end is left as Raw. The stream layers
  implement `tcp_reassemble`, so `sniff(session=TCPSession)` / `rdpcap` + TCPSession give whole
  records.
* the extraction API (`read_packets`, `bus_frames`, `wire_frames`), which drives OUR codecs
  (bridge.codec.native / cannelloni / socketcand) rather than the scapy layers, with TCP reassembly
  per flow direction, and yields frames as raw Linux `struct can_frame` (16 B) / `struct canfd_frame`
  (72 B) in host byte order, like the rest of canbridge.

LINKTYPE_CAN_SOCKETCAN (227) records carry a big-endian CAN ID (scapy's `CAN`/`CANFD`, wire-formats
2e); Linux cooked captures (SLL/SLL2 protocol 0x000C/0x000D) carry it in host byte order.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal

from scapy.fields import (
    BitField,
    ByteEnumField,
    ByteField,
    ConditionalField,
    FieldLenField,
    FlagsField,
    IntField,
    LongField,
    PacketListField,
    ShortField,
    StrField,
    StrFixedLenField,
    StrLenField,
    XBitField,
    XByteField,
    XIntField,
)
from scapy.layers.can import CAN, CANFD
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import CookedLinux, CookedLinuxV2
from scapy.packet import NoPayload, Packet, Padding, bind_layers
from scapy.config import conf
from scapy.utils import EDecimal, PcapReader, RawPcapNgReader, RawPcapReader

from bridge.codec import cannelloni, native, pcapng
from bridge.codec import socketcand as scd
from bridge.codec.base import events
from bridge.codec.socketcan import CAN_ERR_FLAG, CAN_RTR_FLAG, pack_can, pack_canfd
from bridge.errors import ProtocolError
from bridge.protocols import registry

NATIVE_PORT = native.DEFAULT_PORT
CANNELLONI_PORT = cannelloni.DEFAULT_PORT
SOCKETCAND_PORT = scd.DEFAULT_PORT

# Per flow direction: bytes of out-of-order segments held until the gap before them is filled. A
# capture that lost a segment would otherwise buffer the rest of the flow; past this the flow is
# given up and counted as "<proto>_tcp_gap".
MAX_OOO_BYTES = 1 << 20

_FD_FLAG_NAMES = ["BRS", "ESI", "FDF"]
_ID_FLAG_NAMES = ["ERR", "RTR", "EFF"]  # 3 top bits of canid_t, LSB first: 0x20000000, 0x40000000, 0x80000000
_U32 = 0xFFFFFFFF


# ============================================================================== scapy: native v1


class _Record(Packet):
    """Common behaviour of the length-prefixed records of the native protocol."""

    def extract_padding(self, s):
        return b"", s  # the fields consumed exactly one record: the rest is the next record

    def post_build(self, pkt, pay):
        if self.length is None:  # body length = everything after the 4-byte header
            pkt = pkt[:2] + struct.pack(">H", len(pkt) - 4) + pkt[4:]
        return pkt + pay

    @classmethod
    def dispatch_hook(cls, _pkt=None, *args, **kargs):
        if _pkt:
            return _RECORD_CLASSES.get(_pkt[0], NativeUnknownRecord)
        return cls


_REC_TYPES = {native.REC_HELLO: "HELLO", native.REC_FRAME: "FRAME", native.REC_HEARTBEAT: "HEARTBEAT",
              native.REC_TX_COUNT: "TX_COUNT", native.REC_RX_COUNT: "RX_COUNT"}


def _rec_header(rtype: int) -> list:
    return [ByteEnumField("type", rtype, _REC_TYPES), XByteField("rflags", 0), ShortField("length", None)]


class NativeChannel(Packet):
    """One HELLO channel entry: name_len (u8) + ASCII name."""

    fields_desc = [FieldLenField("name_len", None, length_of="name", fmt="B"),
                   StrLenField("name", b"", length_from=lambda p: p.name_len)]

    def extract_padding(self, s):
        return b"", s


class NativeHello(_Record):
    name = "canbridge HELLO"
    fields_desc = _rec_header(native.REC_HELLO) + [
        ByteField("proto_version", native.VERSION),
        XByteField("reserved", 0),
        FlagsField("capabilities", 0, 16, ["FD", "ERR_FRAMES"]),
        IntField("heartbeat_ms", 0),
        FieldLenField("n_channels", None, count_of="channels", fmt="B"),
        PacketListField("channels", [], NativeChannel, count_from=lambda p: p.n_channels),
        StrLenField("extra", b"", length_from=lambda p: max(
            0, (p.length or 0) - 9 - sum(1 + len(c.name) for c in p.channels))),
    ]


class NativeFrame(_Record):
    """FRAME record: can_id split into flags (EFF/RTR/ERR) and the 29-bit identifier, as scapy's CAN."""

    name = "canbridge FRAME"
    fields_desc = _rec_header(native.REC_FRAME) + [
        FlagsField("flags", 0, 3, _ID_FLAG_NAMES),
        XBitField("identifier", 0, 29),
        ByteField("len", 0),
        FlagsField("fd_flags", 0, 8, _FD_FLAG_NAMES),
        ByteField("len8_dlc", 0),
        ByteField("channel", 0),
        LongField("timestamp_ns", 0),
        StrLenField("data", b"", length_from=lambda p: max(0, (p.length or 16) - 16)),
    ]

    def mysummary(self):
        return self.sprintf("FRAME ch%channel% %identifier% [%len%] ") + bytes(self.data).hex()


class NativeHeartbeat(_Record):
    name = "canbridge HEARTBEAT"
    fields_desc = _rec_header(native.REC_HEARTBEAT) + [
        LongField("sent_ns", 0),
        StrLenField("extra", b"", length_from=lambda p: max(0, (p.length or 8) - 8)),
    ]


class NativeTxCount(_Record):
    """TX_COUNT record (UDP control datagrams, docs/protocol.md 4.5): frames_sent = FRAME records the
    sender put in its datagrams before this one. The body is exactly 8 bytes; `extra` shows the rest of
    a malformed longer one (which our decoder rejects as bad_record_length)."""

    name = "canbridge TX_COUNT"
    fields_desc = _rec_header(native.REC_TX_COUNT) + [
        LongField("frames_sent", 0),
        StrLenField("extra", b"", length_from=lambda p: max(0, (p.length or 8) - 8)),
    ]


class NativeRxCount(_Record):
    """RX_COUNT record (UDP control datagrams, docs/protocol.md 4.6): session = the sender session
    acknowledged, frames_accounted = position in its TX_COUNT numbering up to which every frame was
    received or counted lost. The body is exactly 12 bytes; `extra` shows the rest of a malformed longer
    one (which our decoder rejects as bad_record_length)."""

    name = "canbridge RX_COUNT"
    fields_desc = _rec_header(native.REC_RX_COUNT) + [
        XIntField("session", 0),
        LongField("frames_accounted", 0),
        StrLenField("extra", b"", length_from=lambda p: max(0, (p.length or 12) - 12)),
    ]


class NativeUnknownRecord(_Record):
    """A record of a type version 1 does not know: skipped by length."""

    name = "canbridge unknown record"
    fields_desc = [ByteField("type", 0), XByteField("rflags", 0), ShortField("length", None),
                   StrLenField("body", b"", length_from=lambda p: p.length or 0)]


_RECORD_CLASSES = {native.REC_HELLO: NativeHello, native.REC_FRAME: NativeFrame,
                   native.REC_HEARTBEAT: NativeHeartbeat, native.REC_TX_COUNT: NativeTxCount,
                   native.REC_RX_COUNT: NativeRxCount}


def _native_record_end(buf: bytes, pos: int) -> int | None:
    """End offset of the complete native record at buf[pos:], None if it is cut off."""
    if len(buf) - pos < 4:
        return None
    end = pos + 4 + struct.unpack_from(">H", buf, pos + 2)[0]
    return end if end <= len(buf) else None


def _next_native(pkt, lst, cur, remain):
    return _Record if remain and _native_record_end(remain, 0) is not None else None


def _native_records():
    return PacketListField("records", [], _Record, next_cls_cb=_next_native)


class NativeTCP(Packet):
    """A TCP segment of the native protocol: `NativePreamble` if it starts with "CNBR", else
    `NativeRecords`. A record cut by the segment end is left as Raw."""

    name = "canbridge TCP"
    fields_desc = [_native_records()]

    @classmethod
    def dispatch_hook(cls, _pkt=None, *args, **kargs):
        if _pkt and _pkt[:4] == native.MAGIC[: len(_pkt[:4])]:
            return NativePreamble
        return NativeRecords

    @classmethod
    def tcp_reassemble(cls, data, metadata, session):
        """scapy TCPSession hook: a packet once the buffered stream ends on a record boundary."""
        pos = len(native.STREAM_PREAMBLE) if data[:4] == native.MAGIC else 0
        while pos < len(data):
            pos = _native_record_end(data, pos)
            if pos is None:
                return None
        return cls(data)


class NativePreamble(NativeTCP):
    name = "canbridge TCP preamble"
    fields_desc = [StrFixedLenField("magic", native.MAGIC, 4), ByteField("version", native.VERSION),
                   XByteField("flags", 0), _native_records()]


class NativeRecords(NativeTCP):
    name = "canbridge TCP records"


class NativeUDP(Packet):
    """A native-protocol UDP datagram: 14-byte header + records."""

    name = "canbridge UDP"
    fields_desc = [StrFixedLenField("magic", native.MAGIC, 4), ByteField("version", native.VERSION),
                   XByteField("flags", 0), XIntField("session", 0), IntField("seq", 0), _native_records()]


# ============================================================================== scapy: cannelloni


def _cannelloni_record_end(buf: bytes, pos: int) -> int | None:
    """End offset of the complete cannelloni record at buf[pos:], None if it is cut off."""
    if len(buf) - pos < 5:
        return None
    cid, n = struct.unpack_from(">IB", buf, pos)
    end = pos + 5 + (1 if n & 0x80 else 0) + (0 if cid & CAN_RTR_FLAG else n & 0x7F)
    return end if end <= len(buf) else None


class CannelloniRecord(Packet):
    name = "cannelloni frame"
    fields_desc = [
        FlagsField("flags", 0, 3, _ID_FLAG_NAMES),
        XBitField("identifier", 0, 29),
        BitField("fd", 0, 1),
        BitField("len", 0, 7),
        ConditionalField(FlagsField("fd_flags", 0, 8, _FD_FLAG_NAMES), lambda p: p.fd),
        StrLenField("data", b"", length_from=lambda p: 0 if p.flags.RTR else p.len),
    ]

    def extract_padding(self, s):
        return b"", s

    def mysummary(self):
        return self.sprintf("cannelloni %identifier% [%len%] ") + bytes(self.data).hex()


def _next_cannelloni(pkt, lst, cur, remain):
    return CannelloniRecord if remain and _cannelloni_record_end(remain, 0) is not None else None


class CannelloniUDP(Packet):
    name = "cannelloni UDP"
    fields_desc = [ByteField("version", cannelloni.VERSION), ByteEnumField("op_code", 0, {0: "DATA"}),
                   ByteField("seq_no", 0), FieldLenField("count", None, count_of="records", fmt="!H"),
                   PacketListField("records", [], CannelloniRecord, count_from=lambda p: p.count)]


class CannelloniTCP(Packet):
    """A TCP segment of cannelloni: `CannelloniBanner` if it starts with "CANNELLONIv1", else
    `CannelloniRecords`."""

    name = "cannelloni TCP"
    fields_desc = [PacketListField("records", [], CannelloniRecord, next_cls_cb=_next_cannelloni)]

    @classmethod
    def dispatch_hook(cls, _pkt=None, *args, **kargs):
        if _pkt and _pkt[:12] == cannelloni.BANNER[: len(_pkt[:12])]:
            return CannelloniBanner
        return CannelloniRecords

    @classmethod
    def tcp_reassemble(cls, data, metadata, session):
        pos = len(cannelloni.BANNER) if data[:12] == cannelloni.BANNER else 0
        while pos < len(data):
            pos = _cannelloni_record_end(data, pos)
            if pos is None:
                return None
        return cls(data)


class CannelloniBanner(CannelloniTCP):
    name = "cannelloni TCP banner"
    fields_desc = [StrFixedLenField("banner", cannelloni.BANNER, 12),
                   PacketListField("records", [], CannelloniRecord, next_cls_cb=_next_cannelloni)]


class CannelloniRecords(CannelloniTCP):
    name = "cannelloni TCP records"


# ============================================================================== scapy: socketcand


class _UpToGt(StrField):
    """Bytes up to and including the first '>' (one socketcand message, with what precedes it)."""

    def getfield(self, pkt, s):
        end = s.find(b">") + 1
        return s[end:], s[:end]


class SocketcandMessage(Packet):
    name = "socketcand message"
    fields_desc = [_UpToGt("text", b"< hi >")]

    def extract_padding(self, s):
        return b"", s

    def mysummary(self):
        return "socketcand " + bytes(self.text).decode("ascii", "replace").strip()


def _next_socketcand(pkt, lst, cur, remain):
    return SocketcandMessage if b">" in remain else None


class SocketcandTCP(Packet):
    """A TCP segment of socketcand: the complete `< ... >` messages it holds (a message cut by the
    segment end is left as Raw)."""

    name = "socketcand"
    fields_desc = [PacketListField("messages", [], SocketcandMessage, next_cls_cb=_next_socketcand)]

    @classmethod
    def tcp_reassemble(cls, data, metadata, session):
        return cls(data) if data.rstrip().endswith(b">") else None


# ============================================================================== port bindings

# port -> protocol name, per transport; the extraction API looks flows up here
_TCP_PORTS: dict[int, str] = {}
_UDP_PORTS: dict[int, str] = {}
_LAYERS = {("native", "tcp"): NativeTCP, ("native", "udp"): NativeUDP,
           ("cannelloni", "tcp"): CannelloniTCP, ("cannelloni", "udp"): CannelloniUDP,
           ("socketcand", "tcp"): SocketcandTCP}


def _port_spec(spec, transports: tuple[str, ...]) -> list[tuple[str, int]]:
    """1234 -> every transport of the protocol; "tcp:1234" / "udp:1234" -> that one. ValueError
    for a bad port or a transport the protocol does not have."""
    if isinstance(spec, str) and ":" in spec:
        transport, _, port_s = spec.partition(":")
        if transport not in transports:
            raise ValueError(f"{spec!r}: transport must be one of {', '.join(transports)}")
        chosen, port = (transport,), int(port_s)
    else:
        chosen, port = transports, int(spec)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} outside 1..65535")
    return [(t, port) for t in chosen]


def bind_ports(native=(), cannelloni=(), socketcand=()) -> None:
    """Add server ports for the scapy layers and for wire_frames(). Each argument is an iterable of
    ports: an int means every transport of the protocol (native and cannelloni: TCP and UDP;
    socketcand: TCP), "tcp:N" / "udp:N" one transport. A port already bound to another protocol is
    rebound (the last call wins). Raises ValueError for a bad port or transport."""
    wanted = []
    for proto, specs, transports in (("native", native, ("tcp", "udp")),
                                     ("cannelloni", cannelloni, ("tcp", "udp")),
                                     ("socketcand", socketcand, ("tcp",))):
        for spec in ([specs] if isinstance(specs, int | str) else specs):
            wanted += [(proto, t, p) for t, p in _port_spec(spec, transports)]
    for proto, transport, port in wanted:  # validated all first: nothing half-applied
        (_TCP_PORTS if transport == "tcp" else _UDP_PORTS)[port] = proto
        l4 = TCP if transport == "tcp" else UDP
        layer = _LAYERS[proto, transport]
        bind_layers(l4, layer, dport=port)
        bind_layers(l4, layer, sport=port)


# every protocol family of the registry that these layers decode, on its default port
bind_ports(**{family: [port] for family, port in registry.families().items() if family in ("native", "cannelloni",
                                                                                          "socketcand")})


# ============================================================================== extraction API


@dataclass(frozen=True, slots=True)
class BusFrame:
    """One frame from a LINKTYPE_CAN_SOCKETCAN (227) or Linux cooked (SLL/SLL2 CAN) packet.
    time_ns: capture timestamp, ns since the epoch; iface: pcapng interface name or None;
    raw: struct can_frame (16 B) / canfd_frame (72 B), host byte order."""

    time_ns: int
    iface: str | None
    raw: bytes


@dataclass(frozen=True, slots=True)
class WireFrame:
    """One CAN frame carried in a bridge-protocol packet.

    time_ns: capture time (ns since the epoch) of the packet that completed the frame's record;
    proto: "native" | "cannelloni" | "socketcand"; transport: "tcp" | "udp"; src/dst: "ip:port"
    ("[ip6]:port" for IPv6); raw: can_frame / canfd_frame, host byte order; sent_ts_ns: native: the
    FRAME record's timestamp (sender's kernel RX time), socketcand server -> client frames: their
    SEC.USEC timestamp in ns; else 0; channel: native channel index, else 0."""

    time_ns: int
    iface: str | None
    proto: str
    transport: str
    src: str
    dst: str
    raw: bytes
    sent_ts_ns: int
    channel: int


def read_packets(path) -> Iterator[Packet]:
    """Stream the packets of a pcap or pcapng file (format detected from the magic) as scapy
    packets: link layer per interface (227 -> CAN/CANFD, 1 -> Ether, SLL, SLL2, raw IP...),
    pkt.time (seconds, Decimal from files), pkt.sniffed_on (pcapng interface name or absent).
    Raises scapy's Scapy_Exception for a file that is neither."""
    with PcapReader(str(path)) as reader:
        yield from reader


def split_capture(path) -> tuple[list[BusFrame], list[Packet]]:
    """(SocketCAN frames, every other packet) of a capture file. Fast path for pcapng: LINKTYPE 227
    records are converted straight from their bytes (bridge.codec.pcapng.decode_can_record), which
    is ~10x cheaper than scapy's dissection of a CAN packet; the other packets are dissected by
    scapy as read_packets() does. A classic pcap file goes through read_packets()/bus_frames()."""
    reader = RawPcapReader(str(path))
    if not isinstance(reader, RawPcapNgReader):
        reader.close()
        others = list(read_packets(path))
        return list(bus_frames(others)), others
    bus: list[BusFrame] = []
    others: list[Packet] = []
    with reader:
        for data, meta in reader:
            ticks = (meta.tshigh << 32) + meta.tslow
            iface = meta.ifname.decode("utf-8", "backslashreplace") if meta.ifname is not None else None
            if meta.linktype == pcapng.LINKTYPE_CAN_SOCKETCAN:
                try:
                    bus.append(BusFrame(ticks * 1_000_000_000 // meta.tsresol, iface,
                                        pcapng.decode_can_record(data)))
                except ValueError:  # malformed record: not a frame (as bus_frames)
                    pass
                continue
            pkt = conf.l2types.num2layer.get(meta.linktype, conf.raw_layer)(data)
            pkt.time = EDecimal(ticks) / meta.tsresol
            if iface is not None:
                pkt.sniffed_on = iface
            others.append(pkt)
    return bus, others


def _time_ns(pkt: Packet) -> int:
    t = pkt.time
    if isinstance(t, Decimal):  # from a file: exact
        return int(t * 1_000_000_000)
    return round(t * 1_000_000_000)


_BE_ID = struct.Struct(">I")
_HOST_IS_BIG = sys.byteorder == "big"


def _can_raw(layer: CAN, host_order_id: bool) -> bytes:
    """scapy CAN/CANFD layer -> raw struct. host_order_id: the capture stored the ID in host byte
    order (Linux cooked) but scapy read it as big-endian."""
    can_id = (int(layer.flags) << 29) | layer.identifier
    if host_order_id and not _HOST_IS_BIG:
        can_id = int.from_bytes(_BE_ID.pack(can_id), "little")
    n = layer.length or 0
    data = bytes(layer.data)[:n]
    if isinstance(layer, CANFD):
        return pack_canfd(can_id, data.ljust(n, b"\0"), int(layer.fd_flags) & 0x03)
    if can_id & CAN_RTR_FLAG:
        return pack_can(can_id, b"", length=min(n, 8))
    l8 = int(layer.reserved) & 0xFF  # reserved = __pad, __res0, len8_dlc
    return pack_can(can_id, data[:8], l8 if n == 8 and 9 <= l8 <= 15 else 0)


def _bus_raw(pkt: Packet) -> bytes | None:
    layer = pkt.getlayer(CANFD) or pkt.getlayer(CAN)  # getlayer matches the exact class
    cooked = pkt.getlayer(CookedLinux) or pkt.getlayer(CookedLinuxV2)
    if layer is not None:
        return _can_raw(layer, cooked is not None)
    if cooked is not None and cooked.proto in (0x000C, 0x000D):  # SLL2: scapy does not bind CAN
        return _can_raw(CAN(bytes(cooked.payload)), True)
    return None


def bus_frames(packets: Iterable[Packet]) -> Iterator[BusFrame]:
    """CAN frames of the SocketCAN packets (LINKTYPE 227, SLL/SLL2 CAN/CANFD) among `packets`, in
    capture order; other packets are skipped. FD frames: those scapy classifies as CANFD (FDF set
    or len > 8), as Wireshark does; their raw struct always has FDF set."""
    for pkt in packets:
        try:
            raw = _bus_raw(pkt)
        except (ValueError, struct.error):  # malformed record (e.g. invalid FD len): not a frame
            continue
        if raw is not None:
            yield BusFrame(_time_ns(pkt), getattr(pkt, "sniffed_on", None), raw)


# ---------------------------------------------------------------------------------- stream sinks
# A sink turns the in-order bytes of one TCP flow direction into (raw, sent_ts_ns, channel) tuples;
# it raises ProtocolError when the flow cannot be decoded any further.


class _NativeSink:
    def __init__(self, client_to_server: bool):
        self.dec = native.StreamDecoder()

    def feed(self, data: bytes, out: list) -> None:
        self.dec.receive_data(data)
        for ev in events(self.dec):  # frames before a bad record are in `out` when it raises
            if type(ev) is native.Frames:
                out += [(raw, ts, ev.channel) for raw, ts in ev.frames]


class _CannelloniSink:
    def __init__(self, client_to_server: bool):
        self.dec = cannelloni.StreamDecoder()

    def feed(self, data: bytes, out: list) -> None:
        self.dec.receive_data(data)
        for ev in events(self.dec):
            if type(ev) is cannelloni.Frames:
                out += [(raw, 0, 0) for raw, _ in ev.frames]


class _SocketcandSink:
    """Client -> server: commands parsed by our server session (send, sendrtr, fdsend, sendfd),
    already opened on a bus so a capture that missed `< open >` still decodes. Server -> client:
    `< frame >`, `< rtr >`, `< error >`, `< fdframe >` messages (parsed here: the codec is server
    side only). Malformed messages are counted in `bad`, not fatal."""

    def __init__(self, client_to_server: bool):
        self.session = None
        self.buf = bytearray()
        self.bad = 0
        if client_to_server:
            self.session = scd.ServerSession(error_frames=True)
            self.session.receive_data(b"< open capture0 >")
            list(events(self.session))

    def feed(self, data: bytes, out: list) -> None:
        if self.session is not None:
            self.session.receive_data(data)
            for ev in events(self.session):
                if type(ev) is scd.Send:
                    out.append((ev.raw, 0, 0))
                elif type(ev) is scd.Rejected:
                    self.bad += 1
            return
        self.buf += data
        while (start := self.buf.find(b"<")) >= 0 and (end := self.buf.find(b">", start)) >= 0:
            msg = bytes(self.buf[start + 1 : end])
            del self.buf[: end + 1]
            try:
                frame = _socketcand_server_frame(msg.split())
            except ValueError:
                self.bad += 1
                continue
            if frame is not None:
                out.append(frame)
        if len(self.buf) > scd.MAX_COMMAND:  # as our server and socketcand: a runaway message ends it
            raise scd.SocketcandProtocolError("command_too_long", f"{len(self.buf)} bytes without '>'")


def _scd_id(tok: bytes) -> int:
    """socketcand ID token -> can_id: EFF when 8 characters or above 0x7FF (wire-formats 2b)."""
    v = int(tok, 16)
    if len(tok) > 8 or v > 0x1FFFFFFF:
        raise ValueError(f"bad id {tok!r}")
    return v | 0x80000000 if len(tok) == 8 or v > 0x7FF else v


def _scd_ts(tok: bytes) -> int:
    sec, dot, usec = tok.partition(b".")
    if not (sec.isdigit() and dot and usec.isdigit() and len(usec) <= 9):
        raise ValueError(f"bad timestamp {tok!r}")
    return int(sec) * 1_000_000_000 + int(usec.ljust(9, b"0"))


def _scd_data(toks: list) -> bytes:
    return bytes.fromhex(b"".join(toks).decode("ascii"))


def _socketcand_server_frame(toks: list):
    """Tokens of one server -> client message -> (raw, ts_ns, 0), None for a non-frame message
    (hi, ok, echo, stat...). Forms (wire-formats 2b): `frame ID TS DATA` (RAW, hex run) or
    `frame ID TS B0 B1 ..` (BCM), more than 8 bytes = CAN FD without BRS (SavvyCAN form);
    `rtr ID TS DLC`; `error CLASS TS [B0..B7]` (no data in RAW mode: CAN_ERR_DLC zero bytes);
    `fdframe ID FLAGS TS DATA` (PR #33) or `fdframe ID TS DATA` (rawmode-canfd).
    ValueError for a malformed frame message."""
    if not toks:
        return None
    word, args = toks[0], toks[1:]
    if word not in (b"frame", b"rtr", b"error", b"fdframe"):
        return None
    if len(args) < 2:
        raise ValueError("too few fields")
    if word == b"fdframe":
        flags = 0
        if b"." not in args[1]:
            flags, args = int(args[1], 16), [args[0], *args[2:]]
        ts = _scd_ts(args[1])
        return pack_canfd(_scd_id(args[0]), _scd_data(args[2:]), flags & 0x03), ts, 0
    ts = _scd_ts(args[1])
    if word == b"rtr":
        if len(args) != 3 or not args[2].isdigit() or int(args[2]) > 8:
            raise ValueError("bad rtr dlc")
        return pack_can(_scd_id(args[0]) | CAN_RTR_FLAG, b"", length=int(args[2])), ts, 0
    data = _scd_data(args[2:])
    if word == b"error":
        return pack_can(CAN_ERR_FLAG | (int(args[0], 16) & 0x1FFFFFFF), data[:8].ljust(8, b"\0")), ts, 0
    can_id = _scd_id(args[0])
    return (pack_can(can_id, data) if len(data) <= 8 else pack_canfd(can_id, data)), ts, 0


_SINKS = {"native": _NativeSink, "cannelloni": _CannelloniSink, "socketcand": _SocketcandSink}


# ---------------------------------------------------------------------------------- TCP reassembly


class _TcpFlow:
    """One direction of one TCP connection: reorders segments by sequence number (modulo 2**32),
    drops retransmitted and overlapping bytes, and feeds the in-order bytes to its sink."""

    def __init__(self, proto: str, client_to_server: bool):
        self.proto = proto
        self.sink = _SINKS[proto](client_to_server)
        self.next_seq: int | None = None
        self.isn: int | None = None
        self.pending: dict[int, bytes] = {}  # seq -> data, segments after a gap
        self.pending_bytes = 0
        self.fin_seq: int | None = None
        self.failed: str | None = None  # reason once the flow could not be decoded

    def segment(self, seq: int, data: bytes, syn: bool, fin: bool, stats: dict | None, out: list) -> None:
        """One segment: append the frames completed by it (and by the held segments it releases) to
        out. Raises the sink's ProtocolError, or ProtocolError("gap") when too much is held."""
        if syn:
            self.isn = seq
            seq = (seq + 1) & _U32
            if self.next_seq is None:
                self.next_seq = seq
        if self.next_seq is None:  # capture started mid-connection: start at the first segment seen
            self.next_seq = seq
        if fin:
            self.fin_seq = (seq + len(data)) & _U32
        if data:
            ahead = (seq - self.next_seq) & _U32
            if ahead and ahead < 1 << 31:  # after a gap: hold it
                _count(stats, "tcp_out_of_order_segments")
                held = len(self.pending.get(seq, b""))
                if len(data) > held:
                    self.pending_bytes += len(data) - held
                    self.pending[seq] = data
                if self.pending_bytes > MAX_OOO_BYTES:
                    raise ProtocolError("gap", f"{self.pending_bytes} bytes held after a gap")
                return
            if not self._deliver(seq, data, out):
                _count(stats, "tcp_retransmitted_segments")
            self._release(out)
        if self.fin_seq == self.next_seq and not self.pending:
            self.sink.feed(b"", out)  # EOF: a record cut by the close is reported as truncated

    def _deliver(self, seq: int, data: bytes, out: list) -> bool:
        """Feed the part of data at or after next_seq (data must not start after it); False if it
        was all seen already."""
        behind = (self.next_seq - seq) & _U32
        if behind >= len(data):
            return False
        data = data[behind:]
        self.next_seq = (self.next_seq + len(data)) & _U32
        self.sink.feed(data, out)
        return True

    def _release(self, out: list) -> None:
        """Feed held segments that are now contiguous with (or overlap) the delivered bytes."""
        while self.pending:
            ready = [s for s in self.pending if not 0 < (s - self.next_seq) & _U32 < 1 << 31]
            if not ready:
                return
            for s in sorted(ready, key=lambda s: (s - self.next_seq) & _U32):
                data = self.pending.pop(s)
                self.pending_bytes -= len(data)
                self._deliver(s, data, out)


def _count(stats: dict | None, key: str, n: int = 1) -> None:
    if stats is not None:
        stats[key] = stats.get(key, 0) + n


def _endpoints(pkt: Packet, l4) -> tuple[str, str] | None:
    ip = pkt.getlayer(IP)
    if ip is not None:
        return f"{ip.src}:{l4.sport}", f"{ip.dst}:{l4.dport}"
    ip6 = pkt.getlayer(IPv6)
    if ip6 is not None:
        return f"[{ip6.src}]:{l4.sport}", f"[{ip6.dst}]:{l4.dport}"
    return None


def _l4_payload(l4) -> bytes:
    """The bytes after the TCP/UDP header, exactly as captured (without Ethernet padding)."""
    pl = l4.payload
    if isinstance(pl, NoPayload | Padding):
        return b""
    original = getattr(pl, "original", None)  # b"" for a layer built in memory, not dissected
    return bytes(original) if original else bytes(pl)


def _which(ports: dict, l4) -> tuple[str, bool] | None:
    """(protocol, client_to_server) of a segment/datagram from the bound server ports."""
    if l4.dport in ports:
        return ports[l4.dport], True
    if l4.sport in ports:
        return ports[l4.sport], False
    return None


def _udp_frames(proto: str, payload: bytes, stats: dict | None) -> list:
    try:
        if proto == "native":
            _session, _seq, evs = native.decode_datagram(payload)
            return [(raw, ts, ev.channel) for ev in evs if type(ev) is native.Frames for raw, ts in ev.frames]
        if proto == "cannelloni":
            return [(raw, 0, 0) for raw, _ in cannelloni.decode_datagram(payload)[1]]
    except ProtocolError as e:
        _count(stats, f"{proto}_udp_{e.reason}")
    return []


def wire_frames(packets: Iterable[Packet], stats: dict | None = None) -> Iterator[WireFrame]:
    """CAN frames carried by native / cannelloni / socketcand traffic among `packets` (TCP or UDP over
    IPv4/IPv6, any link layer scapy decodes), on the bound ports (bind_ports), in capture order.

    TCP: per flow direction, segments are ordered by sequence number (from the SYN, or from the
    first segment seen when the capture starts mid-connection), retransmitted/overlapping bytes are
    dropped, and the bytes are decoded by our stream codecs. A flow the codec rejects (including a
    capture that starts mid-stream of native/cannelloni: no resync) is given up and counted once as
    stats["<proto>_tcp_<reason>"]; UDP datagrams that do not decode are counted as
    stats["<proto>_udp_<reason>"] (reasons: the codecs' ProtocolError slugs, plus "gap" for a flow
    whose missing segment never came within MAX_OOO_BYTES). Also counted: tcp_out_of_order_segments,
    tcp_retransmitted_segments, socketcand_bad_messages, and at the end <proto>_tcp_unfilled_gap for
    flows still waiting for a missing segment. Frames decoded before a flow's error are yielded.
    IP fragments are not reassembled. Never raises for packet content."""
    flows: dict[tuple, _TcpFlow] = {}
    for pkt in packets:
        tcp = pkt.getlayer(TCP)
        l4 = tcp if tcp is not None else pkt.getlayer(UDP)
        if l4 is None:
            continue
        which = _which(_TCP_PORTS if tcp is not None else _UDP_PORTS, l4)
        ends = _endpoints(pkt, l4) if which else None
        if ends is None:
            continue
        proto, c2s = which
        payload = _l4_payload(l4)
        if tcp is None:
            frames = _udp_frames(proto, payload, stats)
        else:
            frames = _tcp_segment(flows, (proto, *ends), c2s, tcp, payload, stats)
        if frames:
            t, iface = _time_ns(pkt), getattr(pkt, "sniffed_on", None)
            transport = "tcp" if tcp is not None else "udp"
            for raw, sent, ch in frames:
                yield WireFrame(t, iface, proto, transport, ends[0], ends[1], raw, sent, ch)
    for flow in flows.values():
        if flow.pending and not flow.failed:
            _count(stats, f"{flow.proto}_tcp_unfilled_gap")


def _tcp_segment(flows: dict, key: tuple, c2s: bool, tcp, payload: bytes, stats: dict | None) -> list:
    flags = int(tcp.flags)
    syn, fin = bool(flags & 0x02), bool(flags & 0x01)
    flow = flows.get(key)
    if flow is None or (syn and flow.isn != tcp.seq):  # a new connection on this 4-tuple
        if flow is not None and flow.pending and not flow.failed:
            _count(stats, f"{flow.proto}_tcp_unfilled_gap")
        flow = flows[key] = _TcpFlow(key[0], c2s)
    frames: list = []
    if flow.failed:
        return frames
    sink = flow.sink
    bad_before = getattr(sink, "bad", 0)
    try:
        flow.segment(tcp.seq, payload, syn, fin, stats, frames)
    except ProtocolError as e:  # frames decoded before the error stay in `frames`
        flow.failed = e.reason
        _count(stats, f"{flow.proto}_tcp_{e.reason}")
    if getattr(sink, "bad", 0) > bad_before:
        _count(stats, "socketcand_bad_messages", sink.bad - bad_before)
    return frames
