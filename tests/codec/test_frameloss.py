"""Tests of bridge.codec.frameloss.FrameLossTracker: baseline, loss per TX_COUNT, latest figure after
reordering, sessions, and a hypothesis model check driven by a real DatagramEncoder; and of DeliveryTracker
(the sender's count of frames that died with a restarted receiver, from its RX_COUNT)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bridge.codec import native
from bridge.codec import socketcan as sc
from bridge.codec.frameloss import DeliveryTracker, FrameLossTracker, PublishedFrames


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
            if k == join:
                assert t.accounted is None  # no RX_COUNT before the baseline
            t.observe(session, 0, events[0].frames_sent)
            assert t.accounted == enc.frames  # what its RX_COUNT reports: every frame received or counted lost

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


def test_accounted_is_in_the_senders_numbering():
    t = FrameLossTracker()
    t.observe(1, 4)  # frames before the baseline: received, but the numbering is unknown
    assert t.accounted is None
    t.observe(1, 0, 100)  # sender had sent 100: 96 before we listened
    assert t.accounted == 100
    t.observe(1, 3)
    t.observe(1, 0, 110)  # 7 lost
    assert (t.lost, t.accounted) == (7, 110)
    t.observe(1, 2)
    assert t.accounted == 112
    t.observe(2, 5)  # the sender restarted: no numbering for the new session yet
    assert t.accounted is None


def rx(session, n):
    return native.RxCount(session, n)


def test_delivery_same_instance_down_up_discards():
    """A black hole: the receiver (session 50) was alive all along and counts the frames itself."""
    d = DeliveryTracker()
    d.ack(7, rx(7, 40), 50)
    d.ack(7, rx(9, 1000), 50)  # for another sender session: ignored
    d.down(100)
    assert d.held == 60
    assert d.up(50) == 0 and d.counted == 0 and d.held is None
    assert d.close() == 0 and d.counted == 0


def test_delivery_new_instance_counts_held_figure():
    d = DeliveryTracker()
    d.ack(7, rx(7, 40), 50)
    d.ack(7, rx(7, 45), 50)  # the latest figure counts
    d.down(100)
    assert d.up(51) == 55 and d.counted == 55  # it restarted: 55 frames died with session 50
    assert d.acked is None  # the new instance confirmed nothing yet: a second down holds nothing
    d.down(130)
    assert d.held is None and d.up(52) == 0 and d.counted == 55
    d.ack(7, rx(7, 125), 52)  # its first RX_COUNT (in the datagram that made it up) counts
    d.down(140)
    assert d.up(53) == 15 and d.counted == 70


def test_delivery_ack_in_the_datagram_that_brings_the_new_instance_up():
    d = DeliveryTracker()
    d.ack(7, rx(7, 10), 50)
    d.down(30)
    d.ack(7, rx(7, 28), 51)  # decoded before the up transition
    assert d.up(51) == 20 and d.acked == 28


def test_delivery_close_while_down_counts_and_nothing_without_acks():
    d = DeliveryTracker()
    d.down(100)  # the peer never sent an RX_COUNT (old version): nothing to say
    assert d.held is None and d.up(50) == 0 and d.close() == 0
    d.ack(7, rx(7, 90), 50)
    d.down(100)
    assert d.close() == 10 and d.counted == 10
    assert d.close() == 0  # counted once
    e = DeliveryTracker()
    e.ack(7, rx(7, 90), 50)
    assert e.close() == 0  # up at close: it counts its own loss
    e.ack(7, rx(7, 120), 50)
    e.down(100)  # acknowledged more than we know we sent (a confused peer): never negative
    assert e.held == 0


def test_delivery_restart_within_the_timeout_counts_at_the_new_session():
    """The peer restarted before we noticed any silence: no down/up, but its new session tells."""
    d = DeliveryTracker()
    d.ack(7, rx(7, 40), 50)
    d.new_peer(50, 60)  # the same instance resyncing its sequence: nothing
    assert d.counted == 0
    d.new_peer(51, 100)  # a new instance: 60 frames were never confirmed by session 50
    assert d.counted == 60 and d.acked is None
    d.new_peer(52, 130)  # nothing confirmed by 51: nothing to say
    assert d.counted == 60
    d.ack(7, rx(7, 120), 52)
    d.down(140)
    d.new_peer(53, 140)  # held at a down: the up transition decides, once
    assert d.counted == 60 and d.up(53) == 20 and d.counted == 80


def test_published_frames_baseline_gap_redelivery_and_restart():
    t = PublishedFrames()
    assert t.observe("fleet/gw1/can0/rx", 1, 500, 10) == (0, 0)  # baseline: earlier frames are not ours
    assert t.observe("fleet/gw1/can0/rx", 1, 510, 10) == (0, 0)
    assert t.observe("fleet/gw1/can0/rx", 1, 540, 5) == (0, 20)  # two messages lost on the way
    assert t.observe("fleet/gw1/can0/rx", 1, 530, 10) == (10, 0)  # late or redelivered: skipped
    assert t.observe("fleet/gw1/can0/rx", 1, 540, 10) == (5, 0)  # overlaps what was seen: the rest is new
    assert t.observe("fleet/gw2/can0/rx", 9, 0, 3) == (0, 0)  # another topic, its own numbering
    assert t.observe("fleet/gw1/can0/rx", 2, 4, 6) == (0, 4)  # restarted: its first 4 frames are lost
    assert (t.lost, t.duplicates) == (24, 15)


def test_published_frames_is_bounded():
    t = PublishedFrames(max_keys=2)
    for key in ("a", "b", "c"):
        t.observe(key, 1, 0, 1)
    assert t.forgotten == 1
    assert t.observe("a", 1, 50, 1) == (0, 0)  # forgotten: a new baseline, no false loss
    assert t.observe("c", 1, 1, 1) == (0, 0)  # still tracked


def test_published_frames_gaps_the_publisher_dropped_itself_are_not_lost():
    """PUB_DROPPED (docs/protocol.md 10): frames the publisher numbered and dropped itself (counted at the
    gateway) are no loss in transit, whether the figure comes with the gap or after it (a refusal the
    publisher learned of after sending later messages: the gap is taken back)."""
    t = PublishedFrames()
    key = "fleet/gw1/can0/rx"
    assert t.observe(key, 1, 0, 10, dropped=4) == (0, 0)  # baseline: drops before it are not ours
    assert t.observe(key, 1, 30, 10, dropped=14) == (0, 10)  # gap 20, 10 of them dropped by the publisher
    assert t.observe(key, 1, 50, 10, dropped=14) == (0, 10)  # another gap of 10, unexplained (yet)
    assert t.observe(key, 1, 60, 10, dropped=24) == (0, -10)  # the publisher tells: it dropped them
    assert t.lost == 10
    assert t.observe(key, 2, 30, 5, dropped=30) == (0, 0)  # a restart: its first 30 frames all dropped there
    assert t.lost == 10
