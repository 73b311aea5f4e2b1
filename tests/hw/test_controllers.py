"""The test VM's real controllers are what the hw tests assume: SJA1000s behind the kvaser_pci driver, two
emulated buses of two, 500 kbit/s, txqueuelen 10 (as the driver makes it), frames crossing each wire
and not the other."""

from __future__ import annotations

import select

import pytest

from bridge.hw import links
from bridge.hw.cansock import open_can_raw
from bridge.codec import socketcan as sc
from tests.hw.conftest import BITRATE, BUS_A, BUS_B, TXQUEUELEN

pytestmark = pytest.mark.hw


def _recv(sock, timeout=2.0):
    if not select.select([sock], [], [], timeout)[0]:
        return None
    return sock.recv(sc.CANFD_MTU)


def test_controllers_as_the_vm_makes_them(bus_a, bus_b):
    for name in BUS_A + BUS_B:
        info = links.show(name)
        assert (info.kind, info.up, info.mtu, info.txqueuelen) == ("can", True, 16, TXQUEUELEN), info
        assert (info.bitrate, info.sample_point, info.clock_hz, info.state) == (BITRATE, 0.875, 8_000_000,
                                                                                "ERROR-ACTIVE"), info
        uevent = open(f"/sys/class/net/{name}/device/uevent").read()
        assert "DRIVER=kvaser_pci" in uevent


def test_each_bus_is_its_own_wire(bus_a, bus_b):
    socks = {name: open_can_raw(name, fd=False, timestamps=False) for name in BUS_A + BUS_B}
    try:
        for tx, rx, others in (("can0", "can1", ("can2", "can3")), ("can2", "can3", ("can0", "can1"))):
            frame = sc.pack_can(0x123, b"\x01\x02")
            socks[tx].send(frame)
            assert _recv(socks[rx]) == frame
            for other in others:
                assert _recv(socks[other], 0.3) is None
    finally:
        for sock in socks.values():
            sock.close()
