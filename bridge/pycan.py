"""python-can interface plugin: use a remote canbridge as a bus, on any OS python-can runs on.

    bus = can.Bus(interface="canbridge", channel="tcp://gateway:29600/can0")
    python -m can.logger -i canbridge -c tcp://gateway:29600/can0

The bridge must listen with `tcp-listen://`. The plugin speaks the native protocol (docs/protocol.md):
it reads the bridge's HELLO, finds the named interface in its channel list (the first one when
the URL has no path), and exchanges frames of that channel only. Message.timestamp is the
gateway's kernel RX time. Registered as entry point `canbridge` in the `can.interface` group.
"""

from __future__ import annotations

import select
from collections import deque
import socket
import time
from urllib.parse import urlsplit

import can

from bridge.codec import native
from bridge.codec.base import events
from bridge.frame import CanFrame

CONNECT_TIMEOUT_S = 5.0
RECV_CHUNK = 64 << 10


class CanBridgeBus(can.BusABC):
    """channel: "tcp://HOST[:PORT][/IFACE]" (port 29600 by default). Raises
    can.CanInitializationError when the bridge is unreachable or has no such interface."""

    def __init__(self, channel: str, can_filters=None, fd: bool = True, **kwargs):
        self.channel_info = channel
        self._host, self._port, iface = _parse(channel)
        try:
            self._sock = socket.create_connection((self._host, self._port), timeout=CONNECT_TIMEOUT_S)
        except OSError as exc:
            raise can.CanInitializationError(f"canbridge: cannot connect to {channel}: {exc}") from exc
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._decoder = native.StreamDecoder()
        self._queue: deque = deque()  # (raw, ts_ns) of our channel, decoded but not yet returned
        try:
            hello = self._read_hello()
        except (OSError, native.NativeProtocolError) as exc:
            self._sock.close()
            raise can.CanInitializationError(f"canbridge: {channel}: no HELLO from the bridge: {exc}") from exc
        if iface and iface not in hello.channels:
            self._sock.close()
            raise can.CanInitializationError(
                f"canbridge: {channel}: the bridge has no interface {iface!r} (it has {', '.join(hello.channels)})"
            )
        self._index = hello.channels.index(iface) if iface else 0
        self._sock.sendall(native.STREAM_PREAMBLE + native.encode_hello(native.Hello(channels=hello.channels)))
        self._sock.settimeout(None)
        self._sock.setblocking(False)
        super().__init__(channel=channel, can_filters=can_filters, **kwargs)

    def _read_hello(self):
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while time.monotonic() < deadline:
            event = self._decoder.next_event()
            if isinstance(event, native.Hello):
                return event
            if event is native.CLOSED:
                raise OSError("connection closed")
            if event is native.NEED_DATA:
                data = self._sock.recv(RECV_CHUNK)
                self._decoder.receive_data(data)
                if not data:
                    raise OSError("connection closed")
        raise TimeoutError("timed out")

    def _recv_internal(self, timeout):
        end = None if timeout is None else time.monotonic() + timeout
        while not self._queue:
            wait = None if end is None else max(0.0, end - time.monotonic())
            if not select.select([self._sock], [], [], wait)[0]:
                return None, False
            self._read_available()
        raw, ts = self._queue.popleft()
        frame = CanFrame.from_raw(raw, ts)
        return frame.to_message(channel=self.channel_info), False

    def _read_available(self) -> None:
        try:
            data = self._sock.recv(RECV_CHUNK)
        except BlockingIOError:
            return
        if not data:
            raise can.CanOperationError(f"canbridge: {self.channel_info}: the bridge closed the connection")
        self._decoder.receive_data(data)
        try:
            for event in events(self._decoder):
                if isinstance(event, native.Frames) and event.channel == self._index:
                    self._queue.extend(event.frames)
        except native.NativeProtocolError as exc:
            raise can.CanOperationError(f"canbridge: malformed data from the bridge: {exc}") from exc

    def send(self, msg: can.Message, timeout=None) -> None:
        data = native.encode_frames(self._index, [(CanFrame.from_message(msg).to_raw(), time.time_ns())])
        self._sock.setblocking(True)
        self._sock.settimeout(timeout)
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise can.CanOperationError(f"canbridge: send failed: {exc}") from exc
        finally:
            self._sock.setblocking(False)

    def fileno(self) -> int:
        return self._sock.fileno()

    def shutdown(self) -> None:
        super().shutdown()
        self._sock.close()


def _parse(channel: str) -> tuple[str, int, str]:
    parts = urlsplit(channel if "://" in channel else f"tcp://{channel}")
    if parts.scheme != "tcp" or not parts.hostname:
        raise can.CanInitializationError(f"canbridge: channel must be tcp://HOST[:PORT][/IFACE], got {channel!r}")
    return parts.hostname, parts.port or 29600, parts.path.strip("/")
