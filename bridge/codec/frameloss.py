"""Receiver-side count of CAN frames lost in transit on native UDP, sans-IO (no sockets, no clocks).

Sequence numbers (bridge.codec.native.SequenceTracker) count lost *datagrams*; a datagram holds 1..N
frames, so they cannot say how many frames were lost. The sender's control datagrams carry a TX_COUNT
record (docs/protocol.md 4.5): `frames_sent`, the FRAME records it put in its datagrams before that
one. The receiver counts the frames of the datagrams it accepted in the same session, and the
difference is the frames lost on the way (the network, a full socket buffer, a malformed or stale
datagram: whatever was sent and not delivered).

Rules (docs/protocol.md 3.3):
- Baseline: the first TX_COUNT of a session only sets the baseline (lost = 0 then). Frames sent before
  it - before the receiver listened, or before it (re)started - are not the receiver's to count; loss
  before the first TX_COUNT seen is not counted either (one heartbeat interval at a session's start,
  and only if its first control datagram is lost). Using differences only also makes the absolute
  value of frames_sent irrelevant (a sealed sender's session change on seq wrap keeps counting).
- Latest figure, not max-so-far: each TX_COUNT recomputes the session's loss, so a datagram that was
  reordered behind a TX_COUNT (counted lost for a moment) is taken back at the next TX_COUNT once it
  has arrived; a frame does not stay both delivered and counted lost. Datagrams of a higher seq that
  arrive before a TX_COUNT make the figure low for one interval (clamped at 0), never negative.
- A new session (the sender restarted): the old session's last figure is kept, the new one starts
  at 0 with a new baseline. `lost` is the total over sessions.

The other direction (DeliveryTracker, docs/protocol.md 3.4): the receiver reports in its control
datagrams an RX_COUNT, FrameLossTracker.accounted, and the sender counts the frames a receiver that was
killed never accounted for.
"""

from __future__ import annotations

_U64 = (1 << 64) - 1


class FrameLossTracker:
    """Frame loss of one sender (one UDP peer), from the datagrams the SequenceTracker accepted.

    observe(session, frames, frames_sent): session u32 of the datagram; frames: number of FRAME
    records it delivered; frames_sent: its TX_COUNT value, or None if it has none. Attributes:
    lost (frames, total over sessions), received (frames in the current session), baselines (TX_COUNTs
    that set a baseline: sessions whose loss counting started), unaccounted (frames the first TX_COUNT
    of a session reported beyond those received: sent before counting began, not counted as lost).
    """

    def __init__(self) -> None:
        self.session: int | None = None
        self.received = 0
        self._offset: int | None = None  # frames_sent - received at the baseline; None before it
        self._current = 0  # loss of the current session (latest figure)
        self._previous = 0  # sum of the last figures of earlier sessions
        self.baselines = 0
        self.unaccounted = 0

    @property
    def lost(self) -> int:
        return self._previous + self._current

    @property
    def accounted(self) -> int | None:
        """What an RX_COUNT reports for the current session: the position in the sender's TX_COUNT
        numbering up to which every frame was received or counted lost (offset + received + loss), or
        None before the session's baseline (the numbering is not known yet). Clamped to 0..2**64-1."""
        if self._offset is None:
            return None
        return min(max(0, self._offset + self.received + self._current), _U64)

    def observe(self, session: int, frames: int, frames_sent: int | None = None) -> None:
        if session != self.session:
            self._previous += self._current
            self.session, self.received, self._offset, self._current = session, 0, None, 0
        if frames_sent is not None:
            # frames_sent covers the datagrams before this one: compare before adding its frames
            if self._offset is None:
                self._offset = frames_sent - self.received
                self.unaccounted += max(0, self._offset)
                self.baselines += 1
            self._current = max(0, frames_sent - self._offset - self.received)
        self.received += frames


class DeliveryTracker:
    """Sender-side count of frames that died with a receiver process (killed, crashed), sans-IO.

    The receiver's control datagrams carry RX_COUNT (docs/protocol.md 3.4, 4.6): `frames_accounted`, the
    position in our TX_COUNT numbering up to which it received every frame or counted it lost in transit.
    If the receiver process dies, the frames after that position (those we sent until we noticed the
    silence) are counted by nobody: the restarted receiver is a new session and baselines (above).

    ack(own, rx, peer): an RxCount `rx` arrived in a datagram of the peer session `peer`; `own` is our
    current sending session (acks of another session are ignored). down(frames_sent): the peer went
    down; `frames_sent - acked` is held, not counted. up(peer) -> frames made final: the peer is heard
    again from session `peer`; the same instance (a downed link or black hole: it was alive and counts
    the frames itself as lost_in_transit from our TX_COUNT) discards the held figure, a new session (it
    restarted) counts it. close() -> frames made final: we stop while the peer is down, so count it.
    new_peer(peer, frames_sent): a new peer session started while nothing is held (it restarted within
    our timeout, so it never went down): `frames_sent - acked` is counted at once. `counted`: total made
    final.

    Bound: an upper bound of what died with the peer. It over-counts by the frames the dead instance
    received after its last RX_COUNT (at most one heartbeat interval, HEARTBEAT_S, of traffic; with a
    fast restart also the few the new instance received before its first datagram). Nothing is counted
    for a peer that never sent an RX_COUNT for our session (an old version, or it died before its first
    one). A sealed peer's move to session + 1 (every 2**32 datagrams) looks like a restart.
    """

    def __init__(self) -> None:
        self.acked: int | None = None  # frames_accounted of the last RX_COUNT for our session
        self.peer: int | None = None  # session of the peer instance that sent it
        self.held: int | None = None  # unconfirmed frames snapshotted at the last down
        self._held_peer: int | None = None
        self.counted = 0

    def ack(self, own: int, rx, peer: int) -> None:
        if rx.session == own:
            self.acked, self.peer = rx.frames_accounted, peer

    def new_peer(self, peer: int, frames_sent: int) -> None:
        """A datagram of peer session `peer` started a sequence (SequenceTracker "reset"). If it is not
        the instance that last acknowledged us and nothing is held (the peer restarted faster than our
        timeout, so it never went down), the old instance is gone: what it did not confirm is final."""
        if self.held is None and self.acked is not None and peer != self.peer:
            self.counted += max(0, frames_sent - self.acked)
            self.acked = self.peer = None

    def down(self, frames_sent: int) -> None:
        if self.acked is not None:
            self.held, self._held_peer = max(0, frames_sent - self.acked), self.peer

    def up(self, peer: int | None) -> int:
        held, self.held = self.held, None
        if peer != self.peer:  # a new instance has not confirmed anything yet
            self.acked = self.peer = None
        if held is None or peer == self._held_peer:
            return 0
        self.counted += held
        return held

    def close(self) -> int:
        held, self.held = self.held or 0, None
        self.counted += held
        return held


MAX_PUBLISHERS = 65_536  # (topic) keys a consumer tracks: a fleet of 16k gateways with 4 buses each;
#                          beyond, the least recently heard is forgotten (counted: forgotten) and baselines again


class PublishedFrames:
    """Consumer-side count of frames lost between an MQTT publisher and us, and of redelivered ones, sans-IO.

    A canbridge publisher puts a PUB_COUNT record in each native message (docs/protocol.md 10): its session
    (u32, random per process start) and `frames_before`, the frames it numbered on the same topic in that
    session before this message; and, once it has dropped numbered frames itself (stale, queue_full, a
    broker's refusal: counted at the gateway), a PUB_DROPPED record with their total in the session.

    observe(key, session, first, n, dropped=0) for a message of n frames -> (skip, lost): deliver
    frames[skip:]; `lost` is the change of this publisher's lost figure (negative when a PUB_DROPPED
    explains a gap counted earlier). Rules:
    - the first message of a key (or of a key forgotten at MAX_PUBLISHERS) sets the baseline: frames sent
      before we listened are not ours to count, nor frames dropped before it;
    - a new session of a known key (the publisher restarted): the `first` frames of the new session
      before this message are lost (we were subscribed), less those it says it dropped; what the old
      session sent after its last message we saw cannot be known;
    - same session: a gap (first > expected) is lost; frames at or below the expected position are
      redelivered (a qos 1 resend after a reconnect) and skipped. A message reordered behind a later one
      (MQTT keeps the order of one publisher's topic, so only across a broker failure) is counted lost
      when the gap is seen and skipped when it comes: delivered + lost stays the frames sent.
    - lost per key and session = gaps - (the latest PUB_DROPPED - the one at its baseline), at least 0:
      a latest figure, as FrameLossTracker's (a refusal the publisher learns after sending later messages
      shows as a gap first and is taken back when a message tells it).
    Attributes: lost (total, a latest figure), duplicates (frames skipped), forgotten (keys dropped at the
    bound)."""

    def __init__(self, max_keys: int = MAX_PUBLISHERS) -> None:
        # key -> [session, frames_before of the next message, gaps, dropped at baseline, latest dropped, net],
        # least recently heard first
        self._next: dict = {}
        self.max_keys = max_keys
        self.lost = 0
        self.duplicates = 0
        self.forgotten = 0

    def observe(self, key, session: int, first: int, n: int, dropped: int = 0) -> tuple[int, int]:
        state = self._next.pop(key, None)
        skip = 0
        if state is None:
            if len(self._next) >= self.max_keys:
                del self._next[next(iter(self._next))]
                self.forgotten += 1
            state = [session, first + n, 0, dropped, dropped, 0]
        elif state[0] != session:
            state = [session, first + n, first, 0, dropped, 0]
        else:
            expected = state[1]
            state[2] += max(0, first - expected)
            skip = min(n, max(0, expected - first))
            state[1] = max(expected, first + n)
            state[4] = max(state[4], dropped)
        net = max(0, state[2] - (state[4] - state[3]))
        lost, state[5] = net - state[5], net
        self._next[key] = state  # re-inserted: most recently heard last
        self.lost += lost
        self.duplicates += skip
        return skip, lost
