"""Fixtures for tests that run inside a kernel with vcan (`scripts/test.sh` boots the test VM
with vcan0..vcan3)."""

from pathlib import Path

import pytest


def _iface(name: str) -> str:
    if not Path(f"/sys/class/net/{name}").exists():
        pytest.fail(f"{name} missing: run the vcan tests with scripts/test.sh "
                    f"(or `canbridge testvm --vcan 4 -- pytest -m vcan`)")
    return name


@pytest.fixture
def vcan2():
    return _iface("vcan2")


@pytest.fixture
def vcan3():
    return _iface("vcan3")
