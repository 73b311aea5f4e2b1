"""A stand-in for a canbridge serving `tcp-listen://` on loopback, for host tests of the native-protocol
clients (python-can plugin, `canbridge dump tcp://...`): real TCP (optionally TLS) sockets, the real codec.

On each accepted connection it sends the preamble, its HELLO and `first` frames in ONE write (the case
that strands frames in a client that decodes more than it returns), then whatever push() is given,
and records the frames the client sends (`received`: list of (channel, raw))."""

from __future__ import annotations

import socket
import ssl
import threading
import time

from bridge.codec import native
from bridge.codec.base import events
from bridge.frame import CanFrame


def frames(n: int, base: int = 0x100, ts0: int = 1_700_000_000_000_000_000) -> list:
    """n classic frames (raw, ts_ns): ids base.., data [i, i], 1 ms apart."""
    return [(CanFrame(base + i, bytes([i & 0xFF, i & 0xFF])).to_raw(), ts0 + i * 1_000_000) for i in range(n)]


class FakeBridge:
    def __init__(self, channels=("vcan0",), first=(), channel: int = 0, context: ssl.SSLContext | None = None,
                 capabilities: int = native.CAP_FD | native.CAP_ERR_FRAMES) -> None:
        self.hello = native.Hello(capabilities=capabilities, heartbeat_ms=0, channels=tuple(channels))
        self.first = list(first)
        self.channel = channel
        self.context = context
        self.received: list = []
        self.conns: list = []
        self.errors: list = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"tcp://127.0.0.1:{self.port}"
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.listener.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _client(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(5)
            if self.context is not None:
                conn = self.context.wrap_socket(conn, server_side=True)
            first = native.encode_frames(self.channel, self.first) if self.first else b""
            self.conns.append(conn)  # before the HELLO: a client that has it can be pushed to
            conn.sendall(native.STREAM_PREAMBLE + native.encode_hello(self.hello) + first)
            self._read(conn)
        except (OSError, ssl.SSLError, native.NativeProtocolError) as exc:
            self.errors.append(exc)

    def _read(self, conn) -> None:
        decoder = native.StreamDecoder()
        conn.settimeout(0.2)
        while not self._stop:
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue
            decoder.receive_data(data)
            for event in events(decoder):
                if isinstance(event, native.Frames):
                    self.received += [(event.channel, raw) for raw, _ts in event.frames]
            if not data:
                return

    def push(self, batch, channel: int | None = None) -> None:
        """Send (raw, ts_ns) frames in one write to every connected client."""
        data = native.encode_frames(self.channel if channel is None else channel, batch)
        for conn in list(self.conns):
            conn.sendall(data)

    def wait_clients(self, n: int = 1, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while len(self.conns) < n:
            assert time.monotonic() < deadline, f"no client connected: {self.errors}"
            time.sleep(0.01)

    def close(self) -> None:
        self._stop = True
        self.listener.close()
        for conn in self.conns:
            try:
                conn.close()
            except OSError:
                pass
        self._thread.join(2)
