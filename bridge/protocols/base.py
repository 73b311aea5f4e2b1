"""What a protocol is to the rest of the bridge: the typing.Protocol types a protocol module implements,
and the context the daemon hands it when it opens a peer.

A protocol class (one per URL scheme, e.g. bridge.protocols.native.NativeTcp for `tcp://`) says what its
URLs look like (default port, server or client, which options it takes) and opens its endpoint. The
daemon's config, app, security and liveness code ask the class; they keep no scheme lists of their own.
Adding a protocol: a codec module, a protocol module with such a class, one line in
bridge.protocols.registry.BUILTIN (or an entry point in the group `canbridge.protocols`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

# Option groups a protocol class lists in `options`; bridge.daemon.config knows how to parse each.
FILTERS = "filters"  # filter=, inbound_filter= (candump syntax)
ACCESS = "access"  # read_only=, write_allow=, rate=, burst= (bridge.security.access)
TLS = "tls"  # tls_cert=, tls_key=, tls_ca= (bridge.security.options); clients also tls_server_name=
PSK = "psk"  # psk=, psk_file= (sealed UDP datagrams)
LIMITS = "limits"  # timeout=, overflow=, max_age=, sndbuf= (bridge.endpoints.liveness.PeerLimits)
MTU = "mtu"  # mtu= (datagram size)
BIND = "bind"  # bind=ADDR:PORT (UDP)
MAX_CLIENTS = "max_clients"  # servers: connections at once


class Endpoint(Protocol):
    """What the router and the daemon need of a peer endpoint (TCP client or server, UDP peer, ...).

    send_frames(channel, frames) -> bool: frames = [(raw can_frame/canfd_frame bytes, kernel RX ns)];
    True if the endpoint wants a flush() at the end of this loop pass. receive side: the endpoint
    calls router.from_peer(self, channel, frames). counters: bridge.core.stats.Counters."""

    name: str
    counters: Any

    def send_frames(self, channel: int, frames: list) -> bool: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class StreamWire(Protocol):
    """A sans-IO codec adapted to one TCP connection (bridge.endpoints.tcp).

    greeting() -> bytes sent first; encode(channel, frames) -> bytes (b"" if this wire cannot carry
    that channel); heartbeat(now_ns) -> bytes (b"" if none); feed(data) -> [(channel, frames)] and
    raises bridge.errors.ProtocolError on malformed input; describe_peer() -> str | None once the
    peer's greeting is in."""

    has_heartbeat: bool

    def greeting(self) -> bytes: ...

    def encode(self, channel: int, frames: list) -> bytes: ...

    def heartbeat(self, now_ns: int) -> bytes: ...

    def feed(self, data: bytes) -> list: ...

    def describe_peer(self) -> str | None: ...


class DatagramWire(Protocol):
    """A sans-IO codec adapted to one UDP peer (bridge.endpoints.udp), which owns the MTU.

    encode(channel, frames) -> [datagram bytes]; control() -> heartbeat datagram or None;
    decode(datagram) -> (verdict, [(channel, frames)]), verdict "ok" or a drop slug ("duplicate",
    "stale", "replayed"), raises ProtocolError; stats() -> dict of sequence counters;
    peer_changed(up, queued) and closed(): liveness transitions and the end."""

    def encode(self, channel: int, frames: list) -> list: ...

    def control(self) -> bytes | None: ...

    def decode(self, data: bytes) -> tuple[str, list]: ...

    def stats(self) -> dict: ...

    def peer_changed(self, up: bool, queued: int = 0) -> None: ...

    def closed(self) -> None: ...


@dataclass
class PeerContext:
    """What the daemon gives a protocol's open(): the loop, the router, our HELLO (native.Hello: channel
    names, capabilities), the open buses (bridge.endpoints.socketcan.SocketCanEndpoint, by channel),
    the peer's TLS (bridge.security.tls.Tls or None), routing = (out filter, in filter, write gate) for
    Router.add_peer, and `also_owned`: endpoints the bridge must also close (e.g. a discovery beacon)."""

    reactor: Any
    router: Any
    hello: Any
    buses: list
    tls: Any = None
    routing: tuple = (None, None, None)
    also_owned: list = field(default_factory=list)


class PeerProtocol(Protocol):
    """One URL scheme. Class attributes:

    scheme: "tcp", "cannelloni+udp", ...; family: the wire protocol's name ("native", "cannelloni",
    "socketcand", ...), which dissectors and capture filters use; transport: "tcp" or "udp";
    server: listens; default_host: taken when the URL names none (None: a host is required;
    servers: "127.0.0.1", loopback unless an address is given); tls_client: TLS options make it a TLS
    client (it verifies tls_server_name); default_port; options: the option groups above it takes;
    extra_options: option names the protocol parses itself (configure() checks them);
    option_hints: {option: why it does not apply}, for a clearer error than "unknown option".
    """

    scheme: ClassVar[str]
    family: ClassVar[str]
    transport: ClassVar[str]
    server: ClassVar[bool]
    tls_client: ClassVar[bool]
    default_port: ClassVar[int]
    default_host: ClassVar[str | None]
    options: ClassVar[frozenset[str]]
    extra_options: ClassVar[tuple[str, ...]]
    option_hints: ClassVar[dict[str, str]]

    @classmethod
    def configure(cls, peer: Any, where: str) -> None:
        """Check and complete a parsed bridge.daemon.config.PeerConfig (its `extra` options, defaults);
        raises ConfigError naming `where` and the option."""

    @classmethod
    def open(cls, ctx: PeerContext, peer: Any) -> Endpoint:
        """Open the endpoint for `peer` (a PeerConfig). Raises OSError when a socket cannot be opened."""


class PeerProtocolBase:
    """Defaults for a protocol class: a client with no extra options."""

    family = "native"
    transport = "tcp"
    server = False
    tls_client = False
    default_port = 0
    default_host: str | None = None  # None: the URL must name a host
    options: frozenset[str] = frozenset({FILTERS, ACCESS})
    extra_options: tuple[str, ...] = ()
    option_hints: dict[str, str] = {}

    @classmethod
    def configure(cls, peer, where: str) -> None:
        pass
