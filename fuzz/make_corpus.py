"""Write the seed corpora fuzz/corpus/<target>/ from our own encoders (valid inputs to start from).

    python fuzz/make_corpus.py      # rewrites the seed files; run after a wire format change

The files are committed; run.py reads them as a second, read-only corpus directory.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from bridge.codec import candump, native
from bridge.codec import pycan_multicast as pm
from bridge.codec import cannelloni as cn
from bridge.codec import socketcan as sc

CORPUS = Path(__file__).resolve().parent / "corpus"
TS = 1_742_339_088_146_472_000

FRAMES = [
    (sc.pack_can(0x123, b"\x11\x22\x33"), TS),
    (sc.pack_can(0x1F5 | sc.CAN_EFF_FLAG, bytes(range(8)), len8_dlc=0xC), TS + 1000),
    (sc.pack_can(0x7FF | sc.CAN_RTR_FLAG, b"", length=4), TS + 2000),
    (sc.pack_can(0x20000004, bytes(8)), TS + 3000),  # error frame
]
FD_FRAMES = [
    (sc.pack_canfd(0x456, bytes(range(12)), sc.CANFD_BRS), TS + 4000),
    (sc.pack_canfd(0x12345 | sc.CAN_EFF_FLAG, bytes(range(64)), sc.CANFD_ESI), TS + 5000),
]

SOCKETCAND = {
    "raw": b"< open vcan0 >< rawmode >< send 123 2 11 22 >< send 12345678 0 >< sendrtr 7FF 4 >"
           b"< fdframes on >< fdsend 80000456 1 12 0 1 2 3 4 5 6 7 8 9 A B >< sendfd 456 0 >< echo >",
    "bcm": b"< open can0 >< add 1 0 123 2 11 22 >< update 123 1 AA >< subscribe 0 100000 124 >"
           b"< filter 0 0 125 2 FF 0F >< unsubscribe 124 >< delete 123 >< muxfilter 0 0 1 >",
    "control": b"< open vcan1 >< controlmode >< statistics 1000 >< statistics 0 >< bcmmode >< isotpmode >",
    "no_bus": b"junk\n< send 123 0 >< vcan0 B 500000 >< open xbus >< open >< echo >< hello world >",
}


def seeds() -> dict[str, list[bytes]]:
    hello = native.encode_hello(native.Hello(capabilities=native.CAP_FD, heartbeat_ms=1000,
                                             channels=("can0", "vcan1")))
    records = hello + native.encode_heartbeat(TS) + native.encode_frames(0, FRAMES) \
        + native.encode_frames(1, FD_FRAMES)
    nstream = native.STREAM_PREAMBLE + records
    enc = native.DatagramEncoder(0x12345678)
    cstream = cn.BANNER + cn.encode_frames(FRAMES + FD_FRAMES)
    lines = [candump.format_line(ts, "can0", raw) for raw, ts in FRAMES + FD_FRAMES]
    return {
        "native_stream": [b"\0" + nstream, b"\x05" + nstream, b"\0" + native.STREAM_PREAMBLE + hello],
        "native_datagram": [*enc.encode(0, FRAMES), *enc.encode(1, FD_FRAMES),
                            enc.encode_control(hello), enc.encode_control(native.encode_heartbeat(TS)),
                            enc.encode_control(hello + native.encode_tx_count(enc.frames)),
                            enc.encode_control(hello + native.encode_tx_count(enc.frames)
                                               + native.encode_rx_count(0x5EED1234, 2**64 - 1))],
        "cannelloni_stream": [b"\0" + cstream, b"\x07" + cstream],
        "cannelloni_datagram": [*cn.DatagramEncoder().encode(FRAMES + FD_FRAMES), bytes((2, 0, 9, 0, 0))],
        "socketcand": [bytes((seed, 0x07)) + text for seed, text in zip((0, 3, 0, 9), SOCKETCAND.values())],
        "candump": [line.encode() for line in lines] + ["\n".join(lines + ["", "# c"]).encode(),
                                                       b"123#R8_C", b"123#11.22.33", b"12345#00"],
        "pycan_multicast": [*pm.encode_frames(FRAMES + FD_FRAMES, "can0"), pm.encode_frame(FRAMES[0][0], 0, 3)],
        "filters": [b"123:7FF,400~700,#FFFFFFFF,j", b"12345678:1FFFFFFF", b"0123:C00007FF", b" "],
    }


def main() -> None:
    for target, inputs in seeds().items():
        d = CORPUS / target
        d.mkdir(parents=True, exist_ok=True)
        for old in d.iterdir():
            old.unlink()
        for data in inputs:
            (d / hashlib.sha1(data).hexdigest()).write_bytes(data)  # libFuzzer's naming
        print(f"{target}: {len(inputs)} seeds")


if __name__ == "__main__":
    main()
