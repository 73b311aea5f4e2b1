"""TLS for TCP peers (stdlib ssl): contexts from the peer's options (bridge/security/options.py) and a
non-blocking handshake driven by the reactor.

TcpServer and TcpClient take a `Tls`; each connected socket is wrapped with
`wrap_socket(do_handshake_on_connect=False)` and `do_handshake()` is retried on read/write readiness
(SSLWantReadError / SSLWantWriteError) until it succeeds, fails, or HANDSHAKE_TIMEOUT_S passes. Only then
does the wire start (StreamTransport copes with TLS sockets). A failure is logged with the peer's
address and reason (a server logs its refusals itself: the first per address and reason, then a
summary, bridge.endpoints.tcp.RefusalLog) and closes that connection only; the caller counts it
("tls_handshake_failed").

Checks: TLS 1.2 at least (1.3 preferred, OpenSSL's default); a client verifies the server's
certificate against tls_ca (system CAs without it) and its name (tls_server_name, else the URL host);
a server given tls_ca requires a client certificate signed by it (ssl.CERT_REQUIRED).
"""

from __future__ import annotations

import logging
import socket
import ssl

from bridge.errors import ConfigError
from bridge.core.reactor import Reactor
from bridge.security.options import Security

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_S = 10.0  # a peer that has not finished the handshake by then is closed (it holds a
# connection slot of the server's max_clients meanwhile, so this bounds how long a slow or silent one can)


class Tls:
    """What TcpServer/TcpClient need: context, side and the name a client checks."""

    def __init__(self, context: ssl.SSLContext, server_side: bool, server_hostname: str | None = None):
        self.context = context
        self.server_side = server_side
        self.server_hostname = server_hostname

    def handshake(self, reactor: Reactor, sock: socket.socket, name: str, on_done, on_failed,
                  quiet: bool = False) -> Handshake:
        """Start the handshake on connected `sock`; on_done(ssl_socket) or on_failed(reason) follows.
        quiet: a failure is not logged here (a server logs its refusals itself, rate-limited)."""
        return Handshake(reactor, sock, self, name, on_done, on_failed, quiet)


def for_peer(sec: Security, client: bool, host: str, where: str) -> Tls | None:
    """The Tls of a peer, or None if it has no TLS option. Loads the files now: ConfigError naming the
    option that cannot be applied (missing, unreadable, not PEM, key not matching the certificate)."""
    if not sec.tls:
        return None
    if client:
        return Tls(client_context(sec, where), False, sec.tls_server_name or host)
    return Tls(server_context(sec, where), True)


def _base(purpose: int) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def server_context(sec: Security, where: str) -> ssl.SSLContext:
    if not sec.tls_cert:
        raise ConfigError(f"{where}: a TLS server needs tls_cert (and tls_key unless the key is in that file)")
    ctx = _base(ssl.PROTOCOL_TLS_SERVER)
    _load_chain(ctx, sec, where)
    if sec.tls_ca:
        _load_ca(ctx, sec.tls_ca, where)
        ctx.verify_mode = ssl.CERT_REQUIRED  # mutual authentication: no certificate, no connection
    return ctx


def client_context(sec: Security, where: str) -> ssl.SSLContext:
    ctx = _base(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    if sec.tls_ca:
        _load_ca(ctx, sec.tls_ca, where)
    else:
        ctx.load_default_certs()
    if sec.tls_cert:
        _load_chain(ctx, sec, where)
    elif sec.tls_key:
        raise ConfigError(f"{where}: tls_key without tls_cert")
    return ctx


def _readable(path: str, key: str, where: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"{where}: {key}: cannot read {path}: {exc.strerror}") from None


def _no_password():
    raise ConfigError("encrypted private keys are not supported (no password prompt in a service)")


def _load_chain(ctx: ssl.SSLContext, sec: Security, where: str) -> None:
    _readable(sec.tls_cert, "tls_cert", where)
    if sec.tls_key:
        _readable(sec.tls_key, "tls_key", where)
    try:
        ctx.load_cert_chain(sec.tls_cert, sec.tls_key, password=_no_password)
    except ConfigError as exc:
        raise ConfigError(f"{where}: tls_key: {exc}") from None
    except ssl.SSLError as exc:
        what = "the key does not match the certificate" if "MISMATCH" in str(exc) else f"not usable PEM ({exc})"
        raise ConfigError(f"{where}: tls_cert/tls_key ({sec.tls_cert}, {sec.tls_key or 'key in tls_cert'}): "
                          f"{what}") from None


def _load_ca(ctx: ssl.SSLContext, path: str, where: str) -> None:
    _readable(path, "tls_ca", where)
    try:
        ctx.load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise ConfigError(f"{where}: tls_ca: {path} holds no usable PEM certificate ({exc})") from None


def describe(exc: Exception) -> str:
    """A short reason for the log: the verification message, OpenSSL's reason, or the OS error."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    return str(exc) or type(exc).__name__


class Handshake:
    """One handshake in progress. cancel() closes the socket (the server or client is closing)."""

    def __init__(self, reactor: Reactor, sock: socket.socket, tls: Tls, name: str, on_done, on_failed,
                 quiet: bool = False):
        self.reactor = reactor
        self.name = name
        self.quiet = quiet
        self._on_done = on_done
        self._on_failed = on_failed
        sock.setblocking(False)
        self.sock = tls.context.wrap_socket(sock, server_side=tls.server_side, do_handshake_on_connect=False,
                                            server_hostname=tls.server_hostname)
        self.fd = self.sock.fileno()
        self._timer = reactor.call_later(HANDSHAKE_TIMEOUT_S, self._timeout)
        reactor.add_writer(self.fd, self._step)  # writable at once: the first step runs in the next pass

    def _step(self) -> None:
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            self.reactor.remove_writer(self.fd)
            self.reactor.add_reader(self.fd, self._step)
            return
        except ssl.SSLWantWriteError:
            self.reactor.remove_reader(self.fd)
            self.reactor.add_writer(self.fd, self._step)
            return
        except OSError as exc:  # SSLError (certificate, protocol), ECONNRESET, EOF from a plain-TCP peer
            self._fail(describe(exc))
            return
        self._finish()
        log.info("%s: TLS established (%s, %s)", self.name, self.sock.version(), self.sock.cipher()[0])
        self._on_done(self.sock)

    def _timeout(self) -> None:
        self._fail(f"no handshake within {HANDSHAKE_TIMEOUT_S:.0f} s")

    def _fail(self, reason: str) -> None:
        if not self.quiet:
            log.warning("%s: TLS handshake failed: %s", self.name, reason)
        self.cancel()
        self._on_failed(reason)

    def _finish(self) -> None:
        self._timer.cancel()
        self.reactor.forget(self.fd)

    def cancel(self) -> None:
        if self.sock.fileno() < 0:  # closed already: its fd number may belong to another socket now
            return
        self._finish()
        self.sock.close()
