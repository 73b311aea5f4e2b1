"""Shared test policy and fixtures.

Tests marked ``@pytest.mark.vcan`` (or using the vcan0/vcan1 fixtures, which adds the mark) need a
kernel with vcan. Where vcan0 does not exist they FAIL (never skip): run them with scripts/test.sh,
which runs them all in one test-VM boot, or ``canbridge testvm -- pytest -m vcan``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

NEEDS_VCAN = "needs vcan: run scripts/test.sh or `canbridge testvm -- pytest -m vcan`"
NEEDS_HW = ("needs real CAN controllers (can0..can3, the test VM's emulated SJA1000s): run scripts/test.sh or "
            "`canbridge testvm --vcan 4 --can sja1000:2 --can sja1000:2 -- pytest -m hw`")
NEEDS_ROOT = "needs root (network namespaces, raw sockets, links): run as root, or deselect with -m 'not privileged'"
_VCAN_FIXTURES = {"vcan0", "vcan1", "vcan2", "vcan3"}  # vcan2/3: tests/vcan/conftest.py
_PRIVILEGED_FIXTURES = {"netns", "run_in_netns"}  # `ip netns add` needs CAP_SYS_ADMIN


def _has_mosquitto() -> bool:
    return bool(shutil.which("mosquitto") or os.path.exists("/usr/sbin/mosquitto"))


def _iface_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


@pytest.fixture(autouse=True)
def _root_logging_restored():
    """Tests that run a command's main() in-process install a handler on pytest's captured stderr; put
    the root logger back after each test (otherwise a later test logs to a closed file: 'Logging error')."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def pytest_collection_modifyitems(config, items):
    for item in items:  # so that `-m vcan` / `-m "not vcan"` (and privileged) select them correctly
        fixtures = set(getattr(item, "fixturenames", ()))
        if _VCAN_FIXTURES & fixtures and not item.get_closest_marker("vcan"):
            item.add_marker(pytest.mark.vcan)
        if _PRIVILEGED_FIXTURES & fixtures and not item.get_closest_marker("privileged"):
            item.add_marker(pytest.mark.privileged)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if item.get_closest_marker("vcan") and not _iface_exists("vcan0"):
        pytest.fail(NEEDS_VCAN, pytrace=False)
    if item.get_closest_marker("hw") and not Path("/sys/class/net/can0/device/driver").exists():
        pytest.fail(NEEDS_HW, pytrace=False)
    if item.get_closest_marker("privileged") and os.geteuid() != 0:  # fail, never skip: CI runs as root
        pytest.fail(NEEDS_ROOT, pytrace=False)
    if item.get_closest_marker("mosquitto") and not _has_mosquitto():
        pytest.fail("needs the mosquitto broker: scripts/setup.sh installs it (apt-get install mosquitto)",
                    pytrace=False)


def _vcan(name: str) -> str:
    if not _iface_exists(name):
        pytest.fail(f"{name} missing; {NEEDS_VCAN}", pytrace=False)
    return name


@pytest.fixture
def vcan0() -> str:
    """Name of the first vcan interface ("vcan0"); it exists, is up, mtu 72."""
    return _vcan("vcan0")


@pytest.fixture
def vcan1() -> str:
    """Name of the second vcan interface ("vcan1")."""
    return _vcan("vcan1")


def run_in_netns(ns: str, argv: list[str], *, check: bool = True, timeout: float = 60,
                 **kwargs) -> subprocess.CompletedProcess:
    """Run argv inside network namespace ns (`ip netns exec`); output captured as text by default."""
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    return subprocess.run(["ip", "netns", "exec", ns, *argv], check=check, timeout=timeout, **kwargs)


@pytest.fixture(name="run_in_netns")
def run_in_netns_fixture():
    """The run_in_netns(ns, argv, **kw) helper, for tests that prefer a fixture to an import."""
    return run_in_netns


@pytest.fixture
def netns():
    """Factory: netns(prefix="cbt") -> name of a new network namespace (only lo, up), deleted at teardown."""
    created: list[str] = []

    def make(prefix: str = "cbt") -> str:
        name = f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
        if r.returncode:
            pytest.fail(f"ip netns add {name}: {r.stderr.strip()}", pytrace=False)
        created.append(name)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        return name

    yield make
    for name in reversed(created):
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
