"""SocketCAN frame structs as raw bytes, the form frames keep on the forwarding path.

Source: linux/can.h. Both structs are in host byte order, exactly as read from / written to a
CAN_RAW socket:

    struct can_frame   { canid_t can_id; u8 len; u8 __pad; u8 __res0; u8 len8_dlc; u8 data[8]; }   16 B
    struct canfd_frame { canid_t can_id; u8 len; u8 flags; u8 __res0; u8 __res1; u8 data[64]; }  72 B

A "raw frame" in canbridge is one of those two byte strings: 16 bytes = classic CAN (CAN CC),
72 bytes = CAN FD. A batch on the forwarding path is a list of `(raw, ts_ns)` tuples, ts_ns being
the kernel RX timestamp in integer nanoseconds since the epoch (SO_TIMESTAMPNS).
"""

from __future__ import annotations

import struct

# can_id flag bits (linux/can.h)
CAN_EFF_FLAG = 0x80000000  # extended frame format (29-bit id)
CAN_RTR_FLAG = 0x40000000  # remote transmission request
CAN_ERR_FLAG = 0x20000000  # error message frame
CAN_SFF_MASK = 0x000007FF
CAN_EFF_MASK = 0x1FFFFFFF
CAN_ERR_MASK = 0x1FFFFFFF

# canfd_frame.flags (linux/can.h)
CANFD_BRS = 0x01  # bit rate switch
CANFD_ESI = 0x02  # error state indicator
CANFD_FDF = 0x04  # marks a CAN FD frame (set by canbridge on every FD frame it builds)
CANFD_FLAGS_MASK = CANFD_BRS | CANFD_ESI | CANFD_FDF

CAN_MTU = 16
CANFD_MTU = 72
CAN_MAX_DLEN = 8
CANFD_MAX_DLEN = 64

HEADER = struct.Struct("=IBBBB")  # can_id, len, flags/__pad, __res0, len8_dlc/__res1
# the whole structs; "Ns" zero-pads short data on pack (the one home of these layouts: codecs import them)
CAN_FRAME = struct.Struct("=IBBBB8s")  # can_id, len, __pad, __res0, len8_dlc, data[8]
CANFD_FRAME = struct.Struct("=IBBBB64s")  # can_id, len, flags, __res0, __res1, data[64]
FD_LENGTHS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64)
VALID_FD_LENGTHS = frozenset(FD_LENGTHS)


def dlc_to_len(dlc: int) -> int:
    """CAN FD DLC (0..15) -> payload length in bytes (ISO 11898-1 table)."""
    return FD_LENGTHS[dlc]


def len_to_dlc(length: int) -> int:
    """Payload length 0..64 -> smallest CAN FD DLC that holds it."""
    for dlc, n in enumerate(FD_LENGTHS):
        if n >= length:
            return dlc
    raise ValueError(f"length {length} > 64")


def is_valid_fd_len(length: int) -> bool:
    return length in VALID_FD_LENGTHS


def pack_can(can_id: int, data: bytes = b"", len8_dlc: int = 0, length: int | None = None) -> bytes:
    """Build a struct can_frame (16 B). `length` defaults to len(data) (RTR frames pass it)."""
    n = len(data) if length is None else length
    if n > CAN_MAX_DLEN or len(data) > CAN_MAX_DLEN:
        raise ValueError(f"classic CAN len {n} > 8")
    return HEADER.pack(can_id, n, 0, 0, len8_dlc) + data.ljust(CAN_MAX_DLEN, b"\0")


def pack_canfd(can_id: int, data: bytes = b"", flags: int = 0) -> bytes:
    """Build a struct canfd_frame (72 B); FDF is always set. len must be a valid FD length."""
    if len(data) > CANFD_MAX_DLEN or not is_valid_fd_len(len(data)):
        raise ValueError(f"invalid CAN FD len {len(data)}")
    return HEADER.pack(can_id, len(data), flags | CANFD_FDF, 0, 0) + data.ljust(CANFD_MAX_DLEN, b"\0")


def unpack(raw: bytes) -> tuple[int, int, int, int, bytes]:
    """Raw frame -> (can_id, len, fd_flags, len8_dlc, data). fd_flags is 0 for classic frames
    (their byte 5 is padding); len8_dlc is 0 unless len is 8 and byte 7 holds 9..15 (the kernel
    ignores it otherwise, and python-can writes the DLC there). RTR frames return empty data."""
    can_id, n, b5, _res0, b7 = HEADER.unpack_from(raw)
    if len(raw) == CANFD_MTU:
        return can_id, n, b5 | CANFD_FDF, 0, bytes(raw[8 : 8 + n])
    data = b"" if can_id & CAN_RTR_FLAG else bytes(raw[8 : 8 + n])
    return can_id, n, 0, b7 if n == CAN_MAX_DLEN and 9 <= b7 <= 15 else 0, data


def can_id_of(raw: bytes) -> int:
    return HEADER.unpack_from(raw)[0]


def format_can_id(can_id: int) -> str:
    """candump style: 3 hex digits for SFF, 8 for EFF and error frames (flags stripped)."""
    if can_id & (CAN_EFF_FLAG | CAN_ERR_FLAG):
        return f"{can_id & (CAN_EFF_MASK | CAN_ERR_FLAG):08X}"
    return f"{can_id & CAN_SFF_MASK:03X}"
