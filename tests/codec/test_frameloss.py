"""Tests of bridge.codec.frameloss.FrameLossTracker: baseline, loss per TX_COUNT, latest figure after
reordering, sessions, and a hypothesis model check driven by a real DatagramEncoder."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bridge.codec import native
from bridge.codec import socketcan as sc
from bridge.codec.frameloss import FrameLossTracker


def test_first_tx_count_is_the_baseline():
    t = FrameLossTracker()
    t.observe(1, 0, 500)  # joined mid-session: 500 frames sent before we listened
    assert (t.lost, t.baselines, t.unaccounted) == (0, 1, 500)
    t.observe(1, 10)
    t.observe(1, 0, 530)  # 30 sent since, 10 received
    assert t.lost == 20


def test_frames_before_the_first_tx_count_are_received_not_lost():
    t = FrameLossTracker()
    t.observe(1, 4)  # data first (seq 0), then the control datagram
    t.observe(1, 0, 4)
    assert (t.lost, t.unaccounted) == (0, 0)
    t.observe(1, 3, 9)  # a datagram with frames and a TX_COUNT: 5 of the 9 before it never came
    assert t.lost == 5 and t.received == 7


def test_latest_figure_takes_back_a_late_datagram():
    t = FrameLossTracker()
    t.observe(1, 0, 0)
    t.observe(1, 2)  # seq 1; seq 2 (3 frames) is late
    t.observe(1, 0, 5)  # seq 3: 5 sent before it, 2 received
    assert t.lost == 3
    t.observe(1, 3)  # seq 2 arrives after all
    t.observe(1, 0, 5)
    assert t.lost == 0  # delivered, so no longer counted lost


def test_early_datagram_never_makes_loss_negative():
    t = FrameLossTracker()
    t.observe(1, 0, 0)  # seq 0 control
    t.observe(1, 6)  # seq 1
    t.observe(1, 4)  # seq 3 overtakes seq 2
    t.observe(1, 0, 6)  # seq 2 control: 10 received, only 6 were before it
    assert t.lost == 0
    t.observe(1, 0, 10)  # seq 4
    assert t.lost == 0


def test_new_session_keeps_old_loss():
    t = FrameLossTracker()
    t.observe(1, 0, 0)
    t.observe(1, 0, 8)
    assert t.lost == 8
    t.observe(2, 0, 0)  # sender restarted
    t.observe(2, 1)
    t.observe(2, 0, 4)
    assert t.lost == 8 + 3 and t.session == 2 and t.received == 1


batches_st = st.lists(st.tuples(st.integers(1, 60), st.booleans()), max_size=40)  # (frames, delivered)


@given(batches=batches_st, join=st.integers(0, 5))
def test_model_with_real_encoder(batches, join):
    """A sender (mtu 98: one frame per datagram) sends a control datagram first, as UdpPeer does, then
    batches with a control datagram after each. The receiver listens from control `join` on and then gets
    every control datagram and the data datagrams marked delivered. Lost == frames of the undelivered
    datagrams it should have got."""
    enc = native.DatagramEncoder(7, mtu=98)
    frame = (sc.pack_can(0x1, b"\x01"), 0)
    t = FrameLossTracker()

    def control(k: int) -> None:
        session, _, events = native.decode_datagram(enc.encode_control(native.encode_tx_count(enc.frames)))
        if k >= join:
            t.observe(session, 0, events[0].frames_sent)

    control(0)
    expect = 0
    for i, (n, delivered) in enumerate(batches):
        for d in enc.encode(0, [frame] * n):
            if i >= join and delivered:
                session, _, events = native.decode_datagram(d)
                t.observe(session, sum(len(e.frames) for e in events))
        if i >= join and not delivered:
            expect += n
        control(i + 1)
    assert t.lost == expect
    joined = join <= len(batches)  # it heard control `join`
    assert (t.baselines, t.unaccounted) == (int(joined), sum(n for n, _ in batches[:join]) if joined else 0)
