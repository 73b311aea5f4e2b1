"""cannelloni (reference/wire-formats.md; codec: bridge.codec.cannelloni): its stream and datagram
wires, and the schemes cannelloni+tcp://, cannelloni+tcp-listen:// and cannelloni+udp://."""

from __future__ import annotations

from bridge.codec import cannelloni
from bridge.codec.base import events
from bridge.protocols import transports
from bridge.protocols.base import ACCESS, BIND, FILTERS, LIMITS, MAX_CLIENTS, MTU, TLS, PeerProtocolBase

_NO_PSK = ("cannelloni peers cannot decrypt; encrypted UDP needs udp:// (the native protocol) on both sides")


class CannelloniStream:
    """cannelloni TCP (v1.1+): `CANNELLONIv1` both ways, then bare frame records. It has no
    channels: only channel 0 is carried; frames of other channels are not sent."""

    has_heartbeat = False  # cannelloni is silent while the bus is idle: silence is not death

    def __init__(self) -> None:
        self.decoder = cannelloni.StreamDecoder()

    def greeting(self) -> bytes:
        return cannelloni.BANNER

    def encode(self, channel: int, frames: list) -> bytes:
        return cannelloni.encode_frames(frames) if channel == 0 else b""

    def heartbeat(self, now_ns: int) -> bytes:
        return b""

    def feed(self, data: bytes) -> list:
        self.decoder.receive_data(data)
        return [(0, e.frames) for e in events(self.decoder) if isinstance(e, cannelloni.Frames)]

    def describe_peer(self) -> str | None:
        return "cannelloni" if self.decoder.banner_received else None


class CannelloniDatagram:
    """cannelloni UDP (version 2 header, u8 sequence). Channel 0 only; no heartbeat (cannelloni
    sends nothing while the bus is idle), so the peer is "up" only while frames arrive. Its datagrams
    carry no frame count, so lost datagrams are counted ("lost" gauge), lost frames are not."""

    def __init__(self, hello, mtu: int) -> None:
        self.encoder = cannelloni.DatagramEncoder(mtu)
        self.seq = cannelloni.SeqCounter()

    def encode(self, channel: int, frames: list) -> list:
        return self.encoder.encode(frames) if channel == 0 else []

    def control(self) -> bytes | None:
        return None

    def peer_changed(self, up: bool, queued: int = 0) -> None:
        pass  # cannelloni acknowledges nothing

    def closed(self) -> None:
        pass

    def decode(self, data: bytes) -> tuple[str, list]:
        seq, frames = cannelloni.decode_datagram(data)
        self.seq.observe(seq)  # statistics only: cannelloni delivers every datagram
        return "ok", [(0, frames)] if frames else []

    def stats(self) -> dict:
        return {"lost": self.seq.lost, "reordered": self.seq.reordered}


class CannelloniTcp(PeerProtocolBase):
    """`cannelloni+tcp://HOST[:PORT]`: client of a cannelloni TCP server (cannelloni -C s)."""

    scheme, family, transport, tls_client = "cannelloni+tcp", "cannelloni", "tcp", True
    default_port = cannelloni.DEFAULT_PORT
    options = frozenset({FILTERS, ACCESS, TLS, LIMITS})

    @classmethod
    def open(cls, ctx, peer):
        return transports.tcp_client(ctx, peer, CannelloniStream)


class CannelloniTcpListen(CannelloniTcp):
    """`cannelloni+tcp-listen://[ADDR][:PORT]`: server for cannelloni TCP clients (cannelloni -C c)."""

    scheme, server, tls_client, default_host = "cannelloni+tcp-listen", True, False, "127.0.0.1"
    options = frozenset({FILTERS, ACCESS, TLS, LIMITS, MAX_CLIENTS})

    @classmethod
    def open(cls, ctx, peer):
        return transports.tcp_server(ctx, peer, CannelloniStream)


class CannelloniUdp(PeerProtocolBase):
    """`cannelloni+udp://HOST[:PORT][?bind=ADDR:PORT]`: cannelloni's UDP mode (channel 0 only)."""

    scheme, family, transport = "cannelloni+udp", "cannelloni", "udp"
    default_port = cannelloni.DEFAULT_PORT
    options = frozenset({FILTERS, ACCESS, LIMITS, MTU, BIND})
    option_hints = {"psk": _NO_PSK, "psk_file": _NO_PSK}

    @classmethod
    def open(cls, ctx, peer):
        return transports.udp_peer(ctx, peer, CannelloniDatagram(ctx.hello, peer.mtu))
