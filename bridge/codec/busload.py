"""Bus load: bits on the wire per CAN frame, and the load of a bus in percent of its bitrate. Sans-IO.

The estimate is the one can-utils' `canbusload` prints (canframelen.c, `can_frame_length()` and
`can_frame_dbitrate_length()`), so both tools agree on the same frames:
- WORSTCASE (canbusload's default): classic frames 55 bits (11-bit ID) or 80 bits (29-bit ID) plus
  10 bits per data byte, i.e. every frame with the worst-case stuff bits; CAN FD frames the unstuffed
  length times 5/4 (integer division per frame);
- NO_BITSTUFFING (`canbusload -i`): classic 47 / 67 bits plus 8 per data byte; CAN FD
  1 + ID (11 or 29) + CRC (17, or 21 from 16 data bytes) + 5 control + 12 trailer + 8 per data byte.
Of a CAN FD frame with BRS, the data phase (1 + 1 + 4 + CRC + 8 per data byte, times 5/4 in
WORSTCASE) runs at the data bitrate. `len` is the frame's len field as the kernel gives it (an RTR
frame counts its requested length, as canbusload does). canbusload's exact mode (`-e`, stuff bits
counted over the real bits and CRC) is not offered: it costs a CRC per frame on the forwarding path.
Error frames (CAN_ERR_FLAG) are the driver's reports, not frames on the wire: 0 bits (canbusload does
not receive them at all).

Load in percent = (nominal-phase bits / bitrate + data-phase bits / data bitrate) / seconds * 100, as
canbusload computes it per second. With the worst-case estimate it may exceed 100.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

from bridge.codec import socketcan as sc

WORSTCASE, NO_BITSTUFFING = "worstcase", "no-bitstuffing"
MODES = (WORSTCASE, NO_BITSTUFFING)
# the byte of a raw frame holding can_id's top 8 bits (EFF 0x80, RTR 0x40, ERR 0x20): can_id is host order
_TOP = 3 if sys.byteorder == "little" else 0


def frame_bits(can_id: int, length: int, *, fd: bool = False, brs: bool = False,
               mode: str = WORSTCASE) -> tuple[int, int]:
    """(bits on the wire, of which at the data bitrate) of one frame: can_id with its EFF/ERR flags,
    length = the len field (bytes, 0..8 classic, 0..64 FD), fd: a CAN FD frame (canfd_frame), brs: its
    CANFD_BRS flag. Error frames: (0, 0). ValueError for an unknown mode."""
    if mode not in MODES:
        raise ValueError(f"unknown bus load mode {mode!r}; expected one of {', '.join(MODES)}")
    if can_id & sc.CAN_ERR_FLAG:
        return 0, 0
    eff = bool(can_id & sc.CAN_EFF_FLAG)
    if not fd:
        if mode == WORSTCASE:
            return (80 if eff else 55) + 10 * length, 0
        return (67 if eff else 47) + 8 * length, 0
    crc = 21 if length >= 16 else 17
    total = 1 + (29 if eff else 11) + crc + 5 + 12 + 8 * length
    data = 1 + 1 + 4 + crc + 8 * length if brs else 0
    if mode == WORSTCASE:
        total, data = total * 5 // 4, data * 5 // 4
    return total, data


def raw_bits(raw: bytes, mode: str = WORSTCASE) -> tuple[int, int]:
    """frame_bits() of a kernel can_frame (16 bytes) or canfd_frame (72 bytes)."""
    fd = len(raw) == sc.CANFD_MTU
    return frame_bits(sc.can_id_of(raw), raw[4], fd=fd, brs=fd and bool(raw[5] & sc.CANFD_BRS), mode=mode)


def _tables(mode: str) -> tuple[list[int], list[int], list[int]]:
    """Lookup tables of frame_bits() for the forwarding path: classic by (top & 0xE0) | len; CAN FD
    total and data-phase bits by (brs << 10) | (top & 0xE0) << 2 | len (top: can_id's top byte)."""
    classic = [0] * 256
    for flags in range(0, 256, 0x20):
        for length in range(sc.CAN_MAX_DLEN + 1):
            classic[flags | length] = frame_bits(flags << 24, length, mode=mode)[0]
    fd_total, fd_data = [0] * 2048, [0] * 2048
    for brs in (0, 1):
        for flags in range(0, 256, 0x20):
            for length in range(sc.CANFD_MAX_DLEN + 1):
                i = brs << 10 | flags << 2 | length
                fd_total[i], fd_data[i] = frame_bits(flags << 24, length, fd=True, brs=bool(brs), mode=mode)
    return classic, fd_total, fd_data


_TABLES = {mode: _tables(mode) for mode in MODES}


class WireBits:
    """Running totals of the bits a bus carried, fed with the raw frames an endpoint reads and writes.

    bits: all bits (frame_bits()[0] summed); data_bits: those at the data bitrate (CAN FD with BRS);
    frames: frames counted (error frames included, at 0 bits). A table lookup per frame, one list
    comprehension per batch of classic frames: on the host ~0.3 us for a lone frame, ~0.13 us per frame
    of a 64-frame batch."""

    __slots__ = ("bits", "data_bits", "frames", "_classic", "_fd_total", "_fd_data")

    def __init__(self, mode: str = WORSTCASE) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown bus load mode {mode!r}; expected one of {', '.join(MODES)}")
        self.bits = self.data_bits = self.frames = 0
        self._classic, self._fd_total, self._fd_data = _TABLES[mode]

    def add(self, raws: Iterable[bytes]) -> None:
        """Count raw can_frame / canfd_frame structs."""
        classic, fd_total, fd_data, top = self._classic, self._fd_total, self._fd_data, _TOP
        n = bits = data = 0
        for raw in raws:
            n += 1
            if len(raw) == sc.CAN_MTU:
                bits += classic[raw[top] & 0xE0 | raw[4]]
            else:
                i = (raw[5] & 1) << 10 | (raw[top] & 0xE0) << 2 | raw[4]
                bits += fd_total[i]
                data += fd_data[i]
        self.frames += n
        self.bits += bits
        self.data_bits += data

    def add_batch(self, batch: list, fd_link: bool) -> None:
        """Count a receive batch [(raw, timestamp_ns), ...] (SocketCanEndpoint's shape); fd_link: the
        socket takes CAN FD frames, so the batch may mix both sizes (the slower per-frame path)."""
        if fd_link:
            self.add([raw for raw, _ts in batch])
            return
        classic, top = self._classic, _TOP
        if len(batch) == 1:  # a lone frame (a quiet bus): no comprehension
            raw = batch[0][0]
            self.bits += classic[raw[top] & 0xE0 | raw[4]]
        else:
            self.bits += sum([classic[raw[top] & 0xE0 | raw[4]] for raw, _ts in batch])
        self.frames += len(batch)


def load_percent(bits: int, data_bits: int, seconds: float, bitrate: int, dbitrate: int | None = None) -> float:
    """Bus load in percent over `seconds`: (bits - data_bits) at `bitrate` plus data_bits at `dbitrate`
    (bit/s; None or 0: the nominal bitrate), as canbusload. ValueError when seconds or bitrate is not
    positive."""
    if seconds <= 0 or bitrate <= 0:
        raise ValueError(f"bus load needs a positive interval and bitrate, got {seconds} s at {bitrate} bit/s")
    busy_s = (bits - data_bits) / bitrate + data_bits / (dbitrate or bitrate)
    return busy_s / seconds * 100
