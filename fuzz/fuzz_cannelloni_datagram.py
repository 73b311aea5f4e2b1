"""atheris harness: cannelloni decode_datagram (bridge.codec.cannelloni).

Input: one UDP datagram. Crash: any exception but CannelloniProtocolError, or a broken invariant:
seq_no u8, raw structs of 16/72 bytes with a valid len and ts_ns 0, and the frames re-encoded by
DatagramEncoder decode back to the same tuples.
"""

import atheris
from harness import check, check_raw, fuzz

with atheris.instrument_imports(include=["bridge"]):  # our code only: fast start
    from bridge.codec import cannelloni as cn


def test_one_input(data: bytes) -> None:
    try:
        seq, frames = cn.decode_datagram(data)
    except cn.CannelloniProtocolError:
        return
    check(0 <= seq <= 255, f"seq_no {seq}")
    for raw, ts in frames:
        check_raw(raw)
        check(ts == 0, f"ts_ns {ts}")
    enc = cn.DatagramEncoder(mtu=cn.MIN_MTU)  # the smallest mtu: several datagrams (pack_datagrams)
    back = [f for d in enc.encode(frames) for f in cn.decode_datagram(d)[1]]
    check(back == frames, "re-encoded frames decode differently")


if __name__ == "__main__":
    fuzz(test_one_input)
