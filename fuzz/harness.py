"""Shared helpers of the atheris harnesses in fuzz/ (stdlib only, so every bridge module is imported
inside a harness's `atheris.instrument_imports()` block and gets coverage instrumentation).

Stream harness input layout: byte 0 seeds the chunk split of the rest (0 = one chunk, k = random
chunks of 1..k bytes, deterministic), bytes 1.. are the stream. A harness signals a crash by raising:
any exception that is not the codec's documented error type, or Invariant for a broken invariant.
"""

from __future__ import annotations

import random
import sys

FD_LENS = frozenset((0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64))


class Invariant(AssertionError):
    """A decoder returned something it must not (explicit raise: survives python -O)."""


def check(ok: bool, what: str) -> None:
    if not ok:
        raise Invariant(what)


def check_raw(raw) -> None:
    """raw is a struct can_frame (16 B, len <= 8) or canfd_frame (72 B, valid FD len, FDF set)."""
    check(type(raw) is bytes, f"raw frame of type {type(raw).__name__}")
    if len(raw) == 16:
        check(raw[4] <= 8, f"can_frame len {raw[4]} > 8")
    else:
        check(len(raw) == 72, f"raw frame of {len(raw)} bytes")
        check(raw[4] in FD_LENS, f"canfd_frame len {raw[4]}")
        check(bool(raw[5] & 0x04), "canfd_frame without CANFD_FDF")


def chunks(data: bytes, seed: int) -> list[bytes]:
    """data cut into chunks: seed 0 -> [data]; seed k -> random sizes 1..k (deterministic)."""
    if not seed:
        return [data]
    rng = random.Random(seed)
    out = []
    i = 0
    while i < len(data):
        n = rng.randint(1, seed)
        out.append(data[i : i + n])
        i += n
    return out


def drain(decoder, parts, error_type, need_data, closed):
    """Feed parts then EOF (b""), draining next_event() until NEED_DATA / CLOSED after each.
    -> (events, outcome): outcome "CLOSED" or the reason of the error_type raised. Checks that an
    error is raised again on the next call and that nothing comes after CLOSED."""
    events = []
    for part in (*parts, b""):
        decoder.receive_data(part)
        try:
            while (ev := decoder.next_event()) is not need_data:
                if ev is closed:
                    check(part == b"", "CLOSED before EOF")
                    check(decoder.next_event() is closed, "CLOSED not sticky")
                    return events, "CLOSED"
                events.append(ev)
        except error_type as e:
            try:
                decoder.next_event()
            except error_type as again:
                check(again is e, "a different error on the call after an error")
            else:
                raise Invariant("no error on the call after an error") from e
            return events, e.reason
    raise Invariant("NEED_DATA after EOF")


def text_of(data: bytes) -> str:
    """Fuzz bytes -> str for the text codecs: UTF-8 if valid, else Latin-1 (every code point < 256)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def fuzz(test_one_input) -> None:
    import atheris

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
