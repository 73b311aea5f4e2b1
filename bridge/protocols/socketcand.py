"""socketcand (reference/wire-formats.md; codec: bridge.codec.socketcand): `socketcand://[ADDR][:PORT]`
serves python-can's `socketcand` interface, SavvyCAN and Kayak; `beacon=BROADCAST` announces it."""

from __future__ import annotations

import logging

from bridge.codec import socketcand
from bridge.endpoints.socketcand_server import Beacon, SocketcandPeer
from bridge.errors import ConfigError
from bridge.protocols import transports
from bridge.protocols.base import ACCESS, MAX_CLIENTS, TLS, PeerProtocolBase

log = logging.getLogger(__name__)


class SocketcandServer(PeerProtocolBase):
    scheme, family, transport, server, default_host = "socketcand", "socketcand", "tcp", True, "127.0.0.1"
    default_port = socketcand.DEFAULT_PORT
    options = frozenset({ACCESS, TLS, MAX_CLIENTS})
    extra_options = ("beacon",)

    @classmethod
    def configure(cls, peer, where: str) -> None:
        beacon = peer.extra.get("beacon")
        if beacon is not None and (not isinstance(beacon, str) or not beacon):
            raise ConfigError(f"{where}: beacon: expected a broadcast address, got {beacon!r}")

    @classmethod
    def open(cls, ctx, peer):
        buses = {bus.name: (bus.channel, bus.fd_enabled) for bus in ctx.buses}
        gate = ctx.routing[2]

        def make_peer(sock, name, on_closed):
            return SocketcandPeer(ctx.reactor, sock, ctx.router, name, buses, on_closed, gate=gate)

        server = transports.tcp_server(ctx, peer, make_peer=make_peer)
        log.info("socketcand server on %s, buses %s", server.name, ",".join(buses))
        if peer.extra.get("beacon"):
            ctx.also_owned.append(Beacon(ctx.reactor, peer.extra["beacon"], server.address, list(buses)))
        return server
