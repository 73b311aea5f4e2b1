"""candump log lines (`candump -l` / `-L`) and cansend frame notation <-> raw SocketCAN frames.

Format (can-utils lib.c sprint_canframe / parse_canframe, candump.c):

    (1742339088.146472) can0 1F5#01000020000100FE
    <(sec.usec)> <iface> <frame>[ T|R]

frame notation:
    123#11223344           SFF: 3 hex digits, 0..8 data bytes
    12345678#11            EFF: 8 hex digits, CAN_EFF_FLAG set on parse
    20000080#0000...       error frame: 8 digits with CAN_ERR_FLAG (0x20000000) inside the id
    123#R   123#R7         RTR, optionally with the requested length (0..8)
    123#R8_C               RTR, length 8, len8_dlc 0xC
    123#1122334455667788_C classic frame with 8 bytes and len8_dlc 9..F
    123##1112233           CAN FD: '##', one hex digit of flags (BRS=1, ESI=2), data
    123#11.22.33           '.' allowed before any data byte (cansend), and once at the end

Parsed frames are raw `struct can_frame` (16 B) / `struct canfd_frame` (72 B, CANFD_FDF always set)
as built by bridge.codec.socketcan; padding bytes are zero. Timestamps are integer nanoseconds
computed exactly from the decimal text ("(1742339088.146472)" -> 1742339088146472000); up to 9
fraction digits are accepted, format_line writes 6 (microseconds, truncated) like candump.

Stricter than lib.c (which silently ignores or mis-reads these): trailing text after the data,
an odd number of hex digits, SFF ids above 0x7FF, 8-digit ids with bit 30/31 set, RTR suffixes
other than 0..8 / 8_9..8_F, a len8_dlc suffix that is not 9..F or not after exactly 8 bytes, CAN
FD payloads whose length is not a valid FD length, and FD flag digits 8..F are all rejected with
CandumpError. CAN XL frames (`12345#...`) are not supported.

FD flag digit on output: BRS|ESI only (`##0`..`##3`), as lib.h documents it and as can-utils up
to 2022 and python-can write it. can-utils from 2023 (CAN XL support) print the whole flags
nibble including CANFD_FDF, i.e. `##4`..`##7`; parse_line reads both (FDF is set either way).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator

from bridge.codec import socketcan as sc
from bridge.errors import ProtocolError

_NS_PER_S = 1_000_000_000
_TS_RE = re.compile(r"\(([0-9]+)(?:\.([0-9]{1,9}))?\)")
_SFF_ID_RE = re.compile(r"[0-9A-Fa-f]{3}")
_EFF_ID_RE = re.compile(r"[0-9A-Fa-f]{8}")
_DATA_RE = re.compile(r"(?:\.?[0-9A-Fa-f]{2})*\.?")
_HEX = "0123456789ABCDEFabcdef"
_LEN8_DLC = frozenset(range(9, 16))
_FD_SHOWN_FLAGS = sc.CANFD_BRS | sc.CANFD_ESI


class CandumpError(ProtocolError, ValueError):
    """Malformed candump line / frame text, or a raw frame that cannot be written.

    `reason` is one of: bad_line, bad_timestamp, bad_iface, bad_can_id, unsupported_can_xl,
    bad_rtr, bad_fd_flags, bad_data, bad_len, bad_len8_dlc, bad_frame; `detail` says more (for
    read_log it starts with the line number)."""


def _parse_data(text: str, maxlen: int, frame: str) -> bytes:
    if _DATA_RE.fullmatch(text) is None:
        raise CandumpError("bad_data", f"{frame!r}: data must be pairs of hex digits, '.' allowed between")
    data = bytes.fromhex(text.replace(".", ""))
    if len(data) > maxlen:
        raise CandumpError("bad_len", f"{frame!r}: {len(data)} data bytes > {maxlen}")
    return data


def parse_frame(text: str) -> bytes:
    """cansend / candump frame notation ("123#DEADBEEF", "123##1...", "123#R") -> raw frame."""
    sep = text.find("#")
    if sep == 3:
        if _SFF_ID_RE.fullmatch(text, 0, 3) is None:
            raise CandumpError("bad_can_id", f"{text!r}: SFF id must be 3 hex digits")
        can_id = int(text[:3], 16)
        if can_id > sc.CAN_SFF_MASK:
            raise CandumpError("bad_can_id", f"{text!r}: SFF id 0x{can_id:X} > 0x7FF")
    elif sep == 8:
        if _EFF_ID_RE.fullmatch(text, 0, 8) is None:
            raise CandumpError("bad_can_id", f"{text!r}: EFF / error id must be 8 hex digits")
        can_id = int(text[:8], 16)
        if can_id & (sc.CAN_EFF_FLAG | sc.CAN_RTR_FLAG):
            raise CandumpError("bad_can_id", f"{text!r}: id 0x{can_id:08X} has bit 30/31 set")
        if not can_id & sc.CAN_ERR_FLAG:  # 8 digits and no error frame: extended frame
            can_id |= sc.CAN_EFF_FLAG
    elif sep == 5:
        raise CandumpError("unsupported_can_xl", f"{text!r}: CAN XL frames are not supported")
    else:
        raise CandumpError("bad_can_id", f"{text!r}: expected <3 or 8 hex digit id>#<data>")
    rest = text[sep + 1 :]
    head = rest[:1]

    if head in ("R", "r"):  # RTR, classic CAN only
        tail = rest[1:]
        length = 0
        len8_dlc = 0
        if tail:
            if tail[0] not in "012345678":
                raise CandumpError("bad_rtr", f"{text!r}: RTR length must be one digit 0..8")
            length = int(tail[0])
            suffix = tail[1:]
            if suffix:
                if length != 8 or len(suffix) != 2 or suffix[0] != "_" or suffix[1] not in _HEX:
                    raise CandumpError("bad_rtr", f"{text!r}: expected R, R<0..8> or R8_<9..F>")
                len8_dlc = int(suffix[1], 16)
                if len8_dlc not in _LEN8_DLC:
                    raise CandumpError("bad_len8_dlc", f"{text!r}: len8_dlc must be 9..F")
        return sc.pack_can(can_id | sc.CAN_RTR_FLAG, b"", len8_dlc, length)

    if head == "#":  # CAN FD
        flag = rest[1:2]
        if not flag or flag not in _HEX:
            raise CandumpError("bad_fd_flags", f"{text!r}: '##' must be followed by one hex flags digit")
        flags = int(flag, 16)
        if flags > 7:
            raise CandumpError("bad_fd_flags", f"{text!r}: unknown FD flag bit 0x8 (BRS=1 ESI=2 FDF=4)")
        data = _parse_data(rest[2:], sc.CANFD_MAX_DLEN, text)
        if not sc.is_valid_fd_len(len(data)):
            raise CandumpError("bad_len", f"{text!r}: {len(data)} bytes is not a CAN FD length")
        return sc.pack_canfd(can_id, data, flags & _FD_SHOWN_FLAGS)

    len8_dlc = 0
    data_text, us, dlc_text = rest.partition("_")
    data = _parse_data(data_text, sc.CAN_MAX_DLEN, text)
    if us:
        if len(data) != 8 or len(dlc_text) != 1 or dlc_text not in _HEX:
            raise CandumpError("bad_len8_dlc", f"{text!r}: '_<9..F>' only after exactly 8 data bytes")
        len8_dlc = int(dlc_text, 16)
        if len8_dlc not in _LEN8_DLC:
            raise CandumpError("bad_len8_dlc", f"{text!r}: len8_dlc must be 9..F")
    return sc.pack_can(can_id, data, len8_dlc)


def format_frame(raw: bytes) -> str:
    """Raw frame -> candump/cansend notation, exactly as lib.c writes it in log files."""
    size = len(raw)
    if size not in (sc.CAN_MTU, sc.CANFD_MTU):
        raise CandumpError("bad_frame", f"raw frame is {size} bytes, expected 16 or 72")
    can_id, length, flags, _res0, len8_dlc = sc.HEADER.unpack_from(raw)
    cid = sc.format_can_id(can_id)
    if size == sc.CANFD_MTU:
        if not sc.is_valid_fd_len(length):
            raise CandumpError("bad_len", f"CAN FD frame with len {length}")
        return f"{cid}##{flags & _FD_SHOWN_FLAGS:X}{raw[8 : 8 + length].hex().upper()}"
    if length > sc.CAN_MAX_DLEN:
        raise CandumpError("bad_len", f"classic CAN frame with len {length}")
    dlc = f"_{len8_dlc:X}" if length == 8 and len8_dlc in _LEN8_DLC else ""
    if can_id & sc.CAN_RTR_FLAG:
        return f"{cid}#R{length or ''}{dlc}"
    return f"{cid}#{raw[8 : 8 + length].hex().upper()}{dlc}"


def _parse_timestamp(text: str) -> int:
    m = _TS_RE.fullmatch(text)
    if m is None:
        raise CandumpError("bad_timestamp", f"{text!r}: expected (<seconds>.<fraction>)")
    sec, frac = m.groups()
    return int(sec) * _NS_PER_S + (int(frac.ljust(9, "0")) if frac else 0)


def parse_line(line: str) -> tuple[int, str, bytes]:
    """One candump log line -> (ts_ns, iface, raw). Surrounding whitespace, the padding candump
    puts before short interface names and a trailing ` T` / ` R` (candump -x, python-can) are
    ignored."""
    parts = line.split()
    if len(parts) == 4 and parts[3] in ("T", "R", "t", "r"):
        del parts[3]
    if len(parts) != 3:
        raise CandumpError("bad_line", f"{line.strip()!r}: expected '(<sec>.<usec>) <iface> <frame>'")
    ts_text, iface, frame = parts
    return _parse_timestamp(ts_text), iface, parse_frame(frame)


def format_line(ts_ns: int, iface: str, raw: bytes) -> str:
    """-> candump -l line without newline: "(sec.usec) iface frame", usec truncated from ns."""
    if isinstance(ts_ns, bool) or not isinstance(ts_ns, int) or ts_ns < 0:
        raise CandumpError("bad_timestamp", f"ts_ns must be an int >= 0, got {ts_ns!r}")
    if not iface or not isinstance(iface, str) or len(iface.split()) != 1 or iface.strip() != iface:
        raise CandumpError("bad_iface", f"interface name {iface!r} must be non-empty without whitespace")
    sec, ns = divmod(ts_ns, _NS_PER_S)
    return f"({sec}.{ns // 1000:06d}) {iface} {format_frame(raw)}"


def read_log(source: str | os.PathLike | Iterable[str]) -> Iterator[tuple[int, str, bytes]]:
    """Yield (ts_ns, iface, raw) for every frame line of a candump log. `source` is a path or an
    iterable of text lines (an open text file). Blank lines, lines starting with '#' (comments)
    and the `DROPCOUNT: ...` notices candump writes into log files are skipped; any other bad
    line raises CandumpError whose detail starts with "line N:"."""
    if isinstance(source, (str, bytes, os.PathLike)):
        with open(source, encoding="utf-8") as f:
            yield from _read_lines(f)
    else:
        yield from _read_lines(source)


def _read_lines(lines: Iterable[str]) -> Iterator[tuple[int, str, bytes]]:
    for lineno, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text[0] == "#" or text.startswith("DROPCOUNT:"):
            continue
        try:
            yield parse_line(text)
        except CandumpError as e:
            raise CandumpError(e.reason, f"line {lineno}: {e.detail}") from None
