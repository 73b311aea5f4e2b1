"""Tests of bridge.codec.pycan_multicast against python-can 4.6.1's own udp_multicast packing:
golden bytes from `pack_message`, python-can's `unpack_message(check=True)` on our datagrams, round
trips and a differential check of the validity rules with hypothesis, fuzzing."""

from __future__ import annotations

import math

import can
import msgpack
import pytest
from can.interfaces.udp_multicast.utils import pack_message, unpack_message
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.codec import socketcan as sc
from bridge.codec.pycan_multicast import PycanMulticastError, decode_datagram, encode_frame, encode_frames
from bridge.errors import ProtocolError

TS_NS = 1_700_000_000_123_456_789


def msg(**kw) -> can.Message:
    """The Message python-can's socketcan interface builds for the same frame (channel "vcan0")."""
    kw.setdefault("is_extended_id", False)
    return can.Message(timestamp=TS_NS / 1e9, channel="vcan0", check=True, **kw)


GOLDEN = {  # name: (raw frame, the Message python-can would have read from vcan0)
    "classic": (sc.pack_can(0x123, b"\x01\x02"), msg(arbitration_id=0x123, data=b"\x01\x02")),
    "classic_8": (sc.pack_can(0x7FF, bytes(range(8))), msg(arbitration_id=0x7FF, data=bytes(range(8)))),
    "empty": (sc.pack_can(0x000), msg(arbitration_id=0, data=b"")),
    "eff": (sc.pack_can(sc.CAN_EFF_FLAG | 0x1ABCDEF0, b"\xde\xad"),
            msg(arbitration_id=0x1ABCDEF0, is_extended_id=True, data=b"\xde\xad")),
    "rtr": (sc.pack_can(sc.CAN_RTR_FLAG | 0x321, length=3), msg(arbitration_id=0x321, is_remote_frame=True, dlc=3)),
    "eff_rtr": (sc.pack_can(sc.CAN_EFF_FLAG | sc.CAN_RTR_FLAG | 0x1234, length=8),
                msg(arbitration_id=0x1234, is_extended_id=True, is_remote_frame=True, dlc=8)),
    "error": (sc.pack_can(sc.CAN_ERR_FLAG | 0x040, bytes(8)), msg(arbitration_id=0x040, is_error_frame=True,
                                                                   data=bytes(8))),
    "fd": (sc.pack_canfd(0x100, bytes(range(12))), msg(arbitration_id=0x100, is_fd=True, data=bytes(range(12)))),
    "fd_64_brs": (sc.pack_canfd(sc.CAN_EFF_FLAG | 0x10000, bytes(64), sc.CANFD_BRS),
                  msg(arbitration_id=0x10000, is_extended_id=True, is_fd=True, bitrate_switch=True, data=bytes(64))),
    "fd_esi": (sc.pack_canfd(0x101, b"\x55" * 8, sc.CANFD_ESI),
               msg(arbitration_id=0x101, is_fd=True, error_state_indicator=True, data=b"\x55" * 8)),
    "fd_brs_esi_empty": (sc.pack_canfd(0x102, b"", sc.CANFD_BRS | sc.CANFD_ESI),
                         msg(arbitration_id=0x102, is_fd=True, bitrate_switch=True, error_state_indicator=True)),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_encode_is_byte_identical_to_python_can(name):
    raw, message = GOLDEN[name]
    assert encode_frame(raw, TS_NS, "vcan0") == pack_message(message)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_decode_of_python_can_datagram_gives_the_frame(name):
    raw, message = GOLDEN[name]
    assert decode_datagram(pack_message(message)) == (raw, 0)


def test_reference_example_bytes():
    """wire-formats.md 2d: classic 0x123, 2 bytes, channel "vcan0" = 161 bytes, 11 keys in python-can's order."""
    dgram = encode_frame(sc.pack_can(0x123, b"\x01\x02"), 1_700_000_000_000_000_000, "vcan0")
    assert len(dgram) == 161
    assert dgram.startswith(bytes.fromhex("8b a9 74 69 6d 65 73 74 61 6d 70 cb"))
    assert list(msgpack.unpackb(dgram)) == ["timestamp", "arbitration_id", "is_extended_id", "is_remote_frame",
                                            "is_error_frame", "channel", "dlc", "data", "is_fd", "bitrate_switch",
                                            "error_state_indicator"]


def test_channel_none_and_len8_dlc_not_carried():
    raw = sc.pack_can(0x123, bytes(8), len8_dlc=12)
    assert encode_frame(raw, 0) == pack_message(can.Message(arbitration_id=0x123, is_extended_id=False,
                                                            data=bytes(8)))
    assert encode_frames([(raw, 0), (raw, 0)]) == [encode_frame(raw, 0)] * 2


def test_encoder_rejects_a_raw_frame_of_another_size():
    with pytest.raises(ValueError):
        encode_frame(b"\0" * 15, 0)


def test_missing_keys_take_python_cans_defaults_and_is_rx_is_ignored():
    assert decode_datagram(msgpack.packb({})) == (sc.pack_can(sc.CAN_EFF_FLAG), 0)  # Message(): EFF id 0
    d = {"arbitration_id": 0x12, "is_extended_id": False, "data": b"\x01", "is_rx": False}
    assert decode_datagram(msgpack.packb(d, use_bin_type=True)) == (sc.pack_can(0x12, b"\x01"), 0)


def test_rtr_data_is_ignored_as_python_can_does():
    d = {"arbitration_id": 0x12, "is_extended_id": False, "is_remote_frame": True, "dlc": 2, "data": b"\x01\x02"}
    assert decode_datagram(msgpack.packb(d, use_bin_type=True)) == (sc.pack_can(sc.CAN_RTR_FLAG | 0x12, length=2), 0)


def _bad(**fields) -> bytes:
    base = {"timestamp": 1.0, "arbitration_id": 0x12, "is_extended_id": False, "data": b"\x01", "dlc": 1}
    return msgpack.packb({**base, **fields}, use_bin_type=True)


ERRORS = [
    (b"\x00" * 4097, "too_long"),
    (b"", "bad_msgpack"),
    (b"\xc1", "bad_msgpack"),  # never-used msgpack byte
    (b"\x81\xa1", "bad_msgpack"),  # truncated
    (msgpack.packb({"a": 1}) + b"\x00", "trailing_data"),
    (msgpack.packb([1, 2]), "not_a_map"),
    (msgpack.packb({1: 2}), "bad_msgpack"),  # non-string key
    (_bad(extra=1), "unknown_key"),
    (_bad(check=True), "unknown_key"),
    (_bad(is_fd=1), "bad_type"),
    (_bad(data="text"), "bad_type"),
    (_bad(data=[1]), "bad_type"),
    (_bad(dlc=True), "bad_type"),
    (_bad(arbitration_id=1.0), "bad_type"),
    (_bad(timestamp="now"), "bad_type"),
    (_bad(channel=[1]), "bad_type"),
    (_bad(timestamp=-1.0), "bad_timestamp"),
    (_bad(timestamp=math.inf), "bad_timestamp"),
    (_bad(timestamp=math.nan), "bad_timestamp"),
    (_bad(is_remote_frame=True, is_error_frame=True), "bad_flags"),
    (_bad(is_remote_frame=True, is_fd=True), "bad_flags"),
    (_bad(arbitration_id=0x800), "bad_id"),
    (_bad(arbitration_id=-1), "bad_id"),
    (_bad(arbitration_id=0x20000000, is_extended_id=True), "bad_id"),
    (_bad(dlc=9, data=bytes(9)), "bad_dlc"),
    (_bad(dlc=65, data=bytes(65), is_fd=True), "bad_dlc"),
    (_bad(dlc=-1), "bad_dlc"),
    (_bad(is_remote_frame=True, dlc=9), "bad_dlc"),
    (_bad(dlc=2), "dlc_mismatch"),
    (_bad(bitrate_switch=True), "fd_flags_on_classic"),
    (_bad(error_state_indicator=True), "fd_flags_on_classic"),
    (_bad(is_fd=True, dlc=9, data=bytes(9)), "bad_fd_len"),
]


@pytest.mark.parametrize("data,reason", ERRORS, ids=[r for _, r in ERRORS])
def test_every_error_slug(data, reason):
    with pytest.raises(PycanMulticastError) as info:
        decode_datagram(data)
    assert info.value.reason == reason
    assert isinstance(info.value, ProtocolError)


# --------------------------------------------------------------------------------- hypothesis

@st.composite
def raw_frames(draw) -> bytes:
    """Any frame canbridge's SocketCAN endpoint can read, in the canonical form the decoder builds."""
    eff = draw(st.booleans())
    can_id = draw(st.integers(0, sc.CAN_EFF_MASK if eff else sc.CAN_SFF_MASK)) | (sc.CAN_EFF_FLAG if eff else 0)
    if draw(st.booleans()):  # CAN FD
        n = draw(st.sampled_from(sc.FD_LENGTHS))
        flags = draw(st.sampled_from((0, sc.CANFD_BRS, sc.CANFD_ESI, sc.CANFD_BRS | sc.CANFD_ESI)))
        return sc.pack_canfd(can_id | (sc.CAN_ERR_FLAG if draw(st.booleans()) else 0), draw(st.binary(min_size=n,
                             max_size=n)), flags)
    kind = draw(st.sampled_from(("data", "rtr", "err")))
    if kind == "rtr":
        return sc.pack_can(can_id | sc.CAN_RTR_FLAG, length=draw(st.integers(0, 8)))
    return sc.pack_can(can_id | (sc.CAN_ERR_FLAG if kind == "err" else 0), draw(st.binary(max_size=8)))


@settings(max_examples=300)
@given(raw=raw_frames(), ts_ns=st.integers(0, 2**62), channel=st.one_of(st.none(), st.text(max_size=15),
                                                                         st.integers(0, 255)))
def test_round_trip_and_python_can_agrees(raw, ts_ns, channel):
    dgram = encode_frame(raw, ts_ns, channel)
    assert decode_datagram(dgram) == (raw, 0)
    m = unpack_message(dgram, check=True)  # python-can accepts it
    can_id, n, flags, _l8, data = sc.unpack(raw)
    assert (m.timestamp, m.channel, m.dlc, bytes(m.data), m.is_fd) == (ts_ns / 1e9, channel, n, data, len(raw) == 72)
    assert (m.is_extended_id, m.is_remote_frame, m.is_error_frame) == (
        bool(can_id & sc.CAN_EFF_FLAG), bool(can_id & sc.CAN_RTR_FLAG), bool(can_id & sc.CAN_ERR_FLAG))
    assert (m.bitrate_switch, m.error_state_indicator) == (bool(flags & sc.CANFD_BRS), bool(flags & sc.CANFD_ESI))
    assert pack_message(m) == dgram


message_fields = st.fixed_dictionaries({}, optional={
    "timestamp": st.one_of(st.floats(), st.integers(-5, 2**40)),
    "arbitration_id": st.integers(-2, 0x20000001),
    "is_extended_id": st.booleans(),
    "is_remote_frame": st.booleans(),
    "is_error_frame": st.booleans(),
    "channel": st.one_of(st.none(), st.text(max_size=5), st.integers(0, 9)),
    "dlc": st.one_of(st.none(), st.integers(-1, 66)),
    "data": st.one_of(st.none(), st.binary(max_size=66)),
    "is_fd": st.booleans(),
    "bitrate_switch": st.booleans(),
    "error_state_indicator": st.booleans(),
    "is_rx": st.booleans(),
})


@settings(max_examples=500)
@given(fields=message_fields)
def test_accepts_exactly_what_python_can_accepts(fields):
    """Differential: with python-can's own field types, we accept a map iff Message(check=True)
    does and the FD length is one a canfd_frame can carry; accepted maps give the same frame."""
    try:
        m = can.Message(check=True, **fields)
        expected = not m.is_fd or m.dlc in sc.FD_LENGTHS
    except ValueError:
        expected = False
    dgram = msgpack.packb(fields, use_bin_type=True)
    try:
        raw, ts = decode_datagram(dgram)
    except PycanMulticastError:
        assert not expected
        return
    assert expected
    m.timestamp, m.channel = 0.0, None
    assert encode_frame(raw, 0) == pack_message(m)


@settings(max_examples=1000)
@given(data=st.binary(max_size=300))
def test_fuzz_arbitrary_bytes_raise_only_the_codec_error(data):
    try:
        decode_datagram(data)
    except PycanMulticastError:
        pass


@settings(max_examples=1000)
@given(raw=raw_frames(), pos=st.integers(0, 300), byte=st.integers(0, 255), cut=st.integers(0, 300))
def test_fuzz_mutated_datagrams_raise_only_the_codec_error(raw, pos, byte, cut):
    dgram = bytearray(encode_frame(raw, TS_NS, "vcan0"))
    dgram[pos % len(dgram)] = byte
    for candidate in (bytes(dgram), bytes(dgram[: cut % len(dgram)])):
        try:
            decode_datagram(candidate)
        except PycanMulticastError:
            pass


# ------------------------------------------------------- the udp-multicast:// peer URL and TOML keys

def test_url_defaults_are_python_cans():
    from bridge.daemon.config import parse_peer_url

    p = parse_peer_url("udp-multicast://")
    assert (p.scheme, p.host, p.port, p.extra.get("iface"), p.extra["hop_limit"]) == (
        "udp-multicast", "ff15:7079:7468:6f6e:6465:6d6f:6d63:6173", 43113, None, 1)
    p = parse_peer_url("udp-multicast://239.74.163.2?iface=eth0&hop_limit=4&filter=123:7FF")
    assert (p.host, p.port, p.extra["iface"], p.extra["hop_limit"]) == ("239.74.163.2", 43113, "eth0", 4)
    assert parse_peer_url("udp-multicast://[ff15::1]:5000").host == "ff15::1"


@pytest.mark.parametrize("url,words", [
    ("udp-multicast://10.0.0.1", "not a multicast group"),
    ("udp-multicast://?mtu=1000", "mtu is an option of udp://, cannelloni+udp://"),
    ("udp-multicast://?bind=0.0.0.0:1", "bind is an option of udp://, cannelloni+udp://"),
    ("udp-multicast://?hop_limit=256", "hop_limit"),
    ("udp-multicast://?hop_limit=x", "hop_limit"),
    ("udp-multicast://?iface=", "iface"),
    ("udp://127.0.0.1:5?iface=eth0", "iface is an option of udp-multicast://"),
])
def test_url_errors_name_the_argument(url, words):
    from bridge.daemon.config import parse_peer_url
    from bridge.errors import ConfigError

    with pytest.raises(ConfigError, match="argument") as info:
        parse_peer_url(url, "argument")
    assert words in str(info.value)


def test_toml_peer_keys(tmp_path):
    from bridge.daemon.config import load_toml
    from bridge.errors import ConfigError

    conf = tmp_path / "b.toml"
    conf.write_text('[[interface]]\nname = "vcan0"\n[[peer]]\nurl = "udp-multicast://"\niface = "mc0"\nhop_limit = 2\n')
    peer = load_toml(str(conf)).peers[0]
    assert (peer.extra["iface"], peer.extra["hop_limit"]) == ("mc0", 2)
    conf.write_text('[[interface]]\nname = "vcan0"\n[[peer]]\nurl = "udp-multicast://"\nhop_limit = true\n')
    with pytest.raises(ConfigError, match=r"peer\[0\].*hop_limit"):
        load_toml(str(conf))
