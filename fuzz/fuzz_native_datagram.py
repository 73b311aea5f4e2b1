"""atheris harness: native protocol decode_datagram (bridge.codec.native).

Input: one UDP datagram; n_channels is its flags byte (byte 5, ignored by the decoder) or 256 if 0,
so the bad_channel check is reached. Crash: any exception but NativeProtocolError, or a broken
invariant: raw structs of 16/72 bytes with a valid len, channels < n_channels, session/seq u32, the
frames re-encoded by DatagramEncoder decode back to the same (raw, ts_ns) tuples, and HELLO, TX_COUNT
(frames_sent u64) and RX_COUNT (session u32, frames_accounted u64) re-encoded in a control datagram
decode back to the same events.
"""

import atheris
from harness import check, check_raw, fuzz

with atheris.instrument_imports(include=["bridge"]):  # our code only: fast start
    from bridge.codec import native


def test_one_input(data: bytes) -> None:
    n_channels = (data[5] if len(data) > 5 else 0) or 256
    try:
        session, seq, events = native.decode_datagram(data, n_channels)
    except native.NativeProtocolError:
        return
    check(0 <= session <= 0xFFFFFFFF and 0 <= seq <= 0xFFFFFFFF, f"session {session} seq {seq}")
    # the smallest mtu: several datagrams, so pack_datagrams is exercised too
    enc = native.DatagramEncoder(session, mtu=native.UDP_HEADER_LEN + native.MAX_FRAME_RECORD)
    for ev in events:
        if type(ev) is native.Hello:
            big = native.DatagramEncoder(session, mtu=65507)
            check(native.decode_datagram(big.encode_control(native.encode_hello(ev)))[2] == [ev], "HELLO round trip")
            continue
        if type(ev) is native.TxCount:
            check(0 <= ev.frames_sent < 1 << 64, f"frames_sent {ev.frames_sent}")
            rec = native.encode_tx_count(ev.frames_sent)
            check(native.decode_datagram(enc.encode_control(rec))[2] == [ev], "TX_COUNT round trip")
            continue
        if type(ev) is native.RxCount:
            check(0 <= ev.session <= 0xFFFFFFFF and 0 <= ev.frames_accounted < 1 << 64, f"{ev}")
            rec = native.encode_rx_count(ev.session, ev.frames_accounted)
            check(native.decode_datagram(enc.encode_control(rec))[2] == [ev], "RX_COUNT round trip")
            continue
        if type(ev) is not native.Frames:
            continue
        check(ev.channel < n_channels, f"channel {ev.channel} >= {n_channels}")
        for raw, ts in ev.frames:
            check_raw(raw)
            check(0 <= ts < 1 << 64, f"ts_ns {ts}")
        back = [f for d in enc.encode(ev.channel, ev.frames) for e in native.decode_datagram(d)[2]
                for f in e.frames]
        check(back == ev.frames, "re-encoded frames decode differently")


if __name__ == "__main__":
    fuzz(test_one_input)
