"""The interface vanishes and comes back (PCI remove and rescan in the VM: the path a USB adapter takes when
pulled and replugged), with the udev rule run by a real udevd: the same bridge process keeps running,
counts the frames it could not write, re-opens the interface by name under its new ifindex once udev has
given it its stable name back and set it up from bridge.toml, and frames flow again both ways. The time
from the rescan to the first frame through the bridge is printed (`FIGURE`), not asserted."""

from __future__ import annotations

import select
import time
from pathlib import Path

import pytest

from bridge.hw import links
from bridge.hw.cansock import open_can_raw
from tests.hw.bridgeproc import Bridge, Peer, free_tcp_port, number_of, numbered
from tests.hw.conftest import rescan_pci, wait_for
from tests.hw.udevd import slot_of

pytestmark = pytest.mark.hw


def _got(sock, timeout: float) -> list[bytes]:
    out = []
    while select.select([sock], [], [], timeout)[0]:
        out.append(sock.recv(16))
        timeout = 0.01
    return out


def test_pci_remove_and_rescan(udev_named_can1, tmp_path):
    name, _udevd = udev_named_can1
    wait_for(lambda: Path(f"/sys/class/net/{name}").exists() and links.show(name).up, what=f"{name} up")
    slot = slot_of(name)
    port = free_tcp_port()
    bridge = Bridge(tmp_path, name, f"tcp-listen://127.0.0.1:{port}")
    node = open_can_raw("can0", fd=False, timestamps=False)  # the other node on the wire
    try:
        peer = Peer(port)
        peer.send(0, numbered(5))
        assert [number_of(r) for r in _got(node, 10)] == list(range(5))
        index = links.show(name).index

        Path(f"/sys/bus/pci/devices/{slot}/remove").write_text("1")  # unplugged
        wait_for(lambda: not Path(f"/sys/class/net/{name}").exists(), what=f"{name} gone")
        bridge.counters(until=lambda c: c[name]["link_state"] == "absent")
        peer.send(0, numbered(100, start=1000))  # cannot be written: counted, not queued
        c = bridge.counters(until=lambda c: sum(c[name]["dropped"].values()) >= 100)[name]
        assert c["dropped"].get("link_down", 0) + c["dropped"].get("tx_enxio", 0) + c["dropped"].get(
            "tx_enodev", 0) == 100, c

        t0 = time.monotonic()
        rescan_pci()  # replugged: the kernel names it canN, udev renames it and sets it up from bridge.toml
        named = up = None
        probe = 2000
        while time.monotonic() - t0 < 60:
            if named is None and Path(f"/sys/class/net/{name}").exists():
                named = time.monotonic() - t0
            if named is not None and up is None and links.show(name).up:
                up = time.monotonic() - t0
            peer.send(0, numbered(1, start=probe))
            probe += 1
            if got := _got(node, 0.05):
                flowing = time.monotonic() - t0
                break
        else:
            pytest.fail(f"no frame through the bridge 60 s after the rescan:\n{bridge.text()}")
        up = flowing if up is None else up  # named, up and through within one probe
        named = flowing if named is None else named
        first = number_of(got[0])
        assert first >= 2000 and all(number_of(r) >= 2000 for r in got)  # nothing from the outage came out
        info = links.show(name)
        assert info.index != index and (info.bitrate, info.txqueuelen) == (250000, 16)  # udev set it up again
        print(f"FIGURE replug: name back {named:.2f} s, link up {up:.2f} s, first frame through the bridge "
              f"{flowing:.2f} s after the PCI rescan (probe every ~50 ms)")
        c = bridge.counters(until=lambda c: c[name]["link_state"] == "up")[name]
        assert c["reopens"] == 1, c
        node.send(numbered(1, start=3000, can_id=0x200)[0])  # and the other way
        assert any(number_of(raw) == 3000 for _ch, raw in peer.wait_frames(1, timeout=10)), peer.frames
        assert bridge.proc.poll() is None  # the same process throughout
        peer.close()
    finally:
        node.close()
        assert bridge.stop() == 0, bridge.text()
