"""atheris harness: python-can udp_multicast datagrams (bridge.codec.pycan_multicast decode_datagram).

Input: one datagram payload (msgpack). Crash: any exception but PycanMulticastError, or a broken
invariant: (raw, 0) with raw a 16/72-byte struct with a valid len, and encode_frame(raw) decodes back
to the same raw.
"""

import atheris
from harness import check, check_raw, fuzz

with atheris.instrument_imports(include=["bridge"]):  # our code only: fast start
    from bridge.codec import pycan_multicast as pm


def test_one_input(data: bytes) -> None:
    try:
        raw, ts = pm.decode_datagram(data)
    except pm.PycanMulticastError:
        return
    check_raw(raw)
    check(ts == 0, f"ts_ns {ts}")
    check(pm.decode_datagram(pm.encode_frame(raw, 0, "can0")) == (raw, 0), "encode_frame does not decode back")


if __name__ == "__main__":
    fuzz(test_one_input)
