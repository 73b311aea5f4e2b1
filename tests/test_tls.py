"""TLS on TCP peers over real loopback sockets: TcpServer and TcpClient in one Reactor, each side with its
own Router and a recording bus, certificates made at test time (tests/pki.py)."""

from __future__ import annotations

import socket
import ssl

import pytest

from bridge.codec import native
from bridge.codec import socketcan as sc
from bridge.core.reactor import Reactor
from bridge.core.router import Router
from bridge.daemon.config import parse_peer_url
from bridge.endpoints.tcp import TcpClient, TcpServer, stream_peers
from bridge.errors import ConfigError
from bridge.protocols import native as wire
from bridge.security import tls
from bridge.security.options import Security
from tests.helpers import HELLO, run_until  # noqa: E402
from tests.pki import make_pki
from tests.test_transport import Proto  # the recording protocol object


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


class Bus:
    """Stands in for a SocketCAN endpoint on channel 0: records what the router writes to it."""

    channel = 0

    def __init__(self):
        self.frames = []

    def send_frames(self, channel, frames):
        self.frames.extend(frames)
        return len(frames)


class Side:
    def __init__(self, reactor):
        self.router = Router(reactor)
        self.bus = Bus()
        self.router.add_bus(self.bus)


def new_wire():
    return wire.NativeStream(HELLO)




def server_tls(pki, ca=True):
    sec = Security(tls_cert=pki["server_cert"], tls_key=pki["server_key"], tls_ca=pki["ca"] if ca else None)
    return tls.for_peer(sec, False, "127.0.0.1", "test server")


def client_tls(pki, cert="client", ca="ca", server_name=None):
    sec = Security(tls_cert=pki[f"{cert}_cert"] if cert else None, tls_key=pki[f"{cert}_key"] if cert else None,
                   tls_ca=pki[ca], tls_server_name=server_name)
    return tls.for_peer(sec, True, "127.0.0.1", "test client")


def frames(n, start=0x100, fd=False):
    pack = (lambda i: sc.pack_canfd(start + i % 0x100, i.to_bytes(4, "big") * 16)) if fd else \
        (lambda i: sc.pack_can(start + i % 0x100, i.to_bytes(4, "big")))
    return [(pack(i), 1_700_000_000_000_000_000 + i) for i in range(n)]


@pytest.fixture
def pair():
    """(reactor, server side, server) with TLS on; client connects via connect(tls=...)."""
    reactor = Reactor()
    made = []

    def start(server_tls_obj):
        srv = Side(reactor)
        server = TcpServer(reactor, srv.router, ("127.0.0.1", 0), stream_peers(reactor, srv.router, new_wire),
                           tls=server_tls_obj)
        made.append(server)
        return srv, server

    def connect(server, client_tls_obj):
        cli = Side(reactor)
        client = TcpClient(reactor, cli.router, tuple(server.address), new_wire, tls=client_tls_obj)
        made.append(client)
        return cli, client

    yield reactor, start, connect
    for ep in made:
        ep.close()
    reactor.close()


def test_mutual_tls_carries_frames_both_ways_in_order(pki, pair):
    reactor, start, connect = pair
    srv, server = start(server_tls(pki))
    cli, client = connect(server, client_tls(pki))
    assert run_until(reactor, lambda: server.clients and client.peer is not None)
    peer = server.clients[0]
    assert peer.transport.sock.version() in ("TLSv1.3", "TLSv1.2")
    assert peer.transport.sock.getpeercert()["subject"] == ((("commonName", "canbridge client"),),)
    up, down = frames(3000, fd=True), frames(500, start=0x200)  # ~250 kB up: many TLS records, WANT_WRITE
    cli.router.from_bus(cli.bus, 0, up)
    srv.router.from_bus(srv.bus, 0, down)
    reactor.run_once(0)
    assert run_until(reactor, lambda: len(srv.bus.frames) >= len(up) and len(cli.bus.frames) >= len(down))
    assert srv.bus.frames == up
    assert cli.bus.frames == down
    assert server.counters.errors["tls_handshake_failed"] == 0


def test_server_without_tls_ca_accepts_a_client_without_certificate(pki, pair):
    reactor, start, connect = pair
    srv, server = start(server_tls(pki, ca=False))
    cli, client = connect(server, client_tls(pki, cert=None))
    assert run_until(reactor, lambda: server.clients and client.peer is not None)
    cli.router.from_bus(cli.bus, 0, frames(5))
    reactor.run_once(0)
    assert run_until(reactor, lambda: len(srv.bus.frames) == 5)


@pytest.mark.parametrize("who", ["no_certificate", "rogue_ca", "plain_tcp"])
def test_unauthenticated_client_cannot_connect_nor_inject(pki, pair, who):
    reactor, start, connect = pair
    srv, server = start(server_tls(pki))
    bad_tls = {"no_certificate": client_tls(pki, cert=None), "rogue_ca": client_tls(pki, cert="rogue"),
               "plain_tcp": None}[who]
    bad, bad_client = connect(server, bad_tls)
    good, good_client = connect(server, client_tls(pki))
    for _ in range(3):  # let the bad one fail and retry a few times while it keeps sending frames
        assert run_until(reactor, lambda n=server.counters.errors["tls_handshake_failed"]:
                  server.counters.errors["tls_handshake_failed"] > n)
        bad.router.from_bus(bad.bus, 0, frames(10, start=0x666))
        good.router.from_bus(good.bus, 0, frames(10))
        reactor.run_once(0)
    assert run_until(reactor, lambda: len(srv.bus.frames) >= 30)
    reactor.run_once(0.2)
    assert {sc.can_id_of(raw) for raw, _ in srv.bus.frames} == set(range(0x100, 0x10A))  # none of 0x666..
    assert len(server.clients) == 1 and server.clients[0].counters.rx_frames >= 30  # only the good client


def test_client_refuses_a_server_signed_by_another_ca(pki, pair):
    reactor, start, connect = pair
    srv, server = start(server_tls(pki))
    cli, client = connect(server, client_tls(pki, ca="rogue_ca"))
    assert run_until(reactor, lambda: client.counters.errors["tls_handshake_failed"] >= 1)
    assert client.peer is None


def test_client_checks_the_server_name(pki, pair):
    reactor, start, connect = pair
    srv, server = start(server_tls(pki))
    cli, client = connect(server, client_tls(pki, server_name="not-the-server.example"))
    assert run_until(reactor, lambda: client.counters.errors["tls_handshake_failed"] >= 1)
    _, ok_client = connect(server, client_tls(pki, server_name="localhost"))  # a name in the certificate
    assert run_until(reactor, lambda: ok_client.peer is not None)


def test_silent_connection_is_closed_after_the_handshake_timeout(pki, pair, monkeypatch):
    monkeypatch.setattr(tls, "HANDSHAKE_TIMEOUT_S", 0.5)
    reactor, start, _connect = pair
    srv, server = start(server_tls(pki))
    silent = socket.create_connection(tuple(server.address))
    try:
        assert run_until(reactor, lambda: server.handshakes)
        assert run_until(reactor, lambda: server.counters.errors["tls_handshake_failed"] == 1)
        assert not server.handshakes and not server.clients
        silent.settimeout(5)
        assert silent.recv(100) == b""  # the server closed it
    finally:
        silent.close()


def test_garbage_instead_of_client_hello_is_counted(pki, pair):
    reactor, start, _connect = pair
    srv, server = start(server_tls(pki))
    with socket.create_connection(tuple(server.address)) as s:
        s.sendall(native.STREAM_PREAMBLE + native.encode_hello(HELLO) + native.encode_frames(0, frames(3)))
        assert run_until(reactor, lambda: server.counters.errors["tls_handshake_failed"] == 1)
    assert srv.bus.frames == []


def test_stdlib_ssl_client_talks_to_the_server(pki, pair):
    """Interop with a blocking ssl client: it gets our greeting and can send a frame."""
    reactor, start, _connect = pair
    srv, server = start(server_tls(pki))
    ctx = ssl.create_default_context(cafile=pki["ca"])
    ctx.load_cert_chain(pki["client_cert"], pki["client_key"])
    raw = socket.create_connection(tuple(server.address))
    raw.setblocking(False)
    s = ctx.wrap_socket(raw, server_hostname="127.0.0.1", do_handshake_on_connect=False)
    try:
        def handshake_done():
            try:
                s.do_handshake()
                return True
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return False
        assert run_until(reactor, handshake_done)
        s.setblocking(True)
        s.sendall(native.STREAM_PREAMBLE + native.encode_hello(HELLO) + native.encode_frames(0, frames(2)))
        assert run_until(reactor, lambda: len(srv.bus.frames) == 2)
        s.setblocking(False)
        got = b""

        def greeting_arrived():
            nonlocal got
            try:
                got += s.recv(4096)
            except ssl.SSLWantReadError:
                pass
            return len(got) >= len(native.STREAM_PREAMBLE)
        assert run_until(reactor, greeting_arrived)
        assert got.startswith(native.STREAM_PREAMBLE)
    finally:
        s.close()


# --- options --------------------------------------------------------------------------------------
def test_tls_options_in_urls(pki):
    peer = parse_peer_url(f"tcp://10.0.0.1:29600?tls_cert={pki['client_cert']}&tls_key={pki['client_key']}"
                          f"&tls_ca={pki['ca']}&tls_server_name=gw.example")
    assert peer.security.tls and peer.security.tls_server_name == "gw.example"
    t = tls.for_peer(peer.security, peer.protocol.tls_client, peer.host, "x")
    assert not t.server_side and t.server_hostname == "gw.example"
    assert t.context.minimum_version == ssl.TLSVersion.TLSv1_2
    srv = parse_peer_url(f"tcp-listen://:29600?tls_cert={pki['server_cert']}&tls_key={pki['server_key']}"
                         f"&tls_ca={pki['ca']}")
    t = tls.for_peer(srv.security, srv.protocol.tls_client, srv.host, "x")
    assert t.server_side and t.context.verify_mode == ssl.CERT_REQUIRED
    assert tls.for_peer(parse_peer_url("tcp://h:1").security, True, "h", "x") is None
    plain_host = parse_peer_url(f"cannelloni+tcp://gw:20000?tls_ca={pki['ca']}")
    plain = tls.for_peer(plain_host.security, plain_host.protocol.tls_client, plain_host.host, "x")
    assert plain.server_hostname == "gw"


@pytest.mark.parametrize("url, words", [
    ("udp://h:1?tls_cert=/x", "tls_cert is an option of"),
    ("tcp-listen://:1?tls_server_name=a", "tls_server_name is a client option"),
    ("tcp://h:1?tls_ca=", "tls_ca: expected a non-empty string"),
])
def test_misplaced_tls_options_name_the_key(url, words):
    with pytest.raises(ConfigError, match=words):
        parse_peer_url(url)


def test_unusable_files_are_config_errors_naming_the_option(pki, tmp_path):
    missing = str(tmp_path / "nope.pem")
    cases = [
        (Security(tls_cert=missing, tls_key=pki["server_key"]), "tcp-listen", "tls_cert: cannot read"),
        (Security(tls_cert=pki["server_cert"], tls_key=missing), "tcp-listen", "tls_key: cannot read"),
        (Security(tls_cert=pki["server_cert"], tls_key=pki["client_key"]), "tcp-listen", "does not match"),
        (Security(tls_cert=pki["server_cert"], tls_key=pki["server_key"], tls_ca=missing), "tcp-listen",
         "tls_ca: cannot read"),
        (Security(tls_cert=pki["server_cert"], tls_key=pki["server_key"], tls_ca=pki["server_key"]), "tcp-listen",
         "tls_ca: .* no usable PEM"),
        (Security(tls_ca=pki["ca"]), "tcp-listen", "needs tls_cert"),
        (Security(tls_key=pki["client_key"], tls_ca=pki["ca"]), "tcp", "tls_key without tls_cert"),
    ]
    for sec, scheme, words in cases:
        with pytest.raises(ConfigError, match=words):
            tls.for_peer(sec, scheme == "tcp", "127.0.0.1", "peer")


def test_toml_tls_keys(pki, tmp_path):
    from bridge.daemon.config import load_toml

    path = tmp_path / "bridge.toml"
    path.write_text(f'[[interface]]\nname = "vcan0"\n[[peer]]\nurl = "tcp-listen://0.0.0.0:29600"\n'
                    f'tls_cert = "{pki["server_cert"]}"\ntls_key = "{pki["server_key"]}"\ntls_ca = "{pki["ca"]}"\n')
    peer = load_toml(str(path)).peers[0]
    assert peer.security.tls_ca == pki["ca"]
    path.write_text('[[interface]]\nname = "vcan0"\n[[peer]]\nurl = "udp://10.0.0.2:29601"\ntls_ca = "x"\n')
    with pytest.raises(ConfigError, match="tls_ca is an option of"):
        load_toml(str(path))


# --- the transport on TLS sockets -----------------------------------------------------------------
@pytest.mark.parametrize("read_chunk", [None, 1000])
def test_transport_over_tls_with_tiny_socket_buffers(pki, monkeypatch, read_chunk):
    """4 KiB socket buffers: sends hit SSLWantWriteError mid-record, reads hit SSLWantReadError on partial
    records. 3 MB must arrive complete and in order both ways, without the transport closing. With
    recv() smaller than a TLS record (16 KiB), the rest waits decrypted inside OpenSSL (pending()), where
    epoll cannot see it: the transport must read it anyway."""
    from bridge.core import transport
    from bridge.core.transport import StreamTransport

    if read_chunk:
        monkeypatch.setattr(transport, "READ_CHUNK", read_chunk)

    reactor = Reactor()
    a, b = socket.socketpair()
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    done = {}
    server_tls(pki).handshake(reactor, a, "server", lambda s: done.setdefault("a", s), pytest.fail)
    client_tls(pki).handshake(reactor, b, "client", lambda s: done.setdefault("b", s), pytest.fail)
    assert run_until(reactor, lambda: len(done) == 2)
    pa, pb = Proto(), Proto()
    ta, tb = StreamTransport(reactor, done["a"], pa), StreamTransport(reactor, done["b"], pb)
    blob = bytes(range(256)) * 4096  # 1 MiB
    for i in range(3):
        ta.write(bytes([i]) + blob)
        tb.write(bytes([i]) + blob[:1000])
    assert run_until(reactor, lambda: len(pb.data) == 3 * (len(blob) + 1) and len(pa.data) == 3 * 1001, timeout=30)
    assert pb.data == b"".join(bytes([i]) + blob for i in range(3))
    assert pa.data == b"".join(bytes([i]) + blob[:1000] for i in range(3))
    assert not ta.closed and not tb.closed and "pause" in pa.events
    ta.close()
    assert run_until(reactor, lambda: tb.closed)
    assert pb.events[-2:] == ["eof", ("lost", None)]  # a close without close_notify is still a clean EOF
    reactor.close()
