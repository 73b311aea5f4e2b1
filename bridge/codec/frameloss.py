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
"""

from __future__ import annotations


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
