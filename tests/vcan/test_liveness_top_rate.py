"""No false peer-down at the top rate (issue 15 point 2), two real UDP bridges in the rig's namespaces:
both buses driven flat out by cangen at once (above the bridges' zero-loss rate, so each loop pass has
as much to read and write as it can take) with the shortest dead-peer bound, `timeout=2`. A live peer
must never be marked down: each side's heartbeats and data keep the other up however long the passes.
On 2026-11-22 a bridge marked its live peer down at the benchmark's 40k rung and dropped a 2,048-frame
batch as `peer_down`; the host test tests/test_liveness_load.py pins the bounded pass that fixed it."""

from __future__ import annotations

import re
import subprocess
import time

import pytest

from bridge.hw import netns
from bridge.tools.rig.rig import GW_ADDR, REMOTE_ADDR, UDP_PORT, Rig
from tests.vcan.test_e2e import counters_at_exit
from tests.vcan.test_faults_peers import SIDES, peer_state

pytestmark = pytest.mark.vcan

TIMEOUT = 2  # seconds: silent for this long = down (the shortest bound users set)
FLOOD_FRAMES = 400_000  # per bus: ~10-20 s flat out in the VM


def cangen(ns: str) -> subprocess.Popen:
    """Flat out: no gap, retry on ENOBUFS (-p), 8-byte frames, incrementing payload."""
    return subprocess.Popen(netns.exec_argv(ns, ["cangen", "vcan0", "-g", "0", "-p", "10", "-L", "8",
                                                 "-D", "i", "-n", str(FLOOD_FRAMES)]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_flat_out_both_ways_never_marks_a_live_udp_peer_down():
    with Rig() as rig:
        for side, me, other in (("gateway", GW_ADDR, REMOTE_ADDR), ("remote", REMOTE_ADDR, GW_ADDR)):
            rig.start_bridge(side, ["vcan0", f"udp://{other}:{UDP_PORT}?bind={me}:{UDP_PORT}&timeout={TIMEOUT}"])
        with rig.sockets() as (tx, rx):
            rig.wait_path_up(tx, rx, 300)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(peer_state(rig, side) != "up" for side in SIDES):
            time.sleep(0.05)
        assert all(peer_state(rig, side) == "up" for side in SIDES), rig.all_logs()
        t0 = time.monotonic()
        floods = [cangen(rig.gw), cangen(rig.remote)]
        for proc in floods:
            assert proc.wait(300) == 0, proc.stderr.read()
        flood_s = time.monotonic() - t0
        time.sleep(2 * TIMEOUT)  # a verdict the flood's last passes provoked would show by now
        assert rig.stop_bridges() == [0, 0]
        logs = {side: rig.log_text(side) for side in SIDES}
    name = {"gateway": f"udp://{REMOTE_ADDR}:{UDP_PORT}", "remote": f"udp://{GW_ADDR}:{UDP_PORT}"}
    counters = {side: counters_at_exit(logs[side])[name[side]] for side in SIDES}
    for side in SIDES:
        c = counters[side]
        print(f"{side}: {FLOOD_FRAMES} frames in {flood_s:.1f} s, sent {c['tx_frames']}, "
              f"received {c['rx_frames']}, dropped {c['dropped']}, transitions {c['peer_transitions']}")
    for side in SIDES:
        assert not re.findall("peer down", logs[side]), f"{side} marked its live peer down:\n{logs[side][-4000:]}"
        assert counters[side]["dropped"].get("peer_down", 0) == 0, counters[side]
        assert counters[side]["peer_transitions"] == 1 and counters[side]["peer_state"] == "up", counters[side]
