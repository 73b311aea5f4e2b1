"""Access control (bridge/security/access.py): token bucket, write gate, router hook, config options, max_clients,
privilege-drop argument checks. The kernel side (vcan, a flood, --user nobody) is tests/vcan/test_security_access.py."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.codec import socketcan as sc
from bridge.core.reactor import Reactor
from bridge.core.router import Router
from bridge.core.stats import Counters
from bridge.daemon import config as cfg
from bridge.daemon.privileges import capabilities, drop_privileges
from bridge.endpoints.tcp import TcpServer
from bridge.errors import ConfigError
from bridge.security import access as access_control


def batch(*ids):
    return [(sc.pack_can(i, b"\x01"), 0) for i in ids]


def ids(frames):
    return [sc.can_id_of(raw) for raw, _ in frames]


# --- token bucket ------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    rate=st.floats(0.5, 5000),
    burst=st.integers(1, 500),
    steps=st.lists(st.tuples(st.floats(0, 0.5), st.integers(0, 2000)), min_size=1, max_size=60),
)
def test_bucket_never_grants_more_than_burst_plus_rate_times_window(rate, burst, steps):
    now = 1000.0
    bucket = access_control.TokenBucket(rate, burst, now)
    grants = []  # (time, granted)
    for dt, n in steps:
        now += dt
        got = bucket.take(n, now)
        assert 0 <= got <= n
        grants.append((now, got))
    for i in range(len(grants)):  # every window [t_i, t_j] of the request times
        total = 0
        for j in range(i, len(grants)):
            total += grants[j][1]
            window = grants[j][0] - grants[i][0]
            assert total <= burst + rate * window + 1e-6, (i, j, total, window)


@settings(max_examples=100, deadline=None)
@given(rate=st.floats(1, 5000), burst=st.integers(1, 500), idle=st.floats(0, 10))
def test_bucket_refills_to_burst_and_no_further(rate, burst, idle):
    bucket = access_control.TokenBucket(rate, burst, 0.0)
    assert bucket.take(10 * burst, 0.0) == burst  # starts full
    assert bucket.take(1, 0.0) == 0  # and is now empty: no time passed
    expected = min(burst, int(idle * rate + 1e-9))
    got = bucket.take(10 * burst + int(idle * rate) + 1, idle)
    assert expected - 1 <= got <= expected  # float rounding may withhold one token, never add one


def test_bucket_ignores_a_clock_going_backwards():
    bucket = access_control.TokenBucket(10, 5, 100.0)
    assert bucket.take(5, 100.0) == 5
    assert bucket.take(5, 50.0) == 0  # an older `now` refills nothing
    assert bucket.take(5, 100.35) == 3


def test_bucket_rejects_nonsense():
    with pytest.raises(ValueError):
        access_control.TokenBucket(0, 5, 0.0)
    with pytest.raises(ValueError):
        access_control.TokenBucket(5, 0, 0.0)


# --- write gate ------------------------------------------------------------------------------------


def test_gate_read_only_drops_everything_and_counts():
    gate = access_control.Access(read_only=True).gate(0.0)
    c = Counters()
    assert gate.admit(batch(1, 2, 3), 0.0, c) == []
    assert c.dropped == {"read_only": 3}


def test_gate_write_allow_bare_ids_and_candump_filters():
    access = access_control.with_option(access_control.Access(), "write_allow", "100:700,7DF,18DAF110", "t")
    gate, c = access.gate(0.0), Counters()
    eff = sc.CAN_EFF_FLAG
    frames = batch(0x100, 0x1FF, 0x200, 0x7DF, 0x7DE, eff | 0x7DF, eff | 0x18DAF110, eff | 0x18DAF010,
                   sc.CAN_RTR_FLAG | 0x7DF)
    assert ids(gate.admit(frames, 0.0, c)) == [0x100, 0x1FF, 0x7DF, eff | 0x18DAF110, sc.CAN_RTR_FLAG | 0x7DF]
    assert c.dropped == {"not_allowed": 4}


def test_gate_rate_keeps_oldest_and_counts_the_rest():
    gate, c = access_control.Access(rate=10, burst=3).gate(0.0), Counters()
    assert ids(gate.admit(batch(1, 2, 3, 4, 5), 0.0, c)) == [1, 2, 3]
    assert c.dropped == {"rate_limited": 2}
    assert ids(gate.admit(batch(6, 7), 0.1, c)) == [6]  # 0.1 s at 10/s = one token
    assert c.dropped == {"rate_limited": 3}


def test_gate_not_allowed_frames_spend_no_tokens():
    access = access_control.Access(write_allow=access_control.parse_allowlist("123"), rate=1, burst=2)
    gate, c = access.gate(0.0), Counters()
    assert ids(gate.admit(batch(1, 2, 0x123, 3, 0x123, 0x123), 0.0, c)) == [0x123, 0x123]
    assert c.dropped == {"not_allowed": 3, "rate_limited": 1}


def test_unrestricted_access_has_no_gate():
    assert access_control.Access().gate(0.0) is None
    assert access_control.Access(write_allow=access_control.parse_allowlist("0:0,#FFFFFFFF")).gate(0.0) is None
    assert access_control.Access(rate=1000).gate(0.0).bucket.burst == 100  # default burst: a tenth of a second


def test_router_applies_the_gate_after_the_inbound_filter_and_shares_it():
    r = Reactor()
    router = Router(r)
    sent = []

    class Bus:
        channel = 0

        def send_frames(self, channel, frames):
            sent.extend(ids(frames))

    router.add_bus(Bus())

    class Peer:
        def __init__(self):
            self.counters = Counters()

    a, b = Peer(), Peer()
    gate = access_control.Access(rate=0.001, burst=3).gate(r.time())
    router.add_peer(a, None, cfg._filters("100:700", "t"), gate)
    router.add_peer(b, None, None, gate)  # two connections of one configured peer: one bucket
    router.from_peer(a, 0, batch(0x100, 0x200, 0x101))
    router.from_peer(b, 0, batch(0x300, 0x301))
    assert sent == [0x100, 0x101, 0x300]
    assert a.counters.dropped == {"filtered_in": 1}
    assert b.counters.dropped == {"rate_limited": 1}
    router.remove_peer(a)
    router.from_peer(a, 0, batch(0x102))  # a closed connection no longer has a gate entry
    r.close()


# --- configuration -----------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["tcp-listen://:29600", "cannelloni+tcp-listen://:20000", "socketcand://:29536",
                                 "tcp-listen://", "socketcand://"])
def test_servers_listen_on_loopback_unless_an_address_is_given(url):
    assert cfg.parse_peer_url(url).host == "127.0.0.1"


def test_access_options_in_urls():
    p = cfg.parse_peer_url("tcp-listen://:29600?read_only=1&write_allow=100:700,7DF&rate=1000&burst=100&max_clients=2")
    assert p.access.read_only and p.access.rate == 1000.0 and p.access.burst == 100 and p.max_clients == 2
    assert str(p.access.write_allow) == "100:700,7DF:800007FF"
    assert cfg.parse_peer_url("tcp-listen://:1").max_clients == 64
    assert cfg.parse_peer_url("udp://10.0.0.1:1?read_only=false").access == access_control.Access()
    assert cfg.parse_peer_url("udp-multicast://?read_only=1").access.read_only


@pytest.mark.parametrize("url, words", [
    ("tcp://h:1?max_clients=3", "max_clients is an option of"),
    ("tcp-listen://:1?max_clients=0", "max_clients"),
    ("tcp-listen://:1?rate=0", "rate"),
    ("tcp-listen://:1?rate=inf", "rate"),
    ("tcp-listen://:1?rate=100&burst=0", "burst"),
    ("tcp-listen://:1?read_only=maybe", "read_only"),
    ("tcp-listen://:1?write_allow=7DF:zz", "write_allow"),
])
def test_bad_access_options_name_the_key(url, words):
    with pytest.raises(ConfigError, match=words):
        cfg.parse_peer_url(url)


def test_burst_needs_rate():
    with pytest.raises(ConfigError, match="burst needs rate"):
        cfg.from_args(["vcan0"], ["tcp-listen://:1?burst=5"])


def test_toml_access_keys_and_bridge_user(tmp_path):
    path = tmp_path / "b.toml"
    path.write_text('[bridge]\nuser = "nobody"\n[[interface]]\nname = "vcan0"\n'
                    '[[peer]]\nurl = "socketcand://:29536"\nread_only = true\nmax_clients = 4\n'
                    '[[peer]]\nurl = "tcp-listen://:29600"\nwrite_allow = "7DF"\nrate = 50\nburst = 5\n')
    c = cfg.load_toml(str(path))
    assert c.user == "nobody"
    assert c.peers[0].access.read_only and c.peers[0].max_clients == 4
    assert c.peers[1].access.rate == 50.0 and c.peers[1].access.burst == 5
    path.write_text('[[interface]]\nname = "vcan0"\n[[peer]]\nurl = "tcp-listen://:1"\nrate = "fast"\n')
    with pytest.raises(ConfigError, match=r"peer\[0\].*rate"):
        cfg.load_toml(str(path))
    path.write_text('[[interface]]\nname = "vcan0"\n[[peer]]\nurl = "tcp-listen://:1"\nburst = 3\n')
    with pytest.raises(ConfigError, match="burst needs rate"):
        cfg.load_toml(str(path))


# --- max_clients (real sockets on loopback) ------------------------------------------------------------


def test_max_clients_accepts_then_closes_the_extra_connection():
    r = Reactor()
    router = Router(r)
    made = []

    class Conn:
        def __init__(self, sock):
            self.sock = sock

        def close(self):
            self.sock.close()

    def make_peer(sock, name, on_closed):
        made.append(Conn(sock))
        return made[-1]

    server = TcpServer(r, router, ("127.0.0.1", 0), make_peer, max_clients=2)
    clients = []
    try:
        for _ in range(3):
            clients.append(socket.create_connection(server.address, timeout=5))
            deadline = time.monotonic() + 5
            while len(made) + server.counters.errors["refused_max_clients"] < len(clients):
                assert time.monotonic() < deadline
                r.run_once(timeout=0.05)
        assert len(server.clients) == 2 and server.counters.errors["refused_max_clients"] == 1
        assert clients[2].recv(1) == b""  # the third sees EOF at once
        clients[0].setblocking(False)
        with pytest.raises(BlockingIOError):
            clients[0].recv(1)  # the first two stay connected
    finally:
        for c in clients:
            c.close()
        server.close()
        r.close()


# --- privilege drop: the checks that need no root -----------------------------------------------------


def test_unknown_user_is_a_config_error():
    with pytest.raises(ConfigError, match="no such user"):
        drop_privileges("no-such-user-canbridge")


DROP_THEN = """
import os, sys
from bridge.errors import ConfigError
from bridge.daemon.privileges import capabilities, drop_privileges
print(drop_privileges("nobody"))
print(os.getresuid(), os.getresgid(), os.getgroups(), capabilities()["CapEff"], capabilities()["CapPrm"])
try:
    drop_privileges("root")
except ConfigError as exc:
    print("second:", exc)
"""


@pytest.mark.privileged
def test_drop_to_nobody_in_a_subprocess():
    """Runs as root here (the test VM and CI run as root); without root the first drop must fail cleanly."""
    r = subprocess.run([sys.executable, "-c", DROP_THEN], capture_output=True, text=True, timeout=60,
                       cwd=Path(__file__).resolve().parent.parent)
    if os.geteuid() != 0:
        assert "needs root" in r.stderr, r.stderr
        return
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("running as nobody (uid 65534, gid 65534, groups none)")
    assert lines[1] == "(65534, 65534, 65534) (65534, 65534, 65534) [] 0 0"
    assert lines[2].startswith("second: user 'root': cannot drop privileges") and "needs root" in lines[2]


def test_capabilities_parse_proc_status():
    text = "Name:\tx\nCapInh:\t0000000000000000\nCapPrm:\t0000000000002000\nCapEff:\t0000000000002000\n"
    assert capabilities(text) == {"CapInh": 0, "CapPrm": 0x2000, "CapEff": 0x2000}
    assert "CapEff" in capabilities()
