"""python-can's `udp_multicast` interface (codec: bridge.codec.pycan_multicast):
`udp-multicast://[GROUP][:PORT][?iface=NAME&hop_limit=N]` joins the group as one more member; an
empty URL takes python-can's defaults ([ff15:7079:7468:6f6e:6465:6d6f:6d63:6173]:43113, hop limit 1)."""

from __future__ import annotations

import ipaddress

from bridge.codec import pycan_multicast
from bridge.endpoints.multicast import MulticastPeer
from bridge.errors import ConfigError
from bridge.protocols.base import ACCESS, FILTERS, PeerProtocolBase

IFNAMSIZ = 16


class UdpMulticast(PeerProtocolBase):
    scheme, family, transport = "udp-multicast", "udp_multicast", "udp"
    default_port = pycan_multicast.DEFAULT_PORT
    default_host = pycan_multicast.DEFAULT_GROUP_IPV6
    options = frozenset({FILTERS, ACCESS})
    extra_options = ("iface", "hop_limit")

    @classmethod
    def configure(cls, peer, where: str) -> None:
        try:
            multicast = ipaddress.ip_address(peer.host).is_multicast
        except ValueError:
            multicast = False
        if not multicast:
            raise ConfigError(f"{where}: {peer.host!r} is not a multicast group address "
                              f"(e.g. [{pycan_multicast.DEFAULT_GROUP_IPV6}] or {pycan_multicast.DEFAULT_GROUP_IPV4})")
        iface = peer.extra.get("iface")
        if iface is not None and (not isinstance(iface, str) or not iface or len(iface) >= IFNAMSIZ
                                  or "/" in iface or " " in iface):
            raise ConfigError(f"{where}: iface: {iface!r} is not a network interface name (e.g. eth0)")
        value = peer.extra.get("hop_limit", pycan_multicast.DEFAULT_HOP_LIMIT)
        try:
            hop_limit = int(value)
        except (TypeError, ValueError):
            hop_limit = -1
        if isinstance(value, bool) or not 0 <= hop_limit <= 255:
            raise ConfigError(f"{where}: hop_limit must be an integer 0..255, got {value!r}")
        peer.extra["hop_limit"] = hop_limit

    @classmethod
    def open(cls, ctx, peer):
        # the group is one bus: channel 0, named as python-can would
        return MulticastPeer(ctx.reactor, ctx.router, peer.host, peer.port, iface=peer.extra.get("iface"),
                             hop_limit=peer.extra["hop_limit"], channel_name=ctx.hello.channels[0],
                             routing=ctx.routing)
