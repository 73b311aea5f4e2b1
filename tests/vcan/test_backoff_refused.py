"""Reconnect backoff against servers that refuse (issue 15 point 1), as a new user meets it: two real
bridges in the rig's namespaces for 30 s. The gateway runs three servers that refuse the remote's clients:
a TLS server a plain client talks to, a TLS server a client with a certificate from another CA talks to
(TLS 1.3: the client's side of the handshake succeeds, the server then closes), and a plain server at
max_clients=1 held by an occupant. Each refused client makes at most the attempts the backoff allows in
30 s (the old client: about 290, one every 0.1 s), and the server logs the first refusal, not one a try.

The host tests (tests/test_backoff.py) cover the schedule and the session rule; this is the whole
program, command line to exit counters."""

from __future__ import annotations

import socket
import time

import pytest

from bridge.codec import native
from bridge.hw import netns
from bridge.tools.rig.rig import GW_ADDR, Rig
from tests.pki import make_pki
from tests.test_backoff import max_attempts
from tests.vcan.test_e2e import counters_at_exit

pytestmark = pytest.mark.vcan

WINDOW_S = 30.0
PLAIN_VS_TLS, ROGUE_VS_TLS, FULL = 29610, 29611, 29612
QUIET_HELLO = native.Hello(heartbeat_ms=0)  # the occupant sends no heartbeats and is not closed for it


def test_refused_clients_back_off_and_servers_log_one_line(tmp_path):
    pki = make_pki(tmp_path)
    tls = f"tls_cert={pki['server_cert']}&tls_key={pki['server_key']}&tls_ca={pki['ca']}"
    rogue = f"tls_cert={pki['rogue_cert']}&tls_key={pki['rogue_key']}&tls_ca={pki['ca']}"
    servers = {
        PLAIN_VS_TLS: f"tcp-listen://{GW_ADDR}:{PLAIN_VS_TLS}?{tls}",
        ROGUE_VS_TLS: f"tcp-listen://{GW_ADDR}:{ROGUE_VS_TLS}?{tls}",
        FULL: f"tcp-listen://{GW_ADDR}:{FULL}?max_clients=1",
    }
    with Rig() as rig:
        rig.start_bridge("gateway", ["vcan0", *servers.values()])
        occupant = _occupy(rig, FULL)
        try:
            rig.start_bridge("remote", ["vcan0", f"tcp://{GW_ADDR}:{PLAIN_VS_TLS}",
                                        f"tcp://{GW_ADDR}:{ROGUE_VS_TLS}?{rogue}", f"tcp://{GW_ADDR}:{FULL}"])
            time.sleep(WINDOW_S)
            codes = rig.stop_bridges()
        finally:
            occupant.close()
        gw_log, remote_log = rig.log_text("gateway"), rig.log_text("remote")
    assert codes == [0, 0], gw_log[-3000:] + remote_log[-3000:]
    gw = counters_at_exit(gw_log)
    server = {port: gw[f"tcp-listen://{GW_ADDR}:{port}"]["errors"] for port in servers}  # stats: URL sans query
    refusals = {
        "plain client vs TLS": server[PLAIN_VS_TLS].get("tls_handshake_failed", 0),
        "other CA vs TLS": server[ROGUE_VS_TLS].get("tls_handshake_failed", 0),
        "max_clients": server[FULL].get("refused_max_clients", 0),
    }
    print(f"attempts in {WINDOW_S:.0f} s: {refusals}, allowed at most {max_attempts(WINDOW_S)}")
    for what, attempts in refusals.items():
        assert 3 <= attempts <= max_attempts(WINDOW_S), (what, attempts, gw_log[-3000:])
    # the server: the first refusal of each (address, reason) in full, the rest in one summary at exit
    firsts = [line for line in gw_log.splitlines() if "first refusal of this address" in line]
    assert len(firsts) == 3, firsts
    assert gw_log.count("more connections refused") <= 3
    remote = counters_at_exit(remote_log)
    clients = [c["errors"] for name, c in remote.items() if name.startswith("tcp://")]
    told = sum(e.get("refused_by_peer", 0) + e.get("tls_handshake_failed", 0) for e in clients)
    assert len(clients) == 3 and told >= sum(refusals.values()) - 3, remote  # every refusal counted by the client


def _occupy(rig: Rig, port: int) -> socket.socket:
    deadline = time.monotonic() + 60
    while True:
        with netns.inside(rig.remote):
            s = socket.socket()
        try:
            s.settimeout(2)
            s.connect((GW_ADDR, port))
            break
        except OSError:
            s.close()
            assert time.monotonic() < deadline, "the gateway's servers never listened\n" + rig.log_text("gateway")
            time.sleep(0.2)
    s.sendall(native.STREAM_PREAMBLE + native.encode_hello(QUIET_HELLO))
    time.sleep(1.0)  # the server has read the greeting: the slot is taken before the remote starts
    return s
