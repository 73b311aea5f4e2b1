"""atheris harness: candump filter specs (bridge.codec.filters parse_filters).

Input: text (UTF-8 if valid, else Latin-1). Crash: any exception but FilterError, or a broken
invariant: parse_filters(str(fs)) == fs (the documented round trip), kernel_filters() holds 8 bytes
per filter (one `0:0` when there is none), matches / filter_batch agree on a few can_ids.
"""

import struct

import atheris
from harness import check, fuzz, text_of

with atheris.instrument_imports(include=["bridge"]):  # our code only: fast start
    from bridge.codec import filters

_IDS = (0x123, 0x7FF, 0x80000123, 0x9FFFFFFF, 0x40000123, 0x20000004, 0x2000FFFF, 0)


def test_one_input(data: bytes) -> None:
    try:
        fs = filters.parse_filters(text_of(data))
    except filters.FilterError:
        return
    check(filters.parse_filters(str(fs)) == fs, f"str() round trip: {str(fs)!r}")
    check(len(fs.kernel_filters()) == 8 * max(1, len(fs.filters)), "kernel_filters size")
    batch = [(struct.pack("=IBBBB8s", can_id, 0, 0, 0, 0, b""), 0) for can_id in _IDS]
    kept = fs.filter_batch(batch)
    if fs.matches_all:
        check(kept is batch, "matches_all but filter_batch copied")
    else:
        check(kept == [b for b, can_id in zip(batch, _IDS) if fs.matches(can_id)], "filter_batch != matches")


if __name__ == "__main__":
    fuzz(test_one_input)
