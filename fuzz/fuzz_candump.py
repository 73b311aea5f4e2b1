"""atheris harness: candump log text (bridge.codec.candump parse_frame, parse_line, read_log).

Input: text (UTF-8 if valid, else Latin-1). Crash: any exception but CandumpError, or a broken
invariant: raw structs of 16/72 bytes with a valid len, format_frame / format_line of a parsed
frame parse back to the same raw (and timestamp truncated to microseconds, same iface).
"""

import atheris
from harness import check, check_raw, fuzz, text_of

with atheris.instrument_imports(include=["bridge"]):  # our code only: fast start
    from bridge.codec import candump


def round_trip(raw: bytes) -> None:
    check_raw(raw)
    check(candump.parse_frame(candump.format_frame(raw)) == raw, "format_frame does not parse back")


def test_one_input(data: bytes) -> None:
    text = text_of(data)
    try:
        round_trip(candump.parse_frame(text))
    except candump.CandumpError:
        pass
    try:
        ts, iface, raw = candump.parse_line(text)
    except candump.CandumpError:
        pass
    else:
        round_trip(raw)
        check(ts >= 0, f"ts_ns {ts}")
        back = candump.parse_line(candump.format_line(ts, iface, raw))
        check(back == (ts // 1000 * 1000, iface, raw), "format_line does not parse back")
    if "\n" in text:
        try:
            for _ts, _iface, raw in candump.read_log(text.splitlines()):
                check_raw(raw)
        except candump.CandumpError:
            pass


if __name__ == "__main__":
    fuzz(test_one_input)
