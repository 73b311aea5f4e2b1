"""TX echo and RX overruns on real drivers.

- The bridge never reads back and re-forwards its own writes: on a real driver the echo of a sent frame
  (IFF_ECHO) comes when the controller reports it sent, not at send(); other sockets on the interface see
  it (the other node on the wire sees the frame itself), the bridge's own socket does not
  (CAN_RAW_RECV_OWN_MSGS off). The same on vcan, where the echo comes at send().
- An RX FIFO overrun (one controller flooded from the other: the emulated SJA1000's 64-byte FIFO) is
  counted as such (`errors.controller_rx_overrun`, the same events as the driver's rx_over_errors), not
  as network loss: every frame the bridge read reaches its peer. The receiving controller's interrupt is
  held off while the other floods (tests/hw/pci.py), so the FIFO overflows on a fast machine too."""

from __future__ import annotations

import select
import subprocess
import time

import pytest

from bridge.hw.cansock import open_can_raw
from tests.hw.bridgeproc import Bridge, Peer, bus_stats, free_tcp_port, number_of, numbered
from tests.hw.pci import interrupt_held_off

pytestmark = pytest.mark.hw


def _read_all(sock, first_timeout: float = 5.0) -> list[bytes]:
    out, timeout = [], first_timeout
    while select.select([sock], [], [], timeout)[0]:
        out.append(sock.recv(16))
        timeout = 0.5
    return out


@pytest.mark.parametrize("bus", ["can0", "vcan0"])
def test_own_writes_are_not_read_back(bus, bus_a, tmp_path):
    port = free_tcp_port()
    bridge = Bridge(tmp_path, bus, f"tcp-listen://127.0.0.1:{port}")
    # the other node: on the real bus the second controller, on vcan another socket on vcan0
    node = open_can_raw("can1" if bus == "can0" else "vcan0", fd=False, timestamps=False, rcvbuf=1 << 20)
    try:
        peer = Peer(port)
        peer.send(0, numbered(200))
        c = bridge.counters(until=lambda c: c[bus]["tx_frames"] == 200)[bus]
        seen = _read_all(node)
        assert seen and all(number_of(r) < 200 for r in seen)  # the writes reached the wire
        if bus == "vcan0":
            assert len(seen) == 200
        assert peer.receive(1.5) == []  # ... and none came back to the network
        for raw in numbered(5, start=5000, can_id=0x200):
            node.send(raw)
            time.sleep(0.01)
        assert [(ch, number_of(r)) for ch, r in peer.wait_frames(5)] == [(0, n) for n in range(5000, 5005)]
        time.sleep(0.5)
        assert len(peer.receive(0.5)) == 5
        c = bridge.counters()[bus]
        assert (c["rx_frames"], c["tx_frames"]) == (5, 200), c
        peer.close()
    finally:
        node.close()
        assert bridge.stop() == 0, bridge.text()


def test_rx_fifo_overrun_is_counted_as_such(bus_a, tmp_path):
    port = free_tcp_port()
    bridge = Bridge(tmp_path, "can1", f"tcp-listen://127.0.0.1:{port}")
    try:
        peer = Peer(port)
        bridge.counters()
        time.sleep(1.0)  # the bridge has accepted the peer: every frame it reads goes there
        before = bus_stats("can1")
        flood = 300
        with interrupt_held_off("can1"):
            subprocess.run(["cangen", "can0", "-g", "0", "-n", str(flood), "-p", "10", "-L", "8"],
                           check=True, timeout=120)
        time.sleep(1.0)
        overruns = bus_stats("can1")["rx_over_errors"] - before["rx_over_errors"]
        assert overruns >= 1  # the flood did overrun the controller's FIFO
        c = bridge.counters(until=lambda c: c["can1"]["errors"].get("controller_rx_overrun", 0) >= overruns)
        read = c["can1"]["rx_frames"]
        assert c["can1"]["errors"]["controller_rx_overrun"] == overruns, c["can1"]
        assert 0 < read < flood
        assert len(peer.wait_frames(read, timeout=60)) == read  # every frame read reached the peer
        for ep, counters in c.items():
            assert not counters.get("dropped"), (ep, counters)  # no loss counted anywhere: not a network loss
        print(f"FIGURE overrun: can1's interrupt held off while cangen -g 0 sent {flood} frames on can0; "
              f"can1's bridge read {read} (the FIFO's worth), {overruns} FIFO overruns counted")
        peer.close()
    finally:
        assert bridge.stop() == 0, bridge.text()
