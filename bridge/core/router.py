"""Router: moves batches between bus endpoints and peer endpoints.

Default topology (what users of cannelloni/socketcand expect): every bus goes to every peer, and
frames from a peer go to the bus with the same channel index. Peers are never routed to each
other, and a frame never goes back to the endpoint it came from: that, plus CAN_RAW not reading
back our own writes, is the echo suppression. Each route may carry a candump-style FilterSet.

Sinks are flushed once per loop pass (end-of-pass hook), so a burst read from a bus leaves as
few TCP writes / UDP datagrams as possible; a lone frame with nothing queued before it is written
by the peer at once (send_frames), which saves a quiet bus the queue-and-flush steps.
"""

from __future__ import annotations

import time

from bridge.core.reactor import Reactor


class Router:
    def __init__(self, reactor: Reactor) -> None:
        self.buses: dict[int, object] = {}  # channel -> SocketCanEndpoint
        self.peers: list[object] = []
        self._out_filters: dict[int, object] = {}  # id(peer) -> FilterSet for bus -> peer
        self._in_filters: dict[int, object] = {}  # id(peer) -> FilterSet for peer -> bus
        self._gates: dict[int, object] = {}  # id(peer) -> bridge.security.access.WriteGate (access control)
        self._dirty: dict[int, object] = {}
        self._oldest: dict[int, int] = {}  # id(peer) -> kernel RX ts_ns of its first frame this pass (latency)
        self._now = reactor.time
        reactor.add_end_of_pass(self.flush)

    def add_bus(self, bus) -> None:
        self.buses[bus.channel] = bus

    def add_peer(self, peer, out_filter=None, in_filter=None, gate=None) -> None:
        """out_filter: frames bus -> this peer; in_filter: frames this peer -> bus; gate: a
        bridge.security.access.WriteGate (read_only, write_allow, rate), possibly shared by several peers."""
        self.peers = [*self.peers, peer]  # a new list: see remove_peer
        if gate is not None:
            self._gates[id(peer)] = gate
        if out_filter is not None and not out_filter.matches_all:
            self._out_filters[id(peer)] = out_filter
        if in_filter is not None and not in_filter.matches_all:
            self._in_filters[id(peer)] = in_filter

    def remove_peer(self, peer) -> None:
        # a new list, not remove(): a peer can close while from_bus iterates the list (a failed
        # write-through of a lone frame), and that loop must go on over the list it started with
        self.peers = [p for p in self.peers if p is not peer]
        self._out_filters.pop(id(peer), None)
        self._in_filters.pop(id(peer), None)
        self._gates.pop(id(peer), None)
        self._dirty.pop(id(peer), None)
        self._oldest.pop(id(peer), None)

    def from_bus(self, bus, channel: int, batch: list) -> None:
        """A batch of (raw, ts_ns) read from `bus` goes to every peer (through its filter); with no
        peer at all (a server with no client connected) the batch is counted as dropped "no_peer"."""
        if not self.peers:
            bus.counters.drop("no_peer", len(batch))
            return
        for peer in self.peers:
            filt = self._out_filters.get(id(peer))
            frames = filt.filter_batch(batch) if filt is not None else batch
            if frames and peer.send_frames(channel, frames):
                self._dirty[id(peer)] = peer
                self._oldest.setdefault(id(peer), frames[0][1])

    def from_peer(self, peer, channel: int, batch: list) -> None:
        """A batch from a peer goes to the bus with the same channel index."""
        bus = self.buses.get(channel)
        if bus is None:
            peer.counters.drop("no_such_channel", len(batch))
            return
        filt = self._in_filters.get(id(peer))
        frames = filt.filter_batch(batch) if filt is not None else batch
        peer.counters.drop("filtered_in", len(batch) - len(frames))
        gate = self._gates.get(id(peer))
        if gate is not None and frames:
            frames = gate.admit(frames, self._now(), peer.counters)
        if frames:
            bus.send_frames(channel, frames)

    def flush(self) -> None:
        if self._dirty:
            dirty, self._dirty = self._dirty, {}
            for peer in dirty.values():
                peer.flush()
            self._observe_latency(dirty)

    def _observe_latency(self, flushed: dict) -> None:
        """Bus-to-peer residence time, one sample per peer and pass: kernel RX timestamp (SO_TIMESTAMPNS,
        CLOCK_REALTIME) of the pass's first frame for that peer -> now, after its flush handed the batch to
        the socket (or queued it, when the peer is slow). Same clock both ends, so always meaningful."""
        oldest, self._oldest = self._oldest, {}
        now = time.time_ns()
        for key, ts_ns in oldest.items():
            peer = flushed.get(key)
            if peer is not None:
                peer.counters.latency.observe(now - ts_ns)
