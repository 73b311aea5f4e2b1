"""Openers shared by the protocols that run over the bridge's TCP and UDP endpoints: a protocol gives
its wire (bridge.protocols.base.StreamWire / DatagramWire), these build the endpoint from the peer's
config (address, limits, TLS, routing), so transport, reconnects and counters are written once."""

from __future__ import annotations

import logging

from bridge.endpoints.tcp import TcpClient, TcpServer, stream_peers
from bridge.endpoints.udp import UdpPeer

log = logging.getLogger(__name__)


def tcp_client(ctx, peer, new_wire) -> TcpClient:
    """A reconnecting client to (peer.host, peer.port); new_wire() -> a StreamWire per connection."""
    return TcpClient(ctx.reactor, ctx.router, (peer.host, peer.port), new_wire, routing=ctx.routing,
                     scheme=peer.scheme, policy=peer.limits, tls=ctx.tls)


def tcp_server(ctx, peer, new_wire=None, make_peer=None) -> TcpServer:
    """A server on (peer.host, peer.port): each connection gets a StreamPeer with a fresh new_wire(), or
    whatever make_peer(sock, name, on_closed) returns (its own stream endpoint)."""
    if make_peer is None:
        make_peer = stream_peers(ctx.reactor, ctx.router, new_wire, ctx.routing, policy=peer.limits)
    server = TcpServer(ctx.reactor, ctx.router, (peer.host, peer.port), make_peer, max_clients=peer.max_clients,
                       scheme=peer.scheme, tls=ctx.tls)
    log.info("listening on %s", server.name)
    return server


def udp_peer(ctx, peer, wire) -> UdpPeer:
    """A UDP peer at (peer.host, peer.port), bound to peer.bind; `wire` is its DatagramWire."""
    return UdpPeer(ctx.reactor, ctx.router, (peer.host, peer.port), peer.bind, wire, routing=ctx.routing,
                   scheme=peer.scheme, policy=peer.limits)
