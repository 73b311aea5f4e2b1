"""atheris harness: socketcand ServerSession (bridge.codec.socketcand), the server side of the ASCII
protocol fed with client bytes.

Input: byte 0 = chunk split seed (fuzz/harness.py), byte 1 = session options (bit 0 fd_allowed,
bit 1 error_replies, bit 2 error_frames, bit 3 min_interval_ns 1 ms; bus_exists says no to names
starting with "x"), bytes 2.. = what the client sends. Crash: any exception but
SocketcandProtocolError from receive_data/next_event, any exception at all from the output side
(encode_frames of the frames the client sent, due_cyclic / due_output / stats_due /
next_deadline_ns at a few times), or a broken invariant: the same events and outcome whatever the
chunking, Send carries a valid raw struct, limits on jobs and subscriptions hold.
"""

import atheris
from harness import check, check_raw, chunks, drain, fuzz

with atheris.instrument_imports(include=["bridge"]):  # our code only: fast start
    from bridge.codec import socketcand as scd
    from bridge.codec.base import CLOSED, NEED_DATA


def session(opts: int) -> scd.ServerSession:
    return scd.ServerSession(lambda name: not name.startswith("x"), bool(opts & 1),
                             error_replies=bool(opts & 2), error_frames=bool(opts & 4),
                             min_interval_ns=1_000_000 if opts & 8 else 0)


def decode(stream: bytes, seed: int, opts: int):
    s = session(opts)
    events, outcome = drain(s, chunks(stream, seed), scd.SocketcandProtocolError, NEED_DATA, CLOSED)
    return s, events, outcome


def test_one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    seed, opts, stream = data[0], data[1], data[2:]
    s, events, outcome = decode(stream, seed, opts)
    if seed:
        _, whole, whole_outcome = decode(stream, 0, opts)
        check(events == whole, "events differ between chunked and one-chunk decoding")
        check(outcome == whole_outcome, f"outcome {outcome} chunked, {whole_outcome} in one chunk")
    check(len(s.jobs) <= scd.MAX_JOBS and len(s.subscriptions) <= scd.MAX_SUBSCRIPTIONS, "limits")
    batch = []
    for i, ev in enumerate(events):
        if type(ev) is scd.Send:
            check_raw(ev.raw)
            batch.append((ev.raw, 1_000_000_000 * i + 123_456_789))
        elif type(ev) is scd.Reply:
            check(ev.data.startswith(b"< ") and ev.data.endswith(b" >"), f"reply {ev.data!r}")
    for now in (0, 1_000_000_000, 10**15):
        check(type(s.encode_frames(batch, now)) is bytes, "encode_frames")
        check(type(s.encode_frames(batch)) is bytes, "encode_frames without now_ns")
        s.next_deadline_ns()
        for raw in s.due_cyclic(now):
            check_raw(raw)
        s.due_output(now)
        s.stats_due(now)


if __name__ == "__main__":
    fuzz(test_one_input)
