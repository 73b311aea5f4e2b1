"""Fixtures for tests on real CAN controllers: the test VM's emulated SJA1000s (QEMU kvaser_pci), booted
by scripts/test.sh as `canbridge testvm --vcan 4 --can sja1000:2 --can sja1000:2`: can0 and can1 on one
emulated bus, can2 and can3 on another, 500 kbit/s, up, txqueuelen 10. Every test in tests/hw is marked
`hw` and fails (never skips) where the controllers are missing (tests/conftest.py).

A test that changes a controller (bit timing, loopback, txqueuelen, qdisc, PCI remove) leaves it as the
VM made it: the `bus_a`/`bus_b` fixtures put every setting back, and bring back a removed device."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from bridge.hw import links, qdisc
from tests.conftest import NEEDS_HW

BUS_A = ("can0", "can1")  # one emulated wire
BUS_B = ("can2", "can3")  # another
BITRATE = 500_000  # what canvm.sh sets
TXQUEUELEN = 10  # what the sja1000 driver makes (the kernel's default for CAN devices)
HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.path)).parents and not item.get_closest_marker("hw"):
            item.add_marker(pytest.mark.hw)


def controller(name: str) -> str:
    """name if it is a real controller (a netdev with a driver behind it), else fail the test."""
    if not Path(f"/sys/class/net/{name}/device/driver").exists():
        pytest.fail(f"{name} missing; {NEEDS_HW}", pytrace=False)
    return name


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def wait_for(cond, timeout: float = 10.0, step: float = 0.05, what: str = "condition"):
    """Poll cond() until it returns something true; its value, or fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(step)


def rescan_pci() -> None:
    Path("/sys/bus/pci/rescan").write_text("1")


def restore(name: str) -> None:
    """Put a controller back as the VM made it: present, 500 kbit/s @0.875, no restart-ms, loopback,
    listen-only and berr-reporting off, txqueuelen 10, pfifo_fast, up. In this process (pyroute2): a
    subprocess per setting costs seconds in the VM."""
    if not Path(f"/sys/class/net/{name}").exists():
        rescan_pci()
        wait_for(lambda: Path(f"/sys/class/net/{name}").exists(), what=f"{name} after a PCI rescan")
    if qdisc.root_qdisc(name) != "pfifo_fast":
        subprocess.run(["tc", "qdisc", "replace", "dev", name, "root", "pfifo_fast"], check=True, timeout=30)
    info = links.show(name)
    if (info.up, info.bitrate, info.sample_point, info.restart_ms, info.txqueuelen, info.ctrlmode) == (
            True, BITRATE, 0.875, 0, TXQUEUELEN, []):
        return
    with IPRoute() as ipr:
        index = info.index
        ipr.link("set", index=index, state="down")
        ipr.link("set", index=index, kind="can", can_bittiming={"bitrate": BITRATE, "sample_point": 875},
                 can_restart_ms=0, can_ctrlmode={"loopback": "off", "listenonly": "off", "berr_reporting": "off"})
        ipr.link("set", index=index, txqlen=TXQUEUELEN)
        ipr.link("set", index=index, state="up")


def _bus(names):
    for name in names:
        controller(name)
    yield names
    for name in names:
        restore(name)


@pytest.fixture
def bus_a():
    """("can0", "can1"): two controllers on one emulated wire; restored after the test."""
    yield from _bus(BUS_A)


@pytest.fixture
def bus_b():
    """("can2", "can3"): two controllers on a second emulated wire; restored after the test."""
    yield from _bus(BUS_B)


@pytest.fixture
def udev_named_can1(bus_a, tmp_path):
    """can1 renamed by the udev rule (a real udevd, an add event) to its stable PCI-slot name, set up from a
    bridge.toml (250 kbit/s, txqueuelen 16) with pfifo_fast; yields (name, udevd), udevd still running (so a
    replug is named and set up again). Renamed back to can1 after."""
    from tests.hw.udevd import Udevd, rules_for, slot_of, stable_name

    slot = slot_of("can1")
    name = stable_name(slot)
    toml = tmp_path / "bridge.toml"
    toml.write_text(f'[[interface]]\nname = "{name}"\nbitrate = 250000\ntxqueuelen = 16\n'
                    '[[peer]]\nurl = "tcp-listen://127.0.0.1:29600"\n')
    rules_for(slot, toml, tmp_path / "rules")
    subprocess.run(["tc", "qdisc", "replace", "dev", "can1", "root", "fq_codel"], check=True)
    ip("link", "set", "can1", "down")  # a link is renamed only while down (as on a fresh add)
    udevd = Udevd(tmp_path / "rules")
    try:
        subprocess.run(["udevadm", "trigger", "--action=add", "/sys/class/net/can1"], check=True, timeout=60)
        udevd.settle()
        yield name, udevd
    finally:
        udevd.stop()
        if not Path(f"/sys/bus/pci/devices/{slot}").exists():
            rescan_pci()
            wait_for(lambda: Path(f"/sys/bus/pci/devices/{slot}/net").exists(), what=f"{slot} after a rescan")
        names = [p.name for p in Path(f"/sys/bus/pci/devices/{slot}/net").iterdir()]
        if names and names[0] != "can1":
            ip("link", "set", names[0], "down")
            ip("link", "set", names[0], "name", "can1")
