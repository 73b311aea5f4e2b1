"""MQTT message payloads of canbridge fleet peers (bridge.protocols.mqtt): batches of raw SocketCAN frames
<-> the bytes of one MQTT PUBLISH. Sans-IO: no sockets, clocks or logging here.

A batch is a list of (raw, ts_ns): raw a 16-byte `struct can_frame` or 72-byte `struct canfd_frame` in
host byte order (bridge.codec.socketcan), ts_ns the kernel RX timestamp in ns since the epoch.
Formats (docs/mqtt.md; native byte by byte in docs/protocol.md, section "MQTT payload"):

    native   "CNBR" version(u8=1) flags(u8=0), optionally a PUB_COUNT record (the publisher's session u32 and
             the frames it put in its earlier messages on this topic: a consumer counts gaps as lost and
             drops redelivered messages, bridge.codec.frameloss.PublishedFrames), then FRAME records of
             bridge.codec.native (channel 0; kernel RX ns, FD flags, len8_dlc). Record types a reader does
             not know are skipped.
             content type application/vnd.canbridge.frames; payload format indicator 0 (bytes).
    json     {"gateway": "gw1", "interface": "can0", "frames": [{"ts": ns, "id": int, "ext": bool,
             "rtr": bool, "err": bool, "fd": bool, "brs": bool, "esi": bool, "len": int,
             "data": "hex"}, ...]}; "len8_dlc": 9..15 only when set. id without the flag bits; for an
             error frame the error class bits (linux/can/error.h). UTF-8, payload format indicator 1.
    candump  `candump -L` lines, "(sec.usec) IFACE FRAME\\n" (bridge.codec.candump); ts in us. UTF-8.

Decoding checks every field and raises MqttPayloadError(reason) on the first bad one; nothing of a
malformed message is returned (a half-applied command batch is worse than none).
"""

from __future__ import annotations

import json

from bridge.codec import candump
from bridge.codec import native
from bridge.codec import socketcan as sc
from bridge.errors import ProtocolError

FORMATS = ("native", "json", "candump")
CONTENT_TYPES = {
    "native": "application/vnd.canbridge.frames",
    "json": "application/json",
    "candump": "text/plain; charset=utf-8",
}
UTF8_FORMATS = frozenset(("json", "candump"))  # MQTT 5 payload format indicator 1

# A received message larger than this is refused (counted "oversize") before it is parsed: 512 FD
# frames with 64 data bytes are ~130 KiB as json, the largest batch our own publisher writes.
MAX_PAYLOAD_BYTES = 256 * 1024
# Frames in one message we publish: bounds message size (native <= 43 KiB, json <= ~130 KiB) and so
# the broker's and the consumers' buffers; a loop pass that read more publishes several messages.
MAX_MESSAGE_FRAMES = 512
_MAX_JSON_FRAMES = MAX_MESSAGE_FRAMES * 4  # a hand-made json batch may be denser; still bounded

_U64_MAX = 2**64 - 1
_FLAGS = sc.CAN_EFF_FLAG | sc.CAN_RTR_FLAG | sc.CAN_ERR_FLAG


class MqttPayloadError(ProtocolError):
    """A malformed MQTT payload. reason: oversize, bad_format, bad_magic, bad_version, bad_json,
    bad_frame, bad_utf8, bad_line, or a bridge.codec.native / candump reason."""


def _err(reason: str, detail: str = "") -> MqttPayloadError:
    return MqttPayloadError(reason, detail)


# ------------------------------------------------------------------------------------------- native


def native_head(count: tuple[int, int] | None = None, dropped: int = 0) -> bytes:
    """What comes before the FRAME records of a native payload: the 6-byte preamble, the 16-byte
    PUB_COUNT record when `count` is given as (session u32, frames_before u64), and after it a 12-byte
    PUB_DROPPED record when `dropped` (frames the publisher numbered and dropped itself) is not 0."""
    if count is None:
        return native.STREAM_PREAMBLE
    head = native.STREAM_PREAMBLE + native.encode_pub_count(*count)
    return head + native.encode_pub_dropped(dropped) if dropped else head


def encode_native(frames: list, count: tuple[int, int] | None = None, dropped: int = 0) -> bytes:
    """Batch -> native payload (native_head(count, dropped), one 20..84-byte FRAME record per frame).
    ValueError on a raw frame the kernel never produces (bridge.codec.native.encode_frames)."""
    return native_head(count, dropped) + native.encode_frames(0, frames)


def decode_native(payload) -> list:
    """Native payload -> batch (see decode_native_counted)."""
    return decode_native_counted(payload)[0]


def decode_native_counted(payload) -> tuple[list, tuple[int, int, int] | None]:
    """Native payload -> (batch, (session, frames_before, frames_dropped) of its PUB_COUNT and PUB_DROPPED
    records (frames_dropped 0 without PUB_DROPPED), or None without a PUB_COUNT).
    Raises MqttPayloadError (bad_magic, bad_version, truncated, bad_record_length, bad_record, and the
    FRAME record reasons of bridge.codec.native: len_too_large, bad_flags, bad_channel, ...)."""
    buf = bytes(payload)
    if len(buf) < len(native.STREAM_PREAMBLE):
        raise _err("truncated", f"{len(buf)} bytes < 6-byte preamble")
    if buf[:4] != native.MAGIC:
        raise _err("bad_magic", repr(buf[:4]))
    if buf[4] != native.VERSION:
        raise _err("bad_version", f"version {buf[4]}")
    events: list = []
    try:
        count, pos = native.read_pub_count(buf, len(native.STREAM_PREAMBLE))  # only as the first record
        if count is not None:  # PUB_DROPPED only right after it
            dropped, pos = native.read_pub_dropped(buf, pos)
            count = (*count, dropped)
        stop, _skipped = native._parse_records(buf, pos, len(buf), events, 1, False)
    except native.NativeProtocolError as exc:
        raise _err(exc.reason, exc.detail) from None
    if stop != len(buf):
        raise _err("truncated", f"{len(buf) - stop} bytes of an incomplete record at the end")
    frames: list = []
    for event in events:
        if isinstance(event, native.Frames):
            frames.extend(event.frames)
        else:  # HELLO / HEARTBEAT / counts have no place in an MQTT message
            raise _err("bad_record", f"unexpected {type(event).__name__} record")
    return frames, count


# --------------------------------------------------------------------------------------------- json


def _json_frame(raw: bytes, ts: int) -> dict:
    can_id, n, fd_flags, l8, data = sc.unpack(raw)
    fd = len(raw) == sc.CANFD_MTU
    err = bool(can_id & sc.CAN_ERR_FLAG)
    out = {
        "ts": ts,
        "id": can_id & (sc.CAN_ERR_MASK if err or can_id & sc.CAN_EFF_FLAG else sc.CAN_SFF_MASK),
        "ext": bool(can_id & sc.CAN_EFF_FLAG),
        "rtr": bool(can_id & sc.CAN_RTR_FLAG),
        "err": err,
        "fd": fd,
        "brs": bool(fd and fd_flags & sc.CANFD_BRS),
        "esi": bool(fd and fd_flags & sc.CANFD_ESI),
        "len": n,
        "data": data.hex(),
    }
    if l8:
        out["len8_dlc"] = l8
    return out


def encode_json(gateway: str, interface: str, frames: list) -> bytes:
    """Batch -> UTF-8 JSON batch object (see the module docstring); compact separators."""
    body = {"gateway": gateway, "interface": interface, "frames": [_json_frame(raw, ts) for raw, ts in frames]}
    return json.dumps(body, separators=(",", ":")).encode()


def _bool(obj: dict, key: str, i: int) -> bool:
    value = obj.get(key, False)
    if not isinstance(value, bool):
        raise _err("bad_frame", f"frame {i}: {key} must be true or false, got {value!r}")
    return value


def _frame_from_json(obj, i: int) -> tuple[bytes, int]:
    if not isinstance(obj, dict):
        raise _err("bad_frame", f"frame {i} is not an object")
    ts = obj.get("ts", 0)
    if isinstance(ts, bool) or not isinstance(ts, int) or not 0 <= ts <= _U64_MAX:
        raise _err("bad_frame", f"frame {i}: ts must be integer ns 0..2**64-1, got {ts!r}")
    can_id = obj.get("id")
    if isinstance(can_id, bool) or not isinstance(can_id, int):
        raise _err("bad_frame", f"frame {i}: id must be an integer, got {can_id!r}")
    ext, rtr, err, fd = (_bool(obj, k, i) for k in ("ext", "rtr", "err", "fd"))
    brs, esi = _bool(obj, "brs", i), _bool(obj, "esi", i)
    limit = sc.CAN_EFF_MASK if ext or err else sc.CAN_SFF_MASK
    if not 0 <= can_id <= limit:
        raise _err("bad_frame", f"frame {i}: id {can_id:#x} > {limit:#x}")
    data_hex = obj.get("data", "")
    if not isinstance(data_hex, str):
        raise _err("bad_frame", f"frame {i}: data must be a hex string")
    try:
        data = bytes.fromhex(data_hex)
    except ValueError:
        raise _err("bad_frame", f"frame {i}: data {data_hex[:40]!r} is not hex") from None
    n = obj.get("len", len(data))
    if isinstance(n, bool) or not isinstance(n, int):
        raise _err("bad_frame", f"frame {i}: len must be an integer, got {n!r}")
    flags = (sc.CAN_EFF_FLAG if ext else 0) | (sc.CAN_RTR_FLAG if rtr else 0) | (sc.CAN_ERR_FLAG if err else 0)
    if fd:
        if rtr or err:
            raise _err("bad_frame", f"frame {i}: a CAN FD frame cannot be rtr or err")
        if n != len(data) or not sc.is_valid_fd_len(n):
            raise _err("bad_frame", f"frame {i}: CAN FD len {n} with {len(data)} data bytes")
        return sc.pack_canfd(can_id | flags, data, (sc.CANFD_BRS if brs else 0) | (sc.CANFD_ESI if esi else 0)), ts
    if brs or esi:
        raise _err("bad_frame", f"frame {i}: brs/esi need fd")
    if not 0 <= n <= sc.CAN_MAX_DLEN or len(data) != (0 if rtr else n):
        raise _err("bad_frame", f"frame {i}: len {n} with {len(data)} data bytes (rtr={rtr})")
    l8 = obj.get("len8_dlc", 0)
    if isinstance(l8, bool) or not isinstance(l8, int) or (l8 and (n != 8 or not 9 <= l8 <= 15)):
        raise _err("bad_frame", f"frame {i}: len8_dlc {l8!r} (9..15, only with len 8)")
    return sc.pack_can(can_id | flags, data, l8, length=n), ts


def decode_json(payload) -> tuple[str | None, str | None, list]:
    """JSON batch -> (gateway or None, interface or None, batch). Also takes a bare list of frame
    objects (hand-written commands). Missing ts -> 0; missing booleans -> false; missing len ->
    the data length. Raises MqttPayloadError bad_utf8 / bad_json / bad_frame."""
    try:
        text = bytes(payload).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _err("bad_utf8", str(exc)) from None
    try:
        body = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise _err("bad_json", str(exc)[:80]) from None
    gateway = interface = None
    if isinstance(body, dict):
        gateway, interface, items = body.get("gateway"), body.get("interface"), body.get("frames")
        if not (gateway is None or isinstance(gateway, str)) or not (interface is None or isinstance(interface, str)):
            raise _err("bad_json", "gateway and interface must be strings")
    else:
        items = body
    if not isinstance(items, list):
        raise _err("bad_json", "expected {\"frames\": [...]} or a list of frames")
    if len(items) > _MAX_JSON_FRAMES:
        raise _err("oversize", f"{len(items)} frames > {_MAX_JSON_FRAMES}")
    return gateway, interface, [_frame_from_json(obj, i) for i, obj in enumerate(items)]


# ------------------------------------------------------------------------------------------ candump


def encode_candump(interface: str, frames: list) -> bytes:
    """Batch -> `candump -L` lines, each ending in a newline; timestamps truncated to microseconds."""
    return "".join(candump.format_line(ts, interface, raw) + "\n" for raw, ts in frames).encode()


def decode_candump(payload) -> list:
    """`candump -L` lines -> batch (the interface names in the lines are ignored: the topic says where
    the frames go). Blank lines are skipped. MqttPayloadError bad_utf8 / bad_line / candump reasons."""
    try:
        text = bytes(payload).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _err("bad_utf8", str(exc)) from None
    frames = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            ts, _iface, raw = candump.parse_line(line)
        except candump.CandumpError as exc:
            raise _err(exc.reason, f"line {number}: {exc.detail}") from None
        if ts > _U64_MAX:
            raise _err("bad_timestamp", f"line {number}: timestamp beyond 2**64 ns")
        frames.append((raw, ts))
    return frames


# -------------------------------------------------------------------------------------------- common


def encode(fmt: str, gateway: str, interface: str, frames: list) -> bytes:
    """One message payload of `fmt` for a batch (callers keep it <= MAX_MESSAGE_FRAMES frames)."""
    if fmt == "native":
        return encode_native(frames)
    if fmt == "json":
        return encode_json(gateway, interface, frames)
    if fmt == "candump":
        return encode_candump(interface, frames)
    raise ValueError(f"unknown payload format {fmt!r}; expected one of {', '.join(FORMATS)}")


def decode(fmt: str, payload) -> list:
    """A received payload of `fmt` -> batch (see decode_counted)."""
    return decode_counted(fmt, payload)[0]


def decode_counted(fmt: str, payload) -> tuple[list, tuple[int, int, int] | None]:
    """A received payload of `fmt` -> (batch, (session, frames_before, frames_dropped) or None: only native
    payloads carry a PUB_COUNT). MqttPayloadError oversize (> MAX_PAYLOAD_BYTES, checked before parsing) or any reason
    above."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise _err("oversize", f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}")
    if fmt == "native":
        return decode_native_counted(payload)
    if fmt == "json":
        return decode_json(payload)[2], None
    if fmt == "candump":
        return decode_candump(payload), None
    raise _err("bad_format", repr(fmt))


def fresh_frames(frames: list, now_ns: int, max_age_s: float) -> tuple[list, int]:
    """A received batch -> (its frames not older than max_age_s at now_ns, how many were older). The age of
    a frame is now_ns minus its gateway timestamp (ns since the epoch, both wall clocks: their skew counts,
    docs/mqtt.md "MQTT 3.1.1"); ts 0 (no timestamp: a hand-written command) and a ts in the future are
    kept; max_age_s 0 keeps everything. For a consumer where no message expiry bounds age (MQTT 3.1.1)."""
    if not max_age_s:
        return frames, 0
    horizon = now_ns - int(max_age_s * 1e9)
    fresh = [f for f in frames if f[1] == 0 or f[1] >= horizon]
    return fresh, len(frames) - len(fresh)


def chunks(frames: list, limit: int = MAX_MESSAGE_FRAMES) -> list:
    """A batch cut into consecutive pieces of at most `limit` frames (one MQTT message each)."""
    if len(frames) <= limit:
        return [frames]
    return [frames[i : i + limit] for i in range(0, len(frames), limit)]


def id_topic(raw: bytes) -> str:
    """The per-id topic level of a frame (topics=per-id): candump's id text, 3 hex digits for SFF, 8 for
    EFF and error frames, upper case (e.g. "1F5", "18DAF110")."""
    return sc.format_can_id(sc.can_id_of(raw))
