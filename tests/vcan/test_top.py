"""`canbridge top --once` on vcan0: the snapshot after a known burst (canplayer) has every ID
with its exact count, len, flags and last data."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.vcan

START_TIMEOUT_S = 60


def _receivers(iface: str) -> int:
    return sum(line.split()[:1] == [iface]
               for p in Path("/proc/net/can").glob("rcvlist_*") for line in p.read_text().splitlines())


def test_once_snapshot_after_a_burst(tmp_path):
    burst = [f"123#{i:02X}22" for i in range(5)] + ["12345678#AABB"] * 3 + ["456##1" + "11" * 12] * 2
    log = tmp_path / "burst.log"
    log.write_text("".join(f"(1700000000.{i * 1000:06d}) vcan0 {f}\n" for i, f in enumerate(burst)))
    before = _receivers("vcan0")
    top = subprocess.Popen([sys.executable, "-m", "bridge", "top", "vcan0", "--once", "--duration", "15"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while _receivers("vcan0") <= before:
        assert top.poll() is None and time.monotonic() < deadline, top.communicate()
        time.sleep(0.05)
    subprocess.run(["canplayer", "-I", str(log)], check=True, timeout=60)  # 1 ms apart, as recorded
    out, err = top.communicate(timeout=120)
    assert top.returncode == 0, err
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[:1]
            and line.split()[0] in ("123", "12345678", "456")}
    assert [r[0] for r in rows.values()] == ["123", "456", "12345678"]  # SFF by id, then EFF
    assert rows["123"][1] == "5" and rows["123"][6:8] == ["04", "22"]
    assert rows["12345678"][1] == "3" and rows["12345678"][6:8] == ["AA", "BB"]
    assert rows["456"][1] == "2" and rows["456"][5] == "12" and rows["456"][-2:] == ["FD", "BRS"]
    assert "3 IDs, 10 frames" in out
