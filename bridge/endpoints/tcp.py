"""Frames over TCP: one connection endpoint per socket, a listening server, and a client that
reconnects with jittered exponential backoff. The protocol (native, cannelloni) is a stream wire
from bridge.protocols.native.

Frames queued for a connection wait un-encoded in `pending` until the end of the loop pass, then
leave in one write. While the socket's userspace write buffer is above its high watermark
(a slow consumer) frames stay in `pending`, which is bounded in frames and bytes: the oldest are
dropped ("queue_full") or, with overflow=disconnect, the connection is closed
("slow_consumer_disconnected"); frames that waited longer than max_age are dropped ("stale").
A silent peer is closed within `timeout` (bridge/endpoints/liveness.py: keepalive, TCP_USER_TIMEOUT,
heartbeats); a client holds frames routed while disconnected (bounded, max_age) for its next connection.
Frames already written (counted in tx_frames) that the peer never got when a connection closes are
dropped ("unacked_at_close"): see bridge/endpoints/ledger.py for what can and cannot be counted.
"""

from __future__ import annotations

import errno
import logging
import random
import socket
import time

from bridge.endpoints import liveness
from bridge.endpoints.ledger import WriteLedger, ledger_horizon
from bridge.endpoints.liveness import DEFAULT_LIMITS, PeerLimits
from bridge.endpoints.pending import PendingFrames
from bridge.errors import ProtocolError
from bridge.hw.cansock import SO_RCVBUFFORCE, SO_SNDBUFFORCE, set_buffer
from bridge.core.logsummary import SummarisedLog
from bridge.core.reactor import Reactor
from bridge.core.stats import Counters
from bridge.core.transport import StreamTransport

log = logging.getLogger(__name__)

MAX_CLIENTS = 64  # default max_clients (config.MAX_CLIENTS): connections a server holds at once; fds, memory
HEARTBEAT_S = liveness.HEARTBEAT_S  # longest gap between two things we send (HELLO heartbeat_ms)
BACKOFF_MIN_S = 0.1  # first reconnect delay (docs/cli.md: 0.1 s doubling to 5 s, times 0.5..1)
BACKOFF_MAX_S = 5.0  # cap: a server that is away is tried at least every 5 s
# A connection counts as a session (and resets the backoff) only if the peer greeted us (for TLS: both
# sides finished the handshake, since a TLS server sends its greeting only then) and it lasted
# SESSION_MIN_S: a server that refuses us (TLS failure, max_clients, a greeting it rejects) closes
# sooner, often after its own greeting, and must not bring back a reconnect every 0.1 s.
SESSION_MIN_S = 1.0
STABLE_S = 10.0  # connected this long counts as a session even without a greeting: not a storm
REFUSAL_KEYS_MAX = 1024  # (address, reason) pairs a server remembers to log once; a scan from more is summarised
REFUSAL_SUMMARY_S = 60.0  # later refusals: one summary line per this many seconds, not a line per attempt
SOCKET_BUFFER = 4 << 20  # SO_SNDBUF/SO_RCVBUF for peer sockets


class StreamPeer:
    """One TCP connection as a router endpoint (both directions); `wire` is its protocol."""

    def __init__(
        self,
        reactor: Reactor,
        sock: socket.socket,
        router,
        name: str,
        wire,
        on_closed=None,
        owner=None,
        routing=(None, None, None),
        policy: PeerLimits = DEFAULT_LIMITS,
    ):
        self.reactor = reactor
        self.router = router
        self.name = name
        self.counters = Counters()
        self.on_closed = on_closed
        self.wire = wire
        self.policy = policy
        self._pending = PendingFrames(self.counters, max_age=policy.max_age, overflow=policy.overflow)
        self._slow = False  # overflow=disconnect tripped; closing at the next loop step
        self.on_refused = None  # server connections: on_refused(ProtocolError) logs a bad greeting (rate-limited)
        self._peer: str | None = None  # describe_peer() once the peer greeted (not formatted again per read)
        self._last_rx = self._last_tx = time.monotonic()
        _tune(sock, policy)
        self._ledger = WriteLedger(ledger_horizon(sock))
        self.transport = StreamTransport(reactor, sock, self)
        self._write(wire.greeting())
        self._timer = reactor.call_every(liveness.check_interval(policy.timeout), self._tick)
        # A TcpClient is the router's peer across reconnects (so frames sent while it is down
        # are counted); its connections route as the client. Server connections route as self.
        self.owner = owner or self
        if owner is None:
            router.add_peer(self, *routing)

    @property
    def closed(self) -> bool:
        return self.transport.closed

    @property
    def identified(self) -> bool:
        """The peer sent a valid greeting (HELLO, banner): a bridge, not a port scanner or a stuck client."""
        return self.wire.describe_peer() is not None

    # --- bus -> network -----------------------------------------------------------------
    def send_frames(self, channel: int, frames: list) -> int:
        if self.transport.closed:
            self.counters.drop("not_connected", len(frames))
            return 0
        if self._slow:
            self.counters.drop("slow_consumer_disconnected", len(frames))
            return 0
        if len(frames) == 1 and not self._pending and not self.transport.paused:
            # a lone frame (a quiet bus) leaves now: the pending queue and the end-of-pass flush are
            # for merging batches, and with one frame in flight every step is latency
            self._send_batches([(channel, frames)], 1)
            return 1
        if not self._pending.append(channel, frames):  # overflow=disconnect: a slow consumer
            self._slow = True  # closed from the loop, not here: the router is iterating its peers
            self.reactor.call_soon(self._disconnect_slow_consumer)
            return 0
        return len(frames)

    def _disconnect_slow_consumer(self) -> None:
        if self.transport.closed:
            return
        self.counters.errors["slow_consumer_disconnected"] += 1
        log.warning("%s: slow consumer, %d frames / %d bytes queued: disconnecting (overflow=disconnect)",
                    self.name, self._pending.frames, self._pending.bytes)
        self._pending.discard("slow_consumer_disconnected")
        self.transport.abort()

    def flush(self) -> None:
        if not self._pending or self.transport.paused or self.transport.closed:
            return
        batches = self._pending.take()  # drops (and counts) the stale ones
        count = sum(len(frames) for _ch, frames in batches)
        if count:
            self._send_batches(batches, count)

    def _send_batches(self, batches: list, count: int) -> None:
        """Encode [(channel, frames)] holding `count` frames and write them in one write (counted)."""
        encode = self.wire.encode
        try:
            if len(batches) == 1:  # a lone frame or one pass's batch: no list, no join
                data = encode(*batches[0])
            else:
                data = b"".join([encode(ch, frames) for ch, frames in batches])
        except ValueError as exc:  # a frame no kernel would hand us: count the batch, keep the peer
            log.error("%s: cannot encode %d frames: %s", self.name, count, exc)
            self.counters.drop("unencodable", count)
            return
        self.counters.tx_frames += count
        self.counters.tx_bytes += len(data)
        self._write(data, count)
        self._last_tx = time.monotonic()  # after the send: with one frame in flight the clock read is latency

    def _write(self, data: bytes, frames: int = 0) -> None:
        """transport.write(data), recorded in the ledger (for dropped{unacked_at_close})."""
        self._ledger.record(len(data), frames)
        self.transport.write(data)

    # --- network -> bus (transport protocol) ---------------------------------------------
    def data_received(self, data: bytes) -> None:
        self.counters.rx_bytes += len(data)
        self._feed(data)
        self._last_rx = time.monotonic()  # after the work: a slow pass here is not the peer's silence

    def eof_received(self) -> None:
        self._feed(b"")

    def _feed(self, data: bytes) -> None:
        greeted = self._peer
        try:
            batches = self.wire.feed(data)
        except ProtocolError as exc:
            self.counters.errors[exc.reason] += 1
            if greeted is None and self.on_refused is not None:  # never greeted: a refusal (the server's log)
                self.on_refused(exc)
            else:
                log.warning("%s: closing connection, malformed stream: %s", self.name, exc)
            self.transport.abort()
            return
        if greeted is None and (peer := self.wire.describe_peer()):
            log.info("%s: peer is %s", self.name, peer)
            self.counters.gauges["peer"] = self._peer = peer
        for channel, frames in batches:
            self.counters.rx_frames += len(frames)
            self.router.from_peer(self.owner, channel, frames)
            bus = self.router.buses.get(channel)
            if getattr(bus, "backlogged", False) and not self.transport.closed:
                # the bus's TX queue is backed up (a real controller draining at bus speed): stop reading, so
                # TCP holds the sender back instead of the bus queue dropping (socketcan.TX_BACKLOG_HIGH)
                self.transport.pause_reading()
                self.counters.gauges["read_pauses"] = self.counters.gauges.get("read_pauses", 0) + 1
                bus.when_drained(self.transport.resume_reading)

    def pause_writing(self) -> None:
        self.counters.gauges["paused"] = True

    def resume_writing(self) -> None:
        self.counters.gauges["paused"] = False
        self.flush()

    def connection_lost(self, exc) -> None:
        self._timer.cancel()
        if self.owner is self:
            self.router.remove_peer(self)
        self._pending.discard("connection_closed")
        if isinstance(exc, OSError) and exc.errno:  # ETIMEDOUT: TCP_USER_TIMEOUT or keepalive gave up on the peer
            self.counters.errors[errno.errorcode.get(exc.errno, "oserror")] += 1
        self._ledger.close(self.transport.undelivered_bytes, self.counters, self.name)
        # a connection that never greeted (refused, a scanner) is told by the refusal log, not a line per attempt
        (log.info if self.identified else log.debug)("%s: connection closed%s", self.name, f" ({exc})" if exc else "")
        if self.on_closed:
            self.on_closed(self)

    # --- liveness ---------------------------------------------------------------------------
    def _silent(self, now: float) -> bool:
        """The peer sends heartbeats, and nothing came for silence_limit(timeout)."""
        return self.wire.has_heartbeat and now - self._last_rx > liveness.silence_limit(self.policy.timeout)

    def _tick(self) -> None:
        now = time.monotonic()
        timeout = self.policy.timeout
        if self._silent(now):
            # bytes waiting unread in our own socket (a long loop pass) are not the peer's silence
            self.transport.read_waiting()
            if self.transport.closed:
                return
        if self._silent(now):
            self.counters.errors["peer_timeout"] += 1
            log.warning("%s: no data for %.1f s (timeout %g s), closing", self.name, now - self._last_rx, timeout)
            self.transport.abort()  # a RST: the send queue is dropped now (and counted), not retried for minutes
            return
        if liveness.heartbeat_due(now, self._last_tx, timeout):
            self._last_tx = now
            self._write(self.wire.heartbeat(time.time_ns()))
        if self._pending:
            self._pending.drop_stale()  # count them while the consumer is stalled, not only when it resumes
        self.counters.gauges.update(self._pending.gauges(), write_buffer=self.transport.write_buffer_size)

    def close(self) -> None:
        self.transport.close()


def backoff_delay(attempt: int, rng=random) -> float:
    """Seconds to wait before reconnect attempt `attempt` (0: the first after a loss or a refusal):
    BACKOFF_MIN_S doubling per attempt up to BACKOFF_MAX_S, times a random 0.5..1, so that clients that
    lost the same server do not come back in step."""
    return min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2 ** min(attempt, 16)) * rng.uniform(0.5, 1.0)


class RefusalLog(SummarisedLog):
    """Log lines for connections a server refuses (TLS handshake failed, max_clients, malformed greeting).

    The first refusal of each (address, reason) is logged in full; later ones are counted and told in one
    summary line at most every `interval` seconds (a misconfigured client retrying for hours, or a scan,
    cannot flood the log). The counters (errors{...}) count every refusal regardless."""

    def __init__(self, reactor: Reactor, name: str, interval: float = REFUSAL_SUMMARY_S):
        super().__init__(reactor, name, interval, REFUSAL_KEYS_MAX)
        self._pending: dict = {}  # reason -> refusals since the last summary
        self._hosts: set = set()  # hosts of those, at most REFUSAL_KEYS_MAX (counted, not listed)

    def refused(self, addr, reason: str, line: str, kind: str | None = None) -> None:
        """The connection from `addr` (host, port) was refused: `reason` is its counter slug, `line` the
        log text; `kind` (default: reason) tells refusals apart that deserve a line each (TLS: why)."""
        host = addr[0]
        if self.first((host, kind or reason)):
            log.warning("%s<-%s: %s (first refusal of this address for this reason; more are summarised every "
                        "%g s)", self.name, _fmt_addr(addr), line, self.interval)
            return
        self._pending[reason] = self._pending.get(reason, 0) + 1
        if len(self._hosts) < REFUSAL_KEYS_MAX:
            self._hosts.add(host)

    def _summarise(self) -> bool:
        if not self._pending:
            return False
        total = sum(self._pending.values())
        what = ", ".join(f"{reason} {n}" for reason, n in sorted(self._pending.items()))
        log.warning("%s: %d more connections refused (%s) from %d address%s", self.name, total, what,
                    len(self._hosts), "" if len(self._hosts) == 1 else "es")
        self._pending.clear()
        self._hosts.clear()
        return True


class TcpServer:
    """`tcp-listen://addr:port` (and the other listening schemes): accepts up to MAX_CLIENTS
    connections, each fed independently. make_peer(sock, name, on_closed) builds the endpoint of
    one connection; `stream_peers(...)` makes one for a stream wire."""

    def __init__(self, reactor: Reactor, router, addr: tuple[str, int], make_peer, max_clients=MAX_CLIENTS,
                 scheme="tcp-listen", tls=None):
        self.reactor = reactor
        self.router = router
        self.make_peer = make_peer
        self.tls = tls  # bridge.security.tls.Tls: each connection is a TLS server side; make_peer gets the TLS socket
        self.handshakes: list = []  # TLS handshakes in progress; they count against max_clients
        self.max_clients = max_clients
        self.name = f"{scheme}://{_fmt_addr(addr)}"
        self.counters = Counters()
        # closed connections that never sent a valid greeting (scanners, clients stuck before their HELLO):
        # their counts (frames queued for them and dropped) are kept apart from the bridges' own
        self.unidentified = Counters()
        self.clients: list = []
        self.refusals = RefusalLog(reactor, self.name)
        family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind(addr)
            self.sock.listen(16)
        except OSError:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        self.address = self.sock.getsockname()[:2]
        reactor.add_reader(self.sock.fileno(), self._on_accept)

    def _on_accept(self) -> None:
        for _ in range(16):
            try:
                sock, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: log, keep listening
                self.counters.errors[errno.errorcode.get(exc.errno, "accept")] += 1
                log.warning("%s: accept failed: %s", self.name, exc)
                return
            # accepted and closed at once: the client sees EOF. TLS handshakes in progress hold a slot too.
            if len(self.clients) + len(self.handshakes) >= self.max_clients:
                self.counters.errors["refused_max_clients"] += 1
                self.refusals.refused(addr, "refused_max_clients", f"refused: max_clients {self.max_clients} reached")
                sock.close()
                continue
            name = f"{self.name}<-{_fmt_addr(addr)}"
            # at info once the peer greets ("peer is ..."): a client the server refuses is not a line per attempt
            log.debug("%s: client connected", name)
            self.counters.gauges["accepted"] = self.counters.gauges.get("accepted", 0) + 1
            if self.tls is not None:
                self._start_tls(sock, name, addr)
                continue
            self._add_client(sock, name, addr)

    def _add_client(self, sock, name: str, addr) -> None:
        peer = self.make_peer(sock, name, self._on_client_closed)
        if isinstance(peer, StreamPeer):  # a greeting it cannot parse is a refusal: logged by self.refusals
            peer.on_refused = lambda why: self.refusals.refused(addr, why.reason, f"closing connection, "
                                                                f"malformed stream: {why}")
        self.clients.append(peer)

    def _start_tls(self, sock: socket.socket, name: str, addr) -> None:
        """The peer starts once the handshake succeeds; a failure closes this connection only."""

        def done(tls_sock):
            self.handshakes.remove(handshake)
            self._add_client(tls_sock, name, addr)

        def failed(reason):
            self.handshakes.remove(handshake)
            self.counters.errors["tls_handshake_failed"] += 1
            self.refusals.refused(addr, "tls_handshake_failed", f"TLS handshake failed: {reason}", kind=reason)

        handshake = self.tls.handshake(self.reactor, sock, name, done, failed, quiet=True)
        self.handshakes.append(handshake)

    def _on_client_closed(self, peer) -> None:
        if peer in self.clients:
            self.clients.remove(peer)
        _merge(self.counters if getattr(peer, "identified", True) else self.unidentified, peer.counters)

    def close(self) -> None:
        self.refusals.summary()
        for handshake in self.handshakes:
            handshake.cancel()
        for peer in list(self.clients):
            peer.close()
        self.reactor.forget(self.sock.fileno())
        self.sock.close()


def stream_peers(reactor: Reactor, router, new_wire, routing=(None, None, None), policy: PeerLimits = DEFAULT_LIMITS):
    """make_peer for TcpServer: a StreamPeer with a fresh wire from new_wire() per connection."""

    def make_peer(sock, name, on_closed):
        return StreamPeer(reactor, sock, router, name, new_wire(), on_closed, routing=routing, policy=policy)

    return make_peer


class TcpClient:
    """`tcp://host:port`: connects, and reconnects after any loss with jittered exponential
    backoff (backoff_delay: BACKOFF_MIN_S doubling up to BACKOFF_MAX_S, times a random 0.5..1 factor).
    The backoff starts again from BACKOFF_MIN_S only after a real session (see SESSION_MIN_S): a
    connection the server refuses counts as a failed attempt, whatever TCP or our TLS side said."""

    def __init__(self, reactor: Reactor, router, addr: tuple[str, int], new_wire, routing=(None, None, None),
                 scheme="tcp", policy: PeerLimits = DEFAULT_LIMITS, tls=None):
        self.reactor = reactor
        self.tls = tls  # bridge.security.tls.Tls: each connection is a TLS client side
        self._handshake = None
        self.policy = policy
        self.router = router
        self.addr = addr
        self.new_wire = new_wire
        self.name = f"{scheme}://{_fmt_addr(addr)}"
        self.counters = Counters()  # totals over all connections
        # Frames routed while disconnected wait here (bounded; overflow counted "not_connected") and
        # leave on the next connection unless older than max_age by then ("stale"): no replay of old frames.
        self._backlog = PendingFrames(self.counters, max_age=policy.max_age, full_reason="not_connected")
        self.peer: StreamPeer | None = None
        self.reconnects = 0
        self._attempt = 0
        self._connected_at = 0.0  # monotonic time the current connection's wire started
        self._sock: socket.socket | None = None
        self._timer = None
        self._closed = False
        router.add_peer(self, *routing)
        self._connect()

    def send_frames(self, channel: int, frames: list) -> int:
        if self.peer is None or self.peer.closed:
            self._backlog.drop_stale()
            self._backlog.append(channel, frames)
            self.counters.gauges.update(self._backlog.gauges())
            return len(frames)
        return self.peer.send_frames(channel, frames)

    def flush(self) -> None:
        if self.peer is not None:
            self.peer.flush()

    def _connect(self) -> None:
        self._timer = None
        try:
            infos = socket.getaddrinfo(self.addr[0], self.addr[1], type=socket.SOCK_STREAM)
            family, _, _, _, sockaddr = infos[0]
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:
            self._retry(exc)
            return
        sock.setblocking(False)
        err = sock.connect_ex(sockaddr)
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            self._retry(OSError(err, errno.errorcode.get(err, "")))
            return
        self._sock = sock
        self.reactor.add_writer(sock.fileno(), self._on_connected)
        # a SYN into a pulled cable is retried by the kernel for minutes: give up within the bound
        self._timer = self.reactor.call_later(self.policy.timeout, self._connect_timed_out)

    def _connect_timed_out(self) -> None:
        sock, self._sock = self._sock, None
        self.reactor.forget(sock.fileno())
        sock.close()
        self._retry(TimeoutError(f"no answer in {self.policy.timeout:g} s"))

    def _on_connected(self) -> None:
        self._timer.cancel()
        self._timer = None
        sock, self._sock = self._sock, None
        self.reactor.forget(sock.fileno())
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            sock.close()
            self._retry(OSError(err, errno.errorcode.get(err, "")))
            return
        if self.tls is not None:  # the wire starts once the handshake succeeds
            self._handshake = self.tls.handshake(self.reactor, sock, self.name, self._on_secured, self._on_tls_failed)
            return
        self._on_secured(sock)

    def _on_tls_failed(self, reason: str) -> None:  # logged by bridge.security.tls
        self._handshake = None
        self.counters.errors["tls_handshake_failed"] += 1
        self._retry(None)

    def _on_secured(self, sock) -> None:
        self._handshake = None
        self._connected_at = time.monotonic()  # the backoff is reset at the loss if this became a session
        log.info("%s: connected", self.name)
        self.peer = StreamPeer(self.reactor, sock, self.router, self.name, self.new_wire(), self._on_lost, owner=self,
                               policy=self.policy)
        if self._backlog:
            self._backlog.drop_stale()  # counted here, on the client, not on the new connection
            self._backlog.move_to(self.peer._pending)
            self.counters.gauges.update(self._backlog.gauges())
            self.peer.flush()

    def _on_lost(self, peer) -> None:
        _merge(self.counters, peer.counters)
        self.peer = None
        lived = time.monotonic() - self._connected_at
        session = (peer.identified and lived >= SESSION_MIN_S) or lived >= STABLE_S
        if session:
            self._attempt = 0
        elif not self._closed:  # not our own close()
            self.counters.errors["refused_by_peer"] += 1
        if not self._closed:
            self.reconnects += 1
            self.counters.gauges["reconnects"] = self.reconnects
            self._retry(None if session else f"closed by the peer after {lived:.2f} s"
                        f"{'' if peer.identified else ', before its greeting'}: refused")

    def _retry(self, exc) -> None:
        delay = backoff_delay(self._attempt)
        self._attempt = min(self._attempt + 1, 16)
        if exc is not None:
            log.info("%s: connect failed (%s), retry in %.2f s", self.name, exc, delay)
        self._timer = self.reactor.call_later(delay, self._connect)

    def close(self) -> None:
        self._closed = True
        self.router.remove_peer(self)
        if self._timer is not None:
            self._timer.cancel()
        if self._sock is not None:
            self.reactor.forget(self._sock.fileno())
            self._sock.close()
        if self._handshake is not None:
            self._handshake.cancel()
        if self.peer is not None:
            self.peer.close()


def _tune(sock: socket.socket, policy: PeerLimits = DEFAULT_LIMITS) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    set_buffer(sock, socket.SO_SNDBUF, SO_SNDBUFFORCE, policy.sndbuf or SOCKET_BUFFER)
    set_buffer(sock, socket.SO_RCVBUF, SO_RCVBUFFORCE, SOCKET_BUFFER)
    liveness.set_dead_peer_timeout(sock, policy.timeout)


def _merge(total: Counters, part: Counters) -> None:
    """Fold a closed connection's counters into its server's or client's totals."""
    total.rx_frames += part.rx_frames
    total.tx_frames += part.tx_frames
    total.rx_bytes += part.rx_bytes
    total.tx_bytes += part.tx_bytes
    total.dropped.update(part.dropped)
    total.errors.update(part.errors)


def _fmt_addr(addr) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
