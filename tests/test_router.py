"""Router: bus -> peers with per-route filters, peer -> bus by channel, echo suppression."""

from bridge.codec import socketcan as sc
from bridge.codec.filters import parse_filters
from bridge.core.reactor import Reactor
from bridge.core.router import Router
from bridge.core.stats import Counters


class Sink:
    def __init__(self, name, channel=0):
        self.name, self.channel, self.counters = name, channel, Counters()
        self.got, self.flushes = [], 0

    def send_frames(self, channel, frames):
        self.got.append((channel, [sc.can_id_of(raw) for raw, _ in frames]))
        return len(frames)

    def flush(self):
        self.flushes += 1


def batch(*ids):
    return [(sc.pack_can(i, b"\x01"), 0) for i in ids]


def test_bus_to_every_peer_through_its_filter_and_one_flush_per_pass():
    r = Reactor()
    router = Router(r)
    bus = Sink("vcan0")
    router.add_bus(bus)
    a, b = Sink("a"), Sink("b")
    router.add_peer(a)
    router.add_peer(b, out_filter=parse_filters("123:7FF"))
    router.from_bus(bus, 0, batch(0x123, 0x124))
    router.from_bus(bus, 0, batch(0x125))
    assert a.got == [(0, [0x123, 0x124]), (0, [0x125])]
    assert b.got == [(0, [0x123])]  # 0x125 batch filtered to nothing: not even called
    r.run_once(timeout=0)
    assert (a.flushes, b.flushes) == (1, 1)
    r.run_once(timeout=0)
    assert (a.flushes, b.flushes) == (1, 1)  # nothing new, no flush
    r.close()


def test_peer_to_bus_by_channel_never_to_peers():
    r = Reactor()
    router = Router(r)
    bus0, bus1 = Sink("vcan0", 0), Sink("vcan1", 1)
    router.add_bus(bus0)
    router.add_bus(bus1)
    a, b = Sink("a"), Sink("b")
    router.add_peer(a, in_filter=parse_filters("100:700"))
    router.add_peer(b)
    router.from_peer(a, 1, batch(0x101, 0x201))
    assert bus1.got == [(1, [0x101])] and bus0.got == []
    assert a.counters.dropped["filtered_in"] == 1
    assert a.got == [] and b.got == []  # a peer's frames never go to peers (itself included)
    router.from_peer(b, 7, batch(0x1))
    assert b.counters.dropped["no_such_channel"] == 1
    r.close()


def test_removed_peer_gets_nothing():
    r = Reactor()
    router = Router(r)
    bus = Sink("vcan0")
    router.add_bus(bus)
    a = Sink("a")
    router.add_peer(a)
    router.remove_peer(a)
    router.from_bus(bus, 0, batch(0x1))
    assert a.got == []
    r.close()


def test_peer_closing_during_from_bus_does_not_skip_the_next_peer():
    """A lone frame is written through at once (StreamPeer.send_frames); a write that fails closes
    that peer, which removes itself from the router while from_bus is iterating the peers."""
    r = Reactor()
    router = Router(r)
    bus = Sink("vcan0")
    router.add_bus(bus)
    b = Sink("b")

    class Closing(Sink):
        def send_frames(self, channel, frames):
            router.remove_peer(self)
            return 0

    a = Closing("a")
    router.add_peer(a)
    router.add_peer(b)
    router.from_bus(bus, 0, batch(0x1))
    assert b.got == [(0, [0x1])] and router.peers == [b]
    r.close()
