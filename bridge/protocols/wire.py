"""Wire adapters: one small class per protocol that turns a sans-IO codec into what the TCP and
UDP endpoints need, so transport, batching, reconnects and counters are written once.

Stream wire (one per TCP connection):
    greeting() -> bytes                 sent first on every connection
    encode(channel, frames) -> bytes    frames = [(raw, ts_ns)]; b"" if this wire cannot carry them
    heartbeat(now_ns) -> bytes          b"" when the protocol has none (has_heartbeat False)
    feed(data) -> list[(channel, frames)]   b"" = EOF; raises ProtocolError on malformed input
    describe_peer() -> str | None       after the peer's greeting, for the log
Datagram wire (one per UDP peer):
    encode(channel, frames) -> list[bytes]; control() -> bytes | None (heartbeat datagram)
    decode(data) -> (verdict, [(channel, frames)]); raises ProtocolError; verdict "ok" or a slug
    of a datagram to drop ("duplicate", "stale", "replayed"); stats() -> dict of sequence counters,
    with "lost_frames" (frames lost in transit, counted from TX_COUNT) when the protocol can tell;
    peer_changed(up, queued=0) and closed(): liveness transitions and the end, for the count of frames
    that died with a restarted peer (RX_COUNT, bridge.codec.frameloss.DeliveryTracker), which stats()
    reports as "unconfirmed_frames" (total); queued: at a down transition, frames handed to send_frames
    that still leave in this loop pass
"""

from __future__ import annotations

import os
import time

from bridge.codec import cannelloni, native, sealed
from bridge.codec.base import events
from bridge.codec.frameloss import DeliveryTracker, FrameLossTracker
from bridge.errors import ConfigError


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
        self.decoder.receive_data(data)
        out = []
        for event in events(self.decoder):
            if isinstance(event, native.Frames):
                out.append((event.channel, event.frames))
            elif isinstance(event, native.Hello):
                self.peer_hello = event
        return out

    def describe_peer(self) -> str | None:
        h = self.peer_hello
        return h and f"native v{h.version}, channels {','.join(h.channels)}"


class CannelloniStream:
    """cannelloni TCP (v1.1+): `CANNELLONIv1` both ways, then bare frame records. It has no
    channels: only channel 0 is carried; frames of other channels are not sent."""

    has_heartbeat = False  # cannelloni is silent while the bus is idle: silence is not death

    def __init__(self, hello=None) -> None:
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
