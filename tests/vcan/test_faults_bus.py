"""Bus faults (issue 5): interface down/up, deleted and re-created, BUS-OFF and restart, TX queue full.
Two canbridge processes in two namespaces (bridge/tools/rig/rig.py, TCP); the fault hits the gateway's vcan0 (or the
remote's, for ENOBUFS). Each test checks that the same bridge process resumes forwarding in both
directions on its own and that its counters (SIGUSR1 -> `counters: {json}` in its log) report it."""

import json
import re
import signal
import socket
import subprocess
import time

import pytest

from bridge.codec import canerr
from bridge.codec import socketcan as sc
from bridge.tools.logs import probe
from bridge.tools.rig.rig import GW_ADDR, TCP_PORT, Rig
from bridge.hw import netns
from bridge.hw.cansock import CAN_RAW_ERR_FILTER, CAN_RAW_FILTER, SOL_CAN_RAW

pytestmark = pytest.mark.vcan

PEER = f"tcp://{GW_ADDR}:{TCP_PORT}"
SERVER = f"tcp-listen://{GW_ADDR}:{TCP_PORT}"


def counters(rig: Rig, side: str, until=lambda s: True, timeout: float = 60.0) -> dict:
    """Ask a bridge for its counters (SIGUSR1) until `until(counters)` holds; returns the last ones."""
    proc = rig.procs[0 if side == "gateway" else 1]
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        seen = len(re.findall(r"counters: ", rig.log_text(side)))
        proc.send_signal(signal.SIGUSR1)
        while len(found := re.findall(r"counters: (\{.*\})", rig.log_text(side))) <= seen:
            assert proc.poll() is None, f"the {side} bridge died:\n{rig.all_logs()}"
            assert time.monotonic() < deadline, f"no counters from the {side} bridge:\n{rig.all_logs()}"
            time.sleep(0.05)
        last = json.loads(found[-1])
        if until(last):
            return last
        time.sleep(0.2)
    raise AssertionError(f"{side} counters never matched: {last}\n{rig.all_logs()}")


def start(rig: Rig, ifaces=("vcan0",)) -> None:
    rig.start_bridge("gateway", [*ifaces, SERVER])
    rig.start_bridge("remote", [*ifaces, PEER])


def both_ways(rig: Rig) -> None:
    """Fresh sockets on both vcan0 (old ones may hold a pending ENETDOWN or a dead ifindex); a marker
    frame crosses gateway -> remote (the gateway's RX) and remote -> gateway (its TX)."""
    with rig.sockets() as (gw, remote):
        rig.wait_path_up(gw, remote)
        rig.wait_path_up(remote, gw)


def send_from_remote(rig: Rig, frames: list) -> None:
    with netns.inside(rig.remote):
        s = probe.open_can("vcan0")
    for raw in frames:
        probe.send(s, raw)
    s.close()


def inject(rig: Rig, raw: bytes) -> None:
    """An error frame on the gateway's vcan0, as a controller's driver would deliver it."""
    with netns.inside(rig.gw):
        s = socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW)
    s.bind(("vcan0",))
    s.send(raw)
    s.close()


def numbered(n: int, start_id: int = 0x100) -> list:
    return [sc.pack_can(start_id + (i % 16), i.to_bytes(4, "big")) for i in range(n)]


def test_link_down_drops_counted_and_resumes_when_up():
    with Rig() as rig:
        start(rig)
        both_ways(rig)
        netns.ip("link", "set", "vcan0", "down", netns=rig.gw)
        counters(rig, "gateway", lambda s: s["vcan0"]["link_state"] == "down")
        send_from_remote(rig, numbered(50))  # for the gateway's bus, which is down
        down = counters(rig, "gateway", lambda s: s["vcan0"]["dropped"].get("link_down", 0) >= 50)["vcan0"]
        assert down["tx_queued"] == 0  # dropped, not queued
        netns.ip("link", "set", "vcan0", "up", netns=rig.gw)
        both_ways(rig)  # the same sockets in the same process carry on
        up = counters(rig, "gateway")["vcan0"]
        gw = rig.procs[0]
        assert gw.poll() is None
        assert rig.stop_bridges() == [0, 0]
    assert up["link_state"] == "up" and up["link_changes"] == 2  # up -> down -> up
    assert up["bus_state"] == "ERROR-ACTIVE" and up["reopens"] == 0
    assert up["dropped"]["link_down"] == down["dropped"]["link_down"]  # nothing dropped once up


def test_interface_deleted_and_recreated_is_reopened():
    with Rig() as rig:
        start(rig)
        both_ways(rig)
        netns.ip("link", "del", "vcan0", netns=rig.gw)  # the USB adapter is unplugged
        counters(rig, "gateway", lambda s: s["vcan0"]["link_state"] == "absent")
        send_from_remote(rig, numbered(20))
        counters(rig, "gateway", lambda s: s["vcan0"]["dropped"].get("link_down", 0) >= 20)
        netns.ip("link", "add", "vcan0", "type", "vcan", netns=rig.gw)  # ... and plugged in again
        netns.ip("link", "set", "vcan0", "mtu", "72", "up", netns=rig.gw)
        both_ways(rig)  # only possible on a socket bound to the new ifindex
        back = counters(rig, "gateway")["vcan0"]
        assert rig.stop_bridges() == [0, 0]
    assert back["link_state"] == "up" and back["reopens"] == 1
    assert back["link_changes"] >= 2  # up -> absent -> (down ->) up
    assert "interface is back" in rig.log_text("gateway")


def test_bus_off_drops_tx_and_restart_resumes():
    with Rig() as rig:
        start(rig)  # error_frames not asked for: state is tracked, error frames are not forwarded
        with netns.inside(rig.remote):
            errors_seen = socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW)
        errors_seen.setsockopt(SOL_CAN_RAW, CAN_RAW_FILTER, b"")  # error frames only
        errors_seen.setsockopt(SOL_CAN_RAW, CAN_RAW_ERR_FILTER, sc.CAN_ERR_MASK)
        errors_seen.bind(("vcan0",))
        errors_seen.setblocking(False)
        both_ways(rig)
        inject(rig, canerr.error_frame(canerr.CAN_ERR_CRTL, canerr.CAN_ERR_CRTL_TX_PASSIVE))
        counters(rig, "gateway", lambda s: s["vcan0"]["bus_state"] == "ERROR-PASSIVE")
        both_ways(rig)  # error passive still sends
        inject(rig, canerr.error_frame(canerr.CAN_ERR_BUSOFF))
        counters(rig, "gateway", lambda s: s["vcan0"]["bus_state"] == "BUS-OFF")
        send_from_remote(rig, numbered(30))
        off = counters(rig, "gateway", lambda s: s["vcan0"]["dropped"].get("bus_off", 0) >= 30)["vcan0"]
        inject(rig, canerr.error_frame(canerr.CAN_ERR_RESTARTED))
        counters(rig, "gateway", lambda s: s["vcan0"]["bus_state"] == "ERROR-ACTIVE")
        both_ways(rig)
        after = counters(rig, "gateway")["vcan0"]
        assert rig.stop_bridges() == [0, 0]
        forwarded_errors = []
        while True:
            try:
                forwarded_errors.append(errors_seen.recv(16))
            except BlockingIOError:
                break
        errors_seen.close()
    assert off["tx_queued"] == 0
    assert after["bus_state_changes"] == 3  # ACTIVE -> PASSIVE -> BUS-OFF -> ACTIVE
    assert after["link_state"] == "up" and after["link_changes"] == 0
    assert after["dropped"]["bus_off"] == off["dropped"]["bus_off"]
    assert forwarded_errors == []  # without error_frames the remote's bus sees none of them
    assert "BUS-OFF" in rig.log_text("gateway")


def test_tx_queue_full_enobufs_retried_and_other_bus_keeps_flowing():
    n, m = 1500, 200
    with Rig() as rig:
        for ns in (rig.gw, rig.remote):
            netns.ip("link", "add", "vcan1", "type", "vcan", netns=ns)
            netns.ip("link", "set", "vcan1", "mtu", "72", "up", netns=ns)
        # the remote's vcan0 takes ~1500 frames/s with room for ~60: the bridge meets ENOBUFS
        subprocess.run(["ip", "netns", "exec", rig.remote, "tc", "qdisc", "add", "dev", "vcan0", "root", "tbf",
                        "rate", "200kbit", "burst", "1600", "limit", "1000"], check=True)
        start(rig, ("vcan0", "vcan1"))
        both_ways(rig)
        with netns.inside(rig.gw):
            tx0, tx1 = probe.open_can("vcan0"), probe.open_can("vcan1")
        with netns.inside(rig.remote):
            rx0, rx1 = probe.open_can("vcan0"), probe.open_can("vcan1")
        burst, other = numbered(n, 0x100), numbered(m, 0x300)
        got0, got1 = [], []
        for raw in burst:
            probe.send(tx0, raw)
        for raw in other:
            probe.send(tx1, raw)
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < 5 and len(got0) < n:  # until vcan0 stops delivering
            if probe.drain(rx0, got0) + probe.drain(rx1, got1):
                quiet_since = time.monotonic()
            time.sleep(0.01)
        remote = counters(rig, "remote")
        for s in (tx0, tx1, rx0, rx1):
            s.close()
        assert rig.stop_bridges() == [0, 0]
    bus = remote["vcan0"]
    why = f"got {len(got0)}/{n} + {len(got1)}/{m}, remote vcan0: {bus}"
    assert bus["errors"].get("tx_enobufs", 0) > 0, why  # the kernel pushed back, the bridge retried
    assert bus["tx_queued"] == 0, why
    # what fitted the bounded queue (TX_QUEUE_MAX frames, DEFAULT_MAX_AGE_S) arrived in order; the rest is counted
    delivered = [raw for _, raw in got0]
    arrived = set(delivered)
    assert delivered == [raw for raw in burst if raw in arrived], why
    assert len(delivered) + sum(bus["dropped"].values()) == n, why
    assert set(bus["dropped"]) <= {"stale", "tx_queue_full"}, why
    assert len(delivered) > n // 2, why
    assert [raw for _, raw in got1] == other, why  # vcan1 on the same bridge: all of it
    # ... and not held up behind vcan0's full qdisc: its last frame landed before vcan0's last
    assert got1[-1][0] < got0[-1][0], why
