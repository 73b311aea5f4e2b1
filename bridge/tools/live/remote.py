"""The one HELLO client of the native protocol: connect to a bridge serving `tcp-listen://`, read
its HELLO, pick one of its interfaces, answer with our HELLO, then read that interface's frames.

Used by `canbridge dump`/`top` (bridge/tools/live/dump.py) and the python-can plugin (bridge/pycan/bus.py).

    url: "tcp://HOST[:PORT][/IFACE][?tls_ca=PATH&tls_cert=PATH&tls_key=PATH&tls_server_name=NAME]"
         (port 29600 by default; IFACE: the bridge's first interface when omitted)

TLS as a `tcp://` peer (bridge/security/tls.py): any tls_* option (in the URL or as a keyword) makes
the connection TLS; tls_ca checks the gateway's certificate (system CAs without it), tls_cert/tls_key
are our client certificate for a gateway that requires one (mTLS).
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import replace
from urllib.parse import parse_qsl, urlsplit

from bridge.codec import native
from bridge.codec.base import events
from bridge.errors import ConfigError
from bridge.security import tls
from bridge.security.options import TLS_OPTIONS, Security
from bridge.tools.live.source import Rx, SourceClosed, parse_filters

DEFAULT_PORT = native.DEFAULT_PORT
CONNECT_TIMEOUT_S = 5.0
RECV_CHUNK = 64 << 10  # bytes per read


class RemoteClosed(Exception):
    """The bridge closed the connection, the connection failed, or the bridge sent malformed data."""


def parse_url(url: str, **tls_options) -> tuple[str, int, str, Security]:
    """"tcp://HOST[:PORT][/IFACE][?tls_...]" (scheme optional) -> (host, port, iface or "", Security).
    tls_options (tls_ca=, tls_cert=, tls_key=, tls_server_name=; None = not given) add to the URL's.
    Raises ConfigError for anything else."""
    parts = urlsplit(url if "://" in url else f"tcp://{url}")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise ConfigError(f"{url!r}: {exc}") from None
    if parts.scheme != "tcp" or not parts.hostname:
        raise ConfigError(f"{url!r}: expected tcp://HOST[:PORT][/IFACE]")
    sec = Security()
    options = parse_qsl(parts.query, keep_blank_values=True)
    options += [(k, v) for k, v in tls_options.items() if v is not None]
    for key, value in options:
        if key not in TLS_OPTIONS:
            raise ConfigError(f"{url!r}: unknown option {key!r} (options: {', '.join(TLS_OPTIONS)})")
        if not value:
            raise ConfigError(f"{url!r}: {key}: expected a path or name")
        sec = replace(sec, **{key: str(value)})
    return parts.hostname, port, parts.path.strip("/"), sec


class RemoteBridge:
    """A connected, HELLO-exchanged, non-blocking connection to one interface of a bridge.

    Attributes: host, port, name (the interface), index (its channel number), hello (the bridge's
    native.Hello), backlog (frames decoded with the HELLO that read() returns first), gateway ("HOST",
    or "HOST:PORT" when the port is not 29600), sock.
    Raises ConfigError (bad URL, TLS files, unknown interface, not a canbridge) or OSError
    (unreachable, TLS handshake refused)."""

    def __init__(self, url: str, **tls_options) -> None:
        self.url = url.split("?", 1)[0]
        self.host, self.port, wanted, sec = parse_url(url, **tls_options)
        self.gateway = self.host if self.port == DEFAULT_PORT else f"{self.host}:{self.port}"
        context = tls.client_context(sec, self.url) if sec.tls else None
        self.decoder = native.StreamDecoder()
        self.sock = socket.create_connection((self.host, self.port), timeout=CONNECT_TIMEOUT_S)
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if context is not None:
                self.sock = context.wrap_socket(self.sock, server_hostname=sec.tls_server_name or self.host)
            self.hello = self._read_hello()
            self.name, self.index = self._pick(wanted)
            self.backlog = self._drain()  # frames that came in the same read as the HELLO
            self.sock.sendall(native.STREAM_PREAMBLE + native.encode_hello(native.Hello(channels=self.hello.channels)))
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise

    def _read_hello(self) -> native.Hello:
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                event = self.decoder.next_event()
            except native.NativeProtocolError as exc:
                raise ConfigError(f"{self.url}: not a canbridge (native protocol): {exc}") from None
            if isinstance(event, native.Hello):
                return event
            if event is native.CLOSED:
                break
            if event is native.NEED_DATA:
                self.decoder.receive_data(self.sock.recv(RECV_CHUNK))
        raise ConfigError(f"{self.url}: no HELLO from the bridge")

    def _pick(self, wanted: str) -> tuple[str, int]:
        channels = self.hello.channels
        if wanted and wanted not in channels:
            raise ConfigError(f"{self.url}: the bridge has no interface {wanted!r} (it has {', '.join(channels)})")
        if not channels:
            raise ConfigError(f"{self.url}: the bridge announced no interface")
        name = wanted or channels[0]
        return name, channels.index(name)

    @property
    def channel(self) -> str:
        """"GATEWAY/IFACE", e.g. "gw.example/can0" or "127.0.0.1:29700/vcan0": python-can's Message.channel."""
        return f"{self.gateway}/{self.name}"

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> list:
        """Frames of our interface that arrived: [(raw, ts_ns)], raw a can_frame/canfd_frame (16/72 bytes),
        ts_ns the gateway's kernel RX time; [] when nothing waits. Frames the connection held are
        all returned (TLS: the decrypted bytes buffered in the ssl object too, which select() does not see).
        Raises RemoteClosed."""
        if self.backlog:
            out, self.backlog = self.backlog, []
            return out
        data = bytearray()
        try:
            while True:
                chunk = self.sock.recv(RECV_CHUNK)
                if not chunk:
                    break
                data += chunk
                if not (isinstance(self.sock, ssl.SSLSocket) and self.sock.pending()):
                    break
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            if not data:
                return []
        except OSError as exc:
            raise RemoteClosed(f"{self.url}: {exc}") from None
        if not data:
            raise RemoteClosed(f"{self.url}: the bridge closed the connection")
        return self._decode(bytes(data))

    def _decode(self, data: bytes) -> list:
        self.decoder.receive_data(data)
        return self._drain()

    def _drain(self) -> list:
        """Frames of our channel among the events the decoder can produce now."""
        out: list = []
        try:
            for event in events(self.decoder):
                if isinstance(event, native.Frames) and event.channel == self.index:
                    out += event.frames
        except native.NativeProtocolError as exc:
            raise RemoteClosed(f"{self.url}: malformed data from the bridge: {exc}") from None
        return out

    def send(self, frames, timeout: float | None = None) -> None:
        """frames: [(raw, ts_ns)] onto our interface of the bridge. Blocks up to timeout seconds
        (None: until sent). Raises OSError (socket.timeout when it did not go out in time)."""
        data = native.encode_frames(self.index, frames)
        self.sock.settimeout(timeout)
        try:
            self.sock.sendall(data)
        finally:
            self.sock.setblocking(False)

    def close(self) -> None:
        self.sock.close()


class RemoteSource:
    """One interface of a remote canbridge (`tcp-listen://` side), native protocol over TCP (TLS with
    ?tls_ca=..&tls_cert=..&tls_key=..), through bridge.tools.live.remote: "tcp://HOST[:PORT][/IFACE][?TLS][,FILTERS]"
    (IFACE: the bridge's first interface when omitted). Raises ConfigError for a bad URL or an unknown
    interface, OSError when unreachable."""

    def __init__(self, spec: str) -> None:
        url, _, filters = spec.partition(",")
        self.filter = parse_filters(filters)
        self.remote = RemoteBridge(url)
        self.url = self.remote.url
        self.name = self.remote.name

    def fileno(self) -> int:
        return self.remote.fileno()

    def waiting(self) -> bool:
        """Frames came with the bridge's HELLO: read() has them although the socket is not readable."""
        return bool(self.remote.backlog)

    def read(self) -> list:
        try:
            frames = self.remote.read()
        except RemoteClosed as exc:
            raise SourceClosed(str(exc)) from None
        return [Rx(self.name, raw, ts) for raw, ts in self.filter.filter_batch(frames)]

    def close(self) -> None:
        self.remote.close()
