"""A toy protocol for the registry tests: everything a new protocol needs, and nothing else. Frames go
one per UDP datagram as b"TOY" + the raw kernel struct; `greeting=` is its own option (extra_options).
Adding it to a bridge takes this module plus one registry line (registry.register or an entry point)."""

from bridge.errors import ConfigError, ProtocolError
from bridge.protocols import transports
from bridge.protocols.base import BIND, FILTERS, PeerProtocolBase

MAGIC = b"TOY"


class ToyDatagram:
    def __init__(self, greeting: str) -> None:
        self.greeting = greeting.encode()

    def encode(self, channel: int, frames: list) -> list:
        return [MAGIC + raw for raw, _ts in frames] if channel == 0 else []

    def control(self) -> bytes | None:
        return None

    def decode(self, data: bytes) -> tuple[str, list]:
        if not data.startswith(MAGIC) or len(data) - len(MAGIC) not in (16, 72):
            raise ProtocolError("bad_toy", f"{len(data)} bytes")
        return "ok", [(0, [(bytes(data[len(MAGIC):]), 0)])]

    def stats(self) -> dict:
        return {}

    def peer_changed(self, up: bool, queued: int = 0) -> None:
        pass

    def closed(self) -> None:
        pass


class ToyUdp(PeerProtocolBase):
    scheme, family, transport = "toy+udp", "toy", "udp"
    default_port = 47000
    options = frozenset({FILTERS, BIND})
    extra_options = ("greeting",)

    @classmethod
    def configure(cls, peer, where: str) -> None:
        greeting = peer.extra.setdefault("greeting", "hi")
        if not isinstance(greeting, str) or len(greeting) > 8:
            raise ConfigError(f"{where}: greeting: at most 8 characters, got {greeting!r}")

    @classmethod
    def open(cls, ctx, peer):
        return transports.udp_peer(ctx, peer, ToyDatagram(peer.extra["greeting"]))
