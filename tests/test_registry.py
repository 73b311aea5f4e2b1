"""The protocol registry: a protocol is its own module plus one registry line. The toy protocol of
tests/toyproto.py is registered at run time and through an entry point, and then parsed from URLs and
TOML, given its own options, refused options it does not take, and opened by the daemon's own code path
(bridge.daemon.app.Bridge._open_peer) to carry frames over loopback. Built-in schemes resolve lazily."""

import socket
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest

from bridge.codec import socketcan as sc
from bridge.core.reactor import Reactor
from bridge.core.router import Router
from bridge.core.stats import Counters
from bridge.daemon import config as cfg
from bridge.daemon.app import Bridge
from bridge.errors import ConfigError
from bridge.protocols import registry
from tests.toyproto import MAGIC, ToyUdp


@pytest.fixture
def toy():
    registry.register("toy+udp", "tests.toyproto:ToyUdp")  # the one registry line
    yield
    registry.unregister("toy+udp")


def test_toy_protocol_parses_with_its_own_options(toy, tmp_path):
    peer = cfg.parse_peer_url("toy+udp://127.0.0.1?greeting=hello&filter=123:7FF&bind=127.0.0.1:0")
    assert (peer.protocol, peer.port, peer.extra["greeting"], peer.bind) == (ToyUdp, 47000, "hello", ("127.0.0.1", 0))
    with pytest.raises(ConfigError, match="greeting: at most 8"):
        cfg.parse_peer_url("toy+udp://h?greeting=much-too-long")
    with pytest.raises(ConfigError, match="tls_ca is an option of"):  # a group it does not list
        cfg.parse_peer_url("toy+udp://h?tls_ca=/x")
    with pytest.raises(ConfigError, match="greeting is an option of toy\\+udp://"):  # its option, elsewhere
        cfg.parse_peer_url("udp://h:1?greeting=x")
    conf = tmp_path / "b.toml"
    conf.write_text('[[interface]]\nname = "vcan0"\n[[peer]]\nurl = "toy+udp://10.0.0.2"\ngreeting = "yo"\n')
    assert cfg.load_toml(str(conf)).peers[0].extra == {"greeting": "yo"}


def test_unknown_scheme_lists_the_registry(toy):
    with pytest.raises(ConfigError, match="unknown scheme .* expected one of tcp, tcp-listen, .*toy\\+udp"):
        cfg.parse_peer_url("nope://h")


def test_builtin_protocols_are_imported_only_when_used():
    code = textwrap.dedent("""
        import sys
        from bridge.daemon import config
        config.parse_peer_url("tcp://h:1")
        print(sorted(m for m in sys.modules if m.startswith("bridge.protocols.")))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "bridge.protocols.native" in out
    for lazy in ("cannelloni", "socketcand", "udp_multicast"):
        assert f"bridge.protocols.{lazy}'" not in out


def test_entry_point_registers_a_third_party_protocol(tmp_path):
    dist = tmp_path / "canbridge_toy-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: canbridge-toy\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[canbridge.protocols]\ntoy+udp = tests.toyproto:ToyUdp\n")
    code = (f"import sys; sys.path.insert(0, {str(tmp_path)!r}); from bridge.daemon import config; "
            "print(config.parse_peer_url('toy+udp://h').protocol.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ToyUdp", out.stderr


def test_daemon_opens_the_toy_protocol_and_frames_flow(toy):
    """Bridge._open_peer (the daemon's code, unchanged) opens a toy peer; a frame from the bus reaches
    the network as a toy datagram and a toy datagram reaches the router as a frame."""
    remote = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    remote.bind(("127.0.0.1", 0))
    remote.settimeout(5)
    peer_cfg = cfg.parse_peer_url(f"toy+udp://127.0.0.1:{remote.getsockname()[1]}?bind=127.0.0.1:0")
    reactor = Reactor()
    host = SimpleNamespace(reactor=reactor, router=Router(reactor), buses=[])  # a Bridge without CAN buses
    got = []
    host.router.from_peer = lambda peer, channel, frames: got.extend(frames)
    (toy_peer,) = Bridge._open_peer(host, peer_cfg, SimpleNamespace(channels=("vcan0",)))
    raw = sc.pack_can(0x123, b"\x01\x02")
    host.router.from_bus(SimpleNamespace(counters=Counters()), 0, [(raw, 0)])
    reactor.run_once(timeout=0)
    assert remote.recv(100) == MAGIC + raw
    remote.sendto(MAGIC + raw, toy_peer.sock.getsockname())
    deadline = 50
    while not got and deadline:
        reactor.run_once(timeout=0.1)
        deadline -= 1
    assert got == [(raw, 0)]
    toy_peer.close()
    remote.close()
    reactor.close()
