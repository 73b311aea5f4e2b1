"""bridge.codec.candump: candump -l log lines and cansend frame notation <-> raw frames."""

from __future__ import annotations

import io
import itertools

import can
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.codec import socketcan as sc
from bridge.codec.candump import (
    CandumpError,
    format_frame,
    format_line,
    parse_frame,
    parse_line,
    read_log,
)
from bridge.errors import ProtocolError
from bridge.frame import CanFrame
from bridge.tools.rig.demo import DEFAULT_TRACE

EFF, RTR, ERR = sc.CAN_EFF_FLAG, sc.CAN_RTR_FLAG, sc.CAN_ERR_FLAG
BRS, ESI, FDF = sc.CANFD_BRS, sc.CANFD_ESI, sc.CANFD_FDF
DURANGO = DEFAULT_TRACE
DURANGO_LINES = 76_821


def cc(can_id, data=b"", len8_dlc=0, length=None):
    return sc.pack_can(can_id, data, len8_dlc, length)


def fd(can_id, data=b"", flags=0):
    return sc.pack_canfd(can_id, data, flags)


# --------------------------------------------------------------------------------------------
# golden lines

GOLDEN = [
    # line, ts_ns, iface, raw  -- canonical: format_line(parse_line(line)) == line
    (
        "(1742339088.146472) can0 1F5#01000020000100FE",
        1742339088146472000,
        "can0",
        cc(0x1F5, bytes.fromhex("01000020000100FE")),
    ),
    ("(0.000000) vcan0 000#", 0, "vcan0", cc(0)),
    ("(1.000001) can0 7FF#11", 1_000_001_000, "can0", cc(0x7FF, b"\x11")),
    ("(1.000001) can0 12345678#112233", 1_000_001_000, "can0", cc(0x12345678 | EFF, b"\x11\x22\x33")),
    ("(1.000001) can0 00000123#", 1_000_001_000, "can0", cc(0x123 | EFF)),
    ("(1.000001) can0 1FFFFFFF#FF", 1_000_001_000, "can0", cc(0x1FFFFFFF | EFF, b"\xff")),
    ("(1.000001) can0 20000080#0000000000000000", 1_000_001_000, "can0", cc(ERR | 0x80, bytes(8))),
    ("(1.000001) can0 20000004#0004000000000000", 1_000_001_000, "can0", cc(ERR | 0x4, b"\0\x04" + bytes(6))),
    ("(1.000001) can0 123#R", 1_000_001_000, "can0", cc(0x123 | RTR, length=0)),
    ("(1.000001) can0 123#R7", 1_000_001_000, "can0", cc(0x123 | RTR, length=7)),
    ("(1.000001) can0 123#R8", 1_000_001_000, "can0", cc(0x123 | RTR, length=8)),
    ("(1.000001) can0 123#R8_C", 1_000_001_000, "can0", cc(0x123 | RTR, len8_dlc=0xC, length=8)),
    ("(1.000001) can0 12345678#R3", 1_000_001_000, "can0", cc(0x12345678 | EFF | RTR, length=3)),
    (
        "(1.000001) can0 123#1122334455667788_C",
        1_000_001_000,
        "can0",
        cc(0x123, bytes.fromhex("1122334455667788"), len8_dlc=0xC),
    ),
    (
        "(1.000001) can0 123#1122334455667788_9",
        1_000_001_000,
        "can0",
        cc(0x123, bytes.fromhex("1122334455667788"), len8_dlc=9),
    ),
    ("(1.000001) can0 123##0", 1_000_001_000, "can0", fd(0x123)),
    ("(1.000001) can0 123##1112233", 1_000_001_000, "can0", fd(0x123, b"\x11\x22\x33", BRS)),
    ("(1.000001) can0 123##2AA", 1_000_001_000, "can0", fd(0x123, b"\xaa", ESI)),
    (
        "(1.000001) can0 12345678##3" + "AB" * 64,
        1_000_001_000,
        "can0",
        fd(0x12345678 | EFF, b"\xab" * 64, BRS | ESI),
    ),
    ("(1.000001) can0 123##0" + "00" * 12, 1_000_001_000, "can0", fd(0x123, bytes(12))),
    ("(1999999999.999999) can10 123#", 1999999999999999000, "can10", cc(0x123)),
]


@pytest.mark.parametrize("line, ts_ns, iface, raw", GOLDEN)
def test_golden_parse_and_format(line, ts_ns, iface, raw):
    assert parse_line(line) == (ts_ns, iface, raw)
    assert format_line(ts_ns, iface, raw) == line
    frame_text = line.split()[2]
    assert parse_frame(frame_text) == raw
    assert format_frame(raw) == frame_text


def test_golden_raw_layout():
    _ts, _iface, raw = parse_line("(1.5) can0 123##1112233")
    assert len(raw) == 72
    assert raw[:8] == bytes.fromhex("23010000") + bytes([3, BRS | FDF, 0, 0])  # host order (LE)
    assert raw[8:] == b"\x11\x22\x33" + bytes(61)
    _ts, _iface, raw = parse_line("(1.5) can0 123#R8_C")
    assert raw == bytes.fromhex("230100400800000C") + bytes(8)
    assert CanFrame.from_raw(parse_frame("12345678#R3")) == CanFrame(
        0x12345678, is_extended=True, is_remote=True, length=3
    )
    assert CanFrame.from_raw(parse_frame("20000080#0000000000000000")).is_error


@pytest.mark.parametrize(
    "line, expected",
    [
        # lenient input forms that parse to the canonical frame
        ("(1.000001) can0 1f5#deadbeef", ("1F5#DEADBEEF", 1_000_001_000)),
        ("(1.000001) can0 123#11.22.33", ("123#112233", 1_000_001_000)),
        ("(1.000001) can0 123#.11.22.33.", ("123#112233", 1_000_001_000)),
        ("(1.000001) can0 123##1.11.22", ("123##11122", 1_000_001_000)),
        ("(1.000001) can0 123#r5", ("123#R5", 1_000_001_000)),
        ("(1.000001) can0 123#R8_c", ("123#R8_C", 1_000_001_000)),
        ("(1.000001) can0 123#1122334455667788_a", ("123#1122334455667788_A", 1_000_001_000)),
        # can-utils >= 2023 print the whole flags nibble including CANFD_FDF (0x4)
        ("(1.000001) can0 123##4AA", ("123##0AA", 1_000_001_000)),
        ("(1.000001) can0 123##5AA", ("123##1AA", 1_000_001_000)),
        ("(1.000001) can0 123##7AA", ("123##3AA", 1_000_001_000)),
        # candump -x / python-can trailing direction, padding, whitespace, CRLF
        ("(1.000001) can0 123#11 R", ("123#11", 1_000_001_000)),
        ("(1.000001) can0 123#11 T", ("123#11", 1_000_001_000)),
        ("(1.000001) can0 123#11 r\r\n", ("123#11", 1_000_001_000)),
        ("(1.000001)   can0 123#11", ("123#11", 1_000_001_000)),
        ("  (1.000001) can0 123#11  \n", ("123#11", 1_000_001_000)),
        # timestamps: exact decimal -> ns, 0..9 fraction digits
        ("(5) can0 123#", ("123#", 5_000_000_000)),
        ("(1.5) can0 123#", ("123#", 1_500_000_000)),
        ("(1.123456789) can0 123#", ("123#", 1_123_456_789)),
        ("(0001.000001) can0 123#", ("123#", 1_000_001_000)),
        ("(99999999999.999999) can0 123#", ("123#", 99999999999_999999_000)),
    ],
)
def test_lenient_input(line, expected):
    text, ts_ns = expected
    got_ts, iface, raw = parse_line(line)
    assert (got_ts, iface) == (ts_ns, "can0")
    assert format_frame(raw) == text
    assert raw == parse_frame(text)


def test_timestamp_is_exact_not_float():
    ts_ns, _, _ = parse_line("(1742339088.146472) can0 123#")
    assert ts_ns == 1742339088146472000
    assert int(float("1742339088.146472") * 1e9) != ts_ns  # what float arithmetic would give
    ts_ns, _, _ = parse_line("(1742339088.146472001) can0 123#")
    assert ts_ns == 1742339088146472001


def test_format_line_timestamp_truncates_to_microseconds():
    raw = cc(0x123)
    assert format_line(1_000_000_999, "can0", raw) == "(1.000000) can0 123#"
    assert format_line(1_999_999_999, "can0", raw) == "(1.999999) can0 123#"
    assert format_line(42_000, "can0", raw) == "(0.000042) can0 123#"
    assert format_line(10**19, "can0", raw) == "(10000000000.000000) can0 123#"


@pytest.mark.parametrize(
    "raw, text",
    [
        # non-canonical raw frames: written the way lib.c writes them
        (cc(0x123 | EFF | ERR, bytes(8)), "20000123#0000000000000000"),  # ERR wins over EFF
        (cc(0x923), "123#"),  # SFF: id masked to 11 bits
        (cc(0x123, bytes(7), len8_dlc=0xC), "123#00000000000000"),  # len8_dlc only with len 8
        (cc(0x123, bytes(8), len8_dlc=5), "123#0000000000000000"),  # len8_dlc only 9..F
        (cc(0x123 | RTR, length=7, len8_dlc=0xC), "123#R7"),
        (fd(0x123 | RTR, b"\x01"), "123##001"),  # no RTR in CAN FD
        (fd(0x123, b"", BRS | ESI), "123##3"),
        (sc.HEADER.pack(0x123, 1, 0, 0, 0) + b"\x01" + bytes(63), "123##001"),  # FD without FDF
        (sc.HEADER.pack(0x123, 2, 0xFF, 0, 0) + b"\x01\x02" + bytes(6), "123#0102"),  # CC pad ignored
        (sc.HEADER.pack(0x123 | RTR, 2, 0, 0, 0) + b"\x01\x02" + bytes(6), "123#R2"),
    ],
)
def test_format_frame_non_canonical(raw, text):
    assert format_frame(raw) == text


# --------------------------------------------------------------------------------------------
# errors

FRAME_ERRORS = [
    ("", "bad_can_id"),
    ("123", "bad_can_id"),
    ("#11", "bad_can_id"),
    ("12#11", "bad_can_id"),
    ("1234#11", "bad_can_id"),
    ("1234567#11", "bad_can_id"),
    ("123456789#11", "bad_can_id"),
    ("12G#11", "bad_can_id"),
    ("+12#11", "bad_can_id"),
    (" 12#11", "bad_can_id"),
    ("800#11", "bad_can_id"),
    ("FFF#11", "bad_can_id"),
    ("1234567G#11", "bad_can_id"),
    ("0x123456#11", "bad_can_id"),
    ("40000000#11", "bad_can_id"),
    ("80000123#11", "bad_can_id"),
    ("E0000123#11", "bad_can_id"),
    ("12345#11", "unsupported_can_xl"),
    ("123#R9", "bad_rtr"),
    ("123#RX", "bad_rtr"),
    ("123#R11", "bad_rtr"),
    ("123#R7_C", "bad_rtr"),
    ("123#R8_", "bad_rtr"),
    ("123#R8_CC", "bad_rtr"),
    ("123#R8_G", "bad_rtr"),
    ("123#R8C", "bad_rtr"),
    ("123#R8_5", "bad_len8_dlc"),
    ("123#R8_0", "bad_len8_dlc"),
    ("123##", "bad_fd_flags"),
    ("123##G11", "bad_fd_flags"),
    ("123##.11", "bad_fd_flags"),
    ("123##8", "bad_fd_flags"),
    ("123##F11", "bad_fd_flags"),
    ("123##1" + "11" * 9, "bad_len"),
    ("123##1" + "11" * 63, "bad_len"),
    ("123##1" + "11" * 65, "bad_len"),
    ("123##1112", "bad_data"),
    ("123#112", "bad_data"),
    ("123#1", "bad_data"),
    ("123#1G", "bad_data"),
    ("123#11 22", "bad_data"),
    ("123#11..22", "bad_data"),
    ("123#..", "bad_data"),
    ("123#11#22", "bad_data"),
    ("123#R#", "bad_rtr"),
    ("123#112233445566778899", "bad_len"),
    ("123#11_C", "bad_len8_dlc"),
    ("123#_C", "bad_len8_dlc"),
    ("123#1122334455667788_", "bad_len8_dlc"),
    ("123#1122334455667788_5", "bad_len8_dlc"),
    ("123#1122334455667788_8", "bad_len8_dlc"),
    ("123#1122334455667788_CC", "bad_len8_dlc"),
    ("123#1122334455667788_G", "bad_len8_dlc"),
    ("123#1122334455667788__C", "bad_len8_dlc"),
    ("123#11223344556677_88", "bad_len8_dlc"),
]


@pytest.mark.parametrize("text, reason", FRAME_ERRORS)
def test_parse_frame_errors(text, reason):
    with pytest.raises(CandumpError) as info:
        parse_frame(text)
    assert info.value.reason == reason
    assert isinstance(info.value, ValueError) and isinstance(info.value, ProtocolError)
    assert repr(text) in str(info.value)


LINE_ERRORS = [
    ("", "bad_line"),
    ("   ", "bad_line"),
    ("(1.000001) can0", "bad_line"),
    ("(1.000001) can0 123#11 X", "bad_line"),
    ("(1.000001) can0 123#11 R T", "bad_line"),
    ("(1.000001) can0 123# 11", "bad_line"),
    ("1.000001 can0 123#11", "bad_timestamp"),
    ("(1.000001 can0 123#11", "bad_timestamp"),
    ("1.000001) can0 123#11", "bad_timestamp"),
    ("() can0 123#11", "bad_timestamp"),
    ("(.5) can0 123#11", "bad_timestamp"),
    ("(1.) can0 123#11", "bad_timestamp"),
    ("(-1.000001) can0 123#11", "bad_timestamp"),
    ("(+1.000001) can0 123#11", "bad_timestamp"),
    ("(1,000001) can0 123#11", "bad_timestamp"),
    ("(1.0000000001) can0 123#11", "bad_timestamp"),
    ("(1e3) can0 123#11", "bad_timestamp"),
    ("(\u0661.000001) can0 123#11", "bad_timestamp"),  # non-ASCII digit
    ("(1.000001) can0 12#11", "bad_can_id"),
    ("(1.000001) can0 123#112", "bad_data"),
]


@pytest.mark.parametrize("line, reason", LINE_ERRORS)
def test_parse_line_errors(line, reason):
    with pytest.raises(CandumpError) as info:
        parse_line(line)
    assert info.value.reason == reason


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"", "bad_frame"),
        (bytes(15), "bad_frame"),
        (bytes(17), "bad_frame"),
        (bytes(71), "bad_frame"),
        (sc.HEADER.pack(0x123, 9, 0, 0, 0) + bytes(8), "bad_len"),
        (sc.HEADER.pack(0x123 | RTR, 9, 0, 0, 0) + bytes(8), "bad_len"),
        (sc.HEADER.pack(0x123, 9, FDF, 0, 0) + bytes(64), "bad_len"),
        (sc.HEADER.pack(0x123, 65, FDF, 0, 0) + bytes(64), "bad_len"),
    ],
)
def test_format_frame_errors(raw, reason):
    with pytest.raises(CandumpError) as info:
        format_frame(raw)
    assert info.value.reason == reason
    with pytest.raises(CandumpError):
        format_line(0, "can0", raw)


@pytest.mark.parametrize(
    "ts_ns, iface, reason",
    [
        (-1, "can0", "bad_timestamp"),
        (1.5, "can0", "bad_timestamp"),
        (True, "can0", "bad_timestamp"),
        ("1", "can0", "bad_timestamp"),
        (0, "", "bad_iface"),
        (0, "can 0", "bad_iface"),
        (0, " can0", "bad_iface"),
        (0, "can0\n", "bad_iface"),
        (0, None, "bad_iface"),
    ],
)
def test_format_line_errors(ts_ns, iface, reason):
    with pytest.raises(CandumpError) as info:
        format_line(ts_ns, iface, cc(0x123))
    assert info.value.reason == reason


# --------------------------------------------------------------------------------------------
# the Durango recording


def test_durango_round_trip_every_line():
    lines = DURANGO.read_text(encoding="ascii").splitlines()
    assert len(lines) == DURANGO_LINES
    n = 0
    last_ts = 0
    for line, (ts_ns, iface, raw) in zip(lines, read_log(DURANGO), strict=True):
        assert format_line(ts_ns, iface, raw) == line
        assert ts_ns >= last_ts
        last_ts = ts_ns
        n += 1
    assert n == DURANGO_LINES
    first = parse_line(lines[0])
    assert first == (1742339088146472000, "can0", cc(0x1F5, bytes.fromhex("01000020000100FE")))


def test_durango_matches_python_can_reader():
    ours = list(itertools.islice(read_log(DURANGO), 0, None, 7))
    with can.CanutilsLogReader(DURANGO) as reader:
        theirs = list(itertools.islice(reader, 0, None, 7))
    assert len(ours) == len(theirs) == (DURANGO_LINES + 6) // 7
    for (ts_ns, iface, raw), msg in zip(ours, theirs, strict=True):
        frame = CanFrame.from_raw(raw, ts_ns)
        assert frame.can_id == msg.arbitration_id
        assert frame.is_extended == msg.is_extended_id
        assert frame.data == bytes(msg.data)
        assert len(frame.data) == msg.dlc
        assert iface == msg.channel
        assert ts_ns // 1000 == round(msg.timestamp * 1e6)


# --------------------------------------------------------------------------------------------
# python-can interoperability

PYCAN_FRAMES = [
    cc(0x123, b"\x11\x22\x33"),
    cc(0x000),
    cc(0x7FF, bytes(range(8))),
    cc(0x12345678 | EFF, b"\xde\xad\xbe\xef"),
    cc(0x00000001 | EFF),
    cc(0x123 | RTR, length=0),
    cc(0x123 | RTR, length=5),
    cc(0x1ABCDEF0 | EFF | RTR, length=8),
    fd(0x123, b"\x01" * 12),
    fd(0x123, b"\x02" * 64, BRS),
    fd(0x12345678 | EFF, b"\x03" * 3, ESI),
    fd(0x7FF, b"", BRS | ESI),
    cc(ERR | 0x80, bytes(8)),  # python-can only recognises error frames with CAN_ERR_BUSERROR
]


def test_python_can_reads_our_lines(tmp_path):
    path = tmp_path / "ours.log"
    stamps = [1742339088_000000_000 + i * 1_234_567_000 for i in range(len(PYCAN_FRAMES))]
    path.write_text("".join(format_line(ts, "vcan1", raw) + "\n" for ts, raw in zip(stamps, PYCAN_FRAMES)))
    with can.CanutilsLogReader(path) as reader:
        msgs = list(reader)
    assert len(msgs) == len(PYCAN_FRAMES)
    for ts, raw, msg in zip(stamps, PYCAN_FRAMES, msgs, strict=True):
        frame = CanFrame.from_raw(raw, ts)
        assert round(msg.timestamp * 1e6) == ts // 1000
        assert msg.is_error_frame == frame.is_error
        if frame.is_error:
            continue
        expected = frame.to_message(channel="vcan1")
        assert msg.equals(expected, timestamp_delta=1e-6), (msg, expected)


def test_we_read_python_can_writer_output(tmp_path):
    path = tmp_path / "pycan.log"
    msgs = [
        CanFrame.from_raw(raw, 1742339088_000000_000 + i * 1_000_001_000).to_message("can2")
        for i, raw in enumerate(PYCAN_FRAMES)
    ]
    with can.CanutilsLogWriter(path) as writer:
        for msg in msgs:
            writer.on_message_received(msg)
    text = path.read_text()
    assert " R\n" in text  # python-can appends the direction; we must ignore it
    got = list(read_log(path))
    assert len(got) == len(msgs)
    for (ts_ns, iface, raw), msg, orig in zip(got, msgs, PYCAN_FRAMES, strict=True):
        assert iface == "can2"
        assert ts_ns // 1000 == round(msg.timestamp * 1e6)
        frame = CanFrame.from_raw(raw)
        if msg.is_error_frame:
            assert frame.is_error
            continue
        if msg.is_remote_frame:  # python-can writes "R" without the requested length
            assert raw == cc(frame.can_id | (EFF if frame.is_extended else 0) | RTR)
            assert (frame.can_id, frame.is_extended, frame.is_remote) == (
                msg.arbitration_id,
                msg.is_extended_id,
                True,
            )
            continue
        assert raw == orig


# --------------------------------------------------------------------------------------------
# read_log


def test_read_log_skips_blank_comment_and_dropcount_lines():
    text = (
        "# recorded with candump -l\n"
        "\n"
        "(1.000001) can0 123#11\n"
        "   \n"
        "DROPCOUNT: dropped 3 CAN frames on 'can0' socket (total drops 3)\n"
        "(1.000002) can1 456#R\n"
    )
    got = list(read_log(io.StringIO(text)))
    assert got == [(1_000_001_000, "can0", cc(0x123, b"\x11")), (1_000_002_000, "can1", cc(0x456 | RTR))]
    assert list(read_log(text.splitlines())) == got


def test_read_log_reports_line_number(tmp_path):
    path = tmp_path / "bad.log"
    path.write_text("(1.000001) can0 123#11\n\n(1.000002) can0 123#1\n")
    it = read_log(path)
    assert next(it)[2] == cc(0x123, b"\x11")
    with pytest.raises(CandumpError) as info:
        next(it)
    assert info.value.reason == "bad_data"
    assert info.value.detail.startswith("line 3: ")


def test_read_log_accepts_str_path(tmp_path):
    path = tmp_path / "ok.log"
    path.write_text("(2.5) vcan0 12345678##1AA\n")
    assert list(read_log(str(path))) == [(2_500_000_000, "vcan0", fd(0x12345678 | EFF, b"\xaa", BRS))]


# --------------------------------------------------------------------------------------------
# properties

sff_ids = st.integers(0, sc.CAN_SFF_MASK)
eff_ids = st.integers(0, sc.CAN_EFF_MASK).map(lambda i: i | EFF)
data_ids = st.one_of(sff_ids, eff_ids)


@st.composite
def classic_frames(draw):
    data = draw(st.binary(max_size=8))
    len8 = draw(st.sampled_from([0, *range(9, 16)])) if len(data) == 8 else 0
    return cc(draw(data_ids), data, len8)


@st.composite
def rtr_frames(draw):
    length = draw(st.integers(0, 8))
    len8 = draw(st.sampled_from([0, *range(9, 16)])) if length == 8 else 0
    return cc(draw(data_ids) | RTR, b"", len8, length)


@st.composite
def error_frames(draw):
    return cc(ERR | draw(st.integers(0, sc.CAN_ERR_MASK)), draw(st.binary(max_size=8)))


@st.composite
def fd_frames(draw):
    n = draw(st.sampled_from(sc.FD_LENGTHS))
    flags = draw(st.sampled_from([0, BRS, ESI, BRS | ESI]))
    return fd(draw(data_ids), draw(st.binary(min_size=n, max_size=n)), flags)


raw_frames = st.one_of(classic_frames(), rtr_frames(), error_frames(), fd_frames())
ifaces = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=15)


@given(raw_frames)
def test_frame_round_trip(raw):
    text = format_frame(raw)
    assert parse_frame(text) == raw
    assert format_frame(parse_frame(text)) == text


@given(raw_frames, st.integers(0, 2**63), ifaces)
def test_line_round_trip(raw, ts_ns, iface):
    line = format_line(ts_ns, iface, raw)
    assert parse_line(line) == (ts_ns - ts_ns % 1000, iface, raw)
    assert format_line(*parse_line(line)) == line


@given(raw_frames, st.data())
def test_noisy_notation_parses_to_same_frame(raw, data):
    """Lower case and '.' separators (cansend style) do not change the frame."""
    text = format_frame(raw)
    cid, sep, rest = text.partition("#")
    if rest.startswith("R"):
        noisy = rest.lower()
    else:
        prefix = "#" + rest[1] if rest.startswith("#") else ""
        body = rest[len(prefix) :]
        body, us, dlc = body.partition("_")
        pairs = [body[i : i + 2] for i in range(0, len(body), 2)]
        dots = data.draw(st.lists(st.booleans(), min_size=len(pairs) + 1, max_size=len(pairs) + 1))
        body = "".join(("." if d else "") + p for d, p in zip(dots, pairs)) + ("." if dots[-1] else "")
        noisy = prefix + body.lower() + us + dlc.lower()
    assert parse_frame(cid.lower() + sep + noisy) == raw


@given(raw_frames)
def test_python_can_agrees_on_random_frames(raw):
    frame = CanFrame.from_raw(raw, 1_700_000_000_123_456_000)
    if frame.is_error or frame.len8_dlc:
        return  # python-can's reader knows neither len8_dlc nor error classes other than bus error
    line = format_line(frame.timestamp_ns, "can0", raw)
    msgs = list(can.CanutilsLogReader(io.StringIO(line + "\n")))
    assert len(msgs) == 1
    assert msgs[0].equals(frame.to_message(channel="can0"), timestamp_delta=1e-6)


# --------------------------------------------------------------------------------------------
# candump's screen format, -e error text and DROPCOUNT notice (golden lines: candump 2023.03 in
# the test VM; tests/vcan/test_dump.py compares against the live tool)

from bridge.codec.candump import describe_error_frame, format_dropcount, format_screen  # noqa: E402
from bridge.tools.live.dump import Formatter  # noqa: E402
from bridge.tools.live.source import Rx  # noqa: E402

SCREEN_GOLDEN = [
    # raw, plain, indent_sff + ascii
    (cc(0x123, b"\x11\x22\x33\x44"), "123   [4]  11 22 33 44", "     123   [4]  11 22 33 44               '.\"3D'"),
    (cc(0x123), "123   [0] ", "     123   [0]                            ''"),
    (cc(0x12345678 | EFF, b"\xaa"), "12345678   [1]  AA", "12345678   [1]  AA                        '.'"),
    (cc(0x123 | RTR, length=3), "123   [3]  remote request", "     123   [3]  remote request"),
    (fd(0x123, b"", FDF), "123  [00] ", "     123  [00]                            ''"),
    (fd(0x123, bytes(range(12)), BRS), "123  [12]  00 01 02 03 04 05 06 07 08 09 0A 0B",
     "     123  [12]  00 01 02 03 04 05 06 07 08 09 0A 0B"),
    (cc(ERR | 0x80, bytes(8)), "20000080   [8]  00 00 00 00 00 00 00 00   ERRORFRAME",
     "20000080   [8]  00 00 00 00 00 00 00 00   ERRORFRAME"),
    (cc(ERR | 0x4, b"\0"), "20000004   [1]  00                        ERRORFRAME",
     "20000004   [1]  00                        ERRORFRAME"),
    (cc(0x456, b"Hello!"), "456   [6]  48 65 6C 6C 6F 21", "     456   [6]  48 65 6C 6C 6F 21         'Hello!'"),
]


@pytest.mark.parametrize("raw, plain, fancy", SCREEN_GOLDEN)
def test_format_screen_golden(raw, plain, fancy):
    assert format_screen(raw) == plain
    assert format_screen(raw, indent_sff=True, ascii=True) == fancy


def test_format_screen_rejects_bad_size():
    with pytest.raises(CandumpError):
        format_screen(b"\0" * 15)


@pytest.mark.parametrize("can_id, data, text", [
    (0x80, bytes(8), "bus-error"),
    (0x4, b"\0\x04" + bytes(6), "controller-problem{rx-error-warning}"),
    (0x4, b"\0\x80" + bytes(6), "controller-problem{}"),
    (0x2, b"\x1f" + bytes(7), "lost-arbitration{at bit 31}"),
    (0x8, b"\0\0\x03\x0a" + bytes(4), "protocol-violation{{single-bit-error,frame-format-error}{data-field}}"),
    (0x8, b"\0\0\0\x13" + bytes(4), "protocol-violation{{}{tolerate-dominant-bits}}"),
    (0x8, b"\0\0\0\x81" + bytes(4), "protocol-violation{{}{}}"),
    (0x6, bytes(range(1, 9)),
     "lost-arbitration{at bit 1}\n\tcontroller-problem{tx-overflow}\n\terror-counter-tx-rx{{7}{8}}"),
    (0x200, bytes(6) + b"\x07\x08", "\n\terror-counter-tx-rx{{7}{8}}"),
    (0x200, bytes(8), ""),
    (0x400, bytes(8), None),
])
def test_describe_error_frame(can_id, data, text):
    assert describe_error_frame(cc(ERR | can_id, data)) == text


def test_dropcount_notice():
    assert format_dropcount(1, "vcan0", 1) == "DROPCOUNT: dropped 1 CAN frame on 'vcan0' socket (total drops 1)"
    assert format_dropcount(2989, "can0", 3000) == (
        "DROPCOUNT: dropped 2989 CAN frames on 'can0' socket (total drops 3000)")


def test_dump_formatter_lines():
    """bridge.tools.live.dump.Formatter: candump's line layout, interface column, -t d/z, -L -x, -e quirk."""
    ts = 1_795_300_875_450_930_999
    f = Formatter(["vcan0", "any"], timestamps="d")
    assert f.frame(Rx("vcan0", cc(0x123, b"\x11"), ts))[0] == " (000.000000)  vcan0  123   [1]  11"
    assert f.frame(Rx("vcan0", cc(0x1 | EFF), ts + 1_500_000))[0] == " (000.001500)  vcan0  00000001   [0] "
    assert f.frame(Rx("longcan0", cc(0x7), ts + 1_600_000))[0] == " (000.000100)  longcan0       007   [0] "
    assert f.frame(Rx("vcan0", cc(0x7), ts))[0] == " (000.000000)     vcan0       007   [0] "  # never negative
    z = Formatter(["vcan0"], timestamps="z", extra=True)
    z.frame(Rx("vcan0", cc(0x1), ts))
    line = z.frame(Rx("vcan0", fd(0x2, b"\x01", BRS | FDF), ts + 2_000_000, tx=True))[0]
    assert line == " (000.002000)  vcan0  TX B -  002  [01]  01"
    log = Formatter(["vcan0"], log=True, extra=True)
    assert log.frame(Rx("vcan0", fd(0x2, b"\x01", BRS | FDF), ts))[0] == "(1795300875.450930) vcan0 002##501 R"
    e = Formatter(["vcan0"], errors=True)
    assert e.frame(Rx("vcan0", cc(ERR | 0x80, bytes(8)), ts)) == (
        "  vcan0  20000080   [8]  00 00 00 00 00 00 00 00   ERRORFRAME\n\tbus-error", None)
    # an invalid class: candump warns and prints its line buffer (the frame) again
    text, warning = e.frame(Rx("vcan0", cc(ERR | 0x400, bytes(8)), ts))
    assert warning == "Error class 0x400 is invalid"
    frame = "20000400   [8]  00 00 00 00 00 00 00 00   ERRORFRAME"
    assert text == f"  vcan0  {frame}\n\t{frame}"
