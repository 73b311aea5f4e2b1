"""The native protocol (docs/protocol.md; codec: bridge.codec.native, sealed UDP: bridge.codec.sealed):
its stream and datagram wires, and the schemes tcp://, tcp-listen:// and udp://."""

from __future__ import annotations

import os
import time

from bridge.codec import native, sealed
from bridge.codec.frameloss import DeliveryTracker, FrameLossTracker
from bridge.errors import ConfigError
from bridge.protocols import transports
from bridge.protocols.base import ACCESS, BIND, FILTERS, LIMITS, MAX_CLIENTS, MTU, PSK, TLS, PeerProtocolBase


class NativeStream:
    def __init__(self, hello: native.Hello) -> None:
        self.hello = hello
        self.decoder = native.StreamDecoder()
        self.peer_hello: native.Hello | None = None

    @property
    def has_heartbeat(self) -> bool:
        """A silent peer is a dead one, unless its HELLO said heartbeat_ms 0 (the python-can
        plugin, which only talks when its program does)."""
        return self.peer_hello is None or self.peer_hello.heartbeat_ms > 0

    def greeting(self) -> bytes:
        return native.STREAM_PREAMBLE + native.encode_hello(self.hello)

    def encode(self, channel: int, frames: list) -> bytes:
        return native.encode_frames(channel, frames)

    def heartbeat(self, now_ns: int) -> bytes:
        return native.encode_heartbeat(now_ns)

    def feed(self, data: bytes) -> list:
        out = []
        for event in self.decoder.receive_all(data):
            if type(event) is native.Frames:
                out.append((event.channel, event.frames))
            elif isinstance(event, native.Hello):
                self.peer_hello = event
        return out

    def describe_peer(self) -> str | None:
        h = self.peer_hello
        return h and f"native v{h.version}, channels {','.join(h.channels)}"


class NativeDatagram:
    """psk: 32-byte key: datagrams are sealed (bridge.codec.sealed, ChaCha20-Poly1305), the MTU includes
    the sealing overhead, and the receiver accepts only authenticated, not replayed datagrams."""

    def __init__(self, hello: native.Hello, mtu: int, psk: bytes | None = None) -> None:
        if psk and mtu - sealed.OVERHEAD < native.UDP_HEADER_LEN + native.MAX_FRAME_RECORD:
            raise ConfigError(f"mtu {mtu} is too small with psk: at least "
                              f"{native.UDP_HEADER_LEN + native.MAX_FRAME_RECORD + sealed.OVERHEAD}")
        session = int.from_bytes(os.urandom(4), "big")
        self.sealer = sealed.Sealer(psk, session, int(time.time())) if psk else None
        self.opener = sealed.Opener(psk, own=self.sealer) if psk else None
        self.encoder = native.DatagramEncoder(session, mtu - sealed.OVERHEAD if psk else mtu)
        self.tracker = native.SequenceTracker()
        self.loss = FrameLossTracker()  # frames lost in transit, from the peer's TX_COUNT records
        self.delivery = DeliveryTracker()  # frames that died with the peer, from its RX_COUNT records
        self.hello_record = native.encode_hello(hello)
        control = (native.UDP_HEADER_LEN + len(self.hello_record) + len(native.encode_tx_count(0))
                   + len(native.encode_rx_count(0, 0)))
        if control > self.encoder.mtu:  # else every heartbeat would fail
            raise ConfigError(f"mtu {mtu} is too small for the control datagram (HELLO of {len(hello.channels)} "
                              f"channels + TX_COUNT + RX_COUNT): at least {control + (mtu - self.encoder.mtu)}")

    @property
    def session(self) -> int:
        """Our sending session as the peer sees it (a sealer moves to session + 1 before seq wraps)."""
        return self.sealer.session if self.sealer else self.encoder.session

    def encode(self, channel: int, frames: list) -> list:
        dgrams = self.encoder.encode(channel, frames)
        return [self.sealer.seal(d) for d in dgrams] if self.sealer else dgrams

    def control(self) -> bytes | None:
        records = self.hello_record + native.encode_tx_count(self.encoder.frames)
        accounted = self.loss.accounted  # None until we know the peer session's numbering
        if accounted is not None:
            records += native.encode_rx_count(self.loss.session, accounted)
        dgram = self.encoder.encode_control(records)
        return self.sealer.seal(dgram) if self.sealer else dgram

    def peer_changed(self, up: bool, queued: int = 0) -> None:
        if up:
            self.delivery.up(self.tracker.session)
        else:
            self.delivery.down(self.encoder.frames + queued)

    def closed(self) -> None:
        self.delivery.close()

    def decode(self, data: bytes) -> tuple[str, list]:
        if self.opener:  # authenticate and check for replay before parsing anything
            data = self.opener.open(data)
            if data is None:
                return "replayed", []
        elif sealed.is_sealed(data):
            raise sealed.SealedError("sealed_no_key", "encrypted datagram, but this peer has no psk")
        session, seq, events = native.decode_datagram(data)
        verdict = self.tracker.observe(session, seq)
        if verdict in ("duplicate", "stale"):
            return verdict, []
        if verdict == "reset":  # a new peer session: maybe a restart faster than our timeout
            self.delivery.new_peer(session, self.encoder.frames)
        batches, frames, sent = [], 0, None
        for e in events:
            if type(e) is native.Frames:
                batches.append((e.channel, e.frames))
                frames += len(e.frames)
            elif type(e) is native.TxCount:
                sent = e.frames_sent
            elif type(e) is native.RxCount:
                self.delivery.ack(self.session, e, session)
        self.loss.observe(session, frames, sent)
        return "ok", batches

    def stats(self) -> dict:
        t = self.tracker
        return {"lost": t.lost, "duplicated": t.duplicated, "reordered": t.reordered,
                "lost_frames": self.loss.lost, "unconfirmed_frames": self.delivery.counted}


class NativeTcp(PeerProtocolBase):
    """`tcp://HOST[:PORT]`: client, reconnects with backoff."""

    scheme, family, transport, tls_client = "tcp", "native", "tcp", True
    default_port = native.DEFAULT_PORT
    options = frozenset({FILTERS, ACCESS, TLS, LIMITS})

    @classmethod
    def open(cls, ctx, peer):
        return transports.tcp_client(ctx, peer, lambda: NativeStream(ctx.hello))


class NativeTcpListen(NativeTcp):
    """`tcp-listen://[ADDR][:PORT]`: server, many clients (loopback unless ADDR is given)."""

    scheme, server, tls_client, default_host = "tcp-listen", True, False, "127.0.0.1"
    options = frozenset({FILTERS, ACCESS, TLS, LIMITS, MAX_CLIENTS})

    @classmethod
    def open(cls, ctx, peer):
        return transports.tcp_server(ctx, peer, lambda: NativeStream(ctx.hello))


class NativeUdp(PeerProtocolBase):
    """`udp://HOST[:PORT][?bind=ADDR:PORT]`: datagrams both ways, optionally sealed (psk)."""

    scheme, family, transport = "udp", "native", "udp"
    default_port = native.DEFAULT_PORT
    options = frozenset({FILTERS, ACCESS, PSK, LIMITS, MTU, BIND})

    @classmethod
    def open(cls, ctx, peer):
        return transports.udp_peer(ctx, peer, NativeDatagram(ctx.hello, peer.mtu, psk=peer.security.psk))
