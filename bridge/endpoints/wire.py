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
    of a datagram to drop ("duplicate", "stale"); stats() -> dict of sequence counters
"""

from __future__ import annotations

import os

from bridge.codec import cannelloni, native
from bridge.codec.base import events


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
    def __init__(self, hello: native.Hello, mtu: int) -> None:
        self.encoder = native.DatagramEncoder(int.from_bytes(os.urandom(4), "big"), mtu)
        self.tracker = native.SequenceTracker()
        self.hello_record = native.encode_hello(hello)

    def encode(self, channel: int, frames: list) -> list:
        return self.encoder.encode(channel, frames)

    def control(self) -> bytes | None:
        return self.encoder.encode_control(self.hello_record)

    def decode(self, data: bytes) -> tuple[str, list]:
        session, seq, events = native.decode_datagram(data)
        verdict = self.tracker.observe(session, seq)
        if verdict in ("duplicate", "stale"):
            return verdict, []
        return "ok", [(e.channel, e.frames) for e in events if isinstance(e, native.Frames)]

    def stats(self) -> dict:
        t = self.tracker
        return {"lost": t.lost, "duplicated": t.duplicated, "reordered": t.reordered}


class CannelloniDatagram:
    """cannelloni UDP (version 2 header, u8 sequence). Channel 0 only; no heartbeat (cannelloni
    sends nothing while the bus is idle), so the peer is "up" only while frames arrive."""

    def __init__(self, hello, mtu: int) -> None:
        self.encoder = cannelloni.DatagramEncoder(mtu)
        self.seq = cannelloni.SeqCounter()

    def encode(self, channel: int, frames: list) -> list:
        return self.encoder.encode(frames) if channel == 0 else []

    def control(self) -> bytes | None:
        return None

    def decode(self, data: bytes) -> tuple[str, list]:
        seq, frames = cannelloni.decode_datagram(data)
        self.seq.observe(seq)  # statistics only: cannelloni delivers every datagram
        return "ok", [(0, frames)] if frames else []

    def stats(self) -> dict:
        return {"lost": self.seq.lost, "reordered": self.seq.reordered}
