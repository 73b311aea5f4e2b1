"""cannelloni wire format (UDP datagrams and the TCP variant): sans-IO encoder/decoder (h11 style).

Facts from cannelloni @ a7776f82 (parser.cpp, decoder.cpp, udpthread.cpp, tcpthread.cpp, doc/); see
/work/shared/reference/wire-formats.md section 2a. All multi-byte fields big-endian:

    UDP datagram = version(u8=2) op_code(u8=0 DATA) seq_no(u8) count(u16), then `count` records
    TCP stream   = the 12 ASCII bytes "CANNELLONIv1" (each side sends them first), then records
    record       = can_id(u32, SocketCAN canid_t incl. EFF/RTR/ERR flags) len(u8)
                   [flags(u8): only if len & 0x80 (CAN FD); canfd_frame.flags BRS 0x01 ESI 0x02 FDF 0x04]
                   data[len & 0x7F]                 (no data bytes for RTR frames; len = requested DLC)

There is no timestamp, channel or len8_dlc on the wire. Frames on the forwarding path are raw Linux
`struct can_frame` (16 B) / `struct canfd_frame` (72 B) in host byte order (bridge.codec.socketcan); a
batch is a list of `(raw, ts_ns)` tuples. Encoders read those structs directly, decoders build them
directly with ts_ns = 0 (the receiver stamps its own time): classic frames with len8_dlc 0, FD frames
with FDF set and flags reduced to BRS|ESI|FDF.

Decoding is stricter than cannelloni itself (which ignores trailing bytes and, over TCP, does not bound
len): everything malformed is reported as CannelloniProtocolError with a `reason` slug, and no other
exception type escapes decode_datagram or StreamDecoder. A datagram with count 0 is ignored (no frames,
no error, its remaining bytes unread), as cannelloni does. The encoders raise ValueError for invalid
arguments (a caller bug, never peer input).
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass

from bridge.codec.base import CLOSED, NEED_DATA, StreamInput, pack_datagrams
from bridge.codec.socketcan import CAN_FRAME as _CAN
from bridge.codec.socketcan import CAN_RTR_FLAG as _RTR
from bridge.codec.socketcan import CANFD_FDF as _FDF
from bridge.codec.socketcan import CANFD_FLAGS_MASK as _FD_FLAGS_MASK
from bridge.codec.socketcan import CANFD_FRAME as _CANFD
from bridge.codec.socketcan import VALID_FD_LENGTHS as _FD_LENS
from bridge.errors import ProtocolError

BANNER = b"CANNELLONIv1"
VERSION = 2
DEFAULT_PORT = 20000  # cannelloni's own default (-l/-r), TCP and UDP
OP_DATA = 0
DEFAULT_MTU = 1472  # 1500 - 28 (IPv4 + UDP headers): cannelloni's default payload limit
MAX_MTU = 65507
UDP_HEADER_LEN = 5
MAX_FRAME_RECORD = 70  # can_id + len + flags + 64 data bytes
MIN_MTU = UDP_HEADER_LEN + MAX_FRAME_RECORD


_UDP_HDR = struct.Struct(">BBBH")  # version, op_code, seq_no, count
_REC_HDR = struct.Struct(">IB")  # can_id, len
# encoder: record with exactly `dl` data bytes ("Ns" truncates longer input), one per data length
_CLASSIC_REC = tuple(struct.Struct(f">IB{dl}s") for dl in range(9))  # can_id, len, data
_FD_REC = tuple(struct.Struct(f">IBB{dl}s") for dl in range(65))  # can_id, len|0x80, flags, data

assert _UDP_HDR.size == UDP_HEADER_LEN and _FD_REC[64].size == MAX_FRAME_RECORD




class CannelloniProtocolError(ProtocolError):
    """Malformed cannelloni input. `reason` is one of: bad_version, bad_op_code, truncated,
    trailing_data, len_too_large, bad_fd_len, bad_flags (CAN FD record with the RTR flag), bad_banner,
    data_after_eof."""


def _err(reason: str, detail: str = "") -> CannelloniProtocolError:
    return CannelloniProtocolError(reason, detail)


@dataclass(frozen=True, slots=True)
class Banner:
    """The peer's "CANNELLONIv1" banner arrived (first event of a TCP stream)."""


@dataclass(frozen=True, slots=True)
class Frames:
    """Consecutive frame records: frames is a list of (raw, 0), raw being a 16-byte can_frame or a
    72-byte canfd_frame in host byte order (ts_ns is 0: the wire carries no timestamp)."""

    frames: list


# ----------------------------------------------------------------------------------------- encoding


def _append_records(frames, out: list) -> None:
    """Append one frame record (bytes, 5..70 long) per (raw, ts_ns) of `frames` to `out`.

    raw: 16-byte can_frame (len 0..8; len8_dlc dropped; no data bytes if RTR) or 72-byte canfd_frame
    (valid FD len, no RTR; flags sent as (flags & (BRS|ESI|FDF)) | FDF). ts_ns is ignored.
    Raises ValueError for a raw frame of another size or an invalid len / FD RTR frame - such input
    never comes from the kernel or our decoders.
    """
    classic = _CLASSIC_REC
    fdrec = _FD_REC
    can_unpack = _CAN.unpack_from
    fd_unpack = _CANFD.unpack_from
    ap = out.append
    try:
        for raw, _ts in frames:
            if len(raw) == 16:
                cid, n, _, _, _, data = can_unpack(raw)
                if n > 8:
                    raise ValueError(f"invalid can_frame len={n}")
                ap(classic[0].pack(cid, n, b"") if cid & 0x40000000 else classic[n].pack(cid, n, data))
            elif len(raw) == 72:
                cid, n, fl, _, _, data = fd_unpack(raw)
                if n not in _FD_LENS or cid & _RTR:
                    raise ValueError(f"invalid canfd_frame len={n} can_id={cid:#x}")
                ap(fdrec[n].pack(cid, n | 0x80, (fl & _FD_FLAGS_MASK) | _FDF, data))
            else:
                raise ValueError(f"raw frame of {len(raw)} bytes, expected 16 or 72")
    except struct.error as e:
        raise ValueError(f"cannot encode frame: {e}") from e


def encode_frames(frames) -> bytes:
    """Batch [(raw, ts_ns), ...] -> the bare frame records, concatenated (the TCP byte stream after
    the banner). Raises ValueError on invalid input (see _append_records)."""
    out: list = []
    _append_records(frames, out)
    return b"".join(out)


class DatagramEncoder:
    """Builds UDP datagrams for one peer: header (version 2, op DATA, seq_no, count) + records.

    mtu: max datagram (UDP payload) size in bytes including the 5-byte header, 75..65507 (75: the
    largest record fits); cannelloni's default is 1472 and a stock receiver truncates bigger ones.
    `seq` is the seq_no the next datagram gets (0 first, +1 per datagram, wraps 255 -> 0);
    `datagrams` counts the datagrams built.
    """

    def __init__(self, mtu: int = DEFAULT_MTU):
        if not MIN_MTU <= mtu <= MAX_MTU:
            raise ValueError(f"mtu {mtu} outside {MIN_MTU}..{MAX_MTU}")
        self.mtu = mtu
        self.seq = 0
        self.datagrams = 0

    def _header(self, count: int) -> bytes:
        hdr = _UDP_HDR.pack(VERSION, OP_DATA, self.seq, count)
        self.seq = (self.seq + 1) & 0xFF
        self.datagrams += 1
        return hdr

    def encode(self, frames) -> list[bytes]:
        """Batch [(raw, ts_ns), ...] -> datagrams (list of bytes, each <= mtu), records packed in order
        into as few datagrams as fit; [] for an empty batch. ValueError on bad input."""
        records: list = [b""]  # slot 0 is the header of the fast path
        _append_records(frames, records)
        n = len(records) - 1
        if not n:
            return []
        room = self.mtu - UDP_HEADER_LEN
        if n * MAX_FRAME_RECORD <= room or sum(map(len, records)) <= room:  # all in one datagram
            records[0] = self._header(n)
            return [b"".join(records)]
        return pack_datagrams(records, room, self._header)



# ----------------------------------------------------------------------------------------- decoding


def _bad_fd_len(n: int) -> CannelloniProtocolError:
    if n > 64:
        return _err("len_too_large", f"CAN FD len {n}")
    return _err("bad_fd_len", f"CAN FD len {n}")


def _parse_records(buf, pos: int, end: int, limit: int, out: list) -> int:
    """Decode up to `limit` complete records of buf[pos:end] into (raw, 0) tuples appended to `out`;
    -> the position after the last one decoded. Stops at the first incomplete record, whose len is
    still checked as soon as it is present. Frames decoded before an error stay in `out`."""
    rec_hdr = _REC_HDR.unpack_from
    can_pack = _CAN.pack
    fd_pack = _CANFD.pack
    fd_lens = _FD_LENS
    ap = out.append
    # Hot loop: literals instead of module constants (0x40000000 CAN_RTR_FLAG, 0x80 FD bit of len,
    # 0x03 BRS|ESI, 0x04 FDF).
    for _ in range(limit):
        if end - pos < 5:
            break
        cid, n = rec_hdr(buf, pos)
        if n <= 8:  # classic CAN
            if cid & 0x40000000:  # RTR: no data bytes, len is the requested length
                ap((can_pack(cid, n, 0, 0, 0, b""), 0))
                pos += 5
                continue
            stop = pos + 5 + n
            if stop > end:
                break
            ap((can_pack(cid, n, 0, 0, 0, buf[pos + 5 : stop]), 0))
            pos = stop
        elif n & 0x80:  # CAN FD
            n &= 0x7F
            if n not in fd_lens:
                raise _bad_fd_len(n)
            if cid & 0x40000000:
                raise _err("bad_flags", f"CAN FD record with RTR flag, can_id {cid:#010x}")
            stop = pos + 6 + n
            if stop > end:
                break
            ap((fd_pack(cid, n, (buf[pos + 5] & 0x03) | 0x04, 0, 0, buf[pos + 6 : stop]), 0))
            pos = stop
        else:
            raise _err("len_too_large", f"classic CAN len {n}")
    return pos


def decode_datagram(data) -> tuple[int, list]:
    """One UDP (or SCTP) datagram (bytes-like) -> (seq_no u8, [(raw, 0), ...]).

    count 0 -> (seq_no, []) whatever follows the header. Raises CannelloniProtocolError on any
    malformation (bad_version, bad_op_code, truncated: header or fewer records than count,
    trailing_data: bytes after count records, and the record checks len_too_large, bad_fd_len,
    bad_flags); the whole datagram is rejected then, no partial result.
    """
    if not isinstance(data, (bytes, bytearray)):
        data = bytes(data)
    end = len(data)
    if end and data[0] != VERSION:
        raise _err("bad_version", f"version {data[0]}")
    if end > 1 and data[1] != OP_DATA:
        raise _err("bad_op_code", f"op_code {data[1]}")
    if end < UDP_HEADER_LEN:
        raise _err("truncated", f"datagram of {end} bytes < {UDP_HEADER_LEN}")
    _, _, seq, count = _UDP_HDR.unpack_from(data)
    frames: list = []
    if not count:
        return seq, frames
    pos = _parse_records(data, UDP_HEADER_LEN, end, count, frames)
    if len(frames) != count:
        raise _err("truncated", f"{len(frames)} of {count} records, then {end - pos} bytes")
    if pos != end:
        raise _err("trailing_data", f"{end - pos} bytes after {count} records")
    return seq, frames


class StreamDecoder(StreamInput):
    """Decoder of one cannelloni TCP connection, h11 style: receive_data(bytes) then next_event()
    until NEED_DATA. The peer's banner must come first (checked byte by byte as it arrives); then
    every call groups all complete records buffered into one Frames event.
    Attributes: banner_received, bytes_received, frames_decoded.
    """

    _protocol_error = CannelloniProtocolError

    def __init__(self) -> None:
        super().__init__()
        self._pending: deque = deque()
        self._error: CannelloniProtocolError | None = None
        self.banner_received = False
        self.frames_decoded = 0


    def next_event(self):
        """-> Banner (once, first) | Frames | NEED_DATA | CLOSED (EOF on a record boundary, or before
        any byte). Raises CannelloniProtocolError for malformed input (events decoded before the bad
        record are returned first) and "truncated" at EOF inside the banner or a record. Once raised,
        raises the same error on every later call."""
        if self._pending:
            return self._pending.popleft()
        if self._error is None:
            self._decode()
            if self._pending:
                return self._pending.popleft()
        if self._error is not None:
            raise self._error
        if self._eof:
            if self._buf:
                where = "a record" if self.banner_received else "the banner"
                self._error = _err("truncated", f"EOF with {len(self._buf)} bytes of {where}")
                raise self._error
            return CLOSED
        return NEED_DATA

    def _decode(self) -> None:
        buf = self._buf
        pos = 0
        frames: list = []
        try:
            if not self.banner_received:
                have = min(len(buf), len(BANNER))
                if buf[:have] != BANNER[:have]:
                    raise _err("bad_banner", repr(bytes(buf[:have])))
                if have < len(BANNER):
                    return
                self.banner_received = True
                self._pending.append(Banner())
                pos = len(BANNER)
            end = len(buf)
            pos = _parse_records(buf, pos, end, end, frames)  # a record has >= 5 bytes: end is no limit
        except CannelloniProtocolError as e:
            self._error = e
        else:
            if pos:
                del buf[:pos]
        if frames:
            self.frames_decoded += len(frames)
            self._pending.append(Frames(frames))


# ------------------------------------------------------------------------------------ UDP sequence


class SeqCounter:
    """Receiver-side loss accounting for cannelloni's u8 seq_no (statistics only: cannelloni
    receivers never check seq_no, so callers deliver every datagram whatever observe() says).

    observe(seq) compares seq with the last seq_no that moved forward (`last`), modulo 256:
      "ok"                      the first datagram, or last + 1
      "lost"                    last + 2 .. last + 127: the seq_nos skipped are added to `lost`
      "duplicate_or_reordered"  last - 128 .. last (a backwards step within 128, incl. a repeat of
                                last): counted in `reordered`, `last` unchanged, `lost` not
                                corrected (a u8 seq cannot tell a late datagram from a duplicate)
    Counters: received (every datagram observed), lost, reordered. A sender restart (seq_no back to 0)
    shows as a gap or as a run of duplicate_or_reordered until the sequence passes `last` again;
    a loss of 128 or more datagrams in a row is misread the same way (u8 ambiguity).
    """

    def __init__(self) -> None:
        self.last: int | None = None
        self.received = 0
        self.lost = 0
        self.reordered = 0

    def observe(self, seq: int) -> str:
        """seq_no (0..255) of a decoded datagram -> "ok" | "lost" | "duplicate_or_reordered"."""
        self.received += 1
        if self.last is None:
            self.last = seq
            return "ok"
        d = (seq - self.last) & 0xFF
        if d == 1:
            self.last = seq
            return "ok"
        if 1 < d < 128:
            self.lost += d - 1
            self.last = seq
            return "lost"
        self.reordered += 1
        return "duplicate_or_reordered"
