"""atheris harness: native protocol TCP StreamDecoder (bridge.codec.native).

Input: byte 0 = chunk split seed (fuzz/harness.py), bytes 1.. = the TCP byte stream. Crash: any
exception but NativeProtocolError, or a broken invariant: the same frames and outcome whatever the
chunking, raw structs of 16/72 bytes with a valid len, frames re-encoded by encode_frames decode
back to the same (raw, ts_ns) tuples, channel < the HELLO's channel count.
"""

import atheris
from harness import check, check_raw, chunks, drain, fuzz

with atheris.instrument_imports(include=["bridge"]):  # our code only: fast start
    from bridge.codec import native
    from bridge.codec.base import CLOSED, NEED_DATA
    from bridge.codec.base import events as all_events


def flatten(events) -> list:
    out = []
    for ev in events:
        if type(ev) is native.Frames:
            out.extend((ev.channel, raw, ts) for raw, ts in ev.frames)
        else:
            out.append(ev)
    return out


def decode(stream: bytes, seed: int):
    dec = native.StreamDecoder()
    events, outcome = drain(dec, chunks(stream, seed), native.NativeProtocolError, NEED_DATA, CLOSED)
    if outcome == "CLOSED":
        check(dec.bytes_received == len(stream), "bytes_received != bytes fed")
        check(dec.frames_decoded == sum(len(e.frames) for e in events if type(e) is native.Frames),
              "frames_decoded != frames returned")
    return dec, events, outcome


def test_one_input(data: bytes) -> None:
    if not data:
        return
    stream = data[1:]
    dec, events, outcome = decode(stream, data[0])
    if data[0]:
        _, whole, whole_outcome = decode(stream, 0)
        check(flatten(events) == flatten(whole), "frames differ between chunked and one-chunk decoding")
        check(outcome == whole_outcome, f"outcome {outcome} chunked, {whole_outcome} in one chunk")
    for ev in events:
        if type(ev) is not native.Frames:
            continue
        check(dec.hello is not None and ev.channel < len(dec.hello.channels), f"channel {ev.channel}")
        for raw, ts in ev.frames:
            check_raw(raw)
            check(0 <= ts < 1 << 64, f"ts_ns {ts}")
        hello = native.encode_hello(native.Hello(channels=("c",) * (ev.channel + 1)))
        again = native.StreamDecoder()
        again.receive_data(native.STREAM_PREAMBLE + hello + native.encode_frames(ev.channel, ev.frames))
        again.receive_data(b"")
        back = [f for e in all_events(again) if type(e) is native.Frames for f in e.frames]
        check(back == ev.frames, "re-encoded frames decode differently")


if __name__ == "__main__":
    fuzz(test_one_input)
