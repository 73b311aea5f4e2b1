"""The connection of an MQTT peer to its broker: our non-blocking TCP connect and TLS handshake, paho on
the connected socket, paho's socket I/O in our reactor, and reconnecting with backoff; with several
brokers (a cluster: bridge.endpoints.brokers), every failed attempt or lost connection moves to the next
node of the list (round-robin), after the same backoff, so a dead node is tried once per round.

The TCP connect and the TLS handshake are ours, non-blocking in the reactor (bridge.security.tls
Handshake); paho gets the connected socket (_Client) and sends its CONNECT over it, so a broker that does
not answer never stalls the loop. Only resolving a host name (getaddrinfo) blocks, as for TCP peers.
paho-mqtt 2.x (callback API 2) runs without its thread: the socket is registered with add_reader /
add_writer (on_socket_open/close/register_write/unregister_write), loop_read() on readable, loop_write() on
writable, loop_misc() once a second. What paho queued in a pass is written in that same pass (write_now):
with an external loop paho only asks for write interest, which would leave every packet to the next pass.

Backoff: jittered exponential (bridge.endpoints.tcp.backoff_delay) over failed attempts; it starts again
from the shortest delay only after a connection that lasted STABLE_S, so two clients that keep taking
each other's session (one client id) do not reconnect every few milliseconds.
"""

from __future__ import annotations

import errno
import logging
import os
import socket

import paho.mqtt.client as paho

from bridge.core.reactor import Reactor
from bridge.core.stats import Counters
from bridge.endpoints.brokers import Broker, Failover
from bridge.endpoints.tcp import backoff_delay
from bridge.security.tls import Handshake, Tls, describe

log = logging.getLogger("bridge.endpoints.mqtt")

CONNECT_TIMEOUT_S = 3.0  # a TCP connect (non-blocking) not established by then fails (the next address, then
#                          a retry with backoff); a SYN into a dead link is retried by the kernel for minutes
STABLE_S = 10.0  # a connection that lasted this long resets the backoff (as for TCP peers, issue 15)
READ_PACKETS_PER_PASS = 256  # MQTT packets read per readable event: bounded, so our buses get their turn


class _Client(paho.Client):
    """paho's Client over a socket we connected (and secured) without blocking: reconnect() takes
    `ready_socket` instead of opening its own with a blocking create_connection and TLS handshake.
    loop_read(max_packets) reads at most max_packets packets (paho's own ignores its argument and reads as
    many as it has messages in flight). _create_socket, _packet_read and _loop_rc_handle are paho 2.x
    internals (paho is pinned <3): if a release changes them, every connection test fails
    (tests/test_mqtt.py; tests/test_mqtt_connect.py checks the loop never stalls and the read bound)."""

    ready_socket = None

    def _create_socket(self):
        sock, self.ready_socket = self.ready_socket, None
        if sock is None:
            raise OSError(errno.ENOTCONN, "canbridge: no connected socket for paho")
        return sock

    def loop_read(self, max_packets: int = 1):
        for _ in range(max(1, max_packets)):
            if self._sock is None:
                return paho.MQTT_ERR_NO_CONN
            rc = self._packet_read()
            if rc > 0:
                return self._loop_rc_handle(rc)
            if rc == paho.MQTT_ERR_AGAIN:
                break
        return paho.MQTT_ERR_SUCCESS


def read_password(path: str) -> str:
    """The password in `path`: its first line (never a password in a URL or on a command line)."""
    with open(path, encoding="utf-8") as f:
        return f.readline().rstrip("\r\n")


def new_client(version, client_id: str = "", *, username: str | None = None, password_file: str | None = None,
               tls=None, client_class=_Client) -> paho.Client:
    """The one place a paho client is made (the peer, and the backend tools: bridge/tools/live/mqtt_source.py,
    bridge/pycan/mqtt.py): callback API 2, the protocol of `version` (bridge.endpoints.mqtt_version), no
    automatic reconnect, the user name and the password read from password_file, TLS from an
    ssl.SSLContext. client_class: _Client (ours: the socket comes from Connection, never a blocking
    connect) or paho.Client (a tool that may block in paho's own connect)."""
    c = client_class(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=version.protocol,
                     reconnect_on_failure=False)
    if username is not None:
        c.username_pw_set(username, read_password(password_file) if password_file else None)
    if tls is not None:
        c.tls_set_context(tls)
    return c


class Connection:
    """One broker connection for `client` (a _Client) to one of `brokers` (bridge.endpoints.brokers.Broker,
    tried in turn): name for logs; counters get connect_failed / connect_refused; tls: an ssl.SSLContext or
    None (each node's certificate is checked against its own name); on_change(): gauges to refresh."""

    def __init__(self, reactor: Reactor, client: _Client, *, brokers: tuple[Broker, ...], tls, name: str,
                 counters: Counters, on_change) -> None:
        self.reactor, self.name, self.counters = reactor, name, counters
        self.failover = Failover(brokers)
        self._tls_context = tls
        self._tls = None
        self._on_change = on_change
        self.fd = -1
        self.last_error = ""
        self.closing = False
        self.attempt = 0
        self._retry = None
        self._pending = None  # (socket, remaining addresses, timeout timer) of a TCP connect in progress
        self._handshake = None  # a TLS handshake in progress
        self._up_at: float | None = None
        self.use(client)

    def use(self, client: _Client) -> None:
        """Drive `client` from now on (protocol=auto replaces the MQTT 5 client by a 3.1.1 one)."""
        self.client = client
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write

    @property
    def node(self) -> str:
        """The broker in use (or being tried): "n2:1883 (2 of 3)" with a list, "n1:1883" alone."""
        return self.failover.describe()

    # ------------------------------------------------------------------ paho socket <-> our reactor
    def _on_socket_open(self, client, userdata, sock) -> None:
        self.fd = sock.fileno()
        self.reactor.add_reader(self.fd, self.readable)

    def _on_socket_close(self, client, userdata, sock) -> None:
        if self.fd >= 0:
            self.reactor.forget(self.fd)
            self.fd = -1

    def _on_register_write(self, client, userdata, sock) -> None:
        if self.fd >= 0:
            self.reactor.add_writer(self.fd, self.client.loop_write)

    def _on_unregister_write(self, client, userdata, sock) -> None:
        if self.fd >= 0:
            self.reactor.remove_writer(self.fd)

    def readable(self) -> None:
        """Read up to READ_PACKETS_PER_PASS packets (a lost connection: paho closes, calls on_disconnect)."""
        self.client.loop_read(READ_PACKETS_PER_PASS)
        self.write_now()  # the PUBACKs (and anything else) the packets just read made paho queue
        sock = self.client.socket()
        if sock is not None and getattr(sock, "pending", None) and sock.pending():
            self.reactor.call_soon(self.readable)  # TLS holds decrypted bytes epoll will not signal again

    def write_now(self) -> None:
        """Hand what paho queued to the kernel now, in this loop pass. What does not fit stays queued,
        and paho keeps write interest for it."""
        if self.fd >= 0 and self.client.want_write():
            self.client.loop_write()

    def tick(self) -> None:
        if self.fd >= 0:
            self.client.loop_misc()  # keepalive PINGREQ, a silent broker noticed

    # ---------------------------------------------------------------------------- connecting
    def start(self) -> None:
        self._connect()

    def _connect(self) -> None:
        """Start a non-blocking TCP connect to the current broker's first address (then TLS, then paho's
        CONNECT)."""
        self._retry = None
        if self.closing:
            return
        broker = self.failover.current
        if self._tls_context is not None:
            self._tls = Tls(self._tls_context, server_side=False, server_hostname=broker.host)
        try:
            infos = socket.getaddrinfo(broker.host, broker.port, type=socket.SOCK_STREAM)
        except OSError as exc:
            self.failed("connect_failed", f"cannot connect: {exc}")
            return
        self._try_address([(info[0], info[4]) for info in infos], None)

    def _try_address(self, addresses: list, last_error: Exception | None) -> None:
        """Connect to addresses[0] (family, sockaddr); on failure the next; all failed: connect_failed."""
        while addresses:
            family, sockaddr = addresses.pop(0)
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            err = sock.connect_ex(sockaddr)
            if err in (0, errno.EINPROGRESS):
                timer = self.reactor.call_later(CONNECT_TIMEOUT_S, self._connect_timed_out)
                self._pending = (sock, addresses, timer)
                self.reactor.add_writer(sock.fileno(), self._on_tcp_connected)
                return
            sock.close()
            last_error = OSError(err, os.strerror(err))
        self.failed("connect_failed", f"cannot connect: {last_error}")

    def _drop_pending(self):
        """-> (socket, remaining addresses) of the connect in progress, no longer watched or timed."""
        sock, addresses, timer = self._pending
        self._pending = None
        timer.cancel()
        self.reactor.forget(sock.fileno())
        return sock, addresses

    def _connect_timed_out(self) -> None:
        sock, addresses = self._drop_pending()
        sock.close()
        self._try_address(addresses, TimeoutError(f"no answer from the broker in {CONNECT_TIMEOUT_S:g} s"))

    def _on_tcp_connected(self) -> None:
        sock, addresses = self._drop_pending()
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            sock.close()
            self._try_address(addresses, OSError(err, os.strerror(err)))
            return
        if self._tls is None:
            self._start_mqtt(sock)
            return
        self._handshake = Handshake(self.reactor, sock, self._tls, self.name, self._start_mqtt,
                                    self._on_tls_failed, quiet=True)

    def _on_tls_failed(self, reason: str) -> None:
        self._handshake = None
        self.failed("connect_failed", f"cannot connect: TLS handshake failed: {reason}")

    def _start_mqtt(self, sock) -> None:
        """The socket is connected (and secured): paho takes it and queues its CONNECT."""
        self._handshake = None
        self.client.ready_socket = sock
        try:
            self.client.reconnect()
        except (OSError, ValueError) as exc:
            self.failed("connect_failed", f"cannot connect: {describe(exc)}")

    # ---------------------------------------------------------------------------- state
    def up(self) -> None:
        """The broker accepted us (CONNACK)."""
        self._up_at = self.reactor.time()
        self.last_error = ""

    def down(self) -> float:
        """The connection ended (after a CONNACK or not): retry with backoff. -> how long it was up (s)."""
        lived = 0.0 if self._up_at is None else self.reactor.time() - self._up_at
        self._up_at = None
        if lived >= STABLE_S:
            self.attempt = 0
        self.schedule_retry()
        return lived

    def failed(self, slug: str, message: str) -> None:
        """An attempt failed: counted, logged when the reason changed, retried with backoff."""
        self.counters.errors[slug] += 1
        if message != self.last_error:
            log.warning("%s: %s", self.name, message)
        self.last_error = message
        self.schedule_retry()

    def schedule_retry(self, move: bool = True) -> None:
        """The next attempt after the backoff, to the next node of the list (move=False: the same one)."""
        if self.closing or self._retry is not None:
            return
        if move:
            self.failover.next()
        delay = backoff_delay(self.attempt)
        self.attempt += 1
        self._retry = self.reactor.call_later(delay, self._connect)
        self._on_change()

    def close(self) -> None:
        """Stop connecting (the caller sends its last packets first); forget and close the socket."""
        self.closing = True
        if self._retry is not None:
            self._retry.cancel()
        if self._pending is not None:
            self._drop_pending()[0].close()
        if self._handshake is not None:
            self._handshake.cancel()
            self._handshake = None

    def release(self) -> None:
        if self.fd >= 0:
            self.reactor.forget(self.fd)
            self.fd = -1
        sock = self.client.socket()
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
