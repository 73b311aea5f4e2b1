"""python-can `udp_multicast` wire format: sans-IO encoder/decoder for one CAN message per datagram.

Source: python-can 4.6.1, can/interfaces/udp_multicast/{utils,bus}.py; see
/work/shared/reference/wire-formats.md section 2d. Each UDP datagram is

    msgpack.packb({...}, use_bin_type=True), a map of exactly these 11 keys in this order:
        timestamp              float64, seconds since the epoch
        arbitration_id         int (11-bit or 29-bit id, no flag bits)
        is_extended_id         bool
        is_remote_frame        bool
        is_error_frame         bool
        channel                str | int | nil (python-can's Message.channel)
        dlc                    int, the payload length in bytes (FD: 0..64), RTR: requested length
        data                   bin (empty for RTR frames)
        is_fd                  bool
        bitrate_switch         bool
        error_state_indicator  bool

The receiver calls `Message(check=True, **map)` after replacing `timestamp` with its own receive time,
so an unknown key makes python-can fail (TypeError): the encoder sends exactly these keys, and its bytes
equal `can.interfaces.udp_multicast.utils.pack_message(msg)` for the Message python-can's socketcan
interface builds from the same raw frame (arbitration_id = can_id & 0x1FFFFFFF for EFF, & 0x7FF
otherwise, error frames included; dlc = len). len8_dlc is not carried.

Defaults of a python-can bus: group ff15:7079:7468:6f6e:6465:6d6f:6d63:6173 (IPv6) or 239.74.163.2
(IPv4), port 43113, hop limit / TTL 1; python-can reads at most 4096 bytes per datagram.

Decoding follows python-can's rules (missing keys take Message's defaults; `is_rx` is accepted and
ignored; data of an RTR frame is ignored, as Message does; the checks of Message._check: timestamp finite
and >= 0, not RTR with error or FD, SFF id < 0x800, EFF id < 2**29, dlc <= 8 classic / <= 64 FD and equal
to len(data), BRS/ESI only on FD) and is stricter in two ways: field types must be what python-can sends
(bools are msgpack booleans, ints are ints, data is bin or nil), and an FD payload must have a valid CAN
FD length (0..8, 12, 16, 20, 24, 32, 48, 64) since the kernel's canfd_frame needs one. Decoded frames
carry ts_ns = 0 (the receiver stamps its own time, as python-can does). Everything malformed raises
PycanMulticastError with a `reason` slug; no other exception escapes decode_datagram. The encoder
raises ValueError for a raw frame that is neither 16 nor 72 bytes (a caller bug, never peer input).
"""

from __future__ import annotations

import math

import msgpack

from bridge.codec.socketcan import (
    CAN_EFF_FLAG,
    CAN_EFF_MASK,
    CAN_ERR_FLAG,
    CAN_MTU,
    CAN_RTR_FLAG,
    CAN_SFF_MASK,
    CANFD_BRS,
    CANFD_ESI,
    CANFD_MTU,
    HEADER,
    is_valid_fd_len,
    pack_can,
    pack_canfd,
)
from bridge.errors import ProtocolError

DEFAULT_GROUP_IPV6 = "ff15:7079:7468:6f6e:6465:6d6f:6d63:6173"
DEFAULT_GROUP_IPV4 = "239.74.163.2"
DEFAULT_PORT = 43113
DEFAULT_HOP_LIMIT = 1
MAX_DATAGRAM = 4096  # python-can's receive buffer: a longer datagram arrives truncated there

_BOOL_KEYS = ("is_extended_id", "is_remote_frame", "is_error_frame", "is_fd", "bitrate_switch",
              "error_state_indicator", "is_rx")
_KEYS = frozenset(("timestamp", "arbitration_id", "channel", "dlc", "data", *_BOOL_KEYS))
# Message() defaults for keys a sender leaves out
_DEFAULTS = {"timestamp": 0.0, "arbitration_id": 0, "is_extended_id": True, "is_remote_frame": False,
             "is_error_frame": False, "channel": None, "dlc": None, "data": None, "is_fd": False,
             "bitrate_switch": False, "error_state_indicator": False, "is_rx": True}


class PycanMulticastError(ProtocolError):
    """Malformed python-can udp_multicast datagram. `reason` is one of: too_long, bad_msgpack,
    trailing_data, not_a_map, unknown_key, bad_type, bad_timestamp, bad_flags (RTR with error or
    FD), bad_id, bad_dlc, dlc_mismatch, bad_fd_len, fd_flags_on_classic (BRS/ESI without is_fd)."""


def encode_frame(raw: bytes, ts_ns: int, channel: str | int | None = None) -> bytes:
    """One raw can_frame/canfd_frame (host order) with its RX time in ns -> one datagram payload,
    byte-identical to python-can's pack_message. channel: the Message.channel python-can sees
    (python-can's socketcan bus puts the interface name there)."""
    if len(raw) not in (CAN_MTU, CANFD_MTU):
        raise ValueError(f"raw frame of {len(raw)} bytes, expected {CAN_MTU} or {CANFD_MTU}")
    can_id, n, flags, _res0, _b7 = HEADER.unpack_from(raw)
    eff = bool(can_id & CAN_EFF_FLAG)
    rtr = bool(can_id & CAN_RTR_FLAG)
    fd = len(raw) == CANFD_MTU
    return msgpack.packb(
        {
            "timestamp": ts_ns / 1e9,
            "arbitration_id": can_id & (CAN_EFF_MASK if eff else CAN_SFF_MASK),
            "is_extended_id": eff,
            "is_remote_frame": rtr,
            "is_error_frame": bool(can_id & CAN_ERR_FLAG),
            "channel": channel,
            "dlc": n,
            "data": b"" if rtr else bytes(raw[8 : 8 + n]),
            "is_fd": fd,
            "bitrate_switch": fd and bool(flags & CANFD_BRS),
            "error_state_indicator": fd and bool(flags & CANFD_ESI),
        },
        use_bin_type=True,
    )


def encode_frames(frames, channel: str | int | None = None) -> list[bytes]:
    """A batch [(raw, ts_ns)] -> one datagram payload per frame."""
    return [encode_frame(raw, ts_ns, channel) for raw, ts_ns in frames]


def _err(reason: str, detail: str = "") -> PycanMulticastError:
    return PycanMulticastError(reason, detail)


def _fields(data: bytes) -> dict:
    """msgpack map -> dict with every key present (python-can's defaults filled in), types checked."""
    if len(data) > MAX_DATAGRAM:
        raise _err("too_long", f"{len(data)} bytes > {MAX_DATAGRAM}")
    try:
        obj = msgpack.unpackb(data, raw=False)
    except msgpack.ExtraData:
        raise _err("trailing_data") from None
    except Exception as exc:  # any failure of the msgpack parser is malformed input (ValueError, TypeError...)
        raise _err("bad_msgpack", f"{type(exc).__name__}: {exc}") from None
    if not isinstance(obj, dict):
        raise _err("not_a_map", type(obj).__name__)
    unknown = set(obj) - _KEYS
    if unknown:
        raise _err("unknown_key", ", ".join(sorted(map(str, unknown))))
    m = {**_DEFAULTS, **obj}
    for key in _BOOL_KEYS:
        if type(m[key]) is not bool:
            raise _err("bad_type", f"{key} must be a boolean")
    if type(m["timestamp"]) not in (float, int):
        raise _err("bad_type", "timestamp must be a number")
    if type(m["arbitration_id"]) is not int:
        raise _err("bad_type", "arbitration_id must be an integer")
    if m["dlc"] is not None and type(m["dlc"]) is not int:
        raise _err("bad_type", "dlc must be an integer")
    if m["data"] is not None and type(m["data"]) is not bytes:
        raise _err("bad_type", "data must be bin")
    if m["channel"] is not None and type(m["channel"]) not in (str, int):
        raise _err("bad_type", "channel must be a string, an integer or nil")
    return m


def decode_datagram(data: bytes) -> tuple[bytes, int]:
    """One datagram payload -> (raw, 0): a 16-byte can_frame (len8_dlc 0) or a 72-byte canfd_frame
    (FDF set, flags BRS|ESI|FDF). Raises PycanMulticastError on anything python-can would reject
    (plus the stricter rules in the module docstring)."""
    m = _fields(data)
    ts, arb_id, fd, rtr = m["timestamp"], m["arbitration_id"], m["is_fd"], m["is_remote_frame"]
    payload = b"" if rtr or m["data"] is None else m["data"]
    dlc = len(payload) if m["dlc"] is None else m["dlc"]
    if not (ts >= 0 and math.isfinite(ts)):
        raise _err("bad_timestamp", repr(ts))
    if rtr and (m["is_error_frame"] or fd):
        raise _err("bad_flags", "a remote frame cannot be an error frame or CAN FD")
    if not 0 <= arb_id < (0x20000000 if m["is_extended_id"] else 0x800):
        raise _err("bad_id", f"{arb_id:#x} ({'extended' if m['is_extended_id'] else 'standard'})")
    if not 0 <= dlc <= (64 if fd else 8):
        raise _err("bad_dlc", str(dlc))
    if not rtr and dlc != len(payload):
        raise _err("dlc_mismatch", f"dlc {dlc}, {len(payload)} data bytes")
    if not fd and (m["bitrate_switch"] or m["error_state_indicator"]):
        raise _err("fd_flags_on_classic")
    can_id = arb_id
    if m["is_extended_id"]:
        can_id |= CAN_EFF_FLAG
    if rtr:
        can_id |= CAN_RTR_FLAG
    if m["is_error_frame"]:
        can_id |= CAN_ERR_FLAG
    if fd:
        if not is_valid_fd_len(dlc):
            raise _err("bad_fd_len", str(dlc))
        flags = (CANFD_BRS if m["bitrate_switch"] else 0) | (CANFD_ESI if m["error_state_indicator"] else 0)
        return pack_canfd(can_id, payload, flags), 0
    return pack_can(can_id, payload, length=dlc), 0
