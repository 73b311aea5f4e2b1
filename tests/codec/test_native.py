"""Tests of bridge.codec.native: golden bytes, stream/datagram decoding, every error slug, hypothesis
round trips and fuzzing, DatagramEncoder sizing, SequenceTracker accounting."""

from __future__ import annotations

import struct
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.codec import native as nv
from bridge.codec import socketcan as sc
from bridge.codec.native import (
    CLOSED,
    NEED_DATA,
    DatagramEncoder,
    Frames,
    Heartbeat,
    Hello,
    NativeProtocolError,
    SequenceTracker,
    StreamDecoder,
    decode_datagram,
)
from bridge.errors import ProtocolError
from bridge.frame import CanFrame
from tests.helpers import drain
from tests.codec.strategies import any_frames, timed_frames, u64

TS = 1742339088146472000
HELLO = Hello(1, nv.CAP_FD, 1000, ("vcan0", "can1"))
HELLO_REC = nv.encode_hello(HELLO)
UDP_HDR = struct.Struct(">4sBBII")


# ------------------------------------------------------------------------------------------ helpers


def rec(rtype: int, body: bytes, rflags: int = 0, length: int | None = None) -> bytes:
    """A record built by hand (independent of the encoder); `length` overrides the length field."""
    return struct.pack(">BBH", rtype, rflags, len(body) if length is None else length) + body


def frame_rec(can_id=0x123, n=4, fd=0, l8=0, ch=0, ts=TS, data=None, length=None) -> bytes:
    """A FRAME record built by hand; data defaults to n bytes 0xA0.. (empty for RTR)."""
    if data is None:
        data = b"" if can_id & sc.CAN_RTR_FLAG else bytes(range(0xA0, 0xA0 + n))
    return rec(2, struct.pack(">IBBBBQ", can_id, n, fd, l8, ch, ts) + data, length=length)


def stream(*records: bytes, hello: bytes = HELLO_REC) -> bytes:
    return nv.STREAM_PREAMBLE + hello + b"".join(records)


def datagram(*records: bytes, session: int = 7, seq: int = 0, version: int = 1) -> bytes:
    return UDP_HDR.pack(b"CNBR", version, 0, session, seq) + b"".join(records)


def decode_stream(data: bytes, chunks=None, eof: bool = True) -> list:
    """Feed `data` split at the offsets in `chunks` (None: one chunk), then EOF; -> events without
    sentinels. Raises what the decoder raises."""
    dec = StreamDecoder()
    cuts = [0, *sorted(chunks or []), len(data)]
    events = []
    for a, b in pairwise(cuts):
        if b > a:
            dec.receive_data(data[a:b])
            events += drain(dec)[:-1]
    if eof:
        dec.receive_data(b"")
        tail = drain(dec)
        assert tail[-1] is CLOSED
        events += tail[:-1]
    return events


def flat(events) -> list:
    """Frames events -> [(channel, raw, ts_ns), ...]."""
    return [(ev.channel, raw, ts) for ev in events if isinstance(ev, Frames) for raw, ts in ev.frames]


def reason_of(fn, *args) -> str:
    with pytest.raises(NativeProtocolError) as ei:
        fn(*args)
    assert isinstance(ei.value, ProtocolError)
    return ei.value.reason


def stream_reason(data: bytes, eof: bool = True) -> str:
    return reason_of(decode_stream, data, None, eof)


def dgram_reason(data: bytes, **kw) -> str:
    return reason_of(lambda d: decode_datagram(d, **kw), data)


CLASSIC = sc.pack_can(0x123, bytes.fromhex("11223344"))
FD_BRS = sc.pack_canfd(sc.CAN_EFF_FLAG | 0x12345678, bytes.fromhex("00112233445566778899AABB"), sc.CANFD_BRS)


# ---------------------------------------------------------------------------------- constants, API


def test_constants():
    assert (nv.VERSION, nv.MAGIC, nv.MAX_RECORD_BODY, nv.UDP_HEADER_LEN) == (1, b"CNBR", 1024, 14)
    assert (nv.CAP_FD, nv.CAP_ERR_FRAMES) == (1, 2)
    assert nv.STREAM_PREAMBLE == b"CNBR\x01\x00"
    assert issubclass(NativeProtocolError, ProtocolError)
    assert repr(NEED_DATA) == "NEED_DATA" and repr(CLOSED) == "CLOSED"


# ------------------------------------------------------------------------------------ golden bytes

GOLDEN_TCP = bytes.fromhex(
    "43 4e 42 52 01 00"  # preamble
    " 01 00 00 14"  # HELLO record, body 20
    " 01 00 00 01 00 00 03 e8 02"  # proto 1, caps FD, heartbeat 1000 ms, 2 channels
    " 05 76 63 61 6e 30 04 63 61 6e 31"  # "vcan0", "can1"
)
GOLDEN_UDP = bytes.fromhex(
    "43 4e 42 52 01 00 5e ed 12 34 00 00 00 00"  # header, session 0x5EED1234, seq 0
    " 02 00 00 14 00 00 01 23 04 00 00 00 18 2e 08 2b 5b 3f 9c 40 11 22 33 44"  # SFF 0x123, 4 B
    " 02 00 00 1c 92 34 56 78 0c 05 00 00 18 2e 08 2b 5b 43 6c d0"  # FD EFF BRS, 12 B
    " 00 11 22 33 44 55 66 77 88 99 aa bb"
)
GOLDEN_FRAMES = [(CLASSIC, TS), (FD_BRS, TS + 250_000)]
GOLDEN_CONTROL = bytes.fromhex(  # the control datagram sent after GOLDEN_UDP: HELLO + TX_COUNT
    "43 4e 42 52 01 00 5e ed 12 34 00 00 00 01"  # header, session 0x5EED1234, seq 1
    " 01 00 00 14 01 00 00 01 00 00 03 e8 02 05 76 63 61 6e 30 04 63 61 6e 31"  # HELLO as GOLDEN_TCP's
    " 04 00 00 08 00 00 00 00 00 00 00 02"  # TX_COUNT: 2 frames sent before this datagram
)


def test_golden_tcp_preamble_and_hello():
    assert nv.STREAM_PREAMBLE + HELLO_REC == GOLDEN_TCP
    assert decode_stream(GOLDEN_TCP) == [HELLO]


def test_golden_udp_datagram():
    assert DatagramEncoder(0x5EED1234).encode(0, GOLDEN_FRAMES) == [GOLDEN_UDP]
    session, seq, events = decode_datagram(GOLDEN_UDP)
    assert (session, seq) == (0x5EED1234, 0)
    assert events == [Frames(0, GOLDEN_FRAMES)]
    f = CanFrame.from_raw(events[0].frames[1][0])
    assert (f.can_id, f.is_extended, f.is_fd, f.brs, f.esi, len(f.data)) == (0x12345678, True, True, True,
                                                                              False, 12)


def test_protocol_doc_hex_dumps_match_golden_bytes():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    dumps = [block.split("```")[0] for block in doc.split("```hex\n")[1:]]
    parsed = [bytes.fromhex(" ".join(line[6:] for line in d.strip().splitlines())) for d in dumps]
    assert parsed[:3] == [GOLDEN_TCP, GOLDEN_UDP, GOLDEN_CONTROL]  # sections 9.1-9.3; 10 (MQTT): test_mqtt_payload
    assert "03 00 00 08 01 02 03 04 05 06 07 08" in doc


def test_golden_control_datagram_with_tx_count():
    enc = DatagramEncoder(0x5EED1234)
    assert enc.encode(0, GOLDEN_FRAMES) == [GOLDEN_UDP] and enc.frames == 2
    assert enc.encode_control(HELLO_REC + nv.encode_tx_count(enc.frames)) == GOLDEN_CONTROL
    assert decode_datagram(GOLDEN_CONTROL) == (0x5EED1234, 1, [HELLO, nv.TxCount(2)])


def test_golden_heartbeat():
    assert nv.encode_heartbeat(0x0102030405060708) == bytes.fromhex("03 00 00 08 01 02 03 04 05 06 07 08")


def test_golden_rtr_and_len8_dlc_records():
    rtr = sc.pack_can(sc.CAN_RTR_FLAG | 0x7FF, length=3)
    dlc = sc.pack_can(0x10, bytes(8), len8_dlc=15)
    assert nv.encode_frames(1, [(rtr, 5)]) == bytes.fromhex("02 00 00 10 40 00 07 ff 03 00 00 01" + "00" * 7 + "05")
    assert nv.encode_frames(0, [(dlc, 0)])[:12] == bytes.fromhex("02 00 00 18 00 00 00 10 08 00 0f 00")


# ------------------------------------------------------------------------------ stream decoding


MIXED = [
    (0, [(CLASSIC, TS), (sc.pack_can(0x7FF, b"\x01"), TS + 1)]),
    (1, [(FD_BRS, TS + 2)]),
]


def mixed_stream() -> bytes:
    return stream(
        nv.encode_frames(0, MIXED[0][1]),
        nv.encode_frames(1, MIXED[1][1]),
        nv.encode_heartbeat(99),
        nv.encode_frames(0, [(CLASSIC, TS + 3)]),
        nv.encode_frames(0, [(CLASSIC, TS + 4)]),
    )


MIXED_EVENTS = [
    HELLO,
    Frames(0, MIXED[0][1]),
    Frames(1, MIXED[1][1]),
    Heartbeat(99),
    Frames(0, [(CLASSIC, TS + 3), (CLASSIC, TS + 4)]),
]


def test_stream_one_chunk_many_records_grouped_by_channel():
    dec = StreamDecoder()
    dec.receive_data(mixed_stream())
    assert drain(dec) == [*MIXED_EVENTS, NEED_DATA]
    assert dec.hello == HELLO
    assert dec.frames_decoded == 5
    assert dec.bytes_received == len(mixed_stream())
    dec.receive_data(b"")
    assert dec.next_event() is CLOSED
    assert dec.next_event() is CLOSED


def test_stream_byte_at_a_time():
    data = mixed_stream()
    dec = StreamDecoder()
    events = []
    for i in range(len(data)):
        dec.receive_data(data[i : i + 1])
        got = drain(dec)
        assert got[-1] is NEED_DATA
        events += got[:-1]
    dec.receive_data(b"")
    assert dec.next_event() is CLOSED
    assert flat(events) == flat(MIXED_EVENTS)
    assert events[0] == HELLO and Heartbeat(99) in events
    assert dec.frames_decoded == 5


def test_stream_trailing_partial_record_waits_for_rest():
    data = stream(nv.encode_frames(0, [(CLASSIC, 1), (CLASSIC, 2)]))
    cut = len(data) - 5
    dec = StreamDecoder()
    dec.receive_data(data[:cut])
    assert drain(dec) == [HELLO, Frames(0, [(CLASSIC, 1)]), NEED_DATA]
    dec.receive_data(data[cut:])
    assert drain(dec) == [Frames(0, [(CLASSIC, 2)]), NEED_DATA]


def test_stream_need_data_before_anything():
    dec = StreamDecoder()
    assert dec.next_event() is NEED_DATA
    dec.receive_data(b"CNB")
    assert dec.next_event() is NEED_DATA


def test_stream_eof_on_empty_and_after_preamble_is_closed():
    assert decode_stream(b"") == []
    assert decode_stream(nv.STREAM_PREAMBLE) == []


def test_stream_error_after_good_events_and_sticky():
    dec = StreamDecoder()
    dec.receive_data(stream(nv.encode_frames(0, [(CLASSIC, 1)]), frame_rec(n=9)))
    assert dec.next_event() == HELLO
    assert dec.next_event() == Frames(0, [(CLASSIC, 1)])
    for _ in range(2):
        with pytest.raises(NativeProtocolError) as ei:
            dec.next_event()
        assert ei.value.reason == "len_too_large"


def test_unknown_record_types_skipped_stream():
    data = stream(
        rec(0x7F, b"future stuff"),
        nv.encode_frames(0, [(CLASSIC, 1)]),
        rec(0x00, b""),
        nv.encode_frames(0, [(CLASSIC, 2)]),
        rec(0xFF, bytes(1024)),
    )
    dec = StreamDecoder()
    dec.receive_data(data)
    assert drain(dec) == [HELLO, Frames(0, [(CLASSIC, 1), (CLASSIC, 2)]), NEED_DATA]
    assert dec.records_skipped == 3


def test_unknown_record_types_skipped_datagram():
    _, _, events = decode_datagram(datagram(rec(0x42, b"xyz"), frame_rec(n=1), rec(0x43, b"")))
    assert events == [Frames(0, [(sc.pack_can(0x123, b"\xa0"), TS)])]


def test_forward_compatible_fields_ignored():
    hello_body = struct.pack(">BBHIB", 2, 0xEE, 0xFFFF, 0, 1) + b"\x04can0" + b"future"
    data = stream(
        nv.encode_frames(0, [(CLASSIC, 1)])[:1] + b"\x80" + nv.encode_frames(0, [(CLASSIC, 1)])[2:],  # rflags
        rec(3, struct.pack(">Q", 5) + b"more"),
        hello=rec(1, hello_body),
    )
    data = data[:5] + b"\xff" + data[6:]  # preamble flags
    assert decode_stream(data) == [Hello(2, 0xFFFF, 0, ("can0",)), Frames(0, [(CLASSIC, 1)]), Heartbeat(5)]
    dgram = bytearray(datagram(frame_rec(n=0)))
    dgram[5] = 0xFF  # datagram flags
    assert decode_datagram(bytes(dgram))[2] == [Frames(0, [(sc.pack_can(0x123), TS)])]


def test_hello_with_zero_channels_and_hello_in_datagram():
    assert decode_stream(stream(hello=nv.encode_hello(Hello()))) == [Hello(1, 0, 0, ())]
    _, _, events = decode_datagram(datagram(HELLO_REC, frame_rec(ch=1, n=0), nv.encode_heartbeat(3)))
    assert events == [HELLO, Frames(1, [(sc.pack_can(0x123), TS)]), Heartbeat(3)]


def test_datagram_accepts_bytearray_and_memoryview():
    for data in (bytearray(GOLDEN_UDP), memoryview(GOLDEN_UDP)):
        assert decode_datagram(data)[2] == [Frames(0, GOLDEN_FRAMES)]


def test_decoded_fd_frame_without_fdf_in_raw_gets_fdf():
    raw = sc.HEADER.pack(0x55, 8, sc.CANFD_ESI | 0x80, 0, 0) + bytes(range(8)) + bytes(56)  # old kernel
    _, _, events = decode_datagram(DatagramEncoder(1).encode(0, [(raw, 1)])[0])
    assert events[0].frames == [(sc.pack_canfd(0x55, bytes(range(8)), sc.CANFD_ESI), 1)]


# --------------------------------------------------------------------------------- error slugs


def test_bad_magic():
    assert stream_reason(b"G", eof=False) == "bad_magic"  # first differing byte is enough
    assert stream_reason(b"CNBX\x01\x00", eof=False) == "bad_magic"
    assert dgram_reason(b"XNBR\x01\x00" + bytes(8)) == "bad_magic"
    assert dgram_reason(b"GET") == "bad_magic"


def test_bad_version():
    assert stream_reason(b"CNBR\x02\x00", eof=False) == "bad_version"
    assert dgram_reason(datagram(version=0)) == "bad_version"
    assert stream_reason(stream(hello=rec(1, struct.pack(">BBHIB", 0, 0, 0, 0, 0)))) == "bad_version"


def test_record_too_large():
    # detected from the header alone, before the body arrives
    assert stream_reason(stream(rec(0x40, b"", length=1025)), eof=False) == "record_too_large"
    assert stream_reason(nv.STREAM_PREAMBLE + rec(1, b"", length=0xFFFF), eof=False) == "record_too_large"
    assert dgram_reason(datagram(rec(0x40, bytes(1025)))) == "record_too_large"
    assert dgram_reason(datagram(frame_rec(n=8, length=1025) + bytes(1025 - 24))) == "record_too_large"
    assert dgram_reason(datagram(rec(3, bytes(1025)))) == "record_too_large"
    assert decode_datagram(datagram(rec(0x40, bytes(1024))))[2] == []  # the limit itself is fine


def test_len_too_large():
    assert dgram_reason(datagram(frame_rec(n=9))) == "len_too_large"
    assert dgram_reason(datagram(frame_rec(n=65, fd=sc.CANFD_FDF))) == "len_too_large"
    assert stream_reason(stream(frame_rec(n=255, fd=sc.CANFD_FDF, data=bytes(255)))) == "len_too_large"
    assert dgram_reason(datagram(frame_rec(can_id=sc.CAN_RTR_FLAG, n=9))) == "len_too_large"


def test_bad_fd_len():
    for n in (9, 13, 63):
        assert dgram_reason(datagram(frame_rec(n=n, fd=sc.CANFD_FDF))) == "bad_fd_len"


def test_bad_flags():
    assert dgram_reason(datagram(frame_rec(n=8, fd=sc.CANFD_FDF | 0x08))) == "bad_flags"
    assert dgram_reason(datagram(frame_rec(can_id=sc.CAN_RTR_FLAG | 1, n=0, fd=sc.CANFD_FDF))) == "bad_flags"
    assert dgram_reason(datagram(frame_rec(n=8, fd=sc.CANFD_BRS))) == "bad_flags"  # BRS without FDF
    assert stream_reason(stream(frame_rec(n=8, fd=0x80))) == "bad_flags"


def test_bad_len8_dlc():
    assert dgram_reason(datagram(frame_rec(n=4, l8=9))) == "bad_len8_dlc"
    assert dgram_reason(datagram(frame_rec(n=8, l8=8))) == "bad_len8_dlc"
    assert dgram_reason(datagram(frame_rec(n=8, l8=16))) == "bad_len8_dlc"
    assert dgram_reason(datagram(frame_rec(n=8, l8=9, fd=sc.CANFD_FDF))) == "bad_len8_dlc"


def test_bad_record_length():
    assert dgram_reason(datagram(frame_rec(n=4, data=b"abc", length=19))) == "bad_record_length"
    assert dgram_reason(datagram(frame_rec(n=4, data=bytes(5)))) == "bad_record_length"
    assert dgram_reason(datagram(frame_rec(can_id=sc.CAN_RTR_FLAG, n=4, data=bytes(4)))) == "bad_record_length"
    assert dgram_reason(datagram(frame_rec(n=12, fd=4, data=bytes(8)))) == "bad_record_length"
    assert dgram_reason(datagram(rec(2, bytes(15)))) == "bad_record_length"
    assert dgram_reason(datagram(rec(2, b""))) == "bad_record_length"
    assert dgram_reason(datagram(rec(2, b""), frame_rec(n=9))) == "bad_record_length"  # not len_too_large
    assert stream_reason(stream(rec(2, bytes(3))), eof=False) == "bad_record_length"
    assert dgram_reason(datagram(rec(3, bytes(7)))) == "bad_record_length"
    assert dgram_reason(datagram(rec(1, bytes(8)))) == "bad_record_length"
    for n in (0, 7, 9, 16):  # TX_COUNT: exactly 8 bytes (UDP and TCP)
        assert dgram_reason(datagram(HELLO_REC, rec(4, bytes(n)))) == "bad_record_length", n
        assert stream_reason(stream(rec(4, bytes(n)))) == "bad_record_length", n
    assert dgram_reason(datagram(rec(4, bytes(1025)))) == "record_too_large"
    assert dgram_reason(datagram(rec(4, bytes(8))[:-1])) == "truncated"
    long_name = struct.pack(">BBHIB", 1, 0, 0, 0, 2) + b"\x04can0\x05vca"
    assert stream_reason(stream(hello=rec(1, long_name))) == "bad_record_length"
    missing = struct.pack(">BBHIB", 1, 0, 0, 0, 2) + b"\x04can0"
    assert stream_reason(stream(hello=rec(1, missing))) == "bad_record_length"
    # valid len8_dlc but a wrong body length still reports the length
    assert dgram_reason(datagram(frame_rec(n=8, l8=9, data=bytes(7)))) == "bad_record_length"


def test_hello_expected():
    assert stream_reason(stream(hello=nv.encode_frames(0, [(CLASSIC, 1)])), eof=False) == "hello_expected"
    assert stream_reason(stream(hello=nv.encode_heartbeat(1)), eof=False) == "hello_expected"
    # known from the record header alone
    assert stream_reason(nv.STREAM_PREAMBLE + b"\x03\x00\x00\x08", eof=False) == "hello_expected"


def test_duplicate_hello():
    assert stream_reason(stream(HELLO_REC)) == "duplicate_hello"


def test_bad_channel_name():
    for name in (b"", b"sixteen_chars_xx", b"vcan\xe9", b"a b", b"a/b", b"a:b", b"a\x00"):
        body = struct.pack(">BBHIB", 1, 0, 0, 0, 1) + bytes((len(name),)) + name
        assert stream_reason(stream(hello=rec(1, body))) == "bad_channel_name", name
        assert dgram_reason(datagram(rec(1, body))) == "bad_channel_name", name


def test_bad_channel():
    assert stream_reason(stream(frame_rec(ch=2))) == "bad_channel"  # HELLO announced 2 channels
    assert decode_stream(stream(frame_rec(ch=1, n=0))) == [HELLO, Frames(1, [(sc.pack_can(0x123), TS)])]
    assert dgram_reason(datagram(frame_rec(ch=1)), n_channels=1) == "bad_channel"
    assert decode_datagram(datagram(frame_rec(ch=255, n=0)))[2][0].channel == 255


def test_truncated():
    assert dgram_reason(b"CNBR\x01\x00\x00") == "truncated"
    assert dgram_reason(datagram(frame_rec())[:-1]) == "truncated"
    assert dgram_reason(datagram() + b"\x02\x00") == "truncated"
    assert stream_reason(b"CNBR\x01") == "truncated"
    assert stream_reason(stream(frame_rec())[:-1]) == "truncated"
    assert stream_reason(stream()[:-3]) == "truncated"


def test_data_after_eof():
    dec = StreamDecoder()
    dec.receive_data(b"")
    dec.receive_data(b"")  # a second EOF is harmless
    with pytest.raises(NativeProtocolError) as ei:
        dec.receive_data(b"CNBR")
    assert ei.value.reason == "data_after_eof"


# --------------------------------------------------------------------------------- encoder checks


def test_encoder_ignores_meaningless_len8_dlc():
    # python-can writes the DLC into byte 7 of every classic frame; the kernel passes it through
    junk = sc.HEADER.pack(1, 4, 0, 0, 4) + b"\x01\x02\x03\x04" + bytes(4)
    clean = sc.pack_can(1, b"\x01\x02\x03\x04")
    assert nv.encode_frames(0, [(junk, 5)]) == nv.encode_frames(0, [(clean, 5)])
    eight = sc.HEADER.pack(1, 8, 0, 0, 7) + bytes(8)  # len 8 but len8_dlc below 9: ignored too
    assert nv.encode_frames(0, [(eight, 5)]) == nv.encode_frames(0, [(sc.pack_can(1, bytes(8)), 5)])


def test_encoder_rejects_invalid_input_with_value_error():
    with pytest.raises(ValueError):
        nv.encode_frames(256, [(CLASSIC, 0)])
    with pytest.raises(ValueError):
        nv.encode_frames(0, [(CLASSIC[:15], 0)])
    with pytest.raises(ValueError):
        nv.encode_frames(0, [(sc.HEADER.pack(1, 9, 0, 0, 0) + bytes(8), 0)])
    with pytest.raises(ValueError):
        nv.encode_frames(0, [(sc.HEADER.pack(1, 9, 4, 0, 0) + bytes(64), 0)])
    with pytest.raises(ValueError):
        nv.encode_frames(0, [(sc.HEADER.pack(sc.CAN_RTR_FLAG, 8, 4, 0, 0) + bytes(64), 0)])  # FD RTR
    with pytest.raises(ValueError):
        nv.encode_frames(0, [(CLASSIC, -1)])
    with pytest.raises(ValueError):
        nv.encode_hello(Hello(channels=("a" * 16,)))
    with pytest.raises(ValueError):
        nv.encode_hello(Hello(channels=tuple(f"vcan{i:011d}" for i in range(64))))  # body > 1024
    with pytest.raises(ValueError):
        DatagramEncoder(0, mtu=97)
    with pytest.raises(ValueError):
        DatagramEncoder(1 << 32)
    with pytest.raises(ValueError):
        DatagramEncoder(0, mtu=98).encode_control(HELLO_REC + bytes(80))


def test_encode_empty_batch():
    enc = DatagramEncoder(3)
    assert nv.encode_frames(0, []) == b""
    assert enc.encode(0, []) == [] and enc.seq == 0


def test_datagram_seq_wraps_and_control():
    enc = DatagramEncoder(9)
    enc.seq = 0xFFFFFFFF
    d1 = enc.encode_control(nv.encode_heartbeat(1))
    d2 = enc.encode(0, [(CLASSIC, 1)])[0]
    assert decode_datagram(d1) == (9, 0xFFFFFFFF, [Heartbeat(1)])
    assert decode_datagram(d2)[:2] == (9, 0)
    assert enc.seq == 1 and enc.datagrams == 2


def test_datagram_split_counts():
    fd64 = (sc.pack_canfd(0x1, bytes(64)), 0)  # 84-byte records
    cl8 = (sc.pack_can(0x1, bytes(8)), 0)  # 28-byte records
    enc = DatagramEncoder(1)
    assert [len(d) for d in enc.encode(0, [fd64] * 18)] == [14 + 17 * 84, 14 + 84]
    assert [len(d) for d in enc.encode(0, [cl8] * 53)] == [14 + 52 * 28, 14 + 28]
    assert [decode_datagram(d)[1] for d in enc.encode(0, [cl8] * 105)] == [4, 5, 6]
    assert enc.frames == 18 + 53 + 105 and enc.datagrams == 7


def test_tx_count_record_and_cumulative_count():
    assert nv.encode_tx_count(0x0102030405060708) == bytes.fromhex("04 00 00 08 01 02 03 04 05 06 07 08")
    for bad in (-1, 1 << 64):
        with pytest.raises(ValueError):
            nv.encode_tx_count(bad)
    enc = DatagramEncoder(5, mtu=98)  # one 84-byte record per datagram at most
    fd64 = (sc.pack_canfd(0x1, bytes(64)), 0)
    counts = []
    for n in (3, 0, 1, 2):
        enc.encode(1, [fd64] * n)
        counts.append(decode_datagram(enc.encode_control(nv.encode_tx_count(enc.frames)))[2])
    assert counts == [[nv.TxCount(3)], [nv.TxCount(3)], [nv.TxCount(4)], [nv.TxCount(6)]]
    assert enc.datagrams == 6 + 4 and enc.seq == 10  # control datagrams have seqs, carry no frames
    # a new session (a sender restart) is a new encoder: it counts from 0
    assert DatagramEncoder(6).frames == 0
    # on TCP the record is checked and decoded (callers ignore it); it ends a run of frames
    assert decode_stream(stream(nv.encode_frames(0, [(CLASSIC, 1)]), nv.encode_tx_count(1),
                                nv.encode_frames(0, [(CLASSIC, 2)]))) == [
        HELLO, Frames(0, [(CLASSIC, 1)]), nv.TxCount(1), Frames(0, [(CLASSIC, 2)])]


def test_tx_count_next_to_unknown_records():
    """Unknown types around TX_COUNT are still skipped; a type an old reader does not know is what
    TX_COUNT is to a reader before it (types 06..FF stay unknown)."""
    dgram = datagram(rec(0x06, b"x"), HELLO_REC, nv.encode_tx_count(9), rec(0xFE, bytes(3)), frame_rec(n=1))
    assert decode_datagram(dgram)[2] == [HELLO, nv.TxCount(9), Frames(0, [(sc.pack_can(0x123, b"\xa0"), TS)])]
    dec = StreamDecoder()
    dec.receive_data(stream(rec(0x06, b""), nv.encode_tx_count(9)))
    assert drain(dec) == [HELLO, nv.TxCount(9), NEED_DATA] and dec.records_skipped == 1


def test_rx_count_record_golden_and_lengths():
    """RX_COUNT (type 05): session u32 + frames_accounted u64, body exactly 12 bytes, UDP and TCP."""
    golden = bytes.fromhex("05 00 00 0c 5e ed 12 34 00 00 00 00 00 00 00 02")
    assert nv.encode_rx_count(0x5EED1234, 2) == golden
    assert golden.hex(" ") in (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    for bad in ((-1, 0), (2**32, 0), (0, -1), (0, 2**64)):
        with pytest.raises(ValueError):
            nv.encode_rx_count(*bad)
    dgram = datagram(HELLO_REC, nv.encode_tx_count(7), golden, frame_rec(n=1))
    assert decode_datagram(dgram)[2] == [HELLO, nv.TxCount(7), nv.RxCount(0x5EED1234, 2),
                                         Frames(0, [(sc.pack_can(0x123, b"\xa0"), TS)])]
    dec = StreamDecoder()  # TCP: checked, delivered as an event that callers ignore
    dec.receive_data(stream(golden, nv.encode_frames(0, [(CLASSIC, 1)])))
    assert drain(dec) == [HELLO, nv.RxCount(0x5EED1234, 2), Frames(0, [(CLASSIC, 1)]), NEED_DATA]
    for n in (0, 8, 11, 13, 16):
        assert dgram_reason(datagram(HELLO_REC, rec(5, bytes(n)))) == "bad_record_length", n
        assert stream_reason(stream(rec(5, bytes(n)))) == "bad_record_length", n
    assert dgram_reason(datagram(rec(5, bytes(1025)))) == "record_too_large"
    assert dgram_reason(datagram(golden[:-1])) == "truncated"


def test_old_reader_skips_rx_count():
    """A reader from before RX_COUNT skips type 05 as unknown: the same control datagram with the type
    byte changed to one nobody knows decodes to the other records, and the frames after it keep their run."""
    full = datagram(HELLO_REC, nv.encode_tx_count(3), nv.encode_rx_count(1, 2), frame_rec(n=1))
    at = full.index(nv.encode_rx_count(1, 2))
    unknown = full[:at] + b"\x7f" + full[at + 1:]
    assert decode_datagram(unknown)[2] == [HELLO, nv.TxCount(3), Frames(0, [(sc.pack_can(0x123, b"\xa0"), TS)])]


# --------------------------------------------------------------------------------- hypothesis





batches_st = st.lists(st.tuples(st.integers(0, 1), st.lists(timed_frames, min_size=1, max_size=40)), max_size=6)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(batches=batches_st, data=st.data())
def test_stream_round_trip_any_chunking(batches, data):
    wire = stream(*(nv.encode_frames(ch, fr) for ch, fr in batches))
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=12))
    events = decode_stream(wire, cuts)
    assert events[0] == HELLO
    assert flat(events) == [(ch, raw, ts) for ch, fr in batches for raw, ts in fr]
    if not cuts:  # one chunk: adjacent Frames events always differ in channel
        chans = [ev.channel for ev in events[1:]]
        assert all(a != b for a, b in pairwise(chans))


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(batches=batches_st, mtu=st.integers(98, 1500), session=st.integers(0, 2**32 - 1),
       seq0=st.integers(0, 2**32 - 1))
def test_datagram_round_trip_and_sizes(batches, mtu, session, seq0):
    enc = DatagramEncoder(session, mtu)
    enc.seq = seq0
    out, expect_seq = [], seq0
    for ch, fr in batches:
        dgrams = enc.encode(ch, fr)
        records = [nv.encode_frames(ch, [f]) for f in fr]
        assert sum(len(d) - 14 for d in dgrams) == sum(map(len, records))
        used = 0
        for i, d in enumerate(dgrams):
            assert len(d) <= mtu
            s, q, events = decode_datagram(d)
            assert (s, q) == (session, expect_seq)
            expect_seq = (expect_seq + 1) & 0xFFFFFFFF
            out += flat(events)
            used += len(events[0].frames)
            if i < len(dgrams) - 1:  # greedy: the next record would not have fitted
                assert len(d) + len(records[used]) > mtu
    assert out == [(ch, raw, ts) for ch, fr in batches for raw, ts in fr]
    assert enc.seq == expect_seq
    assert enc.frames == sum(len(fr) for _, fr in batches)


@given(session=st.integers(0, 2**32 - 1), accounted=u64, batches=batches_st, body=st.binary(max_size=40))
def test_rx_count_round_trip_and_any_body_length(session, accounted, batches, body):
    recs = [nv.encode_frames(ch, fr) for ch, fr in batches]
    _, _, events = decode_datagram(datagram(HELLO_REC, nv.encode_rx_count(session, accounted), *recs))
    assert events[:2] == [HELLO, nv.RxCount(session, accounted)]
    assert flat(events[2:]) == [(ch, raw, ts) for ch, fr in batches for raw, ts in fr]
    if len(body) == 12:
        assert decode_datagram(datagram(rec(5, body)))[2] == [
            nv.RxCount(int.from_bytes(body[:4], "big"), int.from_bytes(body[4:], "big"))]
    else:
        assert dgram_reason(datagram(rec(5, body), *recs)) == "bad_record_length"


@given(frames_sent=u64, batches=batches_st, body=st.binary(max_size=40))
def test_tx_count_round_trip_and_any_body_length(frames_sent, batches, body):
    recs = [nv.encode_frames(ch, fr) for ch, fr in batches]
    _, _, events = decode_datagram(datagram(*recs, nv.encode_tx_count(frames_sent), HELLO_REC))
    assert events[-2:] == [nv.TxCount(frames_sent), HELLO]
    assert flat(events[:-2]) == [(ch, raw, ts) for ch, fr in batches for raw, ts in fr]
    if len(body) == 8:
        assert decode_datagram(datagram(rec(4, body)))[2] == [nv.TxCount(int.from_bytes(body, "big"))]
    else:
        assert dgram_reason(datagram(rec(4, body), *recs)) == "bad_record_length"


@given(frame=any_frames, ts=u64)
def test_round_trip_through_canframe(frame, ts):
    _, _, events = decode_datagram(DatagramEncoder(0).encode(3, [(frame, ts)])[0])
    (raw, got_ts), = events[0].frames
    assert (raw, got_ts) == (frame, ts)
    assert CanFrame.from_raw(raw, ts) == CanFrame.from_raw(frame, ts)


def _feed_expect_protocol_errors_only(data: bytes, cuts) -> None:
    dec = StreamDecoder()
    try:
        for a, b in zip([0, *cuts], [*cuts, len(data)], strict=False):
            dec.receive_data(data[a:b])
            drain(dec)
        dec.receive_data(b"")
        drain(dec)
    except NativeProtocolError as e:
        assert isinstance(e.reason, str) and e.reason


@settings(max_examples=300)
@given(body=st.binary(max_size=400), prefix=st.sampled_from([b"", b"CNBR\x01\x00", stream()]),
       data=st.data())
def test_fuzz_stream_raises_only_protocol_errors(body, prefix, data):
    wire = prefix + body
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=5)))
    _feed_expect_protocol_errors_only(wire, cuts)


@settings(max_examples=300)
@given(body=st.binary(max_size=400), prefix=st.sampled_from([b"", datagram(), datagram(HELLO_REC)]))
def test_fuzz_datagram_raises_only_protocol_errors(body, prefix):
    try:
        decode_datagram(prefix + body)
    except NativeProtocolError as e:
        assert e.reason


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(batches=batches_st, flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)),
                                          min_size=1, max_size=4))
def test_fuzz_mutated_valid_input(batches, flips):
    wire = bytearray(stream(*(nv.encode_frames(ch, fr) for ch, fr in batches)))
    dgram = bytearray(datagram(HELLO_REC, *(nv.encode_frames(ch, fr) for ch, fr in batches)))
    for pos, x in flips:
        wire[pos % len(wire)] ^= x
        dgram[pos % len(dgram)] ^= x
    _feed_expect_protocol_errors_only(bytes(wire), [len(wire) // 3])
    try:
        decode_datagram(bytes(dgram))
    except NativeProtocolError as e:
        assert e.reason


@settings(max_examples=300)
@given(st.binary(max_size=200), st.integers(0, 255))
def test_fuzz_record_body_any_type(body, rtype):
    try:
        decode_datagram(datagram(rec(rtype, body)))
    except NativeProtocolError as e:
        assert e.reason


# ----------------------------------------------------------------------------- SequenceTracker


def observe_all(tr: SequenceTracker, seqs, session: int = 1) -> list[str]:
    return [tr.observe(session, s) for s in seqs]


def counters(tr: SequenceTracker) -> tuple:
    return tr.received, tr.lost, tr.duplicated, tr.reordered, tr.stale, tr.resets


def test_seq_in_order():
    tr = SequenceTracker()
    assert observe_all(tr, range(5)) == ["reset", "ok", "ok", "ok", "ok"]
    assert counters(tr) == (5, 0, 0, 0, 0, 1)


def test_seq_loss():
    tr = SequenceTracker()
    assert observe_all(tr, [0, 1, 4, 5, 9]) == ["reset", "ok", "ok", "ok", "ok"]
    assert (tr.received, tr.lost) == (5, 5)


def test_seq_duplicate():
    tr = SequenceTracker()
    assert observe_all(tr, [0, 1, 1, 2, 0, 2]) == ["reset", "ok", "duplicate", "ok", "duplicate", "duplicate"]
    assert counters(tr) == (3, 0, 3, 0, 0, 1)


def test_seq_reorder_fills_gap():
    tr = SequenceTracker()
    assert observe_all(tr, [0, 2, 3, 1, 1]) == ["reset", "ok", "ok", "reordered", "duplicate"]
    assert counters(tr) == (4, 0, 1, 1, 0, 1)


def test_seq_wraps_at_2_32():
    tr = SequenceTracker()
    seqs = [0xFFFFFFFE, 0, 0xFFFFFFFF, 1, 3, 0]
    assert observe_all(tr, seqs) == ["reset", "ok", "reordered", "ok", "ok", "duplicate"]
    assert counters(tr) == (5, 1, 1, 1, 0, 1)


def test_seq_new_session_resets_and_old_session_is_stale():
    tr = SequenceTracker()
    observe_all(tr, [0, 1, 2])
    assert tr.observe(2, 500) == "reset"  # sender restarted with a new random session
    assert tr.observe(2, 501) == "ok"
    assert tr.observe(1, 3) == "stale"  # a late datagram of the old session does not flap back
    assert tr.observe(2, 502) == "ok"
    assert counters(tr) == (6, 0, 0, 0, 1, 2)


def test_seq_window_edges():
    tr = SequenceTracker()
    observe_all(tr, [0, SequenceTracker.WINDOW])  # gap of WINDOW - 1
    assert tr.lost == SequenceTracker.WINDOW - 1
    assert tr.observe(1, 1) == "reordered"  # WINDOW - 1 behind: still tracked
    assert tr.observe(1, 0) == "stale"  # WINDOW behind: too old to classify
    assert tr.lost == SequenceTracker.WINDOW - 2


def test_seq_far_behind_single_stray_does_not_resync():
    tr = SequenceTracker()
    observe_all(tr, range(5000))
    assert tr.observe(1, 10) == "stale"
    assert tr.observe(1, 5000) == "ok"
    assert (tr.lost, tr.stale, tr.resets) == (0, 1, 1)


def test_seq_huge_jump_resyncs_after_two_consecutive():
    tr = SequenceTracker()
    observe_all(tr, range(3))
    jump = 2 + SequenceTracker.MAX_GAP + 1
    assert observe_all(tr, [jump, jump + 1, jump + 2]) == ["stale", "reset", "ok"]
    assert (tr.lost, tr.stale, tr.resets) == (0, 1, 2)
    assert tr.observe(1, 5) == "stale"  # far behind the new position


def test_seq_restart_without_new_session_resyncs():
    tr = SequenceTracker()
    observe_all(tr, range(3000, 6000))
    assert observe_all(tr, [0, 1, 2]) == ["stale", "reset", "ok"]
    assert tr.lost == 0


@settings(max_examples=300)
@given(seqs=st.lists(st.integers(0, 299), min_size=1, max_size=400), start=st.integers(0, 2**32 - 1))
def test_seq_random_within_window(seqs, start):
    """Any arrival order of seqs spanning < WINDOW, with losses and duplicates, crossing the wrap."""
    tr = SequenceTracker()
    results = observe_all(tr, [(start + s) & 0xFFFFFFFF for s in seqs])
    distinct = len(set(seqs))
    assert results[0] == "reset"
    assert [r == "duplicate" for r in results] == [s in seqs[:i] for i, s in enumerate(seqs)]
    assert counters(tr) == (distinct, max(seqs) - min(seqs) + 1 - distinct, len(seqs) - distinct,
                            results.count("reordered"), 0, 1)
    expected = ["reset"] + [
        "duplicate" if s in seqs[:i] else "ok" if s > max(seqs[:i]) else "reordered"
        for i, s in enumerate(seqs) if i
    ]
    assert results == expected


def _fed_in_chunks(data: bytes, cuts: list, read):
    """Feed `data` cut at `cuts` to a new decoder, each chunk through read(decoder, chunk) -> events;
    -> (events, counters) or the error's reason."""
    dec = StreamDecoder()
    out = []
    try:
        for a, b in pairwise([0, *sorted(cuts), len(data)]):
            if b > a:
                out += read(dec, data[a:b])
    except ProtocolError as exc:
        return exc.reason
    return out, (dec.bytes_received, dec.frames_decoded, dec.records_skipped)


def _loop(dec, chunk: bytes) -> list:
    """receive_data + next_event until NEED_DATA: the h11 loop receive_all replaces."""
    dec.receive_data(chunk)
    return drain(dec)[:-1]


@given(st.lists(timed_frames, max_size=12), st.lists(st.integers(0, 2000), max_size=6), st.binary(max_size=40))
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_receive_all_is_the_event_loop_in_one_call(frames, cuts, junk):
    """The fast path (whole records, nothing buffered, parsed in place) gives what the general loop gives:
    the same events, counters and errors, for valid streams cut anywhere and for garbage after them."""
    good = stream(nv.encode_frames(0, frames), nv.encode_heartbeat(5), nv.encode_frames(0, frames[:1]))
    for data in (good, good + junk):
        cut = [c for c in cuts if c < len(data)]
        assert _fed_in_chunks(data, cut, StreamDecoder.receive_all) == _fed_in_chunks(data, cut, _loop)
