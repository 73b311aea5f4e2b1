"""MQTT payload codecs (bridge.codec.mqtt_payload): round trips of arbitrary valid frames in every format,
and malformed payloads rejected with a reason and nothing returned."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.codec import mqtt_payload as mp
from bridge.codec import native
from bridge.codec import socketcan as sc
from tests.codec.strategies import timed_frames

batches = st.lists(timed_frames, max_size=40)


def _candump_view(raw: bytes) -> bytes:
    """What candump text can carry: an error frame's id is printed as 8 digits without EFF."""
    can_id = sc.can_id_of(raw)
    if can_id & sc.CAN_ERR_FLAG and can_id & sc.CAN_EFF_FLAG:
        return sc.HEADER.pack(can_id & ~sc.CAN_EFF_FLAG, *sc.HEADER.unpack_from(raw)[1:]) + raw[8:]
    return raw


@given(batches)
def test_native_round_trip(frames):
    assert mp.decode("native", mp.encode("native", "gw", "can0", frames)) == frames


@given(batches)
def test_json_round_trip(frames):
    payload = mp.encode("json", "gw1", "can0", frames)
    gateway, iface, got = mp.decode_json(payload)
    assert (gateway, iface, got) == ("gw1", "can0", frames)


@given(batches)
@settings(max_examples=200)
def test_candump_round_trip_to_the_microsecond(frames):
    got = mp.decode("candump", mp.encode("candump", "gw", "can0", frames))
    assert got == [(_candump_view(raw), ts // 1000 * 1000) for raw, ts in frames]


def test_native_layout_byte_by_byte():
    raw = sc.pack_canfd(0x123, b"\x11\x22", sc.CANFD_BRS)
    payload = mp.encode_native([(raw, 0x0102030405060708)])
    assert payload == (b"CNBR\x01\x00"  # magic, version 1, flags 0
                       + b"\x02\x00\x00\x12"  # FRAME record, rflags 0, body length 18
                       + b"\x00\x00\x01\x23"  # can_id big-endian
                       + b"\x02\x05\x00\x00"  # len 2, fd_flags BRS|FDF, len8_dlc 0, channel 0
                       + b"\x01\x02\x03\x04\x05\x06\x07\x08"  # kernel RX timestamp ns
                       + b"\x11\x22")


@given(batches, st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_native_round_trip_with_pub_count(frames, session, before, dropped):
    payload = mp.encode_native(frames, (session, before), dropped)
    assert mp.decode_counted("native", payload) == (frames, (session, before, dropped))
    assert mp.decode("native", payload) == frames  # a reader that does not count still gets the frames


def test_pub_count_is_skipped_by_stream_readers_and_checked_by_mqtt_readers():
    raw = sc.pack_can(0x123, b"\x01")
    payload = mp.encode_native([(raw, 5)], (7, 9))
    assert payload[6:22] == b"\x06\x00\x00\x0c" + (7).to_bytes(4, "big") + (9).to_bytes(8, "big")
    events: list = []
    stop, skipped = native._parse_records(payload, 6, len(payload), events, 1, False)  # a TCP/UDP reader
    assert (stop, skipped) == (len(payload), 1) and events[0].frames == [(raw, 5)]
    assert mp.decode_counted("json", mp.encode_json("gw", "can0", [(raw, 5)]))[1] is None
    dropped = mp.encode_native([(raw, 5)], (7, 9), 3)
    assert dropped[22:34] == b"\x07\x00\x00\x08" + (3).to_bytes(8, "big")  # PUB_DROPPED after PUB_COUNT
    events = []
    assert native._parse_records(dropped, 6, len(dropped), events, 1, False)[1] == 2  # skipped by TCP/UDP
    for bad in (payload[:6] + b"\x06\x00\x00\x08" + payload[10:18], payload[:20],
                dropped[:22] + b"\x07\x00\x00\x04" + dropped[26:30] + dropped[34:]):
        with pytest.raises(mp.MqttPayloadError) as exc:
            mp.decode_counted("native", bad)
        assert exc.value.reason in ("bad_record_length", "truncated")


def test_json_document_shape():
    raw = sc.pack_can(0x18DAF110 | sc.CAN_EFF_FLAG, b"\x02\x10\x03")
    doc = json.loads(mp.encode_json("gw1", "can0", [(raw, 5)]))
    assert doc == {"gateway": "gw1", "interface": "can0", "frames": [
        {"ts": 5, "id": 0x18DAF110, "ext": True, "rtr": False, "err": False, "fd": False, "brs": False,
         "esi": False, "len": 3, "data": "021003"}]}


def test_json_hand_written_command_with_defaults():
    frames = mp.decode("json", b'[{"id": 291, "data": "0102"}]')
    assert frames == [(sc.pack_can(0x123, b"\x01\x02"), 0)]


def test_per_id_topic_level():
    assert mp.id_topic(sc.pack_can(0x1F5, b"")) == "1F5"
    assert mp.id_topic(sc.pack_can(0x18DAF110 | sc.CAN_EFF_FLAG, b"")) == "18DAF110"


def test_chunks_bound_messages():
    frames = [(sc.pack_can(1, b""), i) for i in range(mp.MAX_MESSAGE_FRAMES * 2 + 1)]
    parts = mp.chunks(frames)
    assert [len(p) for p in parts] == [mp.MAX_MESSAGE_FRAMES, mp.MAX_MESSAGE_FRAMES, 1]
    assert [f for p in parts for f in p] == frames


GOOD_NATIVE = mp.encode_native([(sc.pack_can(0x123, b"\x01"), 1)])


@pytest.mark.parametrize("fmt, payload, reason", [
    ("native", b"", "truncated"),
    ("native", b"XXXX\x01\x00", "bad_magic"),
    ("native", b"CNBR\x02\x00", "bad_version"),
    ("native", GOOD_NATIVE[:-1], "truncated"),
    ("native", GOOD_NATIVE[:10] + b"\x00\x00\x01\x23\x09" + GOOD_NATIVE[15:], "len_too_large"),  # classic len 9
    ("native", b"CNBR\x01\x00" + native.encode_heartbeat(1), "bad_record"),
    ("native", GOOD_NATIVE  # a second FRAME record on channel 7: an MQTT message carries channel 0 only
     + b"\x02\x00\x00\x11" + b"\x00\x00\x01\x23\x01\x00\x00\x07" + bytes(8) + b"\x01", "bad_channel"),
    ("native", b"CNBR\x01\x00" + bytes(mp.MAX_PAYLOAD_BYTES), "oversize"),
    ("json", b"\xff\xfe", "bad_utf8"),
    ("json", b"{not json", "bad_json"),
    ("json", b'{"frames": 3}', "bad_json"),
    ("json", b'[{"id": 2048, "data": ""}]', "bad_frame"),
    ("json", b'[{"id": 1, "data": "0g"}]', "bad_frame"),
    ("json", b'[{"id": 1, "data": "' + b"00" * 9 + b'"}]', "bad_frame"),
    ("json", b'[{"id": 1, "fd": true, "data": "' + b"00" * 9 + b'"}]', "bad_frame"),
    ("json", b'[{"id": 1, "fd": true, "rtr": true}]', "bad_frame"),
    ("json", b'[{"id": 1, "ts": -1}]', "bad_frame"),
    ("json", b'[{"id": true}]', "bad_frame"),
    ("json", b'[{"id": 1, "brs": true}]', "bad_frame"),
    ("json", b'[{"id": 1, "len": 3, "data": "01"}]', "bad_frame"),
    ("json", b"[" * 100000 + b"]" * 100000, "bad_json"),  # nesting deeper than the parser's recursion
    ("json", b'[{"id": 1}' + b', {"id": 1}' * (4 * mp.MAX_MESSAGE_FRAMES) + b"]", "oversize"),
    ("candump", b"(1.000000) can0 123#0", "bad_data"),
    ("candump", b"hello", "bad_line"),
    ("candump", b"\xc3", "bad_utf8"),
])
def test_malformed_payloads_are_refused_whole(fmt, payload, reason):
    with pytest.raises(mp.MqttPayloadError) as info:
        mp.decode(fmt, payload)
    assert info.value.reason == reason


def test_a_good_frame_before_a_bad_one_is_not_returned():
    payload = b'[{"id": 1, "data": "01"}, {"id": 1, "data": "zz"}]'
    with pytest.raises(mp.MqttPayloadError):
        mp.decode("json", payload)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_anything_else(data):
    for fmt in mp.FORMATS:
        try:
            mp.decode(fmt, data)
        except mp.MqttPayloadError:
            pass
        try:
            mp.decode(fmt, b"CNBR\x01\x00" + data)
        except mp.MqttPayloadError:
            pass


def test_protocol_doc_mqtt_example_is_what_the_encoder_writes():
    """docs/protocol.md section 10: its hex dump is encode_native's output for the frame it describes."""
    from pathlib import Path

    from bridge.codec import mqtt_payload
    from bridge.codec import socketcan as sc

    doc = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    section = doc[doc.index("## 10. MQTT payload"):]
    dump = section.split("```hex\n")[1].split("```")[0]
    documented = bytes.fromhex(" ".join(line[6:] for line in dump.strip().splitlines()))
    raw = sc.pack_canfd(0x123, b"\x11\x22", sc.CANFD_BRS)
    count = (0x0A0B0C0D, 1000)
    assert mqtt_payload.encode_native([(raw, 0x0102030405060708)], count) == documented
    assert mqtt_payload.decode_counted("native", documented) == ([(raw, 0x0102030405060708)], (*count, 0))
