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
    listen-only and berr-reporting off, txqueuelen 10, pfifo_fast, up."""
    if not Path(f"/sys/class/net/{name}").exists():
        rescan_pci()
        wait_for(lambda: Path(f"/sys/class/net/{name}").exists(), what=f"{name} after a PCI rescan")
    ip("link", "set", name, "down")
    ip("link", "set", name, "type", "can", "bitrate", str(BITRATE), "sample-point", "0.875", "restart-ms", "0",
       "loopback", "off", "listen-only", "off", "berr-reporting", "off")
    ip("link", "set", name, "txqueuelen", str(TXQUEUELEN))
    subprocess.run(["tc", "qdisc", "replace", "dev", name, "root", "pfifo_fast"], capture_output=True, timeout=30)
    ip("link", "set", name, "up")


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
