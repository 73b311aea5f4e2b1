"""canbridge native protocol v1: sans-IO encoder/decoder (bytes in, events out, as h11).

The byte layout is specified in docs/protocol.md. Summary (all multi-byte fields big-endian):

    TCP stream   = "CNBR" version(u8=1) flags(u8=0), then records; the first record is a HELLO
    UDP datagram = "CNBR" version(u8=1) flags(u8=0) session(u32) seq(u32), then records
    record       = type(u8) rflags(u8=0) length(u16) body[length]        (length <= MAX_RECORD_BODY)
    FRAME body   = can_id(u32) len(u8) fd_flags(u8) len8_dlc(u8) channel(u8) timestamp_ns(u64) data
    TX_COUNT body = frames_sent(u64)   (UDP control datagrams: FRAME records sent before this datagram)
    RX_COUNT body = session(u32) frames_accounted(u64)   (UDP control datagrams: the receiver's account of
                   that sender session's frames, in the sender's TX_COUNT numbering)
    PUB_COUNT body = session(u32) frames_before(u64)   (MQTT payloads only, bridge.codec.mqtt_payload; a
                   stream or datagram reader skips it as an unknown type)
    PUB_DROPPED body = frames_dropped(u64)   (MQTT payloads only, after a PUB_COUNT: frames of the session
                   numbered on the topic and then dropped by the publisher itself)

Frames on the forwarding path are raw Linux `struct can_frame` (16 B) / `struct canfd_frame` (72 B)
in host byte order (see bridge.codec.socketcan); a batch is a list of `(raw, ts_ns)` tuples. The
encoders read those structs directly and the decoders produce them directly, so no per-frame objects
other than the tuples are created.

Errors: everything that malformed peer input can cause is reported as NativeProtocolError with a
`reason` slug; no other exception type escapes StreamDecoder or decode_datagram. The encoders raise
ValueError for invalid arguments (a caller bug, never peer input).
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass

from bridge.codec.base import CLOSED, NEED_DATA, StreamInput, events, pack_datagrams
from bridge.codec.socketcan import CAN_FRAME as _CAN
from bridge.codec.socketcan import CAN_RTR_FLAG as _RTR
from bridge.codec.socketcan import CANFD_FDF as _FDF
from bridge.codec.socketcan import CANFD_FLAGS_MASK as _FD_FLAGS_MASK
from bridge.codec.socketcan import CANFD_FRAME as _CANFD
from bridge.codec.socketcan import VALID_FD_LENGTHS as _FD_LENS
from bridge.errors import ProtocolError

VERSION = 1
DEFAULT_PORT = 29600  # TCP and UDP; docs/protocol.md (the one home of this number)
MAGIC = b"CNBR"
MAX_RECORD_BODY = 1024
UDP_HEADER_LEN = 14
DEFAULT_MTU = 1472

CAP_FD = 1  # HELLO capability: sender can send and receive CAN FD frames
CAP_ERR_FRAMES = 2  # HELLO capability: sender forwards error frames (CAN_ERR_FLAG)

REC_HELLO = 0x01
REC_FRAME = 0x02
REC_HEARTBEAT = 0x03
REC_TX_COUNT = 0x04
REC_RX_COUNT = 0x05
REC_PUB_COUNT = 0x06  # MQTT payloads only (docs/protocol.md 10): TCP and UDP readers skip it as unknown
REC_PUB_DROPPED = 0x07  # MQTT payloads only, right after PUB_COUNT (docs/protocol.md 10)

MAX_CHANNELS = 255
MAX_CHANNEL_NAME = 15  # IFNAMSIZ - 1
FRAME_RECORD_FIXED = 20  # record header (4) + FRAME fixed body (16)
MAX_FRAME_RECORD = FRAME_RECORD_FIXED + 64  # 84 bytes

_U32 = 0xFFFFFFFF

_STREAM_HDR = struct.Struct(">4sBB")  # magic, version, flags
_UDP_HDR = struct.Struct(">4sBBII")  # magic, version, flags, session, seq
_REC_HDR = struct.Struct(">BBH")  # type, rflags, length
# record header + FRAME fixed body: type, rflags, length, can_id, len, fd_flags, len8_dlc, channel, ts_ns
_FRAME_HDR = struct.Struct(">BBHIBBBBQ")
# encoder: the same followed by exactly `dl` data bytes ("Ns" truncates longer input), one per data length
_FRAME_REC = tuple(struct.Struct(f">BBHIBBBBQ{dl}s") for dl in range(65))
_HELLO_FIXED = struct.Struct(">BBHIB")  # proto_version, reserved, capabilities, heartbeat_ms, n_channels
_HEARTBEAT = struct.Struct(">BBHQ")  # record header + sent_ns
_TX_COUNT = struct.Struct(">BBHQ")  # record header + frames_sent
_RX_COUNT = struct.Struct(">BBHIQ")  # record header + session + frames_accounted
_RX_COUNT_BODY = struct.Struct(">IQ")  # also the PUB_COUNT body
_U64 = struct.Struct(">Q")

assert _UDP_HDR.size == UDP_HEADER_LEN and _FRAME_HDR.size == FRAME_RECORD_FIXED



STREAM_PREAMBLE = _STREAM_HDR.pack(MAGIC, VERSION, 0)


class NativeProtocolError(ProtocolError):
    """Malformed native-protocol input. `reason` is one of: bad_magic, bad_version, truncated,
    record_too_large, hello_expected, duplicate_hello, bad_record_length, bad_channel_name,
    len_too_large, bad_fd_len, bad_flags, bad_len8_dlc, bad_channel, data_after_eof."""


def _err(reason: str, detail: str = "") -> NativeProtocolError:
    return NativeProtocolError(reason, detail)


@dataclass(frozen=True, slots=True)
class Hello:
    """HELLO record. version: highest protocol version the sender speaks (>= 1); capabilities: CAP_*
    bits (unknown bits kept, to be ignored); heartbeat_ms: sender's heartbeat interval in ms, 0 = none;
    channels: the sender's interface names, index = FRAME channel number."""

    version: int = VERSION
    capabilities: int = 0
    heartbeat_ms: int = 0
    channels: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """HEARTBEAT record. sent_ns: sender's wall clock in ns since the epoch (informational)."""

    sent_ns: int


@dataclass(frozen=True, slots=True)
class TxCount:
    """TX_COUNT record. frames_sent: FRAME records the sender put in its datagrams before the one
    carrying this record (u64, cumulative since the sender's DatagramEncoder started; receivers use
    differences within one session, see bridge.codec.frameloss)."""

    frames_sent: int


@dataclass(frozen=True, slots=True)
class RxCount:
    """RX_COUNT record (docs/protocol.md 4.6). session: the u32 session of the sender being acknowledged
    (the session this receiver receives from); frames_accounted: u64, the position in that sender's
    TX_COUNT numbering up to which this receiver has accounted for every frame (received, or counted
    lost in transit), see bridge.codec.frameloss.FrameLossTracker.accounted and DeliveryTracker."""

    session: int
    frames_accounted: int


@dataclass(frozen=True, slots=True)
class Frames:
    """A run of consecutive FRAME records of one channel: frames is a list of (raw, ts_ns), raw being
    a 16-byte can_frame or a 72-byte canfd_frame in host byte order, ts_ns int ns since the epoch."""

    channel: int
    frames: list


# ----------------------------------------------------------------------------------------- encoding


def _valid_name(name: str) -> bool:
    return (
        1 <= len(name) <= MAX_CHANNEL_NAME
        and name.isascii()
        and name.isprintable()
        and not any(c in name for c in " /:")
    )


def encode_hello(hello: Hello) -> bytes:
    """Hello -> one HELLO record (bytes). Raises ValueError on out-of-range fields, a channel name
    that is not 1..15 printable ASCII characters without space, '/' or ':', or a body > 1024 bytes."""
    names = tuple(hello.channels)
    if len(names) > MAX_CHANNELS:
        raise ValueError(f"{len(names)} channels > {MAX_CHANNELS}")
    for name in names:
        if not isinstance(name, str) or not _valid_name(name):
            raise ValueError(f"invalid channel name {name!r}")
    if not (1 <= hello.version <= 255 and 0 <= hello.capabilities <= 0xFFFF
            and 0 <= hello.heartbeat_ms <= _U32):
        raise ValueError(f"HELLO field out of range: {hello!r}")
    fixed = _HELLO_FIXED.pack(hello.version, 0, hello.capabilities, hello.heartbeat_ms, len(names))
    body = fixed + b"".join(bytes((len(n),)) + n.encode("ascii") for n in names)
    if len(body) > MAX_RECORD_BODY:
        raise ValueError(f"HELLO body {len(body)} bytes > {MAX_RECORD_BODY}")
    return _REC_HDR.pack(REC_HELLO, 0, len(body)) + body


def encode_heartbeat(sent_ns: int) -> bytes:
    """sent_ns (int ns, 0..2**64-1) -> one HEARTBEAT record (12 bytes). ValueError if out of range."""
    try:
        return _HEARTBEAT.pack(REC_HEARTBEAT, 0, 8, sent_ns)
    except struct.error as e:
        raise ValueError(f"bad heartbeat timestamp {sent_ns!r}") from e


def encode_tx_count(frames_sent: int) -> bytes:
    """frames_sent (int, 0..2**64-1) -> one TX_COUNT record (12 bytes). ValueError if out of range."""
    try:
        return _TX_COUNT.pack(REC_TX_COUNT, 0, 8, frames_sent)
    except struct.error as e:
        raise ValueError(f"bad frames_sent {frames_sent!r}") from e


def encode_rx_count(session: int, frames_accounted: int) -> bytes:
    """(session u32, frames_accounted u64) -> one RX_COUNT record (16 bytes). ValueError if out of range."""
    try:
        return _RX_COUNT.pack(REC_RX_COUNT, 0, 12, session, frames_accounted)
    except struct.error as e:
        raise ValueError(f"bad RX_COUNT session {session!r} / frames_accounted {frames_accounted!r}") from e


def encode_pub_count(session: int, frames_before: int) -> bytes:
    """(session u32, frames_before u64) -> one PUB_COUNT record (16 bytes; docs/protocol.md 10: an MQTT
    publisher's session and the frames it put in its earlier messages on the topic). ValueError if out
    of range."""
    try:
        return _RX_COUNT.pack(REC_PUB_COUNT, 0, 12, session, frames_before)
    except struct.error as e:
        raise ValueError(f"bad PUB_COUNT session {session!r} / frames_before {frames_before!r}") from e


def read_pub_count(buf, pos: int) -> tuple[tuple[int, int] | None, int]:
    """A PUB_COUNT record at buf[pos:] -> ((session, frames_before), the position after it); a record of
    another type (or none) -> (None, pos). NativeProtocolError bad_record_length for a PUB_COUNT whose
    body is not 12 bytes or is cut short."""
    if len(buf) < pos + 4 or buf[pos] != REC_PUB_COUNT:
        return None, pos
    end = pos + _RX_COUNT.size
    if _REC_HDR.unpack_from(buf, pos)[2] != _RX_COUNT_BODY.size or len(buf) < end:
        raise _err("bad_record_length", "PUB_COUNT body is not 12 bytes")
    return _RX_COUNT_BODY.unpack_from(buf, pos + 4), end


def encode_pub_dropped(frames_dropped: int) -> bytes:
    """frames_dropped u64 -> one PUB_DROPPED record (12 bytes; docs/protocol.md 10: frames the publisher
    numbered on the topic in this session and then dropped itself). ValueError if out of range."""
    try:
        return _TX_COUNT.pack(REC_PUB_DROPPED, 0, 8, frames_dropped)
    except struct.error as e:
        raise ValueError(f"bad PUB_DROPPED frames_dropped {frames_dropped!r}") from e


def read_pub_dropped(buf, pos: int) -> tuple[int, int]:
    """A PUB_DROPPED record at buf[pos:] -> (frames_dropped, the position after it); a record of another
    type (or none) -> (0, pos). NativeProtocolError bad_record_length for a body that is not 8 bytes."""
    if len(buf) < pos + 4 or buf[pos] != REC_PUB_DROPPED:
        return 0, pos
    end = pos + _TX_COUNT.size
    if _REC_HDR.unpack_from(buf, pos)[2] != _U64.size or len(buf) < end:
        raise _err("bad_record_length", "PUB_DROPPED body is not 8 bytes")
    return _U64.unpack_from(buf, pos + 4)[0], end


def _append_frame_records(channel: int, frames, out: list) -> None:
    """Append one FRAME record (bytes, 20..84 long) per (raw, ts_ns) of `frames` to `out`.

    raw: 16-byte can_frame (classic: fd_flags 0, len8_dlc from byte 7 when it means something - len 8
    and 9..15 - else 0, as the kernel reads it; no data if RTR) or 72-byte canfd_frame (FDF always set
    on the wire, other flag bits than BRS/ESI/FDF dropped).
    Raises ValueError for a channel outside 0..255, a raw frame of another size, an invalid len, or a
    timestamp outside u64 - such input never comes from the kernel or our decoders.
    """
    if not 0 <= channel <= MAX_CHANNELS:
        raise ValueError(f"channel {channel} outside 0..255")
    recs = _FRAME_REC
    can_unpack = _CAN.unpack_from
    fd_unpack = _CANFD.unpack_from
    ap = out.append
    try:
        for raw, ts in frames:
            if len(raw) == 16:
                cid, n, _, _, l8, data = can_unpack(raw)
                if n > 8:
                    raise ValueError(f"invalid can_frame len={n}")
                if l8 and (n != 8 or not 9 <= l8 <= 15):
                    l8 = 0  # meaningless there and ignored by the kernel; python-can writes the DLC in it
                dl = 0 if cid & 0x40000000 else n
                ap(recs[dl].pack(REC_FRAME, 0, 16 + dl, cid, n, 0, l8, channel, ts, data))
            elif len(raw) == 72:
                cid, n, fl, _, _, data = fd_unpack(raw)
                if n not in _FD_LENS or cid & _RTR:
                    raise ValueError(f"invalid canfd_frame len={n} can_id={cid:#x}")
                ap(recs[n].pack(REC_FRAME, 0, 16 + n, cid, n, (fl & _FD_FLAGS_MASK) | _FDF, 0, channel,
                                ts, data))
            else:
                raise ValueError(f"raw frame of {len(raw)} bytes, expected 16 or 72")
    except struct.error as e:
        raise ValueError(f"cannot encode frame: {e}") from e


def encode_frames(channel: int, frames) -> bytes:
    """(channel 0..255, batch [(raw, ts_ns), ...]) -> the FRAME records, concatenated (one join).
    Raises ValueError on invalid input (see _append_frame_records)."""
    out: list = []
    _append_frame_records(channel, frames, out)
    return b"".join(out)


class DatagramEncoder:
    """Builds UDP datagrams for one peer: header (magic, version, flags, session, seq) + records.

    session: u32 chosen at random by the caller when the sender starts; mtu: max datagram size in
    bytes including the 14-byte header (>= 98 so the largest FRAME record fits). `seq` is the number
    the next datagram gets (0 first, +1 per datagram, wraps at 2**32); `datagrams` counts them;
    `frames` counts the FRAME records put in them (what a TX_COUNT record reports, encode_tx_count).
    """

    def __init__(self, session: int, mtu: int = DEFAULT_MTU):
        if not 0 <= session <= _U32:
            raise ValueError(f"session {session} outside u32")
        if not UDP_HEADER_LEN + MAX_FRAME_RECORD <= mtu <= 65507:
            raise ValueError(f"mtu {mtu} outside {UDP_HEADER_LEN + MAX_FRAME_RECORD}..65507")
        self.session = session
        self.mtu = mtu
        self.seq = 0
        self.datagrams = 0
        self.frames = 0

    def _header(self) -> bytes:
        hdr = _UDP_HDR.pack(MAGIC, VERSION, 0, self.session, self.seq)
        self.seq = (self.seq + 1) & _U32
        self.datagrams += 1
        return hdr

    def encode(self, channel: int, frames) -> list[bytes]:
        """Batch [(raw, ts_ns), ...] of one channel -> datagrams (list of bytes, each <= mtu), records
        packed in order into as few datagrams as fit; [] for an empty batch. ValueError on bad input."""
        records: list = [b""]  # slot 0 is the header of the fast path
        _append_frame_records(channel, frames, records)
        if len(records) == 1:
            return []
        self.frames += len(records) - 1
        room = self.mtu - UDP_HEADER_LEN
        if (len(records) - 1) * MAX_FRAME_RECORD <= room:  # fast path: everything fits in one
            records[0] = self._header()
            return [b"".join(records)]
        return pack_datagrams(records, room, lambda _count: self._header())


    def encode_control(self, record: bytes) -> bytes:
        """Records (from encode_hello / encode_heartbeat / encode_tx_count / encode_rx_count,
        concatenated) -> one datagram. ValueError if > mtu. A control datagram of a UdpPeer is HELLO +
        TX_COUNT(frames), + RX_COUNT once it has accounted for frames of the peer's session."""
        if UDP_HEADER_LEN + len(record) > self.mtu:
            raise ValueError(f"record of {len(record)} bytes does not fit mtu {self.mtu}")
        return self._header() + record


# ----------------------------------------------------------------------------------------- decoding


def _parse_hello(buf, start: int, end: int) -> Hello:
    """HELLO body buf[start:end] -> Hello. Trailing bytes after the channel list are ignored."""
    if end - start < _HELLO_FIXED.size:
        raise _err("bad_record_length", f"HELLO body of {end - start} bytes < 9")
    version, _, caps, hb_ms, n_ch = _HELLO_FIXED.unpack_from(buf, start)
    if version < 1:
        raise _err("bad_version", "HELLO proto_version 0")
    p = start + _HELLO_FIXED.size
    names = []
    for _ in range(n_ch):
        if p >= end:
            raise _err("bad_record_length", "HELLO channel list runs past the body")
        ln = buf[p]
        if not 1 <= ln <= MAX_CHANNEL_NAME:
            raise _err("bad_channel_name", f"name length {ln}")
        if p + 1 + ln > end:
            raise _err("bad_record_length", "HELLO channel name runs past the body")
        raw = bytes(buf[p + 1 : p + 1 + ln])
        name = raw.decode("latin-1")
        if not _valid_name(name):
            raise _err("bad_channel_name", repr(raw))
        names.append(name)
        p += 1 + ln
    return Hello(version, caps, hb_ms, tuple(names))


def _bad_frame(blen: int, cid: int, n: int, fd: int, l8: int) -> NativeProtocolError:
    """The precise error for a FRAME record the fast checks rejected (cold path)."""
    if blen > MAX_RECORD_BODY:
        return _err("record_too_large", f"FRAME body {blen} bytes")
    if blen < 16:  # the fields were read from the bytes after the record: do not judge them
        return _err("bad_record_length", f"FRAME body {blen} bytes < 16")
    if n > 64 or (not fd & _FDF and n > 8):
        return _err("len_too_large", f"len {n}")
    if fd & ~_FD_FLAGS_MASK or (fd and not fd & _FDF) or (fd & _FDF and cid & _RTR):
        return _err("bad_flags", f"fd_flags {fd:#04x} can_id {cid:#010x}")
    if fd & _FDF and n not in _FD_LENS:
        return _err("bad_fd_len", f"len {n}")
    if l8 and (fd or n != 8 or not 9 <= l8 <= 15):
        return _err("bad_len8_dlc", f"len8_dlc {l8} with len {n} fd_flags {fd:#04x}")
    return _err("bad_record_length", f"FRAME body {blen} bytes, len {n}")


def _other_record(buf, pos: int, rtype: int, blen: int, events: list, hello_ok: bool) -> bool:
    """A complete non-FRAME record at buf[pos:]: append its event and return True, or return False
    for an unknown type (skipped). Raises record_too_large, bad_record_length, duplicate_hello."""
    if blen > MAX_RECORD_BODY:
        raise _err("record_too_large", f"record type {rtype} body {blen} bytes")
    if rtype == REC_HEARTBEAT:
        if blen < 8:
            raise _err("bad_record_length", f"HEARTBEAT body {blen} bytes < 8")
        events.append(Heartbeat(_U64.unpack_from(buf, pos + 4)[0]))
        return True
    if rtype == REC_TX_COUNT:
        if blen != 8:
            raise _err("bad_record_length", f"TX_COUNT body {blen} bytes != 8")
        events.append(TxCount(_U64.unpack_from(buf, pos + 4)[0]))
        return True
    if rtype == REC_RX_COUNT:
        if blen != 12:
            raise _err("bad_record_length", f"RX_COUNT body {blen} bytes != 12")
        events.append(RxCount(*_RX_COUNT_BODY.unpack_from(buf, pos + 4)))
        return True
    if rtype == REC_HELLO:
        if not hello_ok:
            raise _err("duplicate_hello")
        events.append(_parse_hello(buf, pos + 4, pos + 4 + blen))
        return True
    return False


def _parse_records(buf, pos: int, end: int, events: list, n_channels: int, hello_ok: bool):
    """Decode the complete records in buf[pos:end], appending events; -> (stop position, skipped).

    Stops at the first incomplete record (its header is still checked for record_too_large). FRAME
    records become raw structs; consecutive ones of one channel share one Frames event. Records of
    unknown type are skipped (counted). Channels >= n_channels -> bad_channel; a HELLO when not
    hello_ok -> duplicate_hello. Events decoded before an error stay in `events`.
    """
    frame_hdr = _FRAME_HDR.unpack_from
    rec_hdr = _REC_HDR.unpack_from
    can_pack = _CAN.pack
    fd_pack = _CANFD.pack
    fd_lens = _FD_LENS
    cur_ch = -1
    add = None
    skipped = 0
    # Hot loop: literals instead of module constants (0x02 REC_FRAME, 0x40000000 CAN_RTR_FLAG,
    # 0x04 FDF, 0xF8 = not BRS|ESI|FDF, 1024 MAX_RECORD_BODY).
    while True:
        avail = end - pos
        if avail >= 20:
            rtype, _, blen, cid, n, fd, l8, ch, ts = frame_hdr(buf, pos)
        elif avail >= 4:
            rtype, _, blen = rec_hdr(buf, pos)
            if rtype == 0x02 and 4 + blen <= avail:  # a complete FRAME record shorter than 20 bytes
                raise _err("bad_record_length", f"FRAME body {blen} bytes < 16")
        else:
            break
        rend = pos + 4 + blen
        if rend > end:
            if blen > 1024:
                raise _err("record_too_large", f"record type {rtype} body {blen} bytes")
            break
        if rtype == 0x02:  # FRAME; a valid one has blen <= 80 (too large ones: see _bad_frame)
            if not fd:  # classic CAN
                dl = 0 if cid & 0x40000000 else n
                if n > 8 or blen != 16 + dl or (l8 and (n != 8 or not 9 <= l8 <= 15)):
                    raise _bad_frame(blen, cid, n, fd, l8)
                raw = can_pack(cid, n, 0, 0, l8, buf[pos + 20 : rend])
            else:  # CAN FD
                if fd & 0xF8 or not fd & 0x04 or cid & 0x40000000 or l8 or n not in fd_lens \
                        or blen != 16 + n:
                    raise _bad_frame(blen, cid, n, fd, l8)
                raw = fd_pack(cid, n, fd, 0, 0, buf[pos + 20 : rend])
            if ch != cur_ch:
                if ch >= n_channels:
                    raise _err("bad_channel", f"channel {ch}, peer has {n_channels}")
                cur_ch = ch
                cur: list = []
                add = cur.append
                events.append(Frames(ch, cur))
            add((raw, ts))
        elif _other_record(buf, pos, rtype, blen, events, hello_ok):
            cur_ch = -1  # a HELLO, HEARTBEAT, TX_COUNT or RX_COUNT event ends the run of frames
        else:
            skipped += 1
        pos = rend
    return pos, skipped


def decode_datagram(data, n_channels: int = 256) -> tuple[int, int, list]:
    """One UDP datagram (bytes-like) -> (session u32, seq u32, events [Hello | Heartbeat | TxCount |
    RxCount | Frames]).

    n_channels: if given (the peer's HELLO channel count), frames of a higher channel are rejected.
    Raises NativeProtocolError on any malformation (bad_magic, bad_version, truncated, and every FRAME,
    HELLO, HEARTBEAT, TX_COUNT and RX_COUNT check); the whole datagram is rejected then, no partial result.
    """
    if not isinstance(data, (bytes, bytearray)):
        data = bytes(data)
    end = len(data)
    if end < UDP_HEADER_LEN:
        if data[:4] != MAGIC[:end]:
            raise _err("bad_magic", repr(bytes(data[:4])))
        raise _err("truncated", f"datagram of {end} bytes < 14")
    magic, version, _flags, session, seq = _UDP_HDR.unpack_from(data)
    if magic != MAGIC:
        raise _err("bad_magic", repr(magic))
    if version != VERSION:
        raise _err("bad_version", f"version {version}")
    events: list = []
    pos, _ = _parse_records(data, UDP_HEADER_LEN, end, events, n_channels, True)
    if pos != end:
        raise _err("truncated", f"{end - pos} bytes of an incomplete record at the end")
    return session, seq, events


class StreamDecoder(StreamInput):
    """Decoder of one TCP connection, h11 style: receive_data(bytes) then next_event() until NEED_DATA.

    Checks the preamble (magic, version), requires HELLO as the first record, then yields Heartbeat,
    TxCount and RxCount (checked, meaningless on TCP: callers ignore them) and Frames events (one Frames per run of
    same-channel FRAME records in the buffered bytes).
    Attributes: hello (the peer's Hello or None), bytes_received, frames_decoded, records_skipped.
    """

    _protocol_error = NativeProtocolError

    def __init__(self) -> None:
        super().__init__()
        self._pending: deque = deque()
        self._preamble_done = False
        self._error: NativeProtocolError | None = None
        self.hello: Hello | None = None
        self.frames_decoded = 0
        self.records_skipped = 0

    def receive_all(self, data: bytes) -> list:
        """receive_data(data), then next_event() until NEED_DATA or CLOSED, as one list: what a stream
        reader does with each read, with the same events and errors (an error raises, and raises again
        on every later call). The usual read (the HELLO is in, nothing buffered or pending, whole
        records) is parsed where it lies: no copy into the buffer and no call per event, which with
        one frame in flight is most of the decoder's time (docs/benchmarks.md)."""
        if not data or self._buf or self._pending or self._error is not None or self.hello is None or self._eof:
            self.receive_data(data)
            return list(events(self))
        self.bytes_received += len(data)
        out: list = []
        try:
            pos, skipped = _parse_records(data, 0, len(data), out, len(self.hello.channels), False)
        except NativeProtocolError as e:
            self._error = e
            raise
        self.records_skipped += skipped
        if pos < len(data):  # the start of a record the next read completes
            self._buf += memoryview(data)[pos:]
        for ev in out:
            if type(ev) is Frames:
                self.frames_decoded += len(ev.frames)
        return out

    def next_event(self):
        """-> Hello | Heartbeat | TxCount | RxCount | Frames | NEED_DATA | CLOSED (EOF on a record boundary).
        Raises NativeProtocolError for malformed input (events decoded before the bad record are
        returned first) and "truncated" at EOF inside the preamble or a record. Once raised, raises
        the same error on every later call."""
        if self._pending:
            return self._pending.popleft()
        if self._error is None and self._buf:  # (an empty buffer holds nothing to decode: the usual last call)
            self._decode()
            if self._pending:
                return self._pending.popleft()
        if self._error is not None:
            raise self._error
        if self._eof:
            if self._buf:
                self._error = _err("truncated", f"EOF with {len(self._buf)} bytes of a partial record")
                raise self._error
            return CLOSED
        return NEED_DATA

    def _decode(self) -> None:
        events: list = []
        try:
            pos = self._decode_into(events)
        except NativeProtocolError as e:
            self._error = e
        else:
            if pos:
                del self._buf[:pos]
        for ev in events:
            if type(ev) is Frames:
                self.frames_decoded += len(ev.frames)
        self._pending.extend(events)

    def _decode_into(self, events: list) -> int:
        """Decode what the buffer holds into events; -> number of bytes consumed."""
        buf = self._buf
        pos = 0
        if not self._preamble_done:
            pos = self._check_preamble(buf)
            if not pos:
                return 0
        if self.hello is None:
            start = pos
            pos = self._first_record(buf, pos, events)
            if pos == start:
                return pos
        n_ch = len(self.hello.channels)
        pos, skipped = _parse_records(buf, pos, len(buf), events, n_ch, False)
        self.records_skipped += skipped
        return pos

    def _check_preamble(self, buf: bytearray) -> int:
        """-> 6 once the whole preamble is in and valid, 0 while incomplete. Wrong magic is
        detected from the first differing byte."""
        have = min(len(buf), 4)
        if buf[:have] != MAGIC[:have]:
            raise _err("bad_magic", repr(bytes(buf[:have])))
        if len(buf) < _STREAM_HDR.size:
            return 0
        _, version, _flags = _STREAM_HDR.unpack_from(buf)
        if version != VERSION:
            raise _err("bad_version", f"version {version}")
        self._preamble_done = True
        return _STREAM_HDR.size

    def _first_record(self, buf: bytearray, pos: int, events: list) -> int:
        """Decode the HELLO that must come first; -> position after it (== pos while incomplete)."""
        if len(buf) - pos < 4:
            return pos
        rtype, _, blen = _REC_HDR.unpack_from(buf, pos)
        if rtype != REC_HELLO:
            raise _err("hello_expected", f"first record has type {rtype}")
        if blen > MAX_RECORD_BODY:
            raise _err("record_too_large", f"HELLO body {blen} bytes")
        if len(buf) - pos - 4 < blen:
            return pos
        self.hello = _parse_hello(buf, pos + 4, pos + 4 + blen)
        events.append(self.hello)
        return pos + 4 + blen


# ------------------------------------------------------------------------------------ UDP sequence


class SequenceTracker:
    """Receiver-side datagram sequence accounting for one sender address.

    observe(session, seq) classifies each datagram:
      "reset"      first datagram, a new session (sender restarted), or a confirmed resync (below)
      "ok"         ahead of the highest seq seen by 1..MAX_GAP; a gap of g adds g to `lost`
      "reordered"  behind the highest, within WINDOW, not seen yet: fills a gap (lost -= 1), or
                   is older than the first datagram seen (the gap down to it is added to `lost`)
      "duplicate"  seen already (within WINDOW) - drop it
      "stale"      more than WINDOW behind, more than MAX_GAP ahead, or from the previous session:
                   cannot be classified - drop it. Two consecutive such datagrams (seq, seq+1) of the
                   current session mean the sender jumped: tracking resyncs ("reset" on the second).
    Counters (cumulative across sessions): received (ok + reordered + reset), lost, duplicated,
    reordered, stale, resets. seq comparisons use serial-number arithmetic modulo 2**32 (RFC 1982),
    so wrapping from 0xFFFFFFFF to 0 is an ordinary step. Within a session, while nothing is stale:
    lost == (highest - lowest seq seen + 1) - distinct datagrams received.
    """

    WINDOW = 1024
    MAX_GAP = 1 << 20
    _MASK = (1 << WINDOW) - 1

    def __init__(self) -> None:
        self.session: int | None = None
        self._prev_session: int | None = None
        self._top = 0  # highest seq seen in the session
        self._base = 0  # lowest seq seen in the session (the session's start as far as we know)
        self._seen = 0  # bit i set: seq (top - i) received
        self._probe: int | None = None  # seq expected next if the last datagram was a jump
        self.received = 0
        self.lost = 0
        self.duplicated = 0
        self.reordered = 0
        self.stale = 0
        self.resets = 0

    def observe(self, session: int, seq: int) -> str:
        """(session u32, seq u32) of a decoded datagram -> "ok" | "reordered" | "duplicate" |
        "reset" | "stale"; updates the counters."""
        if session != self.session:
            if session == self._prev_session:
                self.stale += 1
                return "stale"
            self._prev_session = self.session
            return self._reset(session, seq)
        d = (seq - self._top) & _U32
        if d == 0:
            self.duplicated += 1
            return "duplicate"
        if d < 0x80000000:
            if d <= self.MAX_GAP:
                return self._advance(seq, d)
            return self._jump(seq)
        back = 0x100000000 - d
        if back >= self.WINDOW:
            return self._jump(seq)
        bit = 1 << back
        if self._seen & bit:
            self.duplicated += 1
            return "duplicate"
        self._seen |= bit
        span = (self._top - self._base) & _U32
        if back > span:  # older than the first datagram seen: the session started earlier
            self.lost += back - span - 1
            self._base = seq
        else:  # fills a gap counted as lost
            self.lost -= 1
        self.received += 1
        self.reordered += 1
        self._probe = None
        return "reordered"

    def _reset(self, session: int, seq: int) -> str:
        self.session = session
        self._top = self._base = seq
        self._seen = 1
        self._probe = None
        self.received += 1
        self.resets += 1
        return "reset"

    def _advance(self, seq: int, d: int) -> str:
        self.lost += d - 1
        self._seen = ((self._seen << d) | 1) & self._MASK if d < self.WINDOW else 1
        self._top = seq
        self._probe = None
        self.received += 1
        return "ok"

    def _jump(self, seq: int) -> str:
        if seq == self._probe:
            return self._reset(self.session, seq)
        self._probe = (seq + 1) & _U32
        self.stale += 1
        return "stale"
