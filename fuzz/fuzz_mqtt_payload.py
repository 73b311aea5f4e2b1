"""atheris harness: MQTT message payloads (bridge.codec.mqtt_payload.decode_counted), all three formats.

Input: byte 0 picks the format (native, json, candump), the rest is the payload. Crash: any exception but
MqttPayloadError, or a broken invariant: every decoded (raw, ts) is a valid 16/72-byte struct, and the
batch encodes back to a payload of the same format that decodes to the same frames (candump: to the us),
native with the same PUB_COUNT.
"""

import atheris
from harness import check, check_raw, fuzz

with atheris.instrument_imports(include=["bridge"]):  # our code only: fast start
    from bridge.codec import mqtt_payload as mp


def test_one_input(data: bytes) -> None:
    if not data:
        return
    fmt = mp.FORMATS[data[0] % len(mp.FORMATS)]
    try:
        frames, count = mp.decode_counted(fmt, data[1:])
    except mp.MqttPayloadError:
        return
    for raw, ts in frames:
        check_raw(raw)
        check(0 <= ts < 2**64, f"ts {ts}")
    if fmt == "native":
        again = mp.encode_native(frames, count and count[:2], count[2] if count else 0)
        check(mp.decode_counted(fmt, again) == (frames, count), "PUB_COUNT round trip")
    again = mp.decode(fmt, mp.encode(fmt, "gw", "can0", frames))
    if fmt == "candump":
        frames = [(raw, ts // 1000 * 1000) for raw, ts in frames]
    check(again == frames, f"{fmt}: encode does not decode back")


if __name__ == "__main__":
    fuzz(test_one_input)
