"""pcapng block encoder (sans-IO: values in, bytes out). Source: the pcapng specification,
draft-ietf-opsawg-pcapng (sections 4.1 SHB, 4.2 IDB, 4.3 EPB, 4.6 ISB), and
tcpdump.org/linktypes/LINKTYPE_CAN_SOCKETCAN.html for link type 227.

Blocks are written in host byte order (the SHB's byte-order magic tells readers which); every block
is `type(u32) total_length(u32) body total_length(u32)`, bodies padded to 32 bits; options are
`code(u16) length(u16) value` padded to 32 bits, ended by opt_endofopt. Timestamps are written with
if_tsresol = 9 (nanoseconds): a u64 count of ns since the epoch split into high and low u32.

CAN frames (LINKTYPE_CAN_SOCKETCAN): the kernel's struct can_frame / canfd_frame with the can_id
converted to BIG-endian and, for CAN FD frames, FDF (0x04) set in byte 5 so that Wireshark and scapy
classify them as FD whatever their length (wire-formats.md 2e). Classic frames are written unpadded
(8 + len bytes, len8_dlc kept in byte 7); FD frames as 8 + len bytes.
"""

from __future__ import annotations

import struct

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101  # raw IPv4/IPv6, no link header (tun devices)
LINKTYPE_LINUX_SLL = 113
LINKTYPE_CAN_SOCKETCAN = 227

SHB_TYPE = 0x0A0D0D0A
IDB_TYPE = 0x00000001
EPB_TYPE = 0x00000006
ISB_TYPE = 0x00000005
BYTE_ORDER_MAGIC = 0x1A2B3C4D

OPT_ENDOFOPT = 0
OPT_COMMENT = 1
SHB_USERAPPL = 4
IF_NAME = 2
IF_DESCRIPTION = 3
IF_TSRESOL = 9
IF_FILTER = 11
EPB_FLAGS = 2
ISB_STARTTIME = 2
ISB_ENDTIME = 3
ISB_IFRECV = 4
ISB_IFDROP = 5
ISB_OSDROP = 7

# epb_flags bits 0-1: direction (pcapng spec 4.3.1)
DIRECTION_INBOUND = 1
DIRECTION_OUTBOUND = 2

_FDF = 0x04
_CAN_HDR = struct.Struct("=IBBBB")  # struct can_frame / canfd_frame header, host order
_CAN_HDR_BE = struct.Struct(">IBBBB")
_U32 = struct.Struct("=I")
_OPT = struct.Struct("=HH")


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def _option(code: int, value: bytes) -> bytes:
    return _OPT.pack(code, len(value)) + _pad(value)


def _options(opts: list[tuple[int, bytes]]) -> bytes:
    if not opts:
        return b""
    return b"".join(_option(code, value) for code, value in opts) + _OPT.pack(OPT_ENDOFOPT, 0)


def _block(block_type: int, body: bytes) -> bytes:
    body = _pad(body)
    total = 12 + len(body)
    return _U32.pack(block_type) + _U32.pack(total) + body + _U32.pack(total)


def _ts(ts_ns: int) -> bytes:
    return struct.pack("=II", (ts_ns >> 32) & 0xFFFFFFFF, ts_ns & 0xFFFFFFFF)


def section_header(application: str = "canbridge") -> bytes:
    """Section Header Block, version 1.0, section length unknown (-1)."""
    body = struct.pack("=IHHq", BYTE_ORDER_MAGIC, 1, 0, -1)
    return _block(SHB_TYPE, body + _options([(SHB_USERAPPL, application.encode())]))


def interface_description(linktype: int, name: str, snaplen: int = 0, description: str = "",
                          bpf_filter: str = "") -> bytes:
    """Interface Description Block with if_name, if_tsresol = 9 (ns) and optional if_description and
    if_filter (type 0: a libpcap filter string). snaplen 0 = no limit."""
    opts = [(IF_NAME, name.encode()), (IF_TSRESOL, bytes([9]))]
    if description:
        opts.append((IF_DESCRIPTION, description.encode()))
    if bpf_filter:
        opts.append((IF_FILTER, b"\0" + bpf_filter.encode()))
    return _block(IDB_TYPE, struct.pack("=HHI", linktype, 0, snaplen) + _options(opts))


_EPB_HEAD = struct.Struct("=IIIIIII")  # block type, total length, interface id, ts high, ts low, caplen, origlen
_EPB_OPTS = {d: _options([(EPB_FLAGS, _U32.pack(d))]) if d else b"" for d in (0, 1, 2)}
_PADDING = (b"", b"\0\0\0", b"\0\0", b"\0")


def enhanced_packet(interface_id: int, ts_ns: int, data: bytes, orig_len: int | None = None,
                    direction: int = 0) -> bytes:
    """Enhanced Packet Block: interface index (IDB order), timestamp in ns since the epoch, captured
    bytes, original length (default len(data)); direction 1 inbound / 2 outbound goes in epb_flags.
    (One struct call per block: the capture writes one of these per CAN frame.)"""
    n = len(data)
    opts = _EPB_OPTS[direction]
    total = 32 + n + (-n % 4) + len(opts)
    return b"".join((_EPB_HEAD.pack(EPB_TYPE, total, interface_id, ts_ns >> 32, ts_ns & 0xFFFFFFFF, n,
                                     n if orig_len is None else orig_len),
                     data, _PADDING[n % 4], opts, _U32.pack(total)))


def interface_statistics(interface_id: int, ts_ns: int, received: int, dropped: int,
                         start_ns: int = 0, end_ns: int = 0) -> bytes:
    """Interface Statistics Block: isb_ifrecv (packets seen), isb_ifdrop (kernel drops: SO_RXQ_OVFL for
    CAN sockets, PACKET_STATISTICS tp_drops for AF_PACKET), optional isb_starttime/isb_endtime."""
    opts = []
    if start_ns:
        opts.append((ISB_STARTTIME, _ts(start_ns)))
    if end_ns:
        opts.append((ISB_ENDTIME, _ts(end_ns)))
    opts += [(ISB_IFRECV, struct.pack("=Q", received)), (ISB_IFDROP, struct.pack("=Q", dropped))]
    return _block(ISB_TYPE, struct.pack("=I", interface_id) + _ts(ts_ns) + _options(opts))


def can_record(raw: bytes) -> bytes:
    """A LINKTYPE_CAN_SOCKETCAN record from a kernel struct can_frame (16 B) / canfd_frame (72 B) in
    host byte order: big-endian can_id, FDF set for FD frames, payload trimmed to len.
    Raises ValueError for other sizes."""
    can_id, length, flags, res0, res1 = _CAN_HDR.unpack_from(raw)
    if len(raw) == 72:
        flags |= _FDF
    elif len(raw) != 16:
        raise ValueError(f"not a can_frame/canfd_frame: {len(raw)} bytes")
    length = min(length, len(raw) - 8)
    return _CAN_HDR_BE.pack(can_id, length, flags, res0, res1) + raw[8 : 8 + length]


def decode_can_record(record: bytes) -> bytes:
    """The inverse of can_record: a LINKTYPE_CAN_SOCKETCAN record (big-endian can_id) -> kernel
    struct can_frame (16 B) / canfd_frame (72 B) in host byte order. FD when FDF is set or len > 8
    (Wireshark's rule); classic RTR frames keep their len and carry no data; len8_dlc (byte 7) is
    kept for classic 8-byte frames. Raises ValueError for a record shorter than 8 bytes or an
    invalid length."""
    if len(record) < 8:
        raise ValueError(f"CAN record of {len(record)} bytes")
    can_id, length, flags, _, res1 = _CAN_HDR_BE.unpack_from(record)
    data = record[8 : 8 + length]
    if flags & _FDF or length > 8:
        if length > 64:
            raise ValueError(f"CAN FD len {length} > 64")
        return _CAN_HDR.pack(can_id, length, (flags & 0x03) | _FDF, 0, 0) + data.ljust(64, b"\0")
    len8_dlc = res1 if length == 8 and 9 <= res1 <= 15 else 0
    if can_id & 0x40000000:  # RTR: no data
        data = b""
    return _CAN_HDR.pack(can_id, length, 0, 0, len8_dlc) + data.ljust(8, b"\0")


def blocks(data: bytes) -> list[tuple[int, bytes]]:
    """(block type, body) of every block of a pcapng file written in host byte order (as ours are).
    For checks and benchmarks; readers of foreign files should use scapy's PcapNgReader."""
    out, pos = [], 0
    while pos + 12 <= len(data):
        btype, total = struct.unpack_from("=II", data, pos)
        out.append((btype, data[pos + 8 : pos + total - 4]))
        pos += total
    return out


def options(body: bytes, offset: int) -> dict[int, bytes]:
    """{option code: value} of the options starting at `offset` in a block body."""
    opts, pos = {}, offset
    while pos + 4 <= len(body):
        code, length = _OPT.unpack_from(body, pos)
        if code == OPT_ENDOFOPT:
            break
        opts[code] = body[pos + 4 : pos + 4 + length]
        pos += 4 + length + (-length % 4)
    return opts
