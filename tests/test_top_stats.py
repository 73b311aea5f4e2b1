"""bridge.tools.live.top.TopStats: per-ID count, rate, period, jitter and changed bytes (pure, no I/O)."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from bridge.codec import socketcan as sc
from bridge.tools.live.top import PERIOD_SAMPLES, TopStats, render

MS = 1_000_000
T0 = 1_700_000_000 * 1_000_000_000


def cc(can_id, data=b""):
    return sc.pack_can(can_id, data)


def test_count_period_jitter_and_order():
    st = TopStats(window_s=1.0)
    for i in range(11):  # 0x100 every 10 ms, 0x0FF every 20 +- 5 ms
        st.add("vcan0", cc(0x100, bytes([i])), T0 + i * 10 * MS)
    for t in (0, 15, 40, 55, 80):
        st.add("vcan0", cc(0x0FF), T0 + t * MS)
    st.add("vcan0", cc(0x123 | sc.CAN_EFF_FLAG, b"\x01"), T0)
    st.add("vcan1", cc(0x001), T0)
    rows = st.rows(T0 + 100 * MS)
    assert [(iface, s.can_id) for iface, s, _ in rows] == [
        ("vcan0", 0x0FF), ("vcan0", 0x100), ("vcan0", 0x123 | sc.CAN_EFF_FLAG), ("vcan1", 0x001)]
    s100 = st.ids[("vcan0", 0x100)]
    assert s100.count == 11 and s100.period_ms == pytest.approx(10.0) and s100.jitter_ms == pytest.approx(0.0)
    s0ff = st.ids[("vcan0", 0x0FF)]
    assert s0ff.period_ms == pytest.approx(20.0) and s0ff.jitter_ms == pytest.approx(5.0)
    assert st.ids[("vcan0", 0x123 | sc.CAN_EFF_FLAG)].period_ms is None
    assert st.frames == 18


def test_rate_over_sliding_window():
    st = TopStats(window_s=1.0)
    for i in range(200):  # 100 Hz for 2 s
        st.add("can0", cc(0x10), T0 + i * 10 * MS)
    key = ("can0", 0x10)
    assert st.rows(T0 + 1995 * MS)[0][2] == pytest.approx(100.0)  # frames 1000..1990 ms
    young = TopStats(window_s=2.0)  # an ID younger than the window: rate over its lifetime
    for i in range(50):
        young.add("can0", cc(0x10), T0 + i * 10 * MS)
    assert young.rows(T0 + 500 * MS)[0][2] == pytest.approx(100.0)
    assert st.rows(T0 + 10_000 * MS)[0][2] == 0.0  # silent for longer than the window
    assert st.ids[key].count == 200


def test_changed_bytes_and_flags():
    st = TopStats()
    st.add("vcan0", cc(0x200, b"\x01\x02\x03"), T0)
    s = st.ids[("vcan0", 0x200)]
    assert s.changed == frozenset()  # nothing to compare with on the first frame
    st.add("vcan0", cc(0x200, b"\x01\x09\x03\x04"), T0 + MS)
    assert s.changed == {1, 3} and s.data == b"\x01\x09\x03\x04" and s.length == 4
    st.add("vcan0", cc(0x200 | sc.CAN_RTR_FLAG), T0 + 2 * MS)  # a request shares the row
    assert s.count == 3 and s.flags == ("RTR",)
    st.add("vcan0", sc.pack_canfd(0x300, bytes(12), sc.CANFD_BRS | sc.CANFD_ESI), T0)
    assert st.ids[("vcan0", 0x300)].flags == ("FD", "BRS", "ESI")


def test_interval_history_is_bounded():
    st = TopStats()
    for i in range(PERIOD_SAMPLES * 3):
        st.add("vcan0", cc(0x1), T0 + i * MS)
    assert len(st.ids[("vcan0", 0x1)].intervals) == PERIOD_SAMPLES


def test_bad_window():
    with pytest.raises(ValueError):
        TopStats(window_s=0)


def test_render_highlights_changed_bytes():
    st = TopStats()
    st.add("vcan0", cc(0x7FF, b"\xaa\xbb"), T0)
    st.add("vcan0", cc(0x7FF, b"\xaa\xcc"), T0 + 10 * MS)
    st.add("vcan0", cc(0x1ABCDEF0 | sc.CAN_EFF_FLAG, b"\x01"), T0)
    buf = io.StringIO()
    Console(file=buf, width=120, force_terminal=True, color_system="standard").print(render(st, T0 + 20 * MS))
    text = buf.getvalue()
    assert "7FF" in text and "1ABCDEF0" in text and "10.00" in text
    assert "\x1b[1;7mCC\x1b[0m" in text and "\x1b[1;7mAA" not in text  # only the changed byte, bold reverse
