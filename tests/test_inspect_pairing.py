"""`canbridge inspect` pairing logic and the pcapng CAN record round trip (pure parts, on the host)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bridge.codec import pcapng
from bridge.codec import socketcan as sc
from bridge.tools.inspect import inspect

MS = 1_000_000


def _frame(i: int, data: bytes = b"\x01") -> bytes:
    return sc.pack_can(0x100 + i, data)


def test_fifo_pairing_counts_lost_duplicates_and_hops():
    a, b = _frame(1), _frame(2)
    src = [(0, a), (10 * MS, a), (20 * MS, b), (30 * MS, a)]  # a repeats with the same data
    wire = [(1 * MS, a), (11 * MS, a), (21 * MS, b)]  # the last a never left the gateway
    dst = [(3 * MS, a), (13 * MS, a), (23 * MS, b), (24 * MS, b)]  # b arrives twice
    p = inspect.pair({"s": src, "d": dst}, wire, "s", "d", "w", 2.0)
    assert (p.sent, p.delivered, p.lost, p.duplicates, p.on_wire) == (4, 3, 1, 1, 3)
    assert [lat for _, lat in p.latencies["bus_to_bus"]] == [3 * MS, 3 * MS, 3 * MS]
    assert [lat for _, lat in p.latencies["bus_to_wire"]] == [MS, MS, MS]
    assert [lat for _, lat in p.latencies["wire_to_bus"]] == [2 * MS, 2 * MS, 2 * MS]
    rep = inspect.report_dict(p)
    assert rep["per_id"]["101"]["lost"] == 1 and rep["per_id"]["102"]["duplicates"] == 1


def test_a_lost_frame_does_not_shift_the_pairing_of_later_ones():
    a = _frame(1)
    src = [(0, a), (3000 * MS, a)]  # the first is lost; the second arrives 1 ms later
    dst = [(3001 * MS, a)]
    p = inspect.pair({"s": src, "d": dst}, [], "s", "d", None, 2.0)
    assert p.lost == 1 and [lat for _, lat in p.latencies["bus_to_bus"]] == [MS]


def test_direction_is_guessed_from_first_appearance():
    a, b = _frame(1), _frame(2)
    bus = {"x": [(5, a), (15, b)], "y": [(1, a), (11, b)]}
    assert inspect.guess_direction(bus) == ("y", "x")


def test_padding_and_len8_dlc_do_not_change_the_key():
    assert inspect.frame_key(sc.pack_can(0x1, b"\x01\x02", 0)) == inspect.frame_key(
        sc.pack_can(0x1, b"\x01\x02") [:10] + b"\xff" * 6)


frames = st.one_of(
    st.builds(lambda i, d: sc.pack_can(i, d), st.integers(0, 0x7FF), st.binary(max_size=8)),
    st.builds(lambda i, d: sc.pack_can(sc.CAN_EFF_FLAG | i, d), st.integers(0, sc.CAN_EFF_MASK), st.binary(max_size=8)),
    st.builds(lambda i, n: sc.pack_can(sc.CAN_RTR_FLAG | i, b"", length=n), st.integers(0, 0x7FF), st.integers(0, 8)),
    st.builds(lambda i, l8: sc.pack_can(i, bytes(8), len8_dlc=l8), st.integers(0, 0x7FF), st.integers(9, 15)),
    st.builds(lambda i, n, f: sc.pack_canfd(i, bytes(range(n)), f), st.integers(0, 0x7FF),
              st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64]), st.integers(0, 3)),
)


@given(frames)
def test_can_record_round_trip(raw):
    back = pcapng.decode_can_record(pcapng.can_record(raw))
    if len(raw) == sc.CANFD_MTU:  # FDF is always set on FD frames read back
        assert back == raw[:5] + bytes([raw[5] | 0x04]) + raw[6:]
    else:
        assert back == raw
