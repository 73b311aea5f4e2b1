"""Sealed (ChaCha20-Poly1305) native datagrams: round trip, tampering, wrong key, replay window,
reordering, and the wire adapter with and without a key."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.codec import native, sealed
from bridge.codec import socketcan as sc
from bridge.errors import ConfigError, ProtocolError
from bridge.protocols.native import NativeDatagram

KEY = bytes(range(32))
OTHER_KEY = bytes(32)
from tests.helpers import HELLO  # noqa: E402


def plain(n=3, session=0x1234, mtu=1472 - sealed.OVERHEAD):
    frames = [(sc.pack_can(0x100 + i, bytes([i] * (i % 9))), 1_700_000_000_000_000_000 + i) for i in range(n)]
    return native.DatagramEncoder(session, mtu).encode(0, frames)[0]


payloads = st.lists(st.tuples(st.integers(0, 0x7FF), st.binary(max_size=8)), min_size=1, max_size=40)


def encode(items):
    frames = [(sc.pack_can(cid, data), i) for i, (cid, data) in enumerate(items)]
    return native.DatagramEncoder(7, 1472 - sealed.OVERHEAD).encode(0, frames)


@settings(max_examples=50, deadline=None)
@given(payloads, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_round_trip_gives_back_the_plain_datagram_with_the_sealer_numbers(items, session, epoch):
    sealer, opener = sealed.Sealer(KEY, session, epoch), sealed.Opener(KEY)
    for n, dgram in enumerate(encode(items)):
        box = sealer.seal(dgram)
        assert len(box) == len(dgram) + sealed.OVERHEAD
        assert box[:4] == native.MAGIC and box[5] & sealed.FLAG_SEALED
        opened = opener.open(box)
        assert opened[native.UDP_HEADER_LEN:] == dgram[native.UDP_HEADER_LEN:]
        got_session, got_seq, _events = native.decode_datagram(opened)
        assert (got_session, got_seq) == (session, n)
        assert not opened[5] & sealed.FLAG_SEALED


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_bit_flip_is_rejected_and_nothing_is_parsed(data):
    box = sealed.Sealer(KEY, 1, 2).seal(plain())
    bit = data.draw(st.integers(0, len(box) * 8 - 1))
    bad = bytearray(box)
    bad[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(sealed.SealedError) as err:
        sealed.Opener(KEY).open(bytes(bad))
    assert err.value.reason in ("auth_failed", "not_sealed")  # magic or flag bit flipped: not even sealed


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 80))
def test_truncated_or_extended_datagrams_are_rejected(cut):
    box = sealed.Sealer(KEY, 1, 2).seal(plain())
    for bad in (box[: len(box) - 1 - cut], box + bytes(cut + 1)):
        with pytest.raises(sealed.SealedError, match="auth_failed"):
            sealed.Opener(KEY).open(bad)


def test_wrong_key_and_plain_datagrams_are_rejected():
    box = sealed.Sealer(OTHER_KEY, 1, 2).seal(plain())
    with pytest.raises(sealed.SealedError) as err:
        sealed.Opener(KEY).open(box)
    assert err.value.reason == "auth_failed" and isinstance(err.value, ProtocolError)
    with pytest.raises(sealed.SealedError) as err:
        sealed.Opener(KEY).open(plain())
    assert err.value.reason == "not_sealed"


def test_replay_is_rejected_reordering_within_the_window_accepted():
    sealer, opener = sealed.Sealer(KEY, 5, 100), sealed.Opener(KEY)
    boxes = [sealer.seal(plain()) for _ in range(sealed.REPLAY_WINDOW + 10)]
    assert opener.open(boxes[10]) is not None
    assert opener.open(boxes[10]) is None  # replayed
    assert opener.open(boxes[3]) is not None  # older but within the window, first time: reordered
    assert opener.open(boxes[3]) is None
    assert opener.open(boxes[sealed.REPLAY_WINDOW + 9]) is not None  # jumps ahead: 10 is now 1023 behind
    assert opener.open(boxes[9]) is None  # 1024 behind: too old, whether seen or not
    assert opener.open(boxes[11]) is not None


@settings(max_examples=50, deadline=None)
@given(st.permutations(range(64)), st.lists(st.integers(0, 63), max_size=30))
def test_every_datagram_is_delivered_once_in_any_order(order, replays):
    sealer, opener = sealed.Sealer(KEY, 9, 9), sealed.Opener(KEY)
    boxes = [sealer.seal(plain(1)) for _ in range(64)]
    delivered = [i for i in [*order, *replays] if opener.open(boxes[i]) is not None]
    assert sorted(delivered) == list(range(64))


def test_older_epoch_and_earlier_sessions_are_refused():
    opener = sealed.Opener(KEY)
    old, new = sealed.Sealer(KEY, 1, 1000), sealed.Sealer(KEY, 2, 1001)
    old_boxes = [old.seal(plain()) for _ in range(3)]
    assert opener.open(old_boxes[0]) is not None
    assert opener.open(new.seal(plain())) is not None  # the sender restarted: newer epoch
    assert opener.open(old_boxes[1]) is None  # a recording of the old session
    same_second = sealed.Sealer(KEY, 3, 1001)  # restarted again within the same second
    assert opener.open(same_second.seal(plain())) is not None
    assert opener.open(new.seal(plain())) is None  # back to a session already left: refused


def test_seq_never_wraps_in_one_session():
    sealer = sealed.Sealer(KEY, 0xFFFFFFFF, 50)
    sealer.seq = 0xFFFFFFFF
    last = sealer.seal(plain())
    first_of_next = sealer.seal(plain())
    opener = sealed.Opener(KEY)
    s1, q1 = native.decode_datagram(opener.open(last))[:2]
    s2, q2 = native.decode_datagram(opener.open(first_of_next))[:2]
    assert (s1, q1) == (0xFFFFFFFF, 0xFFFFFFFF) and (s2, q2) == (0, 0)
    assert sealer.epoch == 51


def test_wire_with_psk_round_trip_and_rejections():
    a, b = NativeDatagram(HELLO, 1472, psk=KEY), NativeDatagram(HELLO, 1472, psk=KEY)
    frames = [(sc.pack_canfd(0x123, bytes(64), sc.CANFD_BRS), 5)] * 40
    dgrams = a.encode(0, frames)
    assert all(len(d) <= 1472 for d in dgrams) and len(dgrams) > 1
    got = [f for d in dgrams for _ch, fs in b.decode(d)[1] for f in fs]
    assert got == frames
    assert b.decode(dgrams[0]) == ("replayed", [])
    assert b.decode(a.control())[0] == "ok"
    with pytest.raises(ProtocolError, match="auth_failed"):
        b.decode(NativeDatagram(HELLO, 1472, psk=OTHER_KEY).encode(0, frames[:1])[0])
    with pytest.raises(ProtocolError, match="not_sealed"):
        b.decode(NativeDatagram(HELLO, 1472).encode(0, frames[:1])[0])
    with pytest.raises(ProtocolError, match="sealed_no_key"):  # a peer without key never parses ciphertext
        NativeDatagram(HELLO, 1472).decode(dgrams[1])
    with pytest.raises(ConfigError, match="mtu 117 is too small with psk: at least 118"):
        NativeDatagram(HELLO, 117, psk=KEY)


def test_psk_options(tmp_path):
    from bridge.daemon.config import parse_peer_url

    hexkey = KEY.hex()
    assert parse_peer_url(f"udp://10.0.0.2:29601?psk={hexkey}").security.psk == KEY
    (tmp_path / "hex").write_text(hexkey.upper() + "\n")
    (tmp_path / "raw").write_bytes(KEY)
    (tmp_path / "short").write_text("abcd\n")
    for name in ("hex", "raw"):
        assert parse_peer_url(f"udp://10.0.0.2:29601?psk_file={tmp_path / name}").security.psk == KEY
    bad = [
        (f"udp://h:1?psk={hexkey[:-2]}", "psk: expected 64 hex digits"),
        ("udp://h:1?psk=zz", "psk: expected 64 hex digits"),
        (f"udp://h:1?psk_file={tmp_path / 'short'}", "psk_file .*short: expected 64 hex digits"),
        (f"udp://h:1?psk_file={tmp_path / 'missing'}", "psk_file: cannot read"),
        (f"cannelloni+udp://h:1?psk={hexkey}", "cannelloni peers cannot decrypt"),
        (f"tcp://h:1?psk={hexkey}", "psk is an option of udp://"),
        (f"udp://h:1?psk={hexkey}&psk_file={tmp_path / 'raw'}", "give psk or psk_file, once"),
    ]
    for url, words in bad:
        with pytest.raises(ConfigError, match=words):
            parse_peer_url(url)


def test_own_datagrams_reflected_back_are_refused():
    a = NativeDatagram(HELLO, 1472, psk=KEY)
    with pytest.raises(ProtocolError, match="reflected"):
        a.decode(a.control())
