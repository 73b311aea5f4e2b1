"""PendingFrames: bounded, drop-oldest, every drop counted."""

from bridge.endpoints.pending import PendingFrames
from bridge.stats import Counters


def test_bound_drops_oldest_batches_and_counts_them():
    c = Counters()
    q = PendingFrames(c, limit=5)
    q.append(0, [1, 2])
    q.append(1, [3, 4])
    q.append(0, [5, 6])  # 6 > 5: the oldest batch goes
    assert q.frames == 4 and c.dropped["peer_slow"] == 2
    assert q.take() == [(1, [3, 4]), (0, [5, 6])]
    assert not q and q.frames == 0


def test_discard_counts_under_its_reason():
    c = Counters()
    q = PendingFrames(c)
    q.append(0, [1, 2, 3])
    q.discard("connection_closed")
    assert c.dropped == {"connection_closed": 3} and not q
