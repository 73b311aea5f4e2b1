"""Router: moves batches between bus endpoints and peer endpoints.

Default topology (what users of cannelloni/socketcand expect): every bus goes to every peer, and
frames from a peer go to the bus with the same channel index. Peers are never routed to each
other, and a frame never goes back to the endpoint it came from: that, plus CAN_RAW not reading
back our own writes, is the echo suppression. Each route may carry a candump-style FilterSet.

Sinks are flushed once per loop pass (end-of-pass hook), so a burst read from a bus leaves as
few TCP writes / UDP datagrams as possible while a lone frame leaves in the same pass.
"""

from __future__ import annotations

from bridge.reactor import Reactor


class Router:
    def __init__(self, reactor: Reactor) -> None:
        self.buses: dict[int, object] = {}  # channel -> SocketCanEndpoint
        self.peers: list[object] = []
        self._out_filters: dict[int, object] = {}  # id(peer) -> FilterSet for bus -> peer
        self._in_filters: dict[int, object] = {}  # id(peer) -> FilterSet for peer -> bus
        self._dirty: dict[int, object] = {}
        reactor.add_end_of_pass(self.flush)

    def add_bus(self, bus) -> None:
        self.buses[bus.channel] = bus

    def add_peer(self, peer, out_filter=None, in_filter=None) -> None:
        """out_filter: frames bus -> this peer; in_filter: frames this peer -> bus."""
        self.peers.append(peer)
        if out_filter is not None and not out_filter.matches_all:
            self._out_filters[id(peer)] = out_filter
        if in_filter is not None and not in_filter.matches_all:
            self._in_filters[id(peer)] = in_filter

    def remove_peer(self, peer) -> None:
        if peer in self.peers:
            self.peers.remove(peer)
        self._out_filters.pop(id(peer), None)
        self._in_filters.pop(id(peer), None)
        self._dirty.pop(id(peer), None)

    def from_bus(self, bus, channel: int, batch: list) -> None:
        """A batch of (raw, ts_ns) read from `bus` goes to every peer (through its filter)."""
        for peer in self.peers:
            filt = self._out_filters.get(id(peer))
            frames = filt.filter_batch(batch) if filt is not None else batch
            if frames and peer.send_frames(channel, frames):
                self._dirty[id(peer)] = peer

    def from_peer(self, peer, channel: int, batch: list) -> None:
        """A batch from a peer goes to the bus with the same channel index."""
        bus = self.buses.get(channel)
        if bus is None:
            peer.counters.drop("no_such_channel", len(batch))
            return
        filt = self._in_filters.get(id(peer))
        frames = filt.filter_batch(batch) if filt is not None else batch
        peer.counters.drop("filtered_in", len(batch) - len(frames))
        if frames:
            bus.send_frames(channel, frames)

    def flush(self) -> None:
        if self._dirty:
            dirty, self._dirty = self._dirty, {}
            for peer in dirty.values():
                peer.flush()
