"""Tests of bridge.codec.cannelloni: golden bytes from the reference (wire-formats.md 2a), TCP stream
decoding under any chunking, every error slug, hypothesis round trips and fuzzing, DatagramEncoder
sizing and seq wrap, SeqCounter accounting."""

from __future__ import annotations

import struct
from itertools import pairwise

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.codec import cannelloni as cn
from bridge.codec import socketcan as sc
from bridge.codec.cannelloni import (
    BANNER,
    CLOSED,
    NEED_DATA,
    Banner,
    CannelloniProtocolError,
    DatagramEncoder,
    Frames,
    SeqCounter,
    StreamDecoder,
    decode_datagram,
    encode_frames,
)
from bridge.errors import ProtocolError
from tests.helpers import drain
from tests.codec.strategies import any_frames, timed_frames

# ------------------------------------------------------------------------------------------ helpers


def raw_can(can_id: int, n: int, data: bytes = b"", l8: int = 0) -> bytes:
    """struct can_frame built by hand (host byte order)."""
    return struct.pack("=IBBBB", can_id, n, 0, 0, l8) + data.ljust(8, b"\0")


def raw_fd(can_id: int, data: bytes, flags: int) -> bytes:
    """struct canfd_frame built by hand (host byte order), flags verbatim."""
    return struct.pack("=IBBBB", can_id, len(data), flags, 0, 0) + data.ljust(64, b"\0")


def rec(can_id: int, n: int, data: bytes = b"", flags: int | None = None) -> bytes:
    """A frame record built by hand: `n` is the len byte verbatim; flags byte only if given."""
    return struct.pack(">IB", can_id, n) + (b"" if flags is None else bytes((flags,))) + data


def dgram(*records: bytes, seq: int = 0, count: int | None = None, version: int = 2, op: int = 0) -> bytes:
    return struct.pack(">BBBH", version, op, seq, len(records) if count is None else count) + b"".join(records)


def hand_record(raw: bytes) -> bytes:
    """Independent encoder of one raw frame (reference for encode_frames)."""
    can_id, n, b5 = struct.unpack_from("=IBB", raw)
    if len(raw) == 16:
        return rec(can_id, n, b"" if can_id & sc.CAN_RTR_FLAG else raw[8 : 8 + n])
    return rec(can_id, n | 0x80, raw[8 : 8 + n], (b5 & 7) | sc.CANFD_FDF)


def normalized(raw: bytes) -> bytes:
    """What a raw frame looks like after a trip over the wire: len8_dlc and classic pad bytes 0, data
    beyond len 0, FD flags reduced to BRS|ESI plus FDF."""
    can_id, n, b5 = struct.unpack_from("=IBB", raw)
    if len(raw) == 16:
        return raw_can(can_id, n, b"" if can_id & sc.CAN_RTR_FLAG else raw[8 : 8 + n])
    return raw_fd(can_id, raw[8 : 8 + n], (b5 & 3) | sc.CANFD_FDF)


def decode_stream(data: bytes, cuts=None, eof: bool = True) -> list:
    """Feed `data` split at the offsets in `cuts` (None: one chunk), then EOF; -> events without
    sentinels (asserting CLOSED at the end). Raises what the decoder raises."""
    dec = StreamDecoder()
    bounds = [0, *sorted(cuts or []), len(data)]
    events = []
    for a, b in pairwise(bounds):
        if b > a:
            dec.receive_data(data[a:b])
            got = drain(dec)
            assert got[-1] is NEED_DATA
            events += got[:-1]
    if eof:
        dec.receive_data(b"")
        tail = drain(dec)
        assert tail[-1] is CLOSED
        events += tail[:-1]
    return events


def flat(events) -> list:
    return [f for ev in events if isinstance(ev, Frames) for f in ev.frames]


def reason_of(fn, *args) -> str:
    with pytest.raises(CannelloniProtocolError) as ei:
        fn(*args)
    assert isinstance(ei.value, ProtocolError)
    return ei.value.reason


def stream_reason(data: bytes, eof: bool = True) -> str:
    return reason_of(decode_stream, data, None, eof)


def dgram_reason(data: bytes) -> str:
    return reason_of(decode_datagram, data)


# ------------------------------------------------------------------------------------ golden bytes

# wire-formats.md 2a, worked example (tcpdump in cannelloni issue #37)
GOLDEN_UDP = bytes.fromhex("02 00 23 00 01 99 FA 04 4D 08 0C 11 01 00 F2 1D 0B 02")
GOLDEN_RAW = struct.pack("=IBBBB", 0x99FA044D, 8, 0, 0, 0) + bytes.fromhex("0C 11 01 00 F2 1D 0B 02")
# wire-formats.md 2a, FD example: std id 0x123, FD, len 12, flags FDF|BRS
FD_DATA = bytes(range(0x40, 0x4C))
GOLDEN_FD_UDP = bytes.fromhex("02 00 00 00 01 00 00 01 23 8C 05") + FD_DATA
GOLDEN_FD_RAW = struct.pack("=IBBBB", 0x123, 12, 0x05, 0, 0) + FD_DATA + bytes(52)


def test_constants():
    assert (cn.BANNER, cn.VERSION, cn.OP_DATA, cn.DEFAULT_MTU, cn.UDP_HEADER_LEN) == (
        b"CANNELLONIv1", 2, 0, 1472, 5)
    assert (cn.MAX_FRAME_RECORD, cn.MIN_MTU, cn.MAX_MTU) == (70, 75, 65507)
    assert issubclass(CannelloniProtocolError, ProtocolError)
    assert repr(NEED_DATA) == "NEED_DATA" and repr(CLOSED) == "CLOSED"
    assert Banner() == Banner()


def test_golden_classic_datagram():
    assert sc.pack_can(sc.CAN_EFF_FLAG | 0x19FA044D, bytes.fromhex("0C110100F21D0B02")) == GOLDEN_RAW
    assert decode_datagram(GOLDEN_UDP) == (0x23, [(GOLDEN_RAW, 0)])
    enc = DatagramEncoder()
    enc.seq = 0x23
    assert enc.encode([(GOLDEN_RAW, 1742339088146472000)]) == [GOLDEN_UDP]
    assert enc.seq == 0x24 and enc.datagrams == 1


def test_golden_fd_datagram():
    assert sc.pack_canfd(0x123, FD_DATA, sc.CANFD_BRS) == GOLDEN_FD_RAW
    assert decode_datagram(GOLDEN_FD_UDP) == (0, [(GOLDEN_FD_RAW, 0)])
    assert DatagramEncoder().encode([(GOLDEN_FD_RAW, 5)]) == [GOLDEN_FD_UDP]
    assert decode_datagram(bytearray(GOLDEN_FD_UDP)) == (0, [(GOLDEN_FD_RAW, 0)])
    assert decode_datagram(memoryview(GOLDEN_FD_UDP)) == (0, [(GOLDEN_FD_RAW, 0)])


def test_golden_tcp_stream():
    wire = BANNER + GOLDEN_UDP[5:] + GOLDEN_FD_UDP[5:]
    assert encode_frames([(GOLDEN_RAW, 0), (GOLDEN_FD_RAW, 0)]) == wire[12:]
    assert decode_stream(wire) == [Banner(), Frames([(GOLDEN_RAW, 0), (GOLDEN_FD_RAW, 0)])]


def test_encode_frames_empty():
    assert encode_frames([]) == b""
    assert DatagramEncoder().encode([]) == []


# ------------------------------------------------------------------------------- frame semantics


def test_rtr_classic_no_data_on_wire_and_len_kept():
    raw = raw_can(sc.CAN_RTR_FLAG | 0x7FF, 5, b"\xAA" * 8)  # junk in data[] must not be sent
    assert encode_frames([(raw, 0)]) == bytes.fromhex("40 00 07 FF 05")
    assert decode_datagram(dgram(bytes.fromhex("40 00 07 FF 05"))) == (0, [(raw_can(0x400007FF, 5), 0)])
    eff_rtr = rec(sc.CAN_EFF_FLAG | sc.CAN_RTR_FLAG | 0x1ABCDEF, 8)
    assert decode_stream(BANNER + eff_rtr) == [Banner(), Frames([(raw_can(0xC1ABCDEF, 8), 0)])]


def test_err_frame_carried_as_data():
    raw = sc.pack_can(sc.CAN_ERR_FLAG | 0x4, bytes([0, 0x10, 0, 0, 0, 0, 0, 0]))
    wire = rec(0x20000004, 8, bytes([0, 0x10, 0, 0, 0, 0, 0, 0]))
    assert encode_frames([(raw, 0)]) == wire
    assert decode_datagram(dgram(wire)) == (0, [(raw, 0)])


def test_len8_dlc_not_carried():
    raw = sc.pack_can(0x10, bytes(range(8)), len8_dlc=12)
    assert encode_frames([(raw, 0)]) == rec(0x10, 8, bytes(range(8)))
    assert decode_datagram(dgram(rec(0x10, 8, bytes(range(8))))) == (0, [(raw_can(0x10, 8, bytes(range(8))), 0)])


def test_classic_pad_bytes_and_data_beyond_len_not_sent():
    raw = struct.pack("=IBBBB", 0x55, 2, 0xEE, 0xEE, 0) + b"\x01\x02\xFF\xFF\xFF\xFF\xFF\xFF"
    assert encode_frames([(raw, 0)]) == rec(0x55, 2, b"\x01\x02")


def test_fd_flags():
    # raw without FDF (older kernels) and with unknown bits: FDF always sent, unknown bits dropped
    assert encode_frames([(raw_fd(0x1, b"", 0x00), 0)]) == rec(0x1, 0x80, b"", 0x04)
    assert encode_frames([(raw_fd(0x1, b"\x11", 0xFB), 0)]) == rec(0x1, 0x81, b"\x11", 0x07)
    # wire without FDF (senders on older kernels) and with unknown bits: FDF always set, unknown dropped
    assert decode_datagram(dgram(rec(0x1, 0x80, b"", 0x00))) == (0, [(raw_fd(0x1, b"", 0x04), 0)])
    assert decode_datagram(dgram(rec(0x1, 0x80, b"", 0xFA))) == (0, [(raw_fd(0x1, b"", 0x06), 0)])
    # FD len 0..8 is still FD (bit 7), the classic/FD distinction is only the len bit
    one = decode_datagram(dgram(rec(0x1, 0x88, bytes(8), 0x01)))[1][0][0]
    assert len(one) == 72 and one[4:6] == b"\x08\x05"


def test_all_fd_lengths_decode():
    for n in sc.FD_LENGTHS:
        data = bytes(range(n))
        wire = dgram(rec(sc.CAN_EFF_FLAG | 0x1FFFFFFF, 0x80 | n, data, 0x07))
        assert decode_datagram(wire) == (0, [(raw_fd(0x9FFFFFFF, data, 0x07), 0)])
        assert DatagramEncoder().encode([(raw_fd(0x9FFFFFFF, data, 0x07), 0)]) == [wire]


def test_encoder_rejects_invalid_raw_frames():
    bad = [
        b"\0" * 15,
        b"\0" * 73,
        raw_can(0x1, 9),
        struct.pack("=IBBBB", 0x1, 9, 0x04, 0, 0) + bytes(64),  # FD len 9
        struct.pack("=IBBBB", 0x1, 65, 0x04, 0, 0) + bytes(64),
        raw_fd(sc.CAN_RTR_FLAG | 0x1, b"", 0x04),
    ]
    for raw in bad:
        with pytest.raises(ValueError):
            encode_frames([(raw, 0)])
        with pytest.raises(ValueError):
            DatagramEncoder().encode([(raw, 0)])


@pytest.mark.parametrize("mtu", [0, 74, 65508])
def test_encoder_rejects_bad_mtu(mtu):
    with pytest.raises(ValueError):
        DatagramEncoder(mtu)


# ------------------------------------------------------------------------------------ TCP stream


def test_stream_byte_at_a_time():
    frames = [(GOLDEN_RAW, 0), (raw_can(0x400007FF, 3), 0), (GOLDEN_FD_RAW, 0), (raw_can(0x1, 0), 0)]
    wire = BANNER + encode_frames(frames)
    dec = StreamDecoder()
    events = []
    for i in range(len(wire)):
        dec.receive_data(wire[i : i + 1])
        got = drain(dec)
        assert got[-1] is NEED_DATA
        events += got[:-1]
        if i < 11:
            assert got == [NEED_DATA]
    assert events == [Banner()] + [Frames([f]) for f in frames]
    dec.receive_data(b"")
    assert drain(dec) == [CLOSED]
    assert dec.next_event() is CLOSED
    assert (dec.bytes_received, dec.frames_decoded, dec.banner_received) == (len(wire), 4, True)


def test_stream_banner_split_across_chunks():
    dec = StreamDecoder()
    dec.receive_data(b"CANNE")
    assert dec.next_event() is NEED_DATA and not dec.banner_received
    dec.receive_data(b"LLONIv1" + GOLDEN_UDP[5:9])  # banner completes, record still partial
    assert drain(dec) == [Banner(), NEED_DATA]
    dec.receive_data(GOLDEN_UDP[9:])
    assert drain(dec) == [Frames([(GOLDEN_RAW, 0)]), NEED_DATA]


def test_stream_groups_all_complete_records():
    frames = [(raw_can(i, 1, bytes([i])), 0) for i in range(50)]
    wire = BANNER + encode_frames(frames)
    assert decode_stream(wire) == [Banner(), Frames(frames)]
    assert decode_stream(wire, [len(wire) - 1]) == [Banner(), Frames(frames[:-1]), Frames(frames[-1:])]


def test_stream_eof_cases():
    assert decode_stream(b"") == []  # closed before saying anything
    assert decode_stream(BANNER) == [Banner()]
    assert stream_reason(BANNER[:5]) == "truncated"
    assert stream_reason(BANNER + GOLDEN_UDP[5:-1]) == "truncated"
    assert stream_reason(BANNER + rec(0x1, 0x88, bytes(8), 0x01)[:5]) == "truncated"  # flags byte missing
    assert stream_reason(BANNER + b"\0\0\0") == "truncated"


def test_stream_frames_before_error_are_returned_first():
    dec = StreamDecoder()
    dec.receive_data(BANNER + GOLDEN_UDP[5:] + rec(0x1, 9, bytes(9)))
    assert dec.next_event() == Banner()
    assert dec.next_event() == Frames([(GOLDEN_RAW, 0)])
    for _ in range(2):  # sticky
        with pytest.raises(CannelloniProtocolError) as ei:
            dec.next_event()
        assert ei.value.reason == "len_too_large"
    assert dec.frames_decoded == 1


def test_stream_truncated_at_eof_after_frames():
    dec = StreamDecoder()
    dec.receive_data(BANNER + GOLDEN_UDP[5:] + GOLDEN_UDP[5:8])
    dec.receive_data(b"")
    assert dec.next_event() == Banner()
    assert dec.next_event() == Frames([(GOLDEN_RAW, 0)])
    with pytest.raises(CannelloniProtocolError) as ei:
        dec.next_event()
    assert ei.value.reason == "truncated"


@pytest.mark.parametrize("wire", [b"X", b"canNELLONIv1", b"CANNELLONIv2", b"CANNELLONIv1"[:11] + b"0",
                                  b"\x02\x00\x00\x00\x01", b"CNBR\x01\x00"])
def test_stream_bad_banner(wire):
    assert stream_reason(wire, eof=False) == "bad_banner"
    assert stream_reason(wire, eof=True) == "bad_banner"


def test_stream_bad_banner_detected_before_12_bytes():
    dec = StreamDecoder()
    dec.receive_data(b"CANNELLONX")
    with pytest.raises(CannelloniProtocolError) as ei:
        dec.next_event()
    assert ei.value.reason == "bad_banner"


def test_stream_data_after_eof():
    dec = StreamDecoder()
    dec.receive_data(BANNER)
    dec.receive_data(b"")
    with pytest.raises(CannelloniProtocolError) as ei:
        dec.receive_data(b"\0")
    assert ei.value.reason == "data_after_eof"


# --------------------------------------------------------------------------- record error reasons

# (record bytes, reason): the len byte is judged as soon as it is present, before data arrives
BAD_RECORDS = [
    (rec(0x1, 9, bytes(9)), "len_too_large"),
    (rec(0x1, 9), "len_too_large"),
    (rec(0x1, 0x7F, bytes(20)), "len_too_large"),
    (rec(sc.CAN_RTR_FLAG | 0x1, 9), "len_too_large"),  # RTR with classic len 9
    (rec(0x1, 0x80 | 65, bytes(65), 0x04), "len_too_large"),
    (rec(0x1, 0xFF, bytes(10), 0x04), "len_too_large"),  # 127 > 64 (cannelloni's TCP path accepts it)
    (rec(0x1, 0xC1), "len_too_large"),  # 0x41 = 65
    (rec(0x1, 0x80 | 9, bytes(9), 0x04), "bad_fd_len"),
    (rec(0x1, 0x80 | 63, bytes(63), 0x04), "bad_fd_len"),
    (rec(0x1, 0x80 | 13), "bad_fd_len"),
    (rec(sc.CAN_RTR_FLAG | 0x1, 0x88, b"", 0x04), "bad_flags"),
]


@pytest.mark.parametrize(("record", "reason"), BAD_RECORDS)
def test_record_errors_datagram(record, reason):
    assert dgram_reason(dgram(record)) == reason
    assert dgram_reason(dgram(rec(0x2, 1, b"\x01"), record, count=5)) == reason


@pytest.mark.parametrize(("record", "reason"), BAD_RECORDS)
def test_record_errors_stream(record, reason):
    assert stream_reason(BANNER + record) == reason
    assert stream_reason(BANNER + GOLDEN_UDP[5:] + record, eof=False) == reason
    for cut in range(12, 12 + 6):  # any split, once the len byte is in
        assert reason_of(decode_stream, BANNER + record, [cut], False) == reason


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (b"\x01", "bad_version"),
        (b"\x03\x00\x00\x00\x01" + GOLDEN_UDP[5:], "bad_version"),
        (b"\x00\x00\x00\x00\x00", "bad_version"),
        (b"\x02\x01", "bad_op_code"),
        (b"\x02\x01\x00\x00\x00", "bad_op_code"),  # ACK
        (b"\x02\x02\x00\x00\x01" + GOLDEN_UDP[5:], "bad_op_code"),  # NACK
        (b"\x02\xff\x00\x00\x00", "bad_op_code"),
        (b"", "truncated"),
        (b"\x02", "truncated"),
        (b"\x02\x00\x07\x00", "truncated"),
        (GOLDEN_UDP[:-1], "truncated"),
        (GOLDEN_UDP[:7], "truncated"),
        (dgram(GOLDEN_UDP[5:], count=2), "truncated"),
        (dgram(GOLDEN_UDP[5:], count=0xFFFF), "truncated"),
        (dgram(rec(0x1, 0x88, bytes(8), 0x01)[:5]), "truncated"),
        (GOLDEN_UDP + b"\0", "trailing_data"),
        (dgram(GOLDEN_UDP[5:], GOLDEN_UDP[5:], count=1), "trailing_data"),
        (dgram(rec(0x400007FF, 5, bytes(5))), "trailing_data"),  # RTR must not carry data
    ],
)
def test_datagram_errors(wire, reason):
    assert dgram_reason(wire) == reason


def test_datagram_count_zero_ignored():
    assert decode_datagram(dgram(count=0, seq=9)) == (9, [])
    assert decode_datagram(dgram(b"\xFF" * 30, count=0, seq=10)) == (10, [])  # nothing after it is read
    assert dgram_reason(dgram(count=0, version=1)) == "bad_version"


def test_datagram_many_records_and_rtr_mix():
    frames = [(raw_can(0x40000000 | i, i % 9), 0) if i % 3 == 0 else (raw_can(i, i % 9, bytes([i]) * (i % 9)), 0)
              for i in range(100)]
    seq, got = decode_datagram(dgram(*(hand_record(r) for r, _ in frames), seq=255))
    assert seq == 255 and got == frames


# ----------------------------------------------------------------------------- DatagramEncoder


def test_datagram_split_counts():
    fd64 = (sc.pack_canfd(0x1, bytes(64)), 0)  # 70-byte records
    cl8 = (sc.pack_can(0x1, bytes(8)), 0)  # 13-byte records
    rtr = (sc.pack_can(sc.CAN_RTR_FLAG | 0x1, b"", length=8), 0)  # 5-byte records
    enc = DatagramEncoder()
    assert [len(d) for d in enc.encode([fd64] * 21)] == [5 + 20 * 70, 5 + 70]
    assert [len(d) for d in enc.encode([cl8] * 113)] == [5 + 112 * 13, 5 + 13]
    assert [len(d) for d in enc.encode([rtr] * 294)] == [1470, 10]
    assert [len(d) for d in enc.encode([cl8] * 112)] == [5 + 112 * 13]
    counts = [struct.unpack_from(">H", d, 3)[0] for d in enc.encode([cl8] * 300)]
    assert counts == [112, 112, 76]
    assert enc.datagrams == 10 and enc.seq == 10
    small = DatagramEncoder(cn.MIN_MTU)
    assert [len(d) for d in small.encode([fd64] * 3)] == [75, 75, 75]
    assert [len(d) for d in small.encode([cl8] * 6)] == [5 + 5 * 13, 18]


def test_seq_wraps_255_to_0():
    enc = DatagramEncoder(cn.MIN_MTU)
    enc.seq = 254
    fd64 = (sc.pack_canfd(0x1, bytes(64)), 0)
    assert [decode_datagram(d)[0] for d in enc.encode([fd64] * 3)] == [254, 255, 0]
    assert enc.seq == 1
    enc = DatagramEncoder()
    seqs = [decode_datagram(enc.encode([(GOLDEN_RAW, 0)])[0])[0] for _ in range(258)]
    assert seqs == [*range(256), 0, 1]
    assert enc.encode([]) == [] and enc.seq == 2


# --------------------------------------------------------------------------------- hypothesis




batches_st = st.lists(st.lists(timed_frames, min_size=1, max_size=40), max_size=6)


def expected(batches) -> list:
    return [(normalized(raw), 0) for fr in batches for raw, _ in fr]


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(batches=batches_st, data=st.data())
def test_stream_round_trip_any_chunking(batches, data):
    wire = BANNER + b"".join(encode_frames(fr) for fr in batches)
    assert wire[12:] == b"".join(hand_record(raw) for fr in batches for raw, _ in fr)
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=12))
    events = decode_stream(wire, cuts)
    assert events[0] == Banner()
    assert all(type(ev) is Frames and ev.frames for ev in events[1:])
    assert flat(events) == expected(batches)
    if not cuts:
        assert len(events) == (2 if any(batches) else 1)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(batches=batches_st, mtu=st.integers(cn.MIN_MTU, 1500), seq0=st.integers(0, 255))
def test_datagram_round_trip_and_sizes(batches, mtu, seq0):
    enc = DatagramEncoder(mtu)
    enc.seq = seq0
    out, expect_seq, n_dgrams = [], seq0, 0
    for fr in batches:
        dgrams = enc.encode(fr)
        records = [hand_record(raw) for raw, _ in fr]
        assert b"".join(d[5:] for d in dgrams) == b"".join(records)
        used = 0
        for i, d in enumerate(dgrams):
            assert len(d) <= mtu
            seq, frames = decode_datagram(d)
            assert seq == expect_seq and d[:2] == b"\x02\x00"
            assert struct.unpack_from(">H", d, 3)[0] == len(frames) > 0
            expect_seq = (expect_seq + 1) & 0xFF
            out += frames
            used += len(frames)
            if i < len(dgrams) - 1:  # greedy: the next record would not have fitted
                assert len(d) + len(records[used]) > mtu
        n_dgrams += len(dgrams)
    assert out == expected(batches)
    assert enc.seq == expect_seq and enc.datagrams == n_dgrams


@given(frame=any_frames)
def test_decoded_frames_re_encode_byte_exact(frame):
    wire = encode_frames([(frame, 0)])
    (raw, ts), = decode_datagram(dgram(wire))[1]
    assert ts == 0 and len(raw) == len(frame)
    assert encode_frames([(raw, 0)]) == wire
    assert raw == normalized(frame)


def _feed_expect_protocol_errors_only(data: bytes, cuts) -> None:
    dec = StreamDecoder()
    try:
        for a, b in zip([0, *cuts], [*cuts, len(data)], strict=False):
            dec.receive_data(data[a:b])
            for ev in drain(dec)[:-1]:
                assert ev == Banner() or all(len(r) in (16, 72) and ts == 0 for r, ts in ev.frames)
        dec.receive_data(b"")
        assert drain(dec)[-1] is CLOSED
    except CannelloniProtocolError as e:
        assert isinstance(e.reason, str) and e.reason


@settings(max_examples=300)
@given(body=st.binary(max_size=400), prefix=st.sampled_from([b"", BANNER[:7], BANNER, BANNER + GOLDEN_UDP[5:]]),
       data=st.data())
def test_fuzz_stream_raises_only_protocol_errors(body, prefix, data):
    wire = prefix + body
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=5)))
    _feed_expect_protocol_errors_only(wire, cuts)


@settings(max_examples=500)
@given(body=st.binary(max_size=400), prefix=st.sampled_from([b"", b"\x02", b"\x02\x00", b"\x02\x00\x00",
                                                             b"\x02\x00\x00\x00", b"\x02\x00\x00\x00\x01",
                                                             b"\x02\x00\x00\x00\x05", b"\x02\x00\x00\x01\x00"]))
def test_fuzz_datagram_raises_only_protocol_errors(body, prefix):
    try:
        seq, frames = decode_datagram(prefix + body)
    except CannelloniProtocolError as e:
        assert e.reason
    else:
        assert 0 <= seq <= 255 and all(len(r) in (16, 72) and ts == 0 for r, ts in frames)
        if frames:  # it re-encodes to the same number of bytes (only FD flag bits may differ)
            assert len(frames) == struct.unpack_from(">H", prefix + body, 3)[0]
            assert len(encode_frames(frames)) == len(prefix + body) - 5


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(batches=batches_st, flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)),
                                          min_size=1, max_size=4))
def test_fuzz_mutated_valid_input(batches, flips):
    frames = [f for fr in batches for f in fr]
    wire = bytearray(BANNER + encode_frames(frames))
    dg = bytearray(dgram(encode_frames(frames), count=len(frames)))
    for pos, x in flips:
        wire[pos % len(wire)] ^= x
        dg[pos % len(dg)] ^= x
    _feed_expect_protocol_errors_only(bytes(wire), [len(wire) // 3])
    try:
        decode_datagram(bytes(dg))
    except CannelloniProtocolError as e:
        assert e.reason


# ---------------------------------------------------------------------------------- SeqCounter


def observe_all(sc_: SeqCounter, seqs) -> list[str]:
    return [sc_.observe(s) for s in seqs]


def counters(c: SeqCounter) -> tuple:
    return c.received, c.lost, c.reordered


def test_seqcounter_in_order_and_wrap():
    c = SeqCounter()
    assert c.last is None
    assert observe_all(c, [253, 254, 255, 0, 1]) == ["ok"] * 5
    assert counters(c) == (5, 0, 0) and c.last == 1


def test_seqcounter_loss_across_wrap():
    c = SeqCounter()
    assert observe_all(c, [0, 1, 4, 100, 200, 3]) == ["ok", "ok", "lost", "lost", "lost", "lost"]
    assert counters(c) == (6, 2 + 95 + 99 + 58, 0)
    assert c.observe(250) == "duplicate_or_reordered" and c.last == 3  # 9 behind


def test_seqcounter_duplicate_and_reorder():
    c = SeqCounter()
    assert observe_all(c, [10, 11, 11, 13, 12, 14]) == ["ok", "ok", "duplicate_or_reordered", "lost",
                                                         "duplicate_or_reordered", "ok"]
    assert counters(c) == (6, 1, 2)  # 12 came late: counted lost and reordered (u8 cannot tell)


def test_seqcounter_128_boundary():
    c = SeqCounter()
    c.observe(200)
    assert c.observe(72) == "duplicate_or_reordered"  # 128 behind
    assert c.observe(71) == "lost"  # 129 behind = 127 ahead
    assert counters(c) == (3, 126, 1) and c.last == 71
    c = SeqCounter()
    c.observe(5)
    assert c.observe(133) == "duplicate_or_reordered"  # 128 ahead is read as 128 behind
    assert c.observe(132) == "lost" and c.lost == 126


def test_seqcounter_sender_restart():
    c = SeqCounter()
    observe_all(c, range(100, 110))
    assert observe_all(c, [0, 1]) == ["duplicate_or_reordered"] * 2  # restart looks like stale datagrams
    c = SeqCounter()
    observe_all(c, range(200, 210))
    assert c.observe(0) == "lost" and c.lost == 46  # ... or like a gap


@settings(max_examples=300)
@given(start=st.integers(0, 255), gaps=st.lists(st.integers(0, 126), max_size=300))
def test_seqcounter_forward_gaps(start, gaps):
    c = SeqCounter()
    seq = start
    results = [c.observe(seq)]
    for g in gaps:
        seq = (seq + 1 + g) & 0xFF
        results.append(c.observe(seq))
    assert results == ["ok"] + ["lost" if g else "ok" for g in gaps]
    assert counters(c) == (len(gaps) + 1, sum(gaps), 0)
