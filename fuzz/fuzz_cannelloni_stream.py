"""atheris harness: cannelloni TCP StreamDecoder (bridge.codec.cannelloni).

Input: byte 0 = chunk split seed (fuzz/harness.py), bytes 1.. = the TCP byte stream. Crash: any
exception but CannelloniProtocolError, or a broken invariant: the same frames and outcome whatever
the chunking, Banner first and once, raw structs of 16/72 bytes with a valid len and ts_ns 0, and
frames re-encoded by encode_frames decode back to the same tuples.
"""

import atheris
from harness import check, check_raw, chunks, drain, fuzz

with atheris.instrument_imports(include=["bridge"]):  # our code only: fast start
    from bridge.codec import cannelloni as cn
    from bridge.codec.base import CLOSED, NEED_DATA
    from bridge.codec.base import events as all_events


def flatten(events) -> list:
    return [f for ev in events if type(ev) is cn.Frames for f in ev.frames]


def decode(stream: bytes, seed: int):
    dec = cn.StreamDecoder()
    events, outcome = drain(dec, chunks(stream, seed), cn.CannelloniProtocolError, NEED_DATA, CLOSED)
    check(dec.frames_decoded == len(flatten(events)), "frames_decoded != frames returned")
    return events, outcome


def test_one_input(data: bytes) -> None:
    if not data:
        return
    stream = data[1:]
    events, outcome = decode(stream, data[0])
    if data[0]:
        whole, whole_outcome = decode(stream, 0)
        check(flatten(events) == flatten(whole), "frames differ between chunked and one-chunk decoding")
        check(outcome == whole_outcome, f"outcome {outcome} chunked, {whole_outcome} in one chunk")
    banners = [i for i, ev in enumerate(events) if type(ev) is cn.Banner]
    check(banners in ([], [0]), f"Banner events at {banners}")
    frames = flatten(events)
    for raw, ts in frames:
        check_raw(raw)
        check(ts == 0, f"ts_ns {ts}")
    if frames:
        again = cn.StreamDecoder()
        again.receive_data(cn.BANNER + cn.encode_frames(frames))
        again.receive_data(b"")
        check(flatten(all_events(again)) == frames, "re-encoded frames decode differently")


if __name__ == "__main__":
    fuzz(test_one_input)
