"""Non-blocking stream transport over a connected socket (model: asyncio's selector transports).

The protocol object it drives has these methods:
    data_received(data: bytes)    -- bytes read from the socket
    eof_received()                -- peer closed its side
    connection_lost(exc)          -- transport closed; exc is None for a local close
    pause_writing(), resume_writing()  -- write buffer crossed the high / low watermark
"""

from __future__ import annotations

import errno
import fcntl
import logging
import socket
import sys
import struct
import termios
from collections import deque

from bridge.core.reactor import Reactor

log = logging.getLogger(__name__)

# A TLS socket (bridge/security/tls.py) raises these where a plain one returns EAGAIN: a record is incomplete, or
# OpenSSL must read or write first. The caller retries on the next readiness, with the same data for send.
# ssl is imported only where TLS is configured (bridge.security.tls): a plain bridge never loads it, and
# without it no socket can be a TLS one.
_WOULD_BLOCK_PLAIN = (BlockingIOError, InterruptedError)


def _is_tls(sock) -> bool:
    ssl = sys.modules.get("ssl")
    return ssl is not None and isinstance(sock, ssl.SSLSocket)


def _would_block(sock) -> tuple:
    if not _is_tls(sock):
        return _WOULD_BLOCK_PLAIN
    ssl = sys.modules["ssl"]
    return (*_WOULD_BLOCK_PLAIN, ssl.SSLWantReadError, ssl.SSLWantWriteError)

# Watermarks on bytes queued in userspace: above HIGH the producer is paused (the peer endpoint
# keeps frames un-encoded and drops the oldest), below LOW it resumes. 1 MiB is ~12k FD frames,
# far more than one second of a 1 Mbit/s bus, so a healthy peer never reaches it.
WRITE_HIGH_WATER = 1 << 20
WRITE_LOW_WATER = 256 << 10
# Hard cap: above HIGH a well-behaved producer only adds one flush of its bounded pending queue
# (bridge/endpoints/pending.py, 1 MiB of raw frames, at most ~2.5x that as socketcand text) and
# heartbeats; past this the producer ignored pause_writing and the connection is closed (ENOBUFS).
WRITE_BUFFER_MAX = 8 << 20
_TCP_CLOSE = 7  # tcpi_state of a dead connection (reset, TCP_USER_TIMEOUT, keepalive): include/net/tcp_states.h
_LINGER_ABORT = struct.pack("ii", 1, 0)  # struct linger {l_onoff 1, l_linger 0}: close() resets
_INT = struct.Struct("i")  # the int an ioctl(TIOCOUTQ/FIONREAD) fills in
READ_CHUNK = 64 << 10  # bytes per recv() (~2,300 native frames): bounds the work of one loop pass, so one
# busy peer cannot starve the loop nor delay our heartbeats long enough to look dead to the other side


class StreamTransport:
    def __init__(self, reactor: Reactor, sock: socket.socket, protocol) -> None:
        sock.setblocking(False)
        self.reactor = reactor
        self.sock = sock
        self.fd = sock.fileno()
        self.protocol = protocol
        self._tls = _is_tls(sock)
        self._would_block = _would_block(sock)  # what this socket raises for EAGAIN
        self._buffer: deque[memoryview] = deque()
        self._buffered = 0
        self._paused = False
        self.reading_paused = False  # pause_reading(): the consumer of what we read is backed up
        self.closed = False
        self.bytes_in = 0
        self.bytes_out = 0
        self._unsent = 0  # bytes of the write() that failed: neither sent nor buffered
        self._aborting = False  # abort(): the close sends a RST, the kernel send queue is discarded
        self.undelivered_bytes = 0  # set by close(): see _kernel_undelivered
        reactor.add_reader(self.fd, self._on_readable)

    # --- writing ------------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Queue `data`; sends at once if nothing is queued. Never blocks."""
        if self.closed or not data:
            return
        if not self._buffer:
            try:
                sent = self.sock.send(data)
            except self._would_block:
                sent = 0
            except OSError as exc:
                self._unsent = len(data)
                self._fatal(exc)
                return
            self.bytes_out += sent
            if sent == len(data):
                return
            data = memoryview(data)[sent:]
            self.reactor.add_writer(self.fd, self._on_writable)
        if self._buffered + len(data) > WRITE_BUFFER_MAX:
            self._unsent = len(data)
            self._fatal(OSError(errno.ENOBUFS, f"write buffer over {WRITE_BUFFER_MAX} bytes"))
            return
        self._buffer.append(memoryview(data))
        self._buffered += len(data)
        if not self._paused and self._buffered > WRITE_HIGH_WATER:
            self._paused = True
            self.protocol.pause_writing()

    @property
    def write_buffer_size(self) -> int:
        return self._buffered

    @property
    def paused(self) -> bool:
        return self._paused

    def _on_writable(self) -> None:
        while self._buffer:
            chunk = self._buffer[0]
            try:
                sent = self.sock.send(chunk)
            except self._would_block:
                return
            except OSError as exc:
                self._fatal(exc)
                return
            self.bytes_out += sent
            self._buffered -= sent
            if sent < len(chunk):
                self._buffer[0] = chunk[sent:]
                return
            self._buffer.popleft()
        self.reactor.remove_writer(self.fd)
        if self._paused and self._buffered <= WRITE_LOW_WATER:
            self._paused = False
            self.protocol.resume_writing()

    # --- reading ------------------------------------------------------------------------------
    def pause_reading(self) -> None:
        """Stop reading (the consumer is backed up): the kernel's receive buffer fills and TCP flow control
        holds the sender back. read_waiting() still reads (liveness checks)."""
        if not self.closed and not self.reading_paused:
            self.reading_paused = True
            self.reactor.remove_reader(self.fd)

    def resume_reading(self) -> None:
        if not self.closed and self.reading_paused:
            self.reading_paused = False
            self.reactor.add_reader(self.fd, self._on_readable)

    def _on_readable(self) -> None:
        try:
            data = self.sock.recv(READ_CHUNK)
        except self._would_block:
            return
        except OSError as exc:
            self._fatal(exc)
            return
        if not data:
            self.protocol.eof_received()
            self.close()
            return
        self.bytes_in += len(data)
        self.protocol.data_received(data)
        if not self.closed and self._tls and self.sock.pending():
            self.reactor.call_soon(self.read_waiting)  # decrypted bytes inside OpenSSL: epoll cannot see them

    def read_waiting(self) -> None:
        """Read what the socket holds now (one recv), outside a readiness event: bytes OpenSSL has
        decrypted already, and before a liveness check (unread bytes are not the peer's silence)."""
        if not self.closed:
            self._on_readable()

    # --- closing ------------------------------------------------------------------------------
    def _fatal(self, exc: OSError) -> None:
        if exc.errno not in (errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT):
            log.warning("socket error on fd %d: %s", self.fd, exc)
        self.close(exc)

    def close(self, exc: Exception | None = None) -> None:
        """Drop buffered data, unregister, close; calls protocol.connection_lost(exc) once. Before that,
        `undelivered_bytes` is set to the bytes given to write() that will never reach the peer: the
        userspace buffer, a write() that failed, and the kernel's part (_kernel_undelivered)."""
        if self.closed:
            return
        self.closed = True
        self.undelivered_bytes = self._buffered + self._unsent + self._kernel_undelivered(self._aborting)
        self.reactor.forget(self.fd)
        self._buffer.clear()
        self._buffered = 0
        self.sock.close()
        self.protocol.connection_lost(exc)

    def abort(self, exc: Exception | None = None) -> None:
        """close() with a RST (SO_LINGER 0) instead of a FIN: for a peer we gave up on (silent, slow,
        malformed). The kernel discards its send queue at once, so those bytes count as undelivered,
        rather than being retried for minutes towards a peer that is gone."""
        if self.closed:
            return
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ABORT)
            self._aborting = True
        except OSError as exc2:  # not a TCP socket (socketpair in tests): a plain close
            log.debug("fd %d: cannot set SO_LINGER 0: %s", self.fd, exc2)
        self.close(exc)

    def _kernel_undelivered(self, aborting: bool = False) -> int:
        """Bytes of the kernel send queue that will never reach the peer. TIOCOUTQ (== SIOCOUTQ) is, for
        TCP, write_seq - snd_una: sent-but-unacknowledged plus not-yet-sent, from sequence numbers, so
        still valid after a reset. It counts only if the connection is dead already (state CLOSE: reset,
        TCP_USER_TIMEOUT, keepalive) or our close() will reset it (abort(), or unread input: FIONREAD > 0); otherwise
        the kernel keeps sending the queue after close(), ending with a FIN, and its fate is unknown to
        us (the peer may still read it, or reset it). 0 for a TLS socket (the queue holds TLS record
        bytes, not the plaintext the caller counts) and for non-TCP sockets (AF_UNIX: TIOCOUTQ is
        memory, not bytes)."""
        sock = self.sock
        if _is_tls(sock) or sock.family not in (socket.AF_INET, socket.AF_INET6):
            return 0
        try:
            if not aborting and sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] != _TCP_CLOSE \
                    and self._ioctl_int(termios.FIONREAD) == 0:
                return 0
            return self._ioctl_int(termios.TIOCOUTQ)
        except OSError as exc:
            log.debug("fd %d: cannot read the kernel send queue at close: %s", self.fd, exc)
            return 0

    def _ioctl_int(self, request: int) -> int:
        return _INT.unpack(fcntl.ioctl(self.fd, request, bytes(4)))[0]
