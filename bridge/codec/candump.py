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


def format_frame(raw: bytes, *, fd_flags_nibble: bool = False) -> str:
    """Raw frame -> candump/cansend notation, exactly as lib.c writes it in log files.
    fd_flags_nibble: write the FD flags digit as can-utils >= 2023 does, the low nibble of
    canfd_frame.flags as received (CANFD_FDF included: `##4`..`##7`); default BRS|ESI only."""
    size = len(raw)
    if size not in (sc.CAN_MTU, sc.CANFD_MTU):
        raise CandumpError("bad_frame", f"raw frame is {size} bytes, expected 16 or 72")
    can_id, length, flags, _res0, len8_dlc = sc.HEADER.unpack_from(raw)
    cid = sc.format_can_id(can_id)
    if size == sc.CANFD_MTU:
        if not sc.is_valid_fd_len(length):
            raise CandumpError("bad_len", f"CAN FD frame with len {length}")
        shown = flags & (0x0F if fd_flags_nibble else _FD_SHOWN_FLAGS)
        return f"{cid}##{shown:X}{raw[8 : 8 + length].hex().upper()}"
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


def format_line(ts_ns: int, iface: str, raw: bytes, *, iface_width: int = 0, fd_flags_nibble: bool = False) -> str:
    """-> candump -l line without newline: "(sec.usec) iface frame", usec truncated from ns.
    iface_width: right-align the interface name to this width, as candump -L does to the
    longest interface name it reads from (`%*s`); fd_flags_nibble: see format_frame."""
    if isinstance(ts_ns, bool) or not isinstance(ts_ns, int) or ts_ns < 0:
        raise CandumpError("bad_timestamp", f"ts_ns must be an int >= 0, got {ts_ns!r}")
    if not iface or not isinstance(iface, str) or len(iface.split()) != 1 or iface.strip() != iface:
        raise CandumpError("bad_iface", f"interface name {iface!r} must be non-empty without whitespace")
    sec, ns = divmod(ts_ns, _NS_PER_S)
    return f"({sec}.{ns // 1000:06d}) {iface:>{iface_width}} {format_frame(raw, fd_flags_nibble=fd_flags_nibble)}"


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


# -- candump's screen format (candump without -l / -L) -----------------------------------------
# Source: can-utils lib.c snprintf_long_canframe / snprintf_can_error_frame and candump.c, checked
# byte for byte against candump (can-utils 2023.03) in the test VM (tests/vcan/test_dump.py).

_ERROR_CLASSES = (  # CAN_ERR_* class bits 0..8 of can_id (linux/can/error.h)
    "tx-timeout", "lost-arbitration", "controller-problem", "protocol-violation", "transceiver-status",
    "no-acknowledgement-on-tx", "bus-off", "bus-error", "restarted-after-bus-off",
)
_CONTROLLER_PROBLEMS = (  # data[1] bits
    "rx-overflow", "tx-overflow", "rx-error-warning", "tx-error-warning", "rx-error-passive",
    "tx-error-passive", "back-to-error-active",
)
_PROTOCOL_VIOLATION_TYPES = (  # data[2] bits
    "single-bit-error", "frame-format-error", "bit-stuffing-error", "tx-dominant-bit-error",
    "tx-recessive-bit-error", "bus-overload", "active-error", "error-on-tx",
)
_U = "unspecified"
_PROTOCOL_VIOLATION_LOCATIONS = (  # data[3] value
    _U, _U, "id.28-to-id.21", "start-of-frame", "bit-srtr", "bit-ide", "id.20-to-id.18", "id.17-to-id.13",
    "crc-sequence", "reserved-bit-0", "data-field", "data-length-code", "bit-rtr", "reserved-bit-1",
    "id.4-to-id.0", "id.12-to-id.5", _U, "active-error-flag", "intermission", "tolerate-dominant-bits",
    _U, _U, "passive-error-flag", "error-delimiter", "crc-delimiter", "acknowledge-slot", "end-of-frame",
    "acknowledge-delimiter", "overload-flag", _U, _U, _U,
)
_CAN_ERR_LOSTARB, _CAN_ERR_CRTL, _CAN_ERR_PROT = 0x2, 0x4, 0x8
_ERR_CLASS_LIMIT = 1 << len(_ERROR_CLASSES)
_PRINTABLE = frozenset(range(0x20, 0x7F))


def format_screen(raw: bytes, *, indent_sff: bool = False, ascii: bool = False) -> str:
    """Raw frame -> the frame part of a candump screen line (lib.c snprintf_long_canframe):

        123   [4]  11 22 33 44          classic: id, [len], data bytes
        12345678   [1]  AA              EFF and error frames: 8 digits
        123  [12]  00 01 ...            CAN FD: two-digit [len], one space less before it
        123   [0]  remote request       RTR
        123   [0]                       len 0: ends in one space, as candump prints it
        20000080   [8]  00 ... 00   ERRORFRAME

    indent_sff: pad SFF ids to the width of EFF ids (candump does this once it has seen an EFF
    frame); ascii: candump -a, the printable bytes in quotes behind the data (len <= 8, not for
    RTR or error frames). Raises CandumpError for a raw frame that is not 16 or 72 bytes."""
    size = len(raw)
    if size not in (sc.CAN_MTU, sc.CANFD_MTU):
        raise CandumpError("bad_frame", f"raw frame is {size} bytes, expected 16 or 72")
    can_id, length, _flags, _res0, _len8 = sc.HEADER.unpack_from(raw)
    if can_id & (sc.CAN_ERR_FLAG | sc.CAN_EFF_FLAG):
        head = sc.format_can_id(can_id) + "  "
    else:
        head = ("     " if indent_sff else "") + f"{can_id & sc.CAN_SFF_MASK:03X}  "
    if size == sc.CAN_MTU:
        length = min(length, sc.CAN_MAX_DLEN)  # lib.c sanitises len the same way
        head += f" [{length}] "
        if can_id & sc.CAN_RTR_FLAG:
            return head + " remote request"
    else:
        length = min(length, sc.CANFD_MAX_DLEN)
        head += f"[{length:02d}] "
    data = raw[8 : 8 + length]
    text = head + "".join(f" {b:02X}" for b in data)
    if length > sc.CAN_MAX_DLEN:
        return text
    pad = 3 * (sc.CAN_MAX_DLEN - length)
    if can_id & sc.CAN_ERR_FLAG:
        return text + " " * (pad + 3) + "ERRORFRAME"
    if ascii:
        return text + " " * (pad + 3) + "'" + "".join(chr(b) if b in _PRINTABLE else "." for b in data) + "'"
    return text


def _bit_names(value: int, names: tuple[str, ...]) -> str:
    return ",".join(name for bit, name in enumerate(names) if value >> bit & 1)


def describe_error_frame(raw: bytes, sep: str = "\n\t") -> str | None:
    """Error frame -> candump -e text (lib.c snprintf_can_error_frame), the classes joined by
    `sep`: "lost-arbitration{at bit 1}", "controller-problem{tx-overflow}",
    "protocol-violation{{single-bit-error}{data-field}}", "error-counter-tx-rx{{7}{8}}", ...
    The data bytes are read past `len` as lib.c does (the kernel zeroes them). Returns "" when
    there is nothing to say (no known class, counters 0) and None when the class bits exceed
    CAN_ERR_CNT, which lib.c calls invalid ("Error class 0x%x is invalid"); in both cases candump
    prints its previous line buffer again (see bridge.tools.live.dump). Not an error frame -> ""."""
    can_id = sc.HEADER.unpack_from(raw)[0]
    if not can_id & sc.CAN_ERR_FLAG:
        return ""
    cls = can_id & sc.CAN_EFF_MASK
    if cls > _ERR_CLASS_LIMIT:
        return None
    data = bytes(raw[8:16])
    parts = []
    for bit, name in enumerate(_ERROR_CLASSES):
        mask = 1 << bit
        if not cls & mask:
            continue
        if mask == _CAN_ERR_LOSTARB:
            name += f"{{at bit {data[0]}}}"
        elif mask == _CAN_ERR_CRTL:
            name += "{" + _bit_names(data[1], _CONTROLLER_PROBLEMS) + "}"
        elif mask == _CAN_ERR_PROT:
            loc = _PROTOCOL_VIOLATION_LOCATIONS[data[3]] if 0 < data[3] < len(_PROTOCOL_VIOLATION_LOCATIONS) else ""
            name += "{{" + _bit_names(data[2], _PROTOCOL_VIOLATION_TYPES) + "}{" + loc + "}}"
        parts.append(name)
    text = sep.join(parts)
    if data[6] or data[7]:
        text += f"{sep}error-counter-tx-rx{{{{{data[6]}}}{{{data[7]}}}}}"
    return text


def format_dropcount(dropped: int, iface: str, total: int) -> str:
    """candump -d notice (no newline) for frames the kernel dropped because the socket's receive
    queue was full (SO_RXQ_OVFL)."""
    plural = "s" if dropped > 1 else ""
    return f"DROPCOUNT: dropped {dropped} CAN frame{plural} on '{iface}' socket (total drops {total})"
