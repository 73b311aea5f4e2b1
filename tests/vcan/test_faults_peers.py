"""Peer faults end to end (issue 5 points 1 and 2), two bridges in two namespaces joined by veth
(bridge/tools/rig/rig.py): a pulled cable (netem 100 % loss, or the veth link set down) is detected on both sides
within the configured `timeout` and the bridges recover without a restart; a UDP peer is marked down
and up; a stalled TCP client neither delays a healthy one nor grows the queues; frames queued
during an outage longer than `max_age` are not replayed onto the bus."""

import re
import socket
import subprocess
import time

import pytest

from bridge.codec import native
from bridge.codec import socketcan as sc
from bridge.endpoints.pending import PENDING_MAX_BYTES, PENDING_MAX_FRAMES
from bridge.tools.logs import probe
from bridge.tools.rig.rig import GW_ADDR, REMOTE_ADDR, TCP_PORT, UDP_PORT, Rig
from bridge.hw import netns
from tests.vcan.test_e2e import counters_at_exit, steady

pytestmark = pytest.mark.vcan

TIMEOUT = 2  # the dead-peer bound under test (seconds); the default 5 s would be noticed later than the bound
MARGIN = 2  # log polling, a slow VM loop pass, the kernel's retransmission timer granularity
UP_S = 300  # bridges starting in a loaded software-emulated VM
SIDES = ("gateway", "remote")
MARKER = sc.pack_can(sc.CAN_EFF_FLAG | 0x1FFFFFFE, b"alive!!!")


def pull_cable(rig, how):
    if how == "netem":  # everything the gateway sends is lost; its link stays up
        subprocess.run(["ip", "netns", "exec", rig.gw, "tc", "qdisc", "add", "dev", "veth0", "root", "netem",
                        "loss", "100%"], check=True, capture_output=True)
    else:  # both ends lose carrier
        netns.ip("link", "set", "veth0", "down", netns=rig.gw)


def plug_cable(rig, how):
    if how == "netem":
        subprocess.run(["ip", "netns", "exec", rig.gw, "tc", "qdisc", "del", "dev", "veth0", "root"],
                       check=True, capture_output=True)
    else:
        netns.ip("link", "set", "veth0", "up", netns=rig.gw)


def wait_for_log(rig, side, pattern, before, timeout, t0=None):
    """Seconds from t0 (default: now) until `pattern` occurs more often in the side's log than
    `before`; None on timeout."""
    t0 = time.monotonic() if t0 is None else t0
    while time.monotonic() - t0 < timeout:
        if len(re.findall(pattern, rig.log_text(side))) > before:
            return time.monotonic() - t0
        time.sleep(0.05)
    return None


def wait_for_logs(rig, pattern, before: dict, timeout, t0=None) -> dict:
    """{side: seconds from t0 until `pattern` occurs in its log more often than before[side], or None}:
    every side polled in one loop, each with the whole `timeout` (one side's wait must not use up
    another's: chained waits from one t0 once made a gateway's failure read as both sides')."""
    t0 = time.monotonic() if t0 is None else t0
    took = dict.fromkeys(before)
    while time.monotonic() - t0 < timeout and None in took.values():
        for side in before:
            if took[side] is None and len(re.findall(pattern, rig.log_text(side))) > before[side]:
                took[side] = time.monotonic() - t0
        time.sleep(0.05)
    return took


def peer_state(rig, side) -> str | None:
    """A UDP bridge's peer state from its log: "up" or "down" (its last liveness line), None if neither."""
    found = re.findall(r"peer (up|down)", rig.log_text(side))
    return found[-1] if found else None


def wait_marker(tx, rx, got, timeout=60.0):
    """Send MARKER every 100 ms until one crosses; everything received is kept in `got`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        probe.send(tx, MARKER)
        time.sleep(0.1)
        probe.drain(rx, got)
        if any(raw == MARKER for _, raw in got):
            time.sleep(0.3)
            probe.drain(rx, got)
            return
    raise TimeoutError("no frame crossed the bridges")


def send_and_collect(tx, rx, frames, speed, got, wait_s=20.0):
    """Replay frames into tx; collect rx into got until every frame arrived or wait_s passed."""
    start = len(got)
    seen: list = []
    probe.replay(tx, frames, speed=speed, on_wait=lambda: (probe.drain(tx, seen, True), probe.drain(rx, got)))
    deadline = time.monotonic() + wait_s
    while len(got) - start < len(frames) and time.monotonic() < deadline:
        probe.drain(rx, got)
        time.sleep(0.05)
    return got[start:]


def payload(got):
    return [(ts, raw) for ts, raw in got if raw != MARKER]


@pytest.mark.parametrize("how", ["netem", "link-down"])
def test_tcp_pulled_cable_detected_within_timeout_and_recovers_without_restart(how):
    with Rig() as rig:
        server = rig.start_bridge("gateway", ["vcan0", f"tcp-listen://{GW_ADDR}:{TCP_PORT}?timeout={TIMEOUT}"])
        client = rig.start_bridge("remote", ["vcan0", f"tcp://{GW_ADDR}:{TCP_PORT}?timeout={TIMEOUT}"])
        with rig.sockets() as (tx, rx):
            rig.wait_path_up(tx, rx, UP_S)
            closed = "connection closed"
            before = {side: rig.log_text(side).count(closed) for side in ("gateway", "remote")}
            t0 = time.monotonic()
            pull_cable(rig, how)
            took = wait_for_logs(rig, closed, before, TIMEOUT + 30, t0)
            plug_cable(rig, how)
            got: list = []
            wait_marker(tx, rx, got)  # the client reconnected (backoff <= 5 s) and frames cross again
            after = steady(1000, 0x200)
            fresh = send_and_collect(tx, rx, after, 4.0, got)
        assert server.poll() is None and client.poll() is None, "a bridge exited: " + rig.all_logs()
        assert rig.stop_bridges() == [0, 0]
        gw, remote = counters_at_exit(rig.log_text("gateway")), counters_at_exit(rig.log_text("remote"))
    print(f"{how}: detected after {took} s (bound {TIMEOUT} s)")
    assert None not in took.values(), f"not detected: {took}\n{rig.all_logs()}"
    assert max(took.values()) <= TIMEOUT + MARGIN, took
    report = probe.compare(after, payload(fresh))
    assert report.complete, report.summary()
    assert remote[f"tcp://{GW_ADDR}:{TCP_PORT}"]["reconnects"] >= 1
    assert gw[f"tcp-listen://{GW_ADDR}:{TCP_PORT}"]["accepted"] >= 2  # the same server took the reconnection


def test_udp_peer_marked_down_and_up():
    with Rig() as rig:
        for side, me, other in (("gateway", GW_ADDR, REMOTE_ADDR), ("remote", REMOTE_ADDR, GW_ADDR)):
            rig.start_bridge(side, ["vcan0", f"udp://{other}:{UDP_PORT}?bind={me}:{UDP_PORT}&timeout={TIMEOUT}"])
        with rig.sockets() as (tx, rx):
            rig.wait_path_up(tx, rx, UP_S)
            # frames cross once the remote hears the gateway; the gateway is up once it hears the remote's
            # heartbeat (every 0.5 s, the first at the remote's first loop pass). A side that is not up at
            # the pull cannot be marked down by it, and one that went down before it (no fault yet) is a
            # false peer-down: both are failures of their own, not a late detection.
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and any(peer_state(rig, side) != "up" for side in SIDES):
                time.sleep(0.05)
            states = {side: peer_state(rig, side) for side in SIDES}
            before = {side: len(re.findall("peer down", rig.log_text(side))) for side in SIDES}
            ups = {side: len(re.findall("peer up", rig.log_text(side))) for side in SIDES}
            t0 = time.monotonic()
            pull_cable(rig, "link-down")
            took = wait_for_logs(rig, "peer down", before, TIMEOUT + 30, t0)
            for i in range(50):  # while down: dropped and counted, never queued
                probe.send(tx, sc.pack_can(0x321, bytes([i])))
            time.sleep(0.5)
            plug_cable(rig, "link-down")
            back = wait_for_logs(rig, "peer up", ups, 30)
            got: list = []
            wait_marker(tx, rx, got)
            fresh = send_and_collect(tx, rx, steady(1000, 0x200), 4.0, got)
        assert rig.stop_bridges() == [0, 0]
        gw = counters_at_exit(rig.log_text("gateway"))[f"udp://{REMOTE_ADDR}:{UDP_PORT}"]
        tails = "\n".join(f"--- {side} log:\n{rig.log_text(side)[-4000:]}" for side in ("gateway", "remote"))
    assert states == {"gateway": "up", "remote": "up"}, f"not up before the pull: {states}\n{tails}"
    assert before == {"gateway": 0, "remote": 0}, f"peer down before the pull (no fault yet): {before}\n{tails}"
    assert None not in took.values() and max(took.values()) <= TIMEOUT + MARGIN, f"{took}\n{tails}"
    assert None not in back.values(), back
    assert gw["peer_state"] == "up" and gw["peer_transitions"] >= 3, gw
    assert gw["dropped"].get("peer_down", 0) >= 50, gw
    assert not [raw for _, raw in got if sc.unpack(raw)[0] == 0x321]
    assert probe.compare(steady(1000, 0x200), payload(fresh)).complete


def fd_frames(n, spacing_ns=250_000):
    t0 = 1_700_000_000_000_000_000
    return [(t0 + i * spacing_ns, sc.pack_canfd(0x100 + (i % 16), i.to_bytes(4, "big") + bytes(60), sc.CANFD_BRS))
            for i in range(n)]


def vm_rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


@pytest.mark.parametrize("overflow", ["drop-oldest", "disconnect"])
def test_stalled_tcp_client_does_not_delay_a_healthy_one_and_stays_bounded(overflow):
    """A raw socket connects, completes the HELLO, then never reads. The healthy client (a bridge)
    still gets every frame in order; the stalled connection's queues stop at their bounds
    (drop-oldest, counted queue_full) or it is closed (disconnect)."""
    frames = fd_frames(36000)  # ~3 MB of FD frames: far past the stalled connection's buffers and bounds
    # timeout=60: a reader that never reads closes its TCP window, and TCP_USER_TIMEOUT (which covers
    # zero-window probes) would close it as dead after `timeout` before the queues fill up
    url = f"tcp-listen://{GW_ADDR}:{TCP_PORT}?sndbuf=65536&overflow={overflow}&max_age=0&timeout=60"
    with Rig() as rig:
        server = rig.start_bridge("gateway", ["vcan0", url])
        rig.start_bridge("remote", ["vcan0", f"tcp://{GW_ADDR}:{TCP_PORT}"])
        with rig.sockets() as (tx, rx):
            rig.wait_path_up(tx, rx, UP_S)
            with netns.inside(rig.remote):
                stalled = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stalled.connect((GW_ADDR, TCP_PORT))
            stalled.sendall(native.STREAM_PREAMBLE + native.encode_hello(native.Hello(heartbeat_ms=0)))
            assert wait_for_log(rig, "gateway", ": peer is ", 1, 30) is not None  # its HELLO, after the bridge's
            rss_before = vm_rss_kb(server.pid)
            got: list = []
            received = send_and_collect(tx, rx, frames, 1.0, got, wait_s=180)
            rss_after = vm_rss_kb(server.pid)
        assert rig.stop_bridges() == [0, 0]  # counters logged while the stalled socket is still open
        stalled.close()
        stats = counters_at_exit(rig.log_text("gateway"))
    report = probe.compare(frames, received)
    assert report.complete, report.summary()
    server_stats = stats[f"tcp-listen://{GW_ADDR}:{TCP_PORT}"]
    print(f"{overflow}: RSS {rss_before} -> {rss_after} kB; server {server_stats}")
    if overflow == "disconnect":
        assert server_stats["errors"].get("slow_consumer_disconnected") == 1, server_stats
    else:
        stalled_stats = [v for k, v in stats.items() if "<-" in k and v.get("dropped", {}).get("queue_full")]
        assert stalled_stats, stats  # the stalled connection is still there, and dropped the oldest
        s = stalled_stats[0]
        assert s["queued_frames"] <= PENDING_MAX_FRAMES and s["queued_bytes"] <= PENDING_MAX_BYTES, s
    assert rss_after - rss_before < 64 << 10  # kB: the bounds (1 MiB + 1 MiB + Python overhead), not the stream


def test_frames_queued_during_an_outage_are_not_replayed():
    """The gateway's TCP client holds frames while disconnected; after an outage longer than max_age
    they are dropped (counted stale), not written to the remote bus; fresh frames flow."""
    with Rig() as rig:
        rig.start_bridge("remote", ["vcan0", f"tcp-listen://{REMOTE_ADDR}:{TCP_PORT}?timeout={TIMEOUT}"])
        rig.start_bridge("gateway", ["vcan0", f"tcp://{REMOTE_ADDR}:{TCP_PORT}?timeout={TIMEOUT}&max_age=1"])
        with rig.sockets() as (tx, rx):
            rig.wait_path_up(tx, rx, UP_S)
            closed = rig.log_text("gateway").count("connection closed")
            pull_cable(rig, "link-down")
            assert wait_for_log(rig, "gateway", "connection closed", closed, TIMEOUT + 30) is not None
            outage = [(0, sc.pack_can(0x321, bytes([i]))) for i in range(200)]
            probe.replay(tx, outage, speed=0)  # queued in the client while disconnected
            time.sleep(2.0)  # the outage outlasts max_age
            plug_cable(rig, "link-down")
            got: list = []
            wait_marker(tx, rx, got)
            fresh = send_and_collect(tx, rx, steady(1000, 0x200), 4.0, got)
        assert rig.stop_bridges() == [0, 0]
        link = counters_at_exit(rig.log_text("gateway"))[f"tcp://{REMOTE_ADDR}:{TCP_PORT}"]
    replayed = [raw for _, raw in got if sc.unpack(raw)[0] == 0x321]
    assert not replayed, f"{len(replayed)} stale frames reached the bus"
    assert link["dropped"].get("stale", 0) >= 200, link
    assert probe.compare(steady(1000, 0x200), payload(fresh)).complete
